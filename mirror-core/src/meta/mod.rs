//! The durable metadata record of a volume: who it is, which generations of data it holds,
//! whether it is a usable image, and how far it is known coherent with its peer.
//!
//! Each side of a pair keeps one record beside its volume (`PATH.mirror-meta` for a regular
//! file, `--meta PATH` for a block device). The record is small and rewritten whole, atomically
//! ([`store`]); the primary's optional write-intent map lives in a file of its own, updated in
//! place ([`intent`]).
//!
//! Invariants:
//! - A record that is absent, torn or fails its checksum is *unknown history*: it is never
//!   trusted, so the pair falls back to a full checksum scan; it is never a reason to resync
//!   from a dirty map.
//! - A record reaches the disk only through [`MetaDisk`], which tests replace to fail or tear
//!   any read, write, sync or rename.
//! - The relation between two histories ([`history::relate`]) is the only place that decides
//!   whether a secondary may follow a primary: same volume line or a stranger, an older state
//!   or a split brain.

pub mod disk;
pub mod history;
pub mod intent;
pub mod primary;
pub mod record;
pub mod secondary;
pub mod store;

pub use disk::{FaultDisk, FaultPoint, MetaDisk, OsDisk};
pub use history::{relate, Lineage, Relation, Resolution};
pub use intent::{IntentMap, DEFAULT_INTENT_CHUNK};
pub use primary::PrimaryMeta;
pub use record::{Checkpoint, GenId, MetaRecord, Role, VolumeId};
pub use secondary::{Admission, PrimaryClaim, SecondaryMeta};
pub use store::{default_meta_path, Loaded, MetaStore};

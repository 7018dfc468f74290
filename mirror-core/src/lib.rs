//! mirror-core: keeps a secondary block volume coherent with a primary over TCP.
//!
//! - [`Volume`]: the block stores (files, block devices, memory; io_uring in `mirror-uring`).
//! - [`Algorithm`], [`scan`]: per-block CRC32 / MD5 / SHA-1 digests, streamed in batches.
//! - [`DirtyMap`]: what the secondary may lack, one bit per region.
//! - [`wire`]: the framed, versioned protocol between the two.
//! - [`Primary`], [`Secondary`]: the controllers, blocking and thread-safe.
//!
//! The source is folders by part — [`storage`] (volumes, digests, scans), [`protocol`]
//! (frames, messages, link, authentication, TLS), [`primary`], [`secondary`] — plus the
//! [`dirty`] map, the [`meta`]data record, configuration, errors, units and reports. The
//! earlier flat paths (`wire`, `scan`,
//! `volume`, `link`, `auth`, `digest`) stay as re-exports.
#![forbid(unsafe_code)]

pub mod config;
pub mod dirty;
pub mod durability;
mod error;
pub mod meta;
pub mod primary;
pub mod protocol;
pub mod report;
pub mod secondary;
pub mod storage;
pub mod sync;
pub mod units;

pub use protocol::{auth, link, tls};
pub use storage::{digest, fault, idle, scan, volume};

/// The wire protocol (messages, with the frame codec re-exported) under its earlier name.
pub use protocol::messages as wire;

pub use config::{CompareSide, PeriodicScan, PrimaryConfig, ReplicationMode, SecondaryConfig};
pub use digest::Algorithm;
pub use dirty::{DirtyMap, Region};
pub use durability::{Durability, OnDisconnect};
pub use error::{Error, ErrorKind, Result};
pub use primary::{JobOptions, Primary, Progress, WriteOutcome};
pub use report::{LinkState, Report, ResyncMode, Status};
pub use scan::{ScanMap, ScanOptions};
pub use secondary::{Secondary, SecondaryStatus};
pub use units::{BlockIndex, BlockRange, BlockSize, Generation};
pub use volume::{FileVolume, IoPriority, MemVolume, ReadOp, Volume};

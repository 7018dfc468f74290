//! mirror-core: keeps a secondary block volume coherent with a primary over TCP.
//!
//! - [`Volume`]: the block stores (files, block devices, memory; io_uring in `mirror-uring`).
//! - [`Algorithm`], [`scan`]: per-block CRC32 / MD5 / SHA-1 digests, streamed in batches.
//! - [`DirtyMap`]: what the secondary may lack, one bit per region.
//! - [`wire`]: the framed, versioned protocol between the two.
//! - [`Primary`], [`Secondary`]: the controllers, blocking and thread-safe.
#![forbid(unsafe_code)]

pub mod auth;
mod background;
pub mod config;
pub mod digest;
pub mod dirty;
mod error;
pub mod link;
pub mod meta;
pub mod primary;
pub mod report;
pub mod scan;
pub mod secondary;
pub mod units;
pub mod volume;
pub mod wire;

pub use config::{CompareSide, PeriodicScan, PrimaryConfig, ReplicationMode, SecondaryConfig};
pub use digest::Algorithm;
pub use dirty::{DirtyMap, Region};
pub use error::{Error, ErrorKind, Result};
pub use primary::{JobOptions, Primary, Progress, WriteOutcome};
pub use report::{LinkState, Report, ResyncMode, Status};
pub use scan::{ScanMap, ScanOptions};
pub use secondary::{Secondary, SecondaryStatus};
pub use units::{BlockIndex, BlockRange, BlockSize, Generation};
pub use volume::{FileVolume, IoPriority, MemVolume, ReadOp, Volume};

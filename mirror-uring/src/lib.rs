//! Volumes for files and block devices, on io_uring where the kernel allows it, falling back
//! to positioned reads and writes ([`mirror_core::FileVolume`]) where it does not.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use mirror_core::{BlockSize, Error, FileVolume, Result, Volume};

/// Which I/O backend a volume uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoBackend {
    /// io_uring, falling back to `Sync` (said once in the log) where it cannot be set up.
    #[default]
    Uring,
    /// pread/pwrite.
    Sync,
}

impl IoBackend {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            IoBackend::Uring => "uring",
            IoBackend::Sync => "sync",
        }
    }
}

impl FromStr for IoBackend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "uring" => Ok(IoBackend::Uring),
            "sync" => Ok(IoBackend::Sync),
            _ => Err(Error::InvalidArgument(format!("unknown io backend {s:?} (uring or sync)"))),
        }
    }
}

/// How to open a volume.
#[derive(Debug, Clone)]
pub struct VolumeOptions {
    /// Block size of all I/O.
    pub block_size: BlockSize,
    /// Backend.
    pub io: IoBackend,
    /// O_DIRECT: `None` means on for block devices, off for files.
    pub direct: Option<bool>,
    /// Reads and writes in flight at once (io_uring).
    pub queue_depth: u32,
    /// Open read-only.
    pub read_only: bool,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions {
            block_size: BlockSize::DEFAULT,
            io: IoBackend::Uring,
            direct: None,
            queue_depth: 32,
            read_only: false,
        }
    }
}

/// Opens the file or block device at `path` with `opts`.
pub fn open_volume(path: impl AsRef<Path>, opts: &VolumeOptions) -> Result<Arc<dyn Volume>> {
    let vol = if opts.read_only {
        FileVolume::open_read_only(path, opts.block_size)?
    } else {
        FileVolume::open(path, opts.block_size)?
    };
    Ok(Arc::new(vol))
}

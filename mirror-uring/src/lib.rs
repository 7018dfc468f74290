//! Volumes for files and block devices, on io_uring where the kernel allows it, falling back
//! to positioned reads and writes ([`SyncVolume`], a [`mirror_core::FileVolume`] whose idle
//! reads run in the idle I/O class) where it does not.
//!
//! Other crates call [`open_volume`] (or [`create_volume`] for a new sparse file) with
//! [`VolumeOptions`]; [`open_volume_with_info`] also says which backend was used.
//! [`UringVolume`] is the io_uring backend itself, for callers that want no fallback.

mod align;
mod probe;
mod ring;
mod sync;
mod volume;

use std::fs::OpenOptions;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use mirror_core::{BlockSize, Error, FileVolume, Result, Volume};

pub use probe::{force_sync_fallback, uring_available, uring_unavailable_reason, ENV_VAR};
pub use sync::{IdleClass, SyncVolume};
pub use volume::{UringVolume, MAX_QUEUE_DEPTH};

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
            _ => Err(Error::InvalidArgument(format!(
                "unknown io backend {s:?} (uring or sync)"
            ))),
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
    /// Reads in flight at once at [`mirror_core::IoPriority::Idle`] (background scans, resync
    /// reads), at most `queue_depth`. A device serves what it was handed in order whatever its
    /// priority, so every idle read queued ahead of a foreground write delays it: keep this
    /// small. See the write-latency tables in docs/benchmarks.md.
    pub idle_queue_depth: u32,
    /// Open read-only.
    pub read_only: bool,
    /// Open as the volume's only user (a secondary): `flock` on a regular file, `O_EXCL` on a
    /// block device; a volume already held is refused.
    pub exclusive: bool,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions {
            block_size: BlockSize::DEFAULT,
            io: IoBackend::Uring,
            direct: None,
            queue_depth: 32,
            idle_queue_depth: 2,
            read_only: false,
            exclusive: false,
        }
    }
}

/// What [`open_volume_with_info`] opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// The backend in use (`Sync` after a fallback).
    pub backend: IoBackend,
    /// True when the volume is open with `O_DIRECT`.
    pub direct: bool,
    /// Why io_uring was asked for and not used.
    pub fallback: Option<String>,
}

/// Opens the file or block device at `path` with `opts`.
///
/// With [`IoBackend::Uring`] the volume is a [`UringVolume`] unless io_uring cannot be set up
/// here (or is disabled: [`ENV_VAR`], [`force_sync_fallback`]); then it is a
/// [`FileVolume`] and the log says so once. `O_DIRECT` needs the uring backend: asking for it
/// with [`IoBackend::Sync`] is refused, and a fallback drops it (buffered I/O, same bytes).
pub fn open_volume(path: impl AsRef<Path>, opts: &VolumeOptions) -> Result<Arc<dyn Volume>> {
    open_volume_with_info(path, opts).map(|(v, _)| v)
}

/// [`open_volume`], also saying which backend was used and why.
pub fn open_volume_with_info(
    path: impl AsRef<Path>,
    opts: &VolumeOptions,
) -> Result<(Arc<dyn Volume>, VolumeInfo)> {
    let path = path.as_ref();
    let fallback = match opts.io {
        IoBackend::Uring => match uring_unavailable_reason() {
            None => match UringVolume::open(path, opts) {
                Ok(vol) => {
                    let info = VolumeInfo {
                        backend: IoBackend::Uring,
                        direct: vol.is_direct(),
                        fallback: None,
                    };
                    return Ok((Arc::new(vol), info));
                }
                // The probe passed but this ring could not be set up (memory limits, say):
                // the same fallback, said once.
                Err(Error::Io {
                    op: "io_uring_setup",
                    source,
                    ..
                }) => {
                    let reason = format!("io_uring cannot be set up: {source}");
                    probe::warn_fallback(&reason);
                    Some(reason)
                }
                Err(e) => return Err(e),
            },
            Some(reason) => {
                probe::warn_fallback(&reason);
                Some(reason)
            }
        },
        IoBackend::Sync => {
            if opts.direct == Some(true) {
                return Err(Error::InvalidArgument(format!(
                    "{}: O_DIRECT is available with the uring backend only (--io uring)",
                    path.display()
                )));
            }
            None
        }
    };
    let vol = if opts.read_only {
        FileVolume::open_read_only(path, opts.block_size)?
    } else if opts.exclusive {
        FileVolume::open_exclusive(path, opts.block_size)?
    } else {
        FileVolume::open(path, opts.block_size)?
    };
    let info = VolumeInfo {
        backend: IoBackend::Sync,
        direct: false,
        fallback,
    };
    Ok((Arc::new(SyncVolume(vol)), info))
}

/// Creates a sparse file of `size` bytes at `path` (which must not exist) and opens it with
/// `opts`.
pub fn create_volume(
    path: impl AsRef<Path>,
    size: u64,
    opts: &VolumeOptions,
) -> Result<Arc<dyn Volume>> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| Error::Io {
            path: name.clone(),
            op: "create",
            offset: 0,
            source,
        })?;
    file.set_len(size).map_err(|source| Error::Io {
        path: name,
        op: "truncate",
        offset: size,
        source,
    })?;
    drop(file);
    open_volume(path, opts)
}

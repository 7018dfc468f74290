//! Opening the volumes the Python objects work on, through `mirror-uring`.

use std::path::Path;
use std::sync::Arc;

use mirror_core::{BlockSize, Volume};
use mirror_uring::{IoBackend, VolumeOptions};

/// Opens the file or block device at `path`.
pub(crate) fn open(
    path: &Path,
    block_size: BlockSize,
    io: IoBackend,
    read_only: bool,
) -> mirror_core::Result<Arc<dyn Volume>> {
    let opts = VolumeOptions {
        block_size,
        io,
        read_only,
        ..VolumeOptions::default()
    };
    mirror_uring::open_volume(path, &opts)
}

/// Creates a sparse file of `size` bytes at `path` if nothing is there.
pub(crate) fn create_if_missing(path: &Path, size: u64) -> mirror_core::Result<()> {
    let io_err = |op: &'static str, e: std::io::Error| mirror_core::Error::Io {
        path: path.display().to_string(),
        op,
        offset: 0,
        source: e,
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => f.set_len(size).map_err(|e| io_err("create", e)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("create", e)),
    }
}

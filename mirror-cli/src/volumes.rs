//! Opening volumes the way every subcommand does: through `mirror-uring`, with the backend
//! and block size from the command line.

use std::path::Path;
use std::sync::Arc;

use mirror_core::Volume;
use mirror_uring::{open_volume, VolumeOptions};

use crate::cli::VolumeArgs;
use crate::error::{CliError, Result};

/// Opens the file or block device at `path`.
pub fn open(path: &Path, args: &VolumeArgs, read_only: bool) -> Result<Arc<dyn Volume>> {
    let opts = VolumeOptions {
        block_size: args.block_size,
        io: args.io,
        read_only,
        ..VolumeOptions::default()
    };
    Ok(open_volume(path, &opts)?)
}

/// Opens the file or block device at `path` for reading and writing as its only user
/// (`flock` on a file, `O_EXCL` on a device): what a secondary does.
pub fn open_exclusive(path: &Path, args: &VolumeArgs) -> Result<Arc<dyn Volume>> {
    let opts = VolumeOptions {
        block_size: args.block_size,
        io: args.io,
        exclusive: true,
        ..VolumeOptions::default()
    };
    Ok(open_volume(path, &opts)?)
}

/// Creates `path` as a sparse file of `size` bytes when it does not exist. Says whether it
/// did; an existing file of another size is left alone (the handshake refuses a size
/// mismatch) with a warning.
pub fn create_sparse(path: &Path, size: u64) -> Result<bool> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => {
            f.set_len(size)
                .map_err(|e| CliError::io(format!("{}: set length", path.display()), e))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.is_file() && meta.len() != size {
                    tracing::warn!(
                        "{} exists with {} bytes; --create {} ignored",
                        path.display(),
                        meta.len(),
                        size
                    );
                }
            }
            Ok(false)
        }
        Err(e) => Err(CliError::io(format!("{}: create", path.display()), e)),
    }
}

//! Zeroing a range of a volume: by the file system or device where it can (`fallocate` with
//! `ZERO_RANGE`, or `PUNCH_HOLE | KEEP_SIZE` to release the storage too), by writing zeros in
//! bounded chunks where it cannot.
//!
//! Invariant: whichever way is taken, the range reads as zeros afterwards and the volume's size
//! does not change, so the two sides of a pair stay byte-equal whatever their file systems
//! support. Writing zeros never allocates more than [`ZERO_CHUNK`] bytes, however long the
//! range.

use std::fs::File;

use rustix::fs::{fallocate, FallocateFlags};
use rustix::io::Errno;

use super::volume::Volume;
use crate::{Error, Result};

/// Largest buffer of zeros written at once when the backend cannot zero by itself.
pub const ZERO_CHUNK: usize = 1 << 20;

/// Writes zeros over `[offset, offset + len)` of `vol` in chunks of at most [`ZERO_CHUNK`]
/// bytes. The caller has checked the range against the volume contract, so every chunk but
/// the last is whole blocks and the last one ends where the range does.
pub fn write_zero_chunks(vol: &(impl Volume + ?Sized), offset: u64, len: u64) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    // A multiple of every block size (512 B to 1 MiB), so each chunk stays aligned.
    let zeros = vec![0u8; len.min(ZERO_CHUNK as u64) as usize];
    let end = offset + len;
    let mut off = offset;
    while off < end {
        let n = (end - off).min(zeros.len() as u64) as usize;
        vol.write_at(off, &zeros[..n])?;
        off += n as u64;
    }
    Ok(())
}

/// How a file system or device is asked to zero a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroHow {
    /// Zeros, the storage kept allocated (`FALLOC_FL_ZERO_RANGE`).
    KeepAllocated,
    /// Zeros, the storage released (`FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`; on a block
    /// device, a discard that guarantees zeros).
    Release,
}

/// Asks the file system or device under `file` to zero `[offset, offset + len)`. Ok(true)
/// when done; Ok(false) when it does not support that mode (the caller writes zeros instead);
/// an error for any other failure. `name` names the volume in the error.
pub fn fallocate_zero(
    file: &File,
    name: &str,
    how: ZeroHow,
    offset: u64,
    len: u64,
) -> Result<bool> {
    if len == 0 {
        return Ok(true);
    }
    let (flags, op) = match how {
        ZeroHow::KeepAllocated => (FallocateFlags::ZERO_RANGE, "zero range"),
        ZeroHow::Release => (
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            "punch hole",
        ),
    };
    loop {
        match fallocate(file, flags, offset, len) {
            Ok(()) => return Ok(true),
            Err(Errno::INTR) => continue,
            // The mode is not supported here (file system, device, or kernel), or the file
            // is of a kind fallocate does not take.
            Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::NODEV) => return Ok(false),
            Err(e) => return Err(Error::io(name, op, offset, std::io::Error::from(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::{FileExt, MetadataExt};

    use super::*;
    use crate::units::BlockSize;
    use crate::volume::FileVolume;

    #[test]
    fn trim_of_a_file_releases_its_storage_where_the_file_system_punches_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![0xAA; 4 << 20]).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let before = std::fs::metadata(&path).unwrap().blocks();
        let vol = FileVolume::open(&path, BlockSize::DEFAULT).unwrap();
        if !fallocate_zero(vol.file(), "v", ZeroHow::Release, 0, 1 << 20).unwrap() {
            eprintln!("skipped: the file system under the temporary directory punches no holes");
            return;
        }
        vol.trim(1 << 20, 2 << 20).unwrap();
        let after = std::fs::metadata(&path).unwrap().blocks();
        assert!(after < before, "{before} blocks before, {after} after");
        assert_eq!(vol.size(), 4 << 20);
        let mut buf = vec![1u8; 4 << 20];
        vol.file().read_exact_at(&mut buf, 0).unwrap();
        assert!(buf[..3 << 20].iter().all(|&b| b == 0));
        assert!(buf[3 << 20..].iter().all(|&b| b == 0xAA));
    }
}

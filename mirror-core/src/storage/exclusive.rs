//! Exclusive use of a volume: a secondary must be the only writer of its volume.
//!
//! A regular file is locked with `flock(LOCK_EX | LOCK_NB)` on the open file (the lock lives
//! as long as the open file description, and a second `mirror serve` of the same file is
//! refused at once); a block device is opened with `O_EXCL`, which the kernel refuses while
//! the device is mounted or opened exclusively by anyone else.
//!
//! Invariant: a volume opened exclusively stays locked until its file is closed; a failure to
//! lock fails the open, naming the path, and nothing is written.
//!
//! A holder that just exited may keep the volume a moment longer (the kernel tears an
//! io_uring ring down, and drops the files registered with it, after the process is gone), so
//! a busy volume is retried for up to [`SETTLE`] before it is called in use.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use crate::{Error, Result};

/// How long a busy volume is retried before it is called in use.
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

fn busy(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
        || e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error())
}

/// Runs `f` until it succeeds, fails otherwise than "busy", or [`SETTLE`] has passed.
pub fn retry_busy<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        match f() {
            Err(e) if busy(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => return r,
        }
    }
}

/// Extra `open(2)` flags for opening `path` exclusively: `O_EXCL` for a block device, none
/// for a regular file (locked after opening by [`lock`]).
pub fn open_flags(path: &Path) -> i32 {
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() => rustix::fs::OFlags::EXCL.bits() as i32,
        _ => 0,
    }
}

/// Takes the exclusive lock of an opened regular file (`flock`); a no-op for a block device,
/// which [`open_flags`] already made exclusive.
pub fn lock(file: &File, name: &str) -> Result<()> {
    let meta = file.metadata().map_err(|e| Error::io(name, "stat", 0, e))?;
    if meta.file_type().is_block_device() {
        return Ok(());
    }
    retry_busy(|| {
        rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(io::Error::from)
    })
    .map_err(|e| in_use(name, e))
}

/// The error for a volume someone else holds, from the OS error of `flock` or `open(O_EXCL)`.
pub fn in_use(name: &str, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::WouldBlock
        || e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error())
    {
        Error::io(
            name,
            "open exclusively",
            0,
            io::Error::new(
                e.kind(),
                "the volume is in use by another process (another mirror serve, or mounted); refusing to write behind it",
            ),
        )
    } else {
        Error::io(name, "open", 0, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_exclusive_open_of_a_regular_file_is_refused_until_the_first_closes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vol.img");
        std::fs::write(&p, [0u8; 4096]).unwrap();
        assert_eq!(open_flags(&p), 0);
        let a = File::options().read(true).write(true).open(&p).unwrap();
        lock(&a, "vol.img").unwrap();
        let b = File::options().read(true).write(true).open(&p).unwrap();
        let e = lock(&b, "vol.img").unwrap_err();
        assert!(e.to_string().contains("in use by another process"), "{e}");
        drop(a);
        lock(&b, "vol.img").unwrap();
    }
}

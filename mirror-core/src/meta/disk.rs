//! The disk operations the metadata record and the write-intent map need, behind one trait so
//! tests can fail or tear any of them.
//!
//! [`OsDisk`] is the real file system; [`FaultDisk`] wraps another disk and, at a chosen
//! operation, either fails it or (for a write) writes only a prefix and then fails — what a
//! crash in the middle of a write leaves behind.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The file operations of the metadata store. Every method is one step of a crash ordering.
pub trait MetaDisk: Send + Sync + std::fmt::Debug {
    /// The whole file, or `None` when it does not exist.
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>>;
    /// Creates (or truncates) `path` and writes `data` to it, without syncing.
    fn write_new(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Writes `data` at `offset` of an existing file, without syncing.
    fn write_at(&self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes the file's data durable (`fdatasync`).
    fn sync(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` over `to` (atomic on POSIX file systems).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries durable, so a rename survives a crash.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes a file; a missing one is not an error.
    fn remove(&self, path: &Path) -> io::Result<()>;
}

/// The real file system. Files are opened per operation except for the write-intent map,
/// which keeps its own handle (see [`crate::meta::intent`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct OsDisk;

impl MetaDisk for OsDisk {
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match File::open(path) {
            Ok(mut f) => {
                let mut v = Vec::new();
                f.read_to_end(&mut v)?;
                Ok(Some(v))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write_new(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        f.write_all_at(data, 0)
    }

    fn write_at(&self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(path)?;
        f.write_all_at(data, offset)
    }

    fn sync(&self, path: &Path) -> io::Result<()> {
        OpenOptions::new().write(true).open(path)?.sync_data()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Which operation a [`FaultDisk`] breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// A read fails.
    Read,
    /// A write fails before writing anything.
    Write,
    /// A write stores only its first `n` bytes, then fails: a torn write.
    TornWrite(usize),
    /// A data sync fails.
    Sync,
    /// A rename fails.
    Rename,
    /// A directory sync fails.
    SyncDir,
}

/// A disk that breaks one kind of operation, after letting `skip` of them through. For tests.
#[derive(Debug)]
pub struct FaultDisk<D: MetaDisk> {
    inner: D,
    fault: Mutex<Option<FaultPoint>>,
    skip: AtomicU64,
    /// Operations broken so far.
    pub hits: AtomicU64,
}

impl<D: MetaDisk> FaultDisk<D> {
    /// A disk over `inner` that breaks nothing until [`arm`](Self::arm)ed.
    pub fn new(inner: D) -> Self {
        FaultDisk {
            inner,
            fault: Mutex::new(None),
            skip: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        }
    }

    /// Breaks every operation of kind `f` after the first `skip` of them.
    pub fn arm(&self, f: FaultPoint, skip: u64) {
        self.skip.store(skip, Ordering::SeqCst);
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    /// Breaks nothing any more.
    pub fn disarm(&self) {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn trips(&self, kind: fn(FaultPoint) -> bool) -> Option<FaultPoint> {
        let f = (*self.fault.lock().unwrap_or_else(|e| e.into_inner()))?;
        if !kind(f) {
            return None;
        }
        if self
            .skip
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| s.checked_sub(1))
            .is_ok()
        {
            return None;
        }
        self.hits.fetch_add(1, Ordering::SeqCst);
        Some(f)
    }
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} fault"))
}

impl<D: MetaDisk> MetaDisk for FaultDisk<D> {
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        if self.trips(|f| f == FaultPoint::Read).is_some() {
            return Err(injected("read"));
        }
        self.inner.read(path)
    }

    fn write_new(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        match self.trips(|f| matches!(f, FaultPoint::Write | FaultPoint::TornWrite(_))) {
            Some(FaultPoint::TornWrite(n)) => {
                self.inner.write_new(path, &data[..n.min(data.len())])?;
                Err(injected("torn write"))
            }
            Some(_) => Err(injected("write")),
            None => self.inner.write_new(path, data),
        }
    }

    fn write_at(&self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        match self.trips(|f| matches!(f, FaultPoint::Write | FaultPoint::TornWrite(_))) {
            Some(FaultPoint::TornWrite(n)) => {
                self.inner
                    .write_at(path, offset, &data[..n.min(data.len())])?;
                Err(injected("torn write"))
            }
            Some(_) => Err(injected("write")),
            None => self.inner.write_at(path, offset, data),
        }
    }

    fn sync(&self, path: &Path) -> io::Result<()> {
        if self.trips(|f| f == FaultPoint::Sync).is_some() {
            return Err(injected("sync"));
        }
        self.inner.sync(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if self.trips(|f| f == FaultPoint::Rename).is_some() {
            return Err(injected("rename"));
        }
        self.inner.rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.trips(|f| f == FaultPoint::SyncDir).is_some() {
            return Err(injected("directory sync"));
        }
        self.inner.sync_dir(dir)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }
}

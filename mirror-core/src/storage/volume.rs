//! Volumes: the block stores mirror reads, writes and scans.
//!
//! Every backend (this module's [`FileVolume`] and [`MemVolume`], the io_uring one in
//! `mirror-uring`) implements [`Volume`] and enforces the same contract, checked by
//! [`check_io`]: offsets are block-aligned, lengths are whole blocks except a run that ends at
//! the end of the volume (whose last block is the bytes that exist), and nothing reaches past
//! the end. A request that breaks the contract is refused before any I/O.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use super::zero::{fallocate_zero, write_zero_chunks, ZeroHow};
use crate::units::BlockSize;
use crate::{Error, Result};

/// I/O priority of a request. Backends that can (io_uring) submit `Idle` requests in the idle
/// I/O scheduling class so background scans yield to foreground writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoPriority {
    /// Foreground: replicated writes, their reads.
    #[default]
    Normal,
    /// Background: periodic scans, resync reads.
    Idle,
}

/// One read of a batch: fill `buf` from byte `offset`.
#[derive(Debug)]
pub struct ReadOp<'a> {
    /// Block-aligned byte offset.
    pub offset: u64,
    /// Destination; its length follows the [`Volume`] contract.
    pub buf: &'a mut [u8],
}

/// A block store. Thread-safe: reads and writes may come from several threads at once.
pub trait Volume: Send + Sync + fmt::Debug {
    /// Size in bytes (for a block device, the device's size).
    fn size(&self) -> u64;

    /// Block size all I/O is aligned to.
    fn block_size(&self) -> BlockSize;

    /// A name for messages: the path for files.
    fn name(&self) -> &str;

    /// Reads `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// Writes `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()>;

    /// Makes every completed write durable.
    fn flush(&self) -> Result<()>;

    /// Makes `[offset, offset + len)` read as zeros, its storage kept allocated where the
    /// backend can say so. The range follows the same contract as a write. The default writes
    /// zeros in chunks of at most [`ZERO_CHUNK`](super::zero::ZERO_CHUNK) bytes; backends
    /// that can zero without writing (fallocate, a device's write-zeroes) override it.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        check_io(self.name(), self.size(), self.block_size(), offset, len)?;
        super::zero::write_zero_chunks(self, offset, len)
    }

    /// Trims `[offset, offset + len)`: releases its storage where the backend can (punching
    /// a hole, discarding), and in every case leaves the range reading as zeros. Trim is not
    /// advisory here, so a trimmed range is the same bytes on every volume and scans compare
    /// it exactly. The default is [`write_zeroes`](Self::write_zeroes).
    fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len)
    }

    /// Reads a batch. Backends that can keep several reads in flight (io_uring) override it;
    /// the default reads one after another.
    fn read_batch(&self, ops: &mut [ReadOp<'_>], priority: IoPriority) -> Result<()> {
        let _ = priority;
        for op in ops.iter_mut() {
            self.read_at(op.offset, op.buf)?;
        }
        Ok(())
    }

    /// Number of blocks, the last one possibly partial.
    fn blocks(&self) -> u64 {
        self.block_size().blocks_in(self.size())
    }
}

/// Checks one request against the volume contract; every backend calls it before any I/O.
pub fn check_io(name: &str, size: u64, block_size: BlockSize, offset: u64, len: u64) -> Result<()> {
    let bs = block_size.bytes();
    if offset % bs != 0 {
        return Err(Error::invalid(format!(
            "{name}: offset {offset} is not a multiple of the block size {bs}"
        )));
    }
    let end = offset.checked_add(len).ok_or_else(|| {
        Error::invalid(format!("{name}: offset {offset} + length {len} overflows"))
    })?;
    if end > size {
        return Err(Error::invalid(format!(
            "{name}: range {offset}+{len} ends past the end of the volume ({size} bytes)"
        )));
    }
    if len % bs != 0 && end != size {
        return Err(Error::invalid(format!(
            "{name}: length {len} is not a multiple of the block size {bs} and does not end at the end of the volume"
        )));
    }
    Ok(())
}

/// A volume over a regular file or a block device, with positioned reads and writes.
#[derive(Debug)]
pub struct FileVolume {
    file: File,
    name: String,
    path: PathBuf,
    size: u64,
    block_size: BlockSize,
    block_device: bool,
}

impl FileVolume {
    /// Opens `path` for reading and writing.
    pub fn open(path: impl AsRef<Path>, block_size: BlockSize) -> Result<Self> {
        Self::open_with(path, block_size, true, false)
    }

    /// Opens `path` for reading and writing, as its only user: a regular file is locked
    /// (`flock`), a block device opened `O_EXCL` (see [`exclusive`](super::exclusive)). What a
    /// secondary does: a second writer is refused instead of writing behind the first.
    pub fn open_exclusive(path: impl AsRef<Path>, block_size: BlockSize) -> Result<Self> {
        Self::open_with(path, block_size, true, true)
    }

    /// Opens `path` read-only (scans).
    pub fn open_read_only(path: impl AsRef<Path>, block_size: BlockSize) -> Result<Self> {
        Self::open_with(path, block_size, false, false)
    }

    fn open_with(
        path: impl AsRef<Path>,
        block_size: BlockSize,
        write: bool,
        exclusive: bool,
    ) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = path.as_ref();
        let name = path.display().to_string();
        let flags = if exclusive {
            super::exclusive::open_flags(path)
        } else {
            0
        };
        let mut file = super::exclusive::retry_busy(|| {
            OpenOptions::new()
                .read(true)
                .write(write)
                .custom_flags(flags)
                .open(path)
        })
        .map_err(|e| {
            if exclusive {
                super::exclusive::in_use(&name, e)
            } else {
                Error::io(&name, "open", 0, e)
            }
        })?;
        if exclusive {
            super::exclusive::lock(&file, &name)?;
        }
        let (size, block_device) =
            volume_size(&mut file).map_err(|e| Error::io(&name, "stat", 0, e))?;
        Ok(FileVolume {
            file,
            name,
            path: path.to_owned(),
            size,
            block_size,
            block_device,
        })
    }

    /// Creates a sparse file of `size` bytes at `path` (which must not exist) and opens it.
    pub fn create(path: impl AsRef<Path>, size: u64, block_size: BlockSize) -> Result<Self> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io(&name, "create", 0, e))?;
        file.set_len(size)
            .map_err(|e| Error::io(&name, "truncate", size, e))?;
        drop(file);
        Self::open(path, block_size)
    }

    /// The path this volume was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when the volume is a block device.
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Size of a file or block device: a device's size comes from the device (seeking to its end),
/// never from the inode's length, which is zero for devices.
pub fn volume_size(file: &mut File) -> std::io::Result<(u64, bool)> {
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        let size = file.seek(SeekFrom::End(0))?;
        file.seek(SeekFrom::Start(0))?;
        Ok((size, true))
    } else {
        Ok((meta.len(), false))
    }
}

impl Volume for FileVolume {
    fn size(&self) -> u64 {
        self.size
    }

    fn block_size(&self) -> BlockSize {
        self.block_size
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_io(
            &self.name,
            self.size,
            self.block_size,
            offset,
            buf.len() as u64,
        )?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(&self.name, "read", offset, e))
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        check_io(
            &self.name,
            self.size,
            self.block_size,
            offset,
            data.len() as u64,
        )?;
        self.file
            .write_all_at(data, offset)
            .map_err(|e| Error::io(&self.name, "write", offset, e))
    }

    fn flush(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io(&self.name, "flush", 0, e))
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.zero(ZeroHow::KeepAllocated, offset, len)
    }

    fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.zero(ZeroHow::Release, offset, len)
    }
}

impl FileVolume {
    /// Zeros a range by fallocate, or by writing zeros where the file system or device does
    /// not support the mode.
    fn zero(&self, how: ZeroHow, offset: u64, len: u64) -> Result<()> {
        check_io(&self.name, self.size, self.block_size, offset, len)?;
        if fallocate_zero(&self.file, &self.name, how, offset, len)? {
            return Ok(());
        }
        if how == ZeroHow::Release
            && fallocate_zero(&self.file, &self.name, ZeroHow::KeepAllocated, offset, len)?
        {
            return Ok(());
        }
        write_zero_chunks(self, offset, len)
    }
}

/// A volume in memory, for tests and examples.
#[derive(Debug)]
pub struct MemVolume {
    data: RwLock<Vec<u8>>,
    block_size: BlockSize,
    name: String,
}

impl MemVolume {
    /// A zero-filled volume of `size` bytes.
    pub fn new(size: u64, block_size: BlockSize) -> Self {
        Self::from_bytes(vec![0; size as usize], block_size)
    }

    /// A volume holding `bytes`.
    pub fn from_bytes(bytes: Vec<u8>, block_size: BlockSize) -> Self {
        MemVolume {
            data: RwLock::new(bytes),
            block_size,
            name: "memory".to_owned(),
        }
    }

    /// A copy of the whole contents.
    pub fn to_vec(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Volume for MemVolume {
    fn size(&self) -> u64 {
        self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    fn block_size(&self) -> BlockSize {
        self.block_size
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        check_io(
            &self.name,
            data.len() as u64,
            self.block_size,
            offset,
            buf.len() as u64,
        )?;
        let start = offset as usize;
        buf.copy_from_slice(&data[start..start + buf.len()]);
        Ok(())
    }

    fn write_at(&self, offset: u64, src: &[u8]) -> Result<()> {
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        check_io(
            &self.name,
            data.len() as u64,
            self.block_size,
            offset,
            src.len() as u64,
        )?;
        let start = offset as usize;
        data[start..start + src.len()].copy_from_slice(src);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// A test suite every backend runs: call it with a fresh volume of at least four blocks plus a
/// partial block, holding zeros.
pub mod conformance {
    use super::*;

    /// Runs the shared volume checks on `vol`, which must be zero-filled, with a size of at
    /// least four blocks and a partial last block.
    pub fn run(vol: &dyn Volume) {
        let bs = vol.block_size().as_usize();
        let size = vol.size();
        assert!(
            size > 4 * bs as u64 && size % bs as u64 != 0,
            "fixture: need a partial last block"
        );

        // Aligned round trip.
        let data: Vec<u8> = (0..2 * bs).map(|i| (i % 251) as u8).collect();
        vol.write_at(bs as u64, &data).expect("aligned write");
        let mut back = vec![0u8; 2 * bs];
        vol.read_at(bs as u64, &mut back).expect("aligned read");
        assert_eq!(back, data);

        // Partial last block: the bytes that exist.
        let last = (vol.blocks() - 1) * bs as u64;
        let tail = (size - last) as usize;
        let pattern = vec![0xA5u8; tail];
        vol.write_at(last, &pattern)
            .expect("partial last block write");
        let mut got = vec![0u8; tail];
        vol.read_at(last, &mut got)
            .expect("partial last block read");
        assert_eq!(got, pattern);

        // Batch reads see what was written.
        let mut a = vec![0u8; bs];
        let mut b = vec![0u8; tail];
        let mut ops = [
            ReadOp {
                offset: bs as u64,
                buf: &mut a,
            },
            ReadOp {
                offset: last,
                buf: &mut b,
            },
        ];
        vol.read_batch(&mut ops, IoPriority::Idle)
            .expect("batch read");
        assert_eq!(a, data[..bs]);
        assert_eq!(b, pattern);

        // Contract violations are refused and change nothing.
        let before = {
            let mut v = vec![0u8; bs];
            vol.read_at(0, &mut v).unwrap();
            v
        };
        let err = vol.write_at(1, &[1u8; 512]).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{err}");
        let err = vol.write_at(0, &vec![1u8; bs + 1]).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{err}");
        let err = vol.write_at(last, &vec![1u8; bs * 2]).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{err}");
        let err = vol
            .read_at(size + bs as u64, &mut vec![0u8; bs])
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{err}");
        let err = vol
            .read_at(u64::MAX - (bs as u64 - 1), &mut vec![0u8; bs])
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{err}");
        let mut after = vec![0u8; bs];
        vol.read_at(0, &mut after).unwrap();
        assert_eq!(before, after, "a refused write changed the volume");

        // Write-zeroes and trim leave zeros, in whole blocks and in the partial last block,
        // and refuse what a write would refuse.
        for (i, zero) in [
            (|v: &dyn Volume, o, l| v.write_zeroes(o, l))
                as fn(&dyn Volume, u64, u64) -> Result<()>,
            |v: &dyn Volume, o, l| v.trim(o, l),
        ]
        .into_iter()
        .enumerate()
        {
            let fill = vec![0x3Cu8 + i as u8; 3 * bs];
            vol.write_at(0, &fill).unwrap();
            vol.write_at(last, &pattern).unwrap();
            zero(vol, bs as u64, bs as u64).expect("zero one block");
            let mut got = vec![1u8; 3 * bs];
            vol.read_at(0, &mut got).unwrap();
            assert_eq!(got[..bs], fill[..bs], "zeroing reached before its range");
            assert!(got[bs..2 * bs].iter().all(|&b| b == 0), "block not zeroed");
            assert_eq!(
                got[2 * bs..],
                fill[2 * bs..],
                "zeroing reached past its range"
            );
            zero(vol, last, size - last).expect("zero the partial last block");
            let mut got = vec![1u8; tail];
            vol.read_at(last, &mut got).unwrap();
            assert!(got.iter().all(|&b| b == 0), "partial last block not zeroed");
            assert_eq!(vol.size(), size, "zeroing changed the size");
            for (o, l) in [
                (1, bs as u64),
                (0, bs as u64 + 1),
                (last, 2 * bs as u64),
                (u64::MAX - (bs as u64 - 1), bs as u64),
            ] {
                let err = zero(vol, o, l).unwrap_err();
                assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{err}");
            }
            let mut after = vec![0u8; bs];
            vol.read_at(0, &mut after).unwrap();
            assert_eq!(after, fill[..bs], "a refused zeroing changed the volume");
        }
        // Callers check what the writes above left in the partial last block.
        vol.write_at(last, &pattern).unwrap();

        vol.flush().expect("flush");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_size_accepts_powers_of_two_in_range_only() {
        for ok in [512u64, 4096, 1 << 20] {
            assert_eq!(BlockSize::new(ok).unwrap().bytes(), ok);
        }
        for bad in [0u64, 256, 511, 513, 3000, 2 << 20] {
            assert_eq!(
                BlockSize::new(bad).unwrap_err().kind(),
                crate::ErrorKind::InvalidArgument
            );
        }
    }

    #[test]
    fn memory_volume_keeps_the_volume_contract() {
        conformance::run(&MemVolume::new(4096 * 5 + 100, BlockSize::DEFAULT));
    }

    #[test]
    fn file_volume_keeps_the_volume_contract() {
        let dir = tempfile::tempdir().unwrap();
        let vol =
            FileVolume::create(dir.path().join("v"), 4096 * 5 + 100, BlockSize::DEFAULT).unwrap();
        conformance::run(&vol);
    }

    #[test]
    fn file_volume_reports_missing_file_with_its_path() {
        let err = FileVolume::open("/nonexistent/vol", BlockSize::DEFAULT).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Io);
        assert!(err.to_string().contains("/nonexistent/vol"), "{err}");
    }
}

//! [`UringVolume`]: a [`Volume`] whose reads, writes and flushes go through io_uring.
//!
//! A volume keeps a small pool of rings so that threads never wait for each other's batches
//! (a foreground 4 KiB write does not queue behind a background scan's 4 MiB batch). Each
//! request is checked with [`check_io`] before any I/O, split into segments of at most
//! 256 KiB, and submitted with up to the queue depth in flight; the call returns when every
//! segment has completed. With `O_DIRECT`, a caller buffer the kernel would refuse (address or
//! length not aligned, such as the partial last block) is bounced through the ring's aligned
//! slab, and the unaligned tail of a file is written through a second, buffered descriptor of
//! the same file. Offsets are the volume's blocks, so they are aligned whenever the block size
//! is a multiple of the device's direct I/O alignment, which [`UringVolume::open`] checks.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use mirror_core::storage::zero::{fallocate_zero, write_zero_chunks, ZeroHow};
use mirror_core::volume::{check_io, volume_size};
use mirror_core::{BlockSize, Error, IoPriority, ReadOp, Result, Volume};

use crate::align::{self, DirectAlign};
use crate::ring::{Failure, Files, Kind, Ring, Segment, Target, IOPRIO_IDLE, SEGMENT};
use crate::VolumeOptions;

/// Most rings one volume opens (one per thread doing I/O at once, up to this).
const MAX_RINGS: usize = 8;

/// Largest queue depth accepted.
pub const MAX_QUEUE_DEPTH: u32 = 4096;

/// A file or block device on io_uring.
pub struct UringVolume {
    // Field order is drop order: rings (which drain) before the descriptors they use.
    pool: RingPool,
    file: File,
    tail_file: Option<File>,
    /// Start of the unaligned file's last page: writes at or past it go through `tail_file`,
    /// one at a time (see `write_at`). `u64::MAX` when there is no tail file.
    tail_zone: u64,
    tail_lock: Mutex<()>,
    name: String,
    path: PathBuf,
    size: u64,
    block_size: BlockSize,
    block_device: bool,
    read_only: bool,
    direct: Option<DirectAlign>,
    queue_depth: u32,
    idle_queue_depth: u32,
}

impl std::fmt::Debug for UringVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringVolume")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("block_size", &self.block_size)
            .field("block_device", &self.block_device)
            .field("direct", &self.direct)
            .field("queue_depth", &self.queue_depth)
            .field("idle_queue_depth", &self.idle_queue_depth)
            .finish()
    }
}

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

fn io_err(name: &str, op: &'static str, offset: u64, source: io::Error) -> Error {
    Error::Io {
        path: name.to_owned(),
        op,
        offset,
        source,
    }
}

impl UringVolume {
    /// Opens the file or block device at `path` on io_uring. Fails (rather than falling back)
    /// when a ring cannot be set up; [`crate::open_volume`] is the call that falls back.
    pub fn open(path: impl AsRef<Path>, opts: &VolumeOptions) -> Result<Self> {
        let path = path.as_ref();
        let name = path.display().to_string();
        if opts.queue_depth == 0 || opts.queue_depth > MAX_QUEUE_DEPTH {
            return Err(invalid(format!(
                "queue depth {} is out of range (1 to {MAX_QUEUE_DEPTH})",
                opts.queue_depth
            )));
        }
        let meta = std::fs::metadata(path).map_err(|e| io_err(&name, "open", 0, e))?;
        let block_device = meta.file_type().is_block_device();
        let direct = opts.direct.unwrap_or(block_device);

        let mut oo = OpenOptions::new();
        oo.read(true).write(!opts.read_only);
        let mut flags = 0;
        if direct {
            flags |= libc::O_DIRECT;
        }
        if opts.exclusive {
            flags |= mirror_core::storage::exclusive::open_flags(path);
        }
        oo.custom_flags(flags);
        let mut file =
            mirror_core::storage::exclusive::retry_busy(|| oo.open(path)).map_err(|e| {
                if opts.exclusive && e.raw_os_error() == Some(libc::EBUSY) {
                    // O_EXCL on a block device someone else holds (mounted, or opened so).
                    return mirror_core::storage::exclusive::in_use(&name, e);
                }
                if direct && e.raw_os_error() == Some(libc::EINVAL) {
                    invalid(format!(
                    "{name}: the filesystem refuses O_DIRECT (EINVAL on open); open it without \
                     direct I/O (direct = false)"
                ))
                } else {
                    io_err(&name, "open", 0, e)
                }
            })?;
        if opts.exclusive {
            mirror_core::storage::exclusive::lock(&file, &name)?;
        }
        let (size, _) = volume_size(&mut file).map_err(|e| io_err(&name, "stat", 0, e))?;

        let align = if direct {
            let a = if block_device {
                align::block_device_align(&file).map_err(|e| io_err(&name, "ioctl", 0, e))?
            } else {
                match align::file_align(path) {
                    Ok(Some(a)) => a,
                    // Kernels before 6.1 do not say; a page is what every filesystem accepts.
                    Ok(None) => DirectAlign {
                        offset: align::PAGE,
                        memory: align::PAGE,
                    },
                    Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                        return Err(invalid(format!(
                            "{name}: {e}; open it without direct I/O (direct = false)"
                        )))
                    }
                    Err(e) => return Err(io_err(&name, "statx", 0, e)),
                }
            };
            let bs = opts.block_size.bytes();
            if bs % a.offset as u64 != 0 || a.offset > SEGMENT || a.memory > align::PAGE {
                return Err(invalid(format!(
                    "{name}: O_DIRECT needs offsets and lengths aligned to {} bytes (memory to {}) \
                     but the volume's block size is {bs}; use a block size that is a multiple of \
                     {} or open without direct I/O (direct = false)",
                    a.offset, a.memory, a.offset
                )));
            }
            Some(a)
        } else {
            None
        };

        // A direct file whose size is not aligned has a tail the kernel will not write with
        // O_DIRECT: it goes through a buffered descriptor of the same file.
        let tail_file = match align {
            Some(a) if !opts.read_only && size % a.offset as u64 != 0 => Some(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(|e| io_err(&name, "open", 0, e))?,
            ),
            _ => None,
        };

        // The page (or filesystem block, if larger) holding the unaligned end: buffered and
        // direct writes must never share it, or a stale cached copy of the page could be
        // written back over a direct write.
        let tail_zone = if tail_file.is_some() {
            let dio = align.map_or(1, |a| a.offset as u64);
            let unit = meta
                .blksize()
                .max(align::PAGE as u64)
                .max(dio)
                .next_power_of_two();
            size / unit * unit
        } else {
            u64::MAX
        };

        let files = Files {
            main: file.as_raw_fd(),
            tail: tail_file.as_ref().map(|f| f.as_raw_fd()),
            direct: align,
        };
        let pool = RingPool::new(opts.queue_depth, files);
        // One ring now: if the kernel refuses, the caller learns at open, not at first I/O.
        let first = Ring::new(opts.queue_depth, files)
            .map_err(|e| io_err(&name, "io_uring_setup", 0, e))?;
        pool.put_new(first);

        Ok(UringVolume {
            pool,
            file,
            tail_file,
            tail_zone,
            tail_lock: Mutex::new(()),
            name,
            path: path.to_owned(),
            size,
            block_size: opts.block_size,
            block_device,
            read_only: opts.read_only,
            direct: align,
            queue_depth: opts.queue_depth,
            idle_queue_depth: opts.idle_queue_depth.clamp(1, opts.queue_depth),
        })
    }

    /// The path this volume was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when the volume is a block device.
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// True when the volume is open with `O_DIRECT`.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// `(offset and length, memory)` alignment that direct I/O needs, when direct.
    pub fn direct_alignment(&self) -> Option<(usize, usize)> {
        self.direct.map(|a| (a.offset, a.memory))
    }

    /// Operations in flight at most, per ring.
    pub fn queue_depth(&self) -> u32 {
        self.queue_depth
    }

    /// True when the first ring registered the volume's descriptors with the kernel.
    pub fn registered_files(&self) -> bool {
        self.pool.with(|r| Ok(r.fixed_files())).unwrap_or(false)
    }

    /// True when the ring's bounce slab is registered as a fixed buffer (after a bounce).
    pub fn registered_buffers(&self) -> bool {
        self.pool.with(|r| Ok(r.slab_registered())).unwrap_or(false)
    }

    /// The open file (for its descriptor; I/O on it bypasses the ring).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Splits `len` bytes at `offset` from `ptr` into segments.
    fn segments(&self, kind: Kind, offset: u64, ptr: *mut u8, len: usize, out: &mut Vec<Segment>) {
        let mut done = 0;
        while done < len {
            let off = offset + done as u64;
            let mut n = SEGMENT.min(len - done);
            if off < self.tail_zone {
                // Never straddle the tail zone: what is before it stays direct.
                n = n.min((self.tail_zone - off).min(usize::MAX as u64) as usize);
            }
            // SAFETY: `done < len`, so the pointer stays inside the caller's buffer.
            let p = unsafe { ptr.add(done) };
            let (target, bounce) = match self.direct {
                None => (Target::Main, false),
                // Writes in the last page of a file whose size is not aligned go through the
                // buffered descriptor: O_DIRECT cannot write the partial end.
                Some(_) if kind == Kind::Write && off >= self.tail_zone => (Target::Tail, false),
                Some(a) if a.fits(off, p as usize, n) => (Target::Main, false),
                // Reads of the partial end bounce (the kernel stops at end of file), and so
                // does anything from a buffer the kernel would refuse.
                Some(_) => (Target::Main, true),
            };
            out.push(Segment {
                kind,
                target,
                offset: off,
                ptr: p,
                len: n,
                bounce,
            });
            done += n;
        }
    }

    fn run(&self, segs: &[Segment], priority: IoPriority) -> Result<()> {
        let (ioprio, limit) = match priority {
            IoPriority::Normal => (0, self.queue_depth),
            IoPriority::Idle => (IOPRIO_IDLE, self.idle_queue_depth),
        };
        self.pool.with(|ring| {
            ring.run_limited(segs, ioprio, limit as usize)
                .map_err(|f| self.explain(f))
        })
    }

    /// Turns a failed batch into an error that says what happened; `EINVAL` on a direct
    /// transfer names the alignment rather than leaking the bare errno.
    fn explain(&self, f: Failure) -> Error {
        if f.direct && f.error.raw_os_error() == Some(libc::EINVAL) {
            let a = self.direct.map_or(0, |a| a.offset);
            return invalid(format!(
                "{}: the kernel refused an O_DIRECT {} of {} bytes at offset {} (EINVAL); direct \
                 I/O needs offsets, lengths and buffers aligned to {a} bytes",
                self.name,
                f.kind.name(),
                f.len,
                f.offset
            ));
        }
        io_err(&self.name, f.kind.name(), f.offset, f.error)
    }

    /// Writes the tail page back and drops it from the page cache.
    fn settle_tail(&self) -> Result<()> {
        let Some(tail) = &self.tail_file else {
            return Ok(());
        };
        let fd = tail.as_raw_fd();
        let start = self.tail_zone as libc::off64_t;
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: a plain syscall on a descriptor this volume keeps open; no memory is passed.
        if unsafe { libc::sync_file_range(fd, start, 0, flags) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io_err(&self.name, "write", self.tail_zone, e));
        }
        // SAFETY: as above; the advice only drops clean cached pages of this file.
        let rc = unsafe { libc::posix_fadvise(fd, start, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            let e = io::Error::from_raw_os_error(rc);
            return Err(io_err(&self.name, "write", self.tail_zone, e));
        }
        Ok(())
    }

    /// Zeros a range by fallocate on the file or device (the kernel writes back and drops
    /// the cached pages of the range, so the buffered tail descriptor sees the zeros too), or
    /// by writing zeros through the ring where the mode is not supported.
    fn zero(&self, how: ZeroHow, offset: u64, len: u64) -> Result<()> {
        check_io(&self.name, self.size, self.block_size, offset, len)?;
        self.check_writable(offset)?;
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

    fn check_writable(&self, offset: u64) -> Result<()> {
        if self.read_only {
            return Err(io_err(
                &self.name,
                "write",
                offset,
                io::Error::new(io::ErrorKind::PermissionDenied, "volume is open read-only"),
            ));
        }
        Ok(())
    }
}

impl Volume for UringVolume {
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
        let mut segs = Vec::new();
        self.segments(Kind::Read, offset, buf.as_mut_ptr(), buf.len(), &mut segs);
        self.run(&segs, IoPriority::Normal)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        check_io(
            &self.name,
            self.size,
            self.block_size,
            offset,
            data.len() as u64,
        )?;
        self.check_writable(offset)?;
        let mut segs = Vec::new();
        // The kernel only reads through a write's pointer; `*mut` is the segment's common type.
        self.segments(
            Kind::Write,
            offset,
            data.as_ptr().cast_mut(),
            data.len(),
            &mut segs,
        );
        if !segs.iter().any(|s| s.target == Target::Tail) {
            return self.run(&segs, IoPriority::Normal);
        }
        // Buffered writes to the tail page go one at a time, and the page is written back and
        // dropped from the cache before the next, so no stale cached copy of it outlives them.
        let _tail = self.tail_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.run(&segs, IoPriority::Normal)?;
        self.settle_tail()
    }

    fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let seg = Segment {
            kind: Kind::Fsync,
            target: Target::Main,
            offset: 0,
            ptr: std::ptr::null_mut(),
            len: 0,
            bounce: false,
        };
        self.run(&[seg], IoPriority::Normal)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.zero(ZeroHow::KeepAllocated, offset, len)
    }

    fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.zero(ZeroHow::Release, offset, len)
    }

    fn read_batch(&self, ops: &mut [ReadOp<'_>], priority: IoPriority) -> Result<()> {
        // The whole batch is checked before any of it is read.
        for op in ops.iter() {
            check_io(
                &self.name,
                self.size,
                self.block_size,
                op.offset,
                op.buf.len() as u64,
            )?;
        }
        let mut segs = Vec::new();
        for op in ops.iter_mut() {
            self.segments(
                Kind::Read,
                op.offset,
                op.buf.as_mut_ptr(),
                op.buf.len(),
                &mut segs,
            );
        }
        self.run(&segs, priority)
    }
}

/// Rings not in use, and how many exist. A thread takes one for the length of a batch.
struct RingPool {
    idle: Mutex<(Vec<Ring>, usize)>,
    returned: Condvar,
    depth: u32,
    files: Files,
}

impl RingPool {
    fn new(depth: u32, files: Files) -> Self {
        RingPool {
            idle: Mutex::new((Vec::new(), 0)),
            returned: Condvar::new(),
            depth,
            files,
        }
    }

    fn lock(&self) -> MutexGuard<'_, (Vec<Ring>, usize)> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put_new(&self, ring: Ring) {
        let mut g = self.lock();
        g.0.push(ring);
        g.1 += 1;
    }

    /// Runs `f` with a ring of its own: an idle one, a new one while fewer than
    /// [`MAX_RINGS`] exist, or the next one returned.
    fn with<T>(&self, f: impl FnOnce(&mut Ring) -> Result<T>) -> Result<T> {
        let ring = {
            let mut g = self.lock();
            loop {
                if let Some(r) = g.0.pop() {
                    break r;
                }
                if g.1 < MAX_RINGS {
                    g.1 += 1;
                    drop(g);
                    match Ring::new(self.depth, self.files) {
                        Ok(r) => break r,
                        Err(e) => {
                            self.lock().1 -= 1;
                            return Err(io_err("io_uring", "io_uring_setup", 0, e));
                        }
                    }
                }
                g = self.returned.wait(g).unwrap_or_else(|e| e.into_inner());
            }
        };
        let mut taken = Taken {
            pool: self,
            ring: Some(ring),
        };
        f(taken.ring.as_mut().expect("ring taken"))
    }
}

/// A ring out of the pool; goes back on drop, or is counted out if a panic dropped it early.
struct Taken<'p> {
    pool: &'p RingPool,
    ring: Option<Ring>,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        let mut g = self.pool.lock();
        match self.ring.take() {
            Some(r) if !std::thread::panicking() => g.0.push(r),
            // A ring a panic went through may hold half a batch's state: drop it (it drains).
            _ => g.1 -= 1,
        }
        drop(g);
        self.pool.returned.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct_file(dir: &Path, size: u64) -> UringVolume {
        let path = dir.join("v");
        std::fs::write(&path, vec![3u8; size as usize]).unwrap();
        let opts = VolumeOptions {
            direct: Some(true),
            ..VolumeOptions::default()
        };
        UringVolume::open(&path, &opts).unwrap()
    }

    #[test]
    fn kernel_einval_on_direct_io_is_explained_not_leaked() {
        let dir = tempfile::tempdir().unwrap();
        let mut vol = direct_file(dir.path(), 4096 * 4);
        let real = vol.direct.unwrap();
        // Pretend the device takes anything, so a misaligned buffer reaches the kernel as is.
        let lax = DirectAlign {
            offset: 1,
            memory: 1,
        };
        vol.direct = Some(lax);
        vol.pool = RingPool::new(
            vol.queue_depth,
            Files {
                main: vol.file.as_raw_fd(),
                tail: None,
                direct: Some(lax),
            },
        );
        let mut buf = vec![0u8; 4096 + 1];
        let err = vol.read_at(0, &mut buf[1..]).unwrap_err();
        assert_eq!(err.kind(), mirror_core::ErrorKind::InvalidArgument, "{err}");
        let msg = err.to_string();
        assert!(msg.contains("O_DIRECT") && msg.contains("EINVAL"), "{msg}");
        assert!(msg.contains(&vol.name), "{msg}");
        // With the real alignment the same read bounces and succeeds.
        vol.direct = Some(real);
        vol.pool = RingPool::new(
            vol.queue_depth,
            Files {
                main: vol.file.as_raw_fd(),
                tail: None,
                direct: Some(real),
            },
        );
        vol.read_at(0, &mut buf[1..]).unwrap();
        assert!(buf[1..].iter().all(|&b| b == 3));
    }

    #[test]
    fn rings_register_the_file_and_the_bounce_slab() {
        let dir = tempfile::tempdir().unwrap();
        let vol = direct_file(dir.path(), 4096 * 4);
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(!vol.registered_buffers(), "no slab before the first bounce");
        let mut buf = vec![0u8; 4096 + 1];
        vol.read_at(4096, &mut buf[1..]).unwrap();
        if root {
            // Root has no locked-memory limit to refuse the registrations.
            assert!(vol.registered_files());
            assert!(vol.registered_buffers());
        }
    }

    #[test]
    fn ring_pool_grows_to_its_cap_and_reuses_rings() {
        let dir = tempfile::tempdir().unwrap();
        let vol = direct_file(dir.path(), 4096 * 64);
        std::thread::scope(|s| {
            for t in 0..2 * MAX_RINGS as u64 {
                let vol = &vol;
                s.spawn(move || {
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..20 {
                        vol.read_at((t % 64) * 4096, &mut buf).unwrap();
                    }
                });
            }
        });
        let (idle, created) = {
            let g = vol.pool.lock();
            (g.0.len(), g.1)
        };
        assert!(created <= MAX_RINGS, "{created} rings");
        assert_eq!(idle, created, "every ring came back");
    }
}

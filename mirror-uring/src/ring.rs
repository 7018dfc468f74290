//! One io_uring and the engine that runs a batch of reads, writes or an fsync through it.
//!
//! Invariant: **a batch never returns, or unwinds, while one of its operations is in flight.**
//! The kernel holds raw pointers into the caller's buffers (or into this ring's bounce slab)
//! from submission until the completion arrives, so [`Ring::run`] waits for every completion
//! before it returns, even after an error, and a guard does the same if anything panics.
//! Bounce buffers belong to the ring and live as long as it; the ring is dropped (and so
//! unregistered) before them.

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types, IoUring};

use crate::align::{round_up, AlignedBuf, DirectAlign, PAGE};

/// Largest transfer one SQE carries; longer requests are split so that a big read keeps several
/// pieces in flight (and a bounce slot has a fixed size).
pub(crate) const SEGMENT: usize = 256 << 10;

/// `ioprio` of the idle scheduling class: `IOPRIO_PRIO_VALUE(IOPRIO_CLASS_IDLE, 0)`, from
/// `include/uapi/linux/ioprio.h` (class in the top 3 of 16 bits, class 3 is idle).
pub(crate) const IOPRIO_IDLE: u16 = 3 << 13;

/// Most bounce slots a ring keeps, whatever its queue depth (each is [`SEGMENT`] bytes).
const MAX_BOUNCE_SLOTS: usize = 32;

/// How many times a wait that fails for no reason the engine knows is retried before the
/// process is stopped (returning would free memory the kernel may still write).
const DRAIN_RETRIES: u32 = 1000;

/// What one segment does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write,
    Fsync,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Fsync => "flush",
        }
    }
}

/// Which of the volume's descriptors a segment goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// The volume's descriptor (`O_DIRECT` when the volume is direct).
    Main,
    /// A buffered descriptor of the same file, for the unaligned tail of a direct file.
    Tail,
}

/// One transfer: `len` bytes between file offset `offset` and caller memory at `ptr`.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) kind: Kind,
    pub(crate) target: Target,
    pub(crate) offset: u64,
    pub(crate) ptr: *mut u8,
    pub(crate) len: usize,
    /// Goes through a bounce slot because `ptr`/`len` do not meet the direct I/O alignment.
    pub(crate) bounce: bool,
}

/// The descriptors a ring serves, and how direct I/O on them is aligned.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Files {
    pub(crate) main: RawFd,
    pub(crate) tail: Option<RawFd>,
    /// `Some` when `main` is open with `O_DIRECT`.
    pub(crate) direct: Option<DirectAlign>,
}

/// A failed batch: the first error, and where.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) kind: Kind,
    pub(crate) offset: u64,
    pub(crate) len: usize,
    pub(crate) error: io::Error,
    /// The segment went to the kernel with `O_DIRECT` (for explaining `EINVAL`).
    pub(crate) direct: bool,
}

#[derive(Debug, Clone, Copy)]
struct Flight {
    seg: usize,
    /// Bytes of the segment already transferred.
    done: usize,
    /// Bounce slot index when bouncing.
    slot: Option<usize>,
}

/// An io_uring with its registered descriptors and bounce slab.
pub(crate) struct Ring {
    // Field order is drop order: the ring (which unregisters the slab) goes before the slab.
    uring: IoUring,
    depth: usize,
    files: Files,
    fixed_files: bool,
    slab: Option<AlignedBuf>,
    slab_registered: bool,
    free_slots: Vec<usize>,
    flights: Vec<Option<Flight>>,
    in_flight: usize,
    /// Most operations ever in flight at once (for tests of the limits).
    peak_in_flight: usize,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("depth", &self.depth)
            .field("fixed_files", &self.fixed_files)
            .field("slab_registered", &self.slab_registered)
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl Ring {
    /// A ring of `depth` entries serving `files`, with the descriptors registered when the
    /// kernel lets us (it saves a descriptor lookup per operation).
    pub(crate) fn new(depth: u32, files: Files) -> io::Result<Self> {
        let uring = IoUring::builder().setup_clamp().build(depth)?;
        let mut fds = vec![files.main];
        fds.extend(files.tail);
        let fixed_files = uring.submitter().register_files(&fds).is_ok();
        let depth = depth as usize;
        Ok(Ring {
            uring,
            depth,
            files,
            fixed_files,
            slab: None,
            slab_registered: false,
            free_slots: Vec::new(),
            flights: vec![None; depth],
            in_flight: 0,
            peak_in_flight: 0,
        })
    }

    /// True when the ring's descriptors are registered.
    pub(crate) fn fixed_files(&self) -> bool {
        self.fixed_files
    }

    /// True when the bounce slab exists and is registered with the kernel.
    pub(crate) fn slab_registered(&self) -> bool {
        self.slab_registered
    }

    /// Allocates the bounce slab on first use, registering it as fixed buffer 0 when the kernel
    /// lets us (locked memory limits may refuse; then plain reads and writes use it).
    fn ensure_slab(&mut self) {
        if self.slab.is_some() {
            return;
        }
        let slots = self.depth.min(MAX_BOUNCE_SLOTS);
        let slab = AlignedBuf::new(slots * SEGMENT, PAGE);
        let iov = libc::iovec {
            iov_base: slab.base().cast(),
            iov_len: slab.len(),
        };
        // SAFETY: the slab is a live allocation of `iov_len` bytes that this ring owns and that
        // outlives the registration: `uring` is declared before `slab`, so it is dropped (and
        // the buffer unregistered) first, and the slab is never replaced once set.
        self.slab_registered = unsafe { self.uring.submitter().register_buffers(&[iov]) }.is_ok();
        self.slab = Some(slab);
        self.free_slots = (0..slots).rev().collect();
    }

    /// [`run_limited`](Self::run_limited) with the whole depth.
    #[cfg(test)]
    pub(crate) fn run(&mut self, segs: &[Segment], ioprio: u16) -> Result<(), Failure> {
        self.run_limited(segs, ioprio, self.depth)
    }

    /// Runs `segs` at `ioprio` with at most `limit` (clamped to `1..=depth`) in flight, so that
    /// background reads keep few requests queued in the device ahead of a foreground write;
    /// returns once every submitted operation has completed. Stops submitting new segments at
    /// the first error.
    pub(crate) fn run_limited(
        &mut self,
        segs: &[Segment],
        ioprio: u16,
        limit: usize,
    ) -> Result<(), Failure> {
        if segs.iter().any(|s| s.bounce) {
            self.ensure_slab();
        }
        let limit = limit.clamp(1, self.depth);
        let mut batch = Batch {
            ring: self,
            segs,
            ioprio,
            limit,
            failure: None,
        };
        batch.drive();
        match batch.failure.take() {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    /// Submits queued entries and waits for `want` completions, retrying what the kernel asks
    /// to be retried. `EBUSY`/`EAGAIN` mean the completion queue or the kernel's resources are
    /// full: the caller reaps completions and comes back.
    fn enter(&mut self, want: usize) -> io::Result<()> {
        let mut idle_retries = 0u32;
        loop {
            match self.uring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN))
                        && self.in_flight > 0 =>
                {
                    return Ok(())
                }
                // Nothing of ours to reap: the kernel is short of memory or busy with others'
                // work. Give it a second, then report.
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN))
                        && idle_retries < 1000 =>
                {
                    idle_retries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits for every operation in flight, discarding results. Used after a failure that left
    /// operations in flight, and by the guard on unwind.
    fn drain(&mut self) {
        let mut failures = 0;
        while self.in_flight > 0 {
            if let Err(e) = self.enter(1) {
                failures += 1;
                if failures >= DRAIN_RETRIES {
                    // The kernel still owns buffers we cannot keep alive past this point.
                    tracing::error!(
                        "io_uring: cannot wait for {} operations in flight: {e}; aborting",
                        self.in_flight
                    );
                    std::process::abort();
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let mut cq = self.uring.completion();
            cq.sync();
            for cqe in &mut cq {
                let slot = cqe.user_data() as usize;
                if let Some(f) = self.flights.get_mut(slot).and_then(Option::take) {
                    if let Some(b) = f.slot {
                        self.free_slots.push(b);
                    }
                    self.in_flight -= 1;
                }
            }
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Never true after `run` returns; kept as the last line of defence for the invariant.
        self.drain();
    }
}

/// One call of [`Ring::run`]. Its `Drop` drains, so an unwind cannot outrun the kernel.
struct Batch<'r, 's> {
    ring: &'r mut Ring,
    segs: &'s [Segment],
    ioprio: u16,
    /// Operations in flight at most.
    limit: usize,
    failure: Option<Failure>,
}

impl Drop for Batch<'_, '_> {
    fn drop(&mut self) {
        self.ring.drain();
    }
}

impl Batch<'_, '_> {
    fn drive(&mut self) {
        let mut next = 0;
        // Segments waiting for a bounce slot or resubmission: (segment, bytes done, slot).
        let mut again: Vec<Flight> = Vec::new();
        loop {
            // Fill the queue: resubmissions first, then new segments.
            while self.failure.is_none() && self.ring.in_flight < self.limit {
                let flight = if let Some(f) = again.pop() {
                    f
                } else if next < self.segs.len() {
                    let seg = &self.segs[next];
                    let slot = if seg.bounce {
                        match self.ring.free_slots.pop() {
                            Some(s) => Some(s),
                            None => break, // wait for a bounce slot to come back
                        }
                    } else {
                        None
                    };
                    next += 1;
                    Flight {
                        seg: next - 1,
                        done: 0,
                        slot,
                    }
                } else {
                    break;
                };
                if let Err(e) = self.push(flight) {
                    self.fail(flight, e);
                }
            }
            if self.ring.in_flight == 0 {
                if let Some(f) = again.pop() {
                    // Only reached after a failure stopped submission; release its slot.
                    if let Some(b) = f.slot {
                        self.ring.free_slots.push(b);
                    }
                    continue;
                }
                return;
            }
            if let Err(e) = self.ring.enter(1) {
                // Nothing more can be submitted; what is in flight is drained by `Drop`.
                if self.failure.is_none() {
                    self.failure = Some(Failure {
                        kind: self.segs.first().map_or(Kind::Read, |s| s.kind),
                        offset: self.segs.first().map_or(0, |s| s.offset),
                        len: 0,
                        error: e,
                        direct: false,
                    });
                }
                return;
            }
            self.reap(&mut again);
        }
    }

    /// Handles every completion in the queue.
    fn reap(&mut self, again: &mut Vec<Flight>) {
        let mut done = Vec::new();
        {
            let mut cq = self.ring.uring.completion();
            cq.sync();
            for cqe in &mut cq {
                done.push((cqe.user_data() as usize, cqe.result()));
            }
        }
        for (slot, res) in done {
            let Some(mut f) = self.ring.flights.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            self.ring.in_flight -= 1;
            let seg = &self.segs[f.seg];
            if res == -libc::EAGAIN || res == -libc::EINTR {
                again.push(f);
                continue;
            }
            if res < 0 {
                self.fail(f, io::Error::from_raw_os_error(-res));
                continue;
            }
            if seg.kind == Kind::Fsync {
                continue;
            }
            let n = res as usize;
            if n == 0 {
                let what = if seg.kind == Kind::Read {
                    "unexpected end of file (did the volume shrink?)"
                } else {
                    "the write made no progress"
                };
                self.fail(f, io::Error::new(io::ErrorKind::UnexpectedEof, what));
                continue;
            }
            f.done += n;
            if f.done >= seg.len {
                if let Some(b) = f.slot {
                    if seg.kind == Kind::Read {
                        let src = self.slot_ptr(b);
                        // SAFETY: the kernel finished writing this slot (its completion is
                        // here); the slot holds at least `seg.len` bytes, `seg.ptr` is the
                        // caller's buffer of `seg.len` bytes, alive for the whole batch, and
                        // the two never overlap (the slab is ours).
                        unsafe { std::ptr::copy_nonoverlapping(src, seg.ptr, seg.len) };
                    }
                    self.ring.free_slots.push(b);
                }
            } else if self.seg_direct(seg) && f.done % self.align_offset() != 0 {
                // Direct I/O cannot continue from an unaligned point: the device ended early.
                self.fail(
                    f,
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "short direct {} of {} of {} bytes",
                            seg.kind.name(),
                            f.done,
                            seg.len
                        ),
                    ),
                );
            } else {
                again.push(f);
            }
        }
    }

    fn align_offset(&self) -> usize {
        self.ring.files.direct.map_or(1, |a| a.offset)
    }

    fn seg_direct(&self, seg: &Segment) -> bool {
        seg.target == Target::Main && self.ring.files.direct.is_some()
    }

    fn slot_ptr(&mut self, slot: usize) -> *mut u8 {
        let slab = self.ring.slab.as_mut().expect("bounce slot without a slab");
        // SAFETY: `slot` came from `free_slots`, which only holds indices below the slab's
        // slot count, so the offset stays inside the slab allocation.
        unsafe { slab.as_mut_ptr().add(slot * SEGMENT) }
    }

    /// Records the first failure and frees the flight's bounce slot.
    fn fail(&mut self, f: Flight, error: io::Error) {
        if let Some(b) = f.slot {
            self.ring.free_slots.push(b);
        }
        if self.failure.is_none() {
            let seg = &self.segs[f.seg];
            self.failure = Some(Failure {
                kind: seg.kind,
                offset: seg.offset + f.done as u64,
                len: seg.len - f.done.min(seg.len),
                error,
                direct: self.seg_direct(seg),
            });
        }
    }

    /// Queues the rest of `f`'s segment. On error nothing is in flight for `f`.
    fn push(&mut self, f: Flight) -> io::Result<()> {
        let seg = &self.segs[f.seg];
        let flight_slot = self
            .ring
            .flights
            .iter()
            .position(Option::is_none)
            .ok_or_else(|| io::Error::other("no free flight slot"))?;
        let fd_index: u32 = match seg.target {
            Target::Main => 0,
            Target::Tail => 1,
        };
        let raw_fd = match seg.target {
            Target::Main => self.ring.files.main,
            Target::Tail => self
                .ring
                .files
                .tail
                .ok_or_else(|| io::Error::other("no buffered descriptor for the tail"))?,
        };
        let offset = seg.offset + f.done as u64;
        let remaining = seg.len - f.done;
        let (buf, len, fixed) = match f.slot {
            Some(b) => {
                let base = self.slot_ptr(b);
                if f.done == 0 && seg.kind == Kind::Write {
                    // SAFETY: the caller's buffer holds `seg.len` bytes and lives for the whole
                    // batch; the slot holds SEGMENT >= seg.len bytes, is free (no operation
                    // uses it) and does not overlap the caller's memory.
                    unsafe { std::ptr::copy_nonoverlapping(seg.ptr, base, seg.len) };
                }
                // Direct reads of a partial tail ask for whole aligned units: the kernel stops
                // at the end of the file and the slot has room.
                let len = if seg.kind == Kind::Read {
                    round_up(remaining, self.align_offset())
                } else {
                    remaining
                };
                // SAFETY: `done < seg.len <= SEGMENT`, so the pointer stays inside the slot.
                (unsafe { base.add(f.done) }, len, self.ring.slab_registered)
            }
            // SAFETY: `done < seg.len`, so the pointer stays inside the caller's buffer.
            None => (unsafe { seg.ptr.add(f.done) }, remaining, false),
        };
        let len = u32::try_from(len).map_err(|_| io::Error::other("segment too long"))?;
        macro_rules! with_fd {
            ($build:expr) => {
                if self.ring.fixed_files {
                    let fd = types::Fixed(fd_index);
                    $build(fd)
                } else {
                    let fd = types::Fd(raw_fd);
                    $build(fd)
                }
            };
        }
        let ioprio = self.ioprio;
        let entry: squeue::Entry = match (seg.kind, fixed) {
            (Kind::Read, true) => with_fd!(|fd| opcode::ReadFixed::new(fd, buf, len, 0)
                .offset(offset)
                .ioprio(ioprio)
                .build()),
            (Kind::Read, false) => with_fd!(|fd| opcode::Read::new(fd, buf, len)
                .offset(offset)
                .ioprio(ioprio)
                .build()),
            (Kind::Write, true) => with_fd!(|fd| opcode::WriteFixed::new(fd, buf, len, 0)
                .offset(offset)
                .ioprio(ioprio)
                .build()),
            (Kind::Write, false) => with_fd!(|fd| opcode::Write::new(fd, buf, len)
                .offset(offset)
                .ioprio(ioprio)
                .build()),
            (Kind::Fsync, _) => with_fd!(|fd| opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()),
        };
        let entry = entry.user_data(flight_slot as u64);
        loop {
            // SAFETY: the entry points at memory that stays valid until its completion is
            // reaped: the caller's buffer lives for the whole batch, which drains before it
            // returns or unwinds (see `Drop for Batch`), and a bounce slot is ring-owned and
            // not reused until this flight releases it.
            let pushed = unsafe { self.ring.uring.submission().push(&entry) };
            if pushed.is_ok() {
                break;
            }
            // Submission queue full: hand what is queued to the kernel, then retry.
            self.ring.enter(0)?;
        }
        self.ring.flights[flight_slot] = Some(f);
        self.ring.in_flight += 1;
        self.ring.peak_in_flight = self.ring.peak_in_flight.max(self.ring.in_flight);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use super::*;

    fn read_segment(buf: &mut [u8]) -> Segment {
        Segment {
            kind: Kind::Read,
            target: Target::Main,
            offset: 0,
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            bounce: false,
        }
    }

    #[test]
    fn the_io_priority_reaches_the_kernel() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[9u8; 8192]).unwrap();
        let files = Files {
            main: file.as_raw_fd(),
            tail: None,
            direct: None,
        };
        let mut ring = Ring::new(4, files).unwrap();
        let mut buf = vec![0u8; 8192];
        ring.run(&[read_segment(&mut buf)], IOPRIO_IDLE).unwrap();
        assert_eq!(buf, vec![9u8; 8192]);
        // The kernel checks the field: class 7 does not exist, so it refuses the read, which
        // shows the priority we set is the one it sees.
        let bad_class = 7 << 13;
        let f = ring.run(&[read_segment(&mut buf)], bad_class).unwrap_err();
        assert_eq!(f.error.raw_os_error(), Some(libc::EINVAL), "{f:?}");
        assert_eq!(ring.in_flight, 0);
        // The ring is still good after a failed batch.
        ring.run(&[read_segment(&mut buf)], 0).unwrap();
    }

    #[test]
    fn a_failed_segment_stops_the_batch_and_leaves_nothing_in_flight() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[1u8; 4096]).unwrap();
        let files = Files {
            main: file.as_raw_fd(),
            tail: None,
            direct: None,
        };
        let mut ring = Ring::new(2, files).unwrap();
        let mut bufs: Vec<Vec<u8>> = (0..6).map(|_| vec![0u8; 4096]).collect();
        let mut segs: Vec<Segment> = bufs.iter_mut().map(|b| read_segment(b)).collect();
        // The third reads past the end of the file: the kernel returns 0 bytes.
        segs[2].offset = 1 << 20;
        let f = ring.run(&segs, 0).unwrap_err();
        assert_eq!(f.error.kind(), io::ErrorKind::UnexpectedEof, "{f:?}");
        assert_eq!(f.offset, 1 << 20);
        assert_eq!(ring.in_flight, 0);
        assert!(ring.flights.iter().all(Option::is_none));
        drop(segs);
        assert_eq!(bufs[0], vec![1u8; 4096]);
    }

    #[test]
    fn background_batches_keep_to_their_smaller_depth() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![4u8; 64 * 4096]).unwrap();
        let files = Files {
            main: file.as_raw_fd(),
            tail: None,
            direct: None,
        };
        let mut ring = Ring::new(16, files).unwrap();
        let mut bufs: Vec<Vec<u8>> = (0..64).map(|_| vec![0u8; 4096]).collect();
        let mut segs: Vec<Segment> = bufs.iter_mut().map(|b| read_segment(b)).collect();
        for (i, s) in segs.iter_mut().enumerate() {
            s.offset = i as u64 * 4096;
        }
        ring.run_limited(&segs, IOPRIO_IDLE, 2).unwrap();
        assert_eq!(ring.peak_in_flight, 2);
        ring.run_limited(&segs, 0, 100).unwrap();
        assert_eq!(ring.peak_in_flight, 16, "clamped to the ring's depth");
        drop(segs);
        assert!(bufs.iter().all(|b| b == &vec![4u8; 4096]));
    }
}

//! Resync, periodic scan and verify jobs: one at a time per primary, on the link's ordered
//! stream. A job takes dirty regions (they stay counted dirty while in flight) and gives them
//! up only when a barrier queued after their blocks is acknowledged; a block is read and
//! queued under its regions' locks, so it never overtakes a newer write. Mismatches of verify
//! and periodic scans are re-checked after the writes in flight to them before they count.
//! The comparing passes are in [`super::compare`].

use std::collections::VecDeque;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tracing::{info, warn};

use super::conn::{Conn, PendingKind, Waiter};
use super::eta::Eta;
use super::throttle::ResyncThrottle;
use super::{Inner, JobKind, JobOptions, Progress};
use crate::config::CompareSide;
use crate::dirty::Region;
use crate::protocol::messages::{self as wire, write_flags, Message};
use crate::report::{LinkState, Report, ResyncMode};
use crate::storage::scan::{self, RateLimiter, RunBuilder, ScanMap, ScanOptions};
use crate::storage::volume::{IoPriority, ReadOp};
use crate::sync::lock;
use crate::units::BlockRange;
use crate::{Error, ErrorKind, Result};

/// Blocks per digest request and per compare chunk.
pub(super) const CHUNK_BLOCKS: u64 = 1024;
/// Digest requests kept in flight ahead of the local scan.
pub(super) const REQUESTS_AHEAD: u64 = 16;
/// Checkpoints of a full scan: it runs in this many segments (at least
/// [`MIN_SEGMENT_BLOCKS`] each), and a scan cut off resumes at the last one passed.
const CHECKPOINTS: u64 = 64;
/// Fewest blocks of a full-scan segment.
const MIN_SEGMENT_BLOCKS: u64 = 256;
/// Dirty regions taken per resync window.
const WINDOW_REGIONS: usize = 256;
/// Bytes of dirty regions taken per resync window.
pub(super) const WINDOW_BYTES: u64 = 16 << 20;

impl Inner {
    /// Runs one job. `called_at` is the value of [`Inner::cancels`] when a caller asked for
    /// the job (None for the primary's own resyncs and periodic scans): a
    /// [`Primary::cancel_jobs`](super::Primary::cancel_jobs) since then cancels it.
    pub(super) fn run_job(
        &self,
        kind: JobKind,
        opts: &JobOptions<'_>,
        called_at: Option<u64>,
    ) -> Result<Report> {
        let timeout = opts.connect_timeout.unwrap_or(self.config.link_timeout * 2);
        let conn = self.wait_connected(timeout)?;
        let _job = lock(&self.job);
        if conn.is_dead() {
            return Err(conn.lost("link lost"));
        }
        let start = Instant::now();
        let (s0, r0) = (
            conn.counters.sent.load(Ordering::Relaxed),
            conn.counters.received.load(Ordering::Relaxed),
        );
        let valid = lock(&self.dirty).is_valid();
        let mode = match kind {
            JobKind::Auto if !valid => ResyncMode::FullScan,
            JobKind::Auto => ResyncMode::DirtyMap,
            JobKind::Full => ResyncMode::FullScan,
            JobKind::Periodic => ResyncMode::Periodic,
            JobKind::Verify => ResyncMode::Verify,
        };
        let prev_state = *lock(&self.state);
        if kind != JobKind::Verify && kind != JobKind::Periodic {
            self.set_state(LinkState::Resyncing);
        }
        let mut report = Report::new(mode, self.config.algorithm, self.config.compare);
        let background = kind == JobKind::Periodic;
        let rate = self
            .config
            .periodic
            .filter(|_| background)
            .map(|p| Mutex::new(RateLimiter::new(p.rate_mib_s)));
        // Resyncs and verifies yield to the application's writes; the periodic scan has its
        // own rate and idle priority.
        let throttle = (!background).then(|| {
            let c = &self.config;
            // `last_write_ms` is a millisecond since `started`, plus one (0: never).
            let last_write = match self.last_write_ms.load(Ordering::Relaxed) {
                0 => None,
                ms => Some(Duration::from_millis(ms - 1)),
            };
            Mutex::new(ResyncThrottle::new(
                c.resync_min_rate,
                c.resync_max_rate,
                c.resync_yield,
                self.started.elapsed(),
                self.writes.load(Ordering::Relaxed),
                last_write,
            ))
        });
        let ctl = Ctl {
            inner: self,
            conn: &conn,
            cancel: opts.cancel,
            called_at,
            rate: rate.as_ref(),
            throttle: throttle.as_ref(),
            background,
        };
        let mut body = || -> Result<()> {
            let mut job = Job::new(ctl, &mut report, opts.progress, kind);
            match mode {
                ResyncMode::FullScan | ResyncMode::Periodic => {
                    let blocks = self.volume.blocks();
                    if mode == ResyncMode::FullScan {
                        // In segments, each a checkpoint a cut-off scan resumes from.
                        let mut at = match kind {
                            JobKind::Auto => self.durable.checkpoint().unwrap_or(0).min(blocks),
                            _ => 0,
                        };
                        if at > 0 {
                            info!(from_block = at, "full scan resumes from its checkpoint");
                        }
                        let segment = (blocks / CHECKPOINTS).max(MIN_SEGMENT_BLOCKS);
                        // A thread writes the checkpoints to the metadata record (a write and
                        // two syncs each) while the scan goes on; it ends with the scan,
                        // having written the last one.
                        let (wake, woken) = crossbeam_channel::bounded::<()>(1);
                        std::thread::scope(|s| -> Result<()> {
                            let recorder = s.spawn(|| {
                                for () in woken {
                                    self.durable.record_checkpoint(self.session);
                                }
                            });
                            job.recorder = Some(wake);
                            // Caught so that a panic, too, ends the recorder before the
                            // scope waits for it; it goes on after.
                            let scanned = catch_unwind(AssertUnwindSafe(|| -> Result<()> {
                                if conn.tree && at < blocks {
                                    // One pipelined descent; it sets the checkpoints as it
                                    // passes them.
                                    job.compare_tree(
                                        &[BlockRange::new(at, blocks - at)],
                                        Some((segment, at)),
                                    )?;
                                    at = blocks;
                                }
                                while at < blocks {
                                    let n = segment.min(blocks - at);
                                    job.compare(BlockRange::new(at, n))?;
                                    at += n;
                                    if at < blocks {
                                        job.checkpoint(at);
                                    }
                                }
                                Ok(())
                            }));
                            job.recorder = None;
                            if recorder.join().is_err() {
                                warn!("the checkpoint recorder panicked");
                            }
                            self.durable.record_checkpoint(self.session);
                            scanned.unwrap_or_else(|p| resume_unwind(p))
                        })?;
                    } else {
                        job.compare(BlockRange::new(0, blocks))?;
                    }
                    if job.defer {
                        // Only blocks that still differ once the writes in flight to them
                        // have landed are counted and repaired.
                        job.defer = false;
                        for run in job.recheck()? {
                            job.ship(run)?;
                        }
                    }
                    let w = self.barrier(&conn, Vec::new(), true)?;
                    self.wait_ack(&conn, &w)?;
                    // The map is valid from here: the write-intent bits now cover this session.
                    self.durable.map_valid(self.session);
                    if mode == ResyncMode::FullScan && self.durable.checkpoint().is_some() {
                        self.durable.set_checkpoint(self.session, None);
                    }
                    job.dirty_passes()?;
                }
                ResyncMode::DirtyMap => job.dirty_passes()?,
                ResyncMode::Verify => {
                    job.compare(BlockRange::new(0, self.volume.blocks()))?;
                    job.recheck()?;
                }
                ResyncMode::None => {}
            }
            // Everything queued before now is on the secondary; after a resync it is a
            // consistent image again, and says so durably before it acknowledges.
            let w = if kind == JobKind::Verify {
                self.barrier(&conn, Vec::new(), false)?
            } else {
                self.resync_done(&conn)?
            };
            self.wait_ack(&conn, &w)
        };
        let result = if background {
            crate::storage::background::run_niced(body)
        } else {
            body()
        };
        if let Some(e) = lock(&self.job_eta).as_mut() {
            match result {
                Ok(()) => e.finish(),
                Err(_) => e.halt(),
            }
        }
        if kind != JobKind::Verify && kind != JobKind::Periodic && !conn.is_dead() {
            self.set_state(if prev_state == LinkState::Resyncing {
                LinkState::Connected
            } else {
                prev_state
            });
        }
        report.seconds = start.elapsed().as_secs_f64();
        report.bytes_sent = conn.counters.sent.load(Ordering::Relaxed) - s0;
        report.bytes_received = conn.counters.received.load(Ordering::Relaxed) - r0;
        if mode == ResyncMode::DirtyMap && report.blocks == 0 && report.mismatched == 0 {
            report.mode = ResyncMode::None;
        }
        match result {
            Ok(()) => {
                info!(mode = %report.mode, blocks = report.blocks, mismatched = report.mismatched, bytes_sent = report.bytes_sent, seconds = report.seconds, "job done");
                if matches!(kind, JobKind::Auto | JobKind::Full) {
                    let g = crate::units::Generation {
                        session: self.session,
                        epoch: self.epoch.load(Ordering::SeqCst),
                    };
                    self.durable.coherent(g, &conn.peer);
                }
                *lock(&self.last_report) = Some(report.clone());
                Ok(report)
            }
            Err(e) => {
                warn!(mode = %mode, error = %e, "job failed");
                if matches!(e.kind(), ErrorKind::Link | ErrorKind::RemoteIo) {
                    conn.fail(&self.dirty, &e);
                }
                self.record_error(&e);
                Err(e)
            }
        }
    }
}

impl Inner {
    /// Sends the current contents of `run` as repair writes on the ordered stream, each piece
    /// read and queued under its regions' locks: whichever side found the mismatch, a repair
    /// block never overtakes a newer write.
    pub(super) fn ship(&self, conn: &Conn, run: BlockRange, priority: IoPriority) -> Result<()> {
        let vol = &*self.volume;
        let bs = vol.block_size();
        let per_piece = (wire::MAX_WRITE_DATA as u64 / bs.bytes()).max(1);
        let mut next = run.start.0;
        let mut buf = scan::AlignedBuf::default();
        while next < run.end() {
            let piece = BlockRange::new(next, per_piece.min(run.end() - next));
            let (offset, len) = scan::byte_span(vol, piece);
            buf.resize(len);
            {
                let _guards = self.locks.lock(offset, len as u64);
                vol.read_batch(
                    &mut [ReadOp {
                        offset,
                        buf: buf.as_mut_slice(),
                    }],
                    priority,
                )?;
                let queued = conn.submit(
                    |seq| Message::Write {
                        seq,
                        offset,
                        flags: write_flags::REPAIR,
                        data: buf.as_slice().to_vec(),
                    },
                    PendingKind::Write {
                        offset,
                        len: len as u64,
                    },
                    None,
                    false,
                )?;
                if !queued {
                    return Err(conn.lost("link lost"));
                }
            }
            next = piece.end();
        }
        Ok(())
    }
}

/// What a job's background parts need: liveness, cancellation and pacing. Copied into the
/// scan pipeline's reader thread.
#[derive(Clone, Copy)]
pub(super) struct Ctl<'a> {
    pub(super) inner: &'a Inner,
    pub(super) conn: &'a Conn,
    pub(super) cancel: Option<&'a AtomicBool>,
    /// [`Inner::cancels`] when a caller asked for the job; None for the primary's own.
    called_at: Option<u64>,
    rate: Option<&'a Mutex<RateLimiter>>,
    /// The yielding rate of a resync or verify ([`ResyncThrottle`]).
    throttle: Option<&'a Mutex<ResyncThrottle>>,
    background: bool,
}

impl Ctl<'_> {
    fn check_live(&self) -> Result<()> {
        if self.conn.is_dead() {
            return Err(self.conn.lost("link lost"));
        }
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed("primary"));
        }
        if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed))
            || self
                .called_at
                .is_some_and(|at| self.inner.cancels.load(Ordering::SeqCst) != at)
        {
            return Err(Error::Cancelled("job"));
        }
        Ok(())
    }

    /// Pacing of a job's reads: for a resync or verify, the rate its controller sets from the
    /// foreground writes; for a background job, the rate limit and a short yield while
    /// foreground writes are arriving.
    pub(super) fn pace(&self, bytes: u64) -> Result<()> {
        if let Some(t) = self.throttle {
            let mut owed = bytes;
            loop {
                let wait = {
                    let now = self.inner.started.elapsed();
                    let mut t = lock(t);
                    t.observe(now, self.inner.writes.load(Ordering::Relaxed));
                    t.admit(now, &mut owed)
                };
                let Some(wait) = wait else { break };
                std::thread::sleep(wait);
                self.check_live()?;
            }
        }
        if self.background {
            if let Some(r) = self.rate {
                lock(r).take(bytes);
            }
            for _ in 0..10 {
                let last = self.inner.last_write_ms.load(Ordering::Relaxed);
                let now = self.inner.started.elapsed().as_millis() as u64;
                if last == 0 || now.saturating_sub(last) >= 5 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        self.check_live()
    }
}

/// One running resync, periodic scan or verify.
pub(super) struct Job<'a> {
    pub(super) inner: &'a Inner,
    pub(super) conn: &'a Conn,
    pub(super) report: &'a mut Report,
    pub(super) ctl: Ctl<'a>,
    pub(super) progress: Option<&'a (dyn Fn(Progress) + Sync)>,
    /// Record mismatches for a re-check instead of shipping them at once (verify, and the
    /// periodic scan, whose report must count divergence, not writes that raced the scan).
    pub(super) defer: bool,
    priority: IoPriority,
    pub(super) mismatches: RunBuilder,
    pub(super) done: u64,
    pub(super) total: u64,
    /// Wakes the thread that writes a full scan's checkpoints to the metadata record (None:
    /// written here).
    recorder: Option<Sender<()>>,
}

impl<'a> Job<'a> {
    pub(super) fn new(
        ctl: Ctl<'a>,
        report: &'a mut Report,
        progress: Option<&'a (dyn Fn(Progress) + Sync)>,
        kind: JobKind,
    ) -> Self {
        let inner = ctl.inner;
        let total = match kind {
            JobKind::Auto if lock(&inner.dirty).is_valid() => 0,
            _ => inner.volume.blocks(),
        };
        let bs = inner.volume.block_size().bytes();
        *lock(&inner.job_eta) = Some(Eta::start(total * bs, inner.started.elapsed()));
        Job {
            inner,
            conn: ctl.conn,
            report,
            ctl,
            progress,
            defer: matches!(kind, JobKind::Verify | JobKind::Periodic),
            priority: if ctl.background {
                IoPriority::Idle
            } else {
                IoPriority::Normal
            },
            mismatches: RunBuilder::default(),
            done: 0,
            total,
            recorder: None,
        }
    }

    /// Moves the full scan's checkpoint to `next`: in memory at once, in the metadata record
    /// by the recorder when the job has one, so the scan does not wait on the record's syncs.
    pub(super) fn checkpoint(&mut self, next: u64) {
        self.inner.durable.note_checkpoint(Some(next));
        match &self.recorder {
            // Full: a wake-up is pending, and the recorder reads the latest value then.
            Some(wake) => drop(wake.try_send(())),
            None => self.inner.durable.record_checkpoint(self.inner.session),
        }
    }

    pub(super) fn scan_options(&self) -> ScanOptions {
        let mut o = ScanOptions::new(self.inner.config.algorithm);
        if self.ctl.background {
            o = o.background();
        }
        o.batch_bytes = (CHUNK_BLOCKS * self.inner.volume.block_size().bytes()) as usize;
        o
    }

    pub(super) fn wire_priority(&self) -> u8 {
        if self.ctl.background {
            wire::priority::IDLE
        } else {
            wire::priority::NORMAL
        }
    }

    pub(super) fn advance(&mut self, blocks: u64) {
        self.done += blocks;
        self.report.blocks += blocks;
        let bs = self.inner.volume.block_size().bytes();
        let eta = lock(&self.inner.job_eta).as_mut().and_then(|e| {
            e.update(
                self.done * bs,
                self.total * bs,
                self.inner.started.elapsed(),
            );
            e.seconds()
        });
        if let Some(p) = self.progress {
            p(Progress {
                done: self.done,
                total: self.total.max(self.done),
                eta: eta.map(Duration::from_secs_f64),
            });
        }
    }

    pub(super) fn next_req(&self) -> u64 {
        self.inner.next_req.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn recv(&self, rx: &Receiver<Message>) -> Result<Message> {
        loop {
            self.ctl.check_live()?;
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(m) => return Ok(m),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return Err(self.conn.lost("link lost")),
            }
        }
    }

    /// Compares `range` block by block; mismatches are shipped (or recorded, for verify).
    pub(super) fn compare(&mut self, range: BlockRange) -> Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        if self.conn.tree {
            return self.compare_tree(&[range], None);
        }
        let req = self.next_req();
        let rx = self.conn.route(req);
        let result = match self.inner.config.compare {
            CompareSide::Primary => self.compare_here(range, req, &rx),
            CompareSide::Secondary => self.compare_there(range, req, &rx),
        };
        self.conn.unroute(req);
        result
    }
}

impl Job<'_> {
    /// Sends the current contents of `run` ([`Inner::ship`]).
    pub(super) fn ship(&mut self, run: BlockRange) -> Result<()> {
        self.inner.ship(self.conn, run, self.priority)?;
        self.report.blocks_sent += run.count;
        Ok(())
    }

    /// Resyncs the dirty regions, window by window, until none is left (regions dirtied
    /// meanwhile by a full async queue are picked up by the next pass).
    fn dirty_passes(&mut self) -> Result<()> {
        let bs = self.inner.volume.block_size();
        let blocks = self.inner.volume.blocks();
        for _pass in 0..8 {
            let mut cursor = Region(0);
            let mut outstanding: VecDeque<Arc<Waiter>> = VecDeque::new();
            let mut any = false;
            loop {
                self.ctl.check_live()?;
                // Take a window of dirty regions.
                let (taken, runs) = {
                    let mut d = lock(&self.inner.dirty);
                    let mut taken = Vec::new();
                    let mut runs: Vec<BlockRange> = Vec::new();
                    let mut bytes = 0;
                    while taken.len() < WINDOW_REGIONS && bytes < WINDOW_BYTES {
                        let Some(r) = d.next_dirty(cursor) else { break };
                        d.take(r);
                        taken.push(r);
                        cursor = Region(r.0 + 1);
                        let (off, len) = d.span(r);
                        bytes += len;
                        let first = bs.index_of(off).0;
                        let end = bs.blocks_in(off + len).min(blocks);
                        match runs.last_mut() {
                            Some(last) if last.end() == first => last.count += end - first,
                            _ => runs.push(BlockRange::new(first, end - first)),
                        }
                    }
                    (taken, runs)
                };
                if taken.is_empty() {
                    break;
                }
                any = true;
                self.total += runs.iter().map(|r| r.count).sum::<u64>();
                let compared = self.compare_window(&runs);
                if let Err(e) = compared {
                    let mut d = lock(&self.inner.dirty);
                    taken.iter().for_each(|r| d.fail(*r));
                    return Err(e);
                }
                outstanding.push_back(self.inner.barrier(self.conn, taken, false)?);
                while outstanding.len() > 4 {
                    let w = outstanding.pop_front().unwrap_or_default();
                    self.inner.wait_ack(self.conn, &w)?;
                }
            }
            for w in outstanding {
                self.inner.wait_ack(self.conn, &w)?;
            }
            if !any {
                break;
            }
        }
        Ok(())
    }

    /// Re-checks every recorded mismatch against the secondary's digest taken after the writes
    /// in flight to it; only the ones still different are reported.
    fn recheck(&mut self) -> Result<Vec<BlockRange>> {
        let runs = std::mem::take(&mut self.mismatches).finish();
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let algorithm = self.inner.config.algorithm;
        let vol = self.inner.volume.clone();
        let mut still = RunBuilder::default();
        let mut count = 0;
        for run in runs {
            let mut next = run.start.0;
            while next < run.end() {
                let piece = BlockRange::new(next, CHUNK_BLOCKS.min(run.end() - next));
                let (offset, len) = scan::byte_span(&*vol, piece);
                let req = self.next_req();
                let rx = self.conn.route(req);
                let res = (|| -> Result<Vec<u8>> {
                    // Held until the secondary answers: no write to these blocks can slip in
                    // between our digest and theirs.
                    let _guards = self.inner.locks.lock(offset, len as u64);
                    let ours = scan::scan_all(&*vol, piece, ScanOptions::new(algorithm))?;
                    self.conn.send(&Message::ScanRequest {
                        req,
                        algorithm,
                        level: 0,
                        priority: wire::priority::NORMAL,
                        range: piece,
                    })?;
                    let mut theirs = Vec::new();
                    while (theirs.len() / algorithm.digest_len()) < piece.count as usize {
                        match self.recv(&rx)? {
                            Message::Digests { digests, .. } => theirs.extend(digests),
                            Message::ScanEnd { .. } => break,
                            other => {
                                return Err(Error::protocol(
                                    &self.conn.peer,
                                    format!("unexpected {} during a scan", other.name()),
                                ))
                            }
                        }
                    }
                    let theirs = ScanMap::new(algorithm, piece.start, theirs)?;
                    let mut diff = Vec::new();
                    for r in ours.mismatches(&theirs) {
                        diff.extend(r.start.0..r.end());
                    }
                    Ok(diff.into_iter().flat_map(|b| b.to_le_bytes()).collect())
                })();
                self.conn.unroute(req);
                for b in res?.chunks_exact(8) {
                    still.push(u64::from_le_bytes(b.try_into().unwrap_or_default()));
                    count += 1;
                }
                next = piece.end();
            }
        }
        self.report.mismatched = count;
        let confirmed = still.finish();
        self.report.mismatched_ranges =
            confirmed.iter().take(Report::MAX_RANGES).copied().collect();
        Ok(confirmed)
    }
}

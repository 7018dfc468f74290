//! The primary controller: replicates writes in order, tracks what the secondary lacks in the
//! dirty map while the link is down, reconnects by itself and resyncs — from the dirty map when
//! it is valid, by a full checksum scan when it is not — and runs the periodic scan.
//!
//! Invariants, and where they are kept:
//! - **One ordered stream.** Replicated writes, repair blocks, barriers and scan requests all go
//!   through one queue to one writer thread ([`Conn::tx`]); the secondary applies them in that
//!   order.
//! - **No stale block over a newer one.** A write takes the stripe locks of its regions
//!   ([`RegionLocks`]) while it writes locally and queues its frames; a resync reads a block
//!   and queues it under the same locks. So a repair block read before a write is queued
//!   before that write, and one read after it carries its data.
//! - **Nothing acknowledged is lost.** Every queued write is registered as pending *before* it
//!   is queued; on link loss every pending write is marked in the dirty map before the link is
//!   reported down ([`Conn::fail`]). In sync mode the caller returns only after the ack.
//! - **No dirty bit cleared before the secondary has the data.** A resync *takes* regions
//!   (they stay counted dirty, in flight) and releases them only when a barrier queued after
//!   their blocks is acknowledged; a failure puts them back.

use std::collections::{HashMap, VecDeque};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use tracing::{debug, info, warn};

use crate::config::{CompareSide, PrimaryConfig, ReplicationMode};
use crate::dirty::{DirtyMap, Region};
use crate::protocol::auth;
use crate::protocol::link::{self, Counters, FrameReader, FrameWriter};
use crate::protocol::messages::{self as wire, write_flags, Message};
use crate::report::{LinkState, Report, ResyncMode, Status};
use crate::storage::digest::Algorithm;
use crate::storage::scan::{self, RateLimiter, RunBuilder, ScanMap, ScanOptions};
use crate::storage::volume::{check_io, IoPriority, ReadOp, Volume};
use crate::units::{BlockRange, Generation};
use crate::{Error, ErrorKind, Result};

/// What became of a replicated write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The secondary has it (sync mode).
    Replicated,
    /// Queued on the link (async mode).
    Queued,
    /// No link, or the async queue was full: the range is marked in the dirty map.
    Degraded,
}

/// Progress of a long job: `done` of `total` blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Blocks compared so far.
    pub done: u64,
    /// Blocks to compare.
    pub total: u64,
}

/// Options of one resync or verify.
#[derive(Default)]
pub struct JobOptions<'a> {
    /// Compare every block, whatever the dirty map says.
    pub full: bool,
    /// Called as the job advances.
    pub progress: Option<&'a (dyn Fn(Progress) + Sync)>,
    /// Set to stop the job early ([`Error::Cancelled`]).
    pub cancel: Option<&'a AtomicBool>,
    /// How long to wait for the link (default: twice the link timeout).
    pub connect_timeout: Option<Duration>,
}

impl std::fmt::Debug for JobOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobOptions")
            .field("full", &self.full)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Blocks per digest request and per compare chunk.
const CHUNK_BLOCKS: u64 = 1024;
/// Digest requests kept in flight ahead of the local scan.
const REQUESTS_AHEAD: u64 = 16;
/// Dirty regions taken per resync window.
const WINDOW_REGIONS: usize = 256;
/// Bytes of dirty regions taken per resync window.
const WINDOW_BYTES: u64 = 16 << 20;
/// Number of stripe locks.
const STRIPES: usize = 256;

/// Stripe locks over dirty-map regions: writes and resync reads of a region exclude each
/// other. Locks are taken in ascending stripe order, so two ranges never deadlock.
#[derive(Debug)]
struct RegionLocks {
    stripes: Vec<Mutex<()>>,
    shift: u32,
}

impl RegionLocks {
    fn new(region_size: u64) -> Self {
        RegionLocks {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            shift: region_size.trailing_zeros(),
        }
    }

    fn lock(&self, offset: u64, len: u64) -> Vec<MutexGuard<'_, ()>> {
        let first = offset >> self.shift;
        let last = (offset + len.max(1) - 1) >> self.shift;
        let mut idx: Vec<usize> = if last - first >= STRIPES as u64 {
            (0..STRIPES).collect()
        } else {
            (first..=last)
                .map(|r| (r % STRIPES as u64) as usize)
                .collect()
        };
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter().map(|i| lock(&self.stripes[i])).collect()
    }
}

/// Wakes a waiter when its frame is acknowledged (true) or the link is lost (false).
#[derive(Debug, Default)]
struct Waiter {
    done: Mutex<Option<bool>>,
    cv: Condvar,
}

impl Waiter {
    fn set(&self, ok: bool) {
        *lock(&self.done) = Some(ok);
        self.cv.notify_all();
    }

    fn wait(&self) -> bool {
        let mut g = lock(&self.done);
        loop {
            if let Some(ok) = *g {
                return ok;
            }
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn wait_timeout(&self, t: Duration) -> Option<bool> {
        let g = lock(&self.done);
        let (g, _) = self
            .cv
            .wait_timeout_while(g, t, |d| d.is_none())
            .unwrap_or_else(|e| e.into_inner());
        *g
    }
}

#[derive(Debug)]
enum PendingKind {
    /// A replicated write or repair block: on loss, its range is marked dirty.
    Write { offset: u64, len: u64 },
    /// A barrier: on ack its regions leave the map (and the map may become valid); on loss
    /// they are dirty again.
    Barrier {
        regions: Vec<Region>,
        validate: bool,
    },
    /// A flush.
    Flush,
}

#[derive(Debug)]
struct PendingEntry {
    kind: PendingKind,
    waiter: Option<Arc<Waiter>>,
}

#[derive(Debug, Default)]
struct PendingTable {
    dead: bool,
    entries: HashMap<u64, PendingEntry>,
}

/// One established link.
#[derive(Debug)]
struct Conn {
    peer: String,
    tx: Sender<Vec<u8>>,
    seq: AtomicU64,
    pending: Mutex<PendingTable>,
    routes: Mutex<HashMap<u64, Sender<Message>>>,
    counters: Arc<Counters>,
    stream: TcpStream,
    dead: AtomicBool,
}

impl Conn {
    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Registers a pending entry and queues its frame. Returns false (nothing registered)
    /// when the link is down, or when `try_only` and the queue is full.
    fn submit(
        &self,
        make: impl FnOnce(u64) -> Message,
        kind: PendingKind,
        waiter: Option<Arc<Waiter>>,
        try_only: bool,
    ) -> Result<bool> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let frame = make(seq)
            .to_frame()
            .map_err(|e| Error::protocol(&self.peer, e.to_string()))?;
        {
            let mut p = lock(&self.pending);
            if p.dead {
                return Ok(false);
            }
            p.entries.insert(seq, PendingEntry { kind, waiter });
        }
        let sent = if try_only {
            match self.tx.try_send(frame) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            }
        } else {
            self.tx.send(frame).is_ok()
        };
        if !sent {
            // Whoever removes the entry owns it: if the link failed meanwhile, fail() has
            // already accounted for it.
            lock(&self.pending).entries.remove(&seq);
        }
        Ok(sent)
    }

    /// Queues a message that expects no ack.
    fn send(&self, msg: &Message) -> Result<()> {
        let frame = msg
            .to_frame()
            .map_err(|e| Error::protocol(&self.peer, e.to_string()))?;
        if self.is_dead() || self.tx.send(frame).is_err() {
            return Err(Error::link(&self.peer, "link lost"));
        }
        Ok(())
    }

    fn route(&self, req: u64) -> Receiver<Message> {
        let (tx, rx) = unbounded();
        lock(&self.routes).insert(req, tx);
        rx
    }

    fn unroute(&self, req: u64) {
        lock(&self.routes).remove(&req);
    }

    fn pending_writes(&self) -> u64 {
        lock(&self.pending)
            .entries
            .values()
            .filter(|e| matches!(e.kind, PendingKind::Write { .. }))
            .count() as u64
    }

    fn ack(&self, seq: u64, dirty: &Mutex<DirtyMap>) -> Result<()> {
        let Some(entry) = lock(&self.pending).entries.remove(&seq) else {
            return Err(Error::protocol(
                &self.peer,
                format!("Ack for unknown sequence {seq}"),
            ));
        };
        if let PendingKind::Barrier { regions, validate } = &entry.kind {
            let mut d = lock(dirty);
            for r in regions {
                d.ack(*r);
            }
            if *validate {
                d.set_valid();
            }
        }
        if let Some(w) = entry.waiter {
            w.set(true);
        }
        Ok(())
    }

    /// Declares the link dead: every pending write goes into the dirty map, taken regions go
    /// back, waiters and jobs are woken. Idempotent.
    fn fail(&self, dirty: &Mutex<DirtyMap>, err: &Error) {
        if self.dead.swap(true, Ordering::SeqCst) {
            return;
        }
        warn!(peer = %self.peer, error = %err, "link down");
        let entries: Vec<PendingEntry> = {
            let mut p = lock(&self.pending);
            p.dead = true;
            p.entries.drain().map(|(_, e)| e).collect()
        };
        {
            let mut d = lock(dirty);
            for e in &entries {
                match &e.kind {
                    PendingKind::Write { offset, len } => d.mark(*offset, *len),
                    PendingKind::Barrier { regions, .. } => regions.iter().for_each(|r| d.fail(*r)),
                    PendingKind::Flush => {}
                }
            }
        }
        for e in entries {
            if let Some(w) = e.waiter {
                w.set(false);
            }
        }
        lock(&self.routes).clear();
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        // Wake the writer thread if it is waiting for frames.
        let _ = self.tx.try_send(Vec::new());
    }
}

/// A connection past its handshake.
struct Handshaken {
    stream: TcpStream,
    reader: FrameReader,
    writer: FrameWriter,
    counters: Arc<Counters>,
    /// What the secondary was last coherent with.
    last: Generation,
    /// The epoch this connection opened.
    epoch: u64,
}

#[derive(Debug)]
struct Inner {
    volume: Arc<dyn Volume>,
    config: PrimaryConfig,
    session: u128,
    volume_id: u128,
    dirty: Mutex<DirtyMap>,
    locks: RegionLocks,
    conn: Mutex<Option<Arc<Conn>>>,
    state: Mutex<LinkState>,
    state_cv: Condvar,
    wake: Mutex<bool>,
    wake_cv: Condvar,
    epoch: AtomicU64,
    closed: AtomicBool,
    job: Mutex<()>,
    totals: Counters,
    connections: AtomicU64,
    last_error: Mutex<Option<Error>>,
    /// Errors recorded since open (lets a waiter see a fresh one).
    errors: AtomicU64,
    last_report: Mutex<Option<Report>>,
    started: Instant,
    last_write_ms: AtomicU64,
    next_req: AtomicU64,
}

/// The primary side of a mirrored pair. Thread-safe; every call blocks.
#[derive(Debug)]
pub struct Primary {
    inner: Arc<Inner>,
    manager: Mutex<Option<JoinHandle<()>>>,
}

impl Primary {
    /// Opens a primary over `volume`; it connects to `config.peer` in the background and
    /// reconnects by itself with backoff. Its dirty map starts invalid: the first connection
    /// resyncs by a full checksum scan (when `auto_resync`).
    pub fn open(volume: Arc<dyn Volume>, config: PrimaryConfig) -> Result<Primary> {
        config.validate()?;
        let dirty = DirtyMap::new(volume.size(), volume.block_size(), config.region_size)?;
        let session = auth::random_id();
        let volume_id = if config.volume_id == 0 {
            auth::random_id()
        } else {
            config.volume_id
        };
        let inner = Arc::new(Inner {
            locks: RegionLocks::new(config.region_size),
            volume,
            config,
            session,
            volume_id,
            dirty: Mutex::new(dirty),
            conn: Mutex::new(None),
            state: Mutex::new(LinkState::Disconnected),
            state_cv: Condvar::new(),
            wake: Mutex::new(false),
            wake_cv: Condvar::new(),
            epoch: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            job: Mutex::new(()),
            totals: Counters::default(),
            connections: AtomicU64::new(0),
            last_error: Mutex::new(None),
            errors: AtomicU64::new(0),
            last_report: Mutex::new(None),
            started: Instant::now(),
            last_write_ms: AtomicU64::new(0),
            next_req: AtomicU64::new(1),
        });
        let inner2 = inner.clone();
        let manager = std::thread::Builder::new()
            .name("mirror-primary".into())
            .spawn(move || manager(inner2))
            .map_err(|e| Error::link(&inner.config.peer, format!("spawn: {e}")))?;
        info!(peer = %inner.config.peer, volume = inner.volume.name(), session = %format!("{session:032x}"), "primary open");
        Ok(Primary {
            inner,
            manager: Mutex::new(Some(manager)),
        })
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed("primary"));
        }
        Ok(())
    }

    /// Writes `data` at `offset` locally, then replicates it.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<WriteOutcome> {
        self.submit(offset, data, true)
    }

    /// Replicates `data`, already written locally at `offset`.
    pub fn replicate(&self, offset: u64, data: &[u8]) -> Result<WriteOutcome> {
        self.submit(offset, data, false)
    }

    fn submit(&self, offset: u64, data: &[u8], local: bool) -> Result<WriteOutcome> {
        self.check_open()?;
        let inner = &*self.inner;
        let vol = &*inner.volume;
        check_io(
            vol.name(),
            vol.size(),
            vol.block_size(),
            offset,
            data.len() as u64,
        )?;
        if data.is_empty() {
            return Ok(WriteOutcome::Replicated);
        }
        inner.last_write_ms.store(
            inner.started.elapsed().as_millis() as u64 + 1,
            Ordering::Relaxed,
        );
        let sync = inner.config.mode == ReplicationMode::Sync;
        let mut waiters = Vec::new();
        let mut degraded = false;
        {
            let _guards = inner.locks.lock(offset, data.len() as u64);
            if local {
                vol.write_at(offset, data)?;
            }
            let conn = lock(&inner.conn).clone().filter(|c| !c.is_dead());
            let mut off = offset;
            for chunk in data.chunks(wire::MAX_WRITE_DATA) {
                let len = chunk.len() as u64;
                let queued = match &conn {
                    Some(c) => {
                        let w = sync.then(|| Arc::new(Waiter::default()));
                        let ok = c.submit(
                            |seq| Message::Write {
                                seq,
                                offset: off,
                                flags: 0,
                                data: chunk.to_vec(),
                            },
                            PendingKind::Write { offset: off, len },
                            w.clone(),
                            !sync,
                        )?;
                        if ok {
                            waiters.extend(w);
                        }
                        ok
                    }
                    None => false,
                };
                if !queued {
                    lock(&inner.dirty).mark(off, len);
                    degraded = true;
                }
                off += len;
            }
        }
        if degraded {
            inner.poke();
        }
        for w in waiters {
            if !w.wait() {
                degraded = true;
            }
        }
        Ok(if degraded {
            WriteOutcome::Degraded
        } else if sync {
            WriteOutcome::Replicated
        } else {
            WriteOutcome::Queued
        })
    }

    /// Records that `[offset, offset + len)` changed and the secondary lacks it; the next
    /// resync (soon, when connected and `auto_resync`) compares and ships it.
    pub fn mark_dirty(&self, offset: u64, len: u64) -> Result<()> {
        self.check_open()?;
        let size = self.inner.volume.size();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::invalid(format!(
                "{}: range {offset}+{len} ends past the end of the volume ({size} bytes)",
                self.inner.volume.name()
            )));
        }
        lock(&self.inner.dirty).mark(offset, len);
        self.inner.poke();
        Ok(())
    }

    /// Flushes the local volume and, when connected, the secondary's (after every write
    /// queued before it).
    pub fn flush(&self) -> Result<()> {
        self.check_open()?;
        self.inner.volume.flush()?;
        let conn = lock(&self.inner.conn).clone();
        if let Some(c) = conn {
            let w = Arc::new(Waiter::default());
            if c.submit(
                |seq| Message::Flush { seq },
                PendingKind::Flush,
                Some(w.clone()),
                false,
            )? {
                w.wait();
            }
        }
        Ok(())
    }

    /// Per-block digests of `range` of the local volume.
    pub fn scan(&self, algorithm: Algorithm, range: BlockRange) -> Result<ScanMap> {
        self.check_open()?;
        scan::scan_all(&*self.inner.volume, range, ScanOptions::new(algorithm))
    }

    /// Makes the secondary coherent now: from the dirty map when it is valid, by a full
    /// checksum scan when it is not; then waits for every queued write to be acknowledged.
    pub fn resync(&self) -> Result<Report> {
        self.resync_with(&JobOptions::default())
    }

    /// [`resync`](Self::resync) with options.
    pub fn resync_with(&self, opts: &JobOptions<'_>) -> Result<Report> {
        self.check_open()?;
        let kind = if opts.full {
            JobKind::Full
        } else {
            JobKind::Auto
        };
        self.inner.run_job(kind, opts)
    }

    /// Compares every block, repairing nothing; a mismatch is re-checked (after the writes
    /// in flight to it) before it is reported.
    pub fn verify(&self) -> Result<Report> {
        self.verify_with(&JobOptions::default())
    }

    /// [`verify`](Self::verify) with options.
    pub fn verify_with(&self, opts: &JobOptions<'_>) -> Result<Report> {
        self.check_open()?;
        self.inner.run_job(JobKind::Verify, opts)
    }

    /// Waits until the link is up and handshaken; fails with the last connection error.
    pub fn wait_connected(&self, timeout: Duration) -> Result<()> {
        self.check_open()?;
        self.inner.wait_connected(timeout).map(|_| ())
    }

    /// A snapshot of the primary's state.
    pub fn status(&self) -> Status {
        let inner = &*self.inner;
        let (dirty_regions, dirty_bytes, map_valid, region_size) = {
            let d = lock(&inner.dirty);
            (
                d.dirty_count(),
                d.dirty_bytes(),
                d.is_valid(),
                d.region_size(),
            )
        };
        let conn = lock(&inner.conn).clone();
        let (mut sent, mut received) = (
            inner.totals.sent.load(Ordering::Relaxed),
            inner.totals.received.load(Ordering::Relaxed),
        );
        let mut pending_writes = 0;
        if let Some(c) = &conn {
            sent += c.counters.sent.load(Ordering::Relaxed);
            received += c.counters.received.load(Ordering::Relaxed);
            pending_writes = c.pending_writes();
        }
        Status {
            state: *lock(&inner.state),
            map_valid,
            dirty_regions,
            dirty_bytes,
            region_size,
            pending_writes,
            bytes_sent: sent,
            bytes_received: received,
            connections: inner.connections.load(Ordering::Relaxed),
            last_error: lock(&inner.last_error).as_ref().map(|e| e.to_string()),
            last_report: lock(&inner.last_report).clone(),
        }
    }

    /// The generation this primary last attached to the secondary with.
    pub fn generation(&self) -> Generation {
        Generation {
            session: self.inner.session,
            epoch: self.inner.epoch.load(Ordering::SeqCst),
        }
    }

    /// Stops the primary: waits (up to the link timeout) for queued writes to be
    /// acknowledged, then closes the link. Later calls fail with [`Error::Closed`].
    pub fn close(&self) -> Result<()> {
        let inner = &*self.inner;
        if inner.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        if let Some(c) = lock(&inner.conn).clone() {
            let w = Arc::new(Waiter::default());
            let kind = PendingKind::Barrier {
                regions: Vec::new(),
                validate: false,
            };
            if c.submit(|seq| Message::Barrier { seq }, kind, Some(w.clone()), false)? {
                let _ = w.wait_timeout(inner.config.link_timeout);
            }
        }
        inner.closed.store(true, Ordering::SeqCst);
        inner.poke();
        if let Some(c) = lock(&inner.conn).clone() {
            c.fail(&inner.dirty, &Error::Closed("primary"));
        }
        if let Some(h) = lock(&self.manager).take() {
            let _ = h.join();
        }
        inner.set_state(LinkState::Closed);
        info!(peer = %inner.config.peer, "primary closed");
        Ok(())
    }
}

impl Drop for Primary {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobKind {
    /// What the dirty map says: its regions, or everything when it is invalid.
    Auto,
    /// Every block.
    Full,
    /// Every block, in the background, rate-limited.
    Periodic,
    /// Every block, repairing nothing.
    Verify,
}

impl Inner {
    fn poke(&self) {
        *lock(&self.wake) = true;
        self.wake_cv.notify_all();
    }

    fn sleep(&self, t: Duration) {
        let g = lock(&self.wake);
        let (mut g, _) = self
            .wake_cv
            .wait_timeout_while(g, t, |woken| !*woken && !self.closed.load(Ordering::SeqCst))
            .unwrap_or_else(|e| e.into_inner());
        *g = false;
    }

    fn set_state(&self, s: LinkState) {
        let mut st = lock(&self.state);
        if *st != LinkState::Closed {
            *st = s;
        }
        self.state_cv.notify_all();
    }

    fn record_error(&self, e: &Error) {
        *lock(&self.last_error) = Some(e.clone());
        self.errors.fetch_add(1, Ordering::SeqCst);
        self.state_cv.notify_all();
    }

    fn wait_connected(&self, timeout: Duration) -> Result<Arc<Conn>> {
        let deadline = Instant::now() + timeout;
        let errors_before = self.errors.load(Ordering::SeqCst);
        let mut st = lock(&self.state);
        loop {
            if *st == LinkState::Closed || self.closed.load(Ordering::SeqCst) {
                return Err(Error::Closed("primary"));
            }
            if matches!(*st, LinkState::Connected | LinkState::Resyncing) {
                if let Some(c) = lock(&self.conn).clone().filter(|c| !c.is_dead()) {
                    return Ok(c);
                }
            }
            // A refusal that retrying cannot cure (mismatched volumes, a wrong secret, a
            // peer that breaks the protocol) fails the wait at once.
            if self.errors.load(Ordering::SeqCst) != errors_before {
                if let Some(
                    e @ (Error::Mismatch(_) | Error::Auth { .. } | Error::Protocol { .. }),
                ) = lock(&self.last_error).clone()
                {
                    return Err(e);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(match lock(&self.last_error).clone() {
                    Some(
                        e @ (Error::Mismatch(_) | Error::Auth { .. } | Error::Protocol { .. }),
                    ) => e,
                    Some(Error::Link { msg, .. }) => Error::link(
                        &self.config.peer,
                        format!("not connected after {:.1}s: {msg}", timeout.as_secs_f64()),
                    ),
                    Some(e) => Error::link(
                        &self.config.peer,
                        format!("not connected after {:.1}s: {e}", timeout.as_secs_f64()),
                    ),
                    None => Error::link(
                        &self.config.peer,
                        format!("not connected after {:.1}s", timeout.as_secs_f64()),
                    ),
                });
            }
            st = self
                .state_cv
                .wait_timeout(st, (deadline - now).min(Duration::from_millis(100)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn connect(&self) -> Result<Handshaken> {
        let peer = &self.config.peer;
        let timeout = self.config.link_timeout;
        let addr = peer
            .to_socket_addrs()
            .map_err(|e| Error::link(peer, format!("resolve: {e}")))?
            .next()
            .ok_or_else(|| Error::link(peer, "address resolves to nothing"))?;
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| Error::link(peer, e.to_string()))?;
        let (mut reader, mut writer, counters) = link::split(
            stream
                .try_clone()
                .map_err(|e| Error::link(peer, e.to_string()))?,
            peer,
            timeout,
        )?;
        let nonce_p = auth::nonce();
        writer.send_now(&Message::Hello {
            magic: wire::MAGIC,
            version: wire::PROTOCOL_VERSION,
            nonce: nonce_p,
        })?;
        let (version, auth_required, nonce_s, proof) = match reader.recv()? {
            Message::HelloReply {
                version,
                auth_required,
                nonce,
                proof,
            } => (version, auth_required, nonce, proof),
            other => {
                return Err(Error::protocol(
                    peer,
                    format!("expected HelloReply, got {}", other.name()),
                ))
            }
        };
        if version != wire::PROTOCOL_VERSION {
            return Err(Error::Mismatch(format!(
                "{peer}: protocol version mismatch: primary speaks {}, secondary answered {version}",
                wire::PROTOCOL_VERSION
            )));
        }
        match (&self.config.secret, auth_required) {
            (Some(s), _) => {
                if !auth_required {
                    return Err(Error::auth(
                        peer,
                        "secondary has no shared secret configured but the primary requires one",
                    ));
                }
                if !auth::verify(s, auth::SECONDARY_LABEL, &nonce_p, &nonce_s, &proof) {
                    return Err(Error::auth(
                        peer,
                        "secondary did not prove the shared secret (wrong secret?)",
                    ));
                }
                writer.send_now(&Message::Auth {
                    proof: auth::proof(s, auth::PRIMARY_LABEL, &nonce_s, &nonce_p),
                })?;
            }
            (None, true) => return Err(Error::auth(
                peer,
                "secondary requires a shared secret; configure the same secret file on the primary",
            )),
            (None, false) => {}
        }
        let vol = &*self.volume;
        let epoch = self.epoch.load(Ordering::SeqCst) + 1;
        writer.send_now(&Message::Open {
            volume_id: self.volume_id,
            session: self.session,
            epoch,
            size: vol.size(),
            block_size: vol.block_size().get(),
        })?;
        let last = match reader.recv()? {
            Message::OpenReply {
                size,
                block_size,
                last_session,
                last_epoch,
            } => {
                if size != vol.size() || block_size != vol.block_size().get() {
                    return Err(Error::Mismatch(format!(
                        "{peer}: secondary has {size} bytes in blocks of {block_size}, primary {} has {} bytes in blocks of {}",
                        vol.name(),
                        vol.size(),
                        vol.block_size()
                    )));
                }
                Generation {
                    session: last_session,
                    epoch: last_epoch,
                }
            }
            other => {
                return Err(Error::protocol(
                    peer,
                    format!("expected OpenReply, got {}", other.name()),
                ))
            }
        };
        reader.handshake_done();
        Ok(Handshaken {
            stream,
            reader,
            writer,
            counters,
            last,
            epoch,
        })
    }

    fn wait_ack(&self, conn: &Conn, w: &Waiter) -> Result<()> {
        if w.wait() {
            Ok(())
        } else {
            Err(Error::link(
                &conn.peer,
                "link lost before the secondary acknowledged",
            ))
        }
    }

    fn barrier(&self, conn: &Conn, regions: Vec<Region>, validate: bool) -> Result<Arc<Waiter>> {
        let w = Arc::new(Waiter::default());
        let n = regions.clone();
        if !conn.submit(
            |seq| Message::Barrier { seq },
            PendingKind::Barrier { regions, validate },
            Some(w.clone()),
            false,
        )? {
            let mut d = lock(&self.dirty);
            n.iter().for_each(|r| d.fail(*r));
            return Err(Error::link(&conn.peer, "link lost"));
        }
        Ok(w)
    }

    fn run_job(&self, kind: JobKind, opts: &JobOptions<'_>) -> Result<Report> {
        let timeout = opts.connect_timeout.unwrap_or(self.config.link_timeout * 2);
        let conn = self.wait_connected(timeout)?;
        let _job = lock(&self.job);
        if conn.is_dead() {
            return Err(Error::link(&conn.peer, "link lost"));
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
        let ctl = Ctl {
            inner: self,
            conn: &conn,
            cancel: opts.cancel,
            rate: rate.as_ref(),
            background,
        };
        let mut body = || -> Result<()> {
            let mut job = Job::new(ctl, &mut report, opts.progress, kind);
            match mode {
                ResyncMode::FullScan | ResyncMode::Periodic => {
                    job.compare(BlockRange::new(0, self.volume.blocks()))?;
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
                    job.dirty_passes()?;
                }
                ResyncMode::DirtyMap => job.dirty_passes()?,
                ResyncMode::Verify => {
                    job.compare(BlockRange::new(0, self.volume.blocks()))?;
                    job.recheck()?;
                }
                ResyncMode::None => {}
            }
            // Everything queued before now is on the secondary.
            let w = self.barrier(&conn, Vec::new(), false)?;
            self.wait_ack(&conn, &w)
        };
        let result = if background {
            crate::storage::background::run_niced(body)
        } else {
            body()
        };
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
                *lock(&self.last_report) = Some(report.clone());
                Ok(report)
            }
            Err(e) => {
                warn!(mode = %mode, error = %e, "job failed");
                if e.kind() == ErrorKind::Link {
                    conn.fail(&self.dirty, &e);
                }
                self.record_error(&e);
                Err(e)
            }
        }
    }
}

/// What a job's background parts need: liveness, cancellation and pacing. Copied into the
/// scan pipeline's reader thread.
#[derive(Clone, Copy)]
struct Ctl<'a> {
    inner: &'a Inner,
    conn: &'a Conn,
    cancel: Option<&'a AtomicBool>,
    rate: Option<&'a Mutex<RateLimiter>>,
    background: bool,
}

impl Ctl<'_> {
    fn check_live(&self) -> Result<()> {
        if self.conn.is_dead() {
            return Err(Error::link(&self.conn.peer, "link lost"));
        }
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed("primary"));
        }
        if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::Cancelled("job"));
        }
        Ok(())
    }

    /// Pacing of background reads: the rate limit, and a short yield while foreground writes
    /// are arriving.
    fn pace(&self, bytes: u64) -> Result<()> {
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
struct Job<'a> {
    inner: &'a Inner,
    conn: &'a Conn,
    report: &'a mut Report,
    ctl: Ctl<'a>,
    progress: Option<&'a (dyn Fn(Progress) + Sync)>,
    /// Record mismatches for a re-check instead of shipping them at once (verify, and the
    /// periodic scan, whose report must count divergence, not writes that raced the scan).
    defer: bool,
    priority: IoPriority,
    mismatches: RunBuilder,
    done: u64,
    total: u64,
}

impl<'a> Job<'a> {
    fn new(
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
        }
    }

    fn scan_options(&self) -> ScanOptions {
        let mut o = ScanOptions::new(self.inner.config.algorithm);
        if self.ctl.background {
            o = o.background();
        }
        o.batch_bytes = (CHUNK_BLOCKS * self.inner.volume.block_size().bytes()) as usize;
        o
    }

    fn wire_priority(&self) -> u8 {
        if self.ctl.background {
            wire::priority::IDLE
        } else {
            wire::priority::NORMAL
        }
    }

    fn advance(&mut self, blocks: u64) {
        self.done += blocks;
        self.report.blocks += blocks;
        if let Some(p) = self.progress {
            p(Progress {
                done: self.done,
                total: self.total.max(self.done),
            });
        }
    }

    fn next_req(&self) -> u64 {
        self.inner.next_req.fetch_add(1, Ordering::Relaxed)
    }

    fn recv(&self, rx: &Receiver<Message>) -> Result<Message> {
        loop {
            self.ctl.check_live()?;
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(m) => return Ok(m),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::link(&self.conn.peer, "link lost"))
                }
            }
        }
    }

    /// Compares `range` block by block; mismatches are shipped (or recorded, for verify).
    fn compare(&mut self, range: BlockRange) -> Result<()> {
        if range.is_empty() {
            return Ok(());
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

    /// Primary compares: the secondary streams its digests, requested a few chunks ahead of
    /// the local scan; each local batch is compared as soon as their digests for it are in.
    fn compare_here(&mut self, range: BlockRange, req: u64, rx: &Receiver<Message>) -> Result<()> {
        let algorithm = self.inner.config.algorithm;
        let width = algorithm.digest_len();
        let priority = self.wire_priority();
        let mut requested = range.start.0;
        let mut theirs: VecDeque<u8> = VecDeque::new();
        let mut theirs_next = range.start.0;
        let opts = self.scan_options();
        let ctl = self.ctl;
        let vol = self.inner.volume.clone();
        scan::scan_range(
            &*vol,
            range,
            opts,
            move |bytes| ctl.pace(bytes),
            |batch| {
                let end = batch.range().end();
                let ahead = (end + REQUESTS_AHEAD * CHUNK_BLOCKS).min(range.end());
                while requested < ahead {
                    let count = CHUNK_BLOCKS.min(range.end() - requested);
                    self.conn.send(&Message::ScanRequest {
                        req,
                        algorithm,
                        level: 0,
                        priority,
                        range: BlockRange::new(requested, count),
                    })?;
                    requested += count;
                }
                while theirs_next < end {
                    match self.recv(rx)? {
                        Message::Digests {
                            start,
                            digests,
                            algorithm: a,
                            ..
                        } if a == algorithm && start == theirs_next => {
                            let n = (digests.len() / width) as u64;
                            if start + n > requested {
                                return Err(Error::protocol(
                                    &self.conn.peer,
                                    "secondary sent digests that were not requested",
                                ));
                            }
                            theirs.extend(digests);
                            theirs_next += n;
                        }
                        Message::ScanEnd { .. } => {}
                        other => {
                            return Err(Error::protocol(
                                &self.conn.peer,
                                format!("unexpected {} during a scan", other.name()),
                            ));
                        }
                    }
                }
                let mut runs = RunBuilder::default();
                for (b, ours) in batch.iter() {
                    let differs = theirs.drain(..width).zip(ours).any(|(t, o)| t != *o);
                    if differs {
                        runs.push(b.0);
                    }
                }
                for run in runs.finish() {
                    self.mismatch(run)?;
                }
                self.advance(batch.len() as u64);
                Ok(true)
            },
        )
    }

    /// Secondary compares: each local batch goes out as a compare of its own (request, our
    /// digests, end); the secondary answers with the runs that differ, which we ship.
    fn compare_there(&mut self, range: BlockRange, req: u64, rx: &Receiver<Message>) -> Result<()> {
        let algorithm = self.inner.config.algorithm;
        let priority = self.wire_priority();
        let opts = self.scan_options();
        let ctl = self.ctl;
        let vol = self.inner.volume.clone();
        let mut sent = 0u64;
        let mut finished = 0u64;
        scan::scan_range(
            &*vol,
            range,
            opts,
            move |bytes| ctl.pace(bytes),
            |batch| {
                self.conn.send(&Message::CompareRequest {
                    req,
                    algorithm,
                    level: 0,
                    priority,
                    range: batch.range(),
                })?;
                for msg in scan::digest_messages(req, &batch) {
                    self.conn.send(&msg)?;
                }
                self.conn.send(&Message::CompareEnd { req })?;
                sent += 1;
                while let Ok(m) = rx.try_recv() {
                    self.on_compare_answer(m, range, &mut finished)?;
                }
                while sent - finished > REQUESTS_AHEAD * 2 {
                    let m = self.recv(rx)?;
                    self.on_compare_answer(m, range, &mut finished)?;
                }
                self.advance(batch.len() as u64);
                Ok(true)
            },
        )?;
        while finished < sent {
            let m = self.recv(rx)?;
            self.on_compare_answer(m, range, &mut finished)?;
        }
        Ok(())
    }

    /// Compares a window of dirty runs with one round trip: every run's request goes out
    /// first, then each is compared as its answer arrives. A run too large for a window goes
    /// through the streaming [`compare`](Self::compare).
    fn compare_window(&mut self, runs: &[BlockRange]) -> Result<()> {
        let bs = self.inner.volume.block_size().bytes();
        let (small, large): (Vec<BlockRange>, Vec<BlockRange>) = runs
            .iter()
            .partition(|r| r.count <= wire::MAX_REQUEST_BLOCKS && r.count * bs <= WINDOW_BYTES);
        for run in large {
            self.compare(run)?;
        }
        let (Some(first), Some(last)) = (small.first(), small.last()) else {
            return Ok(());
        };
        let span = BlockRange::new(first.start.0, last.end() - first.start.0);
        let req = self.next_req();
        let rx = self.conn.route(req);
        let result = match self.inner.config.compare {
            CompareSide::Primary => self.window_here(&small, req, &rx),
            CompareSide::Secondary => self.window_there(&small, span, req, &rx),
        };
        self.conn.unroute(req);
        result
    }

    /// Reads and hashes `run` of the local volume.
    fn local_digests(&self, run: BlockRange) -> Result<ScanMap> {
        scan::scan_all(&*self.inner.volume, run, self.scan_options())
    }

    fn window_here(&mut self, runs: &[BlockRange], req: u64, rx: &Receiver<Message>) -> Result<()> {
        let algorithm = self.inner.config.algorithm;
        let priority = self.wire_priority();
        for run in runs {
            self.conn.send(&Message::ScanRequest {
                req,
                algorithm,
                level: 0,
                priority,
                range: *run,
            })?;
        }
        for run in runs {
            let ours = self.local_digests(*run)?;
            let mut theirs = Vec::with_capacity(ours.as_bytes().len());
            let mut next = run.start.0;
            while next < run.end() {
                match self.recv(rx)? {
                    Message::Digests {
                        start,
                        digests,
                        algorithm: a,
                        ..
                    } if a == algorithm && start == next => {
                        next += (digests.len() / algorithm.digest_len()) as u64;
                        if next > run.end() {
                            return Err(Error::protocol(
                                &self.conn.peer,
                                "secondary sent digests that were not requested",
                            ));
                        }
                        theirs.extend_from_slice(&digests);
                    }
                    Message::ScanEnd { .. } => {}
                    other => {
                        return Err(Error::protocol(
                            &self.conn.peer,
                            format!("unexpected {} during a scan", other.name()),
                        ));
                    }
                }
            }
            let theirs = ScanMap::new(algorithm, run.start, theirs)?;
            for m in ours.mismatches(&theirs) {
                self.mismatch(m)?;
            }
            self.advance(run.count);
        }
        Ok(())
    }

    fn window_there(
        &mut self,
        runs: &[BlockRange],
        span: BlockRange,
        req: u64,
        rx: &Receiver<Message>,
    ) -> Result<()> {
        let algorithm = self.inner.config.algorithm;
        let priority = self.wire_priority();
        let mut finished = 0u64;
        for run in runs {
            let ours = self.local_digests(*run)?;
            self.conn.send(&Message::CompareRequest {
                req,
                algorithm,
                level: 0,
                priority,
                range: *run,
            })?;
            for msg in scan::digest_messages(req, &ours) {
                self.conn.send(&msg)?;
            }
            self.conn.send(&Message::CompareEnd { req })?;
            while let Ok(m) = rx.try_recv() {
                self.on_compare_answer(m, span, &mut finished)?;
            }
            self.advance(run.count);
        }
        while finished < runs.len() as u64 {
            let m = self.recv(rx)?;
            self.on_compare_answer(m, span, &mut finished)?;
        }
        Ok(())
    }

    fn on_compare_answer(
        &mut self,
        m: Message,
        range: BlockRange,
        finished: &mut u64,
    ) -> Result<()> {
        match m {
            Message::BlockRequest { range: r, .. } => {
                if r.start.0 < range.start.0 || r.end() > range.end() {
                    return Err(Error::protocol(
                        &self.conn.peer,
                        format!(
                            "secondary asked for blocks {r} outside the compared range {range}"
                        ),
                    ));
                }
                self.mismatch(r)
            }
            Message::CompareDone { .. } => {
                *finished += 1;
                Ok(())
            }
            other => Err(Error::protocol(
                &self.conn.peer,
                format!("unexpected {} during a compare", other.name()),
            )),
        }
    }

    fn mismatch(&mut self, run: BlockRange) -> Result<()> {
        if self.defer {
            for b in run.start.0..run.end() {
                self.mismatches.push(b);
            }
            return Ok(());
        }
        self.report.mismatched += run.count;
        self.ship(run)
    }

    /// Sends the current contents of `run`, each piece read and queued under its regions'
    /// locks.
    fn ship(&mut self, run: BlockRange) -> Result<()> {
        let vol = &*self.inner.volume;
        let bs = vol.block_size();
        let per_piece = (wire::MAX_WRITE_DATA as u64 / bs.bytes()).max(1);
        let mut next = run.start.0;
        let mut buf = scan::AlignedBuf::default();
        while next < run.end() {
            let piece = BlockRange::new(next, per_piece.min(run.end() - next));
            let (offset, len) = scan::byte_span(vol, piece);
            buf.resize(len);
            {
                let _guards = self.inner.locks.lock(offset, len as u64);
                vol.read_batch(
                    &mut [ReadOp {
                        offset,
                        buf: buf.as_mut_slice(),
                    }],
                    self.priority,
                )?;
                let queued = self.conn.submit(
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
                    return Err(Error::link(&self.conn.peer, "link lost"));
                }
            }
            self.report.blocks_sent += piece.count;
            next = piece.end();
        }
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

/// The connection manager: connects with backoff, decides whether the dirty map can drive
/// the resync, runs the resync and periodic scans, and tears the link down when it dies.
fn manager(inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(50);
    while !inner.closed.load(Ordering::SeqCst) {
        let Handshaken {
            stream,
            reader,
            writer,
            counters,
            last,
            epoch,
        } = match inner.connect() {
            Ok(h) => h,
            Err(e) => {
                debug!(peer = %inner.config.peer, error = %e, "connect failed");
                inner.record_error(&e);
                inner.sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let (tx, rx) = bounded::<Vec<u8>>(inner.config.queue_depth);
        let conn = Arc::new(Conn {
            peer: inner.config.peer.clone(),
            tx,
            seq: AtomicU64::new(1),
            pending: Mutex::new(PendingTable::default()),
            routes: Mutex::new(HashMap::new()),
            counters,
            stream,
            dead: AtomicBool::new(false),
        });
        let prev = inner.epoch.swap(epoch, Ordering::SeqCst);
        let map_usable = {
            let mut d = lock(&inner.dirty);
            let usable = d.is_valid()
                && last
                    == Generation {
                        session: inner.session,
                        epoch: prev,
                    };
            if !usable {
                d.invalidate();
            }
            usable
        };
        info!(peer = %conn.peer, generation = %Generation { session: inner.session, epoch }, secondary_last = %last, map_usable, "connected");
        let ping = (inner.config.link_timeout / 5).min(Duration::from_secs(1));
        let w_thread = {
            let (inner, conn) = (inner.clone(), conn.clone());
            std::thread::Builder::new()
                .name("mirror-link-tx".into())
                .spawn(move || writer_loop(&inner, &conn, writer, rx, ping))
        };
        let r_thread = {
            let (inner, conn) = (inner.clone(), conn.clone());
            std::thread::Builder::new()
                .name("mirror-link-rx".into())
                .spawn(move || reader_loop(&inner, &conn, reader))
        };
        let (Ok(w_thread), Ok(r_thread)) = (w_thread, r_thread) else {
            conn.fail(
                &inner.dirty,
                &Error::link(&conn.peer, "could not start link threads"),
            );
            continue;
        };
        *lock(&inner.conn) = Some(conn.clone());
        inner.connections.fetch_add(1, Ordering::Relaxed);
        inner.set_state(LinkState::Connected);

        if inner.config.auto_resync {
            let _ = inner.run_job(JobKind::Auto, &JobOptions::default());
        }
        let mut next_periodic = inner.config.periodic.map(|p| Instant::now() + p.interval);
        while !conn.is_dead() && !inner.closed.load(Ordering::SeqCst) {
            let now = Instant::now();
            if let Some(t) = next_periodic.filter(|t| *t <= now) {
                let _ = t;
                match inner.run_job(JobKind::Periodic, &JobOptions::default()) {
                    Ok(r) => info!(
                        mismatched = r.mismatched,
                        blocks = r.blocks,
                        "periodic scan done"
                    ),
                    Err(e) => warn!(error = %e, "periodic scan failed"),
                }
                next_periodic = inner.config.periodic.map(|p| Instant::now() + p.interval);
                continue;
            }
            let has_dirty = {
                let d = lock(&inner.dirty);
                d.is_valid() && d.next_dirty(Region(0)).is_some()
            };
            if inner.config.auto_resync && has_dirty {
                if inner
                    .run_job(JobKind::Auto, &JobOptions::default())
                    .is_err()
                {
                    // A failing volume must not spin: retry after a pause.
                    inner.sleep(Duration::from_secs(1));
                }
                continue;
            }
            let wait = next_periodic
                .map(|t| t.saturating_duration_since(now))
                .unwrap_or(Duration::from_millis(200))
                .min(Duration::from_millis(200));
            inner.sleep(wait);
        }
        // Tear down: the threads exit once the link is failed.
        conn.fail(&inner.dirty, &Error::link(&conn.peer, "link closed"));
        let _ = w_thread.join();
        let _ = r_thread.join();
        *lock(&inner.conn) = None;
        inner.totals.sent.fetch_add(
            conn.counters.sent.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        inner.totals.received.fetch_add(
            conn.counters.received.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        inner.set_state(LinkState::Disconnected);
    }
    inner.set_state(LinkState::Closed);
}

fn writer_loop(
    inner: &Inner,
    conn: &Conn,
    mut w: FrameWriter,
    rx: Receiver<Vec<u8>>,
    ping: Duration,
) {
    let mut nonce = 0u64;
    let result = (|| -> Result<()> {
        loop {
            if conn.is_dead() {
                return Ok(());
            }
            match rx.recv_timeout(ping) {
                Ok(frame) => {
                    if !frame.is_empty() {
                        w.send_frame(&frame)?;
                    }
                    while let Ok(f) = rx.try_recv() {
                        if !f.is_empty() {
                            w.send_frame(&f)?;
                        }
                    }
                    w.flush()?;
                }
                Err(RecvTimeoutError::Timeout) => {
                    nonce += 1;
                    w.send_now(&Message::Ping { nonce })?;
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    })();
    if let Err(e) = result {
        inner.record_error(&e);
        conn.fail(&inner.dirty, &e);
    }
}

fn reader_loop(inner: &Inner, conn: &Conn, mut r: FrameReader) {
    let result = (|| -> Result<()> {
        loop {
            if conn.is_dead() {
                return Ok(());
            }
            match r.recv()? {
                Message::Ack { seq } => conn.ack(seq, &inner.dirty)?,
                Message::Pong { .. } => {}
                m @ (Message::Digests { .. }
                | Message::ScanEnd { .. }
                | Message::BlockRequest { .. }
                | Message::CompareDone { .. }) => {
                    let req = match &m {
                        Message::Digests { req, .. }
                        | Message::ScanEnd { req }
                        | Message::BlockRequest { req, .. }
                        | Message::CompareDone { req, .. } => *req,
                        _ => 0,
                    };
                    // A late answer to a job that gave up is dropped.
                    if let Some(tx) = lock(&conn.routes).get(&req) {
                        let _ = tx.send(m);
                    }
                }
                other => {
                    return Err(Error::protocol(
                        &conn.peer,
                        format!("unexpected {} from a secondary", other.name()),
                    ))
                }
            }
        }
    })();
    if let Err(e) = result {
        if !conn.is_dead() {
            inner.record_error(&e);
        }
        conn.fail(&inner.dirty, &e);
    }
    inner.poke();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::BlockIndex;

    #[test]
    fn region_locks_dedup_and_sort_stripes() {
        let l = RegionLocks::new(65536);
        assert_eq!(l.lock(0, 1).len(), 1);
        assert_eq!(l.lock(65535, 2).len(), 2);
        assert_eq!(l.lock(0, 1 << 40).len(), STRIPES);
        // Region 0 and region STRIPES share a stripe.
        assert_eq!(l.lock(0, (STRIPES as u64 + 1) * 65536).len(), STRIPES);
    }

    #[test]
    fn block_index_helpers_agree() {
        let bs = crate::BlockSize::DEFAULT;
        assert_eq!(bs.offset_of(BlockIndex(3)), 12288);
    }
}

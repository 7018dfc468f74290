//! The primary controller: replicates writes in order, tracks what the secondary lacks in the
//! dirty map while the link is down, reconnects by itself and resyncs — from the dirty map when
//! it is valid, by a full checksum scan when it is not — and runs the periodic scan.
//!
//! Invariants, and where they are kept:
//! - **One ordered stream.** Replicated writes and zeroings, repair blocks, barriers and scan requests all go
//!   through one queue to one writer thread ([`Conn::tx`]); the secondary applies them in that
//!   order.
//! - **No stale block over a newer one.** A write takes the stripe locks of its regions
//!   ([`RegionLocks`]) while it writes locally and queues its frames; a resync reads a block
//!   and queues it under the same locks. So a repair block read before a write is queued
//!   before that write, and one read after it carries its data.
//! - **Nothing acknowledged is lost.** Every queued write is registered as pending *before* it
//!   is queued; on link loss every pending write is marked in the dirty map before the link is
//!   reported down ([`Conn::fail`]). In sync mode the caller returns only after the ack, which
//!   at the default durability means the secondary flushed it ([`replicate`]); `flush()`
//!   returns Ok only when both sides flushed, never while the link is down.
//! - **No dirty bit cleared before the secondary has the data.** A resync *takes* regions
//!   (they stay counted dirty, in flight) and releases them only when a barrier queued after
//!   their blocks is acknowledged; a failure puts them back.
//!
//! Parts: [`conn`] (the link, its pending table and waiters), [`locks`] (region stripe locks),
//! [`handshake`], [`job`] and [`compare`] (resync, periodic scan, verify), [`lead`] (scans
//! the secondary leads: digests, comparing, repairs by the same locked path), [`manager`]
//! (connecting, the writer and reader threads, [`backoff`] of retries), [`replicate`] (the
//! write path — writes, write-zeroes and trim — flush and the on-disconnect policy), [`state`]
//! (the metadata record, the write-intent map, the full-scan checkpoint), [`throttle`] (the
//! rate a resync yields to foreground writes at), [`eta`] (a job's time to completion), [`zero`]
//! (write-zeroes and trim: a range carried without data). This file is the public face,
//! [`Primary`].

mod backoff;
mod compare;
mod conn;
mod eta;
mod handshake;
mod job;
mod lead;
mod locks;
mod manager;
mod replicate;
mod state;
mod throttle;
mod tree;
mod window;
mod zero;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::info;

use self::conn::Conn;
use self::locks::RegionLocks;
use self::manager::manager;
use crate::config::PrimaryConfig;
use crate::dirty::DirtyMap;
use crate::protocol::auth;
use crate::protocol::link::Counters;
use crate::report::{LinkState, Report, Status};
use crate::storage::digest::Algorithm;
use crate::storage::scan::{self, ScanMap, ScanOptions};
use crate::storage::volume::Volume;
use crate::sync::lock;
use crate::units::{BlockRange, Generation};
use crate::{Error, Result};

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
    /// Time the job needs still at its recent rate (smoothed); None until a rate is known.
    pub eta: Option<Duration>,
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

#[derive(Debug)]
struct Inner {
    volume: Arc<dyn Volume>,
    config: PrimaryConfig,
    session: u128,
    durable: state::PrimaryState,
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
    /// The report of the last scan the secondary led.
    last_secondary_report: Mutex<Option<Report>>,
    started: Instant,
    last_write_ms: AtomicU64,
    /// Replicated writes since open: the foreground a resync yields to ([`throttle`]).
    writes: AtomicU64,
    /// Progress and estimated time to completion of the running (or last) job.
    job_eta: Mutex<Option<eta::Eta>>,
    next_req: AtomicU64,
    /// Calls of [`Primary::cancel_jobs`] so far; a job asked for before the latest is
    /// cancelled.
    cancels: AtomicU64,
}

impl Inner {
    fn cancels(&self) -> u64 {
        self.cancels.load(Ordering::SeqCst)
    }
}

/// Ends a write's hold on its write-intent chunks, however the write ends.
struct IntentEnd<'a>(&'a Inner, u64, u64);

impl Drop for IntentEnd<'_> {
    fn drop(&mut self) {
        self.0.durable.after_write(self.1, self.2);
    }
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
        // Plaintext to a non-loopback peer is refused now when the address resolves now (and
        // at every connection attempt otherwise).
        if let Some(addr) = std::net::ToSocketAddrs::to_socket_addrs(&config.peer)
            .ok()
            .and_then(|mut a| a.next())
        {
            crate::config::check_plaintext(
                &addr,
                config.tls.is_some(),
                config.allow_insecure,
                "connect to",
            )?;
        }
        let dirty = DirtyMap::new(volume.size(), volume.block_size(), config.region_size)?;
        let session = auth::random_id()?;
        let durable = state::PrimaryState::open(&*volume, &config)?;
        let inner = Arc::new(Inner {
            locks: RegionLocks::new(config.region_size),
            volume,
            config,
            session,
            durable,
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
            last_secondary_report: Mutex::new(None),
            started: Instant::now(),
            last_write_ms: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            job_eta: Mutex::new(None),
            next_req: AtomicU64::new(1),
            cancels: AtomicU64::new(0),
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
        // The secondary lacks the range: the write-intent bits keep it across a crash.
        let connected = lock(&self.inner.conn)
            .as_ref()
            .is_some_and(|c| !c.is_dead());
        self.inner.durable.before_write(offset, len, connected)?;
        lock(&self.inner.dirty).mark(offset, len);
        self.inner.durable.after_write(offset, len);
        self.inner.poke();
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
        self.inner.run_job(kind, opts, Some(self.inner.cancels()))
    }

    /// Compares every block, repairing nothing; a mismatch is re-checked (after the writes
    /// in flight to it) before it is reported.
    pub fn verify(&self) -> Result<Report> {
        self.verify_with(&JobOptions::default())
    }

    /// [`verify`](Self::verify) with options.
    pub fn verify_with(&self, opts: &JobOptions<'_>) -> Result<Report> {
        self.check_open()?;
        self.inner
            .run_job(JobKind::Verify, opts, Some(self.inner.cancels()))
    }

    /// Cancels the resyncs and verifies called on this primary that are running now, those
    /// still waiting for the link or for another job included: they fail with
    /// [`Error::Cancelled`]. Jobs called afterwards are not affected, nor are the primary's
    /// own resyncs on reconnection and periodic scans.
    pub fn cancel_jobs(&self) {
        self.inner.cancels.fetch_add(1, Ordering::SeqCst);
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
        let (job_remaining_bytes, job_eta_seconds) = lock(&inner.job_eta)
            .as_ref()
            .map_or((0, None), |e| (e.remaining(), e.seconds()));
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
            last_secondary_report: lock(&inner.last_secondary_report).clone(),
            job_remaining_bytes,
            job_eta_seconds,
        }
    }

    /// The generation this primary last attached to the secondary with.
    pub fn generation(&self) -> Generation {
        Generation {
            session: self.inner.session,
            epoch: self.inner.epoch.load(Ordering::SeqCst),
        }
    }

    /// Stops the primary: flushes both volumes (waiting up to the link timeout for the
    /// secondary's flush), then closes the link. Later calls fail with [`Error::Closed`].
    /// Returns the flush's error, if it failed; the primary is closed all the same.
    pub fn close(&self) -> Result<()> {
        let inner = &*self.inner;
        if inner.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let flushed = self.flush_for_close();
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
        flushed
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

#[cfg(test)]
mod tests {
    use crate::units::BlockIndex;

    #[test]
    fn block_index_helpers_agree() {
        let bs = crate::BlockSize::DEFAULT;
        assert_eq!(bs.offset_of(BlockIndex(3)), 12288);
    }
}

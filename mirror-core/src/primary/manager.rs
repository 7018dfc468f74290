//! The connection manager and the link's two threads. The manager connects with backoff,
//! decides whether the dirty map may drive the resync (it must cover everything since the
//! generation the secondary reports), runs resyncs and periodic scans, and tears the link down
//! when it dies. The writer thread is the one ordered stream to the secondary; the reader
//! thread applies acks and routes answers to the job that asked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, Select, Sender};
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::conn::{Conn, PendingTable};
use super::handshake::Handshaken;
use super::lead::lead_server;
use super::{Inner, JobKind, JobOptions};
use crate::dirty::Region;
use crate::protocol::link::FrameReader;
use crate::protocol::messages::Message;
use crate::report::LinkState;
use crate::sync::lock;
use crate::units::Generation;
use crate::{Error, ErrorKind, Result};

impl Inner {
    pub(super) fn poke(&self) {
        *lock(&self.wake) = true;
        self.wake_cv.notify_all();
    }

    pub(super) fn sleep(&self, t: Duration) {
        let g = lock(&self.wake);
        let (mut g, _) = self
            .wake_cv
            .wait_timeout_while(g, t, |woken| !*woken && !self.closed.load(Ordering::SeqCst))
            .unwrap_or_else(|e| e.into_inner());
        *g = false;
    }

    /// Sleeps `t` unless the primary closes meanwhile: the pause of a backoff, which writes
    /// and dirty marks do not cut short.
    pub(super) fn pause(&self, t: Duration) {
        let g = lock(&self.wake);
        let _ = self
            .wake_cv
            .wait_timeout_while(g, t, |_| !self.closed.load(Ordering::SeqCst))
            .unwrap_or_else(|e| e.into_inner());
    }

    pub(super) fn set_state(&self, s: LinkState) {
        let mut st = lock(&self.state);
        if *st != LinkState::Closed {
            *st = s;
        }
        self.state_cv.notify_all();
    }

    pub(super) fn record_error(&self, e: &Error) {
        *lock(&self.last_error) = Some(e.clone());
        self.errors.fetch_add(1, Ordering::SeqCst);
        self.state_cv.notify_all();
    }

    pub(super) fn wait_connected(&self, timeout: Duration) -> Result<Arc<Conn>> {
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
                    e @ (Error::Mismatch(_)
                    | Error::Busy(_)
                    | Error::Auth { .. }
                    | Error::Protocol { .. }
                    | Error::InvalidArgument(_)),
                ) = lock(&self.last_error).clone()
                {
                    return Err(e);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(match lock(&self.last_error).clone() {
                    Some(
                        e @ (Error::Mismatch(_)
                        | Error::Busy(_)
                        | Error::Auth { .. }
                        | Error::Protocol { .. }
                        | Error::InvalidArgument(_)),
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
}

/// The connection manager: connects with backoff, decides whether the dirty map can drive
/// the resync, runs the resync and periodic scans, and tears the link down when it dies.
pub(super) fn manager(inner: Arc<Inner>) {
    // Reconnects back off while connections keep failing — to connect, or to resync once
    // connected (a secondary whose disk fails ends each session): no reconnect storm.
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    while !inner.closed.load(Ordering::SeqCst) {
        let Handshaken {
            stream,
            reader,
            writer,
            counters,
            last,
            epoch,
            tree,
        } = match inner.connect() {
            Ok(h) => h,
            Err(e) => {
                debug!(peer = %inner.config.peer, error = %e, "connect failed");
                inner.record_error(&e);
                inner.pause(backoff.fail());
                continue;
            }
        };
        let (tx, rx) = bounded::<Vec<u8>>(inner.config.queue_depth);
        let direct_sends = !writer.encrypted();
        let conn = Arc::new(Conn {
            peer: inner.config.peer.clone(),
            tx,
            queued: rx.clone(),
            writer: Mutex::new(writer),
            seq: AtomicU64::new(1),
            pending: Mutex::new(PendingTable::default()),
            routes: Mutex::new(HashMap::new()),
            counters,
            stream,
            dead: AtomicBool::new(false),
            cause: Mutex::new(None),
            tree,
            direct_sends,
        });
        let prev = inner.epoch.swap(epoch, Ordering::SeqCst);
        let map_usable = {
            let mut d = lock(&inner.dirty);
            let follows = last
                == Generation {
                    session: inner.session,
                    epoch: prev,
                };
            let usable = d.is_valid() && follows;
            // A full scan of this session cut off by the link resumes from its checkpoint:
            // what was written behind it meanwhile is in the map, kept.
            let resume = !usable && follows && inner.durable.checkpoint().is_some();
            if usable || resume {
                usable
            } else if inner.durable.seed(&mut d, last, inner.session) {
                true
            } else {
                d.invalidate();
                inner.durable.invalidated(inner.session);
                if inner.durable.checkpoint().is_some() {
                    inner.durable.set_checkpoint(inner.session, None);
                }
                false
            }
        };
        info!(peer = %conn.peer, generation = %Generation { session: inner.session, epoch }, secondary_last = %last, map_usable, "connected");
        let ping = (inner.config.link_timeout / 5).min(Duration::from_secs(1));
        let w_thread = {
            let (inner, conn) = (inner.clone(), conn.clone());
            std::thread::Builder::new()
                .name("mirror-link-tx".into())
                .spawn(move || writer_loop(&inner, &conn, rx, ping))
        };
        // Scans the secondary leads are served on a thread of their own, so the reader never
        // waits on the link queue while acks are to be read.
        let (lead_tx, lead_rx) = unbounded::<Message>();
        let r_thread = {
            let (inner, conn) = (inner.clone(), conn.clone());
            std::thread::Builder::new()
                .name("mirror-link-rx".into())
                .spawn(move || reader_loop(&inner, &conn, reader, &lead_tx))
        };
        let l_thread = {
            let (inner, conn) = (inner.clone(), conn.clone());
            std::thread::Builder::new()
                .name("mirror-lead".into())
                .spawn(move || lead_server(&inner, &conn, lead_rx))
        };
        let (Ok(w_thread), Ok(r_thread), Ok(l_thread)) = (w_thread, r_thread, l_thread) else {
            conn.fail(
                &inner.dirty,
                &Error::link(&conn.peer, "could not start link threads"),
            );
            continue;
        };
        *lock(&inner.conn) = Some(conn.clone());
        inner.connections.fetch_add(1, Ordering::Relaxed);
        inner.set_state(LinkState::Connected);

        // The first resync of a connection, retried with backoff while the link stays up. A
        // primary told of no writes makes it a full scan: its clean map proves nothing.
        let mut connect_job = if inner.config.full_scan_on_connect {
            JobKind::Full
        } else {
            JobKind::Auto
        };
        let mut resync_due = inner.config.auto_resync.then(Instant::now);
        let mut resync_backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut healthy = !inner.config.auto_resync;
        let mut next_periodic = inner.config.periodic.map(|p| Instant::now() + p.interval);
        while !conn.is_dead() && !inner.closed.load(Ordering::SeqCst) {
            let now = Instant::now();
            if let Some(t) = resync_due.filter(|t| *t <= now) {
                let _ = t;
                match inner.run_job(connect_job, &JobOptions::default(), None) {
                    Ok(_) => {
                        connect_job = JobKind::Auto;
                        resync_due = None;
                        resync_backoff.succeed();
                        healthy = true;
                    }
                    Err(_) => resync_due = Some(Instant::now() + resync_backoff.fail()),
                }
                continue;
            }
            if let Some(t) = resync_due {
                inner.sleep(
                    t.saturating_duration_since(now)
                        .min(Duration::from_millis(200)),
                );
                continue;
            }
            if let Some(t) = next_periodic.filter(|t| *t <= now) {
                let _ = t;
                match inner.run_job(JobKind::Periodic, &JobOptions::default(), None) {
                    Ok(r) => info!(
                        mismatched = r.mismatched,
                        blocks = r.blocks,
                        "periodic scan done"
                    ),
                    Err(e) => {
                        warn!(error = %e, "periodic scan failed; retrying while the link is up");
                        next_periodic = Some(Instant::now() + Duration::from_secs(1));
                        continue;
                    }
                }
                next_periodic = inner.config.periodic.map(|p| Instant::now() + p.interval);
                continue;
            }
            inner.durable.tick(&inner, &conn);
            let has_dirty = {
                let d = lock(&inner.dirty);
                d.is_valid() && d.next_dirty(Region(0)).is_some()
            };
            if inner.config.auto_resync && has_dirty {
                resync_due = Some(now);
                continue;
            }
            let wait = next_periodic
                .map(|t| t.saturating_duration_since(now))
                .unwrap_or(Duration::from_millis(200))
                .min(Duration::from_millis(200));
            inner.sleep(wait);
        }
        // A connection that resynced (or had nothing to resync) resets the reconnect backoff;
        // one that died before keeps it growing.
        if healthy {
            backoff.succeed();
        }
        // Tear down: the threads exit once the link is failed. When the primary is closing,
        // that is its own close (which may get here first), not a lost link.
        let why = if inner.closed.load(Ordering::SeqCst) {
            Error::Closed("primary")
        } else {
            Error::link(&conn.peer, "link closed")
        };
        conn.fail(&inner.dirty, &why);
        inner.durable.detached();
        let _ = w_thread.join();
        let _ = r_thread.join();
        let _ = l_thread.join();
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
        if !healthy && !inner.closed.load(Ordering::SeqCst) {
            inner.pause(backoff.fail());
        }
    }
    inner.set_state(LinkState::Closed);
}

fn writer_loop(inner: &Inner, conn: &Conn, rx: Receiver<Vec<u8>>, ping: Duration) {
    let mut nonce = 0u64;
    let result = (|| -> Result<()> {
        loop {
            if conn.is_dead() {
                return Ok(());
            }
            // Waits for a frame without taking it: frames leave the queue under the writer's
            // lock only, so a write its caller sends directly never overtakes a queued one.
            let mut ready = Select::new();
            ready.recv(&rx);
            match ready.ready_timeout(ping) {
                Ok(_) => conn.send_queued()?,
                Err(_) => {
                    nonce += 1;
                    lock(&conn.writer).send_now(&Message::Ping { nonce })?;
                }
            }
        }
    })();
    if let Err(e) = result {
        // After the link died for another reason, a failed send says nothing new.
        if !conn.is_dead() {
            inner.record_error(&e);
        }
        conn.fail(&inner.dirty, &e);
    }
}

fn reader_loop(inner: &Inner, conn: &Conn, mut r: FrameReader, lead: &Sender<Message>) {
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
                | Message::CompareDone { .. }
                | Message::TreeRequest { .. }
                | Message::TreeDigests { .. }
                | Message::TreeDone { .. }) => {
                    let req = match &m {
                        Message::Digests { req, .. }
                        | Message::ScanEnd { req }
                        | Message::BlockRequest { req, .. }
                        | Message::CompareDone { req, .. }
                        | Message::TreeRequest { req, .. }
                        | Message::TreeDigests { req, .. }
                        | Message::TreeDone { req, .. } => *req,
                        _ => 0,
                    };
                    // A late answer to a job that gave up is dropped.
                    if let Some(tx) = lock(&conn.routes).get(&req) {
                        let _ = tx.send(m);
                    }
                }
                m @ (Message::LeadScan { .. }
                | Message::LeadCompare { .. }
                | Message::LeadDigests { .. }
                | Message::RepairRequest { .. }
                | Message::LeadEnd { .. }
                | Message::LeadReport { .. }) => {
                    if lead.send(m).is_err() {
                        return Err(Error::link(&conn.peer, "secondary-led scan server stopped"));
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
        if !conn.is_dead() || e.kind() == ErrorKind::RemoteIo {
            inner.record_error(&e);
        }
        if e.kind() == ErrorKind::RemoteIo {
            // The secondary's own failure is the cause, even when a send noticed the closed
            // socket first.
            let mut cause = lock(&conn.cause);
            if !matches!(*cause, Some(Error::Closed(_))) {
                *cause = Some(e.clone());
            }
        }
        conn.fail(&inner.dirty, &e);
    }
    inner.poke();
}

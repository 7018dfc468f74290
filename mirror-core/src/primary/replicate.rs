//! The write path and its promises: replicating a write at the configured durability, what a
//! sync-mode write does while there is no replica ([`OnDisconnect`]), and flushing both sides.
//!
//! Crash ordering of a large sync-mode write of data: write-intent → region locks → pending entry
//! registered → frame sent from the caller's buffer → local write → locks released → the
//! secondary's ack (at `flushed`: after its flush). The secondary receives and writes while the
//! local write runs, as DRBD submits both at once; the write-intent bit, durable before either,
//! covers a crash between them, and a local write that fails after the frame left puts the range
//! in the dirty map (the primary's content is what a resync makes both sides agree on). Zero
//! ranges, small writes and async-mode writes go local write first, then their frame through the
//! queue. A range is in the dirty map before the call returns whenever the secondary may lack
//! it — link down, queue full, ack lost, the secondary's write failed, the local write failed
//! after the frame left — whatever the policy tells the caller.
//!
//! `flush()` returns Ok only when everything written before it is on stable storage on both
//! sides: a dirty range is resynced first, then a Flush is acknowledged by the secondary. With
//! the link down it fails (a flush nobody performed is not Ok).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::{Conn, PendingKind, Waiter};
use super::zero::{Zeroing, ZERO_SPAN};
use super::{IntentEnd, JobKind, JobOptions, Primary, WriteOutcome};
use crate::config::ReplicationMode;
use crate::durability::OnDisconnect;
use crate::protocol::messages::{self as wire, Message};
use crate::storage::volume::check_io;
use crate::sync::lock;
use crate::{Error, Result};

/// Sync-mode writes of at least this many bytes are sent by their caller, from its buffer
/// (below it, copying into a queued frame costs less than giving up the writer thread's
/// batching of many writers' frames into one send).
const DIRECT_SEND_MIN: u64 = 64 << 10;

/// One chunk of a write waiting for its ack.
struct InFlight {
    waiter: Arc<Waiter>,
    conn: Arc<Conn>,
}

/// What a replicated write carries: data, or a range made zero ([`zero`](super::zero)).
#[derive(Clone, Copy)]
pub(super) enum Payload<'a> {
    /// Bytes to write.
    Data(&'a [u8]),
    /// `len` bytes of zeros, written or trimmed; the range travels without data.
    Zero(Zeroing, u64),
}

impl Payload<'_> {
    fn len(&self) -> u64 {
        match self {
            Payload::Data(d) => d.len() as u64,
            Payload::Zero(_, len) => *len,
        }
    }
}

impl Primary {
    pub(super) fn submit(&self, offset: u64, data: &[u8], local: bool) -> Result<WriteOutcome> {
        self.submit_payload(offset, Payload::Data(data), local)
    }

    /// The write path of data and of zero ranges alike: write-intent, region locks, the local
    /// write (when `local`), frames queued in order, the dirty map when the link is down, and
    /// the on-disconnect policy.
    pub(super) fn submit_payload(
        &self,
        offset: u64,
        payload: Payload<'_>,
        local: bool,
    ) -> Result<WriteOutcome> {
        self.check_open()?;
        let inner = &*self.inner;
        let vol = &*inner.volume;
        let total = payload.len();
        check_io(vol.name(), vol.size(), vol.block_size(), offset, total)?;
        if total == 0 {
            return Ok(WriteOutcome::Replicated);
        }
        let started = Instant::now();
        inner.last_write_ms.store(
            inner.started.elapsed().as_millis() as u64 + 1,
            Ordering::Relaxed,
        );
        inner.writes.fetch_add(1, Ordering::Relaxed);
        let sync = inner.config.mode == ReplicationMode::Sync;
        let flags = inner.config.durability.write_flags();
        let mut waiting = Vec::new();
        let mut degraded = false;
        let connected = lock(&inner.conn).as_ref().is_some_and(|c| !c.is_dead());
        // Write-intent first: the chunk's bit is durable before the local write proceeds.
        inner.durable.before_write(offset, total, connected)?;
        let _intent = IntentEnd(inner, offset, total);
        {
            let _guards = inner.locks.lock(offset, total);
            let conn = lock(&inner.conn).clone().filter(|c| !c.is_dead());
            // Large sync-mode data leaves first, straight from the caller's buffer, so that the
            // secondary receives and writes it while the local write below runs. Small writes
            // go through the queue, where the writer thread sends many in one system call.
            let direct = sync
                && conn.as_ref().is_some_and(|c| c.direct_sends)
                && matches!(payload, Payload::Data(_))
                && total >= DIRECT_SEND_MIN;
            if local && !direct {
                match payload {
                    Payload::Data(data) => vol.write_at(offset, data)?,
                    Payload::Zero(Zeroing::WriteZeroes, len) => vol.write_zeroes(offset, len)?,
                    Payload::Zero(Zeroing::Trim, len) => vol.trim(offset, len)?,
                }
            }
            let end = offset + total;
            let mut off = offset;
            while off < end {
                let len = match payload {
                    Payload::Data(_) => (end - off).min(wire::MAX_WRITE_DATA as u64),
                    // ZERO_SPAN is a multiple of every block size, so each span stays aligned.
                    Payload::Zero(..) => (end - off).min(ZERO_SPAN),
                };
                let queued = match (&conn, payload) {
                    (Some(c), Payload::Data(data)) if direct => {
                        let at = (off - offset) as usize;
                        let waiter = Arc::new(Waiter::default());
                        let sent = c.send_write_now(
                            off,
                            flags,
                            &data[at..at + len as usize],
                            waiter.clone(),
                        );
                        match sent {
                            Ok(false) => false,
                            Ok(true) => {
                                waiting.push(InFlight {
                                    waiter,
                                    conn: c.clone(),
                                });
                                true
                            }
                            Err(e) => {
                                // Registered but not sent: failing the link marks it dirty
                                // and wakes its waiter with the loss.
                                if !c.is_dead() {
                                    inner.record_error(&e);
                                }
                                c.fail(&inner.dirty, &e);
                                waiting.push(InFlight {
                                    waiter,
                                    conn: c.clone(),
                                });
                                true
                            }
                        }
                    }
                    (Some(c), _) => {
                        let w = sync.then(|| Arc::new(Waiter::default()));
                        let ok = c.submit(
                            |seq| match payload {
                                Payload::Data(data) => {
                                    let at = (off - offset) as usize;
                                    Message::Write {
                                        seq,
                                        offset: off,
                                        flags,
                                        data: data[at..at + len as usize].to_vec(),
                                    }
                                }
                                Payload::Zero(Zeroing::WriteZeroes, _) => Message::WriteZeroes {
                                    seq,
                                    offset: off,
                                    len,
                                    flags,
                                },
                                Payload::Zero(Zeroing::Trim, _) => Message::Trim {
                                    seq,
                                    offset: off,
                                    len,
                                    flags,
                                },
                            },
                            PendingKind::Write { offset: off, len },
                            w.clone(),
                            !sync,
                        )?;
                        if ok {
                            waiting.extend(w.map(|waiter| InFlight {
                                waiter,
                                conn: c.clone(),
                            }));
                        }
                        ok
                    }
                    (None, _) => false,
                };
                if !queued {
                    lock(&inner.dirty).mark(off, len);
                    degraded = true;
                }
                off += len;
            }
            if let (true, Payload::Data(data)) = (local && direct, payload) {
                if let Err(e) = vol.write_at(offset, data) {
                    // The secondary may hold what this volume failed to take: apart until a
                    // resync copies this side's content over.
                    lock(&inner.dirty).mark(offset, total);
                    inner.durable.meta.before_write_apart()?;
                    inner.poke();
                    return Err(e);
                }
            }
        }
        if degraded {
            if connected {
                // The link went down under this write: it is apart from the secondary.
                inner.durable.meta.before_write_apart()?;
            }
            inner.poke();
        }
        let mut cause = None;
        for f in waiting {
            if !f.waiter.wait() {
                // The link failed first: the chunk is in the dirty map (Conn::fail).
                degraded = true;
                cause.get_or_insert_with(|| {
                    f.conn.lost("link lost before the secondary acknowledged")
                });
            }
        }
        if !degraded {
            return Ok(if sync {
                WriteOutcome::Replicated
            } else {
                WriteOutcome::Queued
            });
        }
        if !sync {
            return Ok(WriteOutcome::Degraded);
        }
        match inner.config.on_disconnect {
            OnDisconnect::Degrade => Ok(WriteOutcome::Degraded),
            OnDisconnect::Fail => Err(cause.unwrap_or_else(|| {
                Error::link(
                    &inner.config.peer,
                    "no replica: the link is down (on_disconnect = fail)",
                )
            })),
            OnDisconnect::Suspend(timeout) => {
                self.replicate_when_connected(offset, total, started + timeout, timeout)
            }
        }
    }

    /// Suspended I/O: waits for the link, then sends the range again — read from the local
    /// volume under its region locks, so a newer write to it is never overtaken (a zeroed range
    /// travels as the zeros read back) — and waits
    /// for the secondary's ack, until `deadline`.
    fn replicate_when_connected(
        &self,
        offset: u64,
        len: u64,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<WriteOutcome> {
        let inner = &*self.inner;
        let flags = inner.config.durability.write_flags();
        let vol = &*inner.volume;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let conn = match inner.wait_connected(left) {
                Ok(c) => c,
                Err(e @ (Error::Mismatch(_) | Error::Auth { .. } | Error::Protocol { .. })) => {
                    return Err(e)
                }
                Err(Error::Closed(w)) => return Err(Error::Closed(w)),
                Err(_) => {
                    return Err(Error::link(
                        &inner.config.peer,
                        format!(
                            "no replica within {:.1}s (on_disconnect = suspend)",
                            timeout.as_secs_f64()
                        ),
                    ))
                }
            };
            let mut waiters = Vec::new();
            let mut sent_all = true;
            {
                let _guards = inner.locks.lock(offset, len);
                let mut off = offset;
                let end = offset + len;
                while off < end {
                    let n = (end - off).min(wire::MAX_WRITE_DATA as u64);
                    let mut buf = vec![0u8; n as usize];
                    vol.read_at(off, &mut buf)?;
                    let w = Arc::new(Waiter::default());
                    if !conn.submit(
                        |seq| Message::Write {
                            seq,
                            offset: off,
                            flags,
                            data: buf,
                        },
                        PendingKind::Write {
                            offset: off,
                            len: n,
                        },
                        Some(w.clone()),
                        false,
                    )? {
                        sent_all = false;
                        break;
                    }
                    waiters.push(w);
                    off += n;
                }
            }
            let acked = waiters.iter().all(|w| w.wait());
            if sent_all && acked {
                return Ok(WriteOutcome::Replicated);
            }
            if Instant::now() >= deadline {
                return Err(conn.lost("link lost before the secondary acknowledged"));
            }
            inner.sleep(Duration::from_millis(20));
        }
    }

    /// Flushes the local volume, then — after a resync of anything the secondary still lacks —
    /// the secondary's (after every write queued before it). Fails with a link error while the
    /// link is down, and with the secondary's I/O error when its flush failed.
    pub fn flush(&self) -> Result<()> {
        self.check_open()?;
        let inner = &*self.inner;
        inner.volume.flush()?;
        let conn = match inner.config.on_disconnect {
            OnDisconnect::Suspend(t) => Some(inner.wait_connected(t)?),
            _ => lock(&inner.conn).clone().filter(|c| !c.is_dead()),
        };
        let Some(mut conn) = conn else {
            return Err(Error::link(
                &inner.config.peer,
                "not connected: the secondary's volume was not flushed",
            ));
        };
        let lacking = {
            let d = lock(&inner.dirty);
            !d.is_valid() || d.dirty_count() > 0
        };
        if lacking {
            inner.run_job(JobKind::Auto, &JobOptions::default(), None)?;
            conn = inner.wait_connected(Duration::ZERO)?;
        }
        flush_secondary(&conn, None)
    }

    /// The flush of `close()`: local always; the secondary's when connected, waiting at most
    /// the link timeout.
    pub(super) fn flush_for_close(&self) -> Result<()> {
        let inner = &*self.inner;
        let local = inner.volume.flush();
        let conn = lock(&inner.conn).clone().filter(|c| !c.is_dead());
        let remote = match conn {
            Some(c) => flush_secondary(&c, Some(inner.config.link_timeout)),
            None => Ok(()),
        };
        local.and(remote)
    }
}

/// Sends a Flush after everything queued on `conn` and waits for its ack.
fn flush_secondary(conn: &Conn, timeout: Option<Duration>) -> Result<()> {
    let w = Arc::new(Waiter::default());
    if !conn.submit(
        |seq| Message::Flush { seq },
        PendingKind::Flush,
        Some(w.clone()),
        false,
    )? {
        return Err(conn.lost("link lost before the secondary flushed"));
    }
    let acked = match timeout {
        None => Some(w.wait()),
        Some(t) => w.wait_timeout(t),
    };
    match acked {
        Some(true) => Ok(()),
        Some(false) => Err(conn.lost("link lost before the secondary flushed")),
        None => Err(Error::link(
            &conn.peer,
            "the secondary did not acknowledge the flush within the link timeout",
        )),
    }
}

//! One established link and its pending table: every frame that expects an ack is registered
//! *before* it is queued, so when the link fails ([`Conn::fail`]) every write it carried is
//! put in the dirty map, every taken region goes back, and every waiter wakes — before the
//! link is reported down. A barrier's regions leave the map only when its ack arrives.
//!
//! Frames reach the socket in one order: they leave the queue only under the writer's lock,
//! and a write sent directly from its caller's buffer ([`Conn::send_write_now`]) first sends
//! everything queued before it, under that same lock.

use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, Sender, TrySendError};
use tracing::{debug, warn};

use super::Inner;
use crate::dirty::{DirtyMap, Region};
use crate::durability::Durability;
use crate::protocol::link::{Counters, FrameWriter};
use crate::protocol::messages::Message;
use crate::sync::lock;
use crate::{Error, ErrorKind, Result};

/// Wakes a waiter when its frame is acknowledged (true) or the link is lost (false).
#[derive(Debug, Default)]
pub(super) struct Waiter {
    pub(super) done: Mutex<Option<bool>>,
    cv: Condvar,
}

impl Waiter {
    fn set(&self, ok: bool) {
        *lock(&self.done) = Some(ok);
        self.cv.notify_all();
    }

    pub(super) fn wait(&self) -> bool {
        let mut g = lock(&self.done);
        loop {
            if let Some(ok) = *g {
                return ok;
            }
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub(super) fn wait_timeout(&self, t: Duration) -> Option<bool> {
        let g = lock(&self.done);
        let (g, _) = self
            .cv
            .wait_timeout_while(g, t, |d| d.is_none())
            .unwrap_or_else(|e| e.into_inner());
        *g
    }
}

#[derive(Debug)]
pub(super) enum PendingKind {
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
    pub(super) kind: PendingKind,
    waiter: Option<Arc<Waiter>>,
}

#[derive(Debug, Default)]
pub(super) struct PendingTable {
    pub(super) dead: bool,
    entries: HashMap<u64, PendingEntry>,
}

/// One established link.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) peer: String,
    pub(super) tx: Sender<Vec<u8>>,
    /// The other end of `tx`: drained only under `writer`'s lock.
    pub(super) queued: Receiver<Vec<u8>>,
    /// The link's writing half, shared by the writer thread and direct senders.
    pub(super) writer: Mutex<FrameWriter>,
    pub(super) seq: AtomicU64,
    pub(super) pending: Mutex<PendingTable>,
    pub(super) routes: Mutex<HashMap<u64, Sender<Message>>>,
    pub(super) counters: Arc<Counters>,
    pub(super) stream: TcpStream,
    pub(super) dead: AtomicBool,
    /// Why the link died (the first failure), for callers woken by it.
    pub(super) cause: Mutex<Option<Error>>,
    /// The secondary speaks hierarchical digests: full scans and verifies descend trees.
    pub(super) tree: bool,
    /// Large sync-mode writes are sent by their callers (a link in clear); over TLS they go
    /// through the writer thread, which seals them while the caller writes locally.
    pub(super) direct_sends: bool,
}

impl Conn {
    pub(super) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// The error for work cut short by this link's death: the secondary's own I/O error when
    /// that is what ended it, a link error otherwise.
    pub(super) fn lost(&self, what: &str) -> Error {
        match lock(&self.cause).as_ref() {
            Some(e @ Error::RemoteIo { .. }) => e.clone(),
            _ => Error::link(&self.peer, what),
        }
    }

    /// Registers a pending entry and queues its frame. Returns false (nothing registered)
    /// when the link is down, or when `try_only` and the queue is full.
    pub(super) fn submit(
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

    /// Sends every queued frame, in order, and flushes.
    pub(super) fn send_queued(&self) -> Result<()> {
        let mut w = lock(&self.writer);
        self.drain_queue(&mut w)?;
        w.flush()
    }

    fn drain_queue(&self, w: &mut FrameWriter) -> Result<()> {
        while let Ok(f) = self.queued.try_recv() {
            if !f.is_empty() {
                w.send_frame(&f)?;
            }
        }
        Ok(())
    }

    /// Registers a pending write and sends it now, its data from the caller's buffer (no
    /// copy, no hand-off to the writer thread), after every frame queued before it. Ok(false)
    /// when the link is down (nothing registered). A failed send is returned with the entry
    /// registered: the caller fails the link, which accounts for it and wakes `waiter`.
    pub(super) fn send_write_now(
        &self,
        offset: u64,
        flags: u8,
        data: &[u8],
        waiter: Arc<Waiter>,
    ) -> Result<bool> {
        let mut w = lock(&self.writer);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        {
            let mut p = lock(&self.pending);
            if p.dead {
                return Ok(false);
            }
            let kind = PendingKind::Write {
                offset,
                len: data.len() as u64,
            };
            p.entries.insert(
                seq,
                PendingEntry {
                    kind,
                    waiter: Some(waiter),
                },
            );
        }
        self.drain_queue(&mut w)?;
        w.send_write_now(seq, offset, flags, data)?;
        Ok(true)
    }

    /// Queues a message that expects no ack.
    pub(super) fn send(&self, msg: &Message) -> Result<()> {
        let frame = msg
            .to_frame()
            .map_err(|e| Error::protocol(&self.peer, e.to_string()))?;
        if self.is_dead() || self.tx.send(frame).is_err() {
            return Err(Error::link(&self.peer, "link lost"));
        }
        Ok(())
    }

    pub(super) fn route(&self, req: u64) -> Receiver<Message> {
        let (tx, rx) = unbounded();
        lock(&self.routes).insert(req, tx);
        rx
    }

    pub(super) fn unroute(&self, req: u64) {
        lock(&self.routes).remove(&req);
    }

    pub(super) fn pending_writes(&self) -> u64 {
        lock(&self.pending)
            .entries
            .values()
            .filter(|e| matches!(e.kind, PendingKind::Write { .. }))
            .count() as u64
    }

    pub(super) fn ack(&self, seq: u64, dirty: &Mutex<DirtyMap>) -> Result<()> {
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
    pub(super) fn fail(&self, dirty: &Mutex<DirtyMap>, err: &Error) {
        if self.dead.swap(true, Ordering::SeqCst) {
            return;
        }
        *lock(&self.cause) = Some(err.clone());
        if err.kind() == ErrorKind::Closed {
            // The primary's own close: the expected end of a job, not news.
            debug!(peer = %self.peer, "link closed");
        } else {
            warn!(peer = %self.peer, error = %err, "link down");
        }
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

impl Inner {
    pub(super) fn wait_ack(&self, conn: &Conn, w: &Waiter) -> Result<()> {
        if w.wait() {
            Ok(())
        } else {
            Err(conn.lost("link lost before the secondary acknowledged"))
        }
    }

    pub(super) fn barrier(
        &self,
        conn: &Conn,
        regions: Vec<Region>,
        validate: bool,
    ) -> Result<Arc<Waiter>> {
        let w = Arc::new(Waiter::default());
        let n = regions.clone();
        // At `flushed`, what a barrier vouches for must be on stable storage: the secondary
        // flushes once for the window (group commit) before acknowledging a Flush.
        let durable = self.config.durability == Durability::Flushed;
        if !conn.submit(
            |seq| {
                if durable {
                    Message::Flush { seq }
                } else {
                    Message::Barrier { seq }
                }
            },
            PendingKind::Barrier { regions, validate },
            Some(w.clone()),
            false,
        )? {
            let mut d = lock(&self.dirty);
            n.iter().for_each(|r| d.fail(*r));
            return Err(conn.lost("link lost"));
        }
        Ok(w)
    }
}

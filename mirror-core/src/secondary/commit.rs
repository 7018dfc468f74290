//! Group commit: the secondary's acknowledgements, sent in stream order, each only once what it
//! promises holds.
//!
//! The apply loop writes each frame's data and hands its acknowledgement here, in stream order:
//! [`Committer::ack`] for one that needs nothing more (a `written` write, a barrier),
//! [`Committer::durable`] for one that needs a flush first (a `flushed` write, a Flush). The
//! commit thread takes every acknowledgement queued so far as one batch, sends those before the
//! batch's first durable one at once, flushes the volume **once** for the rest, then sends
//! them. While it flushes, the apply loop goes on writing the next frames, which the next flush
//! covers: many writers in flight pay for one `fdatasync`.
//!
//! Crash ordering: write → (queued here) → flush → ack. An acknowledgement that needs a flush
//! never leaves before a flush that started after its write completed. A flush that fails ends
//! the session: no acknowledgement of the batch is sent, the error is kept for the session to
//! report, and the connection's read side is shut so the apply loop stops.

use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::link::FrameWriter;
use crate::volume::Volume;
use crate::wire::Message;
use crate::{Error, Result};

/// Acknowledgements one flush covers at most.
const MAX_BATCH: usize = 4096;
/// Acknowledgements that may wait for the commit thread before the apply loop blocks.
const QUEUE: usize = 8192;

#[derive(Debug, Clone, Copy)]
enum Pending {
    /// Send as soon as the acknowledgements before it are sent.
    Now(u64),
    /// Send once a flush that started after this point succeeded.
    Durable(u64),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The commit thread of one session.
#[derive(Debug)]
pub(crate) struct Committer {
    tx: Option<Sender<Pending>>,
    thread: Option<JoinHandle<()>>,
    failure: Arc<Mutex<Option<Error>>>,
    peer: String,
}

impl Committer {
    /// Starts the commit thread. `on_failure` runs once, after a flush or a send failed.
    pub(crate) fn start(
        volume: Arc<dyn Volume>,
        writer: Arc<Mutex<FrameWriter>>,
        peer: &str,
        on_failure: impl FnOnce() + Send + 'static,
    ) -> Result<Self> {
        let (tx, rx) = bounded(QUEUE);
        let failure = Arc::new(Mutex::new(None));
        let f = failure.clone();
        let thread = std::thread::Builder::new()
            .name("mirror-secondary-commit".into())
            .spawn(move || {
                if let Err(e) = run(&*volume, &writer, &rx) {
                    *lock(&f) = Some(e);
                    on_failure();
                }
            })
            .map_err(|e| Error::link(peer, format!("spawn: {e}")))?;
        Ok(Committer {
            tx: Some(tx),
            thread: Some(thread),
            failure,
            peer: peer.to_owned(),
        })
    }

    fn push(&self, p: Pending) -> Result<()> {
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(p).is_ok());
        if sent {
            Ok(())
        } else {
            Err(self
                .failure()
                .unwrap_or_else(|| Error::link(&self.peer, "commit thread stopped")))
        }
    }

    /// Queues an acknowledgement that needs nothing more than the ones before it.
    pub(crate) fn ack(&self, seq: u64) -> Result<()> {
        self.push(Pending::Now(seq))
    }

    /// Queues an acknowledgement to send after a flush.
    pub(crate) fn durable(&self, seq: u64) -> Result<()> {
        self.push(Pending::Durable(seq))
    }

    /// The error that stopped the commit thread, if one did.
    pub(crate) fn failure(&self) -> Option<Error> {
        lock(&self.failure).clone()
    }

    /// Commits what is queued (one last flush when a durable acknowledgement waits) and stops
    /// the thread; returns its failure, if any.
    pub(crate) fn finish(&mut self) -> Option<Error> {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.failure()
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.finish();
    }
}

fn run(volume: &dyn Volume, writer: &Mutex<FrameWriter>, rx: &Receiver<Pending>) -> Result<()> {
    let mut batch = Vec::with_capacity(64);
    while let Ok(first) = rx.recv() {
        batch.clear();
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let first_durable = batch
            .iter()
            .position(|p| matches!(p, Pending::Durable(_)))
            .unwrap_or(batch.len());
        if first_durable > 0 {
            send(writer, &batch[..first_durable])?;
        }
        if first_durable < batch.len() {
            volume.flush()?;
            send(writer, &batch[first_durable..])?;
        }
    }
    Ok(())
}

fn send(writer: &Mutex<FrameWriter>, acks: &[Pending]) -> Result<()> {
    let mut w = lock(writer);
    for p in acks {
        let (Pending::Now(seq) | Pending::Durable(seq)) = *p;
        w.send(&Message::Ack { seq })?;
    }
    w.flush()
}

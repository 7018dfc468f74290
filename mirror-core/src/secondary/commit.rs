//! Group commit: the secondary's acknowledgements, sent in stream order, each only once what it
//! promises holds.
//!
//! The apply loop writes each frame's data and hands its acknowledgement here, in stream order:
//! [`Committer::ack`] for one that needs nothing more (a `written` write, a barrier),
//! [`Committer::durable`] for one that needs a flush first (a `flushed` write, a Flush). The
//! commit thread takes every acknowledgement queued so far as one batch and starts **one**
//! flush for the batch's durable part on a flusher thread; it does not wait for that flush to
//! end before taking the next batch, so up to [`FLUSHES_IN_FLIGHT`] flushes overlap — as
//! writers calling `fdatasync` at once on the file overlap, the file system sharing journal
//! commits between them — while the apply loop goes on writing the next frames. Batches are
//! acknowledged in order, each once its flush (and every earlier batch's) succeeded.
//!
//! When nothing is queued or in flight here, an acknowledgement that needs nothing more is sent
//! by the apply loop itself ([`Committer::ack`] returns true): no hand-off to the commit thread
//! for a `written` write while no flush is pending, and still none overtakes another.
//!
//! Crash ordering: write → (queued here) → flush → ack. An acknowledgement that needs a flush
//! never leaves before a flush that started after its write completed, nor before every
//! acknowledgement queued before it. A flush that fails ends the session: no acknowledgement of
//! its batch or any later one is sent, the error is kept for the session to report, and the
//! connection's read side is shut so the apply loop stops.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Select, Sender, TryRecvError};

use crate::link::FrameWriter;
use crate::volume::Volume;
use crate::wire::Message;
use crate::{Error, Result};

/// Acknowledgements one flush covers at most.
const MAX_BATCH: usize = 4096;
/// Acknowledgements that may wait for the commit thread before the apply loop blocks.
const QUEUE: usize = 8192;
/// Flushes that may run at once (one flusher thread each).
pub(crate) const FLUSHES_IN_FLIGHT: usize = 4;

#[derive(Debug, Clone, Copy)]
enum Pending {
    /// Send as soon as the acknowledgements before it are sent.
    Now(u64),
    /// Send once a flush that started after this point succeeded.
    Durable(u64),
}

impl Pending {
    fn seq(self) -> u64 {
        let (Pending::Now(seq) | Pending::Durable(seq)) = self;
        seq
    }
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
    /// Acknowledgements queued here and not sent yet (never decreases after a failure).
    outstanding: Arc<AtomicUsize>,
    writer: Arc<Mutex<FrameWriter>>,
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
        let outstanding = Arc::new(AtomicUsize::new(0));
        let (f, w, o) = (failure.clone(), writer.clone(), outstanding.clone());
        let p = peer.to_owned();
        let thread = std::thread::Builder::new()
            .name("mirror-secondary-commit".into())
            .spawn(move || {
                if let Err(e) = run(volume, &w, &rx, &o, &p) {
                    *lock(&f) = Some(e);
                    on_failure();
                }
            })
            .map_err(|e| Error::link(peer, format!("spawn: {e}")))?;
        Ok(Committer {
            tx: Some(tx),
            thread: Some(thread),
            failure,
            outstanding,
            writer,
            peer: peer.to_owned(),
        })
    }

    fn push(&self, p: Pending) -> Result<()> {
        self.outstanding.fetch_add(1, Ordering::SeqCst);
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(p).is_ok());
        if sent {
            Ok(())
        } else {
            Err(self
                .failure()
                .unwrap_or_else(|| Error::link(&self.peer, "commit thread stopped")))
        }
    }

    /// Acknowledges what needs nothing more than the acknowledgements before it: at once, from
    /// the calling thread, when none waits here (returns true: the ack is buffered in the
    /// writer, for the caller to flush), else queued behind them (false).
    pub(crate) fn ack(&self, seq: u64) -> Result<bool> {
        // Only the apply loop adds: zero stays zero until this call returns.
        if self.outstanding.load(Ordering::SeqCst) == 0 {
            lock(&self.writer).send(&Message::Ack { seq })?;
            return Ok(true);
        }
        self.push(Pending::Now(seq))?;
        Ok(false)
    }

    /// Queues an acknowledgement to send after a flush.
    pub(crate) fn durable(&self, seq: u64) -> Result<()> {
        self.push(Pending::Durable(seq))
    }

    /// The error that stopped the commit thread, if one did.
    pub(crate) fn failure(&self) -> Option<Error> {
        lock(&self.failure).clone()
    }

    /// Commits what is queued (a last flush when a durable acknowledgement waits) and stops
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

/// Acknowledgements waiting, in stream order, for the flush started for them (if any).
struct Segment {
    acks: Vec<Pending>,
    flushed: Option<Receiver<Result<()>>>,
}

/// The flusher threads: each runs one flush at a time for whoever asks, answering on the
/// channel that came with the request.
struct Flushers {
    jobs: Option<Sender<Sender<Result<()>>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Flushers {
    fn start(volume: &Arc<dyn Volume>, peer: &str) -> Result<Self> {
        let (jobs, rx) = bounded::<Sender<Result<()>>>(FLUSHES_IN_FLIGHT);
        let mut threads = Vec::with_capacity(FLUSHES_IN_FLIGHT);
        for _ in 0..FLUSHES_IN_FLIGHT {
            let (volume, rx) = (volume.clone(), rx.clone());
            let t = std::thread::Builder::new()
                .name("mirror-secondary-flush".into())
                .spawn(move || {
                    while let Ok(done) = rx.recv() {
                        let _ = done.send(volume.flush());
                    }
                })
                .map_err(|e| Error::link(peer, format!("spawn: {e}")))?;
            threads.push(t);
        }
        Ok(Flushers {
            jobs: Some(jobs),
            threads,
        })
    }

    /// Starts a flush; its result arrives on the returned channel.
    fn flush(&self, peer: &str) -> Result<Receiver<Result<()>>> {
        let (done, rx) = bounded(1);
        match self.jobs.as_ref().map(|j| j.send(done)) {
            Some(Ok(())) => Ok(rx),
            _ => Err(Error::link(peer, "flusher threads stopped")),
        }
    }
}

impl Drop for Flushers {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn run(
    volume: Arc<dyn Volume>,
    writer: &Mutex<FrameWriter>,
    rx: &Receiver<Pending>,
    outstanding: &AtomicUsize,
    peer: &str,
) -> Result<()> {
    let flushers = Flushers::start(&volume, peer)?;
    let mut segments: VecDeque<Segment> = VecDeque::new();
    let mut flushing = 0usize;
    let mut open = true;
    while open || !segments.is_empty() {
        // Acknowledge, in order, every segment whose flush is done (or needs none).
        while let Some(front) = segments.front() {
            match &front.flushed {
                None => {}
                Some(done) => match done.try_recv() {
                    Ok(r) => {
                        flushing -= 1;
                        r?;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        return Err(Error::link(peer, "a flusher thread stopped"))
                    }
                },
            }
            let seg = segments.pop_front().expect("front exists");
            send(writer, &seg.acks)?;
            outstanding.fetch_sub(seg.acks.len(), Ordering::SeqCst);
        }
        let take = open && flushing < FLUSHES_IN_FLIGHT;
        let front_done = segments.front().and_then(|s| s.flushed.as_ref());
        if !take && front_done.is_none() {
            // Closed, and every segment acknowledged.
            break;
        }
        // Wait for more acknowledgements or for the oldest flush, whichever comes first.
        let mut sel = Select::new();
        let new = take.then(|| sel.recv(rx));
        if let Some(done) = front_done {
            sel.recv(done);
        }
        let ready = sel.ready();
        if new != Some(ready) {
            continue;
        }
        let first = match rx.try_recv() {
            Ok(p) => p,
            Err(TryRecvError::Empty) => continue,
            Err(TryRecvError::Disconnected) => {
                open = false;
                continue;
            }
        };
        let mut batch = Vec::with_capacity(64);
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
        let durable = batch.split_off(first_durable);
        if !batch.is_empty() {
            segments.push_back(Segment {
                acks: batch,
                flushed: None,
            });
        }
        if !durable.is_empty() {
            // Every write of this batch completed before it was queued: this flush covers it.
            let flushed = flushers.flush(peer)?;
            flushing += 1;
            segments.push_back(Segment {
                acks: durable,
                flushed: Some(flushed),
            });
        }
    }
    Ok(())
}

fn send(writer: &Mutex<FrameWriter>, acks: &[Pending]) -> Result<()> {
    if acks.is_empty() {
        return Ok(());
    }
    let mut w = lock(writer);
    for p in acks {
        w.send(&Message::Ack { seq: p.seq() })?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use super::*;
    use crate::link::{split, Transport};
    use crate::units::BlockSize;
    use crate::volume::MemVolume;
    use crate::wire::{read_frame, MAX_PAYLOAD};

    /// A volume whose flush takes a while and can be told to fail, counting how many run at once.
    #[derive(Debug)]
    struct SlowFlush {
        mem: MemVolume,
        running: AtomicUsize,
        most: AtomicUsize,
        flushes: AtomicUsize,
        fail: AtomicBool,
    }

    impl Volume for SlowFlush {
        fn size(&self) -> u64 {
            self.mem.size()
        }
        fn block_size(&self) -> BlockSize {
            self.mem.block_size()
        }
        fn name(&self) -> &str {
            "slow-flush"
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
            self.mem.read_at(offset, buf)
        }
        fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
            self.mem.write_at(offset, data)
        }
        fn flush(&self) -> Result<()> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(40));
            self.running.fetch_sub(1, Ordering::SeqCst);
            self.flushes.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err(Error::io(
                    "slow-flush",
                    "flush",
                    0,
                    std::io::Error::from_raw_os_error(5),
                ));
            }
            Ok(())
        }
    }

    /// A committer writing to one end of a loopback connection, and the other end.
    fn committer(vol: &Arc<SlowFlush>) -> (Committer, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let near = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (far, _) = l.accept().unwrap();
        let t = Duration::from_secs(30);
        let (_r, w, _) = split(Transport::Plain(near), "test", "primary", t).unwrap();
        let volume: Arc<dyn Volume> = vol.clone();
        let c = Committer::start(volume, Arc::new(Mutex::new(w)), "test", || {}).unwrap();
        far.set_read_timeout(Some(t)).unwrap();
        (c, far)
    }

    fn slow_volume() -> Arc<SlowFlush> {
        Arc::new(SlowFlush {
            mem: MemVolume::new(1 << 20, BlockSize::new(4096).unwrap()),
            running: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
            flushes: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
        })
    }

    fn next_ack(r: &mut TcpStream) -> u64 {
        match read_frame(r, MAX_PAYLOAD).unwrap().0 {
            Message::Ack { seq } => seq,
            other => panic!("expected an Ack, got {other:?}"),
        }
    }

    #[test]
    fn flushes_overlap_and_acknowledgements_keep_stream_order() {
        let vol = slow_volume();
        let (mut c, mut far) = committer(&vol);
        // Durable ones arriving while earlier flushes run, with plain ones between them.
        for seq in 1..=24u64 {
            if seq % 3 == 0 {
                assert!(!c.ack(seq).unwrap(), "queued behind the flushes");
            } else {
                c.durable(seq).unwrap();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for seq in 1..=24u64 {
            assert_eq!(next_ack(&mut far), seq);
        }
        assert!(
            vol.most.load(Ordering::SeqCst) > 1,
            "no two flushes ran at once"
        );
        assert!(vol.most.load(Ordering::SeqCst) <= FLUSHES_IN_FLIGHT);
        // Nothing waits any more: a plain acknowledgement is the caller's to send.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while c.outstanding.load(Ordering::SeqCst) != 0 {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(c.ack(25).unwrap());
        lock(&c.writer).flush().unwrap();
        assert_eq!(next_ack(&mut far), 25);
        assert!(c.finish().is_none());
    }

    #[test]
    fn a_failed_flush_acknowledges_nothing_of_its_batch_or_after() {
        let vol = slow_volume();
        let (mut c, mut far) = committer(&vol);
        c.durable(1).unwrap();
        assert_eq!(next_ack(&mut far), 1);
        vol.fail.store(true, Ordering::SeqCst);
        c.durable(2).unwrap();
        let _ = c.ack(3);
        let _ = c.durable(4);
        assert!(matches!(c.finish(), Some(Error::Io { .. })));
        drop(c);
        // The writer is gone: the stream ends with no acknowledgement after the first.
        far.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        assert!(read_frame(&mut far, MAX_PAYLOAD).is_err());
    }
}

//! The secondary controller: accepts a primary's connection, applies its writes in stream
//! order, serves its scans and compares, and keeps serving the next connection after a bad
//! one.
//!
//! Invariants:
//! - Nothing is written before the handshake (version, secret, volume size and block size)
//!   has succeeded, and every offset and length is checked against the volume before any I/O;
//!   a bad frame ends that connection with an `Error` message, never touches the volume.
//! - One session at a time: a newly authenticated primary takes over (the old connection is
//!   shut down and its handler finishes before the new one applies anything), so writes of two
//!   connections never interleave.
//! - The coherence record (which primary session and connection last attached) is reported
//!   at every handshake, before it is replaced; the primary decides from it whether its dirty
//!   map can drive the resync. It lives in memory: a restarted secondary reports none, which
//!   forces a full checksum scan.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver};
use tracing::{debug, info, warn};

use crate::config::SecondaryConfig;
use crate::protocol::auth;
use crate::protocol::link::{self, Counters, FrameReader, FrameWriter};
use crate::protocol::messages::{self as wire, code, write_flags, Message};
use crate::storage::background;
use crate::storage::scan::{self, RunBuilder, ScanOptions};
use crate::storage::volume::{IoPriority, Volume};
use crate::units::{BlockIndex, BlockRange, Generation};
use crate::{Algorithm, Error, ErrorKind, Result};

/// A snapshot of a secondary.
#[derive(Debug, Clone, Default)]
pub struct SecondaryStatus {
    /// Address of the connected primary.
    pub peer: Option<String>,
    /// Connections accepted.
    pub connections: u64,
    /// Connections refused or ended by an error.
    pub rejected: u64,
    /// Writes applied (replicated and repairs).
    pub writes_applied: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// The last connection error.
    pub last_error: Option<String>,
}

/// The secondary side of a mirrored pair: applies what a primary sends.
#[derive(Debug)]
pub struct Secondary {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Serving {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Stats {
    connections: AtomicU64,
    rejected: AtomicU64,
    writes_applied: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    last_error: Mutex<Option<String>>,
    peer: Mutex<Option<String>>,
    current: Mutex<Option<Arc<Counters>>>,
}

#[derive(Debug)]
struct Inner {
    volume: Arc<dyn Volume>,
    config: SecondaryConfig,
    coherent: Mutex<Generation>,
    serving: Mutex<Option<Serving>>,
    /// Every open connection, so stop and takeover can shut them down.
    conns: Mutex<HashMap<u64, TcpStream>>,
    handlers: Mutex<Vec<JoinHandle<()>>>,
    /// Id of the connection that is (or is becoming) the active session.
    active: Mutex<Option<u64>>,
    /// Held by the handler of the active session while it applies frames.
    session: Mutex<()>,
    next_conn: AtomicU64,
    stats: Stats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Secondary {
    /// A secondary over `volume`; it listens once [`serve`](Self::serve) is called.
    pub fn new(volume: Arc<dyn Volume>, config: SecondaryConfig) -> Result<Secondary> {
        if let Some(s) = &config.secret {
            if s.len() < 8 {
                return Err(Error::invalid("shared secret must be at least 8 bytes"));
            }
        }
        Ok(Secondary {
            inner: Arc::new(Inner {
                volume,
                config,
                coherent: Mutex::new(Generation::default()),
                serving: Mutex::new(None),
                conns: Mutex::new(HashMap::new()),
                handlers: Mutex::new(Vec::new()),
                active: Mutex::new(None),
                session: Mutex::new(()),
                next_conn: AtomicU64::new(1),
                stats: Stats::default(),
            }),
        })
    }

    /// Starts listening and serving in background threads; returns the bound address. Serving
    /// already: returns the address it is bound to.
    pub fn serve(&self) -> Result<SocketAddr> {
        let mut serving = lock(&self.inner.serving);
        if let Some(s) = serving.as_ref() {
            return Ok(s.addr);
        }
        let listen = &self.inner.config.listen;
        let addr = listen
            .to_socket_addrs()
            .map_err(|e| Error::invalid(format!("listen address {listen:?}: {e}")))?
            .next()
            .ok_or_else(|| {
                Error::invalid(format!("listen address {listen:?} resolves to nothing"))
            })?;
        self.inner.config.validate(&addr)?;
        let listener =
            TcpListener::bind(addr).map_err(|e| Error::link(addr, format!("listen: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::link(addr, e.to_string()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::link(addr, e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let inner = self.inner.clone();
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("mirror-accept".into())
            .spawn(move || accept_loop(inner, listener, stop2))
            .map_err(|e| Error::link(addr, format!("spawn: {e}")))?;
        info!(%addr, volume = self.inner.volume.name(), "secondary listening");
        *serving = Some(Serving { addr, stop, thread });
        Ok(addr)
    }

    /// The bound address, while serving.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        lock(&self.inner.serving).as_ref().map(|s| s.addr)
    }

    /// Stops listening and ends every connection, flushing the volume. What the secondary
    /// knows of its coherence is kept, so a later `serve` lets the primary resync from its
    /// dirty map.
    pub fn stop(&self) {
        let serving = lock(&self.inner.serving).take();
        if let Some(s) = serving {
            s.stop.store(true, Ordering::SeqCst);
            let _ = s.thread.join();
        }
        for (_, c) in lock(&self.inner.conns).iter() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        let handlers: Vec<_> = lock(&self.inner.handlers).drain(..).collect();
        for h in handlers {
            let _ = h.join();
        }
        let _ = self.inner.volume.flush();
    }

    /// The generation the secondary was last attached to.
    pub fn generation(&self) -> Generation {
        *lock(&self.inner.coherent)
    }

    /// A snapshot.
    pub fn status(&self) -> SecondaryStatus {
        let s = &self.inner.stats;
        let (mut sent, mut received) = (
            s.bytes_sent.load(Ordering::Relaxed),
            s.bytes_received.load(Ordering::Relaxed),
        );
        if let Some(c) = lock(&s.current).as_ref() {
            sent += c.sent.load(Ordering::Relaxed);
            received += c.received.load(Ordering::Relaxed);
        }
        SecondaryStatus {
            peer: lock(&s.peer).clone(),
            connections: s.connections.load(Ordering::Relaxed),
            rejected: s.rejected.load(Ordering::Relaxed),
            writes_applied: s.writes_applied.load(Ordering::Relaxed),
            bytes_received: received,
            bytes_sent: sent,
            last_error: lock(&s.last_error).clone(),
        }
    }
}

impl Drop for Secondary {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(inner: Arc<Inner>, listener: TcpListener, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let _ = stream.set_nonblocking(false);
                let id = inner.next_conn.fetch_add(1, Ordering::Relaxed);
                if let Ok(c) = stream.try_clone() {
                    lock(&inner.conns).insert(id, c);
                }
                let inner2 = inner.clone();
                let h = std::thread::Builder::new()
                    .name(format!("mirror-secondary-{id}"))
                    .spawn(move || {
                        handle_connection(&inner2, id, stream, peer.to_string());
                        lock(&inner2.conns).remove(&id);
                    });
                let mut handlers = lock(&inner.handlers);
                handlers.retain(|h| !h.is_finished());
                if let Ok(h) = h {
                    handlers.push(h);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn handle_connection(inner: &Arc<Inner>, id: u64, stream: TcpStream, peer: String) {
    info!(%peer, "primary connected");
    let timeout = inner.config.link_timeout;
    let (mut reader, writer, counters) = match link::split(stream, &peer, timeout) {
        Ok(x) => x,
        Err(e) => {
            warn!(%peer, error = %e, "connection setup failed");
            return;
        }
    };
    let writer = Arc::new(Mutex::new(writer));
    let result = Session {
        inner,
        id,
        peer: &peer,
        writer: &writer,
        counters: counters.clone(),
    }
    .run(&mut reader);
    let stats = &inner.stats;
    stats
        .bytes_sent
        .fetch_add(counters.sent.load(Ordering::Relaxed), Ordering::Relaxed);
    stats
        .bytes_received
        .fetch_add(counters.received.load(Ordering::Relaxed), Ordering::Relaxed);
    {
        let mut cur = lock(&stats.current);
        if cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, &counters)) {
            *cur = None;
            *lock(&stats.peer) = None;
        }
    }
    match result {
        Ok(()) => info!(%peer, "primary disconnected"),
        Err(e) => {
            // Tell the peer why, when the fault is not the link itself.
            if !matches!(e.kind(), ErrorKind::Link)
                && !matches!(e, Error::Protocol { ref msg, .. } if msg.starts_with("peer reported"))
            {
                let msg = Message::Error {
                    code: link::error_code(&e),
                    message: e.to_string(),
                };
                let _ = lock(&writer).send_now(&msg);
            }
            if e.kind() == ErrorKind::Link {
                // The primary went away (closed, restarted, or the link broke): not a fault
                // of the connection's contents.
                info!(%peer, reason = %e, "primary disconnected");
            } else {
                warn!(%peer, error = %e, "connection refused or ended by an error");
                stats.rejected.fetch_add(1, Ordering::Relaxed);
            }
            *lock(&stats.last_error) = Some(e.to_string());
        }
    }
    if let Some(c) = lock(&inner.conns).get(&id) {
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
}

/// Work the session hands to its scan worker, in stream order.
enum Work {
    Scan {
        req: u64,
        algorithm: Algorithm,
        priority: u8,
        range: BlockRange,
    },
    Compare {
        req: u64,
        algorithm: Algorithm,
        priority: u8,
        range: BlockRange,
    },
    Digests {
        req: u64,
        algorithm: Algorithm,
        start: u64,
        digests: Vec<u8>,
    },
    CompareEnd {
        req: u64,
    },
}

struct Session<'a> {
    inner: &'a Arc<Inner>,
    id: u64,
    peer: &'a str,
    writer: &'a Arc<Mutex<FrameWriter>>,
    counters: Arc<Counters>,
}

impl Session<'_> {
    fn run(&self, reader: &mut FrameReader) -> Result<()> {
        let open = self.handshake(reader)?;
        reader.handshake_done();

        // Take over from any earlier session: shut it down, then wait for its handler to let
        // go of the session before anything of ours is applied.
        {
            let mut active = lock(&self.inner.active);
            if let Some(old) = active.replace(self.id) {
                if let Some(c) = lock(&self.inner.conns).get(&old) {
                    info!(
                        peer = self.peer,
                        "new primary connection takes over from the previous one"
                    );
                    let _ = c.shutdown(std::net::Shutdown::Both);
                }
            }
        }
        let _session = lock(&self.inner.session);
        if *lock(&self.inner.active) != Some(self.id) {
            return Err(Error::link(self.peer, "superseded by a newer connection"));
        }
        let last = {
            let mut g = lock(&self.inner.coherent);
            let last = *g;
            *g = open;
            last
        };
        self.send_now(&Message::OpenReply {
            size: self.inner.volume.size(),
            block_size: self.inner.volume.block_size().get(),
            last_session: last.session,
            last_epoch: last.epoch,
        })?;
        self.inner.stats.connections.fetch_add(1, Ordering::Relaxed);
        *lock(&self.inner.stats.peer) = Some(self.peer.to_owned());
        *lock(&self.inner.stats.current) = Some(self.counters.clone());
        info!(peer = self.peer, generation = %open, previous = %last, "session open");

        let (tx, rx) = bounded::<Work>(64);
        let closing = Arc::new(AtomicBool::new(false));
        let worker = {
            let inner = self.inner.clone();
            let writer = self.writer.clone();
            let closing = closing.clone();
            let peer = self.peer.to_owned();
            let id = self.id;
            std::thread::Builder::new()
                .name("mirror-secondary-scan".into())
                .spawn(move || {
                    if let Err(e) = worker(&inner, &writer, &rx, &closing, &peer) {
                        if !matches!(e.kind(), ErrorKind::Link | ErrorKind::Cancelled) {
                            let _ = lock(&writer).send_now(&Message::Error {
                                code: link::error_code(&e),
                                message: e.to_string(),
                            });
                        }
                        warn!(%peer, error = %e, "scan worker stopped");
                        if let Some(c) = lock(&inner.conns).get(&id) {
                            let _ = c.shutdown(std::net::Shutdown::Both);
                        }
                    }
                })
                .map_err(|e| Error::link(self.peer, format!("spawn: {e}")))?
        };
        let result = self.apply_loop(reader, &tx);
        closing.store(true, Ordering::SeqCst);
        drop(tx);
        let _ = worker.join();
        let _ = self.inner.volume.flush();
        let mut active = lock(&self.inner.active);
        if *active == Some(self.id) {
            *active = None;
        }
        result
    }

    fn send_now(&self, m: &Message) -> Result<()> {
        lock(self.writer).send_now(m)
    }

    fn handshake(&self, reader: &mut FrameReader) -> Result<Generation> {
        let vol = &self.inner.volume;
        let (version, nonce_p) = match reader.recv()? {
            Message::Hello {
                magic,
                version,
                nonce,
            } => {
                if magic != wire::MAGIC {
                    return Err(Error::protocol(
                        self.peer,
                        "not a mirror primary (bad magic)",
                    ));
                }
                (version, nonce)
            }
            other => {
                return Err(Error::protocol(
                    self.peer,
                    format!("expected Hello, got {}", other.name()),
                ))
            }
        };
        if !(wire::MIN_PROTOCOL_VERSION..=wire::PROTOCOL_VERSION).contains(&version) {
            let msg = format!(
                "protocol version mismatch: primary speaks {version}, secondary speaks {}..={}",
                wire::MIN_PROTOCOL_VERSION,
                wire::PROTOCOL_VERSION
            );
            let _ = self.send_now(&Message::Error {
                code: code::VERSION,
                message: msg.clone(),
            });
            return Err(Error::protocol(self.peer, format!("peer reported: {msg}")));
        }
        let secret = self.inner.config.secret.as_deref();
        let nonce_s = auth::nonce();
        let proof = secret.map_or([0; 32], |s| {
            auth::proof(s, auth::SECONDARY_LABEL, &nonce_p, &nonce_s)
        });
        self.send_now(&Message::HelloReply {
            version,
            auth_required: secret.is_some(),
            nonce: nonce_s,
            proof,
        })?;
        if let Some(s) = secret {
            match reader.recv()? {
                Message::Auth { proof }
                    if auth::verify(s, auth::PRIMARY_LABEL, &nonce_s, &nonce_p, &proof) => {}
                Message::Auth { .. } => {
                    return Err(Error::auth(
                        self.peer,
                        "primary did not prove the shared secret",
                    ))
                }
                other => {
                    return Err(Error::auth(
                        self.peer,
                        format!(
                            "a shared secret is required; primary sent {} instead of Auth",
                            other.name()
                        ),
                    ))
                }
            }
        }
        match reader.recv()? {
            Message::Open {
                session,
                epoch,
                size,
                block_size,
                ..
            } => {
                if block_size != vol.block_size().get() {
                    return Err(Error::Mismatch(format!(
                        "block size mismatch: primary uses {block_size} bytes, secondary {} uses {} bytes",
                        vol.name(),
                        vol.block_size()
                    )));
                }
                if size != vol.size() {
                    return Err(Error::Mismatch(format!(
                        "volume size mismatch: primary has {size} bytes, secondary {} has {} bytes",
                        vol.name(),
                        vol.size()
                    )));
                }
                if session == 0 {
                    return Err(Error::protocol(self.peer, "Open with session id 0"));
                }
                Ok(Generation { session, epoch })
            }
            other => Err(Error::protocol(
                self.peer,
                format!("expected Open, got {}", other.name()),
            )),
        }
    }

    fn apply_loop(
        &self,
        reader: &mut FrameReader,
        work: &crossbeam_channel::Sender<Work>,
    ) -> Result<()> {
        let vol = &self.inner.volume;
        let blocks = vol.blocks();
        let check_range = |range: BlockRange, what: &str| -> Result<()> {
            if range.end() > blocks {
                return Err(Error::invalid(format!(
                    "{what} of blocks {}+{} reaches past the end of {} ({blocks} blocks)",
                    range.start.0,
                    range.count,
                    vol.name()
                )));
            }
            Ok(())
        };
        let mut unflushed_acks = false;
        loop {
            if unflushed_acks && !reader.has_buffered() {
                lock(self.writer).flush()?;
                unflushed_acks = false;
            }
            let msg = reader.recv()?;
            match msg {
                Message::Write {
                    seq,
                    offset,
                    flags,
                    data,
                } => {
                    // check_io inside write_at refuses a bad offset or length before any I/O.
                    vol.write_at(offset, &data)?;
                    if flags & write_flags::FLUSH != 0 {
                        vol.flush()?;
                    }
                    self.inner
                        .stats
                        .writes_applied
                        .fetch_add(1, Ordering::Relaxed);
                    lock(self.writer).send(&Message::Ack { seq })?;
                    unflushed_acks = true;
                }
                Message::Flush { seq } => {
                    vol.flush()?;
                    lock(self.writer).send(&Message::Ack { seq })?;
                    unflushed_acks = true;
                }
                Message::Barrier { seq } => {
                    lock(self.writer).send(&Message::Ack { seq })?;
                    unflushed_acks = true;
                }
                Message::Ping { nonce } => {
                    lock(self.writer).send(&Message::Pong { nonce })?;
                    unflushed_acks = true;
                }
                Message::Pong { .. } => {}
                Message::ScanRequest {
                    req,
                    algorithm,
                    level,
                    priority,
                    range,
                }
                | Message::CompareRequest {
                    req,
                    algorithm,
                    level,
                    priority,
                    range,
                } => {
                    if level != 0 {
                        return Err(Error::protocol(
                            self.peer,
                            format!("digest level {level} is not supported"),
                        ));
                    }
                    check_range(range, "scan")?;
                    let w = if matches!(msg, Message::ScanRequest { .. }) {
                        Work::Scan {
                            req,
                            algorithm,
                            priority,
                            range,
                        }
                    } else {
                        Work::Compare {
                            req,
                            algorithm,
                            priority,
                            range,
                        }
                    };
                    send_work(work, w, self.peer)?;
                }
                Message::Digests {
                    req,
                    algorithm,
                    start,
                    digests,
                } => {
                    let n = (digests.len() / algorithm.digest_len()) as u64;
                    check_range(BlockRange::new(start, n), "digests")?;
                    send_work(
                        work,
                        Work::Digests {
                            req,
                            algorithm,
                            start,
                            digests,
                        },
                        self.peer,
                    )?;
                }
                Message::CompareEnd { req } => {
                    send_work(work, Work::CompareEnd { req }, self.peer)?
                }
                other => {
                    return Err(Error::protocol(
                        self.peer,
                        format!("unexpected {} from a primary", other.name()),
                    ));
                }
            }
        }
    }
}

fn send_work(tx: &crossbeam_channel::Sender<Work>, w: Work, peer: &str) -> Result<()> {
    tx.send(w)
        .map_err(|_| Error::link(peer, "scan worker stopped"))
}

/// Most blocks of queued scan requests merged into one scan.
const MAX_MERGED_SCAN_BLOCKS: u64 = 1 << 16;

struct CompareState {
    req: u64,
    algorithm: Algorithm,
    priority: IoPriority,
    range: BlockRange,
    next: u64,
    mismatched: u64,
}

fn worker(
    inner: &Inner,
    writer: &Mutex<FrameWriter>,
    rx: &Receiver<Work>,
    closing: &AtomicBool,
    peer: &str,
) -> Result<()> {
    let vol = &*inner.volume;
    let mut compare: Option<CompareState> = None;
    let prio = |p: u8| {
        if p == wire::priority::IDLE {
            IoPriority::Idle
        } else {
            IoPriority::Normal
        }
    };
    let mut held: Option<Work> = None;
    while let Some(w) = held.take().or_else(|| rx.recv().ok()) {
        match w {
            Work::Scan {
                req,
                algorithm,
                priority,
                mut range,
            } => {
                // Requests queued behind this one that continue it are scanned as one run, so
                // reads stay in flight across request boundaries.
                while range.count < MAX_MERGED_SCAN_BLOCKS {
                    match rx.try_recv() {
                        Ok(Work::Scan {
                            req: r,
                            algorithm: a,
                            priority: p,
                            range: next,
                        }) if r == req
                            && a == algorithm
                            && p == priority
                            && next.start.0 == range.end() =>
                        {
                            range.count += next.count;
                        }
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let idle = priority == wire::priority::IDLE;
                let mut opts = ScanOptions::new(algorithm);
                if idle {
                    opts = opts.background();
                }
                let scan = || {
                    scan::scan_range(
                        vol,
                        range,
                        opts,
                        |_| Ok(()),
                        |batch| {
                            if closing.load(Ordering::Relaxed) {
                                return Err(Error::Cancelled("scan"));
                            }
                            let mut wr = lock(writer);
                            for msg in scan::digest_messages(req, &batch) {
                                wr.send(&msg)?;
                            }
                            wr.flush()?;
                            Ok(true)
                        },
                    )
                };
                if idle {
                    background::run_niced(scan)?;
                } else {
                    scan()?;
                }
                lock(writer).send_now(&Message::ScanEnd { req })?;
            }
            Work::Compare {
                req,
                algorithm,
                priority,
                range,
            } => {
                if compare.is_some() {
                    return Err(Error::protocol(
                        peer,
                        "CompareRequest while a compare is open",
                    ));
                }
                compare = Some(CompareState {
                    req,
                    algorithm,
                    priority: prio(priority),
                    range,
                    next: range.start.0,
                    mismatched: 0,
                });
            }
            Work::Digests {
                req,
                algorithm,
                start,
                digests,
            } => {
                let Some(c) = compare.as_mut().filter(|c| c.req == req) else {
                    return Err(Error::protocol(
                        peer,
                        format!("Digests for unknown compare {req}"),
                    ));
                };
                let n = (digests.len() / algorithm.digest_len()) as u64;
                if algorithm != c.algorithm || start != c.next || start + n > c.range.end() {
                    return Err(Error::protocol(
                        peer,
                        format!(
                            "Digests for blocks {start}+{n} do not continue compare {req} in order"
                        ),
                    ));
                }
                c.next = start + n;
                let theirs = scan::ScanMap::new(algorithm, BlockIndex(start), digests)?;
                let ours = if c.priority == IoPriority::Idle {
                    let opts = ScanOptions::new(algorithm).background();
                    background::run_niced(|| scan::scan_all(vol, theirs.range(), opts))?
                } else {
                    scan::scan_all(vol, theirs.range(), ScanOptions::new(algorithm))?
                };
                let mut runs = RunBuilder::default();
                for ((b, a), (_, t)) in ours.iter().zip(theirs.iter()) {
                    if a != t {
                        runs.push(b.0);
                    }
                }
                let runs = runs.finish();
                if !runs.is_empty() {
                    let mut wr = lock(writer);
                    for r in runs {
                        c.mismatched += r.count;
                        wr.send(&Message::BlockRequest { req, range: r })?;
                    }
                    wr.flush()?;
                }
            }
            Work::CompareEnd { req } => {
                let Some(c) = compare.take().filter(|c| c.req == req) else {
                    return Err(Error::protocol(
                        peer,
                        format!("CompareEnd for unknown compare {req}"),
                    ));
                };
                debug!(req, mismatched = c.mismatched, "compare done");
                lock(writer).send_now(&Message::CompareDone {
                    req,
                    mismatched: c.mismatched,
                })?;
            }
        }
    }
    Ok(())
}

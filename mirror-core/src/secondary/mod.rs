//! The secondary controller: accepts a primary's connection, applies its writes in stream
//! order, serves its scans and compares, and keeps serving the next connection after a bad
//! one.
//!
//! Invariants:
//! - Nothing is written before the handshake (version, secret, volume size and block size)
//!   has succeeded, and every offset and length is checked against the volume before any I/O;
//!   a bad frame ends that connection with an `Error` message, never touches the volume.
//! - One session at a time, and a live one holds the volume: another primary session is
//!   refused while the holder's link is alive; a connection of the same session takes over
//!   (the old connection is shut down and its handler finishes before the new one applies
//!   anything), so writes of two connections never interleave.
//! - A secondary belongs to one volume: a primary is admitted only when the metadata record's
//!   history allows it ([`crate::meta::SecondaryMeta`]); the record, with which primary session
//!   and connection last attached, is on disk before the primary hears it was admitted, so a
//!   restarted secondary lets the same session resync from its dirty map.
//! - The record says inconsistent before the first out-of-order resync block is applied, and
//!   consistent only at the `ResyncDone` that ends the resync. After a write or flush of the
//!   volume failed, its coherence is forgotten and it is marked inconsistent ([`failure`]), so
//!   the next session compares every block.
//! - An acknowledgement promises what its write's durability asked: sent on arrival, after the
//!   write, or after a flush that covers it ([`commit`]: one flush per batch).
//!
//! - Scans it leads of its own accord ([`lead`]) change its volume only through repair writes
//!   of the primary's ordered stream, never by anything it reads or computes itself.
//! - Before authentication a connection costs a bounded, small amount ([`gate`]): a
//!   whole-handshake deadline, caps on connections in handshake and on sessions, an accept
//!   loop that backs off when descriptors run out, a connection whose thread cannot start is
//!   closed and logged, refusals are logged at warn with the peer's address, rate-limited.
//!
//! Parts: [`gate`] (what a connection may cost before it authenticates), [`session`] (TLS
//! and the handshake), [`admission`] (which primary may attach), [`apply`] (the ordered
//! apply loop), [`commit`] (group commit of acknowledgements), [`failure`] (telling errors),
//! [`worker`] (scans and compares the primary asks for), [`lead`] (scans the secondary
//! leads). This file is the public face, [`Secondary`], and the accept loop.

mod admission;
mod apply;
mod commit;
mod failure;
pub mod gate;
mod lead;
mod session;
mod tree;
mod worker;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use self::gate::{is_resource_exhaustion, Admission, Admitted, Backoff, RateLimit};
use self::session::handle_connection;
use crate::config::SecondaryConfig;
use crate::meta::{MetaStore, SecondaryMeta};
use crate::protocol::link::Counters;
use crate::report::Report;
use crate::storage::volume::Volume;
use crate::sync::lock;
use crate::units::Generation;
use crate::{Error, Result};

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
    /// False while a resync that is not in write order is under way: not a usable image.
    pub consistent: bool,
    /// The volume's identity.
    pub identity: crate::meta::VolumeId,
    /// The primary volume it mirrors (none until bound).
    pub bound_to: crate::meta::VolumeId,
    /// Scans this secondary led to their end (on connection and periodic).
    pub lead_scans: u64,
    /// The report of the last of them, if any.
    pub last_report: Option<Report>,
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
    lead_scans: AtomicU64,
    last_report: Mutex<Option<Report>>,
    peer: Mutex<Option<String>>,
    current: Mutex<Option<Arc<Counters>>>,
}

#[derive(Debug)]
struct Inner {
    volume: Arc<dyn Volume>,
    config: SecondaryConfig,
    meta: SecondaryMeta,
    /// The session that holds the volume: its connection, session id and since when.
    holder: Mutex<Option<admission::Holder>>,
    serving: Mutex<Option<Serving>>,
    /// Every open connection, so stop and takeover can shut them down.
    conns: Mutex<HashMap<u64, TcpStream>>,
    handlers: Mutex<Vec<JoinHandle<()>>>,
    /// Id of the connection that is (or is becoming) the active session.
    active: Mutex<Option<u64>>,
    /// Held by the handler of the active session while it applies frames.
    session: Mutex<()>,
    next_conn: AtomicU64,
    /// Request ids of the scans this secondary leads.
    next_lead_req: AtomicU64,
    stats: Stats,
    /// Connections in handshake and sessions, under their caps.
    admission: Arc<Admission>,
    /// Warnings about refused or failed handshakes and about the accept loop.
    warnings: RateLimit,
}

impl Inner {
    /// Shuts connection `id` down (its handler then ends and lets go of it).
    fn shut_down(&self, id: u64) {
        if let Some(c) = lock(&self.conns).get(&id) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Logs at warn unless too many warnings were logged lately.
    fn warn_limited(&self, f: impl FnOnce(u64)) {
        if let Some(suppressed) = self.warnings.check(Instant::now()) {
            f(suppressed);
        }
    }
}

impl Inner {
    fn record_lead_report(&self, report: Report) {
        *lock(&self.stats.last_report) = Some(report);
        self.stats.lead_scans.fetch_add(1, Ordering::SeqCst);
    }
}

impl Secondary {
    /// A secondary over `volume`; it listens once [`serve`](Self::serve) is called.
    pub fn new(volume: Arc<dyn Volume>, config: SecondaryConfig) -> Result<Secondary> {
        if let Some(s) = &config.secret {
            crate::config::check_secret(s)?;
        }
        let meta = SecondaryMeta::open(config.meta.clone().map(MetaStore::new))?;
        if let Some(p) = &config.periodic {
            p.validate()?;
        }
        let admission = Arc::new(Admission::new(config.limits));
        Ok(Secondary {
            inner: Arc::new(Inner {
                volume,
                config,
                meta,
                holder: Mutex::new(None),
                serving: Mutex::new(None),
                conns: Mutex::new(HashMap::new()),
                handlers: Mutex::new(Vec::new()),
                active: Mutex::new(None),
                session: Mutex::new(()),
                next_conn: AtomicU64::new(1),
                next_lead_req: AtomicU64::new(1),
                stats: Stats::default(),
                admission,
                warnings: RateLimit::new(10, Duration::from_secs(10)),
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
        self.inner.meta.record().last_coherent
    }

    /// A copy of the secondary's metadata record.
    pub fn record(&self) -> crate::meta::MetaRecord {
        self.inner.meta.record()
    }

    /// A snapshot.
    pub fn status(&self) -> SecondaryStatus {
        let s = &self.inner.stats;
        let rec = self.inner.meta.record();
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
            consistent: rec.consistent,
            identity: rec.identity,
            bound_to: rec.bound_to,
            lead_scans: s.lead_scans.load(Ordering::SeqCst),
            last_report: lock(&s.last_report).clone(),
        }
    }
}

impl Drop for Secondary {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(inner: Arc<Inner>, listener: TcpListener, stop: Arc<AtomicBool>) {
    let mut backoff = Backoff::default();
    while !stop.load(Ordering::SeqCst) {
        for id in inner.admission.overdue(Instant::now()) {
            inner.shut_down(id);
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                backoff.reset();
                accept(&inner, stream, peer);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if is_resource_exhaustion(&e) => {
                // Out of descriptors (or memory): shed the connection that has waited longest
                // in handshake, and give the system time instead of spinning on accept.
                if let Some(id) = inner.admission.shed_oldest() {
                    inner.shut_down(id);
                }
                let pause = backoff.failed();
                inner.warn_limited(|suppressed| {
                    warn!(error = %e, pause_ms = pause.as_millis() as u64, suppressed, "accept failed: out of resources; backing off")
                });
                std::thread::sleep(pause);
            }
            Err(e) => {
                inner.warn_limited(|suppressed| warn!(error = %e, suppressed, "accept failed"));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Admits an accepted connection and starts its handler, or closes it.
fn accept(inner: &Arc<Inner>, stream: TcpStream, peer: SocketAddr) {
    let id = inner.next_conn.fetch_add(1, Ordering::Relaxed);
    // A real primary speaks first and at once: is its first record (or frame) header here?
    let mut head = [0u8; 5];
    let eager = stream.set_nonblocking(true).is_ok()
        && matches!(stream.peek(&mut head), Ok(n) if n == head.len());
    match inner.admission.admit(id, Instant::now(), eager) {
        Admitted::Refused => {
            inner.warn_limited(|suppressed| {
                warn!(%peer, suppressed, "connection refused: too many connections in handshake")
            });
            return;
        }
        Admitted::Yes { evicted } => {
            if let Some(old) = evicted {
                inner.shut_down(old);
                inner.warn_limited(|suppressed| {
                    warn!(%peer, suppressed, "too many connections in handshake: the oldest was closed")
                });
            }
        }
    }
    let _ = stream.set_nonblocking(false);
    match stream.try_clone() {
        Ok(c) => {
            lock(&inner.conns).insert(id, c);
        }
        Err(e) => {
            inner.admission.finished(id);
            inner.warn_limited(|suppressed| {
                warn!(%peer, error = %e, suppressed, "connection closed: cannot clone its socket")
            });
            return;
        }
    }
    let inner2 = inner.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("mirror-secondary-{id}"))
        .spawn(move || {
            handle_connection(&inner2, id, stream, peer.to_string());
            lock(&inner2.conns).remove(&id);
            inner2.admission.finished(id);
        });
    let mut handlers = lock(&inner.handlers);
    handlers.retain(|h| !h.is_finished());
    match spawned {
        Ok(h) => handlers.push(h),
        Err(e) => {
            // The closure, and the stream in it, are dropped: close the clone too.
            drop(handlers);
            if let Some(c) = lock(&inner.conns).remove(&id) {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
            inner.admission.finished(id);
            inner.warn_limited(|suppressed| {
                warn!(%peer, error = %e, suppressed, "connection closed: cannot start its thread")
            });
        }
    }
}

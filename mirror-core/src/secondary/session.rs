//! One primary's session: TLS when configured, the handshake (version, shared secret — the
//! primary proves it first — volume size and block size, the coherence record reported before
//! it is replaced), then the apply loop. Nothing is written before the handshake succeeds; a
//! session that ends badly answers with an `Error` message and leaves the volume untouched by
//! its bad frame. Before authentication that message is generic: it never names the volume
//! or anything else local.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{bounded, unbounded};
use tracing::{debug, info, warn};

use super::failure::{error_message, forget_coherence_after};
use super::gate::SessionSlot;
use super::lead::Leader;
use super::worker::{worker, Work};
use super::Inner;
use crate::meta::{GenId, Lineage, PrimaryClaim, Resolution, VolumeId};
use crate::protocol::auth::{self, Binding};
use crate::protocol::link::{self, Counters, FrameReader, FrameWriter, Transport};
use crate::protocol::messages::{self as wire, code, Message};
use crate::sync::lock;
use crate::units::Generation;
use crate::{Error, ErrorKind, Result};

/// True when the connection starts with a mirror `Hello` frame in clear.
fn plaintext_hello(stream: &TcpStream) -> bool {
    let mut b = [0u8; 12];
    match stream.peek(&mut b) {
        Ok(12) => b[4] == wire::kind::HELLO && b[5..8] == [0, 0, 0] && b[8..12] == wire::MAGIC,
        _ => false,
    }
}

/// The generic text of an error sent before the peer authenticated.
fn pre_auth_message(e: &Error) -> &'static str {
    match e.kind() {
        ErrorKind::Auth => "authentication failed",
        ErrorKind::Mismatch => "refused: the peers do not match",
        ErrorKind::Closed | ErrorKind::Cancelled => "the secondary is shutting down",
        _ => "protocol error before authentication",
    }
}

/// Logs a refused or failed handshake: at warn with the peer's address, rate-limited.
fn refused(inner: &Inner, peer: &str, e: &Error) {
    if e.kind() != ErrorKind::Link {
        inner.stats.rejected.fetch_add(1, Ordering::Relaxed);
    }
    *lock(&inner.stats.last_error) = Some(e.to_string());
    inner.warn_limited(
        |suppressed| warn!(%peer, error = %e, suppressed, "handshake refused or failed"),
    );
}

pub(super) fn handle_connection(inner: &Arc<Inner>, id: u64, stream: TcpStream, peer: String) {
    debug!(%peer, "connection accepted");
    let timeout = inner.config.link_timeout;
    let split = link::set_timeouts(&stream, &peer, timeout).and_then(|()| {
        let (transport, binding) = match &inner.config.tls {
            Some(_) if plaintext_hello(&stream) => {
                // A primary without TLS: tell it so in its own terms, not with a TLS alert
                // it cannot read.
                let mut w = &stream;
                let _ = wire::write_frame(
                    &mut w,
                    &Message::Error {
                        code: code::AUTH,
                        message: "this secondary requires TLS: configure a certificate, key and trust file".into(),
                    },
                );
                return Err(Error::auth(&peer, "the primary does not speak TLS"));
            }
            Some(tls) => {
                let t = tls.accept(stream, &peer)?;
                let binding = t.binding();
                debug!(%peer, certificate = t.peer_fingerprint(), "TLS established");
                (Transport::Tls(Box::new(t)), binding)
            }
            None => (Transport::Plain(stream), auth::NO_BINDING),
        };
        link::split(transport, &peer, "primary", timeout).map(|x| (x, binding))
    });
    let ((mut reader, writer, counters), binding) = match split {
        Ok(x) => x,
        Err(e) => {
            refused(inner, &peer, &e);
            inner.shut_down(id);
            return;
        }
    };
    let writer = Arc::new(Mutex::new(writer));
    let authenticated = AtomicBool::new(false);
    let result = Session {
        inner,
        id,
        peer: &peer,
        writer: &writer,
        counters: counters.clone(),
        binding,
        authenticated: &authenticated,
        tree: AtomicBool::new(false),
    }
    .run(&mut reader);
    let authenticated = authenticated.load(Ordering::SeqCst);
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
            forget_coherence_after(inner, &e);
            if !matches!(e.kind(), ErrorKind::Link)
                && !matches!(e, Error::Protocol { ref msg, .. } if msg.starts_with("peer reported"))
            {
                let msg = if authenticated {
                    error_message(&e)
                } else {
                    Message::Error {
                        code: link::error_code(&e),
                        message: pre_auth_message(&e).to_owned(),
                    }
                };
                let _ = lock(&writer).send_now(&msg);
                if authenticated && e.kind() == ErrorKind::Io {
                    // Let the primary read the error before the connection goes: closing
                    // with its frames unread would reset the connection and could discard it.
                    if let Some(c) = lock(&inner.conns).get(&id) {
                        let _ = c.shutdown(std::net::Shutdown::Write);
                    }
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
                    while std::time::Instant::now() < deadline && reader.recv().is_ok() {}
                }
            }
            if !authenticated {
                refused(inner, &peer, &e);
            } else if e.kind() == ErrorKind::Link {
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

pub(super) struct Session<'a> {
    pub(super) inner: &'a Arc<Inner>,
    pub(super) id: u64,
    pub(super) peer: &'a str,
    pub(super) writer: &'a Arc<Mutex<FrameWriter>>,
    counters: Arc<Counters>,
    /// The TLS exporter of this connection (zeros in clear): what the proofs are bound to.
    binding: Binding,
    /// Set once the primary has authenticated (TLS, and the secret when one is configured).
    authenticated: &'a AtomicBool,
    /// The session speaks hierarchical digests (protocol version 3 or later).
    pub(super) tree: AtomicBool,
}

impl Session<'_> {
    pub(super) fn run(&self, reader: &mut FrameReader) -> Result<()> {
        let (open, claim, _slot) = self.handshake(reader)?;
        reader.handshake_done();

        // A live session of another primary holds the volume (refused); a stale connection of
        // this one is shut down, and its handler lets go of the session before anything of
        // ours is applied.
        self.take_hold(open.session)?;
        let _session = lock(&self.inner.session);
        if *lock(&self.inner.active) != Some(self.id) {
            return Err(Error::link(self.peer, "superseded by a newer connection"));
        }
        let reply = match self.admit(open, &claim) {
            Ok(r) => r,
            Err(e) => {
                self.release_hold();
                return Err(e);
            }
        };
        let last = match &reply {
            Message::OpenReply {
                last_session,
                last_epoch,
                ..
            } => Generation {
                session: *last_session,
                epoch: *last_epoch,
            },
            _ => Generation::default(),
        };
        self.send_now(&reply)?;
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
                        forget_coherence_after(&inner, &e);
                        if !matches!(e.kind(), ErrorKind::Link | ErrorKind::Cancelled) {
                            let _ = lock(&writer).send_now(&error_message(&e));
                        }
                        warn!(%peer, error = %e, "scan worker stopped");
                        if let Some(c) = lock(&inner.conns).get(&id) {
                            let _ = c.shutdown(std::net::Shutdown::Both);
                        }
                    }
                })
                .map_err(|e| Error::link(self.peer, format!("spawn: {e}")))?
        };
        let (lead_tx, lead_thread) = if self.inner.config.leads() {
            let (lead_tx, lead_rx) = unbounded::<Message>();
            let inner = self.inner.clone();
            let writer = self.writer.clone();
            let closing = closing.clone();
            let peer = self.peer.to_owned();
            let counters = self.counters.clone();
            let h = std::thread::Builder::new()
                .name("mirror-secondary-lead".into())
                .spawn(move || {
                    Leader {
                        inner: &inner,
                        writer: &writer,
                        rx: lead_rx,
                        closing: &closing,
                        peer: &peer,
                        counters,
                    }
                    .run();
                })
                .map_err(|e| Error::link(self.peer, format!("spawn: {e}")))?;
            (Some(lead_tx), Some(h))
        } else {
            (None, None)
        };
        let result = self.apply_loop(reader, &tx, lead_tx.as_ref());
        closing.store(true, Ordering::SeqCst);
        drop(tx);
        drop(lead_tx);
        let _ = worker.join();
        if let Some(h) = lead_thread {
            let _ = h.join();
        }
        if let Err(e) = self.inner.volume.flush() {
            forget_coherence_after(self.inner, &e);
        }
        self.release_hold();
        result
    }

    pub(super) fn send_now(&self, m: &Message) -> Result<()> {
        lock(self.writer).send_now(m)
    }

    pub(super) fn handshake(
        &self,
        reader: &mut FrameReader,
    ) -> Result<(Generation, PrimaryClaim, SessionSlot)> {
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
        if version < wire::MIN_PROTOCOL_VERSION {
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
        let nonce_s = auth::nonce()?;
        // The lower of both versions: a newer primary speaks ours.
        let version = version.min(wire::PROTOCOL_VERSION);
        self.tree
            .store(version >= wire::TREE_PROTOCOL_VERSION, Ordering::Relaxed);
        self.send_now(&Message::HelloReply {
            version,
            auth_required: secret.is_some(),
            nonce: nonce_s,
        })?;
        if let Some(s) = secret {
            // The primary proves first; only a proof that verifies is answered with ours.
            let b = &self.binding;
            match reader.recv()? {
                Message::Auth { proof }
                    if auth::verify(s, auth::PRIMARY_LABEL, &nonce_s, &nonce_p, b, &proof) =>
                {
                    self.send_now(&Message::AuthReply {
                        proof: auth::proof(s, auth::SECONDARY_LABEL, &nonce_p, &nonce_s, b),
                    })?;
                }
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
        let Some(slot) = self.inner.admission.authenticated(self.id) else {
            let _ = self.send_now(&Message::Error {
                code: code::SHUTDOWN,
                message: "too many sessions; try again later".into(),
            });
            return Err(Error::link(
                self.peer,
                "refused: too many sessions (or the handshake deadline passed)",
            ));
        };
        self.authenticated.store(true, Ordering::SeqCst);
        let open = match reader.recv()? {
            Message::Open {
                volume_id,
                session,
                epoch,
                size,
                block_size,
                generation,
                flags,
                history,
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
                if session == 0 || volume_id == 0 || generation == 0 {
                    return Err(Error::protocol(
                        self.peer,
                        "Open with a zero session, volume identity or generation",
                    ));
                }
                let claim = PrimaryClaim {
                    lineage: Lineage {
                        identity: VolumeId(volume_id),
                        current: GenId(generation),
                        history: wire::history_ids(&history).into_iter().map(GenId).collect(),
                        bound_to: VolumeId(0),
                    },
                    resolution: Resolution {
                        adopt: flags & wire::open_flags::ADOPT != 0,
                        discard_secondary: flags & wire::open_flags::DISCARD_SECONDARY != 0,
                    },
                    ephemeral: flags & wire::open_flags::EPHEMERAL != 0,
                };
                (Generation { session, epoch }, claim)
            }
            other => {
                return Err(Error::protocol(
                    self.peer,
                    format!("expected Open, got {}", other.name()),
                ))
            }
        };
        Ok((open.0, open.1, slot))
    }
}

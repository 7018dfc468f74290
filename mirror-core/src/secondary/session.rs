//! One primary's session: the handshake (version, shared secret, volume size and block size,
//! the coherence record reported before it is replaced), then the apply loop. Nothing is
//! written before the handshake succeeds; a session that ends badly answers with an `Error`
//! message and leaves the volume untouched by its bad frame.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{bounded, unbounded};
use tracing::{info, warn};

use super::failure::{error_message, forget_coherence_after};
use super::lead::Leader;
use super::worker::{worker, Work};
use super::Inner;
use crate::meta::{GenId, Lineage, PrimaryClaim, Resolution, VolumeId};
use crate::protocol::auth;
use crate::protocol::link::{self, Counters, FrameReader, FrameWriter};
use crate::protocol::messages::{self as wire, code, Message};
use crate::sync::lock;
use crate::units::Generation;
use crate::{Error, ErrorKind, Result};

pub(super) fn handle_connection(inner: &Arc<Inner>, id: u64, stream: TcpStream, peer: String) {
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
            forget_coherence_after(inner, &e);
            if !matches!(e.kind(), ErrorKind::Link)
                && !matches!(e, Error::Protocol { ref msg, .. } if msg.starts_with("peer reported"))
            {
                let _ = lock(&writer).send_now(&error_message(&e));
                if e.kind() == ErrorKind::Io {
                    // Let the primary read the error before the connection goes: closing
                    // with its frames unread would reset the connection and could discard it.
                    if let Some(c) = lock(&inner.conns).get(&id) {
                        let _ = c.shutdown(std::net::Shutdown::Write);
                    }
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
                    while std::time::Instant::now() < deadline && reader.recv().is_ok() {}
                }
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

pub(super) struct Session<'a> {
    pub(super) inner: &'a Arc<Inner>,
    pub(super) id: u64,
    pub(super) peer: &'a str,
    pub(super) writer: &'a Arc<Mutex<FrameWriter>>,
    counters: Arc<Counters>,
}

impl Session<'_> {
    pub(super) fn run(&self, reader: &mut FrameReader) -> Result<()> {
        let (open, claim) = self.handshake(reader)?;
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

    pub(super) fn handshake(&self, reader: &mut FrameReader) -> Result<(Generation, PrimaryClaim)> {
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
                Ok((Generation { session, epoch }, claim))
            }
            other => Err(Error::protocol(
                self.peer,
                format!("expected Open, got {}", other.name()),
            )),
        }
    }
}

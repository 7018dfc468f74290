//! The primary's half of the handshake: mutual TLS when configured (plaintext only to
//! loopback unless allowed), protocol version, the shared secret (we prove first, bound to
//! the TLS session), then volume identity, generation history, size and block size against
//! what the secondary was last coherent with (the secondary admits or refuses; the primary
//! checks the answer too, so a refusal holds on both sides). Nothing is replicated on a
//! connection that has not passed it.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{debug, info};

use super::Inner;
use crate::config::check_plaintext;
use crate::meta::{GenId, Lineage, VolumeId};
use crate::protocol::auth;
use crate::protocol::link::{self, Counters, FrameReader, FrameWriter, Transport};
use crate::protocol::messages::{self as wire, Message};
use crate::units::Generation;
use crate::{Error, Result};

/// A connection past its handshake.
pub(super) struct Handshaken {
    /// The socket, to shut the connection down from another thread.
    pub(super) stream: TcpStream,
    pub(super) reader: FrameReader,
    pub(super) writer: FrameWriter,
    pub(super) counters: Arc<Counters>,
    /// What the secondary was last coherent with.
    pub(super) last: Generation,
    /// The epoch this connection opened.
    pub(super) epoch: u64,
    /// The secondary speaks hierarchical digests (protocol version 3 or later).
    pub(super) tree: bool,
}

impl Inner {
    /// Connects offering our protocol version; a secondary too old for it refuses with
    /// `Error{VERSION}`, and we connect again offering the oldest we speak.
    pub(super) fn connect(&self) -> Result<Handshaken> {
        match self.connect_offering(wire::PROTOCOL_VERSION)? {
            Some(h) => Ok(h),
            None => {
                debug!(peer = %self.config.peer, "secondary refused protocol version {}; offering {}", wire::PROTOCOL_VERSION, wire::MIN_PROTOCOL_VERSION);
                self.connect_offering(wire::MIN_PROTOCOL_VERSION)?
                    .ok_or_else(|| {
                        Error::Mismatch(format!(
                            "{}: the secondary speaks no protocol version of {}..={}",
                            self.config.peer,
                            wire::MIN_PROTOCOL_VERSION,
                            wire::PROTOCOL_VERSION
                        ))
                    })
            }
        }
    }

    /// One connection offering protocol version `offer`; None when the secondary refused
    /// that version and an older one is left to offer.
    fn connect_offering(&self, offer: u16) -> Result<Option<Handshaken>> {
        let peer = &self.config.peer;
        let timeout = self.config.link_timeout;
        let addr = peer
            .to_socket_addrs()
            .map_err(|e| Error::link(peer, format!("resolve: {e}")))?
            .next()
            .ok_or_else(|| Error::link(peer, "address resolves to nothing"))?;
        check_plaintext(
            &addr,
            self.config.tls.is_some(),
            self.config.allow_insecure,
            "connect to",
        )?;
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| Error::link(peer, e.to_string()))?;
        let shutdown = stream
            .try_clone()
            .map_err(|e| Error::link(peer, e.to_string()))?;
        link::set_timeouts(&stream, peer, timeout)?;
        let (transport, binding) = match &self.config.tls {
            Some(tls) => {
                let t = tls.connect(stream, peer)?;
                let binding = t.binding();
                debug!(%peer, certificate = t.peer_fingerprint(), "TLS established");
                (Transport::Tls(Box::new(t)), binding)
            }
            None => (Transport::Plain(stream), auth::NO_BINDING),
        };
        let (mut reader, mut writer, counters) =
            link::split(transport, peer, "secondary", timeout)?;
        let nonce_p = auth::nonce()?;
        writer.send_now(&Message::Hello {
            magic: wire::MAGIC,
            version: offer,
            nonce: nonce_p,
        })?;
        let (version, auth_required, nonce_s) = match reader.recv() {
            Ok(Message::HelloReply {
                version,
                auth_required,
                nonce,
            }) => (version, auth_required, nonce),
            // Before Open, the only refusal named a mismatch is of the version we offered.
            Err(Error::Mismatch(_)) if offer > wire::MIN_PROTOCOL_VERSION => return Ok(None),
            Ok(other) => {
                return Err(Error::protocol(
                    peer,
                    format!("expected HelloReply, got {}", other.name()),
                ))
            }
            // A TLS secondary answers a plaintext Hello with a TLS alert record, which reads
            // as a malformed frame.
            Err(Error::Protocol { msg, .. }) if self.config.tls.is_none() => {
                return Err(Error::auth(
                    peer,
                    format!("the secondary did not answer in clear ({msg}); it may require TLS: configure a certificate, key and trust file"),
                ))
            }
            Err(e) => return Err(e),
        };
        // The secondary answers the lower of both versions.
        if !(wire::MIN_PROTOCOL_VERSION..=offer).contains(&version) {
            return Err(Error::Mismatch(format!(
                "{peer}: protocol version mismatch: primary speaks {}..={offer}, secondary answered {version}",
                wire::MIN_PROTOCOL_VERSION
            )));
        }
        match (&self.config.secret, auth_required) {
            (Some(s), true) => {
                // We prove first; the secondary proves only to a primary that did.
                writer.send_now(&Message::Auth {
                    proof: auth::proof(s, auth::PRIMARY_LABEL, &nonce_s, &nonce_p, &binding),
                })?;
                match reader.recv()? {
                    Message::AuthReply { proof }
                        if auth::verify(
                            s,
                            auth::SECONDARY_LABEL,
                            &nonce_p,
                            &nonce_s,
                            &binding,
                            &proof,
                        ) => {}
                    Message::AuthReply { .. } => {
                        return Err(Error::auth(
                            peer,
                            "secondary did not prove the shared secret (wrong secret?)",
                        ))
                    }
                    other => {
                        return Err(Error::protocol(
                            peer,
                            format!("expected AuthReply, got {}", other.name()),
                        ))
                    }
                }
            }
            (Some(_), false) => {
                return Err(Error::auth(
                    peer,
                    "secondary has no shared secret configured but the primary requires one",
                ))
            }
            (None, true) => return Err(Error::auth(
                peer,
                "secondary requires a shared secret; configure the same secret file on the primary",
            )),
            (None, false) => {}
        }
        let vol = &*self.volume;
        let epoch = self.epoch.load(Ordering::SeqCst) + 1;
        let (open, mine) = self
            .durable
            .open_message(&self.config, self.session, epoch, vol)?;
        writer.send_now(&open)?;
        let last = match reader.recv()? {
            Message::OpenReply {
                size,
                block_size,
                last_session,
                last_epoch,
                volume_id,
                bound_to,
                generation,
                consistent,
                history,
            } => {
                if size != vol.size() || block_size != vol.block_size().get() {
                    return Err(Error::Mismatch(format!(
                        "{peer}: secondary has {size} bytes in blocks of {block_size}, primary {} has {} bytes in blocks of {}",
                        vol.name(),
                        vol.size(),
                        vol.block_size()
                    )));
                }
                let theirs = Lineage {
                    identity: VolumeId(volume_id),
                    current: GenId(generation),
                    history: wire::history_ids(&history).into_iter().map(GenId).collect(),
                    bound_to: VolumeId(bound_to),
                };
                self.durable
                    .check_reply(peer, &mine, &theirs, &self.config)?;
                if !consistent {
                    info!(%peer, "the secondary is not a consistent image until this resync ends");
                }
                Generation {
                    session: last_session,
                    epoch: last_epoch,
                }
            }

            other => {
                return Err(Error::protocol(
                    peer,
                    format!("expected OpenReply, got {}", other.name()),
                ))
            }
        };
        reader.handshake_done();
        if version < wire::TREE_PROTOCOL_VERSION {
            info!(%peer, version, "the secondary speaks no hierarchical digests: jobs compare flat");
        }
        Ok(Some(Handshaken {
            stream: shutdown,
            reader,
            writer,
            counters,
            last,
            epoch,
            tree: version >= wire::TREE_PROTOCOL_VERSION,
        }))
    }
}

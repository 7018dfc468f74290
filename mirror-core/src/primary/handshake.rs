//! The primary's half of the handshake: protocol version, mutual proof of the shared secret,
//! then volume identity, generation history, size and block size against what the secondary
//! was last coherent with (the secondary admits or refuses; the primary checks the answer
//! too, so a refusal holds on both sides). Nothing is replicated on a connection that has not passed it.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::info;

use super::Inner;
use crate::meta::{GenId, Lineage, VolumeId};
use crate::protocol::auth;
use crate::protocol::link::{self, Counters, FrameReader, FrameWriter};
use crate::protocol::messages::{self as wire, Message};
use crate::units::Generation;
use crate::{Error, Result};

/// A connection past its handshake.
pub(super) struct Handshaken {
    pub(super) stream: TcpStream,
    pub(super) reader: FrameReader,
    pub(super) writer: FrameWriter,
    pub(super) counters: Arc<Counters>,
    /// What the secondary was last coherent with.
    pub(super) last: Generation,
    /// The epoch this connection opened.
    pub(super) epoch: u64,
}

impl Inner {
    pub(super) fn connect(&self) -> Result<Handshaken> {
        let peer = &self.config.peer;
        let timeout = self.config.link_timeout;
        let addr = peer
            .to_socket_addrs()
            .map_err(|e| Error::link(peer, format!("resolve: {e}")))?
            .next()
            .ok_or_else(|| Error::link(peer, "address resolves to nothing"))?;
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| Error::link(peer, e.to_string()))?;
        let (mut reader, mut writer, counters) = link::split(
            stream
                .try_clone()
                .map_err(|e| Error::link(peer, e.to_string()))?,
            peer,
            timeout,
        )?;
        let nonce_p = auth::nonce();
        writer.send_now(&Message::Hello {
            magic: wire::MAGIC,
            version: wire::PROTOCOL_VERSION,
            nonce: nonce_p,
        })?;
        let (version, auth_required, nonce_s, proof) = match reader.recv()? {
            Message::HelloReply {
                version,
                auth_required,
                nonce,
                proof,
            } => (version, auth_required, nonce, proof),
            other => {
                return Err(Error::protocol(
                    peer,
                    format!("expected HelloReply, got {}", other.name()),
                ))
            }
        };
        if version != wire::PROTOCOL_VERSION {
            return Err(Error::Mismatch(format!(
                "{peer}: protocol version mismatch: primary speaks {}, secondary answered {version}",
                wire::PROTOCOL_VERSION
            )));
        }
        match (&self.config.secret, auth_required) {
            (Some(s), _) => {
                if !auth_required {
                    return Err(Error::auth(
                        peer,
                        "secondary has no shared secret configured but the primary requires one",
                    ));
                }
                if !auth::verify(s, auth::SECONDARY_LABEL, &nonce_p, &nonce_s, &proof) {
                    return Err(Error::auth(
                        peer,
                        "secondary did not prove the shared secret (wrong secret?)",
                    ));
                }
                writer.send_now(&Message::Auth {
                    proof: auth::proof(s, auth::PRIMARY_LABEL, &nonce_s, &nonce_p),
                })?;
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
        Ok(Handshaken {
            stream,
            reader,
            writer,
            counters,
            last,
            epoch,
        })
    }
}

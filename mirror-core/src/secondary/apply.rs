//! The apply loop: frames of one session applied in stream order — writes, zeroings, flushes
//! and barriers acknowledged only once done (through the group commit, [`super::commit`]),
//! every offset and length checked against the volume before any I/O — with scans and
//! compares handed to the worker in that same order.
//!
//! Crash ordering of a write: applied → its acknowledgement queued for the commit thread →
//! (for `flushed`) one flush covering the batch → acknowledged. A `received` write is
//! acknowledged on arrival, before it is applied; if it then fails, the session ends with the
//! volume's error and the coherence record is forgotten.

use std::sync::atomic::Ordering;

use super::commit::Committer;
use super::session::Session;
use super::tree::TreeWork;
use super::worker::Work;
use crate::protocol::link::FrameReader;
use crate::protocol::messages::{self as wire, write_flags, zero_flags, Message};
use crate::storage::volume::check_io;
use crate::sync::lock;
use crate::units::BlockRange;
use crate::{Error, Result};

impl Session<'_> {
    pub(super) fn apply_loop(
        &self,
        reader: &mut FrameReader,
        work: &crossbeam_channel::Sender<Work>,
        lead: Option<&crossbeam_channel::Sender<Message>>,
    ) -> Result<()> {
        let inner = self.inner.clone();
        let id = self.id;
        let mut committer = Committer::start(
            self.inner.volume.clone(),
            self.writer.clone(),
            self.peer,
            move || {
                // Stop reading: the apply loop ends and reports the commit's failure.
                if let Some(c) = lock(&inner.conns).get(&id) {
                    let _ = c.shutdown(std::net::Shutdown::Read);
                }
            },
        )?;
        let result = self.apply_frames(reader, work, lead, &committer);
        // A failed commit is the cause; the link error it caused is not.
        match (committer.finish(), result) {
            (Some(e @ Error::Io { .. }), _) => Err(e),
            (_, r) => r,
        }
    }

    /// A write, zeroing or trim `seq` reached the volume: it is counted, then acknowledged
    /// as its flags ask (`zero_flags` share `write_flags`' FLUSH and RECEIVED bits) — once
    /// durable, or through the committer, or not again when it was acknowledged on arrival.
    /// True when an ack went out that no flush covers yet.
    fn applied(&self, committer: &Committer, seq: u64, flags: u8) -> Result<bool> {
        self.inner
            .stats
            .writes_applied
            .fetch_add(1, Ordering::Relaxed);
        if flags & write_flags::FLUSH != 0 {
            committer.durable(seq)?;
            Ok(false)
        } else if flags & write_flags::RECEIVED == 0 {
            committer.ack(seq)
        } else {
            Ok(false)
        }
    }

    fn apply_frames(
        &self,
        reader: &mut FrameReader,
        work: &crossbeam_channel::Sender<Work>,
        lead: Option<&crossbeam_channel::Sender<Message>>,
        committer: &Committer,
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
            let msg = match reader.recv() {
                Ok(m) => m,
                Err(e) => return Err(committer.failure().unwrap_or(e)),
            };
            let (name, tree_digests) = (msg.name(), matches!(msg, Message::TreeDigests { .. }));
            match msg {
                Message::Write {
                    seq,
                    offset,
                    flags,
                    data,
                } => {
                    if flags & write_flags::REPAIR != 0 {
                        // Out of write order from here on: not a usable image, durably first.
                        self.inner.meta.before_repair()?;
                    }
                    if flags & write_flags::RECEIVED != 0 {
                        // Checked first: a write acknowledged on arrival must be one the
                        // volume can take.
                        check_io(
                            vol.name(),
                            vol.size(),
                            vol.block_size(),
                            offset,
                            data.len() as u64,
                        )?;
                        lock(self.writer).send(&Message::Ack { seq })?;
                        unflushed_acks = true;
                    }
                    // check_io inside write_at refuses a bad offset or length before any I/O.
                    vol.write_at(offset, &data)?;
                    reader.recycle(data);
                    unflushed_acks |= self.applied(committer, seq, flags)?;
                }
                Message::WriteZeroes {
                    seq,
                    offset,
                    len,
                    flags,
                }
                | Message::Trim {
                    seq,
                    offset,
                    len,
                    flags,
                } => {
                    // The range is checked against the volume before any I/O: its length came
                    // off the wire and only the volume bounds it.
                    check_io(vol.name(), vol.size(), vol.block_size(), offset, len)?;
                    if flags & zero_flags::RECEIVED != 0 {
                        lock(self.writer).send(&Message::Ack { seq })?;
                        unflushed_acks = true;
                    }
                    if matches!(msg, Message::Trim { .. }) {
                        vol.trim(offset, len)?;
                    } else {
                        vol.write_zeroes(offset, len)?;
                    }
                    unflushed_acks |= self.applied(committer, seq, flags)?;
                }
                Message::Flush { seq } => committer.durable(seq)?,
                Message::Barrier { seq } => unflushed_acks |= committer.ack(seq)?,
                Message::ResyncDone { seq } => {
                    // Everything before it is applied: this flush puts the resync's blocks on
                    // the volume before the record says it is a usable image again; the ack
                    // leaves after every earlier one, through the committer.
                    vol.flush()?;
                    self.inner.meta.resync_done()?;
                    unflushed_acks |= committer.ack(seq)?;
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
                Message::TreeRequest {
                    req,
                    algorithm,
                    level,
                    group,
                    priority,
                    range,
                    nodes,
                }
                | Message::TreeDigests {
                    req,
                    algorithm,
                    level,
                    group,
                    priority,
                    range,
                    nodes,
                } => {
                    if !self.tree.load(Ordering::Relaxed) {
                        return Err(Error::protocol(
                            self.peer,
                            format!(
                                "{} on a session of protocol version {} (hierarchical digests need {})",
                                name,
                                wire::MIN_PROTOCOL_VERSION,
                                wire::TREE_PROTOCOL_VERSION
                            ),
                        ));
                    }
                    check_range(range, "tree chunk")?;
                    send_work(
                        work,
                        Work::Tree(TreeWork {
                            req,
                            algorithm,
                            level,
                            group,
                            priority,
                            range,
                            nodes,
                            compare: tree_digests,
                        }),
                        self.peer,
                    )?;
                }
                Message::CompareEnd { req } => {
                    send_work(work, Work::CompareEnd { req }, self.peer)?
                }
                // Answers to the scan this secondary leads, handed over in stream order: a
                // LeadDone reaches the leader after every repair write before it is applied.
                m @ (Message::LeadDigests { .. } | Message::LeadDone { .. }) => {
                    let Some(lead) = lead else {
                        return Err(Error::protocol(
                            self.peer,
                            format!("unexpected {} to a secondary that leads no scan", m.name()),
                        ));
                    };
                    if let Message::LeadDigests {
                        algorithm,
                        start,
                        digests,
                        ..
                    } = &m
                    {
                        let n = (digests.len() / algorithm.digest_len()) as u64;
                        check_range(BlockRange::new(*start, n), "digests")?;
                    }
                    // A leader that has finished its scans takes nothing more: dropped.
                    let _ = lead.send(m);
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

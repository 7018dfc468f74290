//! The apply loop: frames of one session applied in stream order — writes, zeroings, flushes
//! and barriers acknowledged only once done, every offset and length checked against the volume
//! before any I/O — with scans and compares handed to the worker in that same order.

use std::sync::atomic::Ordering;

use super::session::Session;
use super::worker::Work;
use crate::protocol::link::FrameReader;
use crate::protocol::messages::{write_flags, zero_flags, Message};
use crate::storage::volume::check_io;
use crate::sync::lock;
use crate::units::BlockRange;
use crate::{Error, Result};

impl Session<'_> {
    pub(super) fn apply_loop(
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
                    if matches!(msg, Message::Trim { .. }) {
                        vol.trim(offset, len)?;
                    } else {
                        vol.write_zeroes(offset, len)?;
                    }
                    if flags & zero_flags::FLUSH != 0 {
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

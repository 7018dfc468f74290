//! The primary's side of scans the secondary leads: it answers `LeadScan` with its digests,
//! compares the secondary's digests of a `LeadCompare`, and sends the blocks asked for by
//! `RepairRequest` or found different — read and queued under their regions' locks by
//! [`Inner::ship`], exactly as a primary-led repair, so the ordering invariant holds whichever
//! side led. `LeadDone` is queued on the same ordered stream after the repairs it counts, so
//! when the secondary applies it, every one of them is on its volume.
//!
//! It runs on a thread of its own per link, fed by the reader thread: reading and queuing
//! repairs may wait on a full link queue, and the reader must keep draining acks meanwhile.
//! Every range is checked against the volume before any I/O; a bad request ends the link.

use std::collections::HashMap;

use crossbeam_channel::Receiver;
use tracing::{debug, info, warn};

use super::conn::Conn;
use super::Inner;
use crate::config::CompareSide;
use crate::protocol::link;
use crate::protocol::messages::{self as wire, Message};
use crate::report::{Report, ResyncMode};
use crate::storage::background;
use crate::storage::digest::Algorithm;
use crate::storage::scan::{self, RunBuilder, ScanMap, ScanOptions};
use crate::storage::volume::IoPriority;
use crate::sync::lock;
use crate::units::{BlockIndex, BlockRange};
use crate::{Error, ErrorKind, Result};

/// Secondary-led requests one link may have open at once (counts of repaired blocks kept
/// until their `LeadEnd`); a secondary leads one scan at a time, so this is generous.
const MAX_OPEN_REQUESTS: usize = 64;

/// The `LeadCompare` being received.
struct OpenCompare {
    req: u64,
    algorithm: Algorithm,
    priority: IoPriority,
    range: BlockRange,
    next: u64,
}

/// Serves the secondary's lead messages of one link until the link dies.
pub(super) fn lead_server(inner: &Inner, conn: &Conn, rx: Receiver<Message>) {
    let mut server = Server {
        inner,
        conn,
        compare: None,
        repaired: HashMap::new(),
    };
    for m in rx.iter() {
        if conn.is_dead() {
            return;
        }
        if let Err(e) = server.handle(m) {
            if e.kind() != ErrorKind::Link {
                warn!(peer = %conn.peer, error = %e, "secondary-led scan refused");
                let _ = conn.send(&Message::Error {
                    code: link::error_code(&e),
                    message: e.to_string(),
                });
                inner.record_error(&e);
            }
            conn.fail(&inner.dirty, &e);
            inner.poke();
            return;
        }
    }
}

struct Server<'a> {
    inner: &'a Inner,
    conn: &'a Conn,
    compare: Option<OpenCompare>,
    /// Blocks repaired per request since its last `LeadDone`.
    repaired: HashMap<u64, u64>,
}

fn io_priority(p: u8) -> IoPriority {
    if p == wire::priority::IDLE {
        IoPriority::Idle
    } else {
        IoPriority::Normal
    }
}

impl Server<'_> {
    fn peer(&self) -> &str {
        &self.conn.peer
    }

    fn check_range(&self, range: BlockRange, what: &str) -> Result<()> {
        let blocks = self.inner.volume.blocks();
        if range.end() > blocks {
            return Err(Error::protocol(
                self.peer(),
                format!(
                    "{what} of blocks {range} reaches past the end of the volume ({blocks} blocks)"
                ),
            ));
        }
        Ok(())
    }

    fn check_level(&self, level: u8) -> Result<()> {
        if level != 0 {
            return Err(Error::protocol(
                self.peer(),
                format!("digest level {level} is not supported"),
            ));
        }
        Ok(())
    }

    /// Digests of `range` of the local volume, at `priority` (idle: a niced thread, hashing on the `SCHED_IDLE` pool).
    fn local_digests(
        &self,
        algorithm: Algorithm,
        range: BlockRange,
        priority: IoPriority,
    ) -> Result<ScanMap> {
        let vol = &*self.inner.volume;
        if priority == IoPriority::Idle {
            let opts = ScanOptions::new(algorithm).background();
            background::run_niced(|| scan::scan_all(vol, range, opts))
        } else {
            scan::scan_all(vol, range, ScanOptions::new(algorithm))
        }
    }

    /// Counts `count` repaired blocks for `req`, refusing a secondary that opens requests
    /// without ever ending them.
    fn count_repaired(&mut self, req: u64, count: u64) -> Result<()> {
        if !self.repaired.contains_key(&req) && self.repaired.len() >= MAX_OPEN_REQUESTS {
            return Err(Error::protocol(
                self.peer(),
                format!("more than {MAX_OPEN_REQUESTS} secondary-led requests open"),
            ));
        }
        *self.repaired.entry(req).or_default() += count;
        Ok(())
    }

    fn handle(&mut self, m: Message) -> Result<()> {
        match m {
            Message::LeadScan {
                req,
                algorithm,
                level,
                priority,
                range,
            } => {
                self.check_level(level)?;
                self.check_range(range, "LeadScan")?;
                let ours = self.local_digests(algorithm, range, io_priority(priority))?;
                for d in scan::digest_messages(req, &ours) {
                    if let Message::Digests {
                        algorithm,
                        start,
                        digests,
                        ..
                    } = d
                    {
                        self.conn.send(&Message::LeadDigests {
                            req,
                            algorithm,
                            start,
                            digests,
                        })?;
                    }
                }
                Ok(())
            }
            Message::LeadCompare {
                req,
                algorithm,
                level,
                priority,
                range,
            } => {
                self.check_level(level)?;
                self.check_range(range, "LeadCompare")?;
                if self.compare.is_some() {
                    return Err(Error::protocol(
                        self.peer(),
                        "LeadCompare while another is open",
                    ));
                }
                self.count_repaired(req, 0)?;
                self.compare = Some(OpenCompare {
                    req,
                    algorithm,
                    priority: io_priority(priority),
                    range,
                    next: range.start.0,
                });
                Ok(())
            }
            Message::LeadDigests {
                req,
                algorithm,
                start,
                digests,
            } => {
                let n = (digests.len() / algorithm.digest_len()) as u64;
                let Some(c) = self.compare.as_mut().filter(|c| c.req == req) else {
                    return Err(Error::protocol(
                        &self.conn.peer,
                        format!("LeadDigests for request {req}, which is not open"),
                    ));
                };
                if algorithm != c.algorithm || start != c.next || start + n > c.range.end() {
                    return Err(Error::protocol(
                        &self.conn.peer,
                        format!(
                            "LeadDigests for blocks {start}+{n} do not continue request {req} in order"
                        ),
                    ));
                }
                c.next = start + n;
                let priority = c.priority;
                let theirs = ScanMap::new(algorithm, BlockIndex(start), digests)?;
                let ours = self.local_digests(algorithm, theirs.range(), priority)?;
                let mut runs = RunBuilder::default();
                for ((b, a), (_, t)) in ours.iter().zip(theirs.iter()) {
                    if a != t {
                        runs.push(b.0);
                    }
                }
                for run in runs.finish() {
                    self.inner.ship(self.conn, run, priority)?;
                    self.count_repaired(req, run.count)?;
                }
                Ok(())
            }
            Message::RepairRequest { req, range } => {
                self.check_range(range, "RepairRequest")?;
                self.count_repaired(req, range.count)?;
                self.inner.ship(self.conn, range, IoPriority::Normal)
            }
            Message::LeadEnd { req } => {
                if let Some(c) = self.compare.take() {
                    if c.req != req || c.next != c.range.end() {
                        return Err(Error::protocol(
                            self.peer(),
                            format!(
                                "LeadEnd for request {req} before every digest of request {} (blocks {}) arrived",
                                c.req, c.range
                            ),
                        ));
                    }
                }
                let repaired = self.repaired.remove(&req).unwrap_or(0);
                debug!(req, repaired, "secondary-led request done");
                // Queued after every repair of the request: the secondary applies them first.
                self.conn.send(&Message::LeadDone { req, repaired })
            }
            Message::LeadReport {
                mode,
                compare,
                algorithm,
                blocks,
                mismatched,
                blocks_sent,
                bytes_sent,
                bytes_received,
                micros,
                ..
            } => {
                let mut r = Report::new(
                    if mode == 1 {
                        ResyncMode::Periodic
                    } else {
                        ResyncMode::FullScan
                    },
                    algorithm,
                    if compare == 1 {
                        CompareSide::Secondary
                    } else {
                        CompareSide::Primary
                    },
                );
                r.blocks = blocks;
                r.mismatched = mismatched;
                r.blocks_sent = blocks_sent;
                r.bytes_sent = bytes_sent;
                r.bytes_received = bytes_received;
                r.seconds = micros as f64 / 1e6;
                info!(peer = %self.conn.peer, mode = %r.mode, compare = r.compare.name(), blocks, mismatched, blocks_sent, "secondary-led scan done");
                *lock(&self.inner.last_secondary_report) = Some(r);
                Ok(())
            }
            other => Err(Error::protocol(
                self.peer(),
                format!("unexpected {} in a secondary-led scan", other.name()),
            )),
        }
    }
}

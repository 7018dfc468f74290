//! The comparing passes of a job: digests of a range from both sides, compared on the side
//! the configuration names (the primary, or the secondary, which then asks for the blocks
//! that differ). Requests run a few chunks ahead of the local scan so comparing overlaps
//! scanning.
//!
//! These are the flat passes, one digest per block: what a secondary of protocol version 2
//! speaks, and what the windows of a dirty-map resync use with any secondary (their blocks
//! were written and mostly differ, so a tree would only add its nodes). Full scans, verifies
//! and periodic scans with a version-3 secondary descend trees instead ([`super::tree`]).

use std::collections::VecDeque;

use crossbeam_channel::Receiver;

use super::job::{Job, CHUNK_BLOCKS, REQUESTS_AHEAD, WINDOW_BYTES};
use crate::config::CompareSide;
use crate::protocol::messages::{self as wire, Message};
use crate::storage::scan::{self, RunBuilder, ScanMap};
use crate::units::BlockRange;
use crate::{Error, Result};

impl Job<'_> {
    /// Primary compares: the secondary streams its digests, requested a few chunks ahead of
    /// the local scan; each local batch is compared as soon as their digests for it are in.
    pub(super) fn compare_here(
        &mut self,
        range: BlockRange,
        req: u64,
        rx: &Receiver<Message>,
    ) -> Result<()> {
        let algorithm = self.inner.config.algorithm;
        let width = algorithm.digest_len();
        let priority = self.wire_priority();
        let mut requested = range.start.0;
        let mut theirs: VecDeque<u8> = VecDeque::new();
        let mut theirs_next = range.start.0;
        let opts = self.scan_options();
        let ctl = self.ctl;
        let vol = self.inner.volume.clone();
        scan::scan_range(
            &*vol,
            range,
            opts,
            move |bytes| ctl.pace(bytes),
            |batch| {
                let end = batch.range().end();
                let ahead = (end + REQUESTS_AHEAD * CHUNK_BLOCKS).min(range.end());
                while requested < ahead {
                    let count = CHUNK_BLOCKS.min(range.end() - requested);
                    self.conn.send(&Message::ScanRequest {
                        req,
                        algorithm,
                        level: 0,
                        priority,
                        range: BlockRange::new(requested, count),
                    })?;
                    requested += count;
                }
                while theirs_next < end {
                    match self.recv(rx)? {
                        Message::Digests {
                            start,
                            digests,
                            algorithm: a,
                            ..
                        } if a == algorithm && start == theirs_next => {
                            let n = (digests.len() / width) as u64;
                            if start + n > requested {
                                return Err(Error::protocol(
                                    &self.conn.peer,
                                    "secondary sent digests that were not requested",
                                ));
                            }
                            theirs.extend(digests);
                            theirs_next += n;
                        }
                        Message::ScanEnd { .. } => {}
                        other => {
                            return Err(Error::protocol(
                                &self.conn.peer,
                                format!("unexpected {} during a scan", other.name()),
                            ));
                        }
                    }
                }
                let mut runs = RunBuilder::default();
                for (b, ours) in batch.iter() {
                    let differs = theirs.drain(..width).zip(ours).any(|(t, o)| t != *o);
                    if differs {
                        runs.push(b.0);
                    }
                }
                for run in runs.finish() {
                    self.mismatch(run)?;
                }
                self.advance(batch.len() as u64);
                Ok(true)
            },
        )
    }

    /// Secondary compares: each local batch goes out as a compare of its own (request, our
    /// digests, end); the secondary answers with the runs that differ, which we ship.
    pub(super) fn compare_there(
        &mut self,
        range: BlockRange,
        req: u64,
        rx: &Receiver<Message>,
    ) -> Result<()> {
        let algorithm = self.inner.config.algorithm;
        let priority = self.wire_priority();
        let opts = self.scan_options();
        let ctl = self.ctl;
        let vol = self.inner.volume.clone();
        let mut sent = 0u64;
        let mut finished = 0u64;
        scan::scan_range(
            &*vol,
            range,
            opts,
            move |bytes| ctl.pace(bytes),
            |batch| {
                self.conn.send(&Message::CompareRequest {
                    req,
                    algorithm,
                    level: 0,
                    priority,
                    range: batch.range(),
                })?;
                for msg in scan::digest_messages(req, &batch) {
                    self.conn.send(&msg)?;
                }
                self.conn.send(&Message::CompareEnd { req })?;
                sent += 1;
                while let Ok(m) = rx.try_recv() {
                    self.on_compare_answer(m, range, &mut finished)?;
                }
                while sent - finished > REQUESTS_AHEAD * 2 {
                    let m = self.recv(rx)?;
                    self.on_compare_answer(m, range, &mut finished)?;
                }
                self.advance(batch.len() as u64);
                Ok(true)
            },
        )?;
        while finished < sent {
            let m = self.recv(rx)?;
            self.on_compare_answer(m, range, &mut finished)?;
        }
        Ok(())
    }

    /// Compares a window of dirty runs with one round trip: every run's request goes out
    /// first, then each is compared as its answer arrives. A run too large for a window goes
    /// through the streaming [`compare`](Self::compare).
    pub(super) fn compare_window(&mut self, runs: &[BlockRange]) -> Result<()> {
        let bs = self.inner.volume.block_size().bytes();
        let (small, large): (Vec<BlockRange>, Vec<BlockRange>) = runs
            .iter()
            .partition(|r| r.count <= wire::MAX_REQUEST_BLOCKS && r.count * bs <= WINDOW_BYTES);
        for run in large {
            self.compare(run)?;
        }
        let (Some(first), Some(last)) = (small.first(), small.last()) else {
            return Ok(());
        };
        // The large runs were paced by their scans; the small ones are read here at once.
        self.ctl
            .pace(small.iter().map(|r| r.count).sum::<u64>() * bs)?;
        let span = BlockRange::new(first.start.0, last.end() - first.start.0);
        let req = self.next_req();
        let rx = self.conn.route(req);
        let result = match self.inner.config.compare {
            CompareSide::Primary => self.window_here(&small, req, &rx),
            CompareSide::Secondary => self.window_there(&small, span, req, &rx),
        };
        self.conn.unroute(req);
        result
    }

    /// Reads and hashes `run` of the local volume.
    fn local_digests(&self, run: BlockRange) -> Result<ScanMap> {
        scan::scan_all(&*self.inner.volume, run, self.scan_options())
    }

    fn window_here(&mut self, runs: &[BlockRange], req: u64, rx: &Receiver<Message>) -> Result<()> {
        let algorithm = self.inner.config.algorithm;
        let priority = self.wire_priority();
        for run in runs {
            self.conn.send(&Message::ScanRequest {
                req,
                algorithm,
                level: 0,
                priority,
                range: *run,
            })?;
        }
        for run in runs {
            let ours = self.local_digests(*run)?;
            let mut theirs = Vec::with_capacity(ours.as_bytes().len());
            let mut next = run.start.0;
            while next < run.end() {
                match self.recv(rx)? {
                    Message::Digests {
                        start,
                        digests,
                        algorithm: a,
                        ..
                    } if a == algorithm && start == next => {
                        next += (digests.len() / algorithm.digest_len()) as u64;
                        if next > run.end() {
                            return Err(Error::protocol(
                                &self.conn.peer,
                                "secondary sent digests that were not requested",
                            ));
                        }
                        theirs.extend_from_slice(&digests);
                    }
                    Message::ScanEnd { .. } => {}
                    other => {
                        return Err(Error::protocol(
                            &self.conn.peer,
                            format!("unexpected {} during a scan", other.name()),
                        ));
                    }
                }
            }
            let theirs = ScanMap::new(algorithm, run.start, theirs)?;
            for m in ours.mismatches(&theirs) {
                self.mismatch(m)?;
            }
            self.advance(run.count);
        }
        Ok(())
    }

    fn window_there(
        &mut self,
        runs: &[BlockRange],
        span: BlockRange,
        req: u64,
        rx: &Receiver<Message>,
    ) -> Result<()> {
        let algorithm = self.inner.config.algorithm;
        let priority = self.wire_priority();
        let mut finished = 0u64;
        for run in runs {
            let ours = self.local_digests(*run)?;
            self.conn.send(&Message::CompareRequest {
                req,
                algorithm,
                level: 0,
                priority,
                range: *run,
            })?;
            for msg in scan::digest_messages(req, &ours) {
                self.conn.send(&msg)?;
            }
            self.conn.send(&Message::CompareEnd { req })?;
            while let Ok(m) = rx.try_recv() {
                self.on_compare_answer(m, span, &mut finished)?;
            }
            self.advance(run.count);
        }
        while finished < runs.len() as u64 {
            let m = self.recv(rx)?;
            self.on_compare_answer(m, span, &mut finished)?;
        }
        Ok(())
    }

    fn on_compare_answer(
        &mut self,
        m: Message,
        range: BlockRange,
        finished: &mut u64,
    ) -> Result<()> {
        match m {
            Message::BlockRequest { range: r, .. } => {
                if r.start.0 < range.start.0 || r.end() > range.end() {
                    return Err(Error::protocol(
                        &self.conn.peer,
                        format!(
                            "secondary asked for blocks {r} outside the compared range {range}"
                        ),
                    ));
                }
                self.mismatch(r)
            }
            Message::CompareDone { .. } => {
                *finished += 1;
                Ok(())
            }
            other => Err(Error::protocol(
                &self.conn.peer,
                format!("unexpected {} during a compare", other.name()),
            )),
        }
    }

    pub(super) fn mismatch(&mut self, run: BlockRange) -> Result<()> {
        if self.defer {
            for b in run.start.0..run.end() {
                self.mismatches.push(b);
            }
            return Ok(());
        }
        self.report.mismatched += run.count;
        self.ship(run)
    }
}

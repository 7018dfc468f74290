//! The secondary's scan leader: while a primary's session is up, it scans the secondary's
//! volume of its own accord — at once when the session opens (`scan_on_connect`) and every
//! `periodic.interval` after (idle I/O class, lowest CPU priority, rate-limited) — and has
//! what differs repaired.
//!
//! Comparing on the secondary, it asks for the primary's digests a few chunks ahead of its
//! own scan (`LeadScan`), compares, and asks for the blocks that differ (`RepairRequest`).
//! Comparing on the primary, it streams its digests chunk by chunk (`LeadCompare`,
//! `LeadDigests`, `LeadEnd`). Either way the primary sends the blocks as repair writes on the
//! one ordered stream, read under its region locks, and queues `LeadDone` after them: when
//! the apply loop hands `LeadDone` here, every repair it counts is on the volume. A scan ends
//! with its report, kept here and sent to the primary (`LeadReport`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tracing::{info, warn};

use super::Inner;
use crate::config::CompareSide;
use crate::protocol::link::{Counters, FrameWriter};
use crate::protocol::messages::{self as wire, Message};
use crate::report::{Report, ResyncMode};
use crate::storage::background;
use crate::storage::scan::{self, RateLimiter, RunBuilder, ScanMap, ScanOptions};
use crate::sync::lock;
use crate::units::BlockRange;
use crate::{Error, ErrorKind, Result};

/// Blocks per digest request and per compare chunk.
const CHUNK_BLOCKS: u64 = 1024;
/// Requests kept in flight ahead of the local scan.
const REQUESTS_AHEAD: u64 = 16;
/// Pause before a failed scan is tried again on the same session.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What one session's leader needs.
pub(super) struct Leader<'a> {
    pub(super) inner: &'a Inner,
    pub(super) writer: &'a Mutex<FrameWriter>,
    /// `LeadDigests` and `LeadDone` of this session, from the apply loop, in stream order.
    pub(super) rx: Receiver<Message>,
    pub(super) closing: &'a AtomicBool,
    pub(super) peer: &'a str,
    pub(super) counters: Arc<Counters>,
}

impl Leader<'_> {
    /// Leads scans until the session ends: one at once when `scan_on_connect`, then one every
    /// interval. A scan that fails while the session lives is tried again after a pause.
    pub(super) fn run(&self) {
        let config = &self.inner.config;
        let mut due = if config.scan_on_connect {
            Some((Instant::now(), ResyncMode::FullScan))
        } else {
            config
                .periodic
                .map(|p| (Instant::now() + p.interval, ResyncMode::Periodic))
        };
        while let Some((at, mode)) = due {
            if !self.sleep_until(at) {
                return;
            }
            match self.scan(mode) {
                Ok(report) => {
                    self.inner.record_lead_report(report);
                    due = config
                        .periodic
                        .map(|p| (Instant::now() + p.interval, ResyncMode::Periodic));
                }
                Err(e) if self.closing.load(Ordering::SeqCst) || e.kind() == ErrorKind::Link => {
                    info!(peer = self.peer, reason = %e, "secondary-led scan stopped with its session");
                    return;
                }
                Err(e) => {
                    warn!(peer = self.peer, error = %e, "secondary-led scan failed; retrying");
                    due = Some((Instant::now() + RETRY_AFTER, mode));
                }
            }
        }
    }

    /// Sleeps until `at`; false when the session ends first.
    fn sleep_until(&self, at: Instant) -> bool {
        loop {
            if self.closing.load(Ordering::SeqCst) {
                return false;
            }
            let now = Instant::now();
            if now >= at {
                return true;
            }
            std::thread::sleep((at - now).min(Duration::from_millis(100)));
        }
    }

    fn scan(&self, mode: ResyncMode) -> Result<Report> {
        let config = &self.inner.config;
        let background = mode == ResyncMode::Periodic;
        let start = Instant::now();
        let (s0, r0) = (
            self.counters.sent.load(Ordering::Relaxed),
            self.counters.received.load(Ordering::Relaxed),
        );
        let mut report = Report::new(mode, config.algorithm, config.compare);
        let req = self.inner.next_lead_req.fetch_add(1, Ordering::Relaxed);
        let rate = config
            .periodic
            .filter(|_| background)
            .map(|p| Mutex::new(RateLimiter::new(p.rate_mib_s)));
        let run = Run {
            leader: self,
            req,
            background,
            rate: rate.as_ref(),
        };
        let mut body = || match config.compare {
            CompareSide::Secondary => run.compare_here(&mut report),
            CompareSide::Primary => run.compare_there(&mut report),
        };
        if background {
            background::run_niced(body)?;
        } else {
            body()?;
        }
        report.seconds = start.elapsed().as_secs_f64();
        report.bytes_sent = self.counters.sent.load(Ordering::Relaxed) - s0;
        report.bytes_received = self.counters.received.load(Ordering::Relaxed) - r0;
        lock(self.writer).send_now(&Message::LeadReport {
            req,
            mode: u8::from(background),
            compare: u8::from(config.compare == CompareSide::Secondary),
            algorithm: report.algorithm,
            blocks: report.blocks,
            mismatched: report.mismatched,
            blocks_sent: report.blocks_sent,
            bytes_sent: report.bytes_sent,
            bytes_received: report.bytes_received,
            micros: (report.seconds * 1e6) as u64,
        })?;
        info!(peer = self.peer, mode = %report.mode, compare = report.compare.name(), blocks = report.blocks, mismatched = report.mismatched, seconds = report.seconds, "secondary-led scan done");
        Ok(report)
    }
}

/// One scan in progress.
#[derive(Clone, Copy)]
struct Run<'a> {
    leader: &'a Leader<'a>,
    req: u64,
    background: bool,
    rate: Option<&'a Mutex<RateLimiter>>,
}

impl Run<'_> {
    fn check_live(&self) -> Result<()> {
        if self.leader.closing.load(Ordering::SeqCst) {
            return Err(Error::link(self.leader.peer, "session ended"));
        }
        Ok(())
    }

    fn pace(&self, bytes: u64) -> Result<()> {
        if let Some(r) = self.rate {
            lock(r).take(bytes);
        }
        self.check_live()
    }

    fn options(&self) -> ScanOptions {
        let inner = self.leader.inner;
        let mut o = ScanOptions::new(inner.config.algorithm);
        if self.background {
            o = o.background();
        }
        o.batch_bytes = (CHUNK_BLOCKS * inner.volume.block_size().bytes()) as usize;
        o
    }

    fn priority(&self) -> u8 {
        if self.background {
            wire::priority::IDLE
        } else {
            wire::priority::NORMAL
        }
    }

    fn recv(&self) -> Result<Message> {
        loop {
            self.check_live()?;
            match self.leader.rx.recv_timeout(Duration::from_millis(200)) {
                Ok(m) => return Ok(m),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::link(self.leader.peer, "session ended"))
                }
            }
        }
    }

    fn unexpected(&self, m: &Message) -> Error {
        Error::protocol(
            self.leader.peer,
            format!("unexpected {} in a secondary-led scan", m.name()),
        )
    }

    /// Takes a `LeadDone` of this scan: the blocks it says were repaired.
    fn on_done(&self, m: Message) -> Result<u64> {
        match m {
            Message::LeadDone { req, repaired } if req == self.req => Ok(repaired),
            other => Err(self.unexpected(&other)),
        }
    }

    /// The secondary compares: the primary's digests are asked for a few chunks ahead of the
    /// local scan; each local batch is compared as soon as they are in, and the blocks that
    /// differ are asked for.
    fn compare_here(&self, report: &mut Report) -> Result<()> {
        let inner = self.leader.inner;
        let vol = &*inner.volume;
        let algorithm = inner.config.algorithm;
        let width = algorithm.digest_len();
        let range = BlockRange::new(0, vol.blocks());
        let mut requested = 0u64;
        let mut theirs: VecDeque<u8> = VecDeque::new();
        let mut theirs_next = 0u64;
        let run = *self;
        scan::scan_range(
            vol,
            range,
            self.options(),
            move |bytes| run.pace(bytes),
            |batch| {
                let end = batch.range().end();
                let ahead = (end + REQUESTS_AHEAD * CHUNK_BLOCKS).min(range.end());
                if requested < ahead {
                    let mut wr = lock(self.leader.writer);
                    while requested < ahead {
                        let count = CHUNK_BLOCKS.min(range.end() - requested);
                        wr.send(&Message::LeadScan {
                            req: self.req,
                            algorithm,
                            level: 0,
                            priority: self.priority(),
                            range: BlockRange::new(requested, count),
                        })?;
                        requested += count;
                    }
                    wr.flush()?;
                }
                while theirs_next < end {
                    match self.recv()? {
                        Message::LeadDigests {
                            req,
                            algorithm: a,
                            start,
                            digests,
                        } if req == self.req && a == algorithm && start == theirs_next => {
                            let n = (digests.len() / width) as u64;
                            if start + n > requested {
                                return Err(Error::protocol(
                                    self.leader.peer,
                                    "primary sent digests that were not requested",
                                ));
                            }
                            theirs.extend(digests);
                            theirs_next += n;
                        }
                        other => return Err(self.unexpected(&other)),
                    }
                }
                let mut runs = RunBuilder::default();
                for (b, ours) in batch.iter() {
                    if theirs.drain(..width).zip(ours).any(|(t, o)| t != *o) {
                        runs.push(b.0);
                    }
                }
                let runs = runs.finish();
                if !runs.is_empty() {
                    let mut wr = lock(self.leader.writer);
                    for r in runs {
                        report.mismatched += r.count;
                        wr.send(&Message::RepairRequest {
                            req: self.req,
                            range: r,
                        })?;
                    }
                    wr.flush()?;
                }
                report.blocks += batch.len() as u64;
                Ok(true)
            },
        )?;
        lock(self.leader.writer).send_now(&Message::LeadEnd { req: self.req })?;
        report.blocks_sent = self.on_done(self.recv()?)?;
        report.mismatched_ranges.clear();
        Ok(())
    }

    /// The primary compares: each local batch goes out as a compare of its own (request, our
    /// digests, end); the primary repairs what differs and answers each with `LeadDone`.
    fn compare_there(&self, report: &mut Report) -> Result<()> {
        let inner = self.leader.inner;
        let vol = &*inner.volume;
        let algorithm = inner.config.algorithm;
        let range = BlockRange::new(0, vol.blocks());
        let (mut sent, mut finished) = (0u64, 0u64);
        let run = *self;
        scan::scan_range(
            vol,
            range,
            self.options(),
            move |bytes| run.pace(bytes),
            |batch| {
                {
                    let mut wr = lock(self.leader.writer);
                    wr.send(&Message::LeadCompare {
                        req: self.req,
                        algorithm,
                        level: 0,
                        priority: self.priority(),
                        range: batch.range(),
                    })?;
                    for msg in lead_digests(self.req, &batch) {
                        wr.send(&msg)?;
                    }
                    wr.send(&Message::LeadEnd { req: self.req })?;
                    wr.flush()?;
                }
                sent += 1;
                while let Ok(m) = self.leader.rx.try_recv() {
                    report.blocks_sent += self.on_done(m)?;
                    finished += 1;
                }
                while sent - finished > REQUESTS_AHEAD * 2 {
                    report.blocks_sent += self.on_done(self.recv()?)?;
                    finished += 1;
                }
                report.blocks += batch.len() as u64;
                Ok(true)
            },
        )?;
        while finished < sent {
            report.blocks_sent += self.on_done(self.recv()?)?;
            finished += 1;
        }
        report.mismatched = report.blocks_sent;
        Ok(())
    }
}

/// The `LeadDigests` messages carrying `map` for request `req`, each within the frame limit.
fn lead_digests(req: u64, map: &ScanMap) -> impl Iterator<Item = Message> + '_ {
    scan::digest_messages(req, map).map(|m| match m {
        Message::Digests {
            req,
            algorithm,
            start,
            digests,
        } => Message::LeadDigests {
            req,
            algorithm,
            start,
            digests,
        },
        other => other,
    })
}

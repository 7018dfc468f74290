//! The scan worker of a session: serves the primary's scan requests (merging queued ones up
//! to a bound) and compares the primary's digests with its own, asking for the blocks that
//! differ. Background requests run at idle I/O and lowest CPU priority.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crossbeam_channel::Receiver;
use tracing::debug;

use super::tree::{LeafCache, TreeServer, TreeWork, MAX_MERGED_TREE_BLOCKS};
use super::Inner;
use crate::protocol::link::FrameWriter;
use crate::protocol::messages::{self as wire, Message};
use crate::storage::background;
use crate::storage::scan::{self, RunBuilder, ScanOptions};
use crate::storage::volume::IoPriority;
use crate::sync::lock;
use crate::units::{BlockIndex, BlockRange};
use crate::{Algorithm, Error, Result};

/// Work the session hands to its scan worker, in stream order.
pub(super) enum Work {
    Scan {
        req: u64,
        algorithm: Algorithm,
        priority: u8,
        range: BlockRange,
    },
    Compare {
        req: u64,
        algorithm: Algorithm,
        priority: u8,
        range: BlockRange,
    },
    Digests {
        req: u64,
        algorithm: Algorithm,
        start: u64,
        digests: Vec<u8>,
    },
    CompareEnd {
        req: u64,
    },
    /// A `TreeRequest` or `TreeDigests` ([`super::tree`]).
    Tree(TreeWork),
}

/// Most blocks of queued scan requests merged into one scan.
const MAX_MERGED_SCAN_BLOCKS: u64 = 1 << 16;

struct CompareState {
    req: u64,
    algorithm: Algorithm,
    priority: IoPriority,
    pub(super) range: BlockRange,
    pub(super) next: u64,
    mismatched: u64,
}

pub(super) fn worker(
    inner: &Inner,
    writer: &Mutex<FrameWriter>,
    rx: &Receiver<Work>,
    closing: &AtomicBool,
    peer: &str,
) -> Result<()> {
    let vol = &*inner.volume;
    let mut compare: Option<CompareState> = None;
    let prio = |p: u8| {
        if p == wire::priority::IDLE {
            IoPriority::Idle
        } else {
            IoPriority::Normal
        }
    };
    let mut held: Option<Work> = None;
    let mut trees = TreeServer {
        vol,
        writer,
        peer,
        cache: LeafCache::default(),
    };
    while let Some(w) = held.take().or_else(|| rx.recv().ok()) {
        match w {
            Work::Tree(t) => {
                if closing.load(Ordering::Relaxed) {
                    return Err(Error::Cancelled("scan"));
                }
                // Chunks queued behind this one that continue it, none of them read yet, are
                // read as one run.
                let first_count = t.range.count;
                let mut batch = vec![t];
                let mut blocks = first_count;
                while !trees.cache.contains(batch[0].algorithm, batch[0].range)
                    && blocks < MAX_MERGED_TREE_BLOCKS
                {
                    match rx.try_recv() {
                        Ok(Work::Tree(next))
                            if batch[batch.len() - 1].continued_by(&next, first_count)
                                && !trees.cache.contains(next.algorithm, next.range) =>
                        {
                            blocks += next.range.count;
                            batch.push(next);
                        }
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                trees.serve(batch)?;
            }
            Work::Scan {
                req,
                algorithm,
                priority,
                mut range,
            } => {
                // Requests queued behind this one that continue it are scanned as one run, so
                // reads stay in flight across request boundaries.
                while range.count < MAX_MERGED_SCAN_BLOCKS {
                    match rx.try_recv() {
                        Ok(Work::Scan {
                            req: r,
                            algorithm: a,
                            priority: p,
                            range: next,
                        }) if r == req
                            && a == algorithm
                            && p == priority
                            && next.start.0 == range.end() =>
                        {
                            range.count += next.count;
                        }
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let idle = priority == wire::priority::IDLE;
                let mut opts = ScanOptions::new(algorithm);
                if idle {
                    opts = opts.background();
                }
                let scan = || {
                    scan::scan_range(
                        vol,
                        range,
                        opts,
                        |_| Ok(()),
                        |batch| {
                            if closing.load(Ordering::Relaxed) {
                                return Err(Error::Cancelled("scan"));
                            }
                            let mut wr = lock(writer);
                            for msg in scan::digest_messages(req, &batch) {
                                wr.send(&msg)?;
                            }
                            wr.flush()?;
                            Ok(true)
                        },
                    )
                };
                if idle {
                    background::run_niced(scan)?;
                } else {
                    scan()?;
                }
                lock(writer).send_now(&Message::ScanEnd { req })?;
            }
            Work::Compare {
                req,
                algorithm,
                priority,
                range,
            } => {
                if compare.is_some() {
                    return Err(Error::protocol(
                        peer,
                        "CompareRequest while a compare is open",
                    ));
                }
                compare = Some(CompareState {
                    req,
                    algorithm,
                    priority: prio(priority),
                    range,
                    next: range.start.0,
                    mismatched: 0,
                });
            }
            Work::Digests {
                req,
                algorithm,
                start,
                digests,
            } => {
                let Some(c) = compare.as_mut().filter(|c| c.req == req) else {
                    return Err(Error::protocol(
                        peer,
                        format!("Digests for unknown compare {req}"),
                    ));
                };
                let n = (digests.len() / algorithm.digest_len()) as u64;
                if algorithm != c.algorithm || start != c.next || start + n > c.range.end() {
                    return Err(Error::protocol(
                        peer,
                        format!(
                            "Digests for blocks {start}+{n} do not continue compare {req} in order"
                        ),
                    ));
                }
                c.next = start + n;
                let theirs = scan::ScanMap::new(algorithm, BlockIndex(start), digests)?;
                let ours = if c.priority == IoPriority::Idle {
                    let opts = ScanOptions::new(algorithm).background();
                    background::run_niced(|| scan::scan_all(vol, theirs.range(), opts))?
                } else {
                    scan::scan_all(vol, theirs.range(), ScanOptions::new(algorithm))?
                };
                let mut runs = RunBuilder::default();
                for ((b, a), (_, t)) in ours.iter().zip(theirs.iter()) {
                    if a != t {
                        runs.push(b.0);
                    }
                }
                let runs = runs.finish();
                if !runs.is_empty() {
                    let mut wr = lock(writer);
                    for r in runs {
                        c.mismatched += r.count;
                        wr.send(&Message::BlockRequest { req, range: r })?;
                    }
                    wr.flush()?;
                }
            }
            Work::CompareEnd { req } => {
                let Some(c) = compare.take().filter(|c| c.req == req) else {
                    return Err(Error::protocol(
                        peer,
                        format!("CompareEnd for unknown compare {req}"),
                    ));
                };
                debug!(req, mismatched = c.mismatched, "compare done");
                lock(writer).send_now(&Message::CompareDone {
                    req,
                    mismatched: c.mismatched,
                })?;
            }
        }
    }
    Ok(())
}

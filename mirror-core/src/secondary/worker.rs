//! The scan worker of a session: serves the primary's scan requests (merging queued ones up
//! to a bound) and compares the primary's digests with its own, asking for the blocks that
//! differ. Background requests run at idle I/O and lowest CPU priority.
//!
//! Work is served in stream order, with one exception: a step of a digest-tree descent whose
//! chunk's leaves are cached costs no read, and is answered ahead of the chunks still to be
//! read ([`WorkQueue::take_cached`]). Otherwise each step of a descent would wait behind the
//! reading of every chunk the primary asked for since (up to its window, 256 chunks), and
//! through a slow link the descents, and the repairs they find, would come in bursts.
//! Answers go to different chunks, so their order does not matter to the primary.

use std::collections::VecDeque;
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

/// Most work items taken off the channel ahead of their turn (tree messages are at most a
/// chunk's digests, 20 KiB).
const MAX_BACKLOG: usize = 512;

/// The worker's queue: the session's channel, and the work taken from it ahead of its turn.
pub(super) struct WorkQueue<'a> {
    rx: &'a Receiver<Work>,
    backlog: VecDeque<Work>,
}

impl<'a> WorkQueue<'a> {
    fn new(rx: &'a Receiver<Work>) -> Self {
        WorkQueue {
            rx,
            backlog: VecDeque::new(),
        }
    }

    /// The next work in stream order, waiting for it; None once the session ended.
    fn next(&mut self) -> Option<Work> {
        self.backlog.pop_front().or_else(|| self.rx.recv().ok())
    }

    /// The next work in stream order if there is one now.
    fn try_next(&mut self) -> Option<Work> {
        self.backlog.pop_front().or_else(|| self.rx.try_recv().ok())
    }

    /// Puts back work taken by [`Self::try_next`], to be next again.
    fn put_back(&mut self, w: Work) {
        self.backlog.push_front(w);
    }

    /// The first queued tree message, wherever it is in the queue, whose chunk's leaves are
    /// in `cache`: a step of a descent under way. What is queued is taken off the channel
    /// up to the first work of another kind (which may be large) or [`MAX_BACKLOG`].
    pub(super) fn take_cached(&mut self, cache: &LeafCache) -> Option<TreeWork> {
        while self.backlog.len() < MAX_BACKLOG
            && matches!(self.backlog.back(), None | Some(Work::Tree(_)))
        {
            match self.rx.try_recv() {
                Ok(w) => self.backlog.push_back(w),
                Err(_) => break,
            }
        }
        let i = self.backlog.iter().position(
            |w| matches!(w, Work::Tree(t) if cache.contains(t.req, t.algorithm, t.range)),
        )?;
        let Some(Work::Tree(t)) = self.backlog.remove(i) else {
            unreachable!("position {i} holds tree work")
        };
        Some(t)
    }
}

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
    let mut queue = WorkQueue::new(rx);
    let mut trees = TreeServer {
        vol,
        writer,
        peer,
        cache: LeafCache::default(),
    };
    loop {
        while let Some(t) = queue.take_cached(&trees.cache) {
            if closing.load(Ordering::Relaxed) {
                return Err(Error::Cancelled("scan"));
            }
            trees.one(t)?;
        }
        let Some(w) = queue.next() else { break };
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
                while !trees
                    .cache
                    .contains(batch[0].req, batch[0].algorithm, batch[0].range)
                    && blocks < MAX_MERGED_TREE_BLOCKS
                {
                    match queue.try_next() {
                        Some(Work::Tree(next))
                            if batch[batch.len() - 1].continued_by(&next, first_count)
                                && !trees.cache.contains(next.req, next.algorithm, next.range) =>
                        {
                            blocks += next.range.count;
                            batch.push(next);
                        }
                        Some(other) => {
                            queue.put_back(other);
                            break;
                        }
                        None => break,
                    }
                }
                trees.serve(batch, &mut queue)?;
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
                    match queue.try_next() {
                        Some(Work::Scan {
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
                        Some(other) => {
                            queue.put_back(other);
                            break;
                        }
                        None => break,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(start: u64, level: u8) -> Work {
        Work::Tree(TreeWork {
            req: 1,
            algorithm: Algorithm::Crc32,
            level,
            group: 0,
            priority: wire::priority::NORMAL,
            range: BlockRange::new(start, 1024),
            nodes: vec![1],
            compare: false,
        })
    }

    fn start_of(w: &Work) -> Option<u64> {
        match w {
            Work::Tree(t) => Some(t.range.start.0),
            Work::CompareEnd { .. } => None,
            _ => unreachable!("only tree work and compare ends here"),
        }
    }

    #[test]
    fn a_descent_step_on_cached_leaves_is_taken_ahead_of_chunks_to_read() {
        let (tx, rx) = crossbeam_channel::bounded(64);
        let mut cache = LeafCache::default();
        cache.put(
            1,
            Algorithm::Crc32,
            BlockRange::new(2048, 1024),
            vec![0; 4096],
        );
        // Tops of chunks 3 and 4 (to read), then a level-6 step of chunk 2 (cached), then
        // other work, then another cached-looking step behind it.
        for w in [
            tree(3072, 10),
            tree(4096, 10),
            tree(2048, 6),
            Work::CompareEnd { req: 9 },
            tree(2048, 4),
        ] {
            tx.send(w).unwrap();
        }
        let mut q = WorkQueue::new(&rx);
        let step = q.take_cached(&cache).expect("the cached step");
        assert_eq!((step.range.start.0, step.level), (2048, 6));
        // Nothing is taken past work of another kind: the second step stays in the channel.
        assert!(q.take_cached(&cache).is_none());
        // The rest keeps its stream order.
        let rest: Vec<Option<u64>> = std::iter::from_fn(|| q.try_next())
            .map(|w| start_of(&w))
            .collect();
        assert_eq!(rest, vec![Some(3072), Some(4096), None, Some(2048)]);
    }
}

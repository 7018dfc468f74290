//! The secondary's side of hierarchical digests (see [`crate::protocol::tree`]): it answers
//! the primary's `TreeRequest`s, and when it is the comparing side it compares the
//! primary's `TreeDigests`, asking for the children of the nodes that differ and, at the
//! leaves, for the blocks.
//!
//! A chunk is read and hashed once per descent: its leaf digests stay in a [`LeafCache`]
//! bounded in entries and bytes while the descent goes on, and leave it when the descent ends
//! here (secondary compares) or when pushed out by newer chunks. Invariants: a cached entry
//! is the leaves as read when it was made, and serves only the descent (the request) that
//! read it, so every job reads every chunk it compares at least once (a periodic scan finds
//! corruption that happened since the last one); a descent whose chunk was pushed out
//! reads and hashes it again — slower, never wrong, and no write can land between: writes to
//! chunks under a job's compare are re-checked or repaired by the primary as for flat scans.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::worker::WorkQueue;
use crate::protocol::link::FrameWriter;
use crate::protocol::messages::{self as wire, Message};
use crate::protocol::tree;
use crate::storage::background;
use crate::storage::scan::{self, RunBuilder, ScanOptions};
use crate::storage::volume::Volume;
use crate::sync::lock;
use crate::units::BlockRange;
use crate::{Algorithm, Error, Result};

/// Most chunks whose leaves are kept: more than a primary keeps in descent (256), so a
/// descent finds its chunk here. Chunks whose descent ended stay until pushed out (the
/// secondary is not told), so a scan's memory stops growing at 288 chunks (1.1 GiB).
const CACHE_CHUNKS: usize = 288;
/// Most bytes of leaves kept (288 chunks of 1,024 sha1 digests are 5.6 MiB).
const CACHE_BYTES: usize = 6 << 20;
/// Most blocks of queued tree messages read as one run, so reads stay in flight across
/// chunks.
pub(super) const MAX_MERGED_TREE_BLOCKS: u64 = 1 << 14;

/// A tree message of the primary, handed to the scan worker in stream order.
pub(super) struct TreeWork {
    pub(super) req: u64,
    pub(super) algorithm: Algorithm,
    pub(super) level: u8,
    /// Each bit of the bitmap stands for 2^group nodes.
    pub(super) group: u8,
    pub(super) priority: u8,
    pub(super) range: BlockRange,
    /// The node bitmap; for a `TreeDigests` the primary's digests follow it.
    pub(super) nodes: Vec<u8>,
    /// A `TreeDigests` (compare here), not a `TreeRequest` (answer).
    pub(super) compare: bool,
}

impl TreeWork {
    /// Whether `next` continues this one's read: same request and priority, the chunk right
    /// after, of the same size unless it is the last.
    pub(super) fn continued_by(&self, next: &TreeWork, first_count: u64) -> bool {
        next.req == self.req
            && next.algorithm == self.algorithm
            && next.priority == self.priority
            && next.range.start.0 == self.range.end()
            && self.range.count == first_count
    }
}

/// Leaf digests of recently read chunks, least recently used first, each for the request
/// (the job) that read it: a later job reads the chunk again, since it may have changed.
#[derive(Default)]
pub(super) struct LeafCache {
    entries: VecDeque<(u64, Algorithm, BlockRange, Vec<u8>)>,
    bytes: usize,
}

impl LeafCache {
    fn position(&self, req: u64, algorithm: Algorithm, range: BlockRange) -> Option<usize> {
        self.entries
            .iter()
            .rposition(|(q, a, r, _)| *q == req && *a == algorithm && *r == range)
    }

    /// Whether the leaves of `range` read for request `req` are here.
    pub(super) fn contains(&self, req: u64, algorithm: Algorithm, range: BlockRange) -> bool {
        self.position(req, algorithm, range).is_some()
    }

    fn take(&mut self, req: u64, algorithm: Algorithm, range: BlockRange) -> Option<Vec<u8>> {
        let i = self.position(req, algorithm, range)?;
        let (_, _, _, leaves) = self.entries.remove(i)?;
        self.bytes -= leaves.len();
        Some(leaves)
    }

    /// Keeps the leaves of `range` read for request `req`, in place of any older reading.
    pub(super) fn put(
        &mut self,
        req: u64,
        algorithm: Algorithm,
        range: BlockRange,
        leaves: Vec<u8>,
    ) {
        let bytes = &mut self.bytes;
        self.entries.retain(|(_, a, r, old)| {
            let stale = *a == algorithm && *r == range;
            if stale {
                *bytes -= old.len();
            }
            !stale
        });
        self.bytes += leaves.len();
        self.entries.push_back((req, algorithm, range, leaves));
        while self.entries.len() > CACHE_CHUNKS || self.bytes > CACHE_BYTES {
            let Some((_, _, _, old)) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= old.len();
        }
    }
}

/// Serves tree messages for one session's scan worker.
pub(super) struct TreeServer<'a> {
    pub(super) vol: &'a dyn Volume,
    pub(super) writer: &'a Mutex<FrameWriter>,
    pub(super) peer: &'a str,
    pub(super) cache: LeafCache,
}

impl TreeServer<'_> {
    /// Serves `batch` (consecutive chunks of one request, the first ones of equal size),
    /// reading the chunks missing from the cache as one run, each answered as it is read;
    /// between the chunks of the run, the steps of descents under way queued meanwhile.
    pub(super) fn serve(&mut self, batch: Vec<TreeWork>, queue: &mut WorkQueue<'_>) -> Result<()> {
        let Some(first) = batch.first() else {
            return Ok(());
        };
        let (algorithm, priority) = (first.algorithm, first.priority);
        check_chunk(self.vol, first.range, self.peer)?;
        if batch.len() > 1 {
            let last = &batch[batch.len() - 1];
            check_chunk(self.vol, last.range, self.peer)?;
            let span = BlockRange::new(first.range.start.0, last.range.end() - first.range.start.0);
            let mut opts = options(algorithm, priority);
            opts.batch_bytes = (first.range.count * self.vol.block_size().bytes()) as usize;
            let mut works = batch.into_iter();
            let vol = self.vol;
            let mut read = || {
                scan::scan_range(
                    vol,
                    span,
                    opts,
                    |_| Ok(()),
                    |map| {
                        let Some(w) = works.next() else {
                            return Ok(false);
                        };
                        debug_assert_eq!(map.range(), w.range);
                        self.cache.put(w.req, algorithm, w.range, map.into_bytes());
                        self.one(w)?;
                        while let Some(step) = queue.take_cached(&self.cache) {
                            self.one(step)?;
                        }
                        Ok(true)
                    },
                )
            };
            if priority == wire::priority::IDLE {
                background::run_niced(read)?;
            } else {
                read()?;
            }
        } else {
            for w in batch {
                self.one(w)?;
            }
        }
        Ok(())
    }

    /// Answers or compares one tree message. What it sends leaves at once: the primary's
    /// descent of this chunk waits on it.
    pub(super) fn one(&mut self, w: TreeWork) -> Result<()> {
        check_chunk(self.vol, w.range, self.peer)?;
        let leaves = match self.cache.take(w.req, w.algorithm, w.range) {
            Some(l) => l,
            None => {
                let opts = options(w.algorithm, w.priority);
                let read = || scan::scan_all(self.vol, w.range, opts);
                let map = if w.priority == wire::priority::IDLE {
                    background::run_niced(read)?
                } else {
                    read()?
                };
                map.into_bytes()
            }
        };
        let mut wr = lock(self.writer);
        let keep = if w.compare {
            let count = w.range.count;
            let (bitmap, theirs) = w.nodes.split_at(tree::bitmap_len(count, w.level, w.group));
            let nodes = tree::nodes(count, w.level, w.group, bitmap);
            let diff = tree::differing(w.algorithm, &leaves, w.level, nodes, theirs);
            match tree::next_level(w.level) {
                Some(child) if !diff.is_empty() => {
                    let (group, nodes) = tree::children(count, w.level, child, &diff);
                    wr.send(&Message::TreeRequest {
                        req: w.req,
                        algorithm: w.algorithm,
                        level: child,
                        group,
                        priority: w.priority,
                        range: w.range,
                        nodes,
                    })?;
                    true
                }
                _ => {
                    // Leaves (or nothing) differ: the descent of this chunk ends here.
                    let mut runs = RunBuilder::default();
                    for i in &diff {
                        runs.push(w.range.start.0 + i);
                    }
                    for r in runs.finish() {
                        wr.send(&Message::BlockRequest {
                            req: w.req,
                            range: r,
                        })?;
                    }
                    wr.send(&Message::TreeDone {
                        req: w.req,
                        range: w.range,
                        mismatched: diff.len() as u64,
                    })?;
                    false
                }
            }
        } else {
            let marked = tree::nodes(w.range.count, w.level, w.group, &w.nodes);
            let digests = tree::node_digests(w.algorithm, &leaves, w.level, marked);
            let mut nodes = w.nodes;
            nodes.extend_from_slice(&digests);
            wr.send(&Message::TreeDigests {
                req: w.req,
                algorithm: w.algorithm,
                level: w.level,
                group: w.group,
                priority: w.priority,
                range: w.range,
                nodes,
            })?;
            // Nothing is below the leaves; above them the primary may descend.
            w.level > 0
        };
        wr.flush()?;
        drop(wr);
        if keep {
            self.cache.put(w.req, w.algorithm, w.range, leaves);
        }
        Ok(())
    }
}

fn options(algorithm: Algorithm, priority: u8) -> ScanOptions {
    let opts = ScanOptions::new(algorithm);
    if priority == wire::priority::IDLE {
        opts.background()
    } else {
        opts
    }
}

fn check_chunk(vol: &dyn Volume, range: BlockRange, peer: &str) -> Result<()> {
    if range.end() > vol.blocks() {
        return Err(Error::protocol(
            peer,
            format!(
                "tree chunk of blocks {range} reaches past the end of {} ({} blocks)",
                vol.name(),
                vol.blocks()
            ),
        ));
    }
    Ok(())
}

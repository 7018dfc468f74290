//! The comparing passes of a job over hierarchical digests ([`crate::protocol::tree`]), used
//! with a secondary of protocol version 3 or later.
//!
//! The range is cut in chunks of [`CHUNK_BLOCKS`] blocks, each the batch of the local scan.
//! When the primary compares, it asks for the top level of chunks ahead of its own scan (so
//! both sides read at once), compares each answer with the tree of its own leaves and asks
//! only for the children of the nodes that differ, one request per chunk and level; the
//! leaves that differ are shipped (or recorded, for verify) as in a flat compare. When the
//! secondary compares, the primary sends each chunk's top level as it is scanned and answers
//! the secondary's requests for children from the same leaves until the secondary ends the
//! chunk (`TreeDone`, after its `BlockRequest`s).
//!
//! Many chunks are in descent at once, as many as the link's bandwidth-delay product needs
//! ([`Window`]). Invariants: a chunk's leaves stay here until its descent ends; every answer
//! must be to a request outstanding for that chunk, at that level, for those nodes (anything
//! else is a protocol error); and the checkpoint of a full scan only ever passes chunks
//! whose descent has ended and whose repairs are queued, so a cut-off scan resumes at the
//! first chunk not finished.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};

use super::job::{Job, CHUNK_BLOCKS};
use super::window::Window;
use crate::config::CompareSide;
use crate::protocol::messages::Message;
use crate::protocol::tree;
use crate::storage::scan::{self, RunBuilder, ScanEvent, ScanMap};
use crate::units::BlockRange;
use crate::{Algorithm, Error, Result};

/// One chunk in descent.
struct Chunk {
    range: BlockRange,
    /// Our level-0 digests, once the local scan reached the chunk.
    leaves: Option<Vec<u8>>,
    /// The level, group and bitmap of the outstanding request (ours, or the digests we
    /// sent).
    level: u8,
    group: u8,
    bitmap: Vec<u8>,
    /// The secondary's answer, when it came before our leaves.
    theirs: Option<Vec<u8>>,
    /// When the outstanding request left (None while no answer is awaited).
    asked: Option<Instant>,
    /// Time this chunk has waited on the peer so far.
    waited: Duration,
    /// Blocks the secondary asked for (secondary compares).
    requested: u64,
}

impl Chunk {
    /// A chunk whose top level was just asked for (primary compares, `leaves` not read yet)
    /// or sent (secondary compares, with our `leaves`).
    fn top(range: BlockRange, level: u8, bitmap: Vec<u8>, leaves: Option<Vec<u8>>) -> Self {
        Chunk {
            range,
            leaves,
            level,
            group: 0,
            bitmap,
            theirs: None,
            asked: Some(Instant::now()),
            waited: Duration::ZERO,
            requested: 0,
        }
    }
}

/// The chunks of a list of runs, by index, without a list of them (a 16 TiB volume has four
/// million).
struct Chunks {
    runs: Vec<BlockRange>,
    /// Index of each run's first chunk.
    first: Vec<usize>,
    len: usize,
}

impl Chunks {
    fn new(runs: &[BlockRange]) -> Self {
        let runs: Vec<BlockRange> = runs.iter().copied().filter(|r| !r.is_empty()).collect();
        let mut first = Vec::with_capacity(runs.len());
        let mut len = 0;
        for r in &runs {
            first.push(len);
            len += r.count.div_ceil(CHUNK_BLOCKS) as usize;
        }
        Chunks { runs, first, len }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, i: usize) -> Option<BlockRange> {
        if i >= self.len {
            return None;
        }
        let r = self.first.partition_point(|f| *f <= i).checked_sub(1)?;
        let run = self.runs[r];
        let start = run.start.0 + (i - self.first[r]) as u64 * CHUNK_BLOCKS;
        Some(BlockRange::new(start, CHUNK_BLOCKS.min(run.end() - start)))
    }

    fn last(&self) -> Option<BlockRange> {
        self.len.checked_sub(1).and_then(|i| self.get(i))
    }
}

/// A tree compare of a list of runs.
struct TreeState {
    req: u64,
    algorithm: Algorithm,
    priority: u8,
    here: bool,
    chunks: Chunks,
    /// Index in `chunks` of the first chunk not asked for (primary compares) or not sent
    /// (secondary compares).
    next: usize,
    /// Index in `chunks` of the chunk the local scan hands over next.
    scan_next: usize,
    pending: BTreeMap<u64, Chunk>,
    /// Chunks in `pending` that hold our leaves.
    scanned: usize,
    window: Window,
    /// Segment of a full scan's checkpoints, and the last checkpoint set.
    checkpoints: Option<(u64, u64)>,
}

impl TreeState {
    fn top(&self, range: BlockRange) -> (u8, Vec<u8>) {
        let level = tree::DESCENT[0];
        let n = tree::nodes_at(range.count, level);
        (level, tree::bitmap(n, 0..n))
    }

    /// Everything before this block has been compared and repaired.
    fn watermark(&self) -> u64 {
        match (self.pending.keys().next(), self.chunks.get(self.next)) {
            (Some(k), _) => *k,
            (None, Some(c)) => c.start.0,
            (None, None) => self.chunks.last().map_or(0, |c| c.end()),
        }
    }
}

impl Job<'_> {
    /// Compares `runs` by tree descent; with `checkpoints` (a segment size), a full scan
    /// records its progress as a flat one does.
    pub(super) fn compare_tree(
        &mut self,
        runs: &[BlockRange],
        checkpoints: Option<(u64, u64)>,
    ) -> Result<()> {
        let chunks = Chunks::new(runs);
        if chunks.len() == 0 {
            return Ok(());
        }
        let req = self.next_req();
        let rx = self.conn.route(req);
        let mut st = TreeState {
            req,
            algorithm: self.inner.config.algorithm,
            priority: self.wire_priority(),
            here: self.inner.config.compare == CompareSide::Primary,
            chunks,
            next: 0,
            scan_next: 0,
            pending: BTreeMap::new(),
            scanned: 0,
            window: Window::new(),
            checkpoints,
        };
        let result = self.tree_runs(runs, &mut st, &rx);
        self.conn.unroute(req);
        result
    }

    fn tree_runs(
        &mut self,
        runs: &[BlockRange],
        st: &mut TreeState,
        rx: &Receiver<Message>,
    ) -> Result<()> {
        let opts = self.scan_options();
        let ctl = self.ctl;
        let vol = self.inner.volume.clone();
        for run in runs {
            // The peer's answers are taken while the local scan waits on its pacing too, so
            // a paced job's descents (and its progress) keep up with the scan.
            scan::scan_range_or(
                &*vol,
                *run,
                opts,
                move |bytes| ctl.pace(bytes),
                Some(rx),
                |event| {
                    match event {
                        ScanEvent::Batch(batch) => self.tree_local(st, batch, rx)?,
                        ScanEvent::Also(m) => self.tree_answer(st, m)?,
                    }
                    Ok(true)
                },
            )?;
        }
        while !st.pending.is_empty() {
            let m = self.recv(rx)?;
            self.tree_answer(st, m)?;
        }
        Ok(())
    }

    /// Asks for the top level of chunks ahead of the local scan, as the window allows, and
    /// at least up to chunk `upto`.
    fn tree_ask_ahead(&mut self, st: &mut TreeState, upto: usize) -> Result<()> {
        let window = st.window.size();
        while st.next < st.chunks.len() && (st.next <= upto || st.pending.len() < window) {
            let Some(range) = st.chunks.get(st.next) else {
                break;
            };
            let (level, bitmap) = st.top(range);
            self.conn.send(&Message::TreeRequest {
                req: st.req,
                algorithm: st.algorithm,
                level,
                group: 0,
                priority: st.priority,
                range,
                nodes: bitmap.clone(),
            })?;
            st.pending
                .insert(range.start.0, Chunk::top(range, level, bitmap, None));
            st.next += 1;
        }
        Ok(())
    }

    /// One batch of the local scan: one chunk's leaves.
    fn tree_local(
        &mut self,
        st: &mut TreeState,
        batch: ScanMap,
        rx: &Receiver<Message>,
    ) -> Result<()> {
        let range = batch.range();
        let idx = st.scan_next;
        if st.chunks.get(idx) != Some(range) {
            return Err(Error::invalid(format!(
                "scan batch {range} is not the next chunk"
            )));
        }
        st.scan_next += 1;
        st.window.scanned();
        let leaves = batch.into_bytes();
        if st.here {
            self.tree_ask_ahead(st, idx)?;
            let chunk = st
                .pending
                .get_mut(&range.start.0)
                .ok_or_else(|| Error::invalid(format!("chunk {range} was not asked for")))?;
            chunk.leaves = Some(leaves);
            st.scanned += 1;
            if let Some(theirs) = chunk.theirs.take() {
                self.tree_step(st, range.start.0, theirs)?;
            }
        } else {
            let (level, bitmap) = st.top(range);
            let mut nodes = bitmap.clone();
            let all = tree::nodes(range.count, level, 0, &bitmap);
            nodes.extend(tree::node_digests(st.algorithm, &leaves, level, all));
            self.conn.send(&Message::TreeDigests {
                req: st.req,
                algorithm: st.algorithm,
                level,
                group: 0,
                priority: st.priority,
                range,
                nodes,
            })?;
            st.pending.insert(
                range.start.0,
                Chunk::top(range, level, bitmap, Some(leaves)),
            );
            st.next += 1;
            st.scanned += 1;
        }
        loop {
            match rx.try_recv() {
                Ok(m) => self.tree_answer(st, m)?,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Err(self.conn.lost("link lost")),
            }
        }
        // Our leaves wait here for the peer: at most a window of them.
        let held = Instant::now();
        while st.scanned >= st.window.size() {
            let m = self.recv(rx)?;
            self.tree_answer(st, m)?;
        }
        st.window.held(held.elapsed());
        Ok(())
    }

    /// A message of the secondary about this compare.
    fn tree_answer(&mut self, st: &mut TreeState, m: Message) -> Result<()> {
        let peer = &self.conn.peer;
        match m {
            Message::TreeDigests {
                algorithm,
                level,
                group,
                range,
                nodes,
                ..
            } if st.here && algorithm == st.algorithm => {
                let Some(c) = st.pending.get_mut(&range.start.0).filter(|c| {
                    c.range == range
                        && c.level == level
                        && c.group == group
                        && c.asked.is_some()
                        && nodes.starts_with(&c.bitmap)
                }) else {
                    return Err(Error::protocol(
                        peer,
                        format!("secondary sent level-{level} digests of {range} that were not asked for"),
                    ));
                };
                let asked = c.asked.take().unwrap_or_else(Instant::now);
                c.waited += asked.elapsed();
                let theirs = nodes[c.bitmap.len()..].to_vec();
                if c.leaves.is_some() {
                    self.tree_step(st, range.start.0, theirs)
                } else {
                    c.theirs = Some(theirs);
                    Ok(())
                }
            }
            Message::TreeRequest {
                algorithm,
                level,
                group,
                range,
                nodes,
                ..
            } if !st.here && algorithm == st.algorithm => {
                let Some(c) = st
                    .pending
                    .get_mut(&range.start.0)
                    .filter(|c| c.range == range && level < c.level && c.asked.is_some())
                else {
                    return Err(Error::protocol(
                        peer,
                        format!("secondary asked for level-{level} digests of {range} out of its descent"),
                    ));
                };
                let leaves = c.leaves.as_deref().unwrap_or_default();
                let mut answer = nodes.clone();
                let marked = tree::nodes(range.count, level, group, &nodes);
                answer.extend(tree::node_digests(st.algorithm, leaves, level, marked));
                c.level = level;
                c.group = group;
                c.bitmap = nodes;
                let now = Instant::now();
                if let Some(asked) = c.asked.replace(now) {
                    c.waited += now - asked;
                }
                self.conn.send(&Message::TreeDigests {
                    req: st.req,
                    algorithm,
                    level,
                    group,
                    priority: st.priority,
                    range,
                    nodes: answer,
                })
            }
            Message::BlockRequest { range: r, .. } if !st.here => {
                let Some(c) = st
                    .pending
                    .range_mut(..=r.start.0)
                    .next_back()
                    .map(|(_, c)| c)
                    .filter(|c| r.end() <= c.range.end())
                else {
                    return Err(Error::protocol(
                        peer,
                        format!("secondary asked for blocks {r} outside the chunks in compare"),
                    ));
                };
                c.requested += r.count;
                self.mismatch(r)
            }
            Message::TreeDone {
                range, mismatched, ..
            } if !st.here => {
                match st.pending.get(&range.start.0) {
                    Some(c) if c.range == range && c.requested == mismatched => {}
                    _ => {
                        return Err(Error::protocol(
                            peer,
                            format!("secondary ended chunk {range} ({mismatched} blocks) that is not in compare as such"),
                        ))
                    }
                }
                self.tree_resolved(st, range.start.0)
            }
            other => Err(Error::protocol(
                peer,
                format!("unexpected {} during a tree compare", other.name()),
            )),
        }
    }

    /// Primary compares: the secondary's digests `theirs` of chunk `start`'s outstanding
    /// nodes against ours; descends into what differs, or ends the chunk.
    fn tree_step(&mut self, st: &mut TreeState, start: u64, theirs: Vec<u8>) -> Result<()> {
        let Some(c) = st.pending.get_mut(&start) else {
            return Ok(());
        };
        let leaves = c.leaves.as_deref().unwrap_or_default();
        let nodes = tree::nodes(c.range.count, c.level, c.group, &c.bitmap);
        let diff = tree::differing(st.algorithm, leaves, c.level, nodes, &theirs);
        match tree::next_level(c.level) {
            Some(child) if !diff.is_empty() => {
                let (group, bitmap) = tree::children(c.range.count, c.level, child, &diff);
                self.conn.send(&Message::TreeRequest {
                    req: st.req,
                    algorithm: st.algorithm,
                    level: child,
                    group,
                    priority: st.priority,
                    range: c.range,
                    nodes: bitmap.clone(),
                })?;
                c.level = child;
                c.group = group;
                c.bitmap = bitmap;
                c.asked = Some(Instant::now());
                Ok(())
            }
            _ => {
                let mut runs = RunBuilder::default();
                for i in diff {
                    runs.push(start + i);
                }
                for r in runs.finish() {
                    self.mismatch(r)?;
                }
                self.tree_resolved(st, start)
            }
        }
    }

    /// Chunk `start`'s descent ended: progress, the window's measure, the checkpoint.
    fn tree_resolved(&mut self, st: &mut TreeState, start: u64) -> Result<()> {
        let Some(c) = st.pending.remove(&start) else {
            return Ok(());
        };
        let mut waited = c.waited;
        if let Some(asked) = c.asked {
            waited += asked.elapsed();
        }
        st.window.resolved(waited);
        if c.leaves.is_some() {
            st.scanned -= 1;
        }
        self.advance(c.range.count);
        if let Some((segment, last)) = st.checkpoints {
            let mark = st.watermark();
            if mark >= last + segment && mark < self.inner.volume.blocks() {
                self.checkpoint(mark);
                st.checkpoints = Some((segment, mark));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_of_runs_are_found_by_index() {
        let c = Chunks::new(&[
            BlockRange::new(0, 2048),
            BlockRange::new(5000, 0),
            BlockRange::new(9000, 1500),
        ]);
        assert_eq!(c.len(), 4);
        assert_eq!(c.get(1), Some(BlockRange::new(1024, 1024)));
        assert_eq!(c.get(2), Some(BlockRange::new(9000, 1024)));
        assert_eq!(c.get(3), Some(BlockRange::new(10024, 476)));
        assert_eq!(c.last(), c.get(3));
        assert_eq!(c.get(4), None);
        assert_eq!(Chunks::new(&[]).last(), None);
    }
}

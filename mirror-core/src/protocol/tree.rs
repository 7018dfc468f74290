//! Hierarchical digests: what a node of a digest tree covers, how its digest is made, the
//! node bitmaps of tree requests and answers, and the levels a descent visits.
//!
//! A tree is built over one *chunk* (a range of at most [`MAX_TREE_BLOCKS`] blocks, named by
//! every tree message). Node `i` at level `L` covers the blocks `start + i·2^L ..` of the
//! chunk, the last node of a level possibly partial. A level-0 node is one block and its
//! digest is the block's digest; a node above is the algorithm's hash over the concatenated
//! level-0 digests of its blocks (not of its children's digests, so any level can be made
//! straight from the leaves, and both sides agree on every level whatever levels were
//! visited before). Invariant: a node digest depends only on the algorithm, the chunk's
//! start, the level, the node index and the blocks' contents.
//!
//! # The descent, and why these levels
//!
//! The comparing side asks for (or sends) level [`DESCENT`]`[0]` of a chunk (one node per
//! 1,024-block chunk: an identical chunk costs one digest), then for each level in turn only
//! the children of the nodes that differ, down to level 0, whose differing nodes are the
//! blocks to repair. A request names the nodes it wants as a bitmap of groups of 2^`group`
//! nodes — the parents whose children it wants — so asking for the leaves under 10
//! differing level-2 nodes of a chunk costs 32 bytes of bitmap, not 128.
//!
//! Modelled with 1% of 4 KiB blocks differing at random, and 80 bytes of frames per request
//! and answer, sha1 digest and frame bytes over differing bytes: levels 10,6,3,0 (fan-out
//! 8–16, 4 round trips) 8.3%; 10,6,4,2,0 (fan-out 4–16, 5) 7.2%; 10,7,4,2,0 7.5%;
//! 10,8,6,4,2,0 (6) 7.5%; 10,5,2,0 (4) 7.9%. Measured on a 1 GiB pair (`mirror bench-table`),
//! 10,6,3,0 put 1.096 bytes on the wire per differing byte with sha1 (the repair writes'
//! frames and acknowledgements add about 1.3%), too close to 1.10; 10,6,4,2,0 saves about a
//! point for one round trip more per chunk, which the window overlaps across chunks, so a job
//! pays it once. A top of level 10 keeps an identical chunk at one digest: an identical 1 GiB
//! pair costs 22–26 KiB on the wire with any algorithm. Finer fan-outs than 4 cost more
//! nodes than they save.

use crate::storage::digest::Algorithm;

/// Most blocks of the chunk a tree message names (level-0 answers stay within one frame:
/// 4,096 sha1 digests are 80 KiB).
pub const MAX_TREE_BLOCKS: u64 = 4096;
/// Highest level a tree message may name (one node covers a whole chunk), counting its
/// groups.
pub const MAX_TREE_LEVEL: u8 = 12;
/// Levels a descent visits, top first; the last is 0.
pub const DESCENT: [u8; 5] = [10, 6, 4, 2, 0];

/// Nodes at `level` of a chunk of `count` blocks.
pub fn nodes_at(count: u64, level: u8) -> u64 {
    count.div_ceil(1u64 << level)
}

/// Bytes of the bitmap of a chunk of `count` blocks whose bits stand for groups of
/// 2^`group` nodes at `level` (a bit per node of level `level + group`).
pub fn bitmap_len(count: u64, level: u8, group: u8) -> usize {
    nodes_at(count, level + group).div_ceil(8) as usize
}

/// The level a descent visits after `level`: the next of [`DESCENT`] below it (0 below any
/// level the schedule does not name); None at level 0.
pub fn next_level(level: u8) -> Option<u8> {
    if level == 0 {
        return None;
    }
    Some(DESCENT.iter().copied().find(|l| *l < level).unwrap_or(0))
}

/// Indices of the bits set in a bitmap, in order.
pub fn marked(bitmap: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bitmap.iter().enumerate().flat_map(|(byte, b)| {
        (0..8u64)
            .filter(move |bit| b & (1 << bit) != 0)
            .map(move |bit| byte as u64 * 8 + bit)
    })
}

/// The nodes at `level` of a chunk of `count` blocks in the groups of 2^`group` marked in
/// `bitmap`, in order (the last group may be partial).
pub fn nodes<'a>(
    count: u64,
    level: u8,
    group: u8,
    bitmap: &'a [u8],
) -> impl Iterator<Item = u64> + 'a {
    let last = nodes_at(count, level);
    marked(bitmap).flat_map(move |g| (g << group)..((g + 1) << group).min(last))
}

/// A bitmap of `bits` bits with `set` set.
pub fn bitmap(bits: u64, set: impl IntoIterator<Item = u64>) -> Vec<u8> {
    let mut b = vec![0u8; bits.div_ceil(8) as usize];
    for i in set {
        b[(i / 8) as usize] |= 1 << (i % 8);
    }
    b
}

/// Checks the bitmap of a tree message about `count` blocks at `level` in groups of
/// 2^`group` nodes: exactly one bit per group (rounded up to a byte, the spare bits clear),
/// at least one marked. Returns the number of nodes marked.
pub fn check_bitmap(count: u64, level: u8, group: u8, bitmap: &[u8]) -> Result<u64, String> {
    if u16::from(level) + u16::from(group) > u16::from(MAX_TREE_LEVEL) {
        return Err(format!(
            "tree level {level} in groups of 2^{group} (level and group 0 to {MAX_TREE_LEVEL} together)"
        ));
    }
    let groups = nodes_at(count, level + group);
    let want = groups.div_ceil(8) as usize;
    if bitmap.len() != want {
        return Err(format!(
            "node bitmap of {} bytes for {groups} groups at level {level} ({want} bytes)",
            bitmap.len(),
        ));
    }
    let spare = (want as u64 * 8 - groups) as u32;
    if spare > 0 && bitmap[want - 1] >> (8 - spare) != 0 {
        return Err(format!(
            "node bitmap marks groups past the last of {groups} at level {level}"
        ));
    }
    let n = nodes(count, level, group, bitmap).count() as u64;
    if n == 0 {
        return Err("node bitmap marks no node".into());
    }
    Ok(n)
}

/// Digest of node `i` at `level` of a chunk whose level-0 digests are `leaves`.
pub fn node_digest(algorithm: Algorithm, leaves: &[u8], level: u8, i: u64, out: &mut Vec<u8>) {
    let w = algorithm.digest_len();
    let blocks = (leaves.len() / w) as u64;
    let first = (i << level).min(blocks) as usize;
    let end = ((i + 1) << level).min(blocks) as usize;
    let span = &leaves[first * w..end * w];
    if level == 0 {
        out.extend_from_slice(span);
    } else {
        let at = out.len();
        out.resize(at + w, 0);
        algorithm.digest_into(span, &mut out[at..]);
    }
}

/// Digests of `nodes` at `level`, concatenated in order.
pub fn node_digests(
    algorithm: Algorithm,
    leaves: &[u8],
    level: u8,
    nodes: impl Iterator<Item = u64>,
) -> Vec<u8> {
    let mut out = Vec::new();
    for i in nodes {
        node_digest(algorithm, leaves, level, i, &mut out);
    }
    out
}

/// Compares `theirs` (digests of `nodes` at `level`, in order) with the same nodes of our
/// `leaves`; returns the nodes that differ.
pub fn differing(
    algorithm: Algorithm,
    leaves: &[u8],
    level: u8,
    nodes: impl Iterator<Item = u64>,
    theirs: &[u8],
) -> Vec<u64> {
    let w = algorithm.digest_len();
    let mut ours = Vec::with_capacity(w);
    nodes
        .zip(theirs.chunks_exact(w))
        .filter_map(|(i, t)| {
            ours.clear();
            node_digest(algorithm, leaves, level, i, &mut ours);
            (ours != t).then_some(i)
        })
        .collect()
}

/// The request for the children at level `child` of `parents` at `level`, in a chunk of
/// `count` blocks: the group (log2 of the fan-out) and the bitmap of the parents.
pub fn children(count: u64, level: u8, child: u8, parents: &[u64]) -> (u8, Vec<u8>) {
    (
        level - child,
        bitmap(nodes_at(count, level), parents.iter().copied()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmaps_mark_exactly_the_groups_of_the_level() {
        // 1,000 blocks at level 3: 125 nodes, 16 bytes, 3 spare bits.
        let b = bitmap(125, [0, 9, 124]);
        assert_eq!(check_bitmap(1000, 3, 0, &b), Ok(3));
        assert_eq!(nodes(1000, 3, 0, &b).collect::<Vec<_>>(), vec![0, 9, 124]);
        let mut past = b.clone();
        past[15] |= 0x80;
        assert!(
            check_bitmap(1000, 3, 0, &past).is_err(),
            "a node past the end"
        );
        assert!(check_bitmap(1000, 3, 0, &b[..15]).is_err(), "too short");
        let mut long = b.clone();
        long.push(0);
        assert!(check_bitmap(1000, 3, 0, &long).is_err(), "too long");
        assert!(
            check_bitmap(1000, 3, 0, &[0; 16]).is_err(),
            "nothing marked"
        );
        assert!(check_bitmap(1000, MAX_TREE_LEVEL + 1, 0, &[1]).is_err());
        assert!(
            check_bitmap(1000, 6, 7, &[1]).is_err(),
            "level and group past the top"
        );
        assert_eq!(check_bitmap(1000, 10, 0, &[1]), Ok(1));
        // Groups of 8 leaves: the last group (blocks 992..1000) is whole, 125 groups.
        let g = bitmap(125, [1, 124]);
        assert_eq!(check_bitmap(1000, 0, 3, &g), Ok(16));
        assert_eq!(
            nodes(1000, 0, 3, &g).collect::<Vec<_>>(),
            [(8..16).collect::<Vec<_>>(), (992..1000).collect()].concat()
        );
        // 1,001 blocks: the last group holds one leaf.
        assert_eq!(check_bitmap(1001, 0, 3, &bitmap(126, [125])), Ok(1));
    }

    #[test]
    fn a_node_hashes_its_leaves_and_the_last_may_be_partial() {
        let alg = Algorithm::Sha1;
        let leaves: Vec<u8> = (0..10u8).flat_map(|b| [b; 20]).collect();
        let mut d = Vec::new();
        node_digest(alg, &leaves, 3, 1, &mut d);
        assert_eq!(d, alg.digest(&leaves[8 * 20..]));
        d.clear();
        node_digest(alg, &leaves, 0, 4, &mut d);
        assert_eq!(d, vec![4; 20]);
        let mut other = leaves.clone();
        other[9 * 20] ^= 1;
        let theirs = node_digests(alg, &other, 3, [0, 1].into_iter());
        assert_eq!(
            differing(alg, &leaves, 3, [0, 1].into_iter(), &theirs),
            vec![1]
        );
        let (group, b) = children(10, 3, 0, &[1]);
        assert_eq!(nodes(10, 0, group, &b).collect::<Vec<_>>(), vec![8, 9]);
    }

    #[test]
    fn the_descent_ends_at_the_leaves() {
        assert_eq!(next_level(10), Some(6));
        assert_eq!(next_level(6), Some(4));
        assert_eq!(next_level(4), Some(2));
        assert_eq!(next_level(3), Some(2));
        assert_eq!(next_level(2), Some(0));
        assert_eq!(next_level(1), Some(0));
        assert_eq!(next_level(0), None);
        assert_eq!(*DESCENT.last().unwrap_or(&1), 0);
    }
}

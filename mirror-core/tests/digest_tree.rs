//! Hierarchical digest exchange end to end: identical volumes cost a handful of digests,
//! scattered differences are found exactly in both compare directions and every algorithm
//! (the last, partial node of a volume included), a secondary of the flat protocol still
//! works, and a link cut in the middle of a descent resumes from the checkpoint.

mod common;

use std::time::Duration;

use common::frame_proxy::{CutAt, Dir, FrameProxy};
use common::*;
use mirror_core::wire::kind;
use mirror_core::{Algorithm, CompareSide, JobOptions, Primary, Report, ResyncMode, Volume};

const MIB: u64 = 1 << 20;

fn wire(r: &Report) -> u64 {
    r.bytes_sent + r.bytes_received
}

fn open(pair: &Pair, side: CompareSide, algorithm: Algorithm, peer: Option<String>) -> Primary {
    let mut c = pair.config();
    c.compare = side;
    c.algorithm = algorithm;
    c.auto_resync = false;
    if let Some(p) = peer {
        c.peer = p;
    }
    let p = pair.open_primary(c);
    p.wait_connected(Duration::from_secs(60)).unwrap();
    p
}

#[test]
fn identical_volumes_cost_a_handful_of_digests_in_every_algorithm_and_direction() {
    for side in [CompareSide::Primary, CompareSide::Secondary] {
        for alg in Algorithm::ALL {
            // 8 chunks of 1,024 blocks; flat, this verify would cost 8,192 digests.
            let pair = Pair::new(32 * MIB, 7);
            std::fs::copy(&pair.primary_path, &pair.secondary_path).unwrap();
            let p = open(&pair, side, alg, None);
            let v = p.verify().unwrap();
            assert_eq!(v.mismatched, 0, "{side:?} {alg}: {v:?}");
            assert_eq!(v.blocks, pair.primary_vol.blocks());
            assert!(
                wire(&v) < 4096,
                "{side:?} {alg}: {} bytes on the wire for an identical pair",
                wire(&v)
            );
        }
    }
}

#[test]
fn scattered_differences_and_the_last_partial_node_are_found_exactly_both_ways() {
    let mut seed = 300;
    for side in [CompareSide::Primary, CompareSide::Secondary] {
        for alg in Algorithm::ALL {
            seed += 1;
            // Three whole chunks and 1,001 blocks, the last one 512 bytes: no level's last
            // node is whole.
            let pair = Pair::new((3 * 1024 + 1000) * BS + 512, seed);
            std::fs::copy(&pair.primary_path, &pair.secondary_path).unwrap();
            let blocks = pair.secondary_vol.blocks();
            let mut hit = corrupt(&*pair.secondary_vol, 40, seed);
            pair.secondary_vol
                .write_at((blocks - 1) * BS, &[0xa5; 512])
                .unwrap();
            hit.push(blocks - 1);
            hit.sort_unstable();
            hit.dedup();
            let differing = hit.len() as u64;
            assert_eq!(pair.differing_blocks() as u64, differing);

            let p = open(&pair, side, alg, None);
            let v = p.verify().unwrap();
            assert_eq!(v.mismatched, differing, "{side:?} {alg}: {v:?}");
            let flat = blocks * alg.digest_len() as u64;
            assert!(
                wire(&v) < flat / 2 + 4096,
                "{side:?} {alg}: verify put {} bytes on the wire; flat digests alone are {flat}",
                wire(&v)
            );
            let r = p
                .resync_with(&JobOptions {
                    full: true,
                    ..Default::default()
                })
                .unwrap();
            assert_eq!(r.mode, ResyncMode::FullScan);
            assert_eq!(r.mismatched, differing, "{side:?} {alg}: {r:?}");
            assert_eq!(r.blocks_sent, differing);
            assert!(
                pair.equal(),
                "{side:?} {alg}: {} blocks differ",
                pair.differing_blocks()
            );
            assert_eq!(p.verify().unwrap().mismatched, 0);
        }
    }
}

#[test]
fn a_secondary_of_the_flat_protocol_is_spoken_to_flat() {
    for side in [CompareSide::Primary, CompareSide::Secondary] {
        let pair = Pair::new(8 * MIB, 21);
        std::fs::copy(&pair.primary_path, &pair.secondary_path).unwrap();
        let hit = corrupt(&*pair.secondary_vol, 10, 22);
        let differing = pair.differing_blocks() as u64;
        assert!(differing > 0 && differing <= hit.len() as u64);
        // Plays a version-2 secondary at Hello: the primary offers 3, is refused, offers 2.
        let proxy = FrameProxy::start(pair.secondary.local_addr().unwrap());
        proxy.speak_at_most(2);
        let p = open(&pair, side, Algorithm::Sha1, Some(proxy.addr.to_string()));
        assert!(proxy.refused() >= 1, "the primary never offered version 3");
        let v = p.verify().unwrap();
        assert_eq!(v.mismatched, differing, "{side:?}: {v:?}");
        // Flat: one digest per block crossed the link.
        assert!(
            wire(&v) >= pair.primary_vol.blocks() * 20,
            "{side:?}: {} bytes is not a flat compare",
            wire(&v)
        );
        let r = p
            .resync_with(&JobOptions {
                full: true,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(r.mismatched, differing);
        assert!(pair.equal(), "{side:?}");
    }
}

#[test]
fn link_cut_during_a_tree_descent_resumes_from_the_checkpoint() {
    for side in [CompareSide::Primary, CompareSide::Secondary] {
        // 24 chunks, about one block of each differing: the descent, not the repair, is
        // what the link carries.
        let pair = Pair::new(96 * MIB, 31);
        std::fs::copy(&pair.primary_path, &pair.secondary_path).unwrap();
        let blocks = pair.primary_vol.blocks();
        for chunk in 0..blocks / 1024 {
            pair.secondary_vol
                .write_at((chunk * 1024 + 500) * BS, &[0x5a; BS as usize])
                .unwrap();
        }
        let proxy = FrameProxy::start(pair.secondary.local_addr().unwrap());
        // Primary compares: the secondary answers with TreeDigests (4 a chunk); secondary
        // compares: it asks with TreeRequests (3 a chunk). Cut well into the descent, after
        // some chunks ended (the first ends by about the 50th answer).
        let (k, n) = match side {
            CompareSide::Primary => (kind::TREE_DIGESTS, 80),
            CompareSide::Secondary => (kind::TREE_REQUEST, 60),
        };
        proxy.cut_at(CutAt::BeforeKind(Dir::Back, k, n));
        let mut c = pair.config();
        c.peer = proxy.addr.to_string();
        c.compare = side;
        let p = pair.open_primary(c);
        wait_for(60, "the cut", || proxy.cuts() >= 1);
        wait_coherent(&p);
        let r = p.status().last_report.expect("the resumed scan's report");
        assert_eq!(r.mode, ResyncMode::FullScan, "{side:?}: {r:?}");
        assert!(
            r.blocks < blocks,
            "{side:?}: the scan after the cut started over ({} of {blocks} blocks)",
            r.blocks
        );
        assert!(
            pair.equal(),
            "{side:?}: {} blocks differ",
            pair.differing_blocks()
        );
    }
}

#[test]
fn a_paced_descent_keeps_its_progress_up_with_its_scan() {
    for side in [CompareSide::Primary, CompareSide::Secondary] {
        // Six chunks, every block different, read at 6 MiB/s: a chunk about every 0.7 s, the
        // job at least four seconds. Each chunk's descent takes five round trips; were they
        // answered only as the next chunk is read, no chunk would end before the scan did
        // and progress would jump from nothing to done at the end.
        let pair = Pair::new(24 * MIB, 12);
        let mut c = pair.config();
        c.compare = side;
        c.auto_resync = false;
        c.resync_min_rate = 6.0;
        c.resync_max_rate = Some(6.0);
        let p = pair.open_primary(c);
        p.wait_connected(Duration::from_secs(60)).unwrap();
        let start = std::time::Instant::now();
        let first = std::sync::Mutex::new(None);
        let progress = |pr: mirror_core::Progress| {
            if pr.done > 0 {
                first.lock().unwrap().get_or_insert(start.elapsed());
            }
        };
        let r = p
            .resync_with(&JobOptions {
                full: true,
                progress: Some(&progress),
                ..Default::default()
            })
            .unwrap();
        let took = start.elapsed();
        assert_eq!(r.mode, ResyncMode::FullScan);
        assert_eq!(r.mismatched, pair.primary_vol.blocks());
        let first = first.into_inner().unwrap().expect("progress was reported");
        // Slowness stretches the job as well as the first chunk's descent; the pacing keeps
        // the job at four seconds or more.
        assert!(
            first.as_secs_f64() < 0.6 * took.as_secs_f64(),
            "{side:?}: first progress after {first:?} of a {took:?} job"
        );
        p.close().unwrap();
        assert!(pair.equal());
    }
}

#[test]
fn a_later_job_on_the_same_link_reads_every_chunk_again() {
    for side in [CompareSide::Primary, CompareSide::Secondary] {
        // Two identical chunks: the first verify leaves what it read of them on the secondary.
        let pair = Pair::new(8 * MIB, 13);
        std::fs::copy(&pair.primary_path, &pair.secondary_path).unwrap();
        let p = open(&pair, side, Algorithm::Crc32, None);
        assert_eq!(p.verify().unwrap().mismatched, 0);
        // Silent corruption of the secondary, found by the next verify on the same link.
        let mut bad = corrupt(&*pair.secondary_vol, 5, 14);
        bad.sort_unstable();
        bad.dedup();
        let r = p.verify().unwrap();
        assert_eq!(r.mismatched, bad.len() as u64, "{side:?}: {r:?}");
        assert_eq!(p.status().connections, 1, "one link for both verifies");
    }
}

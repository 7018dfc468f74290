//! End-to-end scenarios of the engine over real TCP on loopback and real files.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mirror_core::{
    Algorithm, CompareSide, JobOptions, LinkState, PeriodicScan, ReplicationMode, ResyncMode,
    Volume, WriteOutcome,
};
use rand::Rng;

const MIB: u64 = 1 << 20;

#[test]
fn first_connection_resyncs_by_full_scan_then_sync_writes_replicate() {
    let pair = Pair::new(4 * MIB + 1000, 1);
    let p = pair.open_primary(pair.config());
    wait_coherent(&p);
    let r = p.status().last_report.expect("a resync ran");
    assert_eq!(r.mode, ResyncMode::FullScan);
    assert_eq!(r.blocks, pair.primary_vol.blocks());
    assert!(pair.equal(), "volumes differ after the full scan");

    let mut rng = rng(2);
    for _ in 0..200 {
        let b = rng.gen_range(0..pair.primary_vol.blocks() - 1);
        let data = random_bytes(&mut rng, BS as usize);
        assert_eq!(p.write(b * BS, &data).unwrap(), WriteOutcome::Replicated);
        // Sync mode: the secondary has it when write returns.
        let mut got = vec![0; BS as usize];
        pair.secondary_vol.read_at(b * BS, &mut got).unwrap();
        assert_eq!(got, data);
    }
    // The partial last block replicates too.
    let last = (pair.primary_vol.blocks() - 1) * BS;
    assert_eq!(
        p.write(last, &[0x5a; 1000]).unwrap(),
        WriteOutcome::Replicated
    );
    assert!(pair.equal());
}

#[test]
fn async_mode_queues_writes_and_they_arrive_in_order() {
    let pair = Pair::new(2 * MIB, 3);
    let mut c = pair.config();
    c.mode = ReplicationMode::Async;
    let p = pair.open_primary(c);
    wait_coherent(&p);
    let mut rng = rng(4);
    // Many overwrites of a few blocks: only the order makes the last one win.
    for i in 0..2000u32 {
        let b = rng.gen_range(0..8u64);
        let mut data = random_bytes(&mut rng, BS as usize);
        data[..4].copy_from_slice(&i.to_le_bytes());
        let out = p.write(b * BS, &data).unwrap();
        assert!(
            matches!(out, WriteOutcome::Queued | WriteOutcome::Degraded),
            "{out:?}"
        );
    }
    p.resync().unwrap();
    assert!(pair.equal());
}

#[test]
fn link_cut_during_writes_resyncs_from_dirty_map() {
    let pair = Pair::new(8 * MIB, 5);
    let p = pair.open_primary(pair.config());
    wait_coherent(&p);
    pair.proxy.cut();
    wait_for(10, "link down", || {
        p.status().state == LinkState::Disconnected
    });
    let mut rng = rng(6);
    let mut written = 0u64;
    for _ in 0..100 {
        let b = rng.gen_range(0..pair.primary_vol.blocks());
        assert_eq!(
            p.write(b * BS, &random_bytes(&mut rng, BS as usize))
                .unwrap(),
            WriteOutcome::Degraded
        );
        written += BS;
    }
    let s = p.status();
    assert!(s.map_valid);
    assert!(s.dirty_regions > 0 && s.dirty_regions <= 100, "{s:?}");
    assert!(!pair.equal());
    pair.proxy.restore();
    wait_coherent(&p);
    let r = p.status().last_report.unwrap();
    assert_eq!(r.mode, ResyncMode::DirtyMap, "{r:?}");
    assert!(r.mismatched > 0 && r.mismatched <= 100, "{r:?}");
    assert!(r.blocks_sent <= 100, "{r:?}");
    // Only the changed blocks travel, plus digests and framing.
    assert!(
        r.bytes_sent < written * 2,
        "{} bytes sent for {written} bytes written",
        r.bytes_sent
    );
    assert!(pair.equal());
}

#[test]
fn primary_restart_loses_the_map_and_falls_back_to_full_scan() {
    let pair = Pair::new(4 * MIB, 7);
    let p = pair.open_primary(pair.config());
    wait_coherent(&p);
    p.close().unwrap();
    drop(p);
    // Writes that bypassed mirror while no primary ran.
    corrupt(&*pair.primary_vol, 20, 8);
    let p = pair.open_primary(pair.config());
    wait_coherent(&p);
    let r = p.status().last_report.unwrap();
    assert_eq!(r.mode, ResyncMode::FullScan);
    assert!(r.mismatched >= 1 && r.mismatched <= 20, "{r:?}");
    assert!(pair.equal());
}

#[test]
fn secondary_stop_and_serve_keeps_the_map_but_a_new_secondary_forces_full_scan() {
    // A fixed port, so the secondary comes back where the proxy points.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pair = Pair::with(
        2 * MIB,
        9,
        mirror_core::SecondaryConfig::new(format!("127.0.0.1:{port}")),
    );
    let p = pair.open_primary(pair.config());
    wait_coherent(&p);
    // stop + serve on the same handle keeps the coherence record: dirty-map resync.
    pair.secondary.stop();
    wait_for(10, "link down", || {
        p.status().state == LinkState::Disconnected
    });
    assert_eq!(
        p.write(0, &[1u8; BS as usize]).unwrap(),
        WriteOutcome::Degraded
    );
    pair.secondary.serve().unwrap();
    wait_for(20, "dirty-map resync", || {
        p.status()
            .last_report
            .is_some_and(|r| r.mode == ResyncMode::DirtyMap)
    });
    wait_coherent(&p);
    assert!(pair.equal());

    // A new secondary process on the same file knows nothing of this primary: full scan.
    pair.secondary.stop();
    wait_for(10, "link down", || {
        p.status().state == LinkState::Disconnected
    });
    p.write(BS, &[2u8; BS as usize]).unwrap();
    let fresh = mirror_core::Secondary::new(
        pair.secondary_vol.clone(),
        mirror_core::SecondaryConfig::new(format!("127.0.0.1:{port}")),
    )
    .unwrap();
    fresh.serve().unwrap();
    wait_for(20, "full-scan resync", || {
        p.status()
            .last_report
            .is_some_and(|r| r.mode == ResyncMode::FullScan && r.blocks_sent >= 1)
    });
    wait_coherent(&p);
    assert!(pair.equal());
}

#[test]
fn periodic_scan_finds_and_repairs_silent_corruption() {
    let pair = Pair::new(4 * MIB, 10);
    let mut c = pair.config();
    // A report stands until the next scan's replaces it, a second later at least: each
    // poll sees it, however slowly the machine runs the comparison of the files.
    c.periodic = Some(PeriodicScan {
        interval: Duration::from_secs(1),
        rate_mib_s: 200.0,
    });
    let p = pair.open_primary(c);
    wait_coherent(&p);
    corrupt(&*pair.secondary_vol, 10, 11);
    assert!(!pair.equal());
    // The scan that finds the corruption repairs it, and a later one finds nothing: a
    // report that found it is collected whenever it is seen.
    let mut found = false;
    wait_for(
        120,
        "a periodic report of the corruption, and its repair",
        || {
            found |= p
                .status()
                .last_report
                .is_some_and(|r| r.mode == ResyncMode::Periodic && r.mismatched > 0);
            found && pair.equal()
        },
    );
}

fn full_resync_over(side: CompareSide, algorithm: Algorithm, seed: u64) {
    let pair = Pair::new(4 * MIB + 512, seed);
    // Make the secondary mostly equal, then diverge a few blocks.
    std::fs::copy(&pair.primary_path, &pair.secondary_path).unwrap();
    let hit = corrupt(&*pair.secondary_vol, 16, seed + 1);
    let mut c = pair.config();
    c.compare = side;
    c.algorithm = algorithm;
    c.auto_resync = false;
    let p = pair.open_primary(c);
    p.wait_connected(Duration::from_secs(60)).unwrap();
    let v = p.verify().unwrap();
    let mut distinct = hit.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        v.mismatched,
        distinct.len() as u64,
        "{side:?} {algorithm}: {v:?}"
    );
    assert!(!pair.equal(), "verify must not repair");
    let r = p
        .resync_with(&JobOptions {
            full: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.mode, ResyncMode::FullScan);
    assert_eq!(r.mismatched, distinct.len() as u64);
    assert_eq!(r.blocks_sent, distinct.len() as u64);
    assert!(pair.equal(), "{side:?} {algorithm}");
    let v = p.verify().unwrap();
    assert_eq!(v.mismatched, 0);
}

#[test]
fn both_compare_sides_and_all_algorithms_repair_exactly_the_differing_blocks() {
    let mut seed = 100;
    for side in [CompareSide::Primary, CompareSide::Secondary] {
        for alg in Algorithm::ALL {
            full_resync_over(side, alg, seed);
            seed += 10;
        }
    }
}

fn writes_during_resync_end_equal(seed: u64, side: CompareSide, async_mode: bool) {
    let pair = Pair::new(4 * MIB, seed);
    let mut c = pair.config();
    c.compare = side;
    if async_mode {
        c.mode = ReplicationMode::Async;
        c.queue_depth = 16;
    }
    let p = Arc::new(pair.open_primary(c));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (p, stop) = (p.clone(), stop.clone());
        let blocks = pair.primary_vol.blocks();
        std::thread::spawn(move || {
            let mut r = rng(seed ^ 0xabc);
            while !stop.load(Ordering::Relaxed) {
                let b = r.gen_range(0..blocks);
                let n = r.gen_range(1..=4u64).min(blocks - b);
                p.write(b * BS, &random_bytes(&mut r, (n * BS) as usize))
                    .unwrap();
            }
        })
    };
    // The initial full scan runs while the writer writes.
    wait_for(30, "first resync", || p.status().last_report.is_some());
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    p.resync().unwrap();
    assert!(
        pair.equal(),
        "seed {seed}: {} blocks differ",
        pair.differing_blocks()
    );
}

#[test]
fn random_writes_during_resync_end_byte_equal_over_many_seeds() {
    for seed in 0..6 {
        let side = if seed % 2 == 0 {
            CompareSide::Primary
        } else {
            CompareSide::Secondary
        };
        writes_during_resync_end_equal(1000 + seed, side, seed % 3 == 2);
    }
}

fn cut_mid_resync(seed: u64, full: bool) {
    let pair = Pair::new(8 * MIB, seed);
    let p = Arc::new(pair.open_primary(pair.config()));
    if !full {
        wait_coherent(&p);
        pair.proxy.cut();
        wait_for(10, "link down", || {
            p.status().state == LinkState::Disconnected
        });
        let mut r = rng(seed);
        for _ in 0..400 {
            let b = r.gen_range(0..pair.primary_vol.blocks());
            p.write(b * BS, &random_bytes(&mut r, BS as usize)).unwrap();
        }
        pair.proxy.restore();
    }
    let dirty_before = p.status().dirty_regions;
    // Let the resync start, then withhold the secondary's answers: nothing can be
    // acknowledged, so no dirty bit may be cleared (and the map may not become valid).
    wait_for(10, "connected", || {
        p.status().state != LinkState::Disconnected
    });
    pair.proxy.hold_back(true);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (p, stop) = (p.clone(), stop.clone());
        let blocks = pair.primary_vol.blocks();
        std::thread::spawn(move || {
            let mut r = rng(seed + 1);
            while !stop.load(Ordering::Relaxed) {
                let b = r.gen_range(0..blocks);
                p.write(b * BS, &random_bytes(&mut r, BS as usize)).unwrap();
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let s = p.status();
    if full {
        assert!(!s.map_valid, "map became valid without an ack: {s:?}");
    } else {
        assert!(
            s.dirty_regions >= dirty_before,
            "dirty regions fell from {dirty_before} to {} without acks",
            s.dirty_regions
        );
    }
    pair.proxy.cut();
    wait_for(10, "link down", || {
        p.status().state == LinkState::Disconnected
    });
    let s = p.status();
    if !full {
        assert!(s.dirty_regions >= dirty_before, "{s:?}");
    }
    pair.proxy.restore();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    wait_coherent(&p);
    let r = p.resync().unwrap();
    assert!(r.mismatched == 0, "{r:?}");
    assert!(pair.equal(), "{} blocks differ", pair.differing_blocks());
}

#[test]
fn link_cut_mid_dirty_map_resync_with_busy_writer_finishes_on_next_connection() {
    cut_mid_resync(2000, false);
}

#[test]
fn link_cut_mid_full_scan_with_busy_writer_finishes_on_next_connection() {
    cut_mid_resync(2100, true);
}

#[test]
fn stalled_link_is_detected_by_heartbeat_and_writes_degrade_to_the_map() {
    let pair = Pair::new(MIB, 12);
    let mut c = pair.config();
    c.link_timeout = Duration::from_millis(600);
    let p = pair.open_primary(c);
    wait_coherent(&p);
    pair.proxy.stall(true);
    wait_for(10, "stall detected", || {
        p.status().state == LinkState::Disconnected
    });
    assert!(
        p.status().last_error.unwrap().contains("no frame"),
        "{:?}",
        p.status().last_error
    );
    // Still refusing connections while stalled: the write goes to the dirty map.
    pair.proxy.cut();
    assert_eq!(
        p.write(0, &[9u8; BS as usize]).unwrap(),
        WriteOutcome::Degraded
    );
    pair.proxy.restore();
    wait_coherent(&p);
    assert!(pair.equal());
}

#[test]
fn verify_under_live_writes_reports_no_false_mismatch() {
    let pair = Pair::new(4 * MIB, 13);
    let p = Arc::new(pair.open_primary(pair.config()));
    wait_coherent(&p);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (p, stop) = (p.clone(), stop.clone());
        let blocks = pair.primary_vol.blocks();
        std::thread::spawn(move || {
            let mut r = rng(14);
            while !stop.load(Ordering::Relaxed) {
                let b = r.gen_range(0..blocks);
                p.write(b * BS, &random_bytes(&mut r, BS as usize)).unwrap();
            }
        })
    };
    for _ in 0..3 {
        let v = p.verify().unwrap();
        assert_eq!(v.mismatched, 0, "{v:?}");
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
}

#[test]
fn mark_dirty_makes_the_next_resync_compare_that_range() {
    let pair = Pair::new(2 * MIB, 15);
    let mut c = pair.config();
    c.auto_resync = false;
    let p = pair.open_primary(c);
    p.wait_connected(Duration::from_secs(60)).unwrap();
    p.resync().unwrap(); // full scan: map becomes valid
                         // A write that bypassed mirror, then declared.
    pair.primary_vol
        .write_at(10 * BS, &[3u8; BS as usize])
        .unwrap();
    p.mark_dirty(10 * BS, BS).unwrap();
    assert!(p.status().dirty_regions == 1);
    let r = p.resync().unwrap();
    assert_eq!(r.mode, ResyncMode::DirtyMap);
    assert_eq!(r.blocks_sent, 1);
    assert!(pair.equal());
    assert!(p.mark_dirty(2 * MIB, 1).is_err());
}

#[test]
fn bad_caller_input_is_refused_and_changes_nothing() {
    let pair = Pair::new(MIB, 16);
    let p = pair.open_primary(pair.config());
    wait_coherent(&p);
    let before = read(&pair.primary_path);
    for (off, len) in [
        (1u64, BS),
        (0, BS + 1),
        (MIB, BS),
        (MIB - BS, 2 * BS),
        (u64::MAX - 4095, BS),
    ] {
        let e = p.write(off, &vec![1u8; len as usize]).unwrap_err();
        assert_eq!(e.kind(), mirror_core::ErrorKind::InvalidArgument, "{e}");
    }
    assert_eq!(before, read(&pair.primary_path));
    p.close().unwrap();
    assert_eq!(
        p.write(0, &[0; 4096]).unwrap_err().kind(),
        mirror_core::ErrorKind::Closed
    );
    assert_eq!(
        p.verify().unwrap_err().kind(),
        mirror_core::ErrorKind::Closed
    );
}

#[test]
fn periodic_report_counts_divergence_not_writes_racing_the_scan() {
    let pair = Pair::new(8 * MIB, 17);
    let mut c = pair.config();
    c.periodic = Some(PeriodicScan {
        interval: Duration::from_secs(1),
        rate_mib_s: 400.0,
    });
    let p = Arc::new(pair.open_primary(c));
    wait_coherent(&p);
    let blocks = pair.primary_vol.blocks();
    // A busy writer over the first half, through mirror.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (p, stop) = (p.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut r = rng(18);
            while !stop.load(Ordering::Relaxed) {
                let b = r.gen_range(0..blocks / 2);
                p.write(b * BS, &random_bytes(&mut r, BS as usize)).unwrap();
            }
        })
    };
    // Let a periodic scan or two run under the writes. Its hashing runs at idle priority,
    // so a busy machine slows it down a lot.
    wait_for(180, "a periodic report", || {
        p.status()
            .last_report
            .is_some_and(|r| r.mode == ResyncMode::Periodic)
    });
    // Silent corruption of 12 distinct blocks in the second half, while the link is down: a
    // scan that was running then fails, so every scan that reports after it started after
    // the corruption and sees all of it.
    pair.proxy.cut();
    wait_for(30, "link down", || {
        p.status().state == LinkState::Disconnected
    });
    let mut r = rng(19);
    let mut hit = std::collections::BTreeSet::new();
    while hit.len() < 12 {
        hit.insert(r.gen_range(blocks / 2..blocks - 1));
    }
    for b in &hit {
        pair.secondary_vol
            .write_at(b * BS, &random_bytes(&mut r, BS as usize))
            .unwrap();
    }
    pair.proxy.restore();
    // The resync on reconnection follows the dirty map (the first half); the first periodic
    // scan after it finds and repairs the corruption, the next one finds none. The interval
    // leaves a second to see the first one's report.
    wait_for(180, "a periodic report that found the corruption", || {
        p.status()
            .last_report
            .is_some_and(|r| r.mode == ResyncMode::Periodic && r.mismatched > 0)
    });
    let r = p.status().last_report.unwrap();
    assert_eq!(r.mismatched, 12, "{r:?}");
    let listed: u64 = r.mismatched_ranges.iter().map(|x| x.count).sum();
    assert_eq!(listed, 12);
    assert!(
        r.mismatched_ranges.iter().all(|x| x.start.0 >= blocks / 2),
        "{r:?}"
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    p.resync().unwrap();
    assert!(pair.equal());
}

#[test]
fn cancel_jobs_stops_the_running_verify_and_spares_the_next() {
    let pair = Pair::new(4 * MIB, 14);
    let p = Arc::new(pair.open_primary(pair.config()));
    wait_coherent(&p);
    // The secondary's answers are held back, so the verify waits on its digests.
    pair.proxy.hold_back(true);
    let job = {
        let p = p.clone();
        std::thread::spawn(move || p.verify())
    };
    std::thread::sleep(Duration::from_millis(400));
    p.cancel_jobs();
    let e = job.join().unwrap().unwrap_err();
    assert_eq!(e.kind(), mirror_core::ErrorKind::Cancelled, "{e}");
    pair.proxy.restore();
    wait_coherent(&p);
    let r = p.verify().unwrap();
    assert_eq!(r.mismatched, 0);
}

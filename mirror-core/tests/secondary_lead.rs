//! Scans the secondary leads, over real TCP through the test proxy: on every (re)established
//! session and periodically, comparing on either side; repairs ride the primary's ordered
//! stream, so writes racing them are never overwritten; both sides may scan at once.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mirror_core::{
    Algorithm, CompareSide, PeriodicScan, ReplicationMode, ResyncMode, SecondaryConfig, Volume,
};
use rand::Rng;

const MIB: u64 = 1 << 20;

fn leading(compare: CompareSide, on_connect: bool, periodic: Option<Duration>) -> SecondaryConfig {
    let mut c = SecondaryConfig::new("127.0.0.1:0");
    c.scan_on_connect = on_connect;
    c.periodic = periodic.map(|interval| PeriodicScan {
        interval,
        rate_mib_s: 400.0,
    });
    c.compare = compare;
    c.algorithm = Algorithm::Crc32;
    c
}

fn lead_scans(pair: &Pair) -> u64 {
    pair.secondary.status().lead_scans
}

/// The primary's map is clean and valid across the cut, so it owes nothing: only the scan the
/// secondary leads on re-establishment finds what changed on the secondary meanwhile.
fn corruption_while_down_is_repaired_on_reestablishment(compare: CompareSide, seed: u64) {
    let pair = Pair::with(4 * MIB + 512, seed, leading(compare, true, None));
    let p = pair.open_primary(pair.config());
    wait_coherent(&p);
    wait_for(30, "the first secondary-led scan", || {
        lead_scans(&pair) >= 1
    });
    wait_for(30, "a coherent pair", || pair.equal());

    pair.proxy.cut();
    wait_for(30, "link down", || {
        p.status().state == mirror_core::LinkState::Disconnected
    });
    let hit = corrupt(&*pair.secondary_vol, 25, seed + 1);
    assert!(!pair.equal());
    pair.proxy.restore();
    wait_coherent(&p);
    assert!(p.status().map_valid, "the primary trusted its clean map");
    wait_for(30, "the secondary-led scan on re-establishment", || {
        lead_scans(&pair) >= 2
    });
    assert!(pair.equal(), "the secondary-led scan left differences");
    let distinct = {
        let mut h = hit.clone();
        h.sort_unstable();
        h.dedup();
        h.len() as u64
    };
    let mine = pair.secondary.status().last_report.expect("a report");
    assert_eq!(mine.mode, ResyncMode::FullScan);
    assert_eq!(mine.compare, compare);
    assert_eq!(mine.blocks, pair.secondary_vol.blocks());
    assert_eq!(mine.mismatched, distinct, "{mine:?}");
    assert_eq!(mine.blocks_sent, distinct, "{mine:?}");
    wait_for(
        10,
        "the primary's status shows the secondary's report",
        || {
            p.status()
                .last_secondary_report
                .is_some_and(|r| r.mismatched == distinct && r.compare == compare)
        },
    );
}

#[test]
fn secondary_led_scan_on_reconnection_compares_on_the_secondary() {
    corruption_while_down_is_repaired_on_reestablishment(CompareSide::Secondary, 100);
}

#[test]
fn secondary_led_scan_on_reconnection_compares_on_the_primary() {
    corruption_while_down_is_repaired_on_reestablishment(CompareSide::Primary, 200);
}

fn periodic_secondary_led_scan_repairs_corruption(compare: CompareSide, seed: u64) {
    let pair = Pair::with(
        4 * MIB,
        seed,
        leading(compare, false, Some(Duration::from_millis(300))),
    );
    let p = pair.open_primary(pair.config());
    wait_coherent(&p);
    wait_for(30, "a coherent pair", || pair.equal());
    let before = lead_scans(&pair);
    corrupt(&*pair.secondary_vol, 10, seed + 1);
    assert!(!pair.equal());
    wait_for(30, "the periodic secondary-led scan to repair", || {
        pair.equal()
    });
    wait_for(30, "a periodic report with mismatches", || {
        lead_scans(&pair) > before
            && pair
                .secondary
                .status()
                .last_report
                .is_some_and(|r| r.mode == ResyncMode::Periodic)
    });
    assert!(pair.equal());
}

#[test]
fn periodic_secondary_led_scan_compares_on_the_secondary() {
    periodic_secondary_led_scan_repairs_corruption(CompareSide::Secondary, 300);
}

#[test]
fn periodic_secondary_led_scan_compares_on_the_primary() {
    periodic_secondary_led_scan_repairs_corruption(CompareSide::Primary, 400);
}

/// The primary does no resync of its own: the secondary-led scan repairs a secondary that
/// starts all zero while the primary writes at random, in sync or async mode. A repair block
/// that overtook a newer write would leave that write lost, and the volumes unequal.
fn writes_during_secondary_led_scan_end_equal(seed: u64, compare: CompareSide, sync: bool) {
    let pair = Pair::with(8 * MIB, seed, leading(compare, true, None));
    let mut c = pair.config();
    c.auto_resync = false;
    if !sync {
        c.mode = ReplicationMode::Async;
    }
    let p = Arc::new(pair.open_primary(c));
    p.wait_connected(Duration::from_secs(30)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (p, stop) = (p.clone(), stop.clone());
        let blocks = pair.primary_vol.blocks();
        std::thread::spawn(move || {
            let mut r = rng(seed + 7);
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let b = r.gen_range(0..blocks);
                let len = r.gen_range(1..4u64).min(blocks - b);
                p.write(b * BS, &random_bytes(&mut r, (len * BS) as usize))
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    wait_for(60, "the secondary-led scan", || lead_scans(&pair) >= 1);
    stop.store(true, Ordering::SeqCst);
    let writes = writer.join().unwrap();
    assert!(writes > 0);
    wait_for(30, "every write acknowledged", || {
        p.status().pending_writes == 0
    });
    assert_eq!(pair.differing_blocks(), 0, "seed {seed}, {writes} writes");
    let r = pair.secondary.status().last_report.unwrap();
    assert!(r.blocks_sent > 0, "the scan repaired the zero secondary");
}

#[test]
fn writes_racing_a_secondary_led_scan_are_never_overwritten() {
    for (i, compare) in [CompareSide::Secondary, CompareSide::Primary]
        .into_iter()
        .enumerate()
    {
        for sync in [true, false] {
            writes_during_secondary_led_scan_end_equal(500 + i as u64 * 10, compare, sync);
        }
    }
}

/// Both sides scan periodically at once while the primary writes: both keep finishing, no
/// repair of either overwrites a newer write, and the volumes end equal.
#[test]
fn both_sides_periodic_at_once_under_writes_end_equal() {
    let pair = Pair::with(
        4 * MIB,
        600,
        leading(
            CompareSide::Secondary,
            false,
            Some(Duration::from_millis(100)),
        ),
    );
    let mut c = pair.config();
    c.periodic = Some(PeriodicScan {
        interval: Duration::from_millis(100),
        rate_mib_s: 400.0,
    });
    c.compare = CompareSide::Primary;
    let p = Arc::new(pair.open_primary(c));
    wait_coherent(&p);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (p, stop) = (p.clone(), stop.clone());
        let blocks = pair.primary_vol.blocks();
        std::thread::spawn(move || {
            let mut r = rng(601);
            while !stop.load(Ordering::SeqCst) {
                let b = r.gen_range(0..blocks);
                p.write(b * BS, &random_bytes(&mut r, BS as usize)).unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    // Silent corruption for both to find.
    corrupt(&*pair.secondary_vol, 20, 602);
    let (lead0, prim0) = (lead_scans(&pair), p.status().connections);
    let periodic_done = |p: &mirror_core::Primary| {
        p.status()
            .last_report
            .is_some_and(|r| r.mode == ResyncMode::Periodic)
    };
    wait_for(
        60,
        "two secondary-led and a primary-led periodic scan",
        || lead_scans(&pair) >= lead0 + 2 && periodic_done(&p),
    );
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    wait_for(30, "every write acknowledged", || {
        p.status().pending_writes == 0
    });
    let lead1 = lead_scans(&pair);
    wait_for(60, "a later secondary-led scan", || {
        lead_scans(&pair) > lead1
    });
    assert_eq!(pair.differing_blocks(), 0);
    assert_eq!(p.status().connections, prim0, "the link never broke");
}

#[test]
fn a_bad_periodic_setting_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.img");
    std::fs::write(&path, vec![0u8; 4096]).unwrap();
    let vol =
        Arc::new(mirror_core::FileVolume::open(&path, mirror_core::BlockSize::DEFAULT).unwrap());
    let mut c = SecondaryConfig::new("127.0.0.1:0");
    c.periodic = Some(PeriodicScan {
        interval: Duration::ZERO,
        rate_mib_s: 1.0,
    });
    let e = mirror_core::Secondary::new(vol, c).unwrap_err();
    assert_eq!(e.kind(), mirror_core::ErrorKind::InvalidArgument);
}

//! Primary-led scans in the combinations of algorithm and comparing side that reconnection
//! and periodic scans had not exercised (CRC-32; comparing on the secondary), and the full
//! scan on every connection of a primary that is told of no writes.

mod common;

use std::time::Duration;

use common::*;
use mirror_core::{Algorithm, CompareSide, LinkState, PeriodicScan, ResyncMode, Volume};
use rand::Rng;

const MIB: u64 = 1 << 20;

fn config(pair: &Pair, algorithm: Algorithm, compare: CompareSide) -> mirror_core::PrimaryConfig {
    let mut c = pair.config();
    c.algorithm = algorithm;
    c.compare = compare;
    c
}

/// Writes while the link is down are resynced from the dirty map on reconnection; a new
/// primary (no map) with a corrupted secondary resyncs by a full scan.
fn reconnection_repairs(algorithm: Algorithm, compare: CompareSide, seed: u64) {
    let pair = Pair::new(4 * MIB, seed);
    {
        let p = pair.open_primary(config(&pair, algorithm, compare));
        wait_coherent(&p);
        pair.proxy.cut();
        wait_for(30, "link down", || {
            p.status().state == LinkState::Disconnected
        });
        let mut r = rng(seed + 1);
        for _ in 0..40 {
            let b = r.gen_range(0..pair.primary_vol.blocks());
            p.write(b * BS, &random_bytes(&mut r, BS as usize)).unwrap();
        }
        assert!(!pair.equal());
        pair.proxy.restore();
        wait_coherent(&p);
        let rep = p.status().last_report.unwrap();
        assert_eq!(rep.mode, ResyncMode::DirtyMap, "{rep:?}");
        assert_eq!((rep.algorithm, rep.compare), (algorithm, compare));
        assert!(rep.mismatched > 0 && rep.mismatched <= 40, "{rep:?}");
        assert!(
            pair.equal(),
            "{algorithm} {compare:?}: dirty-map resync left differences"
        );
    }
    corrupt(&*pair.secondary_vol, 30, seed + 2);
    let p = pair.open_primary(config(&pair, algorithm, compare));
    wait_coherent(&p);
    let rep = p.status().last_report.unwrap();
    assert_eq!(rep.mode, ResyncMode::FullScan);
    assert!(rep.mismatched > 0);
    assert!(
        pair.equal(),
        "{algorithm} {compare:?}: full scan left differences"
    );
}

#[test]
fn crc32_on_reconnection_comparing_on_the_primary() {
    reconnection_repairs(Algorithm::Crc32, CompareSide::Primary, 700);
}

#[test]
fn crc32_on_reconnection_comparing_on_the_secondary() {
    reconnection_repairs(Algorithm::Crc32, CompareSide::Secondary, 710);
}

#[test]
fn sha1_on_reconnection_comparing_on_the_secondary() {
    reconnection_repairs(Algorithm::Sha1, CompareSide::Secondary, 720);
}

fn periodic_repairs(algorithm: Algorithm, compare: CompareSide, seed: u64) {
    let pair = Pair::new(4 * MIB, seed);
    let mut c = config(&pair, algorithm, compare);
    c.periodic = Some(PeriodicScan {
        interval: Duration::from_secs(1),
        rate_mib_s: 200.0,
    });
    let p = pair.open_primary(c);
    wait_coherent(&p);
    corrupt(&*pair.secondary_vol, 10, seed + 1);
    // A scan already running may find part of the corruption and the next one the rest;
    // each report stays up for the interval, so a report that found some is seen.
    let mut found = false;
    wait_for(
        120,
        "a periodic report that found corruption, and the repair",
        || {
            found |= p.status().last_report.is_some_and(|r| {
                r.mode == ResyncMode::Periodic
                    && r.mismatched > 0
                    && r.algorithm == algorithm
                    && r.compare == compare
            });
            found && pair.equal()
        },
    );
}

#[test]
fn crc32_periodic_scan_comparing_on_the_primary() {
    periodic_repairs(Algorithm::Crc32, CompareSide::Primary, 800);
}

#[test]
fn crc32_periodic_scan_comparing_on_the_secondary() {
    periodic_repairs(Algorithm::Crc32, CompareSide::Secondary, 810);
}

#[test]
fn sha1_periodic_scan_comparing_on_the_secondary() {
    periodic_repairs(Algorithm::Sha1, CompareSide::Secondary, 820);
}

/// A primary told of no writes (the daemon): the file changes behind its back while the link
/// is down; its map stays clean, yet the re-established link brings a full scan that repairs
/// it, long before the hourly periodic scan.
#[test]
fn full_scan_on_connect_repairs_writes_nobody_reported() {
    let pair = Pair::new(4 * MIB, 900);
    let mut c = pair.config();
    c.full_scan_on_connect = true;
    c.periodic = Some(PeriodicScan {
        interval: Duration::from_secs(3600),
        rate_mib_s: 64.0,
    });
    let p = pair.open_primary(c);
    wait_coherent(&p);
    assert!(pair.equal());
    pair.proxy.cut();
    wait_for(30, "link down", || {
        p.status().state == LinkState::Disconnected
    });
    corrupt(&*pair.primary_vol, 40, 901);
    assert!(!pair.equal());
    let connections = p.status().connections;
    pair.proxy.restore();
    wait_for(30, "repaired after re-establishment", || {
        p.status().connections > connections && pair.equal()
    });
    let rep = p.status().last_report.unwrap();
    assert_eq!(rep.mode, ResyncMode::FullScan);
    assert!(rep.mismatched > 0);
}

/// A scan on connection that fails (the link stalls mid-scan until the heartbeat gives up)
/// is done on the next connection; one that fails while the link stays up is retried.
#[test]
fn a_cut_scan_on_connection_is_done_again() {
    let pair = Pair::new(16 * MIB, 950);
    let mut c = pair.config();
    c.full_scan_on_connect = true;
    let p = pair.open_primary(c);
    p.wait_connected(Duration::from_secs(30)).unwrap();
    // Cut as soon as bytes flow: the first full scan cannot finish.
    wait_for(30, "the scan under way", || {
        pair.proxy.forwarded() > 64 << 10
    });
    pair.proxy.cut();
    std::thread::sleep(Duration::from_millis(200));
    pair.proxy.restore();
    wait_for(60, "repaired after re-establishment", || pair.equal());
    wait_coherent(&p);
}

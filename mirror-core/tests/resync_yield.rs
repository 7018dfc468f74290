//! A resync that yields to the application: it runs beside foreground writes and still ends
//! with the pair equal, and its progress and time to completion are in the status.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mirror_core::{JobOptions, LinkState, PrimaryConfig, ResyncMode, Volume, WriteOutcome};
use rand::Rng;

const MIB: u64 = 1 << 20;

#[test]
fn full_scan_resync_beside_foreground_writes_completes_with_volumes_equal() {
    let pair = Pair::new(24 * MIB, 41);
    let mut c = pair.config();
    c.auto_resync = false;
    c.resync_min_rate = 8.0;
    let p = Arc::new(pair.open_primary(c));
    p.wait_connected(Duration::from_secs(30)).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (p, done, written) = (p.clone(), done.clone(), written.clone());
        let blocks = pair.primary_vol.blocks();
        std::thread::spawn(move || {
            let mut r = rng(42);
            while !done.load(Ordering::SeqCst) {
                let b = r.gen_range(0..blocks - 16);
                let out = p.write(b * BS, &random_bytes(&mut r, 16 * BS as usize));
                assert_eq!(out.unwrap(), WriteOutcome::Replicated);
                written.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    wait_for(30, "foreground writes running", || {
        written.load(Ordering::Relaxed) > 10
    });
    let report = p
        .resync_with(&JobOptions {
            full: true,
            ..JobOptions::default()
        })
        .unwrap();
    let during = written.load(Ordering::Relaxed);
    done.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert_eq!(report.mode, ResyncMode::FullScan);
    assert_eq!(report.blocks, pair.primary_vol.blocks());
    assert!(
        during > 20,
        "the writes went on during the resync: {during}"
    );
    wait_coherent(&p);
    assert!(pair.equal(), "{} blocks differ", pair.differing_blocks());
    let st = p.status();
    assert_eq!(st.job_remaining_bytes, 0);
    assert_eq!(st.job_eta_seconds, Some(0.0));
}

#[test]
fn status_shows_a_running_resyncs_eta_falling_and_zero_at_its_end() {
    // A chunk's digest-tree descent takes a few round trips, answered between the paced
    // chunks of the local scan, so progress trails the scan by a few 4 MiB chunks: the volume
    // is large enough that most of the job is watched past that lag.
    let pair = Pair::new(96 * MIB, 43);
    let mut c: PrimaryConfig = pair.config();
    c.auto_resync = false;
    // About four seconds: long enough to watch, whatever the machine.
    c.resync_min_rate = 2.0;
    c.resync_max_rate = Some(24.0);
    let p = Arc::new(pair.open_primary(c));
    p.wait_connected(Duration::from_secs(30)).unwrap();
    let before = p.status();
    assert_eq!(before.job_remaining_bytes, 0);
    assert_eq!(before.job_eta_seconds, None, "no job has run");
    let job = {
        let p = p.clone();
        std::thread::spawn(move || p.resync())
    };
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !job.is_finished() && Instant::now() < deadline {
        let st = p.status();
        if st.state == LinkState::Resyncing {
            if let Some(eta) = st.job_eta_seconds {
                seen.push((st.job_remaining_bytes, eta));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = job.join().unwrap().unwrap();
    assert_eq!(report.mode, ResyncMode::FullScan);
    assert!(seen.len() >= 3, "an estimate while it ran: {seen:?}");
    let (first, last) = (seen[0], seen[seen.len() - 1]);
    assert!(seen.windows(2).all(|w| w[1].0 <= w[0].0), "{seen:?}");
    assert!(last.0 < first.0, "{seen:?}");
    assert!(last.1 < first.1, "the estimate falls: {seen:?}");
    let st = p.status();
    assert_eq!(st.job_remaining_bytes, 0);
    assert_eq!(st.job_eta_seconds, Some(0.0));
    assert!(pair.equal());
}

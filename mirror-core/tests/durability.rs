//! Acknowledged means durable: what survives a power loss of the secondary at each promise the
//! primary makes, how a failure on the secondary's disk is told, and what a sync-mode write
//! does while the link is down.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mirror_core::fault::FaultVolume;
use mirror_core::{
    Durability, ErrorKind, OnDisconnect, Primary, PrimaryConfig, Secondary, SecondaryConfig,
    Volume, WriteOutcome,
};

const SIZE: u64 = 1 << 20;
const EIO: i32 = 5;
const ENOSPC: i32 = 28;

/// A pair whose secondary volume injects faults.
struct FaultPair {
    pair: Pair,
    fault: Arc<FaultVolume>,
    _secondary: Secondary,
    proxy: Proxy,
}

impl FaultPair {
    fn new(seed: u64) -> FaultPair {
        let pair = Pair::new(SIZE, seed);
        // The pair's own secondary is replaced by one over a fault volume on the same file.
        pair.secondary.stop();
        let fault = Arc::new(FaultVolume::new(pair.secondary_vol.clone()));
        let secondary = Secondary::new(fault.clone(), SecondaryConfig::new("127.0.0.1:0")).unwrap();
        let addr = secondary.serve().unwrap();
        let proxy = Proxy::start(addr);
        FaultPair {
            pair,
            fault,
            _secondary: secondary,
            proxy,
        }
    }

    fn config(&self) -> PrimaryConfig {
        let mut c = PrimaryConfig::new(self.proxy.addr.to_string());
        c.link_timeout = Duration::from_secs(2);
        c.region_size = 4 * BS;
        c
    }

    fn open(&self, c: PrimaryConfig) -> Primary {
        let p = Primary::open(self.pair.primary_vol.clone(), c).unwrap();
        wait_coherent(&p);
        p
    }

    fn secondary_block(&self, b: u64) -> Vec<u8> {
        let mut v = vec![0u8; BS as usize];
        self.pair.secondary_vol.read_at(b * BS, &mut v).unwrap();
        v
    }
}

#[test]
fn flushed_sync_write_survives_a_power_loss_of_the_secondary() {
    let fp = FaultPair::new(1);
    let p = fp.open(fp.config());
    let mut r = rng(11);
    let mut written = Vec::new();
    for i in 0..40u64 {
        let b = (i * 7) % (SIZE / BS);
        let data = random_bytes(&mut r, BS as usize);
        assert_eq!(p.write(b * BS, &data).unwrap(), WriteOutcome::Replicated);
        written.push((b, data));
    }
    fp.fault.power_loss().unwrap();
    let mut last = std::collections::HashMap::new();
    for (b, d) in written {
        last.insert(b, d);
    }
    for (b, d) in last {
        assert_eq!(
            fp.secondary_block(b),
            d,
            "block {b} acknowledged, then lost"
        );
    }
}

#[test]
fn written_durability_acknowledges_before_the_flush_and_loses_on_power_loss() {
    // The weaker level is what it says: acknowledged after the write, not the flush.
    let fp = FaultPair::new(2);
    let mut c = fp.config();
    c.durability = Durability::Written;
    let p = fp.open(c);
    let flushes = fp.fault.counts().flushes;
    let data = vec![0xEEu8; BS as usize];
    assert_eq!(p.write(0, &data).unwrap(), WriteOutcome::Replicated);
    assert_eq!(fp.fault.counts().flushes, flushes, "written level flushed");
    fp.fault.power_loss().unwrap();
    assert_ne!(fp.secondary_block(0), data);
}

#[test]
fn flush_ok_means_durable_on_both_sides() {
    let fp = FaultPair::new(3);
    let mut c = fp.config();
    c.durability = Durability::Received;
    let p = fp.open(c);
    let data = vec![0x42u8; 8 * BS as usize];
    p.write(16 * BS, &data).unwrap();
    p.flush().unwrap();
    fp.fault.power_loss().unwrap();
    for i in 0..8 {
        assert_eq!(fp.secondary_block(16 + i), vec![0x42u8; BS as usize]);
    }
}

#[test]
fn flush_with_the_link_down_is_a_link_error() {
    let fp = FaultPair::new(4);
    let p = fp.open(fp.config());
    fp.proxy.cut();
    wait_for(10, "link down", || {
        p.status().state != mirror_core::LinkState::Connected
    });
    let err = p.flush().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Link, "{err}");
}

#[test]
fn failed_flush_on_the_secondary_is_a_remote_io_error_and_resync_repairs_exactly_what_was_lost() {
    let fp = FaultPair::new(5);
    let mut c = fp.config();
    c.durability = Durability::Written;
    let p = fp.open(c);
    // The first resync's blocks are made durable, so the failed flush loses only the writes.
    p.flush().unwrap();
    let lost: Vec<u64> = vec![3, 9, 10, 40, 200];
    for b in &lost {
        p.write(b * BS, &vec![*b as u8 ^ 0x5A; BS as usize])
            .unwrap();
    }
    fp.fault.fail_flush(1, EIO);
    let err = p.flush().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RemoteIo, "{err}");
    assert_eq!(err.errno(), Some(EIO), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("secondary.img"),
        "names the secondary's volume: {msg}"
    );
    assert!(msg.contains("Input/output error"), "{msg}");
    // The failed flush lost the writes; the secondary forgot its coherence, so the
    // reconnection compares every block and repairs exactly the lost ones.
    assert_eq!(fp.pair.differing_blocks(), lost.len());
    wait_for(30, "a new connection after the failed flush", || {
        p.status().connections >= 2
    });
    wait_coherent(&p);
    let r = p.status().last_report.unwrap();
    assert_eq!(r.mismatched, lost.len() as u64, "{r:?}");
    p.flush().unwrap();
    assert!(fp.pair.equal());
}

#[test]
fn enospc_mid_resync_keeps_its_blocks_dirty_and_backs_off() {
    let fp = FaultPair::new(6);
    let p = fp.open(fp.config());
    fp.proxy.cut();
    wait_for(10, "link down", || {
        p.status().state != mirror_core::LinkState::Connected
    });
    for b in 0..32u64 {
        p.write(b * 2 * BS, &vec![0x77; BS as usize]).unwrap();
    }
    let dirty = p.status().dirty_regions;
    assert!(dirty > 0);
    fp.fault.fail_all_writes(Some(ENOSPC));
    fp.proxy.restore();
    wait_for(20, "the resync to fail on the full disk", || {
        p.status()
            .last_error
            .is_some_and(|e| e.contains("No space left"))
    });
    let s = p.status();
    assert!(
        s.dirty_regions > 0 || !s.map_valid,
        "blocks that did not land are not dirty: {s:?}"
    );
    // Retries back off: a persistent failure does not reconnect in a loop.
    let c0 = p.status().connections;
    std::thread::sleep(Duration::from_secs(2));
    let c1 = p.status().connections;
    std::thread::sleep(Duration::from_secs(2));
    let c2 = p.status().connections;
    assert!(c1 - c0 <= 8, "{} reconnections in the first 2 s", c1 - c0);
    assert!(
        c2 - c1 <= 3,
        "{} reconnections in the next 2 s: no backoff",
        c2 - c1
    );
    fp.fault.clear_faults();
    wait_coherent(&p);
    p.flush().unwrap();
    assert!(fp.pair.equal());
}

#[test]
fn a_write_failing_on_the_secondary_is_told_as_the_secondarys_io_error() {
    let fp = FaultPair::new(7);
    let mut c = fp.config();
    c.on_disconnect = OnDisconnect::Fail;
    let p = fp.open(c);
    fp.fault.fail_write(1, ENOSPC);
    let err = p.write(0, &vec![1u8; BS as usize]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RemoteIo, "{err}");
    assert_eq!(err.errno(), Some(ENOSPC));
    // The range is dirty: the next resync sends it.
    wait_coherent(&p);
    p.flush().unwrap();
    assert!(fp.pair.equal());
}

#[test]
fn on_disconnect_fail_refuses_and_suspend_waits_for_the_link() {
    let fp = FaultPair::new(8);
    let mut c = fp.config();
    c.on_disconnect = OnDisconnect::Fail;
    let p = fp.open(c);
    fp.proxy.cut();
    wait_for(10, "link down", || {
        p.status().state != mirror_core::LinkState::Connected
    });
    let err = p.write(0, &vec![3u8; BS as usize]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Link, "{err}");
    assert!(
        p.status().dirty_regions > 0,
        "a refused write is still tracked"
    );
    fp.proxy.restore();
    wait_coherent(&p);
    p.close().unwrap();

    let mut c = fp.config();
    c.on_disconnect = OnDisconnect::Suspend(Duration::from_millis(600));
    let p = fp.open(c);
    fp.proxy.cut();
    wait_for(10, "link down", || {
        p.status().state != mirror_core::LinkState::Connected
    });
    let t = Instant::now();
    let err = p.write(BS, &vec![4u8; BS as usize]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Link, "{err}");
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // With the link back within the timeout, the write waits and is replicated.
    fp.proxy.restore();
    let data = vec![5u8; BS as usize];
    let mut c = fp.config();
    c.on_disconnect = OnDisconnect::Suspend(Duration::from_secs(20));
    drop(p);
    let p = Primary::open(fp.pair.primary_vol.clone(), c).unwrap();
    // Not yet connected: the write waits for the link, then for the secondary.
    assert_eq!(p.write(2 * BS, &data).unwrap(), WriteOutcome::Replicated);
    fp.fault.power_loss().unwrap();
    assert_eq!(fp.secondary_block(2), data);
}

#[test]
fn close_flushes_the_secondary() {
    let fp = FaultPair::new(9);
    let mut c = fp.config();
    c.durability = Durability::Written;
    let p = fp.open(c);
    let data = vec![9u8; BS as usize];
    p.write(5 * BS, &data).unwrap();
    p.close().unwrap();
    fp.fault.power_loss().unwrap();
    assert_eq!(fp.secondary_block(5), data);
}

#[test]
fn zeroing_keeps_the_durability_and_on_disconnect_promises_of_a_write() {
    let fp = FaultPair::new(10);
    let mut c = fp.config();
    c.on_disconnect = OnDisconnect::Fail;
    let p = fp.open(c);
    let ones = vec![7u8; 4 * BS as usize];
    assert_eq!(p.write(0, &ones).unwrap(), WriteOutcome::Replicated);

    fp.proxy.cut();
    wait_for(10, "link down", || {
        p.status().state != mirror_core::LinkState::Connected
    });
    for err in [
        p.write_zeroes(2 * BS, BS).unwrap_err(),
        p.trim(3 * BS, BS).unwrap_err(),
    ] {
        assert_eq!(err.kind(), ErrorKind::Link, "{err}");
    }
    assert!(
        p.status().dirty_regions > 0,
        "a refused zeroing is still tracked"
    );
    fp.proxy.restore();
    wait_coherent(&p);
    assert!(fp.pair.equal(), "the resync carried the refused zeroings");

    // At the default durability an acknowledged zeroing survives a power loss of the secondary.
    assert_eq!(p.write_zeroes(0, BS).unwrap(), WriteOutcome::Replicated);
    assert_eq!(p.trim(BS, BS).unwrap(), WriteOutcome::Replicated);
    fp.fault.power_loss().unwrap();
    for b in 0..4 {
        assert_eq!(
            fp.secondary_block(b),
            vec![0u8; BS as usize],
            "block {b} acknowledged zero, then lost"
        );
    }
}

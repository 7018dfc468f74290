//! Write-zeroes and trim end to end: replicated in order like writes, zero on both sides,
//! bounded by the volume rather than the frame, and put in the dirty map when the link is down
//! or lost before the secondary acknowledged them.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use mirror_core::{ErrorKind, LinkState, ReplicationMode, ResyncMode, Volume, WriteOutcome};
use rand::Rng;

const MIB: u64 = 1 << 20;

fn all_zero(vol: &dyn Volume, offset: u64, len: u64) -> bool {
    let mut buf = vec![1u8; len as usize];
    vol.read_at(offset, &mut buf).unwrap();
    buf.iter().all(|&b| b == 0)
}

#[test]
fn write_zeroes_and_trim_reach_the_secondary_as_zeros_in_sync_mode() {
    let pair = Pair::new(4 * MIB + 1000, 31);
    let p = pair.open_primary(pair.config());
    wait_coherent(&p);
    let (pv, sv) = (&*pair.primary_vol, &*pair.secondary_vol);
    // The full scan copied the primary's random bytes: nothing is zero yet.
    assert!(!all_zero(sv, 8 * BS, 4 * BS));

    assert_eq!(
        p.write_zeroes(8 * BS, 4 * BS).unwrap(),
        WriteOutcome::Replicated
    );
    // Sync mode: the secondary has it when the call returns.
    assert!(all_zero(sv, 8 * BS, 4 * BS) && all_zero(pv, 8 * BS, 4 * BS));
    assert!(!all_zero(sv, 7 * BS, BS) && !all_zero(sv, 12 * BS, BS));

    assert_eq!(p.trim(MIB, 3 * MIB).unwrap(), WriteOutcome::Replicated);
    assert!(all_zero(sv, MIB, 3 * MIB) && all_zero(pv, MIB, 3 * MIB));

    // The partial last block, to the end of the volume.
    let last = (pv.blocks() - 1) * BS;
    assert_eq!(
        p.trim(last, pv.size() - last).unwrap(),
        WriteOutcome::Replicated
    );
    assert!(all_zero(sv, last, pv.size() - last));
    assert!(pair.equal());

    // A verify compares the zeroed ranges exactly: trim is not advisory.
    assert_eq!(p.verify().unwrap().mismatched, 0);
}

#[test]
fn writes_and_zeroings_of_the_same_blocks_apply_in_order_in_async_mode() {
    let pair = Pair::new(2 * MIB, 33);
    let mut c = pair.config();
    c.mode = ReplicationMode::Async;
    let p = pair.open_primary(c);
    wait_coherent(&p);
    let mut rng = rng(34);
    // Writes, zeroings and trims of a few overlapping blocks: only the order makes the
    // secondary end like the primary.
    for i in 0..1500u32 {
        let b = rng.gen_range(0..8u64);
        let n = rng.gen_range(1..=4u64);
        let out = match i % 3 {
            0 => p
                .write(b * BS, &random_bytes(&mut rng, (n * BS) as usize))
                .unwrap(),
            1 => p.write_zeroes(b * BS, n * BS).unwrap(),
            _ => p.trim(b * BS, n * BS).unwrap(),
        };
        assert!(
            matches!(out, WriteOutcome::Queued | WriteOutcome::Degraded),
            "{out:?}"
        );
    }
    p.resync().unwrap();
    assert!(pair.equal(), "{} blocks differ", pair.differing_blocks());
}

#[test]
fn a_zero_range_is_bounded_by_the_volume_not_the_frame() {
    // More than one span (64 MiB) of zeroing frames.
    let size = 96 * MIB;
    let pair = Pair::new(size, 35);
    // No resync: the zeroing alone makes the random primary and the zero secondary equal.
    let mut c = pair.config();
    c.auto_resync = false;
    let p = pair.open_primary(c);
    p.wait_connected(Duration::from_secs(60)).unwrap();
    assert!(!pair.equal());
    let sent = p.status().bytes_sent;
    // The whole volume in one call: far more than one frame's data.
    assert_eq!(p.write_zeroes(0, size).unwrap(), WriteOutcome::Replicated);
    assert!(all_zero(&*pair.secondary_vol, 0, size));
    assert!(pair.equal());
    let cost = p.status().bytes_sent - sent;
    assert!(cost < 4096, "zeroing {size} bytes sent {cost} bytes");

    // Refused like a write, and nothing changes on either side.
    p.write(0, &[7u8; BS as usize]).unwrap();
    let before = read(&pair.primary_path);
    for (off, len) in [
        (1u64, BS),
        (0, BS + 1),
        (size, BS),
        (size - BS, 2 * BS),
        (BS, u64::MAX - BS + 1),
        (u64::MAX - 4095, BS),
    ] {
        for e in [
            p.write_zeroes(off, len).unwrap_err(),
            p.trim(off, len).unwrap_err(),
        ] {
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{off}+{len}: {e}");
        }
    }
    assert_eq!(before, read(&pair.primary_path));
    assert!(pair.equal());
    p.close().unwrap();
    assert_eq!(p.trim(0, BS).unwrap_err().kind(), ErrorKind::Closed);
    assert_eq!(p.write_zeroes(0, BS).unwrap_err().kind(), ErrorKind::Closed);
}

#[test]
fn zeroing_while_the_link_is_down_marks_the_dirty_map_and_resyncs() {
    let pair = Pair::new(8 * MIB, 37);
    let p = pair.open_primary(pair.config());
    wait_coherent(&p);
    pair.proxy.cut();
    wait_for(10, "link down", || {
        p.status().state == LinkState::Disconnected
    });
    assert_eq!(
        p.write_zeroes(2 * MIB, 64 * BS).unwrap(),
        WriteOutcome::Degraded
    );
    assert_eq!(p.trim(5 * MIB, MIB).unwrap(), WriteOutcome::Degraded);
    let s = p.status();
    assert!(s.map_valid, "{s:?}");
    assert!(s.dirty_bytes >= MIB + 64 * BS, "{s:?}");
    assert!(!pair.equal());
    pair.proxy.restore();
    wait_coherent(&p);
    let r = p.status().last_report.unwrap();
    assert_eq!(r.mode, ResyncMode::DirtyMap, "{r:?}");
    assert_eq!(r.mismatched, 64 + MIB / BS, "{r:?}");
    assert!(pair.equal());
}

#[test]
fn link_lost_during_a_sync_zeroing_leaves_it_in_the_dirty_map_and_resyncs() {
    let pair = Pair::new(8 * MIB, 39);
    let mut c = pair.config();
    c.link_timeout = Duration::from_secs(30);
    let p = Arc::new(pair.open_primary(c));
    wait_coherent(&p);
    // The secondary applies the zeroing, but its ack never comes back before the cut.
    pair.proxy.hold_back(true);
    let zeroing = {
        let p = p.clone();
        std::thread::spawn(move || p.trim(MIB, 2 * MIB))
    };
    wait_for(10, "the zeroing pending", || p.status().pending_writes > 0);
    pair.proxy.cut();
    assert_eq!(zeroing.join().unwrap().unwrap(), WriteOutcome::Degraded);
    wait_for(10, "link down", || {
        p.status().state == LinkState::Disconnected
    });
    // Also while it is down, over part of the same range and past it.
    assert_eq!(
        p.write_zeroes(2 * MIB, 2 * MIB).unwrap(),
        WriteOutcome::Degraded
    );
    let s = p.status();
    assert!(s.dirty_bytes >= 3 * MIB, "{s:?}");
    // The primary zeroed its side whatever became of the link.
    assert!(all_zero(&*pair.primary_vol, MIB, 3 * MIB));
    pair.proxy.restore();
    wait_coherent(&p);
    assert_eq!(p.status().last_report.unwrap().mode, ResyncMode::DirtyMap);
    assert!(all_zero(&*pair.secondary_vol, MIB, 3 * MIB));
    assert!(pair.equal(), "{} blocks differ", pair.differing_blocks());
}

//! The sync-mode write path for large writes: sent from the caller's buffer before the local
//! write, in stream order with the small writes that go through the queue, and apart (in the
//! dirty map) when the local write fails after its frame left.

mod common;

use std::sync::Arc;

use common::*;
use mirror_core::fault::FaultVolume;
use mirror_core::{Durability, Primary, Volume, WriteOutcome};
use rand::Rng;

const SIZE: u64 = 8 << 20;
const EIO: i32 = 5;

#[test]
fn large_and_small_writes_to_the_same_range_arrive_in_order_at_every_durability() {
    for (seed, durability) in [
        (11, Durability::Flushed),
        (12, Durability::Written),
        (13, Durability::Received),
    ] {
        let pair = Pair::new(SIZE, seed);
        let mut c = pair.config();
        c.durability = durability;
        let p = pair.open_primary(c);
        wait_coherent(&p);
        let mut r = rng(seed);
        // Overlapping writes of every size, each acknowledged before the next: the last
        // writer of each byte must win on the secondary too.
        for _ in 0..40 {
            let len =
                [4096usize, 60 << 10, 64 << 10, 256 << 10, 1 << 20, 3 << 20][r.gen_range(0..6)];
            let offset = r.gen_range(0..(SIZE - len as u64) / BS) * BS;
            let data = random_bytes(&mut r, len);
            assert_eq!(p.write(offset, &data).unwrap(), WriteOutcome::Replicated);
        }
        p.flush().unwrap();
        assert!(pair.equal(), "{durability:?}: the secondary differs");
        assert_eq!(p.status().dirty_regions, 0);
        p.close().unwrap();
    }
}

#[test]
fn many_writers_of_large_and_small_writes_share_the_link() {
    let pair = Pair::new(SIZE, 21);
    let p = pair.open_primary(pair.config());
    wait_coherent(&p);
    std::thread::scope(|s| {
        for t in 0..6u64 {
            let p = &p;
            s.spawn(move || {
                let mut r = rng(100 + t);
                // Each writer owns one slice of the volume, so the outcome is known.
                let slice = SIZE / 8;
                for _ in 0..20 {
                    let len = if r.gen_bool(0.5) { 4096 } else { 128 << 10 };
                    let at = r.gen_range(0..(slice - len as u64) / BS) * BS;
                    let data = random_bytes(&mut r, len);
                    let o = p.write(t * slice + at, &data).unwrap();
                    assert_eq!(o, WriteOutcome::Replicated);
                }
            });
        }
    });
    p.flush().unwrap();
    assert!(pair.equal());
    p.close().unwrap();
}

#[test]
fn a_local_write_failing_after_its_frame_left_is_resynced_from_the_primary() {
    let pair = Pair::new(SIZE, 31);
    let local = Arc::new(FaultVolume::new(pair.primary_vol.clone()));
    let mut c = pair.config();
    c.durability = Durability::Written;
    let p = Primary::open(local.clone(), c).unwrap();
    wait_coherent(&p);
    let offset = 2 << 20;
    let before = {
        let mut b = vec![0u8; 1 << 20];
        local.read_at(offset, &mut b).unwrap();
        b
    };
    local.fail_write(1, EIO);
    let data = random_bytes(&mut rng(32), 1 << 20);
    assert!(p.write(offset, &data).is_err(), "the local write failed");
    let mut now = vec![0u8; 1 << 20];
    local.read_at(offset, &mut now).unwrap();
    assert_eq!(now, before, "the failed local write changed nothing");
    // The secondary may hold the new bytes; the range is dirty until the resync puts the
    // primary's content back over it.
    wait_coherent(&p);
    p.flush().unwrap();
    assert!(pair.equal(), "the resync made both sides agree");
    assert_eq!(p.status().dirty_regions, 0);
    p.close().unwrap();
}

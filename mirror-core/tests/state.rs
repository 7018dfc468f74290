//! State that survives restarts, second primaries and failovers: identities, generation
//! histories, the consistent flag, restart resume, the write-intent map and the full-scan
//! checkpoint. Real TCP on loopback, file volumes, metadata records beside them.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mirror_core::meta::{default_meta_path, Loaded, MetaStore};
use mirror_core::{
    BlockSize, ErrorKind, FileVolume, JobOptions, Primary, PrimaryConfig, ResyncMode, Secondary,
    SecondaryConfig,
};
use rand::Rng;

const SIZE: u64 = 4 << 20;

fn file(dir: &Path, name: &str, seed: Option<u64>) -> (PathBuf, Arc<FileVolume>) {
    let p = dir.join(name);
    let bytes = match seed {
        Some(s) => random_bytes(&mut rng(s), SIZE as usize),
        None => vec![0; SIZE as usize],
    };
    std::fs::write(&p, bytes).unwrap();
    let v = Arc::new(FileVolume::open(&p, BlockSize::new(BS).unwrap()).unwrap());
    (p, v)
}

fn open_vol(p: &Path) -> Arc<FileVolume> {
    Arc::new(FileVolume::open(p, BlockSize::new(BS).unwrap()).unwrap())
}

fn secondary(path: &Path, vol: Arc<FileVolume>) -> Secondary {
    let mut c = SecondaryConfig::new("127.0.0.1:0");
    c.meta = Some(default_meta_path(path));
    c.link_timeout = Duration::from_secs(2);
    let s = Secondary::new(vol, c).unwrap();
    s.serve().unwrap();
    s
}

fn pconfig(peer: impl ToString, path: &Path) -> PrimaryConfig {
    let mut c = PrimaryConfig::new(peer.to_string());
    c.meta = Some(default_meta_path(path));
    c.link_timeout = Duration::from_secs(2);
    c.auto_resync = false;
    c
}

fn full_sync(vol: Arc<FileVolume>, c: PrimaryConfig) -> mirror_core::Result<()> {
    let p = Primary::open(vol, c)?;
    let r = p.resync_with(&JobOptions {
        full: true,
        connect_timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    });
    let _ = p.close();
    r.map(|_| ())
}

fn identity(path: &Path) -> String {
    match MetaStore::new(default_meta_path(path)).load() {
        Loaded::Valid(r) => r.identity.to_string(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_second_volume_is_refused_by_a_bound_secondary_until_adopted() {
    let d = tempfile::tempdir().unwrap();
    let (pa, va) = file(d.path(), "a.img", Some(1));
    let (pb, vb) = file(d.path(), "b.img", Some(2));
    let (ps, vs) = file(d.path(), "s.img", None);
    let s = secondary(&ps, vs);
    let addr = s.local_addr().unwrap();
    full_sync(va, pconfig(addr, &pa)).unwrap();
    assert_eq!(read(&pa), read(&ps));
    let e = full_sync(vb.clone(), pconfig(addr, &pb)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Mismatch, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("identity mismatch"), "{msg}");
    assert!(
        msg.contains(&identity(&pa)) && msg.contains(&identity(&pb)),
        "{msg}"
    );
    assert_eq!(
        read(&pa),
        read(&ps),
        "nothing written by the refused primary"
    );
    let mut c = pconfig(addr, &pb);
    c.adopt = true;
    full_sync(vb, c).unwrap();
    assert_eq!(read(&pb), read(&ps));
}

#[test]
fn a_live_session_holds_the_volume_against_another_primary() {
    let d = tempfile::tempdir().unwrap();
    let (pa, va) = file(d.path(), "a.img", Some(3));
    let (ps, vs) = file(d.path(), "s.img", None);
    let s = secondary(&ps, vs);
    let addr = s.local_addr().unwrap();
    let mut c = pconfig(addr, &pa);
    c.auto_resync = true;
    let live = Primary::open(va.clone(), c).unwrap();
    wait_coherent(&live);
    // A one-shot job of the same volume beside the live daemon is refused, not served.
    let e = full_sync(open_vol(&pa), pconfig(addr, &pa)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(e.to_string().contains("held by session"), "{e}");
    // The live session never noticed.
    assert_eq!(live.status().connections, 1);
    live.write(0, &[7u8; 4096]).unwrap();
    wait_coherent(&live);
    live.close().unwrap();
    assert_eq!(read(&pa), read(&ps));
}

#[test]
fn failover_works_and_the_old_primary_writing_again_is_a_split_brain() {
    let d = tempfile::tempdir().unwrap();
    let (pa, va) = file(d.path(), "a.img", Some(4));
    let (pb, vb) = file(d.path(), "b.img", None);
    // A primary, B secondary.
    let sb = secondary(&pb, vb.clone());
    full_sync(va.clone(), pconfig(sb.local_addr().unwrap(), &pa)).unwrap();
    drop(sb);
    // A fails; B becomes primary towards A serving.
    let sa = secondary(&pa, va.clone());
    let pbr = Primary::open(vb.clone(), pconfig(sa.local_addr().unwrap(), &pb)).unwrap();
    pbr.wait_connected(Duration::from_secs(60)).unwrap();
    pbr.write(8192, &[9u8; 4096]).unwrap();
    pbr.close().unwrap();
    drop(sa);
    assert_eq!(
        read(&pa),
        read(&pb),
        "failover replicated to the old primary"
    );
    // Both now write as primaries, apart.
    let pa_alone = Primary::open(va.clone(), pconfig("127.0.0.1:9", &pa)).unwrap();
    pa_alone.write(0, &[1u8; 4096]).unwrap();
    pa_alone.close().unwrap();
    let pb_alone = Primary::open(vb.clone(), pconfig("127.0.0.1:9", &pb)).unwrap();
    pb_alone.write(4096, &[2u8; 4096]).unwrap();
    pb_alone.close().unwrap();
    let (a0, b0) = (read(&pa), read(&pb));
    // A primary towards B: refused on both sides, naming the generations; nothing written.
    let sb = secondary(&pb, vb.clone());
    let e = full_sync(va.clone(), pconfig(sb.local_addr().unwrap(), &pa)).unwrap_err();
    assert!(e.to_string().contains("split brain"), "{e}");
    assert_eq!(e.kind(), ErrorKind::Mismatch);
    assert_eq!((read(&pa), read(&pb)), (a0.clone(), b0.clone()));
    drop(sb);
    // B primary towards A: also refused.
    let sa = secondary(&pa, va.clone());
    let e = full_sync(vb.clone(), pconfig(sa.local_addr().unwrap(), &pb)).unwrap_err();
    assert!(e.to_string().contains("split brain"), "{e}");
    assert_eq!((read(&pa), read(&pb)), (a0.clone(), b0));
    // Resolved in favour of A.
    drop(sa);
    let sb = secondary(&pb, vb);
    let mut c = pconfig(sb.local_addr().unwrap(), &pa);
    c.discard_secondary = true;
    full_sync(va, c).unwrap();
    assert_eq!(read(&pa), read(&pb));
    assert_eq!(read(&pa), a0);
}

#[test]
fn a_corrupt_or_torn_secondary_record_costs_a_full_scan_and_is_never_trusted() {
    for tear in [false, true] {
        let d = tempfile::tempdir().unwrap();
        let (pa, va) = file(d.path(), "a.img", Some(5));
        let (ps, vs) = file(d.path(), "s.img", None);
        let s = secondary(&ps, vs.clone());
        let mut c = pconfig(s.local_addr().unwrap(), &pa);
        c.auto_resync = true;
        let p = Primary::open(va.clone(), c).unwrap();
        wait_coherent(&p);
        // The secondary stops; its record is damaged behind its back.
        s.stop();
        drop(s);
        let m = default_meta_path(&ps);
        let mut bytes = std::fs::read(&m).unwrap();
        if tear {
            bytes.truncate(bytes.len() - 7);
        } else {
            bytes[30] ^= 0x10;
        }
        std::fs::write(&m, bytes).unwrap();
        assert!(matches!(MetaStore::new(&m).load(), Loaded::Unknown(_)));
        p.write(0, &[3u8; 4096])
            .unwrap_or(mirror_core::WriteOutcome::Degraded);
        let s = secondary(&ps, vs);
        let port = s.local_addr().unwrap();
        drop(p);
        let mut c = pconfig(port, &pa);
        c.auto_resync = true;
        let p = Primary::open(va, c).unwrap();
        wait_for(30, "a resync after the damaged record", || {
            p.status().last_report.is_some()
        });
        assert_eq!(p.status().last_report.unwrap().mode, ResyncMode::FullScan);
        wait_coherent(&p);
        p.close().unwrap();
        assert_eq!(read(&pa), read(&ps));
    }
}

#[test]
fn a_secondary_restarted_cleanly_resumes_from_the_dirty_map() {
    let d = tempfile::tempdir().unwrap();
    let (pp, vp) = file(d.path(), "a.img", Some(6));
    let (ps, vs) = file(d.path(), "s.img", None);
    let s = secondary(&ps, vs);
    let proxy = Proxy::start(s.local_addr().unwrap());
    let mut c = pconfig(proxy.addr, &pp);
    c.auto_resync = true;
    let p = Primary::open(vp, c).unwrap();
    wait_coherent(&p);
    // The secondary process ends (its record stays on disk); writes go to the dirty map.
    let port = s.local_addr().unwrap();
    s.stop();
    drop(s);
    wait_for(20, "primary sees the link down", || {
        p.status().state != mirror_core::LinkState::Connected
    });
    let mut r = rng(60);
    for _ in 0..50 {
        let off = r.gen_range(0..SIZE / BS) * BS;
        let _ = p.write(off, &random_bytes(&mut r, BS as usize));
    }
    // A new secondary object over the same volume and record, on the same port.
    let mut sc = SecondaryConfig::new(port.to_string());
    sc.meta = Some(default_meta_path(&ps));
    sc.link_timeout = Duration::from_secs(2);
    let s = Secondary::new(open_vol(&ps), sc).unwrap();
    s.serve().unwrap();
    wait_for(30, "resync after the secondary restart", || {
        p.status().connections >= 2
            && p.status()
                .last_report
                .is_some_and(|r| r.mode != ResyncMode::FullScan)
    });
    wait_coherent(&p);
    let rep = p.status().last_report.unwrap();
    assert!(matches!(rep.mode, ResyncMode::DirtyMap), "{rep:?}");
    // 50 writes, each in a region of 16 blocks: not the whole volume.
    assert!(rep.blocks <= 50 * 16, "{rep:?}");
    p.close().unwrap();
    drop(s);
    assert_eq!(read(&pp), read(&ps));
}

#[test]
fn full_scan_cut_at_half_resumes_from_its_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    // The scan resumes at its checkpoint: the first chunk whose descent had not ended at the
    // cut. Chunks in descent end out of order, so that can be a few chunks (1,024 blocks each)
    // before the half, and the repairs in flight are compared again from the dirty map. On
    // this 32-chunk volume that is several percent; the 1 GiB figure (`state_figures`
    // example) is what the 1.1 × target is measured on. Here: the second scan covers the
    // rest and well under three quarters of the volume, so it did resume.
    let size = 128u64 << 20;
    let pa = d.path().join("a.img");
    let ps = d.path().join("s.img");
    std::fs::write(&pa, random_bytes(&mut rng(7), size as usize)).unwrap();
    std::fs::write(&ps, vec![0u8; size as usize]).unwrap();
    let s = secondary(&ps, open_vol(&ps));
    let proxy = Proxy::start(s.local_addr().unwrap());
    let c = pconfig(proxy.addr, &pa);
    let p = Primary::open(open_vol(&pa), c).unwrap();
    let blocks = size / BS;
    let cut = AtomicBool::new(false);
    let seen = AtomicU64::new(0);
    let progress = |pr: mirror_core::Progress| {
        seen.store(pr.done, Ordering::SeqCst);
        if pr.done >= blocks / 2 && !cut.swap(true, Ordering::SeqCst) {
            proxy.cut();
        }
    };
    let first = p.resync_with(&JobOptions {
        full: false,
        progress: Some(&progress),
        connect_timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    });
    assert!(first.is_err(), "the cut ends the first scan");
    let first_blocks = seen.load(Ordering::SeqCst);
    // The record has the checkpoint by the time the job returns (it is written beside the
    // scan, not by it): past the first segment, and not past what was done.
    let recorded = || match MetaStore::new(default_meta_path(&pa)).load() {
        Loaded::Valid(r) => r.checkpoint.map(|c| c.next_block),
        other => panic!("the primary's record: {other:?}"),
    };
    let at = recorded().expect("a checkpoint is recorded at the cut");
    assert!(
        at > 0 && at <= first_blocks,
        "checkpoint {at} after {first_blocks} blocks done"
    );
    proxy.restore();
    let r = p
        .resync_with(&JobOptions {
            connect_timeout: Some(Duration::from_secs(20)),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.mode, ResyncMode::FullScan);
    assert_eq!(recorded(), None, "the finished scan clears its checkpoint");
    let total = first_blocks + r.blocks;
    assert!(
        total >= blocks && r.blocks <= blocks * 3 / 4,
        "scanned {first_blocks} + {} blocks for a volume of {blocks}",
        r.blocks
    );
    println!(
        "full scan cut at half: {first_blocks} + {} = {total} blocks of {blocks} ({:.3}x)",
        r.blocks,
        total as f64 / blocks as f64
    );
    p.close().unwrap();
    assert_eq!(read(&pa), read(&ps));
}

#[test]
fn a_primary_crash_with_the_write_intent_map_resyncs_only_its_dirty_chunks() {
    let d = tempfile::tempdir().unwrap();
    let size = 64u64 << 20;
    let pa = d.path().join("a.img");
    let ps = d.path().join("s.img");
    std::fs::write(&pa, random_bytes(&mut rng(8), size as usize)).unwrap();
    std::fs::write(&ps, vec![0u8; size as usize]).unwrap();
    let s = secondary(&ps, open_vol(&ps));
    let proxy = Proxy::start(s.local_addr().unwrap());
    let mut c = pconfig(proxy.addr, &pa);
    c.auto_resync = true;
    c.write_intent = true;
    let p = Primary::open(open_vol(&pa), c.clone()).unwrap();
    wait_coherent(&p);
    // The link goes down; writes land in three chunks; the primary crashes.
    proxy.cut();
    wait_for(20, "link down", || {
        p.status().state != mirror_core::LinkState::Connected
    });
    let mut r = rng(80);
    for chunk in [1u64, 5, 9] {
        for _ in 0..4 {
            let off = chunk * (4 << 20) + r.gen_range(0..1024u64) * BS;
            p.write(off, &random_bytes(&mut r, BS as usize)).unwrap();
        }
    }
    // The primary goes away with its link down: nothing cleans the write-intent map (the
    // bits of dirty regions are never cleared before the secondary has the data), so this is
    // what a crash leaves on disk.
    p.close().unwrap();
    proxy.restore();
    let p = Primary::open(open_vol(&pa), c).unwrap();
    wait_for(30, "resync after the crash", || {
        p.status().last_report.is_some()
    });
    wait_coherent(&p);
    let rep = p.status().last_report.unwrap();
    assert_eq!(rep.mode, ResyncMode::DirtyMap, "{rep:?}");
    let blocks = size / BS;
    assert!(rep.blocks <= 3 * (4 << 20) / BS, "{rep:?} of {blocks}");
    println!(
        "primary crash with the write-intent map: {} of {blocks} blocks resynced",
        rep.blocks
    );
    p.close().unwrap();
    assert_eq!(read(&pa), read(&ps));
}

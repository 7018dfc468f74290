//! Figures of scans on link re-establishment, led by either side, on temporary files over
//! loopback: `cargo run --release -p mirror-core --example lead_figures -- [MIB ...]`.
//!
//! For each size: the time from link re-establishment to a repaired pair for a primary that
//! is told of no writes (full scan on connect, 40 blocks rewritten behind its back), and a
//! full scan with 1% of the blocks differing led by the primary and by the secondary, each
//! comparing side: seconds, and bytes on the wire (both directions, as the leader counts).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirror_core::{
    BlockSize, CompareSide, FileVolume, Primary, PrimaryConfig, Report, Secondary, SecondaryConfig,
    Volume,
};

const BS: u64 = 4096;

fn fill(path: &std::path::Path, size: u64, seed: u64) {
    let mut x = seed | 1;
    let mut v = vec![0u8; size as usize];
    for c in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    std::fs::write(path, v).unwrap();
}

fn scribble(vol: &dyn Volume, every: u64) -> u64 {
    let mut n = 0;
    for b in (0..vol.blocks()).step_by(every as usize) {
        vol.write_at(b * BS, &vec![(b % 251) as u8 ^ 0x5a; BS as usize])
            .unwrap();
        n += 1;
    }
    n
}

fn free_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct Files {
    _dir: tempfile::TempDir,
    p: Arc<FileVolume>,
    s: Arc<FileVolume>,
}

fn files(mib: u64) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let (pp, sp) = (dir.path().join("p.img"), dir.path().join("s.img"));
    fill(&pp, mib << 20, 7);
    std::fs::copy(&pp, &sp).unwrap();
    let bs = BlockSize::new(BS).unwrap();
    Files {
        p: Arc::new(FileVolume::open(&pp, bs).unwrap()),
        s: Arc::new(FileVolume::open(&sp, bs).unwrap()),
        _dir: dir,
    }
}

fn daemon_reestablishment(mib: u64) -> f64 {
    let f = files(mib);
    let listen = free_port();
    let sec = Secondary::new(f.s.clone(), SecondaryConfig::new(listen.clone())).unwrap();
    sec.serve().unwrap();
    let mut c = PrimaryConfig::new(listen);
    c.full_scan_on_connect = true;
    let p = Primary::open(f.p.clone(), c).unwrap();
    wait("first scan", || p.status().last_report.is_some());
    sec.stop();
    wait("link down", || {
        p.status().state == mirror_core::LinkState::Disconnected
    });
    for i in 0..40 {
        f.p.write_at(i * 97 * BS % (f.p.blocks() * BS), &[0xee; BS as usize])
            .unwrap();
    }
    let conns = p.status().connections;
    let t = Instant::now();
    sec.serve().unwrap();
    wait("repaired", || {
        let st = p.status();
        st.connections > conns && st.last_report.as_ref().is_some_and(|r| r.mismatched > 0)
    });
    t.elapsed().as_secs_f64()
}

fn primary_led(mib: u64, compare: CompareSide) -> Report {
    let f = files(mib);
    let sec = Secondary::new(f.s.clone(), SecondaryConfig::new("127.0.0.1:0")).unwrap();
    let addr = sec.serve().unwrap();
    let mut c = PrimaryConfig::new(addr.to_string());
    c.auto_resync = false;
    c.compare = compare;
    let p = Primary::open(f.p.clone(), c).unwrap();
    p.wait_connected(Duration::from_secs(30)).unwrap();
    scribble(&*f.s, 100);
    let opts = mirror_core::JobOptions {
        full: true,
        ..Default::default()
    };
    p.resync_with(&opts).unwrap()
}

fn secondary_led(mib: u64, compare: CompareSide) -> Report {
    let f = files(mib);
    scribble(&*f.s, 100);
    let mut sc = SecondaryConfig::new("127.0.0.1:0");
    sc.scan_on_connect = true;
    sc.compare = compare;
    let sec = Secondary::new(f.s.clone(), sc).unwrap();
    let addr = sec.serve().unwrap();
    let mut c = PrimaryConfig::new(addr.to_string());
    c.auto_resync = false;
    let _p = Primary::open(f.p.clone(), c).unwrap();
    wait("secondary-led scan", || sec.status().lead_scans > 0);
    sec.status().last_report.unwrap()
}

fn main() {
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("sizes in MiB"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![16, 1024]
    } else {
        sizes
    };
    println!("| volume | what | seconds | bytes sent | bytes received | blocks repaired |");
    println!("|---|---|---|---|---|---|");
    for mib in sizes {
        let s = daemon_reestablishment(mib);
        println!(
            "| {mib} MiB | daemon: link back to repaired pair (40 blocks) | {s:.2} | | | 40 |"
        );
        for side in [CompareSide::Primary, CompareSide::Secondary] {
            let r = primary_led(mib, side);
            println!(
                "| {mib} MiB | primary-led full scan, 1% differ, {} compares | {:.2} | {} | {} | {} |",
                side.name(), r.seconds, r.bytes_sent, r.bytes_received, r.blocks_sent
            );
            let r = secondary_led(mib, side);
            println!(
                "| {mib} MiB | secondary-led scan, 1% differ, {} compares | {:.2} | {} | {} | {} |",
                side.name(),
                r.seconds,
                r.bytes_sent,
                r.bytes_received,
                r.blocks_sent
            );
        }
    }
}

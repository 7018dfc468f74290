//! Figures of the state that survives restarts, printed as a table:
//!
//! - resync after a secondary restart during which N random 4 KiB writes landed: bytes sent
//!   ÷ bytes written, beside the full scan it replaces;
//! - a primary crash with the write-intent map: chunks resynced versus the volume;
//! - the cost of the write-intent map on random 4 KiB sync-mode writes (writes/s with and
//!   without it, alternated);
//! - a full scan cut at half: blocks scanned in all across both connections.
//!
//! `cargo run --release -p mirror-core --example state_figures -- [SIZE_MIB] [WRITES] [DIR]`
//! (defaults 1024, 10000, the system's temporary directory).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirror_core::meta::default_meta_path;
use mirror_core::{
    BlockSize, FileVolume, JobOptions, LinkState, Primary, PrimaryConfig, Progress, ResyncMode,
    Secondary, SecondaryConfig,
};
use rand::{Rng, SeedableRng};

const BS: u64 = 4096;

fn vol(p: &Path) -> Arc<FileVolume> {
    Arc::new(FileVolume::open(p, BlockSize::new(BS).unwrap()).unwrap())
}

fn make(p: &Path, size: u64, seed: Option<u64>) {
    let f = std::fs::File::create(p).unwrap();
    f.set_len(size).unwrap();
    if let Some(seed) = seed {
        use std::os::unix::fs::FileExt;
        let mut r = rand::rngs::SmallRng::seed_from_u64(seed);
        let mut buf = vec![0u8; 1 << 20];
        for off in (0..size).step_by(1 << 20) {
            r.fill(&mut buf[..]);
            f.write_all_at(&buf, off).unwrap();
        }
    }
}

fn secondary(path: &Path, listen: &str) -> Secondary {
    let mut c = SecondaryConfig::new(listen);
    c.meta = Some(default_meta_path(path));
    let s = Secondary::new(vol(path), c).unwrap();
    s.serve().unwrap();
    s
}

fn coherent(p: &Primary) -> bool {
    let s = p.status();
    s.state == LinkState::Connected && s.map_valid && s.dirty_regions == 0 && s.pending_writes == 0
}

fn wait(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let size_mib: u64 = args.get(1).map_or(1024, |s| s.parse().unwrap());
    let writes: u64 = args.get(2).map_or(10_000, |s| s.parse().unwrap());
    let dir =
        tempfile::tempdir_in(args.get(3).map_or(std::env::temp_dir(), PathBuf::from)).unwrap();
    let size = size_mib << 20;
    let blocks = size / BS;
    let (pa, ps) = (dir.path().join("a.img"), dir.path().join("s.img"));
    make(&pa, size, Some(1));
    make(&ps, size, None);
    let mut rows: Vec<(String, String)> = Vec::new();

    // 1. A secondary restart during N random writes.
    let listen = free_port();
    let s = secondary(&ps, &listen);
    let mut c = PrimaryConfig::new(listen.clone());
    c.meta = Some(default_meta_path(&pa));
    let p = Primary::open(vol(&pa), c).unwrap();
    wait("first full scan", || coherent(&p));
    let full = p.status().last_report.unwrap();
    s.stop();
    drop(s);
    wait("link down", || p.status().state != LinkState::Connected);
    let mut r = rand::rngs::SmallRng::seed_from_u64(2);
    let mut buf = vec![0u8; BS as usize];
    for _ in 0..writes {
        r.fill(&mut buf[..]);
        p.write(r.gen_range(0..blocks) * BS, &buf).unwrap();
    }
    let s = secondary(&ps, &listen);
    wait("resync after restart", || {
        p.status().connections >= 2
            && coherent(&p)
            && p.status()
                .last_report
                .is_some_and(|r| r.mode != ResyncMode::FullScan)
    });
    let rep = p.status().last_report.unwrap();
    assert_eq!(rep.mode, ResyncMode::DirtyMap, "{rep:?}");
    rows.push((
        format!("resync after a secondary restart, {writes} random 4 KiB writes"),
        format!(
            "{} bytes sent ÷ {} written = {:.3} ({:.2} s); the full scan it replaces: {} bytes sent, {:.2} s",
            rep.bytes_sent,
            writes * BS,
            rep.bytes_sent as f64 / (writes * BS) as f64,
            rep.seconds,
            full.bytes_sent,
            full.seconds
        ),
    ));
    p.close().unwrap();

    // 2. The cost of the write-intent map: sync-mode random writes, alternated runs.
    let run = |intent: bool, secs: f64| -> f64 {
        let mut c = PrimaryConfig::new(listen.clone());
        c.meta = Some(default_meta_path(&pa));
        c.write_intent = intent;
        c.auto_resync = false;
        c.adopt = true;
        let p = Primary::open(vol(&pa), c).unwrap();
        p.wait_connected(Duration::from_secs(30)).unwrap();
        let mut r = rand::rngs::SmallRng::seed_from_u64(intent as u64 + 3);
        let mut buf = vec![0u8; BS as usize];
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            r.fill(&mut buf[..]);
            p.write(r.gen_range(0..blocks) * BS, &buf).unwrap();
            n += 1;
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        p.close().unwrap();
        rate
    };
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        without.push(run(false, 4.0));
        with.push(run(true, 4.0));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    rows.push((
        "random 4 KiB sync-mode writes/s, write-intent map off / on".into(),
        format!(
            "{:.0} / {:.0} ({:+.1}%; 3 alternated runs of 4 s each)",
            mean(&without),
            mean(&with),
            (mean(&with) / mean(&without) - 1.0) * 100.0
        ),
    ));

    // 3. A primary crash with the write-intent map.
    let mut c = PrimaryConfig::new(listen.clone());
    c.meta = Some(default_meta_path(&pa));
    c.write_intent = true;
    c.adopt = true;
    let p = Primary::open(vol(&pa), c.clone()).unwrap();
    wait("coherent before the crash", || coherent(&p));
    s.stop();
    drop(s);
    wait("link down", || p.status().state != LinkState::Connected);
    for _ in 0..100 {
        r.fill(&mut buf[..]);
        p.write(r.gen_range(0..blocks) * BS, &buf).unwrap();
    }
    // The primary goes away with its link down. Nothing clears the write-intent bits of dirty
    // regions before the secondary has their data, so a close now leaves on disk what a crash
    // would; a primary merely forgotten would keep running here and race the next one for
    // the secondary.
    p.close().unwrap();
    drop(p);
    let s = secondary(&ps, &listen);
    let p = Primary::open(vol(&pa), c).unwrap();
    wait("resync after the crash", || {
        coherent(&p) && p.status().last_report.is_some()
    });
    let rep = p.status().last_report.unwrap();
    rows.push((
        "primary crash with the write-intent map, 100 random writes apart".into(),
        format!(
            "{}: {} of {blocks} blocks compared ({:.2}% of the volume), {:.2} s",
            rep.mode,
            rep.blocks,
            rep.blocks as f64 * 100.0 / blocks as f64,
            rep.seconds
        ),
    ));
    p.close().unwrap();
    drop(s);

    // 4. A full scan cut at half.
    make(&ps, size, None);
    std::fs::remove_file(default_meta_path(&ps)).ok();
    let s = secondary(&ps, &listen);
    let mut c = PrimaryConfig::new(listen.clone());
    c.meta = Some(default_meta_path(&pa));
    c.auto_resync = false;
    let p = Primary::open(vol(&pa), c).unwrap();
    let first = AtomicU64::new(0);
    let cut = AtomicBool::new(false);
    let progress = |pr: Progress| {
        first.store(pr.done, Ordering::SeqCst);
        if pr.done >= blocks / 2 && !cut.swap(true, Ordering::SeqCst) {
            s.stop();
        }
    };
    let _ = p.resync_with(&JobOptions {
        progress: Some(&progress),
        connect_timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    });
    let _ = s.serve();
    let rep = p
        .resync_with(&JobOptions {
            connect_timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        })
        .unwrap();
    let total = first.load(Ordering::SeqCst) + rep.blocks;
    rows.push((
        "full scan cut at half".into(),
        format!(
            "{} + {} = {total} blocks scanned for {blocks} ({:.3} × the volume)",
            first.load(Ordering::SeqCst),
            rep.blocks,
            total as f64 / blocks as f64
        ),
    ));
    p.close().unwrap();

    println!("| what ({size_mib} MiB volume) | figure |");
    println!("|---|---|");
    for (a, b) in rows {
        println!("| {a} | {b} |");
    }
}

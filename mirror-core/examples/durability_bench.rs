//! Random 4 KiB sync-mode writes per second through a `Primary`, at each durability level,
//! with 1 and 16 writer threads, beside the local volume's own `write + fdatasync` rate.
//!
//! ```text
//! cargo run --release -p mirror-core --example durability_bench -- [DIR] [SECONDS] [SIZE_MIB]
//! ```
//!
//! Both volumes are files in DIR (default: the current directory; use a real disk, not a
//! tmpfs, or fdatasync costs nothing), the secondary in this process over loopback. Prints a
//! Markdown table.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirror_core::{
    BlockSize, Durability, FileVolume, Primary, PrimaryConfig, Secondary, SecondaryConfig, Volume,
    WriteOutcome,
};
use rand::{Rng, SeedableRng};

const BS: u64 = 4096;

fn run_threads(threads: usize, secs: f64, op: impl Fn(u64) + Sync) -> f64 {
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, done, op) = (&stop, &done, &op);
            s.spawn(move || {
                let mut r = rand::rngs::SmallRng::seed_from_u64(t as u64 + 1);
                while !stop.load(Ordering::Relaxed) {
                    op(r.gen());
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).cloned().unwrap_or_else(|| ".".into());
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let size_mib: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(256);
    let size = size_mib << 20;
    let blocks = size / BS;
    let tmp = tempfile::tempdir_in(&dir).expect("temporary directory");
    let bs = BlockSize::new(BS).unwrap();
    let pv = Arc::new(FileVolume::create(tmp.path().join("primary.img"), size, bs).unwrap());
    let sv = Arc::new(FileVolume::create(tmp.path().join("secondary.img"), size, bs).unwrap());
    let data = vec![0x5Au8; BS as usize];

    println!("| writers | local write+fdatasync /s | received /s | written /s | flushed /s | flushed / local |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for threads in [1usize, 16] {
        let local = run_threads(threads, secs, |r| {
            let off = (r % blocks) * BS;
            pv.write_at(off, &data).unwrap();
            pv.flush().unwrap();
        });
        let mut rates = Vec::new();
        for durability in [
            Durability::Received,
            Durability::Written,
            Durability::Flushed,
        ] {
            let secondary =
                Secondary::new(sv.clone(), SecondaryConfig::new("127.0.0.1:0")).unwrap();
            let addr = secondary.serve().unwrap();
            let mut config = PrimaryConfig::new(addr.to_string());
            config.durability = durability;
            config.auto_resync = false;
            let primary = Primary::open(pv.clone(), config).unwrap();
            primary.wait_connected(Duration::from_secs(10)).unwrap();
            let rate = run_threads(threads, secs, |r| {
                let off = (r % blocks) * BS;
                let o = primary.write(off, &data).unwrap();
                assert_eq!(o, WriteOutcome::Replicated);
            });
            primary.close().unwrap();
            secondary.stop();
            rates.push(rate);
        }
        println!(
            "| {threads} | {local:.0} | {:.0} | {:.0} | {:.0} | {:.2} |",
            rates[0],
            rates[1],
            rates[2],
            rates[2] / local
        );
    }
}

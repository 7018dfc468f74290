//! What one writer's 1 MiB sync-mode writes cost through a `Primary` (durability `written`),
//! beside the same writes on the local volume alone: MiB/s and the process's CPU seconds per
//! GiB (user + system, from /proc/self/stat), so that a change to the replication path can be
//! judged on a machine busy with other work, where the rate alone is noise.
//!
//! ```text
//! cargo run --release -p mirror-core --example replicate_cost -- [DIR] [SIZE_MIB] [ROUNDS]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use mirror_core::{
    BlockSize, Durability, FileVolume, Primary, PrimaryConfig, Secondary, SecondaryConfig, Volume,
    WriteOutcome,
};
use rand::{Rng, RngCore, SeedableRng};

const WRITE: u64 = 1 << 20;

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of the file (utime, stime), counted from the state field (3).
    (ticks(11) + ticks(12)) / 100.0
}

/// (MiB/s, CPU seconds per GiB) of `write` over `size` bytes of random 1 MiB slots.
fn measure(size: u64, data: &[u8], write: impl Fn(u64, &[u8])) -> (f64, f64) {
    let slots = size / WRITE;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let (t, c) = (Instant::now(), cpu_seconds());
    for _ in 0..slots {
        write(rng.gen_range(0..slots) * WRITE, data);
    }
    let (secs, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
    let mib = size as f64 / (1 << 20) as f64;
    (mib / secs, cpu / (mib / 1024.0))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).cloned().unwrap_or_else(|| ".".into());
    let size = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(512u64) << 20;
    let rounds: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
    let tmp = tempfile::tempdir_in(&dir).expect("temporary directory");
    let bs = BlockSize::new(4096).unwrap();
    let pv = Arc::new(FileVolume::create(tmp.path().join("primary.img"), size, bs).unwrap());
    let sv = Arc::new(FileVolume::create(tmp.path().join("secondary.img"), size, bs).unwrap());
    let mut data = vec![0u8; WRITE as usize];
    rand::rngs::SmallRng::seed_from_u64(5).fill_bytes(&mut data);
    // Both files fully allocated first, so neither row pays for allocation.
    for off in (0..size).step_by(WRITE as usize) {
        pv.write_at(off, &data).unwrap();
        sv.write_at(off, &data).unwrap();
    }

    let secondary = Secondary::new(sv.clone(), SecondaryConfig::new("127.0.0.1:0")).unwrap();
    let addr = secondary.serve().unwrap();
    let mut config = PrimaryConfig::new(addr.to_string());
    config.durability = Durability::Written;
    config.auto_resync = false;
    let primary = Primary::open(pv.clone(), config).unwrap();
    primary.wait_connected(Duration::from_secs(30)).unwrap();

    let (mut local, mut repl) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        local.push(measure(size, &data, |o, d| pv.write_at(o, d).unwrap()));
        repl.push(measure(size, &data, |o, d| {
            assert_eq!(primary.write(o, d).unwrap(), WriteOutcome::Replicated)
        }));
    }
    primary.close().unwrap();
    secondary.stop();
    let row = |v: &[(f64, f64)]| {
        (
            median(v.iter().map(|x| x.0).collect()),
            median(v.iter().map(|x| x.1).collect()),
        )
    };
    let (l, r) = (row(&local), row(&repl));
    println!("| row | MiB/s | CPU s per GiB |");
    println!("|---|---:|---:|");
    println!("| local volume alone | {:.0} | {:.2} |", l.0, l.1);
    println!(
        "| sync-mode replication (written) | {:.0} | {:.2} |",
        r.0, r.1
    );
    println!("| ratio | {:.2} | {:.2} |", r.0 / l.0, r.1 / l.1);
}

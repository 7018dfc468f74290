//! `mirror bench-replicate`: how fast one writer's 1 MiB writes go through a sync-mode
//! [`Primary`], next to the same writes on the local volume alone, and while the first
//! full-scan resync runs (hidden subcommand; `make bench` runs it).
//!
//! Both volumes are files of the same random bytes opened with `mirror_uring::open_volume`
//! (default options, so buffered on both sides: the secondary acknowledges a write once it is
//! written, and the local row writes the same way, so both have the same durability). A
//! `Secondary` and a `Primary` run in this process over loopback. Rows alternate, and each
//! figure is the median of `--runs` rounds; the ratios divide medians of the same invocation.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::HumanBytes;
use mirror_core::{ErrorKind, Primary, PrimaryConfig, Secondary, SecondaryConfig, Volume};
use mirror_uring::{open_volume, IoBackend, VolumeOptions};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::bench::{io_err, random_file, tempdir};
use crate::error::{CliError, Result, EXIT_OK};
use crate::parse::{parse_io, parse_size};

const WRITE: usize = 1 << 20;

/// `mirror bench-replicate`.
#[derive(Debug, Args)]
pub struct ReplicateBenchArgs {
    /// Size of each volume.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub size: u64,
    /// Bytes written per row, in 1 MiB writes.
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    pub bytes: u64,
    /// Rounds (the median is printed).
    #[arg(long, default_value = "3")]
    pub runs: usize,
    /// Directory for the files (default: the system's temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// I/O backend.
    #[arg(long, default_value = "uring", value_parser = parse_io)]
    pub io: IoBackend,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// MiB/s of `write` called on consecutive 1 MiB offsets until `bytes` are written or `until`
/// says stop (checked before each write).
fn write_rate(
    size: u64,
    bytes: u64,
    data: &[u8],
    until: impl Fn() -> bool,
    mut write: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<(f64, u64)> {
    let slots = size / WRITE as u64;
    let mut rng = SmallRng::seed_from_u64(7);
    let t = Instant::now();
    let mut done = 0u64;
    while done < bytes && !until() {
        let offset = rng.gen_range(0..slots) * WRITE as u64;
        write(offset, data)?;
        done += WRITE as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    Ok((done as f64 / (1 << 20) as f64 / secs, done))
}

pub fn run(args: ReplicateBenchArgs) -> Result<u8> {
    if args.runs == 0 || args.size < WRITE as u64 {
        return Err(CliError::Check(
            "--runs must be at least 1 and --size at least 1M".into(),
        ));
    }
    let dir = tempdir(&args.dir)?;
    let p_path = dir.path().join("primary.img");
    let s_path = dir.path().join("secondary.img");
    eprintln!(
        "bench-replicate: writing two {} files in {}",
        HumanBytes(args.size),
        dir.path().display()
    );
    random_file(&p_path, args.size, &mut SmallRng::seed_from_u64(3))?;
    std::fs::copy(&p_path, &s_path).map_err(io_err(s_path.display()))?;
    let vopts = VolumeOptions {
        io: args.io,
        ..VolumeOptions::default()
    };
    let mut data = vec![0u8; WRITE];
    SmallRng::seed_from_u64(5).fill_bytes(&mut data);

    let secondary = Secondary::new(
        open_volume(&s_path, &vopts)?,
        SecondaryConfig::new("127.0.0.1:0"),
    )?;
    let addr = secondary.serve()?.to_string();
    let open_primary = |resync_yield: bool| -> Result<Primary> {
        let mut config = PrimaryConfig::new(addr.clone());
        config.auto_resync = false;
        config.resync_yield = resync_yield;
        config.link_timeout = Duration::from_secs(30);
        // The secondary may not have seen the previous primary's link end yet: it refuses
        // another session while that one looks alive, so a refusal is waited out.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let primary = Primary::open(open_volume(&p_path, &vopts)?, config.clone())?;
            match primary.wait_connected(Duration::from_secs(30)) {
                Ok(()) => return Ok(primary),
                Err(e) if e.kind() == ErrorKind::Busy && Instant::now() < deadline => {
                    drop(primary);
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e.into()),
            }
        }
    };

    let (mut local, mut replicated, mut resync_alone) = (Vec::new(), Vec::new(), Vec::new());
    // Writes during the resync, and its seconds: [yielding, not yielding].
    let mut during = [Vec::new(), Vec::new()];
    let mut resync_loaded = [Vec::new(), Vec::new()];
    for round in 0..args.runs {
        eprintln!("bench-replicate: round {}", round + 1);
        // The local volume alone.
        {
            let vol: Arc<dyn Volume> = open_volume(&p_path, &vopts)?;
            let (rate, _) = write_rate(
                args.size,
                args.bytes,
                &data,
                || false,
                |o, d| Ok(vol.write_at(o, d)?),
            )?;
            local.push(rate);
        }
        // A first full-scan resync with nothing else running.
        {
            let primary = open_primary(true)?;
            let report = primary.resync()?;
            resync_alone.push(report.seconds);
            // Sync-mode replication of the same writes, the pair coherent.
            let (rate, _) = write_rate(
                args.size,
                args.bytes,
                &data,
                || false,
                |o, d| {
                    primary.write(o, d).map(|_| ())?;
                    Ok(())
                },
            )?;
            replicated.push(rate);
            primary.close()?;
        }
        // The same writes while a new primary's first full-scan resync runs, yielding to them
        // and not.
        for (i, resync_yield) in [true, false].into_iter().enumerate() {
            let primary = open_primary(resync_yield)?;
            let resync_done = AtomicBool::new(false);
            let (rate, resync_s) = std::thread::scope(|s| -> Result<(f64, f64)> {
                let job = s.spawn(|| {
                    let r = primary.resync();
                    resync_done.store(true, Ordering::SeqCst);
                    r
                });
                let written = write_rate(
                    args.size,
                    args.bytes,
                    &data,
                    || resync_done.load(Ordering::SeqCst),
                    |o, d| {
                        primary.write(o, d).map(|_| ())?;
                        Ok(())
                    },
                );
                let report = job
                    .join()
                    .map_err(|_| CliError::Check("the resync thread panicked".into()))??;
                Ok((written?.0, report.seconds))
            })?;
            during[i].push(rate);
            resync_loaded[i].push(resync_s);
            primary.close()?;
        }
    }
    secondary.stop();

    let (local, replicated) = (median(local), median(replicated));
    let [during, during_unyielding] = during.map(median);
    let resync_alone = median(resync_alone);
    let [resync_loaded, resync_unyielding] = resync_loaded.map(median);
    println!(
        "### Replication of 1 MiB writes, one writer, {} volumes (median of {} rounds)\n",
        HumanBytes(args.size),
        args.runs
    );
    println!("Random 1 MiB-aligned offsets; up to {} per row. \"During resync\" writes only while a new primary's first full-scan resync (sha1) runs, which yields to the writes (default) or not (`resync_yield` off); its resync seconds are next to those of the same resync alone.\n", HumanBytes(args.bytes));
    println!("| row | MiB/s | ÷ local alone | ÷ replicated alone | resync s |");
    println!("|---|---:|---:|---:|---:|");
    println!("| local volume alone | {local:.0} | 1.00 | – | – |");
    println!(
        "| sync-mode replication | {replicated:.0} | {:.2} | 1.00 | – |",
        replicated / local
    );
    println!("| first full-scan resync alone | – | – | – | {resync_alone:.2} |");
    println!(
        "| sync-mode replication during that resync, yielding | {during:.0} | {:.2} | {:.2} | {resync_loaded:.2} |",
        during / local,
        during / replicated
    );
    println!(
        "| sync-mode replication during that resync, not yielding | {during_unyielding:.0} | {:.2} | {:.2} | {resync_unyielding:.2} |",
        during_unyielding / local,
        during_unyielding / replicated
    );
    println!();
    println!("| what | now | target | |");
    println!("|---|---|---|---|");
    println!(
        "| sync-mode replication, one writer, 1 MiB writes | {replicated:.0} MiB/s; local alone {local:.0} MiB/s ({:.2} ×) | ≥ 0.8 × | {} |",
        replicated / local,
        if replicated / local >= 0.8 { "met" } else { "missed" }
    );
    println!(
        "| foreground writes while the first full-scan resync runs | {during:.0} MiB/s against {replicated:.0} without ({:.2} ×), resync {resync_loaded:.2} s (alone {resync_alone:.2} s) | ≥ 0.7 × | {} |",
        during / replicated,
        if during / replicated >= 0.7 { "met" } else { "missed" }
    );
    println!();
    Ok(EXIT_OK)
}

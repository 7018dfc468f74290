//! The benchmarks behind `make bench` (hidden subcommands; their output is Markdown tables).
//!
//! - `bench-sync`: `mirror sync` of two files that differ in a scattered fraction of their
//!   4 KiB blocks, run as real processes (`mirror serve` and `mirror sync` of this binary)
//!   per algorithm and compare side: seconds, and bytes on the wire ÷ bytes that differ.
//! - `bench-link-cut`: a primary and a secondary in-process through a proxy; the link is cut,
//!   random 4 KiB writes land, the link comes back and the dirty-map resync runs: bytes
//!   resent ÷ the bytes written.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::HumanBytes;
use mirror_core::{Algorithm, CompareSide, Primary, PrimaryConfig, Secondary, SecondaryConfig};
use mirror_uring::{open_volume, IoBackend, VolumeOptions};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::error::{CliError, Result, EXIT_OK};
use crate::parse::{parse_algorithm, parse_io, parse_size};
use crate::proxy::Proxy;

const BLOCK: u64 = 4096;

/// `mirror bench-sync`.
#[derive(Debug, Args)]
pub struct SyncBenchArgs {
    /// Size of each file.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub size: u64,
    /// Percentage of 4 KiB blocks that differ, scattered at random.
    #[arg(long, default_value = "1")]
    pub diff_percent: f64,
    /// Directory for the files (default: the system's temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// I/O backend.
    #[arg(long, default_value = "uring", value_parser = parse_io)]
    pub io: IoBackend,
    /// Seed of the data.
    #[arg(long, default_value = "1")]
    pub seed: u64,
}

/// `mirror bench-link-cut`.
#[derive(Debug, Args)]
pub struct LinkCutBenchArgs {
    /// Size of each volume.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub size: u64,
    /// Random 4 KiB writes that land while the link is down.
    #[arg(long, default_value = "10000")]
    pub writes: u64,
    /// Dirty-map region sizes to measure, comma-separated.
    #[arg(long, default_value = "4K,64K,1M", value_delimiter = ',', value_parser = parse_size)]
    pub region_sizes: Vec<u64>,
    /// Digest algorithm.
    #[arg(long, default_value = "sha1", value_parser = parse_algorithm)]
    pub algorithm: Algorithm,
    /// Directory for the files (default: the system's temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// I/O backend.
    #[arg(long, default_value = "uring", value_parser = parse_io)]
    pub io: IoBackend,
    /// Seed of the writes.
    #[arg(long, default_value = "1")]
    pub seed: u64,
}

pub(crate) fn io_err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> CliError {
    move |e| CliError::io(what.to_string(), e)
}

pub(crate) fn tempdir(dir: &Option<PathBuf>) -> Result<tempfile::TempDir> {
    let b = tempfile::Builder::new().prefix("mirror-bench-").to_owned();
    match dir {
        Some(d) => b.tempdir_in(d),
        None => b.tempdir(),
    }
    .map_err(io_err("creating a temporary directory"))
}

/// Writes `size` bytes of random data to a new file at `path`.
pub(crate) fn random_file(path: &Path, size: u64, rng: &mut SmallRng) -> Result<()> {
    let f = std::fs::File::create(path).map_err(io_err(path.display()))?;
    let mut w = std::io::BufWriter::with_capacity(8 << 20, f);
    let mut buf = vec![0u8; 8 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        w.write_all(&buf[..n]).map_err(io_err(path.display()))?;
        left -= n as u64;
    }
    w.flush().map_err(io_err(path.display()))
}

/// One row of the sync table.
struct SyncRow {
    algorithm: Algorithm,
    compare: CompareSide,
    wall: f64,
    report: serde_json::Value,
    verified: bool,
}

pub fn sync(args: SyncBenchArgs) -> Result<u8> {
    let exe = std::env::current_exe().map_err(io_err("finding the mirror binary"))?;
    let dir = tempdir(&args.dir)?;
    let a = dir.path().join("a.img");
    let pristine = dir.path().join("b-pristine.img");
    let b = dir.path().join("b.img");
    let blocks = args.size / BLOCK;
    let differ = ((blocks as f64) * args.diff_percent / 100.0).round() as usize;
    let differing_bytes = differ as u64 * BLOCK;

    let mut rng = SmallRng::seed_from_u64(args.seed);
    eprintln!(
        "bench-sync: writing two {} files in {} ({differ} blocks differ)",
        HumanBytes(args.size),
        dir.path().display()
    );
    random_file(&a, args.size, &mut rng)?;
    std::fs::copy(&a, &pristine).map_err(io_err(pristine.display()))?;
    {
        let f = std::fs::File::options()
            .write(true)
            .open(&pristine)
            .map_err(io_err(pristine.display()))?;
        let mut data = vec![0u8; BLOCK as usize];
        for i in rand::seq::index::sample(&mut rng, blocks as usize, differ) {
            rng.fill_bytes(&mut data);
            f.write_all_at(&data, i as u64 * BLOCK)
                .map_err(io_err(pristine.display()))?;
        }
    }

    let mut rows = Vec::new();
    for algorithm in Algorithm::ALL {
        for compare in [CompareSide::Primary, CompareSide::Secondary] {
            std::fs::copy(&pristine, &b).map_err(io_err(b.display()))?;
            eprintln!("bench-sync: {algorithm}, {} compares", compare.name());
            let (mut server, addr) = spawn_serve(&exe, &b, args.io)?;
            let common = |cmd: &mut Command| {
                cmd.arg(&a)
                    .args(["--peer", &addr, "--algorithm", algorithm.name()])
                    .args([
                        "--compare",
                        compare.name(),
                        "--io",
                        args.io.name(),
                        "--json",
                    ]);
            };
            let mut cmd = Command::new(&exe);
            cmd.arg("sync");
            common(&mut cmd);
            let t = Instant::now();
            let out = cmd.output().map_err(io_err("running mirror sync"))?;
            let wall = t.elapsed().as_secs_f64();
            if !out.status.success() {
                stop(&mut server);
                return Err(CliError::Check(format!(
                    "mirror sync failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            let report: serde_json::Value = serde_json::from_slice(&out.stdout)
                .map_err(|e| CliError::Check(format!("mirror sync printed bad JSON: {e}")))?;
            let mut cmd = Command::new(&exe);
            cmd.arg("verify");
            common(&mut cmd);
            let verified = cmd
                .output()
                .map_err(io_err("running mirror verify"))?
                .status
                .success();
            stop(&mut server);
            rows.push(SyncRow {
                algorithm,
                compare,
                wall,
                report,
                verified,
            });
        }
    }

    println!(
        "### `mirror sync`: two {} files, {} of {} blocks of 4 KiB differ ({}%, scattered)\n",
        HumanBytes(args.size),
        differ,
        blocks,
        args.diff_percent
    );
    println!("| algorithm | compare | seconds (report) | seconds (process) | blocks sent | bytes sent | bytes received | wire ÷ differing bytes | verify after |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        let u = |k: &str| r.report[k].as_u64().unwrap_or(0);
        let wire = u("bytes_sent") + u("bytes_received");
        println!(
            "| {} | {} | {:.2} | {:.2} | {} | {} | {} | {:.3} | {} |",
            r.algorithm,
            r.compare.name(),
            r.report["seconds"].as_f64().unwrap_or(0.0),
            r.wall,
            u("blocks_sent"),
            u("bytes_sent"),
            u("bytes_received"),
            wire as f64 / differing_bytes.max(1) as f64,
            if r.verified {
                "coherent"
            } else {
                "NOT coherent"
            }
        );
    }
    println!("\nDiffering bytes: {differ} × 4096 = {differing_bytes}. Wire = bytes sent + bytes received by the primary, as its report counts them (frames, digests, block data).");
    if rows.iter().all(|r| r.verified) {
        Ok(EXIT_OK)
    } else {
        Err(CliError::Check("a sync left the pair incoherent".into()))
    }
}

/// Starts `mirror serve` on `volume`; returns it and the address from its first line.
pub(crate) fn spawn_serve(exe: &Path, volume: &Path, io: IoBackend) -> Result<(Child, String)> {
    let mut child = Command::new(exe)
        .arg("serve")
        .arg("--volume")
        .arg(volume)
        .args(["--listen", "127.0.0.1:0", "--io", io.name()])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(io_err("starting mirror serve"))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    match line.trim().strip_prefix("listening on ") {
        Some(addr) => Ok((child, addr.to_owned())),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(CliError::Check(format!(
                "mirror serve did not say where it listens ({line:?})"
            )))
        }
    }
}

/// Stops a `mirror serve` with SIGTERM, as an operator would.
pub(crate) fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// One row of the link-cut table.
struct CutRow {
    region: u64,
    compare: CompareSide,
    mode: String,
    dirty_regions: u64,
    dirty_bytes: u64,
    report: mirror_core::Report,
    wire: u64,
    coherent: bool,
}

pub fn link_cut(args: LinkCutBenchArgs) -> Result<u8> {
    let dir = tempdir(&args.dir)?;
    let p_path = dir.path().join("primary.img");
    let s_path = dir.path().join("secondary.img");
    for p in [&p_path, &s_path] {
        crate::volumes::create_sparse(p, args.size)?;
    }
    let vopts = VolumeOptions {
        io: args.io,
        ..VolumeOptions::default()
    };
    let secondary = Secondary::new(
        open_volume(&s_path, &vopts)?,
        SecondaryConfig::new("127.0.0.1:0"),
    )?;
    let proxy = Proxy::start(secondary.serve()?).map_err(io_err("starting the link proxy"))?;
    let blocks = args.size / BLOCK;
    let written = args.writes * BLOCK;
    let mut rng = SmallRng::seed_from_u64(args.seed);
    let mut data = vec![0u8; BLOCK as usize];
    let mut rows = Vec::new();

    for &region in &args.region_sizes {
        for compare in [CompareSide::Primary, CompareSide::Secondary] {
            eprintln!(
                "bench-link-cut: region {}, {} compares",
                HumanBytes(region),
                compare.name()
            );
            let mut config = PrimaryConfig::new(proxy.addr().to_string());
            config.algorithm = args.algorithm;
            config.compare = compare;
            config.region_size = region;
            config.auto_resync = false;
            config.link_timeout = Duration::from_secs(1);
            let primary = Primary::open(open_volume(&p_path, &vopts)?, config)?;
            primary.wait_connected(Duration::from_secs(30))?;
            // A new primary owes a full scan; after it the pair is coherent.
            primary.resync()?;

            proxy.cut();
            for _ in 0..args.writes {
                let offset = rng.gen_range(0..blocks) * BLOCK;
                rng.fill_bytes(&mut data);
                primary.write(offset, &data)?;
            }
            let st = primary.status();
            proxy.restore();
            primary.wait_connected(Duration::from_secs(30))?;
            let wire0 = proxy.total_bytes();
            let report = primary.resync()?;
            let wire = proxy.total_bytes() - wire0;
            let coherent = primary.verify()?.coherent();
            primary.close()?;
            rows.push(CutRow {
                region,
                compare,
                mode: report.mode.name().to_owned(),
                dirty_regions: st.dirty_regions,
                dirty_bytes: st.dirty_bytes,
                report,
                wire,
                coherent,
            });
        }
    }
    secondary.stop();

    println!(
        "### Link cut: {} random 4 KiB writes on a {} volume while the link was down ({} algorithm)\n",
        args.writes,
        HumanBytes(args.size),
        args.algorithm
    );
    println!("| region | compare | resync mode | dirty regions | dirty bytes | blocks compared | blocks sent | bytes sent | bytes received | bytes sent ÷ {written} | wire ÷ {written} | seconds | verify after |");
    println!("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.2} | {} |",
            HumanBytes(r.region),
            r.compare.name(),
            r.mode,
            r.dirty_regions,
            r.dirty_bytes,
            r.report.blocks,
            r.report.blocks_sent,
            r.report.bytes_sent,
            r.report.bytes_received,
            r.report.bytes_sent as f64 / written as f64,
            r.wire as f64 / written as f64,
            r.report.seconds,
            if r.coherent {
                "coherent"
            } else {
                "NOT coherent"
            }
        );
    }
    println!("\nBytes sent and received are the primary's counts for the resync; wire is what the proxy between the two forwarded both ways during it.");
    if rows.iter().all(|r| r.coherent) {
        Ok(EXIT_OK)
    } else {
        Err(CliError::Check("a resync left the pair incoherent".into()))
    }
}

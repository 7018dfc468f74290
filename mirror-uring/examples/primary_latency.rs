//! Foreground write latency through a `Primary` with a periodic scan running on the same
//! volume: `cargo run --release -p mirror-uring --example primary_latency [-- OPTIONS]`.
//!
//! Two files of the same bytes are opened with `mirror_uring::open_volume` (io_uring, default
//! options); a `Secondary` serves one on 127.0.0.1 and a `Primary` (sync mode) mirrors the
//! other to it. Each row opens a fresh `Primary`, waits for its initial full-scan resync, then
//! times `--writes` random 4 KiB `Primary::write` calls with a short think time, either alone
//! or with `PeriodicScan { interval: 1 ms, rate_mib_s }` so periodic scans run back to back.
//! Rows alternate (alone, every scan, alone, every scan, ..., alone) so the machine's noise
//! shows; ratios are against the median p99 of the alone rows of the same run.
//!
//! The scan rate is measured, not assumed: the bytes the periodic scans got through during the
//! timed writes, followed in `Primary::status().job_remaining_bytes` (a rise is the next scan
//! starting over the whole volume); the periodic reports completed meanwhile are counted from
//! `Primary::status().last_report`. (Digest bytes on the link no longer tell it: a digest
//! tree sends a handful per chunk.)
//!
//! Options: `--size-mib N` (1024), `--writes N` (5000), `--dir PATH` (the temp dir),
//! `--rates LIST` (50,200), `--algorithms LIST` (crc32,sha1), `--repeat N` (2),
//! `--think-us N` (200), `--direct` (O_DIRECT on the primary's volume), `--out FILE`.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirror_core::{
    Algorithm, LinkState, PeriodicScan, Primary, PrimaryConfig, Report, ResyncMode, Secondary,
    SecondaryConfig, Volume, WriteOutcome,
};
use mirror_uring::{open_volume_with_info, VolumeOptions};

const MIB: f64 = 1024.0 * 1024.0;

const USAGE: &str = "\
usage: primary_latency [OPTIONS]

  --size-mib N        size of each of the two files (1024)
  --writes N          4 KiB writes per row (5000)
  --dir PATH          where the files go (the temp dir)
  --rates LIST        periodic scan rate limits, MiB/s, comma-separated (50,200)
  --algorithms LIST   periodic scan algorithms, comma-separated (crc32,sha1)
  --repeat N          times each scan row runs, alternating with alone rows (2)
  --think-us N        pause between writes, microseconds (200)
  --direct            open the primary's volume with O_DIRECT (default: buffered, as for files)
  --out FILE          also write the Markdown table to FILE";

struct Args {
    size_mib: u64,
    writes: usize,
    dir: PathBuf,
    rates: Vec<f64>,
    algorithms: Vec<Algorithm>,
    repeat: usize,
    think: Duration,
    direct: bool,
    out: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut a = Args {
        size_mib: 1024,
        writes: 5000,
        dir: std::env::temp_dir(),
        rates: vec![50.0, 200.0],
        algorithms: vec![Algorithm::Crc32, Algorithm::Sha1],
        repeat: 2,
        think: Duration::from_micros(200),
        direct: false,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| die(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--size-mib" => a.size_mib = val().parse().unwrap_or_else(|_| die("bad --size-mib")),
            "--writes" => a.writes = val().parse().unwrap_or_else(|_| die("bad --writes")),
            "--dir" => a.dir = PathBuf::from(val()),
            "--rates" => {
                a.rates = val()
                    .split(',')
                    .map(|s| s.parse().unwrap_or_else(|_| die("bad --rates")))
                    .collect()
            }
            "--algorithms" => {
                a.algorithms = val()
                    .split(',')
                    .map(|s| s.parse().unwrap_or_else(|e| die(&format!("{e}"))))
                    .collect()
            }
            "--repeat" => a.repeat = val().parse().unwrap_or_else(|_| die("bad --repeat")),
            "--think-us" => {
                a.think =
                    Duration::from_micros(val().parse().unwrap_or_else(|_| die("bad --think-us")))
            }
            "--direct" => a.direct = true,
            "--out" => a.out = Some(PathBuf::from(val())),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => die(&format!("unknown option {other}")),
        }
    }
    if a.writes == 0 || a.size_mib == 0 || a.repeat == 0 {
        die("--writes, --size-mib and --repeat must be positive");
    }
    a
}

fn die(msg: &str) -> ! {
    eprintln!("primary_latency: {msg}");
    std::process::exit(2)
}

/// Writes the same `size` bytes of incompressible data to both files, so the initial resync
/// of every row compares and ships nothing.
fn make_files(paths: [&Path; 2], size: u64) {
    let mut files =
        paths.map(|p| File::create(p).unwrap_or_else(|e| die(&format!("{}: {e}", p.display()))));
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut chunk = vec![0u8; 4 << 20];
    let mut left = size;
    while left > 0 {
        for w in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(chunk.len() as u64) as usize;
        for f in &mut files {
            f.write_all(&chunk[..n])
                .unwrap_or_else(|e| die(&e.to_string()));
        }
        left -= n as u64;
    }
    for f in &files {
        f.sync_all().unwrap_or_else(|e| die(&e.to_string()));
    }
}

/// Removes the files however the run ends.
struct TempFiles(Vec<PathBuf>);

impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// What runs next to the writes.
#[derive(Clone, Copy)]
enum Condition {
    Alone,
    Periodic { algorithm: Algorithm, rate: f64 },
}

impl Condition {
    fn label(self) -> String {
        match self {
            Condition::Alone => "alone".into(),
            Condition::Periodic { algorithm, rate } => {
                format!("periodic {algorithm}, {rate} MiB/s limit")
            }
        }
    }
}

struct Row {
    label: String,
    alone: bool,
    scan_mib_s: f64,
    periodic_done: usize,
    periodic_mib: f64,
    mismatched: u64,
    degraded: usize,
    p50: Duration,
    p99: Duration,
    p999: Duration,
}

/// Waits until `p` is connected and its first resync is done.
fn wait_ready(p: &Primary, timeout: Duration) -> Report {
    let deadline = Instant::now() + timeout;
    loop {
        let st = p.status();
        if st.state == LinkState::Connected {
            if let Some(r) = st.last_report {
                return r;
            }
        }
        if Instant::now() > deadline {
            die(&format!(
                "primary not connected and resynced after {timeout:?}: {st:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One row: a fresh primary over `vol` with `cond`, then `args.writes` timed writes.
fn run_row(vol: &Arc<dyn Volume>, peer: &str, cond: Condition, args: &Args, seed: u64) -> Row {
    let mut cfg = PrimaryConfig::new(peer);
    let mut scanning = false;
    if let Condition::Periodic { algorithm, rate } = cond {
        cfg.algorithm = algorithm;
        cfg.periodic = Some(PeriodicScan {
            interval: Duration::from_millis(1),
            rate_mib_s: rate,
        });
        scanning = true;
    }
    let primary =
        Primary::open(Arc::clone(vol), cfg).unwrap_or_else(|e| die(&format!("open: {e}")));
    let first = wait_ready(&primary, Duration::from_secs(600));
    if first.mismatched != 0 {
        eprintln!(
            "  (initial {} resync repaired {} blocks)",
            first.mode, first.mismatched
        );
    }
    // Let a periodic scan reach its pace (and the link settle) before timing.
    std::thread::sleep(Duration::from_millis(300));

    let st0 = primary.status();
    let mut last = st0.last_report.clone();
    let volume_bytes = vol.blocks() * vol.block_size().bytes();
    let mut remaining = st0.job_remaining_bytes;
    let mut scanned = 0u64;
    let (mut periodic_done, mut periodic_blocks, mut mismatched) = (0usize, 0u64, 0u64);
    let mut poll = |last: &mut Option<Report>| {
        let st = primary.status();
        let now_left = st.job_remaining_bytes;
        scanned += if now_left <= remaining {
            remaining - now_left
        } else {
            // The scan before ended and the next began over the whole volume.
            remaining + volume_bytes.saturating_sub(now_left)
        };
        remaining = now_left;
        let r = st.last_report;
        if r != *last {
            if let Some(r) = &r {
                if r.mode == ResyncMode::Periodic {
                    periodic_done += 1;
                    periodic_blocks += r.blocks;
                    mismatched += r.mismatched;
                }
            }
            *last = r;
        }
    };

    let blocks = vol.blocks();
    let bs = vol.block_size().bytes();
    let mut data = vec![0x5Au8; 4096];
    let mut x: u64 = seed | 1;
    let mut lat = Vec::with_capacity(args.writes);
    let mut degraded = 0;
    let t0 = Instant::now();
    for i in 0..args.writes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x % blocks) * bs;
        data[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let t = Instant::now();
        let outcome = primary
            .write(off, &data)
            .unwrap_or_else(|e| die(&format!("write: {e}")));
        lat.push(t.elapsed());
        if outcome != WriteOutcome::Replicated {
            degraded += 1;
        }
        if i % 50 == 49 {
            poll(&mut last);
        }
        // A foreground load with think time, not a saturating stream.
        std::thread::sleep(args.think);
    }
    poll(&mut last);
    let secs = t0.elapsed().as_secs_f64();
    primary
        .close()
        .unwrap_or_else(|e| die(&format!("close: {e}")));

    let scan_mib = if scanning { scanned as f64 / MIB } else { 0.0 };
    lat.sort();
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    Row {
        label: cond.label(),
        alone: matches!(cond, Condition::Alone),
        scan_mib_s: scan_mib / secs,
        periodic_done,
        periodic_mib: (periodic_blocks * bs) as f64 / MIB,
        mismatched,
        degraded,
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn main() {
    let args = parse_args();
    let size = args.size_mib << 20;
    std::fs::create_dir_all(&args.dir).unwrap_or_else(|e| die(&e.to_string()));
    let pid = std::process::id();
    let paths = [
        args.dir.join(format!("mirror-primary-latency-{pid}-a.img")),
        args.dir.join(format!("mirror-primary-latency-{pid}-b.img")),
    ];
    let _cleanup = TempFiles(paths.to_vec());
    eprintln!(
        "writing {} and {} ...",
        paths[0].display(),
        paths[1].display()
    );
    make_files([&paths[0], &paths[1]], size);

    let opts = VolumeOptions {
        direct: args.direct.then_some(true),
        ..VolumeOptions::default()
    };
    let (pvol, pinfo) =
        open_volume_with_info(&paths[0], &opts).unwrap_or_else(|e| die(&e.to_string()));
    let svol = mirror_uring::open_volume(&paths[1], &VolumeOptions::default())
        .unwrap_or_else(|e| die(&e.to_string()));
    let secondary = Secondary::new(svol, SecondaryConfig::new("127.0.0.1:0"))
        .unwrap_or_else(|e| die(&e.to_string()));
    let peer = secondary
        .serve()
        .unwrap_or_else(|e| die(&e.to_string()))
        .to_string();

    let scans: Vec<Condition> = args
        .rates
        .iter()
        .flat_map(|&rate| {
            args.algorithms
                .iter()
                .map(move |&algorithm| Condition::Periodic { algorithm, rate })
        })
        .collect();
    let mut plan = Vec::new();
    for _ in 0..args.repeat {
        plan.push(Condition::Alone);
        plan.extend(scans.iter().copied());
    }
    plan.push(Condition::Alone);

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load = |s: String| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    let load0 = load(std::fs::read_to_string("/proc/loadavg").unwrap_or_default());

    let mut rows = Vec::new();
    for (i, &cond) in plan.iter().enumerate() {
        eprintln!("row {}/{}: {} ...", i + 1, plan.len(), cond.label());
        let row = run_row(&pvol, &peer, cond, &args, 0x9E37_79B9_7F4A_7C15 ^ i as u64);
        eprintln!(
            "  p50 {} p99 {} p99.9 {} ms; scan {:.0} MiB/s, {} periodic scans done ({:.0} MiB), {} mismatched, {} degraded",
            ms(row.p50),
            ms(row.p99),
            ms(row.p999),
            row.scan_mib_s,
            row.periodic_done,
            row.periodic_mib,
            row.mismatched,
            row.degraded
        );
        rows.push(row);
    }
    let load1 = load(std::fs::read_to_string("/proc/loadavg").unwrap_or_default());
    secondary.stop();

    let mut alone: Vec<Duration> = rows.iter().filter(|r| r.alone).map(|r| r.p99).collect();
    alone.sort();
    let mid = alone.len() / 2;
    let base = if alone.len() % 2 == 0 {
        (alone[mid - 1] + alone[mid]) / 2
    } else {
        alone[mid]
    };
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Linux {}, {cpus} cores, load average {load0} at start and {load1} at the end. Two {} MiB \
         files on io_uring (`open_volume`, {}), a `Secondary` on 127.0.0.1 and \
         a `Primary` in sync mode; each row opens a fresh primary, waits for its initial resync, \
         then times {} `Primary::write` calls of 4 KiB at random blocks with {} µs think time. \
         Periodic rows run `PeriodicScan {{ interval: 1 ms, rate_mib_s }}`, so scans run back to \
         back; \"scan MiB/s\" is what the periodic scans got through during the \
         writes, \"scans done\" counts the periodic reports completed meanwhile. p99 ÷ alone is \
         against the median p99 of the alone rows ({} ms).\n",
        kernel.trim(),
        args.size_mib,
        if pinfo.direct {
            "default options but O_DIRECT on the primary"
        } else {
            "default options: buffered"
        },
        args.writes,
        args.think.as_micros(),
        ms(base),
    );
    let _ = writeln!(
        md,
        "| # | row | scan MiB/s | scans done | p50 ms | p99 ms | p99.9 ms | p99 ÷ alone |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|"
    );
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {:.2} |",
            i + 1,
            r.label,
            if r.alone {
                "–".to_string()
            } else {
                format!("{:.0}", r.scan_mib_s)
            },
            if r.alone {
                "–".to_string()
            } else {
                r.periodic_done.to_string()
            },
            ms(r.p50),
            ms(r.p99),
            ms(r.p999),
            r.p99.as_secs_f64() / base.as_secs_f64()
        );
    }
    println!("{md}");
    if let Some(out) = &args.out {
        std::fs::write(out, &md).unwrap_or_else(|e| die(&format!("{}: {e}", out.display())));
    }
}

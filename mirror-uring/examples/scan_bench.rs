//! Scan benchmark: `cargo run --release -p mirror-uring --example scan_bench [-- OPTIONS]`.
//!
//! In one run, and printed as Markdown tables:
//! 1. single-core (and all-core) hashing speed per algorithm, in memory;
//! 2. a scan of a 1 GiB file and of a 1 GiB loop device (when root) with a cold cache, per
//!    algorithm, on the sync backend, io_uring buffered and io_uring O_DIRECT, next to
//!    `dd if=... of=/dev/null iflag=direct bs=1M` reading the same bytes, and the io_uring
//!    buffered scan again with the file in the page cache (what the cores alone allow);
//!    then warm scans against one-core hashing, interleaved round by round so the machine's
//!    load falls on both alike, with one batch hashing at a time and with two (the default);
//! 3. p50/p99 latency of 4 KiB O_DIRECT writes on the volume alone, and with a background
//!    scan (idle I/O priority, rate-limited, and unlimited) running on the same volume.
//!
//! The cache is dropped before every measurement (`/proc/sys/vm/drop_caches` as root,
//! `posix_fadvise(DONTNEED)` otherwise).
//!
//! Options: `--size-mib N` (1024), `--dir PATH` (the temp dir; must be on a real disk, not
//! tmpfs), `--algorithms crc32,md5,sha1`, `--no-loop`, `--writes N` (5000),
//! `--rate-mib-s R` (100), `--latency-only` (skip hashing and scans), `--scans-only`, `--warm-rounds N` (5), `--out FILE` (also write the tables there).

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirror_core::scan::{hash_blocks, scan_range, RateLimiter, ScanOptions};
use mirror_core::{Algorithm, BlockRange, BlockSize, IoPriority, Volume};
use mirror_uring::{open_volume_with_info, IoBackend, VolumeOptions};

const MIB: f64 = 1024.0 * 1024.0;

const USAGE: &str = "\
usage: scan_bench [OPTIONS]   (bench/scan.sh [OPTIONS])

  --size-mib N        size of the file and loop device (1024)
  --dir PATH          where the file goes; a real disk, not tmpfs (the temp dir)
  --algorithms LIST   comma-separated: crc32,md5,sha1 (all)
  --no-loop           skip the loop device (skipped anyway when not root)
  --writes N          4 KiB writes per latency row (5000)
  --rate-mib-s R      rate limit of the limited background scan (100)
  --latency-only      skip hashing and scan tables
  --scans-only        skip the write latency table
  --warm-rounds N     rounds of the interleaved warm-scan ÷ one-core table (5; 0 skips it)
  --out FILE          also write the Markdown tables to FILE";

struct Args {
    size_mib: u64,
    dir: PathBuf,
    algorithms: Vec<Algorithm>,
    loop_device: bool,
    writes: usize,
    rate_mib_s: f64,
    scans: bool,
    latency: bool,
    warm_rounds: usize,
    out: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut a = Args {
        size_mib: 1024,
        dir: std::env::temp_dir(),
        algorithms: Algorithm::ALL.to_vec(),
        loop_device: true,
        writes: 5000,
        rate_mib_s: 100.0,
        scans: true,
        latency: true,
        warm_rounds: 5,
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
            "--dir" => a.dir = PathBuf::from(val()),
            "--algorithms" => {
                a.algorithms = val()
                    .split(',')
                    .map(|s| s.parse().unwrap_or_else(|e| die(&format!("{e}"))))
                    .collect()
            }
            "--no-loop" => a.loop_device = false,
            "--latency-only" => a.scans = false,
            "--scans-only" => a.latency = false,
            "--warm-rounds" => {
                a.warm_rounds = val().parse().unwrap_or_else(|_| die("bad --warm-rounds"))
            }
            "--writes" => a.writes = val().parse().unwrap_or_else(|_| die("bad --writes")),
            "--rate-mib-s" => {
                a.rate_mib_s = val().parse().unwrap_or_else(|_| die("bad --rate-mib-s"))
            }
            "--out" => a.out = Some(PathBuf::from(val())),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => die(&format!("unknown option {other}")),
        }
    }
    a
}

fn die(msg: &str) -> ! {
    eprintln!("scan_bench: {msg}");
    std::process::exit(2)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Drops `path`'s cached pages (all caches when root).
fn drop_cache(path: &Path) {
    if is_root() {
        let _ = Command::new("sync").status();
        if std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok() {
            return;
        }
    }
    if let Ok(f) = File::open(path) {
        let _ = f.sync_all();
        // SAFETY: the descriptor is open for the length of the call; the advice only drops
        // clean cached pages.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}

/// Writes `size` bytes of incompressible data.
fn make_file(path: &Path, size: u64) {
    let mut f = File::create(path).unwrap_or_else(|e| die(&format!("{}: {e}", path.display())));
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
        f.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    f.sync_all().unwrap();
}

/// CPU seconds this process has used (all threads, user and system).
fn cpu_seconds() -> f64 {
    // SAFETY: `usage` is a plain struct the call fills; RUSAGE_SELF needs nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

/// MiB/s of hashing 4 KiB blocks of `data` on one core.
fn one_core_speed(alg: Algorithm, data: &[u8]) -> f64 {
    let mut out = [0u8; 20];
    let w = alg.digest_len();
    let t = Instant::now();
    for block in data.chunks(4096) {
        alg.digest_into(block, &mut out[..w]);
    }
    data.len() as f64 / MIB / t.elapsed().as_secs_f64()
}

/// MiB/s and cores used of a full scan of `vol` (whose file is in the page cache) hashing
/// `ahead` batches at once.
fn warm_scan(vol: &dyn Volume, alg: Algorithm, ahead: usize) -> (f64, f64) {
    let mut opts = ScanOptions::new(alg);
    opts.hash_ahead = ahead;
    let (t, cpu) = (Instant::now(), cpu_seconds());
    scan_range(
        vol,
        BlockRange::new(0, vol.blocks()),
        opts,
        |_| Ok(()),
        |_| Ok(true),
    )
    .unwrap_or_else(|e| die(&e.to_string()));
    let secs = t.elapsed().as_secs_f64();
    (vol.size() as f64 / MIB / secs, (cpu_seconds() - cpu) / secs)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 0 {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

/// Warm-cache scans ÷ one-core hashing, interleaved round by round so a busy machine's load
/// falls on all alike: each round hashes 256 MiB on one core in memory, then scans the file
/// (io_uring, buffered, in the page cache) hashing one batch at a time and then two (the
/// default). Returns the medians: one-core MiB/s, and per `ahead` the scan's MiB/s, its ratio
/// to the same round's one-core speed, and the cores it used.
fn warm_rounds(path: &Path, alg: Algorithm, rounds: usize) -> (f64, [(f64, f64, f64); 2]) {
    let data: Vec<u8> = (0..(256usize << 20))
        .map(|i| (i * 31 + i / 4096) as u8)
        .collect();
    let opts = VolumeOptions {
        io: IoBackend::Uring,
        direct: Some(false),
        read_only: true,
        ..VolumeOptions::default()
    };
    let vol = open_volume_with_info(path, &opts)
        .unwrap_or_else(|e| die(&e.to_string()))
        .0;
    warm_scan(&*vol, alg, 2); // fills the page cache
    let mut one = Vec::new();
    let mut per: [(Vec<f64>, Vec<f64>, Vec<f64>); 2] = Default::default();
    for round in 0..rounds {
        let o = one_core_speed(alg, &data);
        one.push(o);
        for (i, ahead) in [1, 2].into_iter().enumerate() {
            let (mib, cores) = warm_scan(&*vol, alg, ahead);
            eprintln!(
                "warm {alg} round {}: one core {o:.0} MiB/s, scan hashing {ahead} batch(es) at once {mib:.0} MiB/s ({:.2}x, {cores:.2} cores)",
                round + 1,
                mib / o
            );
            per[i].0.push(mib);
            per[i].1.push(mib / o);
            per[i].2.push(cores);
        }
    }
    let [a, b] = per;
    let m = |(x, y, z): (Vec<f64>, Vec<f64>, Vec<f64>)| (median(x), median(y), median(z));
    (median(one), [m(a), m(b)])
}

/// MiB/s of hashing 4 KiB blocks on one core, and on all cores (rayon, as scans do).
fn hashing_speed(alg: Algorithm) -> (f64, f64) {
    let data: Vec<u8> = (0..(256usize << 20))
        .map(|i| (i * 31 + i / 4096) as u8)
        .collect();
    let mut out = [0u8; 20];
    let w = alg.digest_len();
    let t = Instant::now();
    for block in data.chunks(4096) {
        alg.digest_into(block, &mut out[..w]);
    }
    let one = data.len() as f64 / MIB / t.elapsed().as_secs_f64();
    let mut digests = Vec::new();
    let t = Instant::now();
    hash_blocks(alg, BlockSize::DEFAULT, &data, &mut digests);
    let all = data.len() as f64 / MIB / t.elapsed().as_secs_f64();
    (one, all)
}

/// MiB/s of `dd if=path of=/dev/null iflag=direct bs=1M`, timed from outside.
fn dd_speed(path: &Path, size: u64) -> f64 {
    drop_cache(path);
    let t = Instant::now();
    let st = Command::new("dd")
        .arg(format!("if={}", path.display()))
        .arg("of=/dev/null")
        .arg("iflag=direct")
        .arg("bs=1M")
        .arg("status=none")
        .status()
        .unwrap_or_else(|e| die(&format!("dd: {e}")));
    if !st.success() {
        die("dd failed");
    }
    size as f64 / MIB / t.elapsed().as_secs_f64()
}

/// MiB/s of a full scan of `path` with `alg` on a freshly opened volume, the cache dropped
/// first (`cold`) or left as the previous scan left it.
fn scan_speed(path: &Path, alg: Algorithm, io: IoBackend, direct: bool, cold: bool) -> f64 {
    if cold {
        drop_cache(path);
    }
    let opts = VolumeOptions {
        io,
        direct: Some(direct),
        read_only: true,
        ..VolumeOptions::default()
    };
    let (vol, info) = open_volume_with_info(path, &opts).unwrap_or_else(|e| die(&e.to_string()));
    if info.backend != io {
        die(&format!("asked for {} and got {:?}", io.name(), info));
    }
    let range = BlockRange::new(0, vol.blocks());
    let mut blocks = 0u64;
    let t = Instant::now();
    scan_range(
        &*vol,
        range,
        ScanOptions::new(alg),
        |_| Ok(()),
        |batch| {
            blocks += batch.len() as u64;
            Ok(true)
        },
    )
    .unwrap_or_else(|e| die(&e.to_string()));
    assert_eq!(blocks, range.count);
    vol.size() as f64 / MIB / t.elapsed().as_secs_f64()
}

/// A background scan: its algorithm, I/O priority and rate limit (MiB/s), if any.
type BackgroundScan = Option<(Algorithm, IoPriority, Option<f64>)>;

struct Latency {
    p50: Duration,
    p99: Duration,
    p999: Duration,
    scanned_mib: f64,
}

/// Latency of `n` 4 KiB writes at pseudo-random blocks of `vol`, while `scan` (if any) runs a
/// background scan of the whole volume on another thread.
fn write_latency(vol: &Arc<dyn Volume>, n: usize, scan: BackgroundScan) -> Latency {
    let stop = AtomicBool::new(false);
    let blocks = vol.blocks() - 1;
    let mut lat = Vec::with_capacity(n);
    let mut scanned = 0u64;
    std::thread::scope(|s| {
        let scanner = scan.map(|(alg, priority, rate)| {
            let vol = Arc::clone(vol);
            let stop = &stop;
            s.spawn(move || {
                let mut opts = ScanOptions::new(alg);
                opts.priority = priority;
                let mut limiter = rate.map(RateLimiter::new);
                let mut bytes = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = scan_range(
                        &*vol,
                        BlockRange::new(0, vol.blocks()),
                        opts,
                        |len| {
                            if let Some(l) = limiter.as_mut() {
                                l.take(len);
                            }
                            Ok(())
                        },
                        |b| {
                            bytes += b.len() as u64 * 4096;
                            Ok(!stop.load(Ordering::Relaxed))
                        },
                    );
                }
                bytes
            })
        });
        if scanner.is_some() {
            // Let the scan reach its pace before measuring.
            std::thread::sleep(Duration::from_millis(300));
        }
        let data = vec![0x5Au8; 4096];
        let mut x: u64 = 88172645463325252;
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = (x % blocks) * 4096;
            let t = Instant::now();
            vol.write_at(off, &data)
                .unwrap_or_else(|e| die(&e.to_string()));
            lat.push(t.elapsed());
            // A foreground load with think time, not a saturating stream.
            std::thread::sleep(Duration::from_micros(200));
        }
        stop.store(true, Ordering::Relaxed);
        if let Some(h) = scanner {
            scanned = h.join().unwrap();
        }
    });
    lat.sort();
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    Latency {
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        scanned_mib: scanned as f64 / MIB,
    }
}

struct LoopDev(String);

impl LoopDev {
    fn attach(file: &Path) -> Result<LoopDev, String> {
        if !is_root() {
            return Err("not root".into());
        }
        let out = Command::new("losetup")
            .args(["-f", "--show", "--direct-io=on"])
            .arg(file)
            .output()
            .map_err(|e| format!("losetup: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(LoopDev(
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        ))
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn main() {
    let args = parse_args();
    let size = args.size_mib << 20;
    let mut md = String::new();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let _ = writeln!(
        md,
        "Linux {}, {cpus} cores, {} MiB volumes, 4 KiB blocks, scans read 4 MiB batches as 256 KiB \
         reads; cold cache before every row ({}) but \"uring warm\", which rescans with the file in the page cache; load average at start {}.\n",
        kernel.trim(),
        args.size_mib,
        if is_root() { "drop_caches" } else { "fadvise DONTNEED" },
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );

    // 1. Hashing.
    let _ = writeln!(
        md,
        "| algorithm | 1 core MiB/s | {cpus} cores MiB/s |\n|---|---:|---:|"
    );
    let mut single = Vec::new();
    for &alg in args.algorithms.iter().filter(|_| args.scans) {
        let (one, all) = hashing_speed(alg);
        eprintln!("hash {alg}: {one:.0} MiB/s on one core, {all:.0} on {cpus}");
        single.push((alg, one));
        let _ = writeln!(md, "| {alg} | {one:.0} | {all:.0} |");
    }
    md.push('\n');

    // 2. Scans.
    std::fs::create_dir_all(&args.dir).unwrap_or_else(|e| die(&e.to_string()));
    let file = args
        .dir
        .join(format!("mirror-scan-bench-{}.img", std::process::id()));
    eprintln!("writing {} ...", file.display());
    make_file(&file, size);
    let loop_dev = if args.loop_device {
        match LoopDev::attach(&file) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("loop device skipped: {e}");
                let _ = writeln!(md, "(loop device skipped: {e})\n");
                None
            }
        }
    } else {
        None
    };
    let mut targets: Vec<(String, PathBuf)> = vec![("file".into(), file.clone())];
    if let Some(d) = &loop_dev {
        targets.push(("loop device".into(), PathBuf::from(&d.0)));
    }
    if args.scans {
        let _ = writeln!(
            md,
            "| target | algorithm | dd iflag=direct MiB/s | sync MiB/s | uring MiB/s | uring O_DIRECT MiB/s | default / dd | target | uring warm MiB/s | uring ÷ 1-core hashing | warm ÷ 1-core hashing |\n\
             |---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"
        );
    }
    for (label, path) in targets.iter().filter(|_| args.scans) {
        let dd = dd_speed(path, size);
        eprintln!("{label}: dd {dd:.0} MiB/s");
        for &(alg, one_core) in &single {
            let sync = scan_speed(path, alg, IoBackend::Sync, false, true);
            let uring = scan_speed(path, alg, IoBackend::Uring, false, true);
            // The same again with the file in the page cache: what the cores alone allow.
            let warm = scan_speed(path, alg, IoBackend::Uring, false, false);
            let direct = scan_speed(path, alg, IoBackend::Uring, true, true);
            // What `open_volume` picks by default: O_DIRECT for devices, buffered for files.
            let default = if label.as_str() == "file" {
                uring
            } else {
                direct
            };
            let goal = if alg == Algorithm::Crc32 {
                0.9 * dd
            } else {
                (0.9 * dd).min(1.6 * one_core)
            };
            eprintln!(
                "{label} {alg}: sync {sync:.0}, uring {uring:.0} (warm {warm:.0}), direct {direct:.0} MiB/s (goal {goal:.0})"
            );
            let _ = writeln!(
                md,
                "| {label} | {alg} | {dd:.0} | {sync:.0} | {uring:.0} | {direct:.0} | {:.2} | ≥ {goal:.0}: {} | {warm:.0} | {:.2} | {:.2} |",
                default / dd,
                if default >= goal { "met" } else { "missed" },
                uring / one_core,
                warm / one_core,
            );
        }
    }
    md.push('\n');

    // 2b. Warm scans against one-core hashing, interleaved.
    if args.scans && args.warm_rounds > 0 {
        let _ = writeln!(
            md,
            "Warm-cache scans of the file (io_uring, buffered, all in the page cache) against \
             hashing on one core in memory, interleaved: {} rounds, each hashing 256 MiB on one \
             core, then scanning with one batch hashing at a time, then with two (the default); \
             medians, the ratio taken within each round. \"cores\" is the process's CPU time \
             over the scan's wall time.\n\n\
             | algorithm | 1 core MiB/s | scan, 1 batch at a time: MiB/s | ÷ 1 core | cores | scan, 2 at once: MiB/s | ÷ 1 core | cores |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|",
            args.warm_rounds
        );
        for &alg in &args.algorithms {
            let (one, [a, b]) = warm_rounds(&file, alg, args.warm_rounds);
            let _ = writeln!(
                md,
                "| {alg} | {one:.0} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} |",
                a.0, a.1, a.2, b.0, b.1, b.2
            );
        }
        md.push('\n');
    }

    // 3. Foreground write latency with a background scan on the same volume.
    let opts = VolumeOptions {
        direct: Some(true),
        ..VolumeOptions::default()
    };
    if args.latency {
        let _ = writeln!(
        md,
        "4 KiB O_DIRECT writes (io_uring `write_at`, normal priority), {} writes at random blocks \
         with 0.2 ms think time, alone and with a background scan (`scan_range`, md5 or crc32) looping \
         over the same volume; idle scans keep at most `idle_queue_depth` (2) reads in flight, \
         normal ones 32. \"alone, again\" repeats the first row after the others, to show the noise.\n\n\
         | target | background scan | scanned MiB/s | p50 ms | p99 ms | p99.9 ms | p99 / alone |\n\
         |---|---|---:|---:|---:|---:|---:|",
        args.writes
    );
    }
    for (label, path) in targets.iter().filter(|_| args.latency) {
        let rate = args.rate_mib_s;
        let mut runs: Vec<(String, BackgroundScan)> = vec![("alone".into(), None)];
        for alg in [Algorithm::Md5, Algorithm::Crc32] {
            runs.push((
                format!("{alg}, idle, {rate} MiB/s limit"),
                Some((alg, IoPriority::Idle, Some(rate))),
            ));
            runs.push((
                format!("{alg}, idle, no limit"),
                Some((alg, IoPriority::Idle, None)),
            ));
            runs.push((
                format!("{alg}, normal priority, no limit"),
                Some((alg, IoPriority::Normal, None)),
            ));
        }
        runs.push(("alone, again".into(), None));
        let vol = open_volume_with_info(path, &opts)
            .unwrap_or_else(|e| die(&e.to_string()))
            .0;
        // Warm-up, not reported: first writes after a cache drop pay for metadata.
        drop_cache(path);
        write_latency(&vol, args.writes / 4, None);
        let mut alone = None;
        for (scan_label, scan) in runs {
            drop_cache(path);
            let t = Instant::now();
            let l = write_latency(&vol, args.writes, scan);
            let secs = t.elapsed().as_secs_f64();
            let base = *alone.get_or_insert(l.p99);
            eprintln!(
                "{label}: writes with scan {scan_label}: p50 {} p99 {} p99.9 {} ms",
                ms(l.p50),
                ms(l.p99),
                ms(l.p999)
            );
            let _ = writeln!(
                md,
                "| {label} | {scan_label} | {:.0} | {} | {} | {} | {:.2} |",
                l.scanned_mib / secs,
                ms(l.p50),
                ms(l.p99),
                ms(l.p999),
                l.p99.as_secs_f64() / base.as_secs_f64()
            );
        }
    }
    drop(loop_dev);
    let _ = std::fs::remove_file(&file);

    println!("{md}");
    if let Some(out) = args.out {
        std::fs::write(&out, &md).unwrap_or_else(|e| die(&format!("{}: {e}", out.display())));
    }
}

//! `mirror bench-table`: the wire, time and memory rows of the performance table, side by side
//! with rsync, as Markdown tables (hidden subcommand; `make bench` runs it).
//!
//! One random file `a` and, per percentage, a copy of it with that fraction of its 4 KiB blocks
//! rewritten at scattered places. Every row runs real processes: `mirror serve` on a fresh copy
//! of the pristine `b`, `mirror sync` then `mirror verify` of `a` against it (per algorithm);
//! `rsync -B4096 --inplace --no-whole-file --ignore-times` pushing `a` to an rsync daemon over
//! loopback; and the same sync and verify through a [`Shape`]d proxy for the WAN rows. After
//! every sync the two files are compared byte for byte; a difference fails the benchmark.
//! Every figure is the median of `--runs` runs, and every ratio is taken between medians of
//! the same invocation.
//! Peak RSS of `mirror serve` and `mirror sync` is measured on sparse (all-zero) pairs.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::HumanBytes;
use mirror_core::Algorithm;
use mirror_uring::IoBackend;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

use crate::bench::{io_err, random_file, spawn_serve, stop, tempdir};
use crate::error::{CliError, Result, EXIT_OK};
use crate::parse::{parse_io, parse_size};
use crate::proxy::{Proxy, Shape};

const BLOCK: u64 = 4096;

/// `mirror bench-table`.
#[derive(Debug, Args)]
pub struct TableBenchArgs {
    /// Size of each file.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub size: u64,
    /// Percentages of 4 KiB blocks that differ, comma-separated.
    #[arg(long, default_value = "0,0.1,1,10", value_delimiter = ',')]
    pub diff_percents: Vec<f64>,
    /// Runs per figure (the median is printed).
    #[arg(long, default_value = "3")]
    pub runs: usize,
    /// Round trip of the WAN link, milliseconds.
    #[arg(long, default_value = "50")]
    pub wan_rtt_ms: u64,
    /// Rate of the WAN link, Mbit/s each way.
    #[arg(long, default_value = "100")]
    pub wan_mbit: u64,
    /// Percentage of differing blocks of the WAN rows (one of --diff-percents).
    #[arg(long, default_value = "1")]
    pub wan_diff_percent: f64,
    /// Sizes of the sparse pairs whose peak RSS is measured, comma-separated (none: skip).
    #[arg(long, default_value = "1G,4G", value_delimiter = ',', value_parser = parse_size)]
    pub rss_sizes: Vec<u64>,
    /// The rsync program.
    #[arg(long, default_value = "rsync")]
    pub rsync: PathBuf,
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

/// A process that ran to its end: seconds, stdout, peak RSS.
struct Ran {
    ok: bool,
    seconds: f64,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    max_rss_kib: u64,
}

/// Runs `cmd` to its end, timing it, and reaps it with `wait4` for its peak RSS.
fn run_measured(cmd: &mut Command, what: &str) -> Result<Ran> {
    let t = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(format!("starting {what}")))?;
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_end(&mut v);
        }
        v
    });
    let mut stdout = Vec::new();
    if let Some(o) = out.as_mut() {
        let _ = o.read_to_end(&mut stdout);
    }
    let stderr = err_reader.join().unwrap_or_default();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of a plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: `pid` is our child, not yet reaped (Child::wait was never called), and both
    // out-pointers point at live locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = t.elapsed().as_secs_f64();
    if r != pid {
        return Err(CliError::io(
            format!("waiting for {what}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(Ran {
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        seconds,
        stdout,
        stderr,
        max_rss_kib: usage.ru_maxrss as u64,
    })
}

/// Peak RSS of a running process, from `/proc`.
fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// True when the two files hold the same bytes.
fn same_bytes(a: &Path, b: &Path) -> Result<bool> {
    let fa = std::fs::File::open(a).map_err(io_err(a.display()))?;
    let fb = std::fs::File::open(b).map_err(io_err(b.display()))?;
    let (la, lb) = (
        fa.metadata().map_err(io_err(a.display()))?.len(),
        fb.metadata().map_err(io_err(b.display()))?.len(),
    );
    if la != lb {
        return Ok(false);
    }
    let mut x = vec![0u8; 8 << 20];
    let mut y = vec![0u8; 8 << 20];
    let mut off = 0;
    while off < la {
        let n = (la - off).min(x.len() as u64) as usize;
        fa.read_exact_at(&mut x[..n], off)
            .map_err(io_err(a.display()))?;
        fb.read_exact_at(&mut y[..n], off)
            .map_err(io_err(b.display()))?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
        off += n as u64;
    }
    Ok(true)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One sync then verify of `a` onto a fresh copy of `pristine`.
#[derive(Debug, Clone, Copy, Default)]
struct PairRun {
    sync_s: f64,
    sync_wire: u64,
    verify_s: f64,
    verify_wire: u64,
    serve_rss_kib: u64,
    sync_rss_kib: u64,
}

fn wire_of(stdout: &[u8], what: &str) -> Result<u64> {
    let v: serde_json::Value = serde_json::from_slice(stdout)
        .map_err(|e| CliError::Check(format!("{what} printed bad JSON: {e}")))?;
    let u = |k: &str| v[k].as_u64().unwrap_or(0);
    Ok(u("bytes_sent") + u("bytes_received"))
}

struct Ctx<'a> {
    exe: PathBuf,
    args: &'a TableBenchArgs,
}

impl Ctx<'_> {
    /// `mirror serve` on `b`, `mirror sync` and `mirror verify` of `a` against it (through a
    /// proxy of `shape` when given); checks that `a` and `b` hold the same bytes after.
    fn pair_run(
        &self,
        a: &Path,
        b: &Path,
        algorithm: Algorithm,
        shape: Option<Shape>,
    ) -> Result<PairRun> {
        let (mut server, addr) = spawn_serve(&self.exe, b, self.args.io)?;
        let result = (|| {
            let proxy = match shape {
                Some(s) => {
                    let target = addr
                        .parse()
                        .map_err(|_| CliError::Check(format!("bad serve address {addr}")))?;
                    Some(
                        Proxy::start_shaped(target, Some(s))
                            .map_err(io_err("starting the proxy"))?,
                    )
                }
                None => None,
            };
            let peer = proxy
                .as_ref()
                .map(|p| p.addr().to_string())
                .unwrap_or(addr.clone());
            let job = |verb: &str| -> Result<Ran> {
                let mut cmd = Command::new(&self.exe);
                cmd.arg(verb)
                    .arg(a)
                    .args(["--peer", &peer, "--algorithm", algorithm.name()])
                    .args(["--io", self.args.io.name(), "--json"]);
                let ran = run_measured(&mut cmd, &format!("mirror {verb}"))?;
                if !ran.ok {
                    return Err(CliError::Check(format!(
                        "mirror {verb} failed: {}",
                        String::from_utf8_lossy(&ran.stderr).trim()
                    )));
                }
                Ok(ran)
            };
            let sync = job("sync")?;
            let serve_rss_kib = vm_hwm_kib(server.id());
            if !same_bytes(a, b)? {
                return Err(CliError::Check(format!(
                    "after mirror sync ({algorithm}) the files differ"
                )));
            }
            let verify = job("verify")?;
            Ok(PairRun {
                sync_s: sync.seconds,
                sync_wire: wire_of(&sync.stdout, "mirror sync")?,
                verify_s: verify.seconds,
                verify_wire: wire_of(&verify.stdout, "mirror verify")?,
                serve_rss_kib,
                sync_rss_kib: sync.max_rss_kib,
            })
        })();
        stop(&mut server);
        result
    }
}

/// An rsync daemon over loopback serving `dir` as module `bench`, writable.
struct RsyncDaemon {
    child: Child,
    port: u16,
}

impl RsyncDaemon {
    fn start(rsync: &Path, dir: &Path) -> Result<RsyncDaemon> {
        let conf = dir.join("rsyncd.conf");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io_err("finding a free port"))?
            .port();
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        std::fs::write(
            &conf,
            format!(
                "use chroot = no\nuid = {uid}\ngid = {gid}\npid file = {pid}\n[bench]\npath = {path}\nread only = no\n",
                pid = dir.join("rsyncd.pid").display(),
                path = dir.display()
            ),
        )
        .map_err(io_err(conf.display()))?;
        let child = Command::new(rsync)
            .arg("--daemon")
            .arg("--no-detach")
            .arg(format!("--config={}", conf.display()))
            .args(["--address=127.0.0.1", &format!("--port={port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_err(format!("starting {}", rsync.display())))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(CliError::Check("the rsync daemon did not start".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(RsyncDaemon { child, port })
    }

    /// Pushes `a` onto `name` in the module; seconds and bytes on the wire (rsync's counts).
    fn push(&self, rsync: &Path, a: &Path, name: &str) -> Result<(f64, u64)> {
        let mut cmd = Command::new(rsync);
        // --ignore-times: a fresh copy written within the second `a` was written has its size
        // and modification time, and rsync's quick check would skip it without comparing.
        cmd.args([
            "-B4096",
            "--inplace",
            "--no-whole-file",
            "--ignore-times",
            "--stats",
        ])
        .arg(a)
        .arg(format!("rsync://127.0.0.1:{}/bench/{name}", self.port));
        let ran = run_measured(&mut cmd, "rsync")?;
        if !ran.ok {
            return Err(CliError::Check(format!(
                "rsync failed: {}",
                String::from_utf8_lossy(&ran.stderr).trim()
            )));
        }
        let text = String::from_utf8_lossy(&ran.stdout);
        let count = |key: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.chars().filter(char::is_ascii_digit).collect::<String>())
                .and_then(|d| d.parse().ok())
                .unwrap_or(0)
        };
        Ok((
            ran.seconds,
            count("Total bytes sent:") + count("Total bytes received:"),
        ))
    }
}

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies `from` to `to` and makes the copy durable, so that the timed job that follows does
/// not pay for writing back the benchmark's own setup (on ext4 the first fsync of a job, the
/// secondary's metadata record, would otherwise wait for the whole copy to reach the disk).
fn fresh_copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).map_err(io_err(to.display()))?;
    std::fs::File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(io_err(to.display()))
}

/// Copies `a` into `pristine` and rewrites `differ` scattered blocks of it.
fn make_pristine(a: &Path, pristine: &Path, blocks: u64, differ: usize, seed: u64) -> Result<()> {
    std::fs::copy(a, pristine).map_err(io_err(pristine.display()))?;
    let f = std::fs::File::options()
        .write(true)
        .open(pristine)
        .map_err(io_err(pristine.display()))?;
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut data = vec![0u8; BLOCK as usize];
    for i in rand::seq::index::sample(&mut rng, blocks as usize, differ) {
        rng.fill_bytes(&mut data);
        f.write_all_at(&data, i as u64 * BLOCK)
            .map_err(io_err(pristine.display()))?;
    }
    Ok(())
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "missed"
    }
}

fn mb(bytes: f64) -> String {
    format!("{:.2} MB", bytes / 1e6)
}

/// Medians of one algorithm's pair runs.
#[derive(Debug, Clone, Copy)]
struct PairMedians {
    sync_s: f64,
    sync_wire: f64,
    verify_s: f64,
    verify_wire: f64,
}

fn medians(runs: &[PairRun]) -> PairMedians {
    PairMedians {
        sync_s: median(runs.iter().map(|r| r.sync_s).collect()),
        sync_wire: median(runs.iter().map(|r| r.sync_wire as f64).collect()),
        verify_s: median(runs.iter().map(|r| r.verify_s).collect()),
        verify_wire: median(runs.iter().map(|r| r.verify_wire as f64).collect()),
    }
}

pub fn run(args: TableBenchArgs) -> Result<u8> {
    if args.runs == 0 {
        return Err(CliError::Check("--runs must be at least 1".into()));
    }
    let ctx = Ctx {
        exe: std::env::current_exe().map_err(io_err("finding the mirror binary"))?,
        args: &args,
    };
    let dir = tempdir(&args.dir)?;
    let a = dir.path().join("a.img");
    let pristine = dir.path().join("b-pristine.img");
    let b = dir.path().join("b.img");
    let blocks = args.size / BLOCK;
    let shape = Shape {
        rtt: Duration::from_millis(args.wan_rtt_ms),
        bits_per_sec: args.wan_mbit * 1_000_000,
    };
    let rsync = RsyncDaemon::start(&args.rsync, dir.path())?;

    eprintln!(
        "bench-table: writing a {} file in {}",
        HumanBytes(args.size),
        dir.path().display()
    );
    random_file(&a, args.size, &mut SmallRng::seed_from_u64(args.seed))?;

    // Summary figures, filled as the rows run.
    let mut identical_verify_wire: Vec<(Algorithm, f64)> = Vec::new();
    let mut one_percent: Vec<(Algorithm, f64, f64)> = Vec::new(); // wire ratio, × rsync
    let mut rsync_one = f64::NAN;
    let mut wan_rows: Vec<(Algorithm, PairMedians)> = Vec::new();

    println!(
        "### `mirror sync` and `mirror verify` against rsync: {} files, 4 KiB blocks, median of {} runs\n",
        HumanBytes(args.size),
        args.runs
    );
    println!("`mirror serve` and `mirror sync`/`verify` processes over loopback, page cache warm; rsync `-B4096 --inplace --no-whole-file --ignore-times` pushing to an rsync daemon over loopback (its delta algorithm runs, whatever the files' times). Seconds are the client process's wall time; wire = bytes sent + received by the client (the primary's report; rsync's `--stats`). Every sync is followed by a byte-for-byte comparison of the two files (all equal, or the benchmark fails).\n");
    println!("| differing blocks | tool | algorithm | sync s | sync wire | wire ÷ differing bytes | rsync s ÷ this | verify s (after) | verify wire |");
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|");
    for &pct in &args.diff_percents {
        let differ = ((blocks as f64) * pct / 100.0).round() as usize;
        let differing_bytes = differ as u64 * BLOCK;
        make_pristine(&a, &pristine, blocks, differ, args.seed ^ pct.to_bits())?;
        let mut rs = Vec::new();
        for i in 0..args.runs {
            eprintln!("bench-table: {pct}%: rsync, run {}", i + 1);
            fresh_copy(&pristine, &b)?;
            rs.push(rsync.push(&args.rsync, &a, "b.img")?);
            if !same_bytes(&a, &b)? {
                return Err(CliError::Check("after rsync the files differ".into()));
            }
        }
        let rsync_s = median(rs.iter().map(|r| r.0).collect());
        let rsync_wire = median(rs.iter().map(|r| r.1 as f64).collect());
        let label = format!("{differ} ({pct}%)");
        let ratio = |wire: f64| {
            if differing_bytes == 0 {
                "–".to_string()
            } else {
                format!("{:.3}", wire / differing_bytes as f64)
            }
        };
        for algorithm in Algorithm::ALL {
            let mut runs = Vec::new();
            for i in 0..args.runs {
                eprintln!("bench-table: {pct}%: {algorithm}, run {}", i + 1);
                fresh_copy(&pristine, &b)?;
                runs.push(ctx.pair_run(&a, &b, algorithm, None)?);
            }
            let m = medians(&runs);
            println!(
                "| {label} | mirror | {algorithm} | {:.2} | {} | {} | {:.2} | {:.2} | {} |",
                m.sync_s,
                mb(m.sync_wire),
                ratio(m.sync_wire),
                rsync_s / m.sync_s,
                m.verify_s,
                mb(m.verify_wire)
            );
            identical_verify_wire.push((algorithm, m.verify_wire));
            if pct == 1.0 {
                one_percent.push((
                    algorithm,
                    m.sync_wire / differing_bytes.max(1) as f64,
                    rsync_s / m.sync_s,
                ));
            }
            if pct == args.wan_diff_percent {
                let mut runs = Vec::new();
                for i in 0..args.runs {
                    eprintln!(
                        "bench-table: {pct}%: {algorithm} through the WAN link, run {}",
                        i + 1
                    );
                    fresh_copy(&pristine, &b)?;
                    runs.push(ctx.pair_run(&a, &b, algorithm, Some(shape))?);
                }
                wan_rows.push((algorithm, medians(&runs)));
            }
        }
        println!(
            "| {label} | rsync | – | {rsync_s:.2} | {} | {} | 1.00 | – | – |",
            mb(rsync_wire),
            ratio(rsync_wire)
        );
        if pct == 1.0 {
            rsync_one = rsync_s;
        }
    }
    drop(rsync);
    println!();

    if !wan_rows.is_empty() {
        println!(
            "### The same through a {} ms RTT, {} Mbit/s link ({}% of blocks differ), median of {} runs\n",
            args.wan_rtt_ms, args.wan_mbit, args.wan_diff_percent, args.runs
        );
        println!("A delay-and-rate proxy of the benchmark's own between `mirror sync`/`verify` and `mirror serve`. Floor = the seconds the job's wire bytes (both directions) need at the link's rate; target = 1.2 × floor + 4 round trips.\n");
        println!(
            "| job | algorithm | seconds | wire | floor s | seconds ÷ floor | target s | target |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|---|");
        let rtt = shape.rtt.as_secs_f64();
        for (job, pick) in [("sync", 0), ("verify", 1)] {
            for (algorithm, m) in &wan_rows {
                let (s, wire) = if pick == 0 {
                    (m.sync_s, m.sync_wire)
                } else {
                    (m.verify_s, m.verify_wire)
                };
                let floor = shape.seconds_for(wire as u64);
                let target = 1.2 * floor + 4.0 * rtt;
                println!(
                    "| {job} | {algorithm} | {s:.2} | {} | {floor:.2} | {:.2} | {target:.2} | {} |",
                    mb(wire),
                    s / floor,
                    met(s <= target)
                );
            }
        }
        println!();
    }

    let mut rss_rows = Vec::new();
    for &size in &args.rss_sizes {
        let sa = dir.path().join(format!("sparse-a-{size}.img"));
        let sb = dir.path().join(format!("sparse-b-{size}.img"));
        for p in [&sa, &sb] {
            let _ = std::fs::remove_file(p);
            crate::volumes::create_sparse(p, size)?;
        }
        let mut runs = Vec::new();
        for i in 0..args.runs {
            eprintln!(
                "bench-table: peak RSS, {} sparse pair, run {}",
                HumanBytes(size),
                i + 1
            );
            runs.push(ctx.pair_run(&sa, &sb, Algorithm::default(), None)?);
        }
        let serve = median(runs.iter().map(|r| r.serve_rss_kib as f64).collect());
        let sync = median(runs.iter().map(|r| r.sync_rss_kib as f64).collect());
        rss_rows.push((size, serve, sync));
        for p in [&sa, &sb] {
            let _ = std::fs::remove_file(p);
        }
    }
    if !rss_rows.is_empty() {
        println!(
            "### Peak RSS of `mirror serve` and `mirror sync` ({} algorithm, sparse pairs, median of {} runs)\n",
            Algorithm::default(),
            args.runs
        );
        println!("| pair | serve peak RSS | sync peak RSS |");
        println!("|---|---:|---:|");
        for (size, serve, sync) in &rss_rows {
            println!(
                "| {} | {:.1} MiB | {:.1} MiB |",
                HumanBytes(*size),
                serve / 1024.0,
                sync / 1024.0
            );
        }
        println!();
    }

    println!("### Summary against the targets\n");
    println!("| what | now | target | |");
    println!("|---|---|---|---|");
    let identical: Vec<_> = Algorithm::ALL
        .into_iter()
        .filter_map(|alg| {
            identical_verify_wire
                .iter()
                .filter(|(a, _)| *a == alg)
                .map(|(_, w)| *w)
                .reduce(f64::max)
                .map(|w| (alg, w))
        })
        .collect();
    if !identical.is_empty() {
        let worst = identical.iter().map(|(_, w)| *w).fold(0.0, f64::max);
        println!(
            "| verify of an identical {} pair, bytes on the wire | {} | ≤ 64 KiB for every algorithm | {} |",
            HumanBytes(args.size),
            identical
                .iter()
                .map(|(a, w)| format!("{a} {}", HumanBytes(*w as u64)))
                .collect::<Vec<_>>()
                .join(", "),
            met(worst <= 65536.0)
        );
    }
    if !one_percent.is_empty() {
        let worst = one_percent.iter().map(|r| r.1).fold(0.0, f64::max);
        println!(
            "| sync with 1% of blocks differing: wire ÷ differing bytes | {} | ≤ 1.10 for every algorithm | {} |",
            one_percent
                .iter()
                .map(|(a, r, _)| format!("{a} {r:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            met(worst <= 1.10)
        );
        let slowest = one_percent
            .iter()
            .map(|r| r.2)
            .fold(f64::INFINITY, f64::min);
        println!(
            "| same sync against rsync (rsync {rsync_one:.2} s) | {} × faster | ≥ 5 × faster for every algorithm | {} |",
            one_percent
                .iter()
                .map(|(a, _, x)| format!("{a} {x:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            met(slowest >= 5.0)
        );
    }
    if !wan_rows.is_empty() {
        let rtt = shape.rtt.as_secs_f64();
        let mut all = true;
        let mut parts = Vec::new();
        for (alg, m) in &wan_rows {
            for (job, s, w) in [
                ("sync", m.sync_s, m.sync_wire),
                ("verify", m.verify_s, m.verify_wire),
            ] {
                let floor = shape.seconds_for(w as u64);
                all &= s <= 1.2 * floor + 4.0 * rtt;
                parts.push(format!("{alg} {job} {s:.2} s ({:.2} × floor)", s / floor));
            }
        }
        println!(
            "| same sync and verify through {} ms RTT, {} Mbit/s | {} | ≤ 1.2 × floor + 4 RTT | {} |",
            args.wan_rtt_ms,
            args.wan_mbit,
            parts.join(", "),
            met(all)
        );
    }
    if rss_rows.len() >= 2 {
        let (lo, hi) = (&rss_rows[0], &rss_rows[rss_rows.len() - 1]);
        let serve = hi.1 / lo.1;
        let sync = hi.2 / lo.2;
        println!(
            "| peak RSS, {} pair ÷ {} pair | serve {serve:.2}, sync {sync:.2} | within 10% (≤ 1.10) | {} |",
            HumanBytes(hi.0),
            HumanBytes(lo.0),
            met(serve <= 1.10 && sync <= 1.10)
        );
    }
    println!();
    Ok(EXIT_OK)
}

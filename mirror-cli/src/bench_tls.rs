//! `mirror bench-tls`: what mutual TLS costs, and what a connection flood costs a real sync.
//!
//! - sync: `mirror sync` (real processes) of two SIZE files differing in 1% of their 4 KiB
//!   blocks, plaintext and TLS alternately, `--runs` times each; the median of each.
//! - replication: an in-process Primary in sync mode writing 1 MiB blocks to an in-process
//!   Secondary over loopback, plaintext and TLS alternately; MiB/s of each.
//! - flood: the same sync (TLS) while `--flood` idle and slow connections are held open against
//!   the secondary, and without them.
//!
//! Identities are generated in the temporary directory as `mirror keygen` writes them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::HumanBytes;
use mirror_core::tls::{Identity, TlsConfig, Validity};
use mirror_core::{
    BlockSize, FileVolume, Primary, PrimaryConfig, Secondary, SecondaryConfig, Volume,
};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

use crate::error::{CliError, Result, EXIT_OK};
use crate::parse::parse_size;

const BLOCK: u64 = 4096;

/// `mirror bench-tls`.
#[derive(Debug, Args)]
pub struct TlsBenchArgs {
    /// Size of each file of the sync.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub size: u64,
    /// Bytes written in 1 MiB blocks by the replication run.
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    pub replicate: u64,
    /// Runs of each variant (the median is reported).
    #[arg(long, default_value = "3")]
    pub runs: usize,
    /// Connections held open during the flood run.
    #[arg(long, default_value = "400")]
    pub flood: usize,
    /// Directory for the files (default: the system's temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> CliError {
    move |e| CliError::io(what.to_string(), e)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Files {
    a: PathBuf,
    pristine: PathBuf,
    b: PathBuf,
}

fn make_files(dir: &Path, size: u64) -> Result<Files> {
    let f = Files {
        a: dir.join("a.img"),
        pristine: dir.join("b-pristine.img"),
        b: dir.join("b.img"),
    };
    let mut rng = SmallRng::seed_from_u64(1);
    let mut buf = vec![0u8; 8 << 20];
    {
        let mut w = std::fs::File::create(&f.a).map_err(io_err(f.a.display()))?;
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill_bytes(&mut buf[..n]);
            w.write_all(&buf[..n]).map_err(io_err(f.a.display()))?;
            left -= n as u64;
        }
    }
    std::fs::copy(&f.a, &f.pristine).map_err(io_err(f.pristine.display()))?;
    let blocks = (size / BLOCK) as usize;
    let p = std::fs::File::options()
        .write(true)
        .open(&f.pristine)
        .map_err(io_err(f.pristine.display()))?;
    let mut data = vec![0u8; BLOCK as usize];
    for i in rand::seq::index::sample(&mut rng, blocks, blocks / 100) {
        rng.fill_bytes(&mut data);
        p.write_all_at(&data, i as u64 * BLOCK)
            .map_err(io_err(f.pristine.display()))?;
    }
    Ok(f)
}

struct Keys {
    a: [PathBuf; 2],
    b: [PathBuf; 2],
}

fn make_keys(dir: &Path) -> Result<(Keys, TlsConfig, TlsConfig)> {
    let v = Validity::default_from_now();
    let (a, b) = (
        Identity::self_signed("a", v)?,
        Identity::self_signed("b", v)?,
    );
    let w = |name: &str, s: &str| -> Result<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, s).map_err(io_err(p.display()))?;
        Ok(p)
    };
    let keys = Keys {
        a: [w("a.crt", &a.cert_pem)?, w("a.key", &a.key_pem)?],
        b: [w("b.crt", &b.cert_pem)?, w("b.key", &b.key_pem)?],
    };
    let pa = TlsConfig::from_pem(
        a.cert_pem.as_bytes(),
        a.key_pem.as_bytes(),
        b.cert_pem.as_bytes(),
    )?;
    let pb = TlsConfig::from_pem(
        b.cert_pem.as_bytes(),
        b.key_pem.as_bytes(),
        a.cert_pem.as_bytes(),
    )?;
    Ok((keys, pa, pb))
}

fn tls_flags(me: &[PathBuf; 2], trust: &Path) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        me[0].display().to_string(),
        "--tls-key".into(),
        me[1].display().to_string(),
        "--tls-trust".into(),
        trust.display().to_string(),
    ]
}

fn serve(exe: &Path, volume: &Path, extra: &[String]) -> Result<(Child, String)> {
    let mut child = Command::new(exe)
        .arg("serve")
        .arg("--volume")
        .arg(volume)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
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
            Err(CliError::Check(format!("mirror serve said {line:?}")))
        }
    }
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// One `mirror sync` of the pristine copy; seconds.
fn sync_once(exe: &Path, f: &Files, tls: Option<(&Keys, bool)>, flood: usize) -> Result<f64> {
    std::fs::copy(&f.pristine, &f.b).map_err(io_err(f.b.display()))?;
    let (serve_flags, sync_flags) = match tls {
        Some((k, _)) => (tls_flags(&k.b, &k.a[0]), tls_flags(&k.a, &k.b[0])),
        None => (Vec::new(), Vec::new()),
    };
    let (child, addr) = serve(exe, &f.b, &serve_flags)?;
    let stop_flood = Arc::new(AtomicBool::new(false));
    let flooder = (flood > 0).then(|| {
        let (addr, stop) = (addr.clone(), stop_flood.clone());
        std::thread::spawn(move || hold(&addr, flood, &stop))
    });
    if flooder.is_some() {
        std::thread::sleep(Duration::from_secs(1));
    }
    let t = Instant::now();
    let out = Command::new(exe)
        .arg("sync")
        .arg(&f.a)
        .args(["--peer", &addr])
        .args(&sync_flags)
        .output()
        .map_err(io_err("running mirror sync"))?;
    let secs = t.elapsed().as_secs_f64();
    stop_flood.store(true, Ordering::SeqCst);
    if let Some(h) = flooder {
        let _ = h.join();
    }
    stop(child);
    if !out.status.success() {
        return Err(CliError::Check(format!(
            "mirror sync failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(secs)
}

/// Holds `n` connections (three quarters idle, a quarter dripping a byte every 200 ms),
/// reopening those the secondary closes, until `stop`.
fn hold(addr: &str, n: usize, stop: &AtomicBool) {
    let open = || {
        let c = TcpStream::connect(addr).ok()?;
        c.set_nonblocking(true).ok()?;
        Some(c)
    };
    let idle = n * 3 / 4;
    let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| open()).collect();
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::SeqCst) {
        for (i, c) in conns.iter_mut().enumerate() {
            let closed = match c {
                None => true,
                Some(s) => {
                    matches!(s.read(&mut buf), Ok(0)) || (i >= idle && s.write(&[0x16]).is_err())
                }
            };
            if closed {
                *c = open();
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// MiB/s of sync-mode 1 MiB writes from an in-process primary.
fn replicate_once(dir: &Path, bytes: u64, tls: Option<(&TlsConfig, &TlsConfig)>) -> Result<f64> {
    let bs = BlockSize::new(BLOCK)?;
    let size = bytes.max(1 << 20);
    let (pa, pb) = (dir.join("r-a.img"), dir.join("r-b.img"));
    for p in [&pa, &pb] {
        let _ = std::fs::remove_file(p);
        FileVolume::create(p, size, bs)?;
    }
    let mut scfg = SecondaryConfig::new("127.0.0.1:0");
    scfg.tls = tls.map(|t| t.1.clone());
    let secondary = Secondary::new(Arc::new(FileVolume::open(&pb, bs)?), scfg)?;
    let addr = secondary.serve()?;
    let mut pcfg = PrimaryConfig::new(addr.to_string());
    pcfg.tls = tls.map(|t| t.0.clone());
    let volume: Arc<dyn Volume> = Arc::new(FileVolume::open(&pa, bs)?);
    let primary = Primary::open(volume, pcfg)?;
    primary.wait_connected(Duration::from_secs(30))?;
    // Let the first connection's resync finish.
    let _ = primary.resync()?;
    let mut data = vec![0u8; 1 << 20];
    SmallRng::seed_from_u64(2).fill_bytes(&mut data);
    let t = Instant::now();
    let mut off = 0;
    while off + (1 << 20) <= size {
        data[0] = data[0].wrapping_add(1);
        primary.write(off, &data)?;
        off += 1 << 20;
    }
    let secs = t.elapsed().as_secs_f64();
    primary.close()?;
    secondary.stop();
    Ok(off as f64 / (1 << 20) as f64 / secs)
}

pub fn run(args: TlsBenchArgs) -> Result<u8> {
    let exe = std::env::current_exe().map_err(io_err("finding the mirror binary"))?;
    let b = tempfile::Builder::new()
        .prefix("mirror-bench-tls-")
        .to_owned();
    let dir = match &args.dir {
        Some(d) => b.tempdir_in(d),
        None => b.tempdir(),
    }
    .map_err(io_err("creating a temporary directory"))?;
    let runs = args.runs.max(1);
    eprintln!(
        "bench-tls: two {} files in {}",
        HumanBytes(args.size),
        dir.path().display()
    );
    let files = make_files(dir.path(), args.size)?;
    let (keys, pa, pb) = make_keys(dir.path())?;

    let (mut plain, mut tls) = (Vec::new(), Vec::new());
    for i in 0..runs {
        eprintln!("bench-tls: sync run {}/{runs}", i + 1);
        plain.push(sync_once(&exe, &files, None, 0)?);
        tls.push(sync_once(&exe, &files, Some((&keys, true)), 0)?);
    }
    let (sp, st) = (median(plain), median(tls));

    let (mut rplain, mut rtls) = (Vec::new(), Vec::new());
    for i in 0..runs {
        eprintln!("bench-tls: replication run {}/{runs}", i + 1);
        rplain.push(replicate_once(dir.path(), args.replicate, None)?);
        rtls.push(replicate_once(
            dir.path(),
            args.replicate,
            Some((&pa, &pb)),
        )?);
    }
    let (rp, rt) = (median(rplain), median(rtls));

    eprintln!(
        "bench-tls: sync under a flood of {} connections",
        args.flood
    );
    let quiet = sync_once(&exe, &files, Some((&keys, true)), 0)?;
    let flooded = sync_once(&exe, &files, Some((&keys, true)), args.flood)?;

    println!(
        "### Mutual TLS on loopback (median of {runs} runs each, plaintext and TLS alternating)\n"
    );
    println!("| job | plaintext | TLS 1.3 (rustls, ring) | TLS cost |");
    println!("|---|---:|---:|---:|");
    println!(
        "| `mirror sync`, two {} files, 1% of blocks differ (sha1, primary compares) | {sp:.2} s | {st:.2} s | {:+.1}% |",
        HumanBytes(args.size),
        (st / sp - 1.0) * 100.0
    );
    println!(
        "| sync-mode replication of 1 MiB writes ({} written) | {rp:.0} MiB/s | {rt:.0} MiB/s | {:+.1}% |",
        HumanBytes(args.replicate),
        (rp / rt - 1.0) * 100.0
    );
    println!("\n### A connection flood against `mirror serve` (TLS)\n");
    println!("| connections held (¾ idle, ¼ dripping a byte every 200 ms) | sync without flood | sync under flood |");
    println!("|---:|---:|---:|");
    println!("| {} | {quiet:.2} s | {flooded:.2} s |", args.flood);
    Ok(EXIT_OK)
}

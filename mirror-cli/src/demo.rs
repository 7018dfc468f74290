//! `mirror demo`: the whole job on two temporary files over loopback, no set-up.
//!
//! A secondary runs in-process behind a [`Proxy`] that can cut the link. The demo replicates
//! writes, cuts the link and keeps writing, restores it and resyncs from the dirty map,
//! restarts the primary (its map is lost) and resyncs by full scan, corrupts blocks on the
//! secondary's file behind mirror's back and lets the periodic scan find and repair them, and
//! finally shows the two volumes equal byte for byte. Every step prints what happened, the
//! bytes on the wire (counted by the proxy) and the time, and checks what it claims: any
//! failed check makes the demo exit 1.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::HumanBytes;
use mirror_core::{
    Algorithm, PeriodicScan, Primary, PrimaryConfig, Report, ResyncMode, Secondary,
    SecondaryConfig, WriteOutcome,
};
use mirror_uring::{open_volume, VolumeOptions};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::cli::DemoArgs;
use crate::error::{CliError, Result, EXIT_INCOHERENT, EXIT_OK};
use crate::proxy::Proxy;
use crate::report::summary;

const BLOCK: u64 = 4096;

/// Prints a line on stdout; a closed stdout does not stop the demo.
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
        let _ = out.flush();
    }};
}

/// The demo's steps, their checks and their figures.
struct Steps<'p> {
    proxy: &'p Proxy,
    stop: &'p AtomicBool,
    number: usize,
    failed: Vec<String>,
    checks: usize,
    started: Instant,
    wire_at_start: u64,
}

impl<'p> Steps<'p> {
    /// Starts the next step, unless SIGINT or SIGTERM asked the demo to stop (it then returns
    /// an error, and the temporary files are removed on the way out).
    fn begin(&mut self, title: &str) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(mirror_core::Error::Cancelled("demo").into());
        }
        self.number += 1;
        say!("\n[{}] {}", self.number, title);
        self.started = Instant::now();
        self.wire_at_start = self.proxy.total_bytes();
        Ok(())
    }

    fn end(&self) {
        let wire = self.proxy.total_bytes() - self.wire_at_start;
        say!(
            "    on the wire: {} ({} bytes); time: {:.3} s",
            HumanBytes(wire),
            wire,
            self.started.elapsed().as_secs_f64()
        );
    }

    fn check(&mut self, ok: bool, what: impl Into<String>) {
        let what = what.into();
        self.checks += 1;
        if ok {
            say!("    ok: {what}");
        } else {
            say!("    FAILED: {what}");
            self.failed.push(format!("step {}: {what}", self.number));
        }
    }
}

impl Steps<'_> {
    /// Prints the verdict; the exit code says whether every check held.
    fn conclude(&self, seed: u64) -> u8 {
        say!("");
        if self.failed.is_empty() {
            say!("demo passed: {} checks held", self.checks);
            EXIT_OK
        } else {
            say!(
                "demo FAILED: {} of {} checks did not hold (seed {seed}):",
                self.failed.len(),
                self.checks
            );
            for f in &self.failed {
                say!("  {f}");
            }
            EXIT_INCOHERENT
        }
    }
}

/// Random 4 KiB writes: where they go and what they hold.
struct Writer {
    rng: SmallRng,
    blocks: u64,
}

impl Writer {
    /// The next write: a block-aligned offset and 4 KiB of random bytes.
    fn next(&mut self) -> (u64, Vec<u8>) {
        let offset = self.rng.gen_range(0..self.blocks) * BLOCK;
        let mut data = vec![0u8; BLOCK as usize];
        self.rng.fill_bytes(&mut data);
        (offset, data)
    }
}

pub fn run(args: DemoArgs) -> Result<u8> {
    if args.size < 1 << 20 || args.size % BLOCK != 0 {
        return Err(CliError::Usage(format!(
            "demo size {} must be a multiple of 4096 and at least 1M",
            args.size
        )));
    }
    let dir = tempfile::Builder::new()
        .prefix("mirror-demo-")
        .tempdir()
        .map_err(|e| CliError::io("creating a temporary directory", e))?;
    let p_path = dir.path().join("primary.img");
    let s_path = dir.path().join("secondary.img");
    for p in [&p_path, &s_path] {
        crate::volumes::create_sparse(p, args.size)?;
    }
    let vopts = VolumeOptions {
        io: args.io,
        ..VolumeOptions::default()
    };
    let blocks = args.size / BLOCK;
    let seed = args.seed.unwrap_or_else(rand::random);
    let writer = Writer {
        rng: SmallRng::seed_from_u64(seed),
        blocks,
    };

    let secondary = Secondary::new(
        open_volume(&s_path, &vopts)?,
        SecondaryConfig::new("127.0.0.1:0"),
    )?;
    let s_addr = secondary.serve()?;
    let proxy = Proxy::start(s_addr).map_err(|e| CliError::io("starting the link proxy", e))?;
    say!(
        "mirror demo: two {} volumes in {} ({} blocks of 4 KiB), {} digests, {} I/O, seed {seed}",
        HumanBytes(args.size),
        dir.path().display(),
        blocks,
        args.algorithm,
        args.io.name(),
    );
    say!(
        "secondary listening on {s_addr}; the primary reaches it through a link on {} that the demo can cut",
        proxy.addr()
    );

    let stop = crate::signals::stop_flag()?;
    let mut demo = Demo {
        p_path,
        s_path,
        vopts,
        algorithm: args.algorithm,
        blocks,
        writes: args.writes as usize,
        writer,
        proxy: &proxy,
        steps: Steps {
            proxy: &proxy,
            stop: &stop,
            number: 0,
            failed: Vec::new(),
            checks: 0,
            started: Instant::now(),
            wire_at_start: 0,
        },
    };
    let primary = demo.first_resync()?;
    demo.replicate(&primary)?;
    let written_during_cut = demo.cut_link(&primary)?;
    demo.resync_from_dirty_map(&primary, written_during_cut)?;
    let primary = demo.restart_primary(primary)?;
    demo.repair_corruption(&primary)?;
    demo.verify(&primary)?;

    primary.close()?;
    secondary.stop();
    Ok(demo.steps.conclude(seed))
}

/// What the steps work on: the two files, the link, the random writes and the tally.
struct Demo<'p> {
    p_path: PathBuf,
    s_path: PathBuf,
    vopts: VolumeOptions,
    algorithm: Algorithm,
    blocks: u64,
    /// Writes in each writing step.
    writes: usize,
    writer: Writer,
    proxy: &'p Proxy,
    steps: Steps<'p>,
}

impl Demo<'_> {
    /// A primary's configuration: through the proxy, resyncs only when the demo asks, a short
    /// link timeout so that a cut is noticed quickly.
    fn config(&self, periodic: Option<PeriodicScan>) -> PrimaryConfig {
        let mut c = PrimaryConfig::new(self.proxy.addr().to_string());
        c.algorithm = self.algorithm;
        c.auto_resync = false;
        c.link_timeout = Duration::from_secs(1);
        c.periodic = periodic;
        c
    }

    /// Step 1: the primary starts with data the secondary lacks; its first resync is a full
    /// scan.
    fn first_resync(&mut self) -> Result<Primary> {
        let blocks = self.blocks;
        self.steps
            .begin("primary holds data the secondary lacks: open it, connect, first resync")?;
        let seeded = write_behind(&self.p_path, &mut self.writer, (blocks / 8).max(1) as usize)?;
        say!(
            "    wrote {} random blocks to the primary's file before mirror started",
            seeded.len()
        );
        let primary = Primary::open(open_volume(&self.p_path, &self.vopts)?, self.config(None))?;
        primary.wait_connected(Duration::from_secs(10))?;
        let r = primary.resync()?;
        say!("    {}", summary(&r));
        self.steps.check(
            r.mode == ResyncMode::FullScan,
            format!("a first connection resyncs by full scan (mode {})", r.mode),
        );
        self.steps.check(
            r.mismatched == seeded.len() as u64,
            format!(
                "the scan found exactly the {} blocks written (found {})",
                seeded.len(),
                r.mismatched
            ),
        );
        self.steps.end();
        Ok(primary)
    }

    /// Step 2: writes replicated while connected.
    fn replicate(&mut self, primary: &Primary) -> Result<()> {
        let n = self.writes;
        self.steps.begin(&format!(
            "replicate {n} random 4 KiB writes (synchronous mode)"
        ))?;
        let outcomes = write_through(primary, &mut self.writer, n)?;
        let t = self.steps.started.elapsed().as_secs_f64();
        say!(
            "    {} writes replicated, {:.0} writes/s",
            outcomes.replicated,
            n as f64 / t.max(1e-9)
        );
        self.steps.check(
            outcomes.replicated == n,
            format!(
                "every write acknowledged by the secondary ({} of {n})",
                outcomes.replicated
            ),
        );
        self.steps.end();
        Ok(())
    }

    /// Step 3: the link goes down; writes go on and land in the dirty map. Returns the distinct
    /// blocks written meanwhile.
    fn cut_link(&mut self, primary: &Primary) -> Result<u64> {
        let n = self.writes;
        let proxy = self.proxy;
        self.steps
            .begin(&format!("cut the link and keep writing: {n} more writes"))?;
        proxy.cut();
        let outcomes = write_through(primary, &mut self.writer, n)?;
        let st = primary.status();
        say!(
            "    {} writes degraded (recorded in the dirty map), {} replicated before the cut was noticed",
            outcomes.degraded,
            outcomes.replicated + outcomes.queued
        );
        say!(
            "    link {}; dirty map: {} regions of {}, covering {}",
            st.state.name(),
            st.dirty_regions,
            HumanBytes(st.region_size),
            HumanBytes(st.dirty_bytes)
        );
        let written_during_cut = outcomes.distinct.len() as u64;
        self.steps.check(
            outcomes.degraded > 0 && st.map_valid && st.dirty_regions > 0,
            "writes during the cut succeed, degraded, and mark a valid dirty map",
        );
        self.steps.end();
        Ok(written_during_cut)
    }

    /// Step 4: the link comes back and the dirty map says what to send.
    fn resync_from_dirty_map(&mut self, primary: &Primary, written_during_cut: u64) -> Result<()> {
        let blocks = self.blocks;
        let proxy = self.proxy;
        self.steps
            .begin("restore the link: reconnect and resync from the dirty map")?;
        proxy.restore();
        primary.wait_connected(Duration::from_secs(30))?;
        let r = primary.resync()?;
        say!("    {}", summary(&r));
        say!(
            "    {} distinct blocks written during the cut ({}); resync sent {} of block data",
            written_during_cut,
            HumanBytes(written_during_cut * BLOCK),
            HumanBytes(r.blocks_sent * BLOCK)
        );
        self.steps.check(
            r.mode == ResyncMode::DirtyMap,
            format!("resync driven by the dirty map (mode {})", r.mode),
        );
        self.steps.check(
            r.blocks_sent <= written_during_cut && r.blocks < blocks,
            format!(
                "only dirty regions compared ({} of {blocks} blocks), at most the blocks written sent ({} ≤ {written_during_cut})",
                r.blocks, r.blocks_sent
            ),
        );
        self.steps.end();
        Ok(())
    }

    /// Step 5: the primary restarts, its dirty map gone while writes happened: a full scan.
    fn restart_primary(&mut self, primary: Primary) -> Result<Primary> {
        let blocks = self.blocks;
        let n = self.writes;
        self.steps
            .begin("restart the primary (dirty map lost) and resync by full scan")?;
        primary.close()?;
        drop(primary);
        let behind = write_behind(&self.p_path, &mut self.writer, (n / 10).max(1))?;
        say!(
            "    while mirror was down, {} blocks changed on the primary's file",
            behind.len()
        );
        let periodic = PeriodicScan {
            interval: Duration::from_secs(1),
            rate_mib_s: 512.0,
        };
        let primary = Primary::open(
            open_volume(&self.p_path, &self.vopts)?,
            self.config(Some(periodic)),
        )?;
        primary.wait_connected(Duration::from_secs(10))?;
        let r = primary.resync()?;
        say!("    {}", summary(&r));
        self.steps.check(
            r.mode == ResyncMode::FullScan,
            format!("a restarted primary resyncs by full scan (mode {})", r.mode),
        );
        self.steps.check(
            r.blocks == blocks && r.mismatched <= behind.len() as u64,
            format!(
                "every block compared ({} of {blocks}); at most the {} changed blocks sent ({})",
                r.blocks,
                behind.len(),
                r.blocks_sent
            ),
        );
        self.steps.end();
        Ok(primary)
    }

    /// Step 6: blocks corrupted on the secondary behind mirror's back, found and repaired by the
    /// periodic scan.
    fn repair_corruption(&mut self, primary: &Primary) -> Result<()> {
        let blocks = self.blocks;
        let corrupt = 16.min(blocks as usize);
        self.steps.begin(&format!(
            "corrupt {corrupt} blocks of the secondary's file behind mirror's back; wait for the periodic scan"
        ))?;
        let seen_before = primary.status().last_report;
        let hit = corrupt_blocks(&self.s_path, &mut self.writer, corrupt)?;
        say!(
            "    overwrote blocks {} on the secondary's file",
            list(&hit, 8)
        );
        let found = wait_for_periodic(
            primary,
            seen_before,
            corrupt as u64,
            Duration::from_secs(60),
        );
        for r in &found {
            say!("    {}", summary(r));
        }
        let repaired: u64 = found.iter().map(|r| r.mismatched).sum();
        self.steps.check(
            repaired == corrupt as u64,
            format!(
                "the periodic scan found and repaired the {corrupt} corrupted blocks ({repaired})"
            ),
        );
        self.steps.end();
        Ok(())
    }

    /// Step 7: the proof: a verify, then the two files compared byte for byte.
    fn verify(&mut self, primary: &Primary) -> Result<()> {
        self.steps
            .begin("verify: compare every block, then the two files byte for byte")?;
        let r = primary.verify()?;
        say!("    {}", summary(&r));
        self.steps
            .check(r.coherent(), "verify finds no mismatched block");
        primary.flush()?;
        let equal = files_equal(&self.p_path, &self.s_path)?;
        let digest = |p: &Path| -> Result<String> {
            let bytes = std::fs::read(p).map_err(|e| CliError::io(p.display().to_string(), e))?;
            Ok(mirror_core::digest::hex(&Algorithm::Sha1.digest(&bytes)))
        };
        say!(
            "    sha1 of the primary's file:   {}",
            digest(&self.p_path)?
        );
        say!(
            "    sha1 of the secondary's file: {}",
            digest(&self.s_path)?
        );
        self.steps
            .check(equal, "the two volumes are equal byte for byte");
        self.steps.end();
        Ok(())
    }
}

/// What became of a run of writes.
#[derive(Default)]
struct Outcomes {
    replicated: usize,
    queued: usize,
    degraded: usize,
    distinct: BTreeSet<u64>,
}

fn write_through(primary: &Primary, writer: &mut Writer, n: usize) -> Result<Outcomes> {
    let mut o = Outcomes::default();
    for _ in 0..n {
        let (offset, data) = writer.next();
        match primary.write(offset, &data)? {
            WriteOutcome::Replicated => o.replicated += 1,
            WriteOutcome::Queued => o.queued += 1,
            WriteOutcome::Degraded => o.degraded += 1,
        }
        o.distinct.insert(offset / BLOCK);
    }
    Ok(o)
}

/// Writes `n` random blocks straight into the file at `path`, as software that does not
/// link mirror would. Returns the blocks written.
fn write_behind(path: &Path, writer: &mut Writer, n: usize) -> Result<BTreeSet<u64>> {
    let f = File::options()
        .write(true)
        .open(path)
        .map_err(|e| CliError::io(path.display().to_string(), e))?;
    let mut hit = BTreeSet::new();
    for _ in 0..n {
        let (offset, data) = writer.next();
        f.write_all_at(&data, offset)
            .map_err(|e| CliError::io(path.display().to_string(), e))?;
        hit.insert(offset / BLOCK);
    }
    f.sync_data()
        .map_err(|e| CliError::io(path.display().to_string(), e))?;
    Ok(hit)
}

/// Overwrites `n` distinct random blocks of the file at `path` with garbage.
fn corrupt_blocks(path: &Path, writer: &mut Writer, n: usize) -> Result<Vec<u64>> {
    let f = File::options()
        .write(true)
        .open(path)
        .map_err(|e| CliError::io(path.display().to_string(), e))?;
    let mut hit: Vec<u64> = rand::seq::index::sample(&mut writer.rng, writer.blocks as usize, n)
        .into_iter()
        .map(|b| b as u64)
        .collect();
    hit.sort_unstable();
    for &b in &hit {
        let (_, data) = writer.next();
        f.write_all_at(&data, b * BLOCK)
            .map_err(|e| CliError::io(path.display().to_string(), e))?;
    }
    f.sync_data()
        .map_err(|e| CliError::io(path.display().to_string(), e))?;
    Ok(hit)
}

/// Periodic reports after `before`, until they have found `want` mismatched blocks in all
/// or `timeout` passes.
fn wait_for_periodic(
    primary: &Primary,
    before: Option<Report>,
    want: u64,
    timeout: Duration,
) -> Vec<Report> {
    let deadline = Instant::now() + timeout;
    let mut last = before;
    let mut found = Vec::new();
    while Instant::now() < deadline
        && found.iter().map(|r: &Report| r.mismatched).sum::<u64>() < want
    {
        let st = primary.status();
        if st.last_report.is_some() && st.last_report != last {
            if let Some(r) = &st.last_report {
                if r.mode == ResyncMode::Periodic {
                    found.push(r.clone());
                }
            }
            last = st.last_report;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    found
}

fn files_equal(a: &Path, b: &Path) -> Result<bool> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| CliError::io(p.display().to_string(), e));
    Ok(read(a)? == read(b)?)
}

fn list(blocks: &[u64], max: usize) -> String {
    let mut s: Vec<String> = blocks.iter().take(max).map(|b| b.to_string()).collect();
    if blocks.len() > max {
        s.push(format!("... ({} in all)", blocks.len()));
    }
    s.join(", ")
}

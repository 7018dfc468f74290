//! `mirror sync` and `mirror verify`: one-shot jobs of a primary against a running secondary.
//!
//! Both open a [`Primary`] that does not resync by itself, wait for the link, run one full
//! checksum comparison (repairing for `sync`, not for `verify`), print the report and close.

use std::io::Write;
use std::sync::atomic::AtomicBool;

use mirror_core::{JobOptions, Primary, PrimaryConfig, Progress, Report};

use crate::cli::{LinkArgs, PairArgs};
use crate::error::{stdout_err, Result, EXIT_INCOHERENT, EXIT_OK};
use crate::progress::Bar;
use crate::report::{range_line, summary, JsonReport};
use crate::{signals, volumes};

/// A primary configuration from the command line.
pub fn primary_config(peer: &str, link: &LinkArgs) -> Result<PrimaryConfig> {
    let mut config = PrimaryConfig::new(peer);
    config.algorithm = link.algorithm;
    config.compare = link.compare;
    config.link_timeout = link.link_timeout;
    config.durability = link.durability;
    config.adopt = link.adopt;
    config.discard_secondary = link.discard_secondary;
    config.resync_yield = !link.no_resync_yield;
    config.resync_min_rate = link.resync_min_rate;
    config.resync_max_rate = link.resync_max_rate;
    mirror_core::config::check_resync_rates(config.resync_min_rate, config.resync_max_rate)?;
    if let Some(f) = &link.secret_file {
        config.secret = Some(mirror_core::config::read_secret_file(f)?);
    }
    config.tls = link.tls.load()?;
    config.allow_insecure = link.allow_insecure;
    // Plaintext to a non-loopback peer is refused before anything is opened.
    if let Some(addr) = std::net::ToSocketAddrs::to_socket_addrs(peer)
        .ok()
        .and_then(|mut a| a.next())
    {
        crate::tls::check_plaintext(
            &addr,
            config.tls.is_some(),
            link.allow_insecure,
            "connect to",
        )?;
    }
    Ok(config)
}

/// Which job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Compare and repair.
    Sync,
    /// Compare only.
    Verify,
}

pub fn run(args: PairArgs, job: Job) -> Result<u8> {
    let mut config = primary_config(&args.peer, &args.link)?;
    config.meta = Some(crate::info::meta_path(
        &args.path,
        args.volume_opts.meta.as_deref(),
    ));
    config.auto_resync = false;
    config.validate()?;
    // The primary only reads its volume in these jobs.
    let volume = volumes::open(&args.path, &args.volume_opts, true)?;
    let (size, block) = (volume.size(), volume.block_size().bytes());
    let stop = signals::stop_flag()?;
    let primary = Primary::open(volume, config)?;
    let result = run_job(&primary, &args, job, (size, block), &stop);
    // A close error after a good report changes nothing the report says.
    if let Err(e) = primary.close() {
        tracing::debug!("closing the primary: {e}");
    }
    let report = result?;
    print(&report, &args, job)?;
    Ok(match job {
        Job::Verify if !report.coherent() => EXIT_INCOHERENT,
        _ => EXIT_OK,
    })
}

fn run_job(
    primary: &Primary,
    args: &PairArgs,
    job: Job,
    (size, block): (u64, u64),
    stop: &AtomicBool,
) -> Result<Report> {
    primary.wait_connected(args.link.connect_timeout)?;
    let title = match job {
        Job::Sync => "sync",
        Job::Verify => "verify",
    };
    let bar = Bar::new(title, size, block, args.json);
    let progress = |p: Progress| bar.update(p);
    let opts = JobOptions {
        full: true,
        progress: Some(&progress),
        cancel: Some(stop),
        connect_timeout: Some(args.link.connect_timeout),
    };
    let report = match job {
        Job::Sync => {
            let r = primary.resync_with(&opts)?;
            // Success means on stable storage on both sides, not in the secondary's cache.
            primary.flush()?;
            r
        }
        Job::Verify => primary.verify_with(&opts)?,
    };
    bar.finish();
    Ok(report)
}

fn print(report: &Report, args: &PairArgs, job: Job) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let command = match job {
        Job::Sync => "sync",
        Job::Verify => "verify",
    };
    if args.json {
        let json = serde_json::to_string(&JsonReport::new(command, report))
            .map_err(|e| stdout_err(e.into()))?;
        writeln!(out, "{json}").map_err(stdout_err)?;
        return Ok(());
    }
    if report.mode.name() == command {
        writeln!(out, "{}", summary(report)).map_err(stdout_err)?;
    } else {
        writeln!(out, "{command}: {}", summary(report)).map_err(stdout_err)?;
    }
    if job == Job::Verify {
        if report.coherent() {
            writeln!(out, "coherent").map_err(stdout_err)?;
        } else {
            let mut listed = 0;
            for g in &report.mismatched_ranges {
                writeln!(out, "{}", range_line(g)).map_err(stdout_err)?;
                listed += g.count;
            }
            if listed < report.mismatched {
                writeln!(
                    out,
                    "... and {} more mismatched blocks not listed",
                    report.mismatched - listed
                )
                .map_err(stdout_err)?;
            }
            writeln!(
                out,
                "incoherent: {} of {} blocks differ",
                report.mismatched, report.blocks
            )
            .map_err(stdout_err)?;
        }
    }
    Ok(())
}

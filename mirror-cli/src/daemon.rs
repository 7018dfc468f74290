//! `mirror primary`: a primary daemon for volumes written by software that does not link
//! mirror. Nothing tells it about writes, so it keeps the pair coherent by checksum scans
//! alone: a full scan whenever the link comes (back) up — its dirty map, clean because nobody
//! reports writes to it, proves nothing — retried while the link is up until it succeeds,
//! and a periodic low-priority scan, rate-limited, every `--interval`.
//!
//! It prints one line per event on stdout (JSON lines with `--json`): the link going up or
//! down, each scan's report, and the report of each scan the secondary led (`command`
//! `secondary` in JSON). SIGINT or SIGTERM stops it; it exits 0.

use std::io::Write;
use std::time::Duration;

use mirror_core::{PeriodicScan, Primary, Report};
use serde_json::json;

use crate::cli::PrimaryArgs;
use crate::error::{stdout_err, Result, EXIT_OK};
use crate::report::{summary, JsonReport};
use crate::sync::primary_config;
use crate::{signals, volumes};

pub fn run(args: PrimaryArgs) -> Result<u8> {
    let mut config = primary_config(&args.peer, &args.link)?;
    config.meta = Some(crate::info::meta_path(
        &args.volume,
        args.volume_opts.meta.as_deref(),
    ));
    config.auto_resync = true;
    config.full_scan_on_connect = true;
    config.periodic = Some(PeriodicScan {
        interval: args.interval,
        rate_mib_s: args.rate,
    });
    config.validate()?;
    let volume = volumes::open(&args.volume, &args.volume_opts, true)?;
    let stop = signals::stop_flag()?;
    let primary = Primary::open(volume, config)?;
    tracing::info!(
        "primary for {} → {}: periodic scan every {} at {} MiB/s",
        args.volume.display(),
        args.peer,
        humantime::format_duration(args.interval),
        args.rate
    );
    let mut state = None;
    let mut last: Option<Report> = None;
    let mut last_secondary: Option<Report> = None;
    let mut last_error: Option<String> = None;
    loop {
        let st = primary.status();
        if state != Some(st.state) {
            event(&args, "link", st.state.name(), None)?;
            state = Some(st.state);
        }
        if st.last_error.is_some() && st.last_error != last_error {
            if let Some(e) = &st.last_error {
                tracing::warn!("{e}");
            }
            last_error = st.last_error.clone();
        }
        if st.last_report.is_some() && st.last_report != last {
            if let Some(r) = &st.last_report {
                event(&args, "report", r.mode.name(), Some(r))?;
            }
            last = st.last_report.clone();
        }
        if st.last_secondary_report.is_some() && st.last_secondary_report != last_secondary {
            if let Some(r) = &st.last_secondary_report {
                event(&args, "secondary", r.mode.name(), Some(r))?;
            }
            last_secondary = st.last_secondary_report.clone();
        }
        if signals::sleep_unless(&stop, Duration::from_millis(200)) {
            break;
        }
    }
    tracing::info!("signal received: stopping");
    primary.close()?;
    Ok(EXIT_OK)
}

fn event(args: &PrimaryArgs, what: &str, detail: &str, report: Option<&Report>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let command = if what == "secondary" {
        "secondary"
    } else {
        "primary"
    };
    let line = match (args.json, report) {
        (true, Some(r)) => {
            serde_json::to_string(&JsonReport::new(command, r)).map_err(|e| stdout_err(e.into()))?
        }
        (true, None) => json!({ "event": what, "state": detail }).to_string(),
        (false, Some(r)) if what == "secondary" => format!("secondary-led {}", summary(r)),
        (false, Some(r)) => summary(r),
        (false, None) => format!("link {detail}"),
    };
    writeln!(out, "{line}").map_err(stdout_err)?;
    out.flush().map_err(stdout_err)
}

//! `mirror`: the command that runs mirror — a secondary daemon (`serve`), a primary daemon
//! (`primary`), one-shot `sync`, `verify` and `scan`, and a `demo` of the whole job.
//!
//! Every error ends the process with one line, `mirror: <message>`, on stderr and an exit
//! code from [`error`]; nothing panics on bad input.

mod bench;
mod bench_replicate;
mod bench_table;
mod bench_tls;
mod cli;
mod daemon;
mod demo;
mod error;
mod info;
mod keygen;
mod parse;
mod progress;
mod proxy;
mod report;
mod scan;
mod serve;
mod signals;
mod sync;
mod tls;
mod volumes;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::error::ErrorKind as ClapErrorKind;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};
use crate::error::{one_line, EXIT_OK, EXIT_USAGE};

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("mirror: internal error: {}{at}", msg.replace('\n', " "));
    }));

    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            return match e.kind() {
                ClapErrorKind::DisplayHelp | ClapErrorKind::DisplayVersion => {
                    let _ = e.print();
                    ExitCode::from(EXIT_OK)
                }
                ClapErrorKind::MissingSubcommand
                | ClapErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    eprintln!(
                        "mirror: a command is needed: serve, sync, verify, scan, primary, info, keygen or demo (see 'mirror --help')"
                    );
                    ExitCode::from(EXIT_USAGE)
                }
                _ => {
                    eprintln!("mirror: {}", one_line(&e.render().to_string()));
                    ExitCode::from(EXIT_USAGE)
                }
            };
        }
    };
    init_logging(&cli);
    let result = match cli.command {
        Command::Serve(a) => serve::run(a),
        Command::Sync(a) => sync::run(a, sync::Job::Sync),
        Command::Verify(a) => sync::run(a, sync::Job::Verify),
        Command::Scan(a) => scan::run(a),
        Command::Primary(a) => daemon::run(a),
        Command::Info(a) => info::run(a).map(|()| EXIT_OK),
        Command::Demo(a) => demo::run(a),
        Command::BenchSync(a) => bench::sync(a),
        Command::BenchLinkCut(a) => bench::link_cut(a),
        Command::BenchTable(a) => bench_table::run(a),
        Command::BenchReplicate(a) => bench_replicate::run(a),
        Command::BenchTls(a) => bench_tls::run(a),
        Command::Keygen(a) => keygen::run(a),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) if e.is_broken_pipe() => ExitCode::from(EXIT_OK),
        Err(e) => {
            eprintln!("mirror: {e}");
            e.exit()
        }
    }
}

/// Logs go to stderr. `RUST_LOG` wins; otherwise `-v` raises the level from `warn` (from
/// `error` for the demo and benchmarks, which cut links on purpose).
fn init_logging(cli: &Cli) {
    let quiet = matches!(
        cli.command,
        Command::Demo(_) | Command::BenchSync(_) | Command::BenchLinkCut(_) | Command::BenchTls(_)
    );
    let level = match (cli.verbose, quiet) {
        (0, true) => "error",
        (0, false) => "warn",
        (1, _) => "info",
        (2, _) => "debug",
        _ => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.is_empty() => EnvFilter::try_new(s).unwrap_or_else(|_| EnvFilter::new(level)),
        _ => EnvFilter::new(level),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

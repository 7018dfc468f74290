//! The benchmarks behind `make bench` stay runnable: tiny sizes, one run, and the assertions
//! the benchmarks make themselves (every sync leaves equal files, or they fail).

use std::process::Command;

mod common;
use common::mirror;

fn have_rsync() -> bool {
    Command::new("rsync")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Runs `mirror ARGS --dir TMP`, which must succeed, and returns its stdout.
fn bench_stdout(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = mirror()
        .args(args)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "stdout: {text}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn bench_table_compares_with_rsync_and_prints_every_table() {
    if !have_rsync() {
        assert!(
            std::env::var_os("CI").is_none(),
            "rsync is missing (the Debian package rsync; .ci/run installs it)"
        );
        eprintln!("skipped: rsync is not installed");
        return;
    }
    let text = bench_stdout(&[
        "bench-table",
        "--size",
        "4M",
        "--runs",
        "1",
        "--diff-percents",
        "0,1",
        "--wan-diff-percent",
        "1",
        "--wan-rtt-ms",
        "10",
        "--wan-mbit",
        "1000",
        "--rss-sizes",
        "4M,8M",
    ]);
    for needle in [
        "| 0 (0%) | mirror | crc32 |",
        "| 10 (1%) | mirror | sha1 |",
        "| 10 (1%) | rsync |",
        "| sync | md5 |",
        "| verify | crc32 |",
        "| 8.00 MiB |",
        "verify of an identical",
        "peak RSS, 8.00 MiB pair",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

#[test]
fn bench_replicate_prints_its_rows() {
    let text = bench_stdout(&[
        "bench-replicate",
        "--size",
        "8M",
        "--bytes",
        "4M",
        "--runs",
        "1",
    ]);
    for needle in [
        "| local volume alone |",
        "| sync-mode replication |",
        "| sync-mode replication during that resync, yielding |",
        "| sync-mode replication during that resync, not yielding |",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

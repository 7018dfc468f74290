//! Helpers the command's tests share: running `mirror`, reading what it printed, test data.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// The `mirror` binary under test, with the caller's `RUST_LOG` removed.
pub fn mirror() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mirror"));
    c.env_remove("RUST_LOG");
    c
}

/// Runs `mirror ARGS` to its end.
pub fn run(args: &[&str]) -> Output {
    mirror().args(args).output().expect("run mirror")
}

/// What it printed on stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A path as an argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Deterministic bytes (xorshift), so no test depends on the engine's random sources.
pub fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

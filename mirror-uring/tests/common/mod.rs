//! Helpers shared by the volume tests: backends to run every check over, fixtures, and a loop
//! device that detaches itself.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use mirror_core::BlockSize;
use mirror_uring::{IoBackend, VolumeOptions};

/// A backend configuration every check runs over.
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    pub io: IoBackend,
    pub direct: Option<bool>,
}

impl Backend {
    pub fn label(&self) -> String {
        format!("{}/direct={:?}", self.io.name(), self.direct)
    }

    pub fn options(&self, block_size: BlockSize) -> VolumeOptions {
        VolumeOptions {
            block_size,
            io: self.io,
            direct: self.direct,
            ..VolumeOptions::default()
        }
    }
}

/// sync, uring buffered, uring with O_DIRECT.
pub const BACKENDS: [Backend; 3] = [
    Backend {
        io: IoBackend::Sync,
        direct: None,
    },
    Backend {
        io: IoBackend::Uring,
        direct: Some(false),
    },
    Backend {
        io: IoBackend::Uring,
        direct: Some(true),
    },
];

/// Deterministic bytes that differ from block to block.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes a sparse (zero) file of `size` bytes.
pub fn sparse_file(path: &Path, size: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
}

/// A loop device over a file, detached on drop.
#[derive(Debug)]
pub struct LoopDevice {
    pub path: PathBuf,
}

impl LoopDevice {
    /// Attaches `file` (with `sector_size` when given). `Err` says why it cannot (not root,
    /// no losetup, no loop support): the caller skips with that reason.
    pub fn attach(file: &Path, sector_size: Option<u32>) -> Result<LoopDevice, String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root, cannot attach a loop device".into());
        }
        let mut cmd = Command::new("losetup");
        cmd.arg("-f").arg("--show");
        if let Some(s) = sector_size {
            cmd.arg("--sector-size").arg(s.to_string());
        }
        let out = cmd
            .arg(file)
            .output()
            .map_err(|e| format!("cannot run losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(LoopDevice { path })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// Prints why a test is skipped, in a form a CI log shows.
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIPPED {test}: {reason}");
}

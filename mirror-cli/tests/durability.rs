//! What `mirror sync` promises about durability and how it tells failures, against a
//! secondary in this process whose volume simulates power loss and disk errors.

use std::process::Output;
use std::sync::Arc;

use mirror_core::fault::FaultVolume;
use mirror_core::{BlockSize, FileVolume, Secondary, SecondaryConfig, Volume};

mod common;
use common::{mirror, pseudo_random};

const BLOCK: usize = 4096;
const SIZE: usize = 64 * BLOCK;

struct Setup {
    dir: tempfile::TempDir,
    primary: std::path::PathBuf,
    secondary_file: Arc<FileVolume>,
    fault: Arc<FaultVolume>,
    server: Secondary,
}

fn setup(seed: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let primary = dir.path().join("p.img");
    std::fs::write(&primary, pseudo_random(SIZE, seed)).unwrap();
    let s = dir.path().join("s.img");
    std::fs::write(&s, vec![0u8; SIZE]).unwrap();
    let secondary_file = Arc::new(FileVolume::open(&s, BlockSize::DEFAULT).unwrap());
    let fault = Arc::new(FaultVolume::new(secondary_file.clone()));
    let server = Secondary::new(fault.clone(), SecondaryConfig::new("127.0.0.1:0")).unwrap();
    server.serve().unwrap();
    Setup {
        dir,
        primary,
        secondary_file,
        fault,
        server,
    }
}

fn sync(s: &Setup, extra: &[&str]) -> Output {
    let addr = s.server.local_addr().unwrap().to_string();
    mirror()
        .arg("sync")
        .arg(&s.primary)
        .args(["--peer", &addr, "--link-timeout", "2s"])
        .args(extra)
        .output()
        .unwrap()
}

fn secondary_bytes(s: &Setup) -> Vec<u8> {
    let mut v = vec![0u8; SIZE];
    s.secondary_file.read_at(0, &mut v).unwrap();
    v
}

#[test]
fn after_sync_exits_zero_a_power_loss_of_the_secondary_loses_nothing() {
    let s = setup(7);
    let o = sync(&s, &["--json"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "stderr: {err}");
    // A clean one-shot job logs nothing at the default level.
    assert!(err.is_empty(), "stderr of a clean sync: {err:?}");
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["coherent"], true, "{report}");
    assert!(report["mismatched"].as_u64().unwrap() > 0, "{report}");
    s.fault.power_loss().unwrap();
    assert_eq!(
        secondary_bytes(&s),
        std::fs::read(&s.primary).unwrap(),
        "the secondary lost data it had acknowledged"
    );
    drop(s.dir);
}

#[test]
fn a_full_secondary_disk_is_a_remote_io_error_not_a_link_error() {
    let s = setup(8);
    s.fault.fail_all_writes(Some(28));
    let o = sync(&s, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(6), "stderr: {err}");
    assert!(err.contains("secondary"), "{err}");
    assert!(err.to_lowercase().contains("no space left"), "{err}");
    assert!(err.contains("s.img"), "names the secondary's volume: {err}");
    assert!(!err.contains("link lost"), "{err}");
    // Once the disk has room again, the next sync repairs everything.
    s.fault.clear_faults();
    let o = sync(&s, &[]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(secondary_bytes(&s), std::fs::read(&s.primary).unwrap());
}

#[test]
fn a_failed_flush_on_the_secondary_fails_the_sync() {
    let s = setup(9);
    s.fault.fail_all_flushes(Some(5));
    let o = sync(&s, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(6), "stderr: {err}");
    assert!(err.contains("Input/output error"), "{err}");
}

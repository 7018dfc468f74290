//! Whether io_uring can be used here: probed once per process, the answer cached.
//!
//! io_uring may be missing (old kernel), refused (seccomp, `kernel.io_uring_disabled`) or
//! lacking an operation we use. Then volumes fall back to positioned reads and writes, and the
//! log says so once. `MIRROR_IO_URING=off` (or [`force_sync_fallback`]) takes the same path on
//! purpose, for tests and for operators who want it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Once, OnceLock};

use io_uring::{opcode, IoUring, Probe};

/// Environment variable that, set to `off`, `0`, `false` or `sync`, disables io_uring.
pub const ENV_VAR: &str = "MIRROR_IO_URING";

static FORCED_OFF: AtomicBool = AtomicBool::new(false);
static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
static WARNED: Once = Once::new();

/// Forces (or stops forcing) the fallback to the pread/pwrite volume for volumes opened from
/// now on, as if io_uring could not be set up.
pub fn force_sync_fallback(on: bool) {
    FORCED_OFF.store(on, Ordering::SeqCst);
}

fn env_forces_off() -> bool {
    std::env::var(ENV_VAR).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "off" | "0" | "false" | "no" | "sync"
        )
    })
}

/// Why io_uring is not used, or `None` when it is available. The kernel is probed on the first
/// call only; the forcing switches are read every time.
pub fn uring_unavailable_reason() -> Option<String> {
    if FORCED_OFF.load(Ordering::SeqCst) {
        return Some("io_uring disabled by force_sync_fallback".to_owned());
    }
    if env_forces_off() {
        return Some(format!("io_uring disabled by {ENV_VAR}"));
    }
    PROBE.get_or_init(probe).clone().err()
}

/// True when volumes opened now would use io_uring.
pub fn uring_available() -> bool {
    uring_unavailable_reason().is_none()
}

/// Says once per process that volumes fall back, and why.
pub(crate) fn warn_fallback(reason: &str) {
    WARNED.call_once(|| {
        tracing::warn!("{reason}; volumes use positioned reads and writes (the sync backend)");
    });
}

fn probe() -> Result<(), String> {
    let ring = IoUring::new(4).map_err(|e| format!("io_uring cannot be set up: {e}"))?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("io_uring probe failed (kernel before 5.6?): {e}"))?;
    let needed = [
        ("read", opcode::Read::CODE),
        ("write", opcode::Write::CODE),
        ("read_fixed", opcode::ReadFixed::CODE),
        ("write_fixed", opcode::WriteFixed::CODE),
        ("fsync", opcode::Fsync::CODE),
    ];
    for (name, code) in needed {
        if !probe.is_supported(code) {
            return Err(format!("io_uring lacks the {name} operation"));
        }
    }
    Ok(())
}

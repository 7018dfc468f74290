//! SIGINT and SIGTERM: the first one asks the command to stop cleanly (a daemon stops serving
//! and exits 0; a job is cancelled), a second one ends the process at once with code 130.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};

use crate::error::{CliError, Result, EXIT_INTERRUPTED};

/// A flag raised by SIGINT or SIGTERM.
pub fn stop_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Registered first, so it sees the flag before the second handler raises it: only a
        // signal that arrives while the flag is already up ends the process.
        signal_hook::flag::register_conditional_shutdown(
            sig,
            EXIT_INTERRUPTED as i32,
            Arc::clone(&flag),
        )
        .map_err(|e| CliError::io("installing signal handlers", e))?;
        signal_hook::flag::register(sig, Arc::clone(&flag))
            .map_err(|e| CliError::io("installing signal handlers", e))?;
    }
    Ok(flag)
}

/// Sleeps up to `d`, waking early when `flag` is raised. True when it was.
pub fn sleep_unless(flag: &AtomicBool, d: Duration) -> bool {
    let step = Duration::from_millis(50);
    let mut left = d;
    while !left.is_zero() {
        if flag.load(Ordering::Relaxed) {
            return true;
        }
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
    flag.load(Ordering::Relaxed)
}

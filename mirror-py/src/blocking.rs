//! Every call that blocks — disk I/O, hashing, network waits — goes through here, with the GIL
//! released so other Python threads run meanwhile.
//!
//! Short calls (one write, one flush) simply release the GIL. Long jobs (scans, resyncs,
//! verifies, waiting for a link) run on a helper thread while the calling thread wakes every
//! [`SIGNAL_POLL`] and takes the GIL back just long enough to run Python's signal handlers.
//! When a handler raises (Ctrl-C: `KeyboardInterrupt`), the job's cancel flag is set, the job
//! is waited for (it stops at its next batch), and the handler's exception is raised.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use pyo3::prelude::*;

use crate::errors::IntoPyResult;

/// How often a long job's caller checks for signals.
pub(crate) const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Runs a short blocking call with the GIL released.
pub(crate) fn detached<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce() -> mirror_core::Result<T> + Send,
{
    py.detach(f).py()
}

/// Runs a long job with the GIL released, interruptible by signals (see the module doc). The
/// job gets a cancel flag that it must poll between batches.
pub(crate) fn interruptible<T, F>(py: Python<'_>, job: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce(&AtomicBool) -> mirror_core::Result<T> + Send,
{
    let cancel = AtomicBool::new(false);
    let (result, interrupt) = py.detach(|| {
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::sync_channel(1);
            let cancel = &cancel;
            s.spawn(move || {
                let _ = tx.send(job(cancel));
            });
            let mut interrupt: Option<PyErr> = None;
            loop {
                match rx.recv_timeout(SIGNAL_POLL) {
                    Ok(r) => return (Some(r), interrupt),
                    // The job panicked; the scope re-raises the panic when it ends.
                    Err(mpsc::RecvTimeoutError::Disconnected) => return (None, interrupt),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if interrupt.is_none() {
                            if let Err(e) = Python::attach(|py| py.check_signals()) {
                                interrupt = Some(e);
                                cancel.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
        })
    });
    if let Some(e) = interrupt {
        return Err(e);
    }
    match result {
        Some(r) => r.py(),
        None => unreachable!("a job that panicked re-raises its panic at the end of its scope"),
    }
}

/// A [`mirror_core::Error::Cancelled`] if `cancel` is set.
pub(crate) fn check_cancel(cancel: &AtomicBool, what: &'static str) -> mirror_core::Result<()> {
    if cancel.load(Ordering::Relaxed) {
        Err(mirror_core::Error::Cancelled(what))
    } else {
        Ok(())
    }
}

//! Every call that blocks — disk I/O, hashing, network waits — goes through here, with the GIL
//! released so other Python threads run meanwhile.
//!
//! Short calls (one write, one flush) simply release the GIL. Long jobs (scans, resyncs,
//! verifies, waiting for a link) run on a helper thread while the calling thread wakes every
//! [`SIGNAL_POLL`] and takes the GIL back just long enough to run Python's signal handlers.
//! When a handler raises (Ctrl-C: `KeyboardInterrupt`), the job's cancel flag is set, the job
//! is waited for (it stops at its next batch), and the handler's exception is raised. A wait
//! that has no cancel flag but ends by itself (waiting for the link) is left to end in the
//! background instead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use pyo3::exceptions::PyKeyboardInterrupt;
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
/// job must poll `cancel` between batches; the caller's signal handlers set it.
pub(crate) fn interruptible_with<T, F>(py: Python<'_>, cancel: &AtomicBool, job: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce() -> mirror_core::Result<T> + Send,
{
    let (result, interrupt) = py.detach(|| {
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::sync_channel(1);
            s.spawn(move || {
                let _ = tx.send(job());
            });
            // Waits for the job even after an interrupt: it borrows from this frame.
            let mut interrupt = None;
            loop {
                match poll(&rx, &mut interrupt) {
                    Poll::Done(r) => return (r, interrupt),
                    Poll::Interrupted => cancel.store(true, Ordering::Relaxed),
                    Poll::Waiting => {}
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

/// Runs a wait that cannot be cancelled (it ends by itself at its timeout) on its own thread
/// with the GIL released; a signal handler's exception is raised at once, leaving the wait to
/// end in the background.
pub(crate) fn interruptible_wait<T, F>(py: Python<'_>, wait: F) -> PyResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> mirror_core::Result<T> + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("mirror-py-wait".into())
        .spawn(move || {
            let _ = tx.send(wait());
        })
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(format!("spawn: {e}")))?;
    let (result, interrupt) = py.detach(move || {
        let mut interrupt = None;
        loop {
            match poll(&rx, &mut interrupt) {
                Poll::Done(r) => return (r, interrupt),
                Poll::Interrupted => return (None, interrupt),
                Poll::Waiting => {}
            }
        }
    });
    match (interrupt, result) {
        (Some(e), _) => Err(e),
        (None, Some(r)) => r.py(),
        (None, None) => Err(pyo3::exceptions::PyRuntimeError::new_err(
            "the wait ended without a result",
        )),
    }
}

enum Poll<T> {
    /// The job ended (`None`: it panicked).
    Done(Option<T>),
    /// A signal handler raised; the exception is in `interrupt`.
    Interrupted,
    /// Nothing yet.
    Waiting,
}

/// Waits up to [`SIGNAL_POLL`] for the job, then, unless a handler already raised, runs the
/// pending signal handlers.
fn poll<T>(rx: &mpsc::Receiver<T>, interrupt: &mut Option<PyErr>) -> Poll<T> {
    match rx.recv_timeout(SIGNAL_POLL) {
        Ok(r) => Poll::Done(Some(r)),
        Err(mpsc::RecvTimeoutError::Disconnected) => Poll::Done(None),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            if interrupt.is_none() {
                if let Err(e) = Python::attach(|py| py.check_signals()) {
                    *interrupt = Some(e);
                    return Poll::Interrupted;
                }
            }
            Poll::Waiting
        }
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

/// A Python progress callback `f(done, total)`, called from engine threads. The first
/// exception it raises sets the job's cancel flag and is raised in place of the job's result.
pub(crate) struct ProgressHook {
    callback: Option<Py<PyAny>>,
    failed: std::sync::Mutex<Option<PyErr>>,
    cancel: AtomicBool,
}

impl ProgressHook {
    /// A hook around `callback` (none: reports go nowhere).
    pub(crate) fn new(callback: Option<Py<PyAny>>) -> Self {
        ProgressHook {
            callback,
            failed: std::sync::Mutex::new(None),
            cancel: AtomicBool::new(false),
        }
    }

    /// The job's cancel flag: set by a failing callback, or by Ctrl-C through
    /// [`interruptible_with`].
    pub(crate) fn cancel(&self) -> &AtomicBool {
        &self.cancel
    }

    /// True when there is a callback to call.
    pub(crate) fn is_set(&self) -> bool {
        self.callback.is_some()
    }

    /// Reports `done` of `total` blocks; nothing once the job is being cancelled.
    pub(crate) fn report(&self, done: u64, total: u64) {
        let Some(f) = &self.callback else { return };
        if self.cancel.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = Python::attach(|py| f.call1(py, (done, total)).map(drop)) {
            let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
            if failed.is_none() {
                *failed = Some(e);
            }
            self.cancel.store(true, Ordering::Relaxed);
        }
    }

    /// The job's result, unless the callback raised (a Ctrl-C still wins).
    pub(crate) fn finish<T>(self, py: Python<'_>, result: PyResult<T>) -> PyResult<T> {
        let failed = self.failed.into_inner().unwrap_or_else(|e| e.into_inner());
        match (failed, result) {
            (Some(_), Err(e)) if e.is_instance_of::<PyKeyboardInterrupt>(py) => Err(e),
            (Some(e), _) => Err(e),
            (None, r) => r,
        }
    }
}

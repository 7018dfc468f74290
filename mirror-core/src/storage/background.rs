//! Background work at the lowest CPU priority.
//!
//! Periodic scans hash every block of the volume on both sides; on a machine with few cores
//! that hashing competes with the threads that carry foreground writes (the link's writer and
//! reader, the secondary's apply loop). Background jobs therefore run on a thread of their own
//! at nice 19 (threads it starts inherit that), so the scheduler gives foreground threads the
//! CPU first. A thread's nice value cannot be raised back without privilege, hence a dedicated
//! thread per job rather than changing the caller's.
//!
//! The hashing itself, the bulk of a scan's CPU, goes further: it runs on the `SCHED_IDLE`
//! threads of [`crate::storage::idle`]. The job thread stays at nice 19 and not idle because it
//! takes region locks and drives the link: starved behind other work while holding a lock, it
//! would stall the very foreground writes it is meant to yield to.

use std::sync::Mutex;

use tracing::debug;

use crate::sync::lock;

/// Runs `f` on a new thread at the lowest CPU priority and returns its result. When no thread
/// can be started, `f` runs on the caller's thread at its priority.
pub(crate) fn run_niced<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let slot = Mutex::new(Some(f));
    let take = || lock(&slot).take();
    let spawned = std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("mirror-background".into())
            .spawn_scoped(s, || {
                lower_cpu_priority();
                take().map(|f| f())
            });
        match handle {
            Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            Err(e) => {
                debug!(error = %e, "no background thread; running at normal priority");
                None
            }
        }
    });
    match spawned {
        Some(v) => v,
        None => match take() {
            Some(f) => f(),
            None => unreachable!("the background closure ran but returned nothing"),
        },
    }
}

fn lower_cpu_priority() {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), 19) {
        debug!(error = %e, "could not lower the background thread's CPU priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_work_runs_at_nice_19_and_returns_its_value() {
        let nice = run_niced(|| {
            rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
        });
        assert_eq!(nice, 19);
        let own = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        assert_ne!(own, 19, "the caller's priority must not change");
    }
}

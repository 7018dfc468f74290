//! Locking helpers shared by the controllers and the adapters.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking over a poisoned lock: every structure guarded in mirror is kept
/// consistent at each step, so a thread that panicked while holding the lock left it usable,
/// and refusing it would turn one panic into a stuck controller.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

//! `mirror_secondary`: the secondary controller behind an opaque handle.
//!
//! Like the primary's, the handle stays valid until `mirror_secondary_free`; after
//! `mirror_secondary_close` every call returns `MIRROR_RESULT_CLOSED`.

use std::ffi::c_char;
use std::sync::atomic::{AtomicBool, Ordering};

use mirror_core::Secondary;

use crate::args::{arg_ref, out_ptr, write_out, write_string};
use crate::config::mirror_secondary_config;
use crate::error::{guard, guard_or, mirror_result, Failure, FfiResult};
use crate::types::mirror_secondary_status;

/// A secondary: listens for its primary and applies what it sends. Create with
/// `mirror_secondary_new`, free with `mirror_secondary_free`.
///
/// Thread safety: every function but `mirror_secondary_free` may be called from several
/// threads at once on the same handle.
#[derive(Debug)]
pub struct mirror_secondary {
    secondary: Secondary,
    closed: AtomicBool,
    serving: AtomicBool,
}

impl mirror_secondary {
    fn live(&self) -> FfiResult<&Secondary> {
        if self.closed.load(Ordering::Acquire) {
            Err(Failure::closed("secondary"))
        } else {
            Ok(&self.secondary)
        }
    }
}

/// Creates a secondary over the volume named in `config`, which is opened now. It does not
/// listen until `mirror_secondary_serve`.
///
/// - `config`: read and copied; the caller may free it right after.
/// - `secondary_out`: receives the handle on success; untouched on error.
///
/// Ownership: the caller owns the handle and frees it with `mirror_secondary_free`.
///
/// Thread safety: safe from any thread.
///
/// # Safety
/// `config` is NULL or a live config not being modified; `secondary_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mirror_secondary_new(
    config: *const mirror_secondary_config,
    secondary_out: *mut *mut mirror_secondary,
) -> mirror_result {
    guard(|| {
        let out = out_ptr(secondary_out, "secondary_out")?;
        // SAFETY: the caller passes NULL or a live config.
        let config = unsafe { arg_ref(config, "config")? };
        let volume = config.volume.open()?;
        let secondary = Secondary::new(volume, config.core.clone())?;
        let handle = Box::new(mirror_secondary {
            secondary,
            closed: AtomicBool::new(false),
            serving: AtomicBool::new(false),
        });
        // SAFETY: `out` was checked non-NULL; the caller promises it is writable.
        unsafe { write_out(out, Box::into_raw(handle)) };
        Ok(())
    })
}

/// Starts listening on the configured address and serving primaries in background threads.
/// The bound port goes to `port_out` if not NULL (useful with port 0).
///
/// Errors: `MIRROR_RESULT_IO` if the address cannot be bound, `MIRROR_RESULT_INVALID_ARGUMENT`
/// for a non-loopback address without a secret (see
/// `mirror_secondary_config_set_allow_insecure`).
///
/// After `mirror_secondary_stop` it may be called again: the secondary keeps what it knows of
/// its coherence, so the primary resyncs from its dirty map.
///
/// Ownership: the handle stays the caller's; out-values are plain copies. Thread safety: may
/// be called from several threads at once on the same handle.
///
/// # Safety
/// `secondary` is NULL or a handle not yet freed; `port_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mirror_secondary_serve(
    secondary: *const mirror_secondary,
    port_out: *mut u16,
) -> mirror_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a live handle.
        let s = unsafe { arg_ref(secondary, "secondary")? };
        let addr = s.live()?.serve()?;
        s.serving.store(true, Ordering::Release);
        if !port_out.is_null() {
            // SAFETY: non-NULL and writable, per the contract.
            unsafe { write_out(port_out, addr.port()) };
        }
        Ok(())
    })
}

/// Copies the bound address, `"host:port"` and a NUL, into `buf` of `cap` bytes; its length
/// without the NUL into `len_out` if not NULL. `MIRROR_RESULT_BUFFER_TOO_SMALL` (nothing
/// written) if it does not fit — 64 bytes always do; `MIRROR_RESULT_INVALID_ARGUMENT` when not
/// serving.
///
/// Ownership: the handle stays the caller's; out-values are plain copies. Thread safety: may
/// be called from several threads at once on the same handle.
///
/// # Safety
/// `secondary` is NULL or a handle not yet freed; `buf` is NULL or writable for `cap` bytes;
/// `len_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mirror_secondary_local_addr(
    secondary: *const mirror_secondary,
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
) -> mirror_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a live handle.
        let s = unsafe { arg_ref(secondary, "secondary")? };
        let live = s.live()?;
        if !s.serving.load(Ordering::Acquire) {
            return Err(Failure::invalid("the secondary is not serving"));
        }
        let addr = live
            .local_addr()
            .ok_or_else(|| Failure::invalid("the secondary is not serving"))?;
        // SAFETY: per the contract, `buf` has `cap` writable bytes and `len_out` is NULL or
        // writable.
        unsafe { write_string(&addr.to_string(), buf, cap, len_out) }
    })
}

/// Stops listening and ends the current connection; the primary sees its link drop and tracks
/// writes in its dirty map. What the secondary knows of its coherence is kept for a later
/// `mirror_secondary_serve`. Stopping a secondary that is not serving does nothing.
///
/// Ownership: the handle stays the caller's; out-values are plain copies. Thread safety: may
/// be called from several threads at once on the same handle.
///
/// # Safety
/// `secondary` is NULL or a handle not yet freed.
#[no_mangle]
pub unsafe extern "C" fn mirror_secondary_stop(
    secondary: *const mirror_secondary,
) -> mirror_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a live handle.
        let s = unsafe { arg_ref(secondary, "secondary")? };
        let live = s.live()?;
        if s.serving.swap(false, Ordering::AcqRel) {
            live.stop();
        }
        Ok(())
    })
}

/// A snapshot of the secondary, into `status_out`.
///
/// Ownership: the handle stays the caller's; out-values are plain copies. Thread safety: may
/// be called from several threads at once on the same handle.
///
/// # Safety
/// `secondary` is NULL or a handle not yet freed; `status_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mirror_secondary_get_status(
    secondary: *const mirror_secondary,
    status_out: *mut mirror_secondary_status,
) -> mirror_result {
    guard(|| {
        let out = out_ptr(status_out, "status_out")?;
        // SAFETY: the caller passes NULL or a live handle.
        let s = unsafe { arg_ref(secondary, "secondary")? };
        let status =
            mirror_secondary_status::new(&s.live()?.status(), s.serving.load(Ordering::Acquire));
        // SAFETY: `out` was checked non-NULL; the caller promises it is writable.
        unsafe { write_out(out, status) };
        Ok(())
    })
}

/// Copies the secondary's last connection error (a refused or failed primary), a
/// NUL-terminated message, into `buf` of `cap` bytes; its length without the NUL into
/// `len_out` if not NULL. An empty string when there has been none.
/// `MIRROR_RESULT_BUFFER_TOO_SMALL` (nothing written) if it does not fit.
///
/// Ownership: the caller owns `buf`. Thread safety: may be called from several threads at
/// once on the same handle.
///
/// # Safety
/// `secondary` is NULL or a handle not yet freed; `buf` is NULL or writable for `cap` bytes;
/// `len_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mirror_secondary_last_link_error(
    secondary: *const mirror_secondary,
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
) -> mirror_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a live handle.
        let s = unsafe { arg_ref(secondary, "secondary")? };
        let message = s.live()?.status().last_error.unwrap_or_default();
        // SAFETY: per the contract, `buf` has `cap` writable bytes and `len_out` is NULL or
        // writable.
        unsafe { write_string(&message, buf, cap, len_out) }
    })
}

/// Closes the secondary: stops serving if it is. The handle stays allocated: every later
/// call on it, a second close included, returns `MIRROR_RESULT_CLOSED`. Free it with
/// `mirror_secondary_free`.
///
/// Ownership: the handle stays the caller's until `mirror_secondary_free`. Thread safety: may race other
/// calls on the handle; each finishes or returns `MIRROR_RESULT_CLOSED`.
///
/// # Safety
/// `secondary` is NULL or a handle not yet freed.
#[no_mangle]
pub unsafe extern "C" fn mirror_secondary_close(
    secondary: *const mirror_secondary,
) -> mirror_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a live handle.
        let s = unsafe { arg_ref(secondary, "secondary")? };
        if s.closed.swap(true, Ordering::AcqRel) {
            return Err(Failure::closed("secondary"));
        }
        if s.serving.swap(false, Ordering::AcqRel) {
            s.secondary.stop();
        }
        Ok(())
    })
}

/// Frees a secondary, closing it first if it is open. `NULL` is a no-op.
///
/// Thread safety: no other call may be running on, or made after, this handle.
///
/// # Safety
/// `secondary` is NULL or a handle from `mirror_secondary_new` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn mirror_secondary_free(secondary: *mut mirror_secondary) {
    guard_or((), || {
        if secondary.is_null() {
            return;
        }
        // SAFETY: a pointer from `Box::into_raw` in `mirror_secondary_new`, freed once, with
        // no other call running on it (the contract).
        let s = unsafe { Box::from_raw(secondary) };
        if !s.closed.swap(true, Ordering::AcqRel) && s.serving.swap(false, Ordering::AcqRel) {
            let _ = guard(|| {
                s.secondary.stop();
                Ok(())
            });
        }
    })
}

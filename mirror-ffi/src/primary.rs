//! `mirror_primary`: the primary controller behind an opaque handle.
//!
//! The handle stays valid from `mirror_primary_open` to `mirror_primary_free`. Closing marks
//! it closed (every later call returns `MIRROR_RESULT_CLOSED`) but keeps the memory, so a
//! call racing a close, or made after it, is an error code and never a use of freed memory.

use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mirror_core::sync::lock;
use mirror_core::{Algorithm, BlockRange, JobOptions, Primary, Progress, Report, Volume};

use crate::args::{arg_bytes, arg_ref, out_ptr, write_out, write_string, CEnum};
use crate::config::mirror_primary_config;
use crate::error::{guard, guard_or, mirror_result, Failure, FfiResult};
use crate::scan::{mirror_scan, resolve_range};
use crate::types::{
    mirror_algorithm, mirror_block_range, mirror_report, mirror_status, mirror_write_outcome,
};
use crate::MIRROR_JOB_FULL;

/// A primary: replicates writes to its secondary, tracks what the secondary lacks, resyncs
/// and verifies. Open with `mirror_primary_open`, free with `mirror_primary_free`.
///
/// Thread safety: every function but `mirror_primary_free` may be called from several
/// threads at once on the same handle.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct mirror_primary {
    primary: Primary,
    volume: Arc<dyn Volume>,
    closed: AtomicBool,
    /// The progress callback jobs report to, if any.
    progress: Mutex<Option<ProgressCallback>>,
}

/// A function the library calls as a resync or verify advances: `done` of `total` blocks
/// compared. `userdata` is the pointer given to `mirror_primary_set_progress`.
///
/// It may be called from any thread, the library's worker threads included, and from several
/// at once; it must return promptly, must not unwind or `longjmp` out, and must not free the
/// primary.
#[allow(non_camel_case_types)]
pub type mirror_progress_fn =
    Option<unsafe extern "C" fn(userdata: *mut c_void, done: u64, total: u64)>;

/// A C callback and its user data.
#[derive(Debug, Clone, Copy)]
struct ProgressCallback {
    f: unsafe extern "C" fn(*mut c_void, u64, u64),
    userdata: *mut c_void,
}

// SAFETY: the caller of `mirror_primary_set_progress` promises the callback may be called
// with `userdata` from any thread, at once from several (its documented contract).
unsafe impl Send for ProgressCallback {}
// SAFETY: as for `Send`: sharing only lets threads call the callback, which is allowed.
unsafe impl Sync for ProgressCallback {}

impl ProgressCallback {
    fn call(&self, p: Progress) {
        // SAFETY: a function pointer C registered for exactly this call, with its userdata.
        unsafe { (self.f)(self.userdata, p.done, p.total) }
    }
}

impl mirror_primary {
    fn live(&self) -> FfiResult<&Primary> {
        if self.closed.load(Ordering::Acquire) {
            Err(Failure::closed("primary"))
        } else {
            Ok(&self.primary)
        }
    }

    /// Runs a resync or verify (`mirror_primary_cancel` reaches it through the core).
    fn job(
        &self,
        flags: u32,
        connect_timeout_ms: u32,
        run: impl FnOnce(&Primary, &JobOptions<'_>) -> mirror_core::Result<Report>,
    ) -> FfiResult<Report> {
        let primary = self.live()?;
        if flags & !MIRROR_JOB_FULL != 0 {
            return Err(Failure::invalid(format!("unknown job flags {flags:#x}")));
        }
        let callback = *lock(&self.progress);
        let report = callback.map(|cb| move |p: Progress| cb.call(p));
        let opts = JobOptions {
            full: flags & MIRROR_JOB_FULL != 0,
            progress: report.as_ref().map(|r| r as &(dyn Fn(Progress) + Sync)),
            cancel: None,
            connect_timeout: (connect_timeout_ms != 0)
                .then(|| Duration::from_millis(connect_timeout_ms.into())),
        };
        Ok(run(primary, &opts)?)
    }
}

/// Opens a primary: opens its volume and starts connecting to the secondary in the
/// background (the call does not wait for the link; see `mirror_primary_wait_connected`).
///
/// - `config`: read and copied; the caller may free it right after.
/// - `primary_out`: receives the handle on success; untouched on error.
///
/// Errors: `MIRROR_RESULT_INVALID_ARGUMENT` for a bad configuration, `MIRROR_RESULT_IO` if the
/// volume cannot be opened.
///
/// Ownership: the caller owns the handle and must free it with `mirror_primary_free`.
/// Thread safety: safe from any thread.
///
/// # Safety
/// `config` is NULL or a live config not being modified; `primary_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_open(
    config: *const mirror_primary_config,
    primary_out: *mut *mut mirror_primary,
) -> mirror_result {
    guard(|| {
        let out = out_ptr(primary_out, "primary_out")?;
        // SAFETY: the caller passes NULL or a live config.
        let config = unsafe { arg_ref(config, "config")? };
        config.core.validate()?;
        let volume = config.volume.open()?;
        let primary = Primary::open(volume.clone(), config.core.clone())?;
        let handle = Box::new(mirror_primary {
            primary,
            volume,
            closed: AtomicBool::new(false),
            progress: Mutex::new(None),
        });
        // SAFETY: `out` was checked non-NULL; the caller promises it is writable.
        unsafe { write_out(out, Box::into_raw(handle)) };
        Ok(())
    })
}

/// Size of the primary's volume in bytes, into `size_out`; its block size into
/// `block_size_out` (either may be NULL).
///
/// Ownership: the handle stays the caller's; out-values are plain copies. Thread safety: may
/// be called from several threads at once on the same handle.
///
/// # Safety
/// `primary` is NULL or a handle not yet freed; the out-pointers are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_volume_size(
    primary: *const mirror_primary,
    size_out: *mut u64,
    block_size_out: *mut u32,
) -> mirror_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a live handle.
        let p = unsafe { arg_ref(primary, "primary")? };
        p.live()?;
        if !size_out.is_null() {
            // SAFETY: non-NULL and writable, per the contract.
            unsafe { write_out(size_out, p.volume.size()) };
        }
        if !block_size_out.is_null() {
            // SAFETY: non-NULL and writable, per the contract.
            unsafe { write_out(block_size_out, p.volume.block_size().get()) };
        }
        Ok(())
    })
}

/// Shared body of write and replicate.
///
/// # Safety
/// As `mirror_primary_write`.
unsafe fn write_like(
    primary: *const mirror_primary,
    offset: u64,
    data: *const u8,
    len: usize,
    outcome_out: *mut u32,
    local: bool,
) -> mirror_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a live handle.
        let p = unsafe { arg_ref(primary, "primary")? };
        // SAFETY: the caller promises `len` readable bytes at `data` unless NULL.
        let data = unsafe { arg_bytes(data, len, "data")? };
        let live = p.live()?;
        let outcome = if local {
            live.write(offset, data)?
        } else {
            live.replicate(offset, data)?
        };
        if !outcome_out.is_null() {
            // SAFETY: non-NULL and writable, per the contract.
            unsafe { write_out(outcome_out, mirror_write_outcome::from(outcome) as u32) };
        }
        Ok(())
    })
}

/// Writes `len` bytes from `data` at byte `offset` of the primary's volume, then replicates
/// them. `offset` must be block-aligned; `len` a whole number of blocks, except a write that
/// ends exactly at the end of the volume; nothing may reach past the end
/// (`MIRROR_RESULT_INVALID_ARGUMENT` otherwise, before any I/O).
///
/// In sync mode the call returns once the secondary has the data. Without a link it still
/// succeeds: the range is marked dirty and `*outcome_out` says `MIRROR_WRITE_OUTCOME_DEGRADED`.
///
/// - `outcome_out`: NULL, or receives a `mirror_write_outcome` value on success.
///
/// Ownership: `data` is only read during the call. Thread safety: safe from several threads;
/// writes that overlap should be ordered by the caller.
///
/// # Safety
/// `primary` is NULL or a handle not yet freed; `data` is NULL or readable for `len` bytes;
/// `outcome_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_write(
    primary: *const mirror_primary,
    offset: u64,
    data: *const u8,
    len: usize,
    outcome_out: *mut u32,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { write_like(primary, offset, data, len, outcome_out, true) }
}

/// Replicates `len` bytes from `data` that the caller has already written at `offset` of the
/// primary's volume. Same rules and results as `mirror_primary_write`, without the local write.
///
/// Ownership: the handle stays the caller's; out-values are plain copies. Thread safety: may
/// be called from several threads at once on the same handle.
///
/// # Safety
/// As `mirror_primary_write`.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_replicate(
    primary: *const mirror_primary,
    offset: u64,
    data: *const u8,
    len: usize,
    outcome_out: *mut u32,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { write_like(primary, offset, data, len, outcome_out, false) }
}

/// Makes bytes `[offset, offset + len)` zero on the primary's volume and on the secondary,
/// replicated in order with writes; the storage stays allocated where the volumes can say so
/// (fallocate `ZERO_RANGE`), else zeros are written. The range follows the rules of
/// `mirror_primary_write` (`MIRROR_RESULT_INVALID_ARGUMENT` before any I/O otherwise) but is
/// bounded only by the volume: one call may zero the whole volume, and nothing of its length
/// is allocated or sent as data.
///
/// Outcomes as `mirror_primary_write`: in sync mode the call returns once the secondary has
/// zeroed the range; without a link the range is marked dirty and `*outcome_out` says
/// `MIRROR_WRITE_OUTCOME_DEGRADED`.
///
/// - `outcome_out`: NULL, or receives a `mirror_write_outcome` value on success.
///
/// Ownership: the handle stays the caller's; out-values are plain copies. Thread safety: may
/// be called from several threads at once on the same handle.
///
/// # Safety
/// `primary` is NULL or a handle not yet freed; `outcome_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_write_zeroes(
    primary: *const mirror_primary,
    offset: u64,
    len: u64,
    outcome_out: *mut u32,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { zero_like(primary, offset, len, outcome_out, false) }
}

/// Trims bytes `[offset, offset + len)` on the primary's volume and on the secondary: their
/// storage is released where the volumes can (hole punching, discard), and the range reads as
/// zeros on both sides afterwards. Trim is not advisory in mirror — its contents become zero —
/// so the pair stays byte-equal and scans compare it exactly. Rules and outcomes as
/// `mirror_primary_write_zeroes`.
///
/// - `outcome_out`: NULL, or receives a `mirror_write_outcome` value on success.
///
/// Ownership: the handle stays the caller's; out-values are plain copies. Thread safety: may
/// be called from several threads at once on the same handle.
///
/// # Safety
/// `primary` is NULL or a handle not yet freed; `outcome_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_trim(
    primary: *const mirror_primary,
    offset: u64,
    len: u64,
    outcome_out: *mut u32,
) -> mirror_result {
    // SAFETY: forwarded contract.
    unsafe { zero_like(primary, offset, len, outcome_out, true) }
}

/// # Safety
/// As `mirror_primary_write_zeroes`.
unsafe fn zero_like(
    primary: *const mirror_primary,
    offset: u64,
    len: u64,
    outcome_out: *mut u32,
    trim: bool,
) -> mirror_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a live handle.
        let p = unsafe { arg_ref(primary, "primary")? };
        let live = p.live()?;
        let outcome = if trim {
            live.trim(offset, len)?
        } else {
            live.write_zeroes(offset, len)?
        };
        if !outcome_out.is_null() {
            // SAFETY: non-NULL and writable, per the contract.
            unsafe { write_out(outcome_out, mirror_write_outcome::from(outcome) as u32) };
        }
        Ok(())
    })
}

/// Records that bytes `[offset, offset + len)` changed and the secondary lacks them; the
/// next resync sends them. The range must lie inside the volume.
///
/// Ownership: the handle stays the caller's; out-values are plain copies. Thread safety: may
/// be called from several threads at once on the same handle.
///
/// # Safety
/// `primary` is NULL or a handle not yet freed.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_mark_dirty(
    primary: *const mirror_primary,
    offset: u64,
    len: u64,
) -> mirror_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a live handle.
        let p = unsafe { arg_ref(primary, "primary")? };
        let live = p.live()?;
        let size = p.volume.size();
        let past_end = match offset.checked_add(len) {
            Some(end) => end > size,
            None => true,
        };
        if past_end {
            return Err(Failure::invalid(format!(
                "range {offset}+{len} reaches past the end of the volume ({size} bytes)"
            )));
        }
        Ok(live.mark_dirty(offset, len)?)
    })
}

/// Flushes the local volume and, when connected, the secondary's.
///
/// Ownership: the handle stays the caller's; out-values are plain copies. Thread safety: may
/// be called from several threads at once on the same handle.
///
/// # Safety
/// `primary` is NULL or a handle not yet freed.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_flush(primary: *const mirror_primary) -> mirror_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a live handle.
        let p = unsafe { arg_ref(primary, "primary")? };
        Ok(p.live()?.flush()?)
    })
}

/// Computes per-block digests of blocks `[first_block, first_block + block_count)` of the
/// primary's volume (`block_count` `MIRROR_BLOCKS_TO_END`: up to the end).
///
/// - `algorithm`: a `mirror_algorithm` value.
/// - `scan_out`: receives a new scan handle on success; untouched on error.
///
/// Ownership: the caller owns the scan and frees it with `mirror_scan_free`; it does not
/// depend on the primary. Thread safety: safe from several threads.
///
/// # Safety
/// `primary` is NULL or a handle not yet freed; `scan_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_scan(
    primary: *const mirror_primary,
    algorithm: u32,
    first_block: u64,
    block_count: u64,
    scan_out: *mut *mut mirror_scan,
) -> mirror_result {
    guard(|| {
        let out = out_ptr(scan_out, "scan_out")?;
        // SAFETY: the caller passes NULL or a live handle.
        let p = unsafe { arg_ref(primary, "primary")? };
        let algorithm = Algorithm::from(mirror_algorithm::from_c(algorithm)?);
        let live = p.live()?;
        let range: BlockRange = resolve_range(&*p.volume, first_block, block_count)?;
        let map = live.scan(algorithm, range)?;
        // SAFETY: `out` was checked non-NULL; the caller promises it is writable.
        unsafe { write_out(out, mirror_scan::boxed(map)) };
        Ok(())
    })
}

/// Makes the secondary coherent now and reports what it took. Uses the dirty map when it is
/// valid (`MIRROR_RESYNC_MODE_DIRTY_MAP`), otherwise compares every block
/// (`MIRROR_RESYNC_MODE_FULL_SCAN`); `MIRROR_JOB_FULL` in `flags` forces the full comparison.
/// Waits up to `connect_timeout_ms` for the link (0: the engine's default).
///
/// Errors: `MIRROR_RESULT_LINK` when the secondary cannot be reached,
/// `MIRROR_RESULT_CANCELLED` after `mirror_primary_cancel`.
///
/// - `report_out`: receives the report on success; untouched on error.
///
/// Thread safety: safe from several threads; replicated writes may continue meanwhile.
///
/// # Safety
/// `primary` is NULL or a handle not yet freed; `report_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_resync(
    primary: *const mirror_primary,
    flags: u32,
    connect_timeout_ms: u32,
    report_out: *mut mirror_report,
) -> mirror_result {
    guard(|| {
        let out = out_ptr(report_out, "report_out")?;
        // SAFETY: the caller passes NULL or a live handle.
        let p = unsafe { arg_ref(primary, "primary")? };
        let report = p.job(flags, connect_timeout_ms, |pr, o| pr.resync_with(o))?;
        // SAFETY: `out` was checked non-NULL; the caller promises it is writable.
        unsafe { write_out(out, mirror_report::from(&report)) };
        Ok(())
    })
}

/// Compares every block of the two volumes, repairing nothing. `report_out->mismatched` is 0
/// when they are equal. The first `ranges_cap` runs of mismatched blocks are copied to
/// `ranges_out` (which may be NULL when `ranges_cap` is 0); `report_out->mismatched_runs` says
/// how many the engine listed, so the caller knows whether it saw them all.
///
/// `flags` and `connect_timeout_ms` as for `mirror_primary_resync`.
///
/// Ownership: the handle stays the caller's; out-values are plain copies. Thread safety: may
/// be called from several threads at once on the same handle.
///
/// # Safety
/// `primary` is NULL or a handle not yet freed; `report_out` is NULL or writable;
/// `ranges_out` is NULL or writable for `ranges_cap` elements.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_verify(
    primary: *const mirror_primary,
    flags: u32,
    connect_timeout_ms: u32,
    report_out: *mut mirror_report,
    ranges_out: *mut mirror_block_range,
    ranges_cap: usize,
) -> mirror_result {
    guard(|| {
        let out = out_ptr(report_out, "report_out")?;
        if ranges_cap > 0 {
            out_ptr(ranges_out, "ranges_out")?;
        }
        // SAFETY: the caller passes NULL or a live handle.
        let p = unsafe { arg_ref(primary, "primary")? };
        let report = p.job(flags, connect_timeout_ms, |pr, o| pr.verify_with(o))?;
        for (i, r) in report.mismatched_ranges.iter().take(ranges_cap).enumerate() {
            let range = mirror_block_range {
                start: r.start.0,
                count: r.count,
            };
            // SAFETY: `i < ranges_cap`, and the caller promises `ranges_cap` writable
            // elements at the non-NULL `ranges_out`.
            unsafe { write_out(ranges_out.add(i), range) };
        }
        // SAFETY: `out` was checked non-NULL; the caller promises it is writable.
        unsafe { write_out(out, mirror_report::from(&report)) };
        Ok(())
    })
}

/// Sets the function resyncs and verifies started from now on call as they advance (see
/// `mirror_progress_fn`); NULL `callback` removes it. Jobs already running keep the one they
/// started with.
///
/// Ownership: `userdata` stays the caller's; it must stay valid until every resync and verify
/// started while this callback was set has returned. Thread safety: may be called from
/// several threads at once on the same handle.
///
/// # Safety
/// `primary` is NULL or a handle not yet freed; `callback` is NULL or a function that keeps
/// the `mirror_progress_fn` contract with this `userdata`.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_set_progress(
    primary: *const mirror_primary,
    callback: mirror_progress_fn,
    userdata: *mut c_void,
) -> mirror_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a live handle.
        let p = unsafe { arg_ref(primary, "primary")? };
        p.live()?;
        *lock(&p.progress) = callback.map(|f| ProgressCallback { f, userdata });
        Ok(())
    })
}

/// Cancels the resyncs and verifies running on this primary now; they return
/// `MIRROR_RESULT_CANCELLED`. Jobs started later are not affected.
///
/// Thread safety: meant to be called from another thread than the job's.
///
/// # Safety
/// `primary` is NULL or a handle not yet freed.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_cancel(primary: *const mirror_primary) -> mirror_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a live handle.
        let p = unsafe { arg_ref(primary, "primary")? };
        p.live()?.cancel_jobs();
        Ok(())
    })
}

/// Waits until the link is up and handshaken, at most `timeout_ms` milliseconds
/// (`MIRROR_RESULT_LINK` on timeout).
///
/// Ownership: the handle stays the caller's; out-values are plain copies. Thread safety: may
/// be called from several threads at once on the same handle.
///
/// # Safety
/// `primary` is NULL or a handle not yet freed.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_wait_connected(
    primary: *const mirror_primary,
    timeout_ms: u32,
) -> mirror_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a live handle.
        let p = unsafe { arg_ref(primary, "primary")? };
        Ok(p.live()?
            .wait_connected(Duration::from_millis(timeout_ms.into()))?)
    })
}

/// A snapshot of the primary's state, into `status_out`.
///
/// Ownership: the handle stays the caller's; out-values are plain copies. Thread safety: may
/// be called from several threads at once on the same handle.
///
/// # Safety
/// `primary` is NULL or a handle not yet freed; `status_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_get_status(
    primary: *const mirror_primary,
    status_out: *mut mirror_status,
) -> mirror_result {
    guard(|| {
        let out = out_ptr(status_out, "status_out")?;
        // SAFETY: the caller passes NULL or a live handle.
        let p = unsafe { arg_ref(primary, "primary")? };
        let status = mirror_status::from(&p.live()?.status());
        // SAFETY: `out` was checked non-NULL; the caller promises it is writable.
        unsafe { write_out(out, status) };
        Ok(())
    })
}

/// Copies the primary's last link or resync error (the one `mirror_status` cannot carry), a
/// NUL-terminated message, into `buf` of `cap` bytes; its length without the NUL into
/// `len_out` if not NULL. An empty string when there has been none.
/// `MIRROR_RESULT_BUFFER_TOO_SMALL` (nothing written) if it does not fit: 1024 bytes do for
/// any message the engine writes today, and `len_out` is not a hint in that case.
///
/// Ownership: the caller owns `buf`. Thread safety: may be called from several threads at
/// once on the same handle.
///
/// # Safety
/// `primary` is NULL or a handle not yet freed; `buf` is NULL or writable for `cap` bytes;
/// `len_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_last_link_error(
    primary: *const mirror_primary,
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
) -> mirror_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a live handle.
        let p = unsafe { arg_ref(primary, "primary")? };
        let message = p.live()?.status().last_error.unwrap_or_default();
        // SAFETY: per the contract, `buf` has `cap` writable bytes and `len_out` is NULL or
        // writable.
        unsafe { write_string(&message, buf, cap, len_out) }
    })
}

/// Closes the primary: waits for queued writes (bounded by the link timeout), then closes the
/// link and stops its threads. The handle stays allocated: every later call on it, a second
/// close included, returns `MIRROR_RESULT_CLOSED`. Free it with `mirror_primary_free`.
///
/// Errors: the engine's, if queued writes could not be delivered (they are then lost to the
/// secondary, which will be resynced by the next primary with a full scan).
///
/// Ownership: the handle stays the caller's until `mirror_primary_free`. Thread safety: may race other
/// calls on the handle; each finishes or returns `MIRROR_RESULT_CLOSED`.
///
/// # Safety
/// `primary` is NULL or a handle not yet freed.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_close(primary: *const mirror_primary) -> mirror_result {
    guard(|| {
        // SAFETY: the caller passes NULL or a live handle.
        let p = unsafe { arg_ref(primary, "primary")? };
        if p.closed.swap(true, Ordering::AcqRel) {
            return Err(Failure::closed("primary"));
        }
        Ok(p.primary.close()?)
    })
}

/// Frees a primary, closing it first if it is open (errors are ignored; call
/// `mirror_primary_close` first to see them), which may block like `mirror_primary_close`.
/// `NULL` is a no-op.
///
/// Thread safety: no other call may be running on, or made after, this handle.
///
/// # Safety
/// `primary` is NULL or a handle from `mirror_primary_open` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn mirror_primary_free(primary: *mut mirror_primary) {
    guard_or((), || {
        if primary.is_null() {
            return;
        }
        // SAFETY: a pointer from `Box::into_raw` in `mirror_primary_open`, freed once, with no
        // other call running on it (the contract).
        let p = unsafe { Box::from_raw(primary) };
        if !p.closed.swap(true, Ordering::AcqRel) {
            let _ = catch_close(&p.primary);
        }
    })
}

/// Closes, keeping a panic inside the engine from skipping the free.
fn catch_close(p: &Primary) -> mirror_result {
    guard(|| Ok(p.close()?))
}

//! `mirror_scan`: per-block digests, read by C in place.
//!
//! The digests of a scan live in one contiguous buffer owned by the scan handle; C reads them
//! through a pointer, the buffer's length and the digest width, without a copy per block.

use std::ffi::c_char;

use mirror_core::scan::{scan_all, ScanOptions};
use mirror_core::{Algorithm, BlockRange, BlockSize, ScanMap, Volume};
use mirror_uring::VolumeOptions;

use crate::args::{arg_ref, arg_str, out_ptr, write_out, CEnum};
use crate::error::{guard, guard_or, mirror_result, Failure, FfiResult};
use crate::types::{mirror_algorithm, mirror_io_backend};
use crate::MIRROR_BLOCKS_TO_END;

/// Digests of a run of blocks. Made by `mirror_primary_scan` or `mirror_volume_scan`, freed by
/// `mirror_scan_free`. Immutable: safe to read from several threads at once.
#[derive(Debug)]
pub struct mirror_scan {
    map: ScanMap,
}

impl mirror_scan {
    pub(crate) fn boxed(map: ScanMap) -> *mut mirror_scan {
        Box::into_raw(Box::new(mirror_scan { map }))
    }
}

/// A view of a scan's digests: block `first_block + i` has the digest at
/// `digests + i * digest_len`, for `i < block_count`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mirror_scan_view {
    /// Every digest, concatenated (`block_count * digest_len` bytes). Owned by the scan: valid
    /// until `mirror_scan_free`. NULL only when `block_count` is 0.
    pub digests: *const u8,
    /// Bytes at `digests`.
    pub digests_len: usize,
    /// Bytes per digest: 4 (CRC32), 16 (MD5) or 20 (SHA-1).
    pub digest_len: usize,
    /// The first block covered.
    pub first_block: u64,
    /// Blocks covered.
    pub block_count: u64,
    /// The algorithm.
    pub algorithm: crate::types::mirror_algorithm,
}

/// The block range `[first, first + count)` of `vol`, `count` `MIRROR_BLOCKS_TO_END` meaning
/// up to the end. Past-the-end ranges are left to the engine's check.
pub(crate) fn resolve_range(vol: &dyn Volume, first: u64, count: u64) -> FfiResult<BlockRange> {
    let count = if count == MIRROR_BLOCKS_TO_END {
        vol.blocks().checked_sub(first).ok_or_else(|| {
            Failure::invalid(format!(
                "first block {first} is past the end of the volume ({} blocks)",
                vol.blocks()
            ))
        })?
    } else {
        count
    };
    let range = BlockRange::new(first, count);
    mirror_core::scan::check_range(vol, range)?;
    Ok(range)
}

/// Scans a volume without a primary: per-block digests of blocks
/// `[first_block, first_block + block_count)` of the file or block device at `volume_path`,
/// opened read-only (`block_count` `MIRROR_BLOCKS_TO_END`: up to the end).
///
/// - `block_size_bytes`: power of two from 512 to 1048576.
/// - `io_backend`: a `mirror_io_backend` value; `algorithm`: a `mirror_algorithm` value.
/// - `scan_out`: receives a new scan on success; untouched on error.
///
/// Ownership: the caller frees the scan with `mirror_scan_free`. Thread safety: safe from any
/// thread.
///
/// # Safety
/// `volume_path` is NULL or a NUL-terminated string; `scan_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mirror_volume_scan(
    volume_path: *const c_char,
    block_size_bytes: u32,
    io_backend: u32,
    algorithm: u32,
    first_block: u64,
    block_count: u64,
    scan_out: *mut *mut mirror_scan,
) -> mirror_result {
    guard(|| {
        let out = out_ptr(scan_out, "scan_out")?;
        // SAFETY: the caller passes NULL or a NUL-terminated string.
        let path = unsafe { arg_str(volume_path, "volume_path")? };
        let options = VolumeOptions {
            block_size: BlockSize::new(block_size_bytes.into())?,
            io: mirror_io_backend::from_c(io_backend)?.into(),
            read_only: true,
            ..VolumeOptions::default()
        };
        let algorithm = Algorithm::from(mirror_algorithm::from_c(algorithm)?);
        let vol = mirror_uring::open_volume(path, &options)?;
        let range = resolve_range(&*vol, first_block, block_count)?;
        let map = scan_all(&*vol, range, ScanOptions::new(algorithm))?;
        // SAFETY: `out` was checked non-NULL; the caller promises it is writable.
        unsafe { write_out(out, mirror_scan::boxed(map)) };
        Ok(())
    })
}

/// Describes the scan's digest buffer in `view_out`: pointer, length, digest width, first
/// block and block count. No copy is made.
///
/// Lifetime: `view_out->digests` is valid until `mirror_scan_free(scan)`.
///
/// Ownership: the pointers handed out belong to the scan. Thread safety: a scan may be read
/// from several threads at once.
///
/// # Safety
/// `scan` is NULL or a scan not yet freed; `view_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mirror_scan_get_view(
    scan: *const mirror_scan,
    view_out: *mut mirror_scan_view,
) -> mirror_result {
    guard(|| {
        let out = out_ptr(view_out, "view_out")?;
        // SAFETY: the caller passes NULL or a live scan.
        let scan = unsafe { arg_ref(scan, "scan")? };
        let bytes = scan.map.as_bytes();
        let view = mirror_scan_view {
            digests: if bytes.is_empty() {
                std::ptr::null()
            } else {
                bytes.as_ptr()
            },
            digests_len: bytes.len(),
            digest_len: scan.map.algorithm().digest_len(),
            first_block: scan.map.first().0,
            block_count: scan.map.len() as u64,
            algorithm: scan.map.algorithm().into(),
        };
        // SAFETY: `out` was checked non-NULL; the caller promises it is writable.
        unsafe { write_out(out, view) };
        Ok(())
    })
}

/// Points `*digest_out` at the digest of the `index`-th block of the scan (block
/// `first_block + index`), `digest_len` bytes owned by the scan; its length goes to
/// `digest_len_out` if not NULL. `MIRROR_RESULT_INVALID_ARGUMENT` if `index` is out of range.
///
/// Lifetime: valid until `mirror_scan_free(scan)`.
///
/// Ownership: the pointers handed out belong to the scan. Thread safety: a scan may be read
/// from several threads at once.
///
/// # Safety
/// `scan` is NULL or a scan not yet freed; `digest_out` is NULL or writable; `digest_len_out`
/// is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mirror_scan_digest(
    scan: *const mirror_scan,
    index: u64,
    digest_out: *mut *const u8,
    digest_len_out: *mut usize,
) -> mirror_result {
    guard(|| {
        let out = out_ptr(digest_out, "digest_out")?;
        // SAFETY: the caller passes NULL or a live scan.
        let scan = unsafe { arg_ref(scan, "scan")? };
        // The index is checked here rather than left to `ScanMap::get`, whose `i * width`
        // overflows for indices near `usize::MAX`.
        let digest = usize::try_from(index)
            .ok()
            .filter(|&i| i < scan.map.len())
            .and_then(|i| scan.map.get(i))
            .ok_or_else(|| {
                Failure::invalid(format!(
                    "index {index} is out of range (the scan has {} blocks)",
                    scan.map.len()
                ))
            })?;
        // SAFETY: `out` was checked non-NULL; the caller promises it is writable.
        unsafe { write_out(out, digest.as_ptr()) };
        if !digest_len_out.is_null() {
            // SAFETY: non-NULL and writable, per the contract.
            unsafe { write_out(digest_len_out, digest.len()) };
        }
        Ok(())
    })
}

/// Frees a scan and its digest buffer. `NULL` is a no-op.
///
/// Thread safety: no other call may be running on this scan.
///
/// # Safety
/// `scan` is NULL or a scan not yet freed, with no view or digest pointer of it used
/// afterwards and no other thread using it.
#[no_mangle]
pub unsafe extern "C" fn mirror_scan_free(scan: *mut mirror_scan) {
    guard_or((), || {
        if !scan.is_null() {
            // SAFETY: a pointer from `Box::into_raw` in `mirror_scan::boxed`, freed once.
            drop(unsafe { Box::from_raw(scan) });
        }
    })
}

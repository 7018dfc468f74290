//! The stable C ABI of mirror: `libmirror.so`, `libmirror.a` and `include/mirror.h`.
//!
//! The header is generated from this crate by a pinned cbindgen (`gen-header.sh`) and
//! committed; the doc comments here are the C reference. The conventions, for every function:
//!
//! - Fallible functions return a [`mirror_result`](error::mirror_result); the message of the
//!   last failure on the calling thread is `mirror_last_error_message()`.
//! - No panic crosses the boundary: it is caught and returned as `MIRROR_RESULT_PANIC`.
//! - Pointer arguments are checked: NULL gives `MIRROR_RESULT_NULL_PARAMETER` (except where a
//!   function says NULL is allowed); enum arguments are `uint32_t` and unknown values give
//!   `MIRROR_RESULT_INVALID_ARGUMENT`.
//! - Out-parameters are written only on success.
//! - Handles are created by `_new`/`_open` and released by `_free`, which accepts NULL. A
//!   closed handle returns `MIRROR_RESULT_CLOSED` until it is freed.

// The exported types carry their C names (`mirror_primary`, `mirror_report`, ...), which
// cbindgen copies into the header as they are.
#![allow(non_camel_case_types)]

pub mod args;
pub mod config;
pub mod error;
pub mod primary;
pub mod scan;
pub mod secondary;
pub mod types;

use std::ffi::c_char;

pub use config::{mirror_primary_config, mirror_secondary_config};
pub use error::mirror_result;
pub use primary::mirror_primary;
pub use scan::{mirror_scan, mirror_scan_view};
pub use secondary::mirror_secondary;
pub use types::*;

/// Major version of the library this header was generated from.
pub const MIRROR_VERSION_MAJOR: u32 = 0;
/// Minor version of the library this header was generated from.
pub const MIRROR_VERSION_MINOR: u32 = 1;
/// Patch version of the library this header was generated from.
pub const MIRROR_VERSION_PATCH: u32 = 0;
/// Version of the library this header was generated from, `"MAJOR.MINOR.PATCH"`; compare it
/// with `mirror_version()` to catch a header used with another library.
pub const MIRROR_VERSION: &str = "0.1.0";

/// `block_count` meaning "up to the end of the volume" in the scan functions.
pub const MIRROR_BLOCKS_TO_END: u64 = u64::MAX;

/// Job flag of `mirror_primary_resync` and `mirror_primary_verify`: compare every block,
/// whatever the dirty map says.
pub const MIRROR_JOB_FULL: u32 = 1;

/// The version of the linked library, `"MAJOR.MINOR.PATCH"` (equal to `MIRROR_VERSION` when
/// header and library match).
///
/// Ownership: a static string; never free it. Thread safety: safe from any thread.
#[no_mangle]
pub extern "C" fn mirror_version() -> *const c_char {
    const V: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    error::guard_or(V.as_ptr().cast(), || V.as_ptr().cast())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_constants_match_cargo_toml() {
        assert_eq!(MIRROR_VERSION, env!("CARGO_PKG_VERSION"));
        assert_eq!(
            MIRROR_VERSION_MAJOR.to_string(),
            env!("CARGO_PKG_VERSION_MAJOR")
        );
        assert_eq!(
            MIRROR_VERSION_MINOR.to_string(),
            env!("CARGO_PKG_VERSION_MINOR")
        );
        assert_eq!(
            MIRROR_VERSION_PATCH.to_string(),
            env!("CARGO_PKG_VERSION_PATCH")
        );
        // SAFETY: mirror_version returns a static NUL-terminated string.
        let v = unsafe { std::ffi::CStr::from_ptr(mirror_version()) };
        assert_eq!(v.to_str().unwrap(), MIRROR_VERSION);
    }
}

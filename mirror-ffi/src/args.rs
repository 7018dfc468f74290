//! Checks on what C passes in: pointers, buffers, strings and enum values.
//!
//! Every pointer is checked for NULL and every enum value against its known values before
//! anything else happens, so a caller's mistake is an error code, never undefined behaviour
//! on the library's side. Out-parameters are checked up front and written last, on success.

use std::ffi::{c_char, CStr};

use crate::error::{mirror_result, Failure, FfiResult};

/// `&T` from a pointer C passed, or `NullParameter`.
///
/// # Safety
/// `ptr` is NULL or points to a live `T` that is not mutated for `'a`.
pub(crate) unsafe fn arg_ref<'a, T>(ptr: *const T, name: &str) -> FfiResult<&'a T> {
    // SAFETY: the caller promises a NULL or valid pointer; NULL is turned into an error.
    unsafe { ptr.as_ref() }.ok_or_else(|| Failure::null(name))
}

/// `&mut T` from a pointer C passed, or `NullParameter`.
///
/// # Safety
/// `ptr` is NULL or points to a live `T` that nothing else touches for `'a`.
pub(crate) unsafe fn arg_mut<'a, T>(ptr: *mut T, name: &str) -> FfiResult<&'a mut T> {
    // SAFETY: the caller promises a NULL or valid, unaliased pointer; NULL is an error.
    unsafe { ptr.as_mut() }.ok_or_else(|| Failure::null(name))
}

/// The `len` bytes at `ptr`; NULL is accepted only when `len` is 0.
///
/// # Safety
/// Unless NULL, `ptr` points to `len` readable bytes that stay unchanged for `'a`.
pub(crate) unsafe fn arg_bytes<'a>(ptr: *const u8, len: usize, name: &str) -> FfiResult<&'a [u8]> {
    if ptr.is_null() {
        return if len == 0 {
            Ok(&[])
        } else {
            Err(Failure::null(name))
        };
    }
    if len > isize::MAX as usize {
        return Err(Failure::invalid(format!(
            "{name}: length {len} is too large"
        )));
    }
    // SAFETY: non-NULL, and the caller promises `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// A NUL-terminated UTF-8 string C passed.
///
/// # Safety
/// Unless NULL, `ptr` points to a NUL-terminated string that stays unchanged for `'a`.
pub(crate) unsafe fn arg_str<'a>(ptr: *const c_char, name: &str) -> FfiResult<&'a str> {
    if ptr.is_null() {
        return Err(Failure::null(name));
    }
    // SAFETY: non-NULL and NUL-terminated, as the caller promises.
    let s = unsafe { CStr::from_ptr(ptr) };
    s.to_str().map_err(|_| {
        Failure::new(
            mirror_result::InvalidUtf8,
            format!("{name} is not valid UTF-8"),
        )
    })
}

/// Checks an out-pointer is not NULL, so nothing is done for a caller who cannot be answered.
pub(crate) fn out_ptr<T>(ptr: *mut T, name: &str) -> FfiResult<*mut T> {
    if ptr.is_null() {
        Err(Failure::null(name))
    } else {
        Ok(ptr)
    }
}

/// Writes an answer through an out-pointer already checked by [`out_ptr`].
///
/// # Safety
/// `ptr` is non-NULL, aligned and writable for one `T`.
pub(crate) unsafe fn write_out<T>(ptr: *mut T, value: T) {
    // SAFETY: checked non-NULL by `out_ptr`; the caller promises it is writable. `write`
    // does not drop the uninitialised old value.
    unsafe { ptr.write(value) }
}

/// Copies `s` and a NUL into the caller's `buf` of `cap` bytes, and its length (without the
/// NUL) into `len_out` if not NULL. `BufferTooSmall` (nothing written) if it does not fit.
///
/// # Safety
/// Unless NULL, `buf` is writable for `cap` bytes and `len_out` for one `usize`.
pub(crate) unsafe fn write_string(
    s: &str,
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
) -> FfiResult {
    let buf = out_ptr(buf, "buf")?;
    if s.len() + 1 > cap {
        return Err(Failure::new(
            mirror_result::BufferTooSmall,
            format!("{} bytes are needed, the buffer has {cap}", s.len() + 1),
        ));
    }
    // SAFETY: `buf` is non-NULL and writable for `cap` > `s.len()` bytes; the regions cannot
    // overlap since `s` is the library's own string.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), s.len());
        buf.add(s.len()).write(0);
    }
    if !len_out.is_null() {
        // SAFETY: non-NULL, and the caller promises it is writable.
        unsafe { write_out(len_out, s.len()) };
    }
    Ok(())
}

/// A C enum value: an `u32` checked against the known values, since an unknown value must
/// be refused rather than trusted.
pub(crate) trait CEnum: Sized + Copy + 'static {
    /// The C type name, for messages.
    const NAME: &'static str;
    /// Every value.
    const ALL: &'static [Self];
    /// Its numeric value.
    fn value(self) -> u32;

    /// The variant whose value is `v`, or `InvalidArgument`.
    fn from_c(v: u32) -> FfiResult<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|x| x.value() == v)
            .ok_or_else(|| Failure::invalid(format!("{v} is not a valid {}", Self::NAME)))
    }
}

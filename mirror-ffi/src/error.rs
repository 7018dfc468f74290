//! Result codes, the per-thread last error, and the panic boundary.
//!
//! Every exported function runs its body inside [`guard`] (or [`guard_or`] for the few that
//! return something other than a [`mirror_result`]), so no panic ever unwinds into C: it is
//! caught and returned as [`mirror_result::Panic`]. Engine errors are mapped to result codes
//! in exactly one place, [`result_of_kind`].

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use mirror_core::{Error, ErrorKind};

/// The result of every fallible `mirror_*` function.
///
/// Values are part of the ABI: they are explicit, never change meaning and are never reused.
/// Codes 1 to 99 mirror the engine's error kinds; codes from 100 are raised by the C binding
/// itself. New codes may be added, so treat an unknown code as a generic failure.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum mirror_result {
    /// Success.
    Ok = 0,
    /// A bad argument: offset, length, alignment, range, configuration value or enum value.
    InvalidArgument = 1,
    /// An I/O error on a local volume; `mirror_last_error_errno()` gives the OS error.
    Io = 2,
    /// The link to the peer could not be set up, was lost or timed out.
    Link = 3,
    /// The peer broke the protocol.
    Protocol = 4,
    /// The two volumes (size, block size, identity) or the two peers' versions do not match,
    /// or their generation histories diverged (split brain); nothing was written.
    Mismatch = 5,
    /// The peer failed to prove the shared secret, or asked for one this side lacks.
    Auth = 6,
    /// The handle was closed by `mirror_primary_close` or `mirror_secondary_close`.
    Closed = 7,
    /// The job was cancelled by `mirror_primary_cancel`.
    Cancelled = 8,
    /// An I/O error on the secondary's volume (a full disk, a failed write or flush), as the
    /// secondary reported it; `mirror_last_error_errno()` gives the secondary's OS error and
    /// the message names its volume. Not a link failure.
    RemoteIo = 9,
    /// The secondary is held by another primary session whose link is alive; that session
    /// was not disturbed.
    Busy = 10,
    /// A required pointer argument was NULL.
    NullParameter = 100,
    /// A bug inside the library: a panic was caught at the boundary. The handle involved may
    /// be left in any state but is still safe to close and free.
    Panic = 101,
    /// A caller's buffer is too small for the answer; nothing was written to it.
    BufferTooSmall = 102,
    /// A string argument is not valid UTF-8.
    InvalidUtf8 = 103,
    /// An engine error of a kind this version of the binding does not know.
    Unknown = 199,
}

/// Every code, for tests and `mirror_result_name` (not public: cbindgen would export it).
const ALL_RESULTS: [mirror_result; 16] = [
    mirror_result::Ok,
    mirror_result::InvalidArgument,
    mirror_result::Io,
    mirror_result::Link,
    mirror_result::Protocol,
    mirror_result::Mismatch,
    mirror_result::Auth,
    mirror_result::Closed,
    mirror_result::Cancelled,
    mirror_result::RemoteIo,
    mirror_result::Busy,
    mirror_result::NullParameter,
    mirror_result::Panic,
    mirror_result::BufferTooSmall,
    mirror_result::InvalidUtf8,
    mirror_result::Unknown,
];

impl mirror_result {
    /// The code's C name, NUL-terminated.
    pub(crate) fn c_name(self) -> &'static CStr {
        match self {
            mirror_result::Ok => c"MIRROR_RESULT_OK",
            mirror_result::InvalidArgument => c"MIRROR_RESULT_INVALID_ARGUMENT",
            mirror_result::Io => c"MIRROR_RESULT_IO",
            mirror_result::Link => c"MIRROR_RESULT_LINK",
            mirror_result::Protocol => c"MIRROR_RESULT_PROTOCOL",
            mirror_result::Mismatch => c"MIRROR_RESULT_MISMATCH",
            mirror_result::Auth => c"MIRROR_RESULT_AUTH",
            mirror_result::Closed => c"MIRROR_RESULT_CLOSED",
            mirror_result::Cancelled => c"MIRROR_RESULT_CANCELLED",
            mirror_result::RemoteIo => c"MIRROR_RESULT_REMOTE_IO",
            mirror_result::Busy => c"MIRROR_RESULT_BUSY",
            mirror_result::NullParameter => c"MIRROR_RESULT_NULL_PARAMETER",
            mirror_result::Panic => c"MIRROR_RESULT_PANIC",
            mirror_result::BufferTooSmall => c"MIRROR_RESULT_BUFFER_TOO_SMALL",
            mirror_result::InvalidUtf8 => c"MIRROR_RESULT_INVALID_UTF8",
            mirror_result::Unknown => c"MIRROR_RESULT_UNKNOWN",
        }
    }
}

/// The one mapping from engine error kinds to result codes.
pub(crate) fn result_of_kind(kind: ErrorKind) -> mirror_result {
    match kind {
        ErrorKind::InvalidArgument => mirror_result::InvalidArgument,
        ErrorKind::Io => mirror_result::Io,
        ErrorKind::Link => mirror_result::Link,
        ErrorKind::Protocol => mirror_result::Protocol,
        ErrorKind::Mismatch => mirror_result::Mismatch,
        ErrorKind::Auth => mirror_result::Auth,
        ErrorKind::Closed => mirror_result::Closed,
        ErrorKind::Cancelled => mirror_result::Cancelled,
        ErrorKind::RemoteIo => mirror_result::RemoteIo,
        ErrorKind::Busy => mirror_result::Busy,
        _ => mirror_result::Unknown,
    }
}

/// A failed call: its code, the message the caller can read, the OS error if any.
#[derive(Debug)]
pub(crate) struct Failure {
    code: mirror_result,
    message: String,
    errno: i32,
}

impl Failure {
    pub(crate) fn new(code: mirror_result, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            errno: 0,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Failure::new(mirror_result::InvalidArgument, message)
    }

    pub(crate) fn null(name: &str) -> Self {
        Failure::new(
            mirror_result::NullParameter,
            format!("{name} must not be NULL"),
        )
    }

    pub(crate) fn closed(what: &str) -> Self {
        Failure::new(mirror_result::Closed, format!("{what} is closed"))
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure {
            code: result_of_kind(e.kind()),
            errno: e.errno().unwrap_or(0),
            message: e.to_string(),
        }
    }
}

/// What a fallible body returns.
pub(crate) type FfiResult<T = ()> = Result<T, Failure>;

struct LastError {
    message: CString,
    errno: i32,
}

thread_local! {
    static LAST_ERROR: RefCell<LastError> = RefCell::new(LastError {
        message: CString::default(),
        errno: 0,
    });
}

fn set_last_error(message: &str, errno: i32) {
    // A message with an interior NUL is cut there rather than lost.
    let bytes = message.as_bytes();
    let cut = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let message = CString::new(&bytes[..cut]).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = LastError { message, errno });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_owned()
    }
}

/// Runs an exported function's body: catches panics, records the last error, returns the code.
pub(crate) fn guard(body: impl FnOnce() -> FfiResult) -> mirror_result {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => mirror_result::Ok,
        Ok(Err(f)) => {
            set_last_error(&f.message, f.errno);
            f.code
        }
        Err(payload) => {
            set_last_error(
                &format!("internal error (panic): {}", panic_message(&*payload)),
                0,
            );
            mirror_result::Panic
        }
    }
}

/// Runs the body of an exported function that cannot report an error; `fallback` on panic.
pub(crate) fn guard_or<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(payload) => {
            set_last_error(
                &format!("internal error (panic): {}", panic_message(&*payload)),
                0,
            );
            fallback
        }
    }
}

/// Describes the most recent failed `mirror_*` call made on the calling thread.
///
/// Returns a NUL-terminated UTF-8 message naming what failed and its context (path, offset,
/// peer); an empty string if no call has failed on this thread yet. Successful calls leave it
/// unchanged.
///
/// Ownership: the string belongs to the library. It stays valid until the next `mirror_*`
/// call on the same thread; copy it to keep it.
///
/// Thread safety: each thread has its own last error; safe to call from any thread.
#[no_mangle]
pub extern "C" fn mirror_last_error_message() -> *const c_char {
    guard_or(c"".as_ptr(), || {
        LAST_ERROR
            .try_with(|e| e.borrow().message.as_ptr())
            .unwrap_or(c"".as_ptr())
    })
}

/// The OS error number (`errno`) behind the most recent failed call on the calling thread,
/// when it failed with `MIRROR_RESULT_IO`; 0 otherwise.
///
/// Thread safety: per thread, like `mirror_last_error_message`.
#[no_mangle]
pub extern "C" fn mirror_last_error_errno() -> i32 {
    guard_or(0, || LAST_ERROR.try_with(|e| e.borrow().errno).unwrap_or(0))
}

/// The C name of a result code, such as `"MIRROR_RESULT_IO"`; `"MIRROR_RESULT_UNKNOWN"` for a
/// value this version does not define.
///
/// Ownership: a static string; never free it. Thread safety: safe from any thread.
#[no_mangle]
pub extern "C" fn mirror_result_name(result: u32) -> *const c_char {
    guard_or(c"MIRROR_RESULT_UNKNOWN".as_ptr(), || {
        ALL_RESULTS
            .into_iter()
            .find(|r| *r as u32 == result)
            .unwrap_or(mirror_result::Unknown)
            .c_name()
            .as_ptr()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_message() -> String {
        // SAFETY: the pointer is a NUL-terminated string owned by this thread's slot, read
        // before any other call on this thread.
        unsafe { CStr::from_ptr(mirror_last_error_message()) }
            .to_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn a_panic_is_caught_and_returned_as_a_code() {
        let r = guard(|| panic!("boom at block 7"));
        assert_eq!(r, mirror_result::Panic);
        assert!(
            last_message().contains("boom at block 7"),
            "{}",
            last_message()
        );
        assert_eq!(guard_or(42, || panic!("again")), 42);
    }

    #[test]
    fn engine_errors_keep_their_kind_message_and_errno() {
        let r = guard(|| {
            mirror_core::config::read_secret_file("/nonexistent/mirror-secret")?;
            Ok(())
        });
        assert_eq!(r, mirror_result::Io);
        assert!(last_message().contains("/nonexistent/mirror-secret"));
        assert_eq!(mirror_last_error_errno(), libc_enoent());
    }

    fn libc_enoent() -> i32 {
        std::io::Error::from(std::io::ErrorKind::NotFound)
            .raw_os_error()
            .unwrap_or(2)
    }

    #[test]
    fn result_codes_are_stable() {
        let want: [(mirror_result, u32); 16] = [
            (mirror_result::Ok, 0),
            (mirror_result::InvalidArgument, 1),
            (mirror_result::Io, 2),
            (mirror_result::Link, 3),
            (mirror_result::Protocol, 4),
            (mirror_result::Mismatch, 5),
            (mirror_result::Auth, 6),
            (mirror_result::Closed, 7),
            (mirror_result::Cancelled, 8),
            (mirror_result::RemoteIo, 9),
            (mirror_result::Busy, 10),
            (mirror_result::NullParameter, 100),
            (mirror_result::Panic, 101),
            (mirror_result::BufferTooSmall, 102),
            (mirror_result::InvalidUtf8, 103),
            (mirror_result::Unknown, 199),
        ];
        assert_eq!(want.len(), ALL_RESULTS.len());
        for (r, v) in want {
            assert_eq!(r as u32, v, "{r:?}");
            // SAFETY: mirror_result_name returns a static NUL-terminated string.
            let name = unsafe { CStr::from_ptr(mirror_result_name(v)) };
            assert_eq!(name, r.c_name());
        }
        // SAFETY: as above.
        let unknown = unsafe { CStr::from_ptr(mirror_result_name(4242)) };
        assert_eq!(unknown, c"MIRROR_RESULT_UNKNOWN");
    }
}

//! How a secondary tells a failure to its primary, and what it forgets after one.
//!
//! Invariant: after a write or flush of this volume failed, the coherence record is forgotten
//! before anything is told to the primary, so the next session compares every block — what was
//! written since the last successful flush may be gone, and a resync from the primary's dirty
//! map alone would never send it again; and the volume is marked inconsistent, durably where
//! the record is on disk.

use tracing::warn;

use super::Inner;
use crate::protocol::link;
use crate::protocol::messages::{io_op, Message};
use crate::Error;

/// `EIO`, for an I/O error that carries no OS error number.
const EIO: i32 = 5;

/// The message that tells the primary why this session ends: the volume's own I/O error as an
/// `IoError` (errno, operation, offset, volume), anything else as an `Error`.
pub(super) fn error_message(e: &Error) -> Message {
    match e {
        Error::Io {
            path, op, offset, ..
        } => Message::IoError {
            errno: e.errno().unwrap_or(EIO) as u32,
            offset: *offset,
            op: io_op::code(op),
            volume: path.clone(),
        },
        _ => Message::Error {
            code: link::error_code(e),
            message: e.to_string(),
        },
    }
}

/// Forgets the coherence record after an I/O error of the volume; other errors leave it.
pub(super) fn forget_coherence_after(inner: &Inner, e: &Error) {
    if let Error::Io { .. } = e {
        if let Err(m) = inner.meta.forget_coherence() {
            warn!(volume = inner.volume.name(), error = %m, "could not record the lost coherence on disk; this process forgets it");
        }
        warn!(volume = inner.volume.name(), error = %e, "volume I/O failed: the next session compares every block");
    }
}

//! The one error type of the engine.
//!
//! Every error carries a stable [`ErrorKind`] (what adapters map to C result codes, Python
//! exception classes and CLI exit codes) and a message with its context: the path, the offset,
//! the peer. Adapters never parse messages; they match on the kind.

use std::io;

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] is. Stable: adapters map it one to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A caller passed a bad argument: offset, length, alignment, configuration value.
    InvalidArgument,
    /// An I/O error on a local volume.
    Io,
    /// An I/O error on the secondary's volume (a full disk, a failed flush), reported by the
    /// secondary: not a link failure.
    RemoteIo,
    /// The link to the peer could not be set up, was lost or timed out.
    Link,
    /// The peer sent something that breaks the protocol.
    Protocol,
    /// The two volumes (or the two peers' versions) do not match.
    Mismatch,
    /// The peer failed to prove the shared secret, or asked for one we do not have.
    Auth,
    /// The object was closed.
    Closed,
    /// The operation was cancelled by its caller.
    Cancelled,
    /// The secondary is held by another primary session whose link is alive.
    Busy,
}

/// An engine error: a kind and a message with context.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// See [`ErrorKind::InvalidArgument`].
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// See [`ErrorKind::Io`].
    #[error("{path}: {op} failed at offset {offset}: {source}")]
    Io {
        /// The volume's name (its path for files).
        path: String,
        /// What was being done: "read", "write", "flush", "open".
        op: &'static str,
        /// Byte offset of the failed operation.
        offset: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// See [`ErrorKind::RemoteIo`].
    #[error("secondary {peer}: {volume}: {op} failed at offset {offset}: {}", io::Error::from_raw_os_error(*errno))]
    RemoteIo {
        /// Address of the secondary.
        peer: String,
        /// The secondary's volume (its path for files).
        volume: String,
        /// What failed: "write", "flush", "read".
        op: &'static str,
        /// Byte offset of the failed operation.
        offset: u64,
        /// The secondary's OS error number.
        errno: i32,
    },
    /// See [`ErrorKind::Link`].
    #[error("link to {peer}: {msg}")]
    Link {
        /// Address of the peer.
        peer: String,
        /// What went wrong.
        msg: String,
    },
    /// See [`ErrorKind::Protocol`].
    #[error("protocol error with {peer}: {msg}")]
    Protocol {
        /// Address of the peer.
        peer: String,
        /// What went wrong.
        msg: String,
    },
    /// See [`ErrorKind::Mismatch`].
    #[error("{0}")]
    Mismatch(String),
    /// See [`ErrorKind::Auth`].
    #[error("authentication with {peer} failed: {msg}")]
    Auth {
        /// Address of the peer.
        peer: String,
        /// What went wrong.
        msg: String,
    },
    /// See [`ErrorKind::Closed`].
    #[error("{0} is closed")]
    Closed(&'static str),
    /// See [`ErrorKind::Cancelled`].
    #[error("{0} was cancelled")]
    Cancelled(&'static str),
    /// See [`ErrorKind::Busy`].
    #[error("{0}")]
    Busy(String),
}

impl Clone for Error {
    fn clone(&self) -> Self {
        match self {
            Error::InvalidArgument(m) => Error::InvalidArgument(m.clone()),
            Error::Io {
                path,
                op,
                offset,
                source,
            } => Error::Io {
                path: path.clone(),
                op,
                offset: *offset,
                source: match source.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(source.kind(), source.to_string()),
                },
            },
            Error::RemoteIo {
                peer,
                volume,
                op,
                offset,
                errno,
            } => Error::RemoteIo {
                peer: peer.clone(),
                volume: volume.clone(),
                op,
                offset: *offset,
                errno: *errno,
            },
            Error::Link { peer, msg } => Error::Link {
                peer: peer.clone(),
                msg: msg.clone(),
            },
            Error::Protocol { peer, msg } => Error::Protocol {
                peer: peer.clone(),
                msg: msg.clone(),
            },
            Error::Mismatch(m) => Error::Mismatch(m.clone()),
            Error::Auth { peer, msg } => Error::Auth {
                peer: peer.clone(),
                msg: msg.clone(),
            },
            Error::Closed(w) => Error::Closed(w),
            Error::Cancelled(w) => Error::Cancelled(w),
            Error::Busy(m) => Error::Busy(m.clone()),
        }
    }
}

impl Error {
    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::Io { .. } => ErrorKind::Io,
            Error::RemoteIo { .. } => ErrorKind::RemoteIo,
            Error::Link { .. } => ErrorKind::Link,
            Error::Protocol { .. } => ErrorKind::Protocol,
            Error::Mismatch(_) => ErrorKind::Mismatch,
            Error::Auth { .. } => ErrorKind::Auth,
            Error::Closed(_) => ErrorKind::Closed,
            Error::Cancelled(_) => ErrorKind::Cancelled,
            Error::Busy(_) => ErrorKind::Busy,
        }
    }

    /// The OS error behind an I/O error, if any (for `errno` in C, `OSError` in Python).
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The OS error number of a local or remote I/O error.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            Error::RemoteIo { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    pub(crate) fn io(path: &str, op: &'static str, offset: u64, source: io::Error) -> Self {
        Error::Io {
            path: path.to_owned(),
            op,
            offset,
            source,
        }
    }

    pub(crate) fn link(peer: impl std::fmt::Display, msg: impl Into<String>) -> Self {
        Error::Link {
            peer: peer.to_string(),
            msg: msg.into(),
        }
    }

    pub(crate) fn protocol(peer: impl std::fmt::Display, msg: impl Into<String>) -> Self {
        Error::Protocol {
            peer: peer.to_string(),
            msg: msg.into(),
        }
    }

    pub(crate) fn auth(peer: impl std::fmt::Display, msg: impl Into<String>) -> Self {
        Error::Auth {
            peer: peer.to_string(),
            msg: msg.into(),
        }
    }
}

//! The one place where engine errors become Python exceptions.
//!
//! The classes themselves are plain Python (`mirror/_errors.py`, so they can carry methods and
//! inherit from both `MirrorError` and a built-in exception); this module decides, from the
//! error's stable [`ErrorKind`] alone, which one is raised. The message is always the engine's
//! `Display` text, the same line the `mirror` command prints.

use mirror_core::{Error, ErrorKind};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

static ERRORS_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// The Python class name for an error kind.
fn class_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidArgument => "ConfigError",
        ErrorKind::Mismatch => "MismatchError",
        ErrorKind::Busy => "BusyError",
        ErrorKind::Link => "LinkError",
        ErrorKind::Protocol => "ProtocolError",
        ErrorKind::Auth => "AuthError",
        ErrorKind::Closed => "ClosedError",
        ErrorKind::Io => "MirrorIOError",
        ErrorKind::RemoteIo => "RemoteIOError",
        // Cancellation only comes from this module's own cancel flag, which is raised as the
        // interrupting exception (KeyboardInterrupt) instead; anything else is the root class.
        _ => "MirrorError",
    }
}

/// Builds the Python exception for `err`.
pub(crate) fn to_py(err: Error) -> PyErr {
    Python::attach(|py| match build(py, &err) {
        Ok(e) => e,
        // Only reachable if the package is broken (mirror._errors missing): say so, with the
        // original message.
        Err(import_err) => import_err,
    })
}

fn build(py: Python<'_>, err: &Error) -> PyResult<PyErr> {
    let module = ERRORS_MODULE.get_or_try_init(py, || -> PyResult<Py<PyModule>> {
        Ok(py.import("mirror._errors")?.unbind())
    })?;
    let make = module.bind(py).getattr("_make")?;
    let errno = err.errno();
    let filename = match err {
        Error::Io { path, .. } => Some(path.as_str()),
        Error::RemoteIo { volume, .. } => Some(volume.as_str()),
        _ => None,
    };
    let exc = make.call1((class_name(err.kind()), err.to_string(), errno, filename))?;
    Ok(PyErr::from_value(exc))
}

/// `Result<T, mirror_core::Error>` to `PyResult<T>`.
pub(crate) trait IntoPyResult<T> {
    /// Maps the error through [`to_py`].
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for mirror_core::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

/// A bad argument, raised as the engine would raise it (`ConfigError`, a `ValueError`).
pub(crate) fn invalid(msg: impl Into<String>) -> PyErr {
    to_py(Error::InvalidArgument(msg.into()))
}

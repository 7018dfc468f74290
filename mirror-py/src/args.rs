//! Checking what Python callers pass, before any of it reaches the engine.
//!
//! Names (algorithm, mode, io, compare) are parsed by the engine's own `FromStr`, so a bad one
//! raises the engine's message. Integers that must not be negative raise `ConfigError` (a
//! `ValueError`) saying so; integers past 2**64 raise `OverflowError`; a wrong type raises
//! `TypeError` (pyo3's conversions).

use std::str::FromStr;
use std::time::Duration;

use mirror_core::BlockSize;
use pyo3::prelude::*;

use crate::errors::{invalid, IntoPyResult};

/// A non-negative integer argument.
pub(crate) fn unsigned(name: &str, value: i128) -> PyResult<u64> {
    if value < 0 {
        return Err(invalid(format!(
            "{name} must not be negative (got {value})"
        )));
    }
    u64::try_from(value).map_err(|_| {
        pyo3::exceptions::PyOverflowError::new_err(format!(
            "{name} {value} does not fit in 64 bits"
        ))
    })
}

/// A name the engine parses (`"md5"`, `"async"`, `"uring"`…).
pub(crate) fn named<T: FromStr<Err = mirror_core::Error>>(value: &str) -> PyResult<T> {
    value.parse::<T>().py()
}

/// A block size in bytes.
pub(crate) fn block_size(value: i128) -> PyResult<BlockSize> {
    BlockSize::new(unsigned("block_size", value)?).py()
}

/// A positive, finite number of seconds.
pub(crate) fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    if !(value.is_finite() && value > 0.0) {
        return Err(invalid(format!(
            "{name} must be a positive number of seconds (got {value})"
        )));
    }
    Duration::try_from_secs_f64(value)
        .map_err(|_| invalid(format!("{name} of {value} seconds is too long")))
}

/// Mutual TLS from `tls_cert`, `tls_key` and `tls_trust` (PEM files, read now): all three or
/// none.
pub fn tls(
    py: Python<'_>,
    cert: Option<std::path::PathBuf>,
    key: Option<std::path::PathBuf>,
    trust: Option<std::path::PathBuf>,
) -> PyResult<Option<mirror_core::tls::TlsConfig>> {
    match (cert, key, trust) {
        (None, None, None) => Ok(None),
        (Some(c), Some(k), Some(t)) => py
            .detach(|| mirror_core::tls::TlsConfig::from_files(c, k, t))
            .py()
            .map(Some),
        _ => Err(invalid("tls_cert, tls_key and tls_trust go together")),
    }
}

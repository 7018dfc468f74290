//! `mirror.Secondary`: the secondary side, serving a local volume to a primary.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use mirror_core::config::read_secret_file;
use mirror_core::SecondaryConfig;
use mirror_uring::IoBackend;
use pyo3::prelude::*;

use crate::args::{named, seconds, unsigned};
use crate::blocking::detached;
use crate::errors::{to_py, IntoPyResult};
use crate::primary::periodic_scan;
use crate::types::SecondaryStatus;
use crate::volume;

/// The secondary side of a mirrored pair: listens on ``listen`` (``"host:port"``; port 0
/// picks a free one, see :attr:`address`) and applies what a primary sends to the file or
/// block device ``volume``, in order, in background threads.
///
/// ``create`` (bytes) makes a sparse file of that size when ``volume`` does not exist.
/// ``secret_file`` holds a shared secret the primary must prove. ``tls_cert``, ``tls_key`` and
/// ``tls_trust`` (PEM files) make the link mutual TLS 1.3. A non-loopback ``listen`` address
/// without TLS is refused unless ``allow_insecure`` is true. Use it as a
/// context manager, or call :meth:`close`.
///
/// The secondary can lead checksum scans of its own: ``scan_on_connect`` scans as soon as a
/// primary's session is established, ``interval`` (seconds) repeats it at low priority, read
/// at ``rate`` MiB/s (default 64). ``compare`` is the side that compares (``"secondary"``:
/// it asks for the primary's digests and requests what differs; ``"primary"``: it streams its
/// digests) and ``algorithm`` the digest. :meth:`status` reports the last such scan.
#[pyclass(frozen, module = "mirror")]
#[derive(Debug)]
pub struct Secondary {
    inner: mirror_core::Secondary,
    address: String,
    closed: AtomicBool,
}

#[pymethods]
impl Secondary {
    #[new]
    #[pyo3(signature = (
        volume,
        listen = "127.0.0.1:0",
        *,
        secret_file = None,
        block_size = 4096,
        io = "uring",
        create = None,
        allow_insecure = false,
        link_timeout = 5.0,
        meta = None,
        scan_on_connect = false,
        interval = None,
        rate = None,
        compare = "secondary",
        algorithm = None,
        tls_cert = None,
        tls_key = None,
        tls_trust = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        volume: PathBuf,
        listen: &str,
        secret_file: Option<PathBuf>,
        block_size: i128,
        io: &str,
        create: Option<i128>,
        allow_insecure: bool,
        link_timeout: f64,
        meta: Option<PathBuf>,
        scan_on_connect: bool,
        interval: Option<f64>,
        rate: Option<f64>,
        compare: &str,
        algorithm: Option<&str>,
        tls_cert: Option<PathBuf>,
        tls_key: Option<PathBuf>,
        tls_trust: Option<PathBuf>,
    ) -> PyResult<Self> {
        let bs = crate::args::block_size(block_size)?;
        let io: IoBackend = named(io)?;
        let create = create.map(|c| unsigned("create", c)).transpose()?;
        let mut config = SecondaryConfig::new(listen);
        config.meta = Some(meta.unwrap_or_else(|| mirror_core::meta::default_meta_path(&volume)));
        config.allow_insecure = allow_insecure;
        config.link_timeout = seconds("link_timeout", link_timeout)?;
        config.scan_on_connect = scan_on_connect;
        config.periodic = periodic_scan(interval, rate)?;
        config.compare = named(compare)?;
        if let Some(a) = algorithm {
            config.algorithm = named(a)?;
        }
        if let Some(path) = &secret_file {
            config.secret = Some(py.detach(|| read_secret_file(path)).py()?);
        }
        config.tls = crate::args::tls(py, tls_cert, tls_key, tls_trust)?;
        let (inner, addr) = detached(py, move || {
            if let Some(size) = create {
                volume::create_if_missing(&volume, size)?;
            }
            let vol = volume::open(&volume, bs, io, false)?;
            let inner = mirror_core::Secondary::new(vol, config)?;
            let addr = inner.serve()?;
            Ok((inner, addr))
        })?;
        Ok(Secondary {
            inner,
            address: addr.to_string(),
            closed: AtomicBool::new(false),
        })
    }

    /// The address it listens on, ``"host:port"``, ready to pass as a primary's ``peer``.
    #[getter]
    fn address(&self) -> &str {
        &self.address
    }

    /// True once :meth:`close` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// A snapshot of the secondary's state.
    fn status(&self, py: Python<'_>) -> PyResult<SecondaryStatus> {
        if self.closed() {
            return Err(to_py(mirror_core::Error::Closed("secondary")));
        }
        let s = py.detach(|| self.inner.status());
        Ok(SecondaryStatus::from(&s))
    }

    /// Stops listening and ends the current connection. Closing twice is allowed.
    fn close(&self, py: Python<'_>) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            py.detach(|| self.inner.stop());
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc_info))]
    fn __exit__(&self, py: Python<'_>, _exc_info: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "<mirror.Secondary {}{}>",
            self.address,
            if self.closed() { " closed" } else { "" }
        )
    }
}

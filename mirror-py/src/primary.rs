//! `mirror.Primary`: the primary side, over a local volume, replicating to a secondary.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mirror_core::config::read_secret_file;
use mirror_core::{
    Algorithm, CompareSide, JobOptions, OnDisconnect, PeriodicScan, PrimaryConfig, Progress,
    ReplicationMode, Volume, WriteOutcome,
};
use mirror_uring::IoBackend;
use pyo3::prelude::*;

use crate::args::{named, seconds, unsigned};
use crate::blocking::{detached, interruptible_wait, interruptible_with, ProgressHook};
use crate::buffer::BufferView;
use crate::errors::{invalid, to_py, IntoPyResult};
use crate::types::{Report, ScanMap, Status};
use crate::volume;

/// Periodic scan rate when only an interval is given, MiB/s.
pub(crate) const DEFAULT_RATE_MIB_S: f64 = 64.0;

/// The primary side of a mirrored pair.
///
/// Opens the file or block device ``volume`` and keeps the secondary at ``peer``
/// (``"host:port"``) coherent with it: it connects in the background, reconnects by itself,
/// tracks what the secondary lacks in a dirty map of ``region_size``-byte regions while the
/// link is down, and resyncs on every reconnection (from the dirty map when it is valid, by a
/// full checksum scan otherwise).
///
/// ``algorithm`` is the digest of checksum scans: ``"crc32"``, ``"md5"`` or ``"sha1"``
/// (default: the engine's, ``"sha1"``). ``mode`` is ``"sync"`` (a write returns once the secondary has it) or ``"async"`` (a write
/// returns once queued; a full queue marks the dirty map). ``compare`` says which side
/// compares digests during a scan. ``interval`` (seconds) turns on the periodic low-priority
/// scan, read at ``rate`` MiB/s (default 64). ``secret_file`` holds a shared secret both
/// peers must prove. ``io`` picks the volume backend: ``"uring"`` (falling back to
/// ``"sync"`` where io_uring is not available) or ``"sync"``. ``durability`` says when the
/// secondary acknowledges: ``"flushed"`` (default: on its stable storage), ``"written"`` or
/// ``"received"``. ``on_disconnect`` says what a sync-mode write does with the link down:
/// ``"degrade"`` (default: return ``"degraded"``), ``"fail"`` (raise ``LinkError``) or
/// ``"suspend"`` (wait up to ``suspend_timeout`` seconds for the link, then raise).
/// ``resync_yield`` (default true) makes resyncs and verifies yield to replicated writes:
/// while they arrive the job reads at ``resync_min_rate`` MiB/s (default 4), and speeds up
/// again once they stop, never past ``resync_max_rate`` MiB/s (default: no limit).
///
/// Every method releases the GIL while it waits; long jobs (``scan``, ``resync``, ``verify``,
/// ``wait_connected``) can be interrupted with Ctrl-C. Use it as a context manager, or call
/// :meth:`close`.
#[pyclass(frozen, module = "mirror")]
#[derive(Debug)]
pub struct Primary {
    inner: Arc<mirror_core::Primary>,
    volume: Arc<dyn Volume>,
    peer: String,
    algorithm: Algorithm,
    mode: ReplicationMode,
    compare: CompareSide,
    closed: AtomicBool,
}

fn outcome_name(o: WriteOutcome) -> &'static str {
    match o {
        WriteOutcome::Replicated => "replicated",
        WriteOutcome::Queued => "queued",
        WriteOutcome::Degraded => "degraded",
    }
}

impl Primary {
    fn check_open(&self) -> PyResult<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(to_py(mirror_core::Error::Closed("primary")))
        } else {
            Ok(())
        }
    }

    /// Runs a resync or a verify, interruptible, reporting progress to `progress`.
    fn run_job(
        &self,
        py: Python<'_>,
        verify: bool,
        full: bool,
        timeout: Option<Duration>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Report> {
        self.check_open()?;
        let hook = ProgressHook::new(progress);
        let result = interruptible_with(py, hook.cancel(), || {
            let report = |p: Progress| hook.report(p.done, p.total);
            let opts = JobOptions {
                full,
                progress: hook
                    .is_set()
                    .then_some(&report as &(dyn Fn(Progress) + Sync)),
                cancel: Some(hook.cancel()),
                connect_timeout: timeout,
            };
            if verify {
                self.inner.verify_with(&opts)
            } else {
                self.inner.resync_with(&opts)
            }
        });
        hook.finish(py, result).map(|r| Report::from(&r))
    }
}

#[pymethods]
impl Primary {
    #[new]
    #[pyo3(signature = (
        volume,
        *,
        peer,
        algorithm = None,
        block_size = 4096,
        region_size = None,
        mode = "sync",
        io = "uring",
        secret_file = None,
        interval = None,
        rate = None,
        compare = "primary",
        link_timeout = 5.0,
        queue_depth = 1024,
        auto_resync = true,
        durability = "flushed",
        on_disconnect = "degrade",
        suspend_timeout = 30.0,
        meta = None,
        adopt = false,
        discard_secondary = false,
        write_intent = false,
        tls_cert = None,
        tls_key = None,
        tls_trust = None,
        allow_insecure = false,
        resync_yield = true,
        resync_min_rate = 4.0,
        resync_max_rate = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        volume: PathBuf,
        peer: String,
        algorithm: Option<&str>,
        block_size: i128,
        region_size: Option<i128>,
        mode: &str,
        io: &str,
        secret_file: Option<PathBuf>,
        interval: Option<f64>,
        rate: Option<f64>,
        compare: &str,
        link_timeout: f64,
        queue_depth: i128,
        auto_resync: bool,
        durability: &str,
        on_disconnect: &str,
        suspend_timeout: f64,
        meta: Option<PathBuf>,
        adopt: bool,
        discard_secondary: bool,
        write_intent: bool,
        tls_cert: Option<PathBuf>,
        tls_key: Option<PathBuf>,
        tls_trust: Option<PathBuf>,
        allow_insecure: bool,
        resync_yield: bool,
        resync_min_rate: f64,
        resync_max_rate: Option<f64>,
    ) -> PyResult<Self> {
        let mut config = PrimaryConfig::new(peer.clone());
        config.resync_yield = resync_yield;
        config.resync_min_rate = resync_min_rate;
        config.resync_max_rate = resync_max_rate;
        config.meta = Some(meta.unwrap_or_else(|| mirror_core::meta::default_meta_path(&volume)));
        config.adopt = adopt;
        config.discard_secondary = discard_secondary;
        config.write_intent = write_intent;
        if let Some(a) = algorithm {
            config.algorithm = named(a)?;
        }
        config.mode = named(mode)?;
        config.compare = named(compare)?;
        let io: IoBackend = named(io)?;
        let bs = crate::args::block_size(block_size)?;
        if let Some(r) = region_size {
            config.region_size = unsigned("region_size", r)?;
        }
        config.link_timeout = seconds("link_timeout", link_timeout)?;
        config.queue_depth = usize::try_from(unsigned("queue_depth", queue_depth)?)
            .map_err(|_| invalid("queue_depth is too large"))?;
        config.auto_resync = auto_resync;
        config.durability = named(durability)?;
        config.on_disconnect =
            OnDisconnect::parse(on_disconnect, seconds("suspend_timeout", suspend_timeout)?)
                .py()?;
        config.periodic = periodic_scan(interval, rate)?;
        if let Some(path) = &secret_file {
            config.secret = Some(py.detach(|| read_secret_file(path)).py()?);
        }
        config.tls = crate::args::tls(py, tls_cert, tls_key, tls_trust)?;
        config.allow_insecure = allow_insecure;
        config.validate().py()?;
        let (algorithm, mode, compare) = (config.algorithm, config.mode, config.compare);
        let (inner, vol) = detached(py, move || {
            let vol = volume::open(&volume, bs, io, false)?;
            let inner = Arc::new(mirror_core::Primary::open(Arc::clone(&vol), config)?);
            Ok((inner, vol))
        })?;
        Ok(Primary {
            inner,
            volume: vol,
            peer,
            algorithm,
            mode,
            compare,
            closed: AtomicBool::new(false),
        })
    }

    /// Writes ``data`` (any contiguous buffer) at byte ``offset`` of the local volume, then
    /// replicates it. Returns ``"replicated"`` (sync mode: the secondary has it),
    /// ``"queued"`` (async mode) or ``"degraded"`` (no link: the range is in the dirty map).
    fn write(
        &self,
        py: Python<'_>,
        offset: i128,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<&'static str> {
        let offset = unsigned("offset", offset)?;
        let data = BufferView::get(data)?;
        self.check_open()?;
        let out = detached(py, || self.inner.write(offset, data.as_slice()))?;
        Ok(outcome_name(out))
    }

    /// Sends ``data``, which the caller already wrote locally at byte ``offset``, to the
    /// secondary. Returns as :meth:`write` does.
    fn replicate(
        &self,
        py: Python<'_>,
        offset: i128,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<&'static str> {
        let offset = unsigned("offset", offset)?;
        let data = BufferView::get(data)?;
        self.check_open()?;
        let out = detached(py, || self.inner.replicate(offset, data.as_slice()))?;
        Ok(outcome_name(out))
    }

    /// Makes bytes ``[offset, offset + length)`` zero locally and on the secondary,
    /// replicated in order with writes, the storage kept allocated where the volumes can.
    /// Same rules as :meth:`write` (block-aligned, whole blocks but the volume's last), bounded
    /// only by the volume. Returns as :meth:`write` does.
    fn write_zeroes(&self, py: Python<'_>, offset: i128, length: i128) -> PyResult<&'static str> {
        let offset = unsigned("offset", offset)?;
        let length = unsigned("length", length)?;
        self.check_open()?;
        let out = detached(py, || self.inner.write_zeroes(offset, length))?;
        Ok(outcome_name(out))
    }

    /// Trims bytes ``[offset, offset + length)`` locally and on the secondary: the storage is
    /// released where the volumes can (hole punching, discard) and the range reads as zeros
    /// on both sides afterwards (trim is not advisory: the pair stays byte-equal). Same rules
    /// and results as :meth:`write_zeroes`.
    fn trim(&self, py: Python<'_>, offset: i128, length: i128) -> PyResult<&'static str> {
        let offset = unsigned("offset", offset)?;
        let length = unsigned("length", length)?;
        self.check_open()?;
        let out = detached(py, || self.inner.trim(offset, length))?;
        Ok(outcome_name(out))
    }

    /// Records that bytes ``[offset, offset + length)`` changed and the secondary lacks
    /// them; the next resync sends them.
    fn mark_dirty(&self, py: Python<'_>, offset: i128, length: i128) -> PyResult<()> {
        let offset = unsigned("offset", offset)?;
        let length = unsigned("length", length)?;
        self.check_open()?;
        detached(py, || self.inner.mark_dirty(offset, length))
    }

    /// Flushes the local volume and, when connected, the secondary's.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        self.check_open()?;
        detached(py, || self.inner.flush())
    }

    /// Per-block digests of blocks ``first`` to ``first + count`` (default: to the end) of
    /// the local volume, with ``algorithm`` (default: the primary's). ``progress`` is as for
    /// :meth:`resync`.
    #[pyo3(signature = (algorithm = None, first = 0, count = None, progress = None))]
    fn scan(
        &self,
        py: Python<'_>,
        algorithm: Option<&str>,
        first: i128,
        count: Option<i128>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<ScanMap> {
        let algorithm = match algorithm {
            Some(a) => named(a)?,
            None => self.algorithm,
        };
        let first = unsigned("first", first)?;
        let count = count.map(|c| unsigned("count", c)).transpose()?;
        self.check_open()?;
        let vol = &*self.volume;
        let range = crate::scan::block_range(vol, first, count).py()?;
        crate::scan::scan_interruptible(py, vol, algorithm, range, progress)
    }

    /// Makes the secondary coherent now and reports how: from the dirty map when it is
    /// valid, else by a full checksum scan (``full=True`` forces one). ``timeout`` (seconds)
    /// bounds the wait for the link. ``progress(done, total)`` is called (from another
    /// thread) as blocks are compared; if it raises, the job stops and that is raised.
    #[pyo3(signature = (full = false, timeout = None, progress = None))]
    fn resync(
        &self,
        py: Python<'_>,
        full: bool,
        timeout: Option<f64>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Report> {
        let timeout = timeout.map(|t| seconds("timeout", t)).transpose()?;
        self.run_job(py, false, full, timeout, progress)
    }

    /// Compares every block with the secondary, repairing nothing; the report's
    /// ``mismatched`` and ``mismatched_ranges`` say what differs.
    /// ``timeout`` and ``progress`` are as for :meth:`resync`.
    #[pyo3(signature = (timeout = None, progress = None))]
    fn verify(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Report> {
        let timeout = timeout.map(|t| seconds("timeout", t)).transpose()?;
        self.run_job(py, true, true, timeout, progress)
    }

    /// Waits up to ``timeout`` seconds for the link to be up and handshaken; raises
    /// :class:`LinkError` if it is not (or the handshake's own error: :class:`MismatchError`,
    /// :class:`AuthError`, :class:`ProtocolError`).
    #[pyo3(signature = (timeout = 10.0))]
    fn wait_connected(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let timeout = seconds("timeout", timeout)?;
        self.check_open()?;
        let inner = Arc::clone(&self.inner);
        interruptible_wait(py, move || inner.wait_connected(timeout))
    }

    /// A snapshot of the primary's state.
    fn status(&self, py: Python<'_>) -> PyResult<Status> {
        self.check_open()?;
        let s = py.detach(|| self.inner.status());
        Ok(Status::from(&s))
    }

    /// Stops the primary: waits for queued writes (bounded by the link timeout), then closes
    /// the link. Closing twice is allowed; any other call afterwards raises
    /// :class:`ClosedError`.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        detached(py, || self.inner.close())
    }

    /// True once :meth:`close` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The secondary's address, as given.
    #[getter]
    fn peer(&self) -> &str {
        &self.peer
    }

    /// Digest algorithm of checksum scans.
    #[getter]
    fn algorithm(&self) -> &'static str {
        self.algorithm.name()
    }

    /// Replication mode: ``"sync"`` or ``"async"``.
    #[getter]
    fn mode(&self) -> &'static str {
        self.mode.name()
    }

    /// Which side compares digests: ``"primary"`` or ``"secondary"``.
    #[getter]
    fn compare(&self) -> &'static str {
        self.compare.name()
    }

    /// Bytes per block.
    #[getter]
    fn block_size(&self) -> u32 {
        self.volume.block_size().get()
    }

    /// Size of the local volume in bytes.
    #[getter]
    fn size(&self) -> u64 {
        self.volume.size()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc_info))]
    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_info: &Bound<'_, pyo3::types::PyTuple>,
    ) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "<mirror.Primary {} -> {} ({}, {}){}>",
            self.volume.name(),
            self.peer,
            self.mode.name(),
            self.algorithm.name(),
            if self.closed() { " closed" } else { "" }
        )
    }
}

/// The periodic scan of `interval` seconds at `rate` MiB/s (default 64), or none.
pub(crate) fn periodic_scan(
    interval: Option<f64>,
    rate: Option<f64>,
) -> PyResult<Option<PeriodicScan>> {
    Ok(match (interval, rate) {
        (Some(i), r) => Some(PeriodicScan {
            interval: seconds("interval", i)?,
            rate_mib_s: r.unwrap_or(DEFAULT_RATE_MIB_S),
        }),
        (None, Some(_)) => {
            return Err(invalid(
                "rate limits the periodic scan: give an interval too",
            ))
        }
        (None, None) => None,
    })
}

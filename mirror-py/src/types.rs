//! The value objects handed back to Python: reports, statuses and scan results.
//!
//! Each is a frozen snapshot converted once from the engine's type; a scan result keeps its
//! digests as one `bytes` object and builds per-block objects only when asked.

use mirror_core::report::same_field_names;
use mirror_core::{field_names, Algorithm, BlockSize};
use pyo3::exceptions::{PyIndexError, PyStopIteration};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

/// The result of a resync, a verify or a periodic scan; its fields are those of the
/// ``mirror`` command's ``--json`` report.
#[pyclass(frozen, get_all, module = "mirror")]
#[derive(Debug, Clone)]
pub struct Report {
    /// How the job found what to compare: ``"none"``, ``"dirty-map"``, ``"full-scan"``,
    /// ``"periodic"`` or ``"verify"``.
    mode: String,
    /// Digest algorithm: ``"crc32"``, ``"md5"`` or ``"sha1"``.
    algorithm: String,
    /// Which side compared digests: ``"primary"`` or ``"secondary"``.
    compare: String,
    /// Blocks compared.
    blocks: u64,
    /// Blocks found different.
    mismatched: u64,
    /// Blocks whose contents were sent.
    blocks_sent: u64,
    /// Bytes the primary sent on the link during the job.
    bytes_sent: u64,
    /// Bytes the primary received on the link during the job.
    bytes_received: u64,
    /// Wall time in seconds.
    seconds: f64,
    /// Runs of mismatched blocks as ``(first_block, count)`` pairs (at most 10,000 listed).
    mismatched_ranges: Vec<(u64, u64)>,
}

// The class has every field of the engine's report, by the same name and in the same order
// (`mismatched_ranges` as pairs): checked when this crate is built.
const _: () = assert!(same_field_names(
    field_names!(Report {
        mode,
        algorithm,
        compare,
        blocks,
        mismatched,
        blocks_sent,
        bytes_sent,
        bytes_received,
        seconds,
        mismatched_ranges,
    }),
    mirror_core::Report::FIELDS
));

impl From<&mirror_core::Report> for Report {
    fn from(r: &mirror_core::Report) -> Self {
        Report {
            mode: r.mode.name().to_owned(),
            algorithm: r.algorithm.name().to_owned(),
            compare: r.compare.name().to_owned(),
            blocks: r.blocks,
            mismatched: r.mismatched,
            blocks_sent: r.blocks_sent,
            bytes_sent: r.bytes_sent,
            bytes_received: r.bytes_received,
            seconds: r.seconds,
            mismatched_ranges: r
                .mismatched_ranges
                .iter()
                .map(|b| (b.start.0, b.count))
                .collect(),
        }
    }
}

#[pymethods]
impl Report {
    /// True when no block differed.
    #[getter]
    fn coherent(&self) -> bool {
        self.mismatched == 0
    }

    /// The report as a dict with the keys and values of the ``--json`` report
    /// (``mismatched_ranges`` as ``{"start": ..., "count": ...}`` dicts, plus ``coherent``).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("mode", &self.mode)?;
        d.set_item("algorithm", &self.algorithm)?;
        d.set_item("compare", &self.compare)?;
        d.set_item("blocks", self.blocks)?;
        d.set_item("mismatched", self.mismatched)?;
        d.set_item("blocks_sent", self.blocks_sent)?;
        d.set_item("bytes_sent", self.bytes_sent)?;
        d.set_item("bytes_received", self.bytes_received)?;
        d.set_item("seconds", self.seconds)?;
        d.set_item("coherent", self.mismatched == 0)?;
        let ranges = PyList::empty(py);
        for &(start, count) in &self.mismatched_ranges {
            let r = PyDict::new(py);
            r.set_item("start", start)?;
            r.set_item("count", count)?;
            ranges.append(r)?;
        }
        d.set_item("mismatched_ranges", ranges)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Report(mode={:?}, algorithm={:?}, compare={:?}, blocks={}, mismatched={}, blocks_sent={}, bytes_sent={}, bytes_received={}, seconds={:.3})",
            self.mode,
            self.algorithm,
            self.compare,
            self.blocks,
            self.mismatched,
            self.blocks_sent,
            self.bytes_sent,
            self.bytes_received,
            self.seconds
        )
    }
}

/// A snapshot of a primary's state.
#[pyclass(frozen, get_all, module = "mirror")]
#[derive(Debug)]
pub struct Status {
    /// Link state: ``"disconnected"``, ``"resyncing"``, ``"connected"`` or ``"closed"``.
    state: String,
    /// True when the dirty map can drive the next resync (otherwise a full scan is owed).
    map_valid: bool,
    /// Dirty-map regions dirty or in flight.
    dirty_regions: u64,
    /// Bytes those regions cover.
    dirty_bytes: u64,
    /// Bytes per dirty-map region.
    region_size: u64,
    /// Replicated writes not yet acknowledged by the secondary.
    pending_writes: u64,
    /// Bytes sent on every link since the primary was opened.
    bytes_sent: u64,
    /// Bytes received on every link since the primary was opened.
    bytes_received: u64,
    /// Connections made since the primary was opened.
    connections: u64,
    /// The last link or resync error, if any.
    last_error: Option<String>,
    /// The last resync or periodic scan, if any.
    last_report: Option<Report>,
    /// The last scan the secondary led, as it reported it, if any.
    last_secondary_report: Option<Report>,
    /// Bytes the running job (resync, verify or periodic scan) still has to compare (the last
    /// job's; 0 at its end).
    job_remaining_bytes: u64,
    /// Seconds that job needs still at its recent rate: 0.0 once it ended, ``None`` before
    /// any job or while no rate is known.
    job_eta_seconds: Option<f64>,
}

// The class has every field of the engine's status, by the same name and in the same order:
// checked when this crate is built.
const _: () = assert!(same_field_names(
    field_names!(Status {
        state,
        map_valid,
        dirty_regions,
        dirty_bytes,
        region_size,
        pending_writes,
        bytes_sent,
        bytes_received,
        connections,
        last_error,
        last_report,
        last_secondary_report,
        job_remaining_bytes,
        job_eta_seconds,
    }),
    mirror_core::Status::FIELDS
));

impl From<&mirror_core::Status> for Status {
    fn from(s: &mirror_core::Status) -> Self {
        Status {
            state: s.state.name().to_owned(),
            map_valid: s.map_valid,
            dirty_regions: s.dirty_regions,
            dirty_bytes: s.dirty_bytes,
            region_size: s.region_size,
            pending_writes: s.pending_writes,
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            connections: s.connections,
            last_error: s.last_error.clone(),
            last_report: s.last_report.as_ref().map(Report::from),
            last_secondary_report: s.last_secondary_report.as_ref().map(Report::from),
            job_remaining_bytes: s.job_remaining_bytes,
            job_eta_seconds: s.job_eta_seconds,
        }
    }
}

#[pymethods]
impl Status {
    /// True when the secondary may lag: the link is down or a resync is under way, or some
    /// region is dirty.
    #[getter]
    fn degraded(&self) -> bool {
        self.state != "connected" || self.dirty_regions > 0
    }

    fn __repr__(&self) -> String {
        format!(
            "Status(state={:?}, map_valid={}, dirty_regions={}, dirty_bytes={}, pending_writes={}, connections={})",
            self.state,
            if self.map_valid { "True" } else { "False" },
            self.dirty_regions,
            self.dirty_bytes,
            self.pending_writes,
            self.connections
        )
    }
}

/// A snapshot of a secondary's state.
#[pyclass(frozen, get_all, module = "mirror")]
#[derive(Debug)]
pub struct SecondaryStatus {
    /// Address of the connected primary, if any.
    peer: Option<String>,
    /// Connections accepted.
    connections: u64,
    /// Connections refused or ended by an error.
    rejected: u64,
    /// Writes applied (replicated and repairs).
    writes_applied: u64,
    /// Bytes received.
    bytes_received: u64,
    /// Bytes sent.
    bytes_sent: u64,
    /// The last connection error, if any.
    last_error: Option<String>,
    /// False while a resync that is not in write order is under way: not a usable image.
    consistent: bool,
    /// The volume's identity (a UUID).
    identity: String,
    /// The primary volume it mirrors, if bound.
    bound_to: Option<String>,
    /// Scans this secondary led to their end.
    lead_scans: u64,
    /// The last of them, if any.
    last_report: Option<Report>,
}

impl From<&mirror_core::SecondaryStatus> for SecondaryStatus {
    fn from(s: &mirror_core::SecondaryStatus) -> Self {
        SecondaryStatus {
            peer: s.peer.clone(),
            connections: s.connections,
            rejected: s.rejected,
            writes_applied: s.writes_applied,
            bytes_received: s.bytes_received,
            bytes_sent: s.bytes_sent,
            last_error: s.last_error.clone(),
            consistent: s.consistent,
            identity: s.identity.to_string(),
            bound_to: (!s.bound_to.is_none()).then(|| s.bound_to.to_string()),
            lead_scans: s.lead_scans,
            last_report: s.last_report.as_ref().map(Report::from),
        }
    }
}

#[pymethods]
impl SecondaryStatus {
    fn __repr__(&self) -> String {
        format!(
            "SecondaryStatus(peer={:?}, connections={}, rejected={}, writes_applied={}, consistent={})",
            self.peer,
            self.connections,
            self.rejected,
            self.writes_applied,
            if self.consistent { "True" } else { "False" }
        )
    }
}

/// Per-block digests of a run of blocks, held as one ``bytes`` buffer.
///
/// ``len(m)`` is the number of blocks, ``m[i]`` the digest of the ``i``-th block of the run
/// (block ``m.first + i``) as ``bytes``, ``m.hex(i)`` its hex form (CRC32 as zlib prints it),
/// and ``m.digests`` every digest concatenated, ``digest_size`` bytes each — use
/// ``memoryview(m.digests)`` to work on it without copies.
#[pyclass(frozen, module = "mirror")]
#[derive(Debug)]
pub struct ScanMap {
    algorithm: Algorithm,
    first: u64,
    block_size: BlockSize,
    digests: Py<PyBytes>,
    blocks: usize,
}

impl ScanMap {
    pub(crate) fn new(py: Python<'_>, map: &mirror_core::ScanMap, block_size: BlockSize) -> Self {
        ScanMap {
            algorithm: map.algorithm(),
            first: map.first().0,
            block_size,
            digests: PyBytes::new(py, map.as_bytes()).unbind(),
            blocks: map.len(),
        }
    }

    fn index(&self, i: isize) -> PyResult<usize> {
        let n = self.blocks as isize;
        let j = if i < 0 { i + n } else { i };
        if (0..n).contains(&j) {
            Ok(j as usize)
        } else {
            Err(PyIndexError::new_err(format!(
                "block {i} is out of range for a scan of {n} blocks"
            )))
        }
    }

    fn digest<'a>(&self, bytes: &'a [u8], j: usize) -> &'a [u8] {
        let w = self.algorithm.digest_len();
        &bytes[j * w..(j + 1) * w]
    }
}

#[pymethods]
impl ScanMap {
    /// Digest algorithm: ``"crc32"``, ``"md5"`` or ``"sha1"``.
    #[getter]
    fn algorithm(&self) -> &'static str {
        self.algorithm.name()
    }

    /// Index of the first block covered.
    #[getter]
    fn first(&self) -> u64 {
        self.first
    }

    /// Bytes per block of the scanned volume.
    #[getter]
    fn block_size(&self) -> u32 {
        self.block_size.get()
    }

    /// Bytes per digest (4, 16 or 20).
    #[getter]
    fn digest_size(&self) -> usize {
        self.algorithm.digest_len()
    }

    /// Every digest, concatenated, in block order.
    #[getter]
    fn digests(&self, py: Python<'_>) -> Py<PyBytes> {
        self.digests.clone_ref(py)
    }

    /// Hex digest of the ``i``-th block (negative ``i`` counts from the end).
    fn hex(&self, py: Python<'_>, i: isize) -> PyResult<String> {
        let j = self.index(i)?;
        Ok(mirror_core::digest::hex(
            self.digest(self.digests.bind(py).as_bytes(), j),
        ))
    }

    /// Runs of blocks whose digests differ from ``other``'s, as ``(first_block, count)``
    /// pairs. Both maps must cover the same blocks with the same algorithm.
    fn mismatches(&self, py: Python<'_>, other: &ScanMap) -> PyResult<Vec<(u64, u64)>> {
        if other.algorithm != self.algorithm
            || other.first != self.first
            || other.blocks != self.blocks
        {
            return Err(crate::errors::invalid(format!(
                "cannot compare a {} scan of blocks {}+{} with a {} scan of blocks {}+{}",
                self.algorithm, self.first, self.blocks, other.algorithm, other.first, other.blocks
            )));
        }
        let a = self.digests.bind(py).as_bytes();
        let b = other.digests.bind(py).as_bytes();
        let w = self.algorithm.digest_len();
        let mut runs = mirror_core::scan::RunBuilder::default();
        for (i, (x, y)) in a.chunks_exact(w).zip(b.chunks_exact(w)).enumerate() {
            if x != y {
                runs.push(self.first + i as u64);
            }
        }
        Ok(runs
            .finish()
            .into_iter()
            .map(|r| (r.start.0, r.count))
            .collect())
    }

    fn __len__(&self) -> usize {
        self.blocks
    }

    fn __getitem__<'py>(&self, py: Python<'py>, i: isize) -> PyResult<Bound<'py, PyBytes>> {
        let j = self.index(i)?;
        Ok(PyBytes::new(
            py,
            self.digest(self.digests.bind(py).as_bytes(), j),
        ))
    }

    fn __iter__(slf: Py<Self>) -> ScanMapIter {
        ScanMapIter {
            map: slf,
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn __bytes__(&self, py: Python<'_>) -> Py<PyBytes> {
        self.digests.clone_ref(py)
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> bool {
        match other.cast::<ScanMap>() {
            Ok(o) => {
                let o = o.get();
                o.algorithm == self.algorithm
                    && o.first == self.first
                    && o.digests.bind(py).as_bytes() == self.digests.bind(py).as_bytes()
            }
            Err(_) => false,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "ScanMap(algorithm={:?}, first={}, blocks={}, block_size={})",
            self.algorithm.name(),
            self.first,
            self.blocks,
            self.block_size
        )
    }
}

/// Iterator over a :class:`ScanMap`'s digests, one ``bytes`` per block, made as it goes.
#[pyclass(frozen, module = "mirror")]
#[derive(Debug)]
pub struct ScanMapIter {
    map: Py<ScanMap>,
    next: std::sync::atomic::AtomicUsize,
}

#[pymethods]
impl ScanMapIter {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let map = self.map.get();
        let j = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if j >= map.blocks {
            self.next
                .store(map.blocks, std::sync::atomic::Ordering::Relaxed);
            return Err(PyStopIteration::new_err(()));
        }
        Ok(PyBytes::new(
            py,
            map.digest(map.digests.bind(py).as_bytes(), j),
        ))
    }
}

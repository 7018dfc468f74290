//! Python bindings of mirror: the extension module `mirror._mirror`, re-exported by the pure
//! Python package `mirror` (`python/mirror/`).
//!
//! The module is thin: every verb calls the engine once. What lives here is only what Python
//! needs: buffers borrowed without copies ([`buffer`]), the GIL released around every blocking
//! call and Ctrl-C turned into a cancelled job ([`blocking`]), engine errors mapped to
//! exception classes in one place ([`errors`]), and arguments checked before use ([`args`]).

mod args;
mod blocking;
mod buffer;
mod errors;
mod primary;
mod scan;
mod secondary;
mod types;
mod volume;

use pyo3::prelude::*;

/// Keeps a secondary block volume coherent with a primary over TCP (extension module).
#[pymodule]
mod _mirror {
    use std::path::PathBuf;

    use mirror_core::Algorithm;
    use mirror_uring::IoBackend;
    use pyo3::prelude::*;

    use crate::args::{named, unsigned};
    use crate::errors::IntoPyResult;

    #[pymodule_export]
    use crate::primary::Primary;
    #[pymodule_export]
    use crate::secondary::Secondary;
    #[pymodule_export]
    use crate::types::{Report, ScanMap, ScanMapIter, SecondaryStatus, Status};

    /// Per-block digests of blocks ``first`` to ``first + count`` (default: to the end) of the
    /// file or block device at ``path``, as one :class:`ScanMap`, with ``algorithm`` (default:
    /// the engine's, ``"sha1"``). Releases the GIL; Ctrl-C
    /// interrupts it. ``progress(done, total)``, if given, is called (from another thread)
    /// after each batch of blocks; if it raises, the scan stops and that is raised.
    #[pyfunction]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (path, *, algorithm = None, block_size = 4096, io = "uring", first = 0, count = None, progress = None))]
    fn scan(
        py: Python<'_>,
        path: PathBuf,
        algorithm: Option<&str>,
        block_size: i128,
        io: &str,
        first: i128,
        count: Option<i128>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<crate::types::ScanMap> {
        let algorithm: Algorithm = algorithm.map(named).transpose()?.unwrap_or_default();
        let bs = crate::args::block_size(block_size)?;
        let io: IoBackend = named(io)?;
        let first = unsigned("first", first)?;
        let count = count.map(|c| unsigned("count", c)).transpose()?;
        let vol = py
            .detach(|| crate::volume::open(&path, bs, io, true))
            .py()?;
        let range = crate::scan::block_range(&*vol, first, count).py()?;
        crate::scan::scan_interruptible(py, &*vol, algorithm, range, progress)
    }

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add("DEFAULT_RATE_MIB_S", crate::primary::DEFAULT_RATE_MIB_S)?;
        Ok(())
    }
}

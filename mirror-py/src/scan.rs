//! Whole-range scans with a cancel flag, for `mirror.scan` and `Primary.scan`.

use std::sync::atomic::Ordering;

use mirror_core::scan::{check_range, scan_range};
use mirror_core::{Algorithm, BlockRange, ScanMap, ScanOptions, Volume};

use pyo3::prelude::*;

use crate::blocking::{check_cancel, interruptible_with, ProgressHook};

/// Digests of `range` of `vol`, reporting each batch to `hook` and stopping at the next batch
/// once its cancel flag is set.
pub(crate) fn scan_volume(
    vol: &dyn Volume,
    algorithm: Algorithm,
    range: BlockRange,
    hook: &ProgressHook,
) -> mirror_core::Result<ScanMap> {
    check_range(vol, range)?;
    let cancel = hook.cancel();
    let mut all = ScanMap::empty(algorithm, range.start);
    scan_range(
        vol,
        range,
        ScanOptions::new(algorithm),
        |_| check_cancel(cancel, "scan"),
        |batch| {
            all.extend(&batch)?;
            hook.report(all.len() as u64, range.count);
            Ok(!cancel.load(Ordering::Relaxed))
        },
    )?;
    check_cancel(cancel, "scan")?;
    Ok(all)
}

/// The range `first..first+count` (`count` `None`: to the end), checked against `vol`.
pub(crate) fn block_range(
    vol: &dyn Volume,
    first: u64,
    count: Option<u64>,
) -> mirror_core::Result<BlockRange> {
    let count = count.unwrap_or_else(|| vol.blocks().saturating_sub(first));
    let range = BlockRange::new(first, count);
    check_range(vol, range)?;
    Ok(range)
}

/// Scans `range` of `vol` with the GIL released, interruptible, reporting to `progress`.
pub(crate) fn scan_interruptible(
    py: Python<'_>,
    vol: &dyn Volume,
    algorithm: Algorithm,
    range: BlockRange,
    progress: Option<Py<PyAny>>,
) -> PyResult<crate::types::ScanMap> {
    let hook = ProgressHook::new(progress);
    let result = interruptible_with(py, hook.cancel(), || {
        scan_volume(vol, algorithm, range, &hook)
    });
    let map = hook.finish(py, result)?;
    Ok(crate::types::ScanMap::new(py, &map, vol.block_size()))
}

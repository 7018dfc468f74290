//! Whole-range scans with a cancel flag, for `mirror.scan` and `Primary.scan`.

use std::sync::atomic::AtomicBool;

use mirror_core::scan::{check_range, scan_range};
use mirror_core::{Algorithm, BlockRange, ScanMap, ScanOptions, Volume};

use crate::blocking::check_cancel;

/// Digests of `range` of `vol`, stopping at the next batch once `cancel` is set.
pub(crate) fn scan_volume(
    vol: &dyn Volume,
    algorithm: Algorithm,
    range: BlockRange,
    cancel: &AtomicBool,
) -> mirror_core::Result<ScanMap> {
    check_range(vol, range)?;
    let mut all = ScanMap::empty(algorithm, range.start);
    scan_range(
        vol,
        range,
        ScanOptions::new(algorithm),
        |_| check_cancel(cancel, "scan"),
        |batch| {
            all.extend(&batch)?;
            Ok(true)
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

//! Stripe locks over dirty-map regions. A write holds the locks of its regions while it writes
//! locally and queues its frames; a resync holds them while it reads a block and queues it. So
//! a repair block is never read before a write and queued after it (ordering invariant).

use std::sync::{Mutex, MutexGuard};

use crate::sync::lock;

/// Number of stripe locks.
const STRIPES: usize = 256;

/// Stripe locks over dirty-map regions: writes and resync reads of a region exclude each
/// other. Locks are taken in ascending stripe order, so two ranges never deadlock.
#[derive(Debug)]
pub(super) struct RegionLocks {
    stripes: Vec<Mutex<()>>,
    shift: u32,
}

impl RegionLocks {
    pub(super) fn new(region_size: u64) -> Self {
        RegionLocks {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            shift: region_size.trailing_zeros(),
        }
    }

    pub(super) fn lock(&self, offset: u64, len: u64) -> Vec<MutexGuard<'_, ()>> {
        let first = offset >> self.shift;
        let last = (offset + len.max(1) - 1) >> self.shift;
        let mut idx: Vec<usize> = if last - first >= STRIPES as u64 {
            (0..STRIPES).collect()
        } else {
            (first..=last)
                .map(|r| (r % STRIPES as u64) as usize)
                .collect()
        };
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter().map(|i| lock(&self.stripes[i])).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_locks_dedup_and_sort_stripes() {
        let l = RegionLocks::new(65536);
        assert_eq!(l.lock(0, 1).len(), 1);
        assert_eq!(l.lock(65535, 2).len(), 2);
        assert_eq!(l.lock(0, 1 << 40).len(), STRIPES);
        // Region 0 and region STRIPES share a stripe.
        assert_eq!(l.lock(0, (STRIPES as u64 + 1) * 65536).len(), STRIPES);
    }
}

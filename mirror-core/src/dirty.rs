//! The coarse-grain dirty map: one bit per region of 2^k blocks, recording what the secondary
//! may lack.
//!
//! Invariant: while the map is *valid*, every block on which the secondary may differ from the
//! primary lies in a region that is dirty or in flight (taken for resync, not yet acknowledged),
//! or is covered by a replicated write not yet acknowledged. A region leaves the map only when
//! the secondary has acknowledged its data ([`DirtyMap::ack`]); a failed resync puts it back
//! ([`DirtyMap::fail`]). A map that was dropped or never started is invalid, and an invalid map
//! forces the full checksum scan.
//!
//! Memory: one bit per region, so `size / region_size / 8` bytes; 2 MiB per TiB at the default
//! 64 KiB region.

use std::collections::BTreeMap;

use bitvec::prelude::*;

use crate::units::BlockSize;
use crate::{Error, Result};

/// Default region size: 64 KiB (16 blocks of 4 KiB).
pub const DEFAULT_REGION_SIZE: u64 = 64 << 10;

/// Index of a region of the dirty map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Region(pub u64);

/// The dirty map of one volume.
#[derive(Debug)]
pub struct DirtyMap {
    size: u64,
    region_shift: u32,
    bits: BitVec<u64, Lsb0>,
    /// Regions taken for resync whose data the secondary has not yet acknowledged, with how
    /// many takes are outstanding.
    in_flight: BTreeMap<u64, u32>,
    valid: bool,
}

impl DirtyMap {
    /// A map for a volume of `size` bytes with regions of `region_size` bytes (a power of two,
    /// at least one block). It starts invalid: nothing is known of the secondary yet.
    pub fn new(size: u64, block_size: BlockSize, region_size: u64) -> Result<Self> {
        if !region_size.is_power_of_two()
            || region_size < block_size.bytes()
            || region_size > 1 << 40
        {
            return Err(Error::invalid(format!(
                "region size {region_size} must be a power of two from the block size ({block_size}) to 1 TiB"
            )));
        }
        let region_shift = region_size.trailing_zeros();
        let regions = size.div_ceil(region_size);
        Ok(DirtyMap {
            size,
            region_shift,
            bits: bitvec![u64, Lsb0; 0; regions as usize],
            in_flight: BTreeMap::new(),
            valid: false,
        })
    }

    /// Bytes per region.
    pub fn region_size(&self) -> u64 {
        1 << self.region_shift
    }

    /// Number of regions.
    pub fn regions(&self) -> u64 {
        self.bits.len() as u64
    }

    /// Bytes of memory the bits take.
    pub fn memory_bytes(&self) -> usize {
        self.bits.as_raw_slice().len() * 8
    }

    /// Byte span `(offset, len)` of `region`, cut at the end of the volume.
    pub fn span(&self, region: Region) -> (u64, u64) {
        let off = region.0 << self.region_shift;
        (off, self.region_size().min(self.size.saturating_sub(off)))
    }

    /// Regions a byte range touches, as `first..end`.
    pub fn regions_of(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        if len == 0 {
            return 0..0;
        }
        let end = offset.saturating_add(len).min(self.size);
        (offset >> self.region_shift)..((end + self.region_size() - 1) >> self.region_shift)
    }

    /// Records that `[offset, offset + len)` changed and the secondary may lack it.
    pub fn mark(&mut self, offset: u64, len: u64) {
        let r = self.regions_of(offset, len);
        if r.start < r.end {
            self.bits[r.start as usize..r.end as usize].fill(true);
        }
    }

    /// Marks every region (a full resync is owed).
    pub fn mark_all(&mut self) {
        self.bits.fill(true);
    }

    /// True when `region` is dirty or in flight.
    pub fn is_dirty(&self, region: Region) -> bool {
        self.bits.get(region.0 as usize).is_some_and(|b| *b)
            || self.in_flight.contains_key(&region.0)
    }

    /// Number of regions dirty or in flight.
    pub fn dirty_count(&self) -> u64 {
        let mut n = self.bits.count_ones() as u64;
        n += self
            .in_flight
            .keys()
            .filter(|r| !self.bits[**r as usize])
            .count() as u64;
        n
    }

    /// Bytes covered by dirty or in-flight regions.
    pub fn dirty_bytes(&self) -> u64 {
        let mut total = 0;
        for r in self.bits.iter_ones() {
            total += self.span(Region(r as u64)).1;
        }
        for r in self.in_flight.keys() {
            if !self.bits[*r as usize] {
                total += self.span(Region(*r)).1;
            }
        }
        total
    }

    /// The first dirty (not in-flight) region at or after `from`.
    pub fn next_dirty(&self, from: Region) -> Option<Region> {
        let from = from.0 as usize;
        if from >= self.bits.len() {
            return None;
        }
        self.bits[from..]
            .first_one()
            .map(|i| Region((from + i) as u64))
    }

    /// Dirty (not in-flight) regions, coalesced into runs `(first, count)`.
    pub fn dirty_runs(&self) -> Vec<(Region, u64)> {
        let mut runs: Vec<(Region, u64)> = Vec::new();
        for i in self.bits.iter_ones() {
            match runs.last_mut() {
                Some((r, n)) if r.0 + *n == i as u64 => *n += 1,
                _ => runs.push((Region(i as u64), 1)),
            }
        }
        runs
    }

    /// Takes `region` for resync: it stays counted dirty (in flight) until [`ack`](Self::ack)
    /// or [`fail`](Self::fail). A write that marks it again meanwhile sets its bit anew, so it is
    /// resynced again.
    pub fn take(&mut self, region: Region) {
        if let Some(mut b) = self.bits.get_mut(region.0 as usize) {
            *b = false;
            *self.in_flight.entry(region.0).or_insert(0) += 1;
        }
    }

    /// The secondary acknowledged the data of a take of `region`.
    pub fn ack(&mut self, region: Region) {
        self.release(region);
    }

    /// A take of `region` failed (link lost): it is dirty again.
    pub fn fail(&mut self, region: Region) {
        if self.release(region) {
            self.bits.set(region.0 as usize, true);
        }
    }

    fn release(&mut self, region: Region) -> bool {
        match self.in_flight.get_mut(&region.0) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                self.in_flight.remove(&region.0);
                true
            }
            None => false,
        }
    }

    /// True when the map covers everything since the secondary was last known coherent.
    pub fn is_valid(&self) -> bool {
        self.valid
    }

    /// Declares the map valid (a full scan just made the pair coherent, apart from what is
    /// marked).
    pub fn set_valid(&mut self) {
        self.valid = true;
    }

    /// Drops what the map knows: it is invalid, and a full scan is owed.
    pub fn invalidate(&mut self) {
        self.valid = false;
        self.bits.fill(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(size: u64) -> DirtyMap {
        DirtyMap::new(size, BlockSize::DEFAULT, 64 << 10).unwrap()
    }

    #[test]
    fn marking_a_byte_range_dirties_every_region_it_touches() {
        let mut m = map(1 << 20);
        m.mark(65535, 2); // straddles regions 0 and 1
        m.mark(5 << 16, 4096);
        assert_eq!(m.dirty_runs(), vec![(Region(0), 2), (Region(5), 1)]);
        assert_eq!(m.dirty_count(), 3);
        assert_eq!(m.dirty_bytes(), 3 * 65536);
    }

    #[test]
    fn last_region_is_cut_at_the_end_of_the_volume() {
        let mut m = map((1 << 20) + 4096);
        assert_eq!(m.regions(), 17);
        m.mark(1 << 20, 4096);
        assert_eq!(m.span(Region(16)), (1 << 20, 4096));
        assert_eq!(m.dirty_bytes(), 4096);
        m.mark(u64::MAX - 5, 5); // past the end: clipped, never panics
    }

    #[test]
    fn taken_region_stays_dirty_until_acknowledged() {
        let mut m = map(1 << 20);
        m.mark(0, 1);
        m.take(Region(0));
        assert!(m.is_dirty(Region(0)));
        assert_eq!(m.next_dirty(Region(0)), None);
        m.fail(Region(0));
        assert_eq!(m.next_dirty(Region(0)), Some(Region(0)));
        m.take(Region(0));
        m.ack(Region(0));
        assert!(!m.is_dirty(Region(0)));
        assert_eq!(m.dirty_count(), 0);
    }

    #[test]
    fn write_during_resync_of_a_region_keeps_it_dirty_after_the_ack() {
        let mut m = map(1 << 20);
        m.mark(0, 1);
        m.take(Region(0));
        m.mark(100, 1);
        m.ack(Region(0));
        assert!(m.is_dirty(Region(0)));
    }

    #[test]
    fn invalid_map_forgets_and_bad_region_sizes_are_refused() {
        let mut m = map(1 << 20);
        assert!(!m.is_valid());
        m.set_valid();
        m.mark(0, 1);
        m.invalidate();
        assert!(!m.is_valid());
        assert_eq!(m.dirty_count(), 0);
        assert!(DirtyMap::new(1 << 20, BlockSize::DEFAULT, 1000).is_err());
        assert!(DirtyMap::new(1 << 20, BlockSize::DEFAULT, 2048).is_err());
    }

    #[test]
    fn memory_is_one_bit_per_region() {
        let m = DirtyMap::new(1 << 40, BlockSize::DEFAULT, DEFAULT_REGION_SIZE).unwrap();
        assert_eq!(m.memory_bytes(), 2 << 20);
    }
}

//! The primary's persistent write-intent map: one bit per chunk of the volume, durable before
//! the first write to a clean chunk proceeds, cleared lazily once the secondary has the data.
//! After a primary crash the set bits cover every write the secondary may lack, so the resync
//! covers them instead of the whole volume.
//!
//! Crash ordering (md's bitmap, in our terms):
//! 1. a write to chunk C first sets C's bit in memory and, if the bit is not yet on disk,
//!    writes C's page and `fdatasync`s it — only then does the write proceed (local write and
//!    replication);
//! 2. the write completes (acknowledged by the secondary, or recorded in the dirty map);
//! 3. later, [`IntentMap::clear_idle`] clears the bits of chunks with no write in flight whose
//!    regions the dirty map holds clean, and writes those pages back. A crash before step 3
//!    costs a needless resync of C, never a missed one.
//!
//! The bits mean something only for the session named in the header, and only while that
//! session's dirty map is valid (the secondary was coherent with it): the header says so, and
//! is rewritten (and synced) when that changes.
//!
//! File layout: pages of 4096 bytes, each ending in the CRC-32C of its first 4092 bytes, so a
//! torn page is detected and the whole map is then not trusted (a full checksum scan).
//!
//! ```text
//! page 0   magic "MIRRWIM1" | u16 version 1 | u16 0 | u32 chunk shift | u64 volume size
//!          | u128 identity | u128 session | u32 flags (bit 0: valid for session) | zero … | crc
//! page k   4092 bytes of bits (chunk i is bit i % 8 of byte i / 8 within its page) | crc
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::disk::MetaDisk;
use super::record::VolumeId;
use crate::{Error, Result};

/// Default chunk of the write-intent map: 4 MiB (256 bits per GiB). Coarser than the dirty map,
/// so a stream of random writes soon finds its chunks already durable.
pub const DEFAULT_INTENT_CHUNK: u64 = 4 << 20;

const PAGE: usize = 4096;
const PAGE_BITS: u64 = ((PAGE - 4) * 8) as u64;
const MAGIC: [u8; 8] = *b"MIRRWIM1";
const VERSION: u16 = 1;

/// The suffix of the write-intent map beside a record: `PATH.mirror-meta.intent`.
pub const INTENT_SUFFIX: &str = ".intent";

/// The write-intent map of one primary volume.
#[derive(Debug)]
pub struct IntentMap {
    path: PathBuf,
    disk: Arc<dyn MetaDisk>,
    chunk_shift: u32,
    chunks: u64,
    identity: VolumeId,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Bits as on disk (set: a write may be in flight or unacknowledged).
    bits: Vec<u8>,
    /// Writes in flight per chunk.
    in_flight: Vec<u32>,
    session: u128,
    valid: bool,
}

/// What a map found on disk said about the last session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The session the bits belong to.
    pub session: u128,
    /// Byte ranges `(offset, length)` of the chunks whose bits were set.
    pub dirty: Vec<(u64, u64)>,
}

fn page_with_crc(mut page: Vec<u8>) -> Vec<u8> {
    page.resize(PAGE - 4, 0);
    let crc = crc32c::crc32c(&page);
    page.extend_from_slice(&crc.to_le_bytes());
    page
}

fn page_ok(p: &[u8]) -> bool {
    p.len() == PAGE && crc32c::crc32c(&p[..PAGE - 4]).to_le_bytes() == p[PAGE - 4..]
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl IntentMap {
    /// The map file beside the record at `meta`.
    pub fn path_for(meta: &Path) -> PathBuf {
        let mut s = meta.as_os_str().to_owned();
        s.push(INTENT_SUFFIX);
        PathBuf::from(s)
    }

    /// Opens the map for a volume of `size` bytes, in chunks of `chunk` bytes (a power of two
    /// of at least 4 KiB). Returns what the file said of the last session, when it was whole,
    /// of this volume and geometry, and marked valid. The map rewritten now keeps those bits
    /// and that session until [`set_session`](Self::set_session) names a new one, so a second
    /// crash before the resync loses nothing; otherwise it starts empty and not valid.
    pub fn open(
        path: PathBuf,
        disk: Arc<dyn MetaDisk>,
        identity: VolumeId,
        size: u64,
        chunk: u64,
    ) -> Result<(IntentMap, Option<Recovered>)> {
        if !chunk.is_power_of_two() || chunk < 4096 {
            return Err(Error::invalid(format!(
                "write-intent chunk {chunk} must be a power of two of at least 4096"
            )));
        }
        let chunk_shift = chunk.trailing_zeros();
        let chunks = size.div_ceil(chunk).max(1);
        let name = path.display().to_string();
        let recovered = match disk.read(&path) {
            Ok(Some(bytes)) => Self::recover(&bytes, identity, size, chunk_shift, chunks),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(path = %name, error = %e, "write-intent map unreadable: a full checksum scan will run");
                None
            }
        };
        let bit_bytes = ((chunks.div_ceil(PAGE_BITS)) * PAGE_BITS / 8) as usize;
        let mut bits = vec![0u8; bit_bytes];
        if let Some(r) = &recovered {
            for (off, _) in &r.dirty {
                let c = off >> chunk_shift;
                let (p, i) = (c / PAGE_BITS, c % PAGE_BITS);
                bits[(p * PAGE_BITS / 8 + i / 8) as usize] |= 1 << (i % 8);
            }
        }
        let map = IntentMap {
            path,
            disk,
            chunk_shift,
            chunks,
            identity,
            state: Mutex::new(State {
                bits,
                in_flight: vec![0; chunks as usize],
                session: recovered.as_ref().map_or(0, |r| r.session),
                valid: recovered.is_some(),
            }),
        };
        // Write the whole new map, then sync: from now on pages are rewritten in place.
        let mut all = map.header(&lock(&map.state));
        for p in 0..map.pages() {
            all.extend_from_slice(&map.page_bytes(&lock(&map.state), p));
        }
        map.disk
            .write_new(&map.path, &all)
            .and_then(|_| map.disk.sync(&map.path))
            .map_err(|e| Error::io(&name, "write write-intent map", 0, e))?;
        Ok((map, recovered))
    }

    fn recover(
        bytes: &[u8],
        identity: VolumeId,
        size: u64,
        chunk_shift: u32,
        chunks: u64,
    ) -> Option<Recovered> {
        let pages = chunks.div_ceil(PAGE_BITS) as usize;
        if bytes.len() != PAGE * (1 + pages) || !bytes.chunks(PAGE).all(page_ok) {
            tracing::warn!(
                "write-intent map torn or of another geometry: a full checksum scan will run"
            );
            return None;
        }
        let h = &bytes[..PAGE];
        let ok = h[..8] == MAGIC
            && u16::from_le_bytes([h[8], h[9]]) == VERSION
            && u32::from_le_bytes(h[12..16].try_into().ok()?) == chunk_shift
            && u64::from_le_bytes(h[16..24].try_into().ok()?) == size
            && u128::from_le_bytes(h[24..40].try_into().ok()?) == identity.0;
        let session = u128::from_le_bytes(h[40..56].try_into().ok()?);
        let valid = u32::from_le_bytes(h[56..60].try_into().ok()?) & 1 != 0;
        if !ok || !valid {
            return None;
        }
        let bits = &bytes[PAGE..];
        let mut dirty = Vec::new();
        for c in 0..chunks {
            let (p, i) = (c / PAGE_BITS, c % PAGE_BITS);
            let byte = bits[p as usize * PAGE + (i / 8) as usize];
            if byte & (1 << (i % 8)) != 0 {
                dirty.push((c << chunk_shift, 1u64 << chunk_shift));
            }
        }
        Some(Recovered { session, dirty })
    }

    fn pages(&self) -> u64 {
        self.chunks.div_ceil(PAGE_BITS)
    }

    fn header(&self, st: &State) -> Vec<u8> {
        let mut h = Vec::with_capacity(PAGE);
        h.extend_from_slice(&MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(&self.chunk_shift.to_le_bytes());
        h.extend_from_slice(&(self.chunks << self.chunk_shift).to_le_bytes());
        h.extend_from_slice(&self.identity.0.to_le_bytes());
        h.extend_from_slice(&st.session.to_le_bytes());
        h.extend_from_slice(&u32::from(st.valid).to_le_bytes());
        page_with_crc(h)
    }

    fn page_bytes(&self, st: &State, p: u64) -> Vec<u8> {
        let lo = (p * PAGE_BITS / 8) as usize;
        page_with_crc(st.bits[lo..lo + PAGE - 4].to_vec())
    }

    fn write_page(&self, st: &State, p: u64) -> Result<()> {
        let bytes = if p == u64::MAX {
            self.header(st)
        } else {
            self.page_bytes(st, p)
        };
        let off = if p == u64::MAX {
            0
        } else {
            (p + 1) * PAGE as u64
        };
        let name = self.path.display().to_string();
        self.disk
            .write_at(&self.path, off, &bytes)
            .map_err(|e| Error::io(&name, "write write-intent map", off, e))?;
        self.disk
            .sync(&self.path)
            .map_err(|e| Error::io(&name, "sync write-intent map", off, e))
    }

    fn chunk_span(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        let first = offset >> self.chunk_shift;
        let last = (offset + len.max(1) - 1) >> self.chunk_shift;
        first..(last + 1).min(self.chunks)
    }

    /// Step 1 of the crash ordering: marks the chunks of `[offset, offset+len)` in flight and
    /// makes their bits durable before returning. Pair every successful call with
    /// [`end`](Self::end).
    pub fn begin(&self, offset: u64, len: u64) -> Result<()> {
        let mut st = lock(&self.state);
        let mut pages = Vec::new();
        let mut newly = Vec::new();
        for c in self.chunk_span(offset, len) {
            st.in_flight[c as usize] += 1;
            let (p, i) = (c / PAGE_BITS, c % PAGE_BITS);
            let at = (p * PAGE_BITS / 8 + i / 8) as usize;
            if st.bits[at] & (1 << (i % 8)) == 0 {
                st.bits[at] |= 1 << (i % 8);
                newly.push((at, 1u8 << (i % 8)));
                if pages.last() != Some(&p) {
                    pages.push(p);
                }
            }
        }
        for p in pages {
            if let Err(e) = self.write_page(&st, p) {
                // Not known durable: forget the bits so a retry syncs them again.
                for (at, bit) in newly {
                    st.bits[at] &= !bit;
                }
                for c in self.chunk_span(offset, len) {
                    st.in_flight[c as usize] -= 1;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// The write begun by [`begin`](Self::begin) over the same range is complete (acknowledged
    /// or in the dirty map). Its bits stay set until [`clear_idle`](Self::clear_idle).
    pub fn end(&self, offset: u64, len: u64) {
        let mut st = lock(&self.state);
        for c in self.chunk_span(offset, len) {
            let n = &mut st.in_flight[c as usize];
            *n = n.saturating_sub(1);
        }
    }

    /// Step 3: clears the bits of chunks with no write in flight for which `dirty(offset, len)`
    /// says the secondary lacks nothing, and writes those pages back. Returns the chunks
    /// cleared.
    pub fn clear_idle(&self, dirty: impl Fn(u64, u64) -> bool) -> Result<u64> {
        let mut st = lock(&self.state);
        let mut pages = Vec::new();
        let mut cleared = 0;
        for c in 0..self.chunks {
            let (p, i) = (c / PAGE_BITS, c % PAGE_BITS);
            let at = (p * PAGE_BITS / 8 + i / 8) as usize;
            if st.bits[at] & (1 << (i % 8)) == 0 || st.in_flight[c as usize] != 0 {
                continue;
            }
            if dirty(c << self.chunk_shift, 1 << self.chunk_shift) {
                continue;
            }
            st.bits[at] &= !(1 << (i % 8));
            cleared += 1;
            if pages.last() != Some(&p) {
                pages.push(p);
            }
        }
        for p in pages {
            self.write_page(&st, p)?;
        }
        Ok(cleared)
    }

    /// Records durably whether the bits cover everything the secondary may lack since it was
    /// attached to `session` (true once that session's dirty map is valid; false when it is
    /// invalidated).
    pub fn set_session(&self, session: u128, valid: bool) -> Result<()> {
        let mut st = lock(&self.state);
        if st.valid == valid && st.session == session {
            return Ok(());
        }
        st.valid = valid;
        st.session = session;
        self.write_page(&st, u64::MAX)
    }

    /// Chunks whose bits are set now.
    pub fn set_chunks(&self) -> u64 {
        let st = lock(&self.state);
        (0..self.chunks)
            .filter(|c| {
                let (p, i) = (c / PAGE_BITS, c % PAGE_BITS);
                st.bits[(p * PAGE_BITS / 8 + i / 8) as usize] & (1 << (i % 8)) != 0
            })
            .count() as u64
    }

    /// Chunks in the map.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// Bytes per chunk.
    pub fn chunk_size(&self) -> u64 {
        1 << self.chunk_shift
    }
}

#[cfg(test)]
mod tests {
    use super::super::disk::{FaultDisk, FaultPoint, OsDisk};
    use super::*;

    const MIB: u64 = 1 << 20;

    fn open(dir: &Path, disk: Arc<dyn MetaDisk>) -> (IntentMap, Option<Recovered>) {
        IntentMap::open(dir.join("m.intent"), disk, VolumeId(5), 1 << 30, 4 * MIB).unwrap()
    }

    #[test]
    fn bits_set_before_a_crash_come_back_for_a_valid_session() {
        let d = tempfile::tempdir().unwrap();
        let (m, rec) = open(d.path(), Arc::new(OsDisk));
        assert_eq!(rec, None);
        m.set_session(7, true).unwrap();
        m.begin(0, 4096).unwrap();
        m.begin(100 * MIB, 8 * MIB + 1).unwrap();
        m.end(0, 4096);
        assert_eq!(m.set_chunks(), 4);
        drop(m); // a crash: nothing cleared
        let (_, rec) = open(d.path(), Arc::new(OsDisk));
        let rec = rec.unwrap();
        assert_eq!(rec.session, 7);
        assert_eq!(
            rec.dirty,
            vec![
                (0, 4 * MIB),
                (100 * MIB, 4 * MIB),
                (104 * MIB, 4 * MIB),
                (108 * MIB, 4 * MIB)
            ]
        );
    }

    #[test]
    fn idle_clean_chunks_are_cleared_lazily_and_busy_or_dirty_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        let (m, _) = open(d.path(), Arc::new(OsDisk));
        m.set_session(7, true).unwrap();
        m.begin(0, 4096).unwrap();
        m.begin(8 * MIB, 4096).unwrap();
        m.begin(16 * MIB, 4096).unwrap();
        m.end(0, 4096);
        m.end(8 * MIB, 4096);
        // Chunk 2 still in flight; chunk 1 dirty in the dirty map.
        assert_eq!(m.clear_idle(|off, _| off == 8 * MIB).unwrap(), 1);
        assert_eq!(m.set_chunks(), 2);
        drop(m);
        let (_, rec) = open(d.path(), Arc::new(OsDisk));
        assert_eq!(
            rec.unwrap().dirty,
            vec![(8 * MIB, 4 * MIB), (16 * MIB, 4 * MIB)]
        );
    }

    #[test]
    fn a_map_not_valid_for_its_session_recovers_nothing() {
        let d = tempfile::tempdir().unwrap();
        let (m, _) = open(d.path(), Arc::new(OsDisk));
        m.begin(0, 4096).unwrap();
        drop(m);
        assert_eq!(open(d.path(), Arc::new(OsDisk)).1, None);
    }

    #[test]
    fn a_torn_page_makes_the_whole_map_untrusted() {
        let d = tempfile::tempdir().unwrap();
        let disk = Arc::new(FaultDisk::new(OsDisk));
        let (m, _) = open(d.path(), disk.clone());
        m.set_session(7, true).unwrap();
        m.begin(0, 4096).unwrap();
        disk.arm(FaultPoint::TornWrite(100), 0);
        assert!(
            m.begin(400 * MIB, 4096).is_err(),
            "the write must not proceed"
        );
        drop(m);
        // The torn page holds new bits under the old checksum: untrusted.
        assert_eq!(open(d.path(), Arc::new(OsDisk)).1, None);
    }

    #[test]
    fn a_failed_sync_fails_the_write_that_needed_it() {
        let d = tempfile::tempdir().unwrap();
        let disk = Arc::new(FaultDisk::new(OsDisk));
        let (m, _) = open(d.path(), disk.clone());
        disk.arm(FaultPoint::Sync, 0);
        assert!(m.begin(0, 4096).is_err());
        disk.disarm();
        assert_eq!(m.set_chunks(), 0, "a bit not known durable is forgotten");
        let hits = disk.hits.load(std::sync::atomic::Ordering::SeqCst);
        m.begin(0, 4096).unwrap();
        assert_eq!(m.set_chunks(), 1);
        assert_eq!(hits, 1);
    }
}

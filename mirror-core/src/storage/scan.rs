//! Checksum scans: per-block digests of a range of a volume.
//!
//! A scan streams: a reader thread keeps the next chunk's reads in flight while the cores hash
//! the current one (rayon), and each chunk's digests are handed to the caller as a [`ScanMap`]
//! batch before the next is made. Nobody ever holds a whole large volume's digest list to start
//! comparing; callers that want the whole list (the `scan` verb) concatenate batches.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::protocol::messages::{Message, MAX_DIGESTS_PER_FRAME};
use crate::storage::digest::{hex, Algorithm};
use crate::storage::idle;
use crate::storage::volume::{IoPriority, ReadOp, Volume};
use crate::sync::lock;
use crate::units::{BlockIndex, BlockRange, BlockSize};
use crate::{Error, Result};

/// Per-block digests of a run of blocks, in one contiguous buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanMap {
    algorithm: Algorithm,
    first: BlockIndex,
    digests: Vec<u8>,
}

impl ScanMap {
    /// A map of digests for blocks starting at `first`; `digests` holds whole digests.
    pub fn new(algorithm: Algorithm, first: BlockIndex, digests: Vec<u8>) -> Result<Self> {
        if digests.len() % algorithm.digest_len() != 0 {
            return Err(Error::invalid(format!(
                "{} bytes is not a whole number of {algorithm} digests",
                digests.len()
            )));
        }
        Ok(ScanMap {
            algorithm,
            first,
            digests,
        })
    }

    /// An empty map starting at `first`.
    pub fn empty(algorithm: Algorithm, first: BlockIndex) -> Self {
        ScanMap {
            algorithm,
            first,
            digests: Vec::new(),
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The first block covered.
    pub fn first(&self) -> BlockIndex {
        self.first
    }

    /// Number of blocks covered.
    pub fn len(&self) -> usize {
        self.digests.len() / self.algorithm.digest_len()
    }

    /// True when no block is covered.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// The blocks covered.
    pub fn range(&self) -> BlockRange {
        BlockRange {
            start: self.first,
            count: self.len() as u64,
        }
    }

    /// Digest of the `i`-th block of the map (block `first + i`).
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        if i >= self.len() {
            return None;
        }
        let w = self.algorithm.digest_len();
        self.digests.get(i * w..(i + 1) * w)
    }

    /// Every digest, concatenated.
    pub fn as_bytes(&self) -> &[u8] {
        &self.digests
    }

    /// The digest buffer.
    pub fn into_bytes(self) -> Vec<u8> {
        self.digests
    }

    /// `(block, digest)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (BlockIndex, &[u8])> + '_ {
        let first = self.first.0;
        self.digests
            .chunks_exact(self.algorithm.digest_len())
            .enumerate()
            .map(move |(i, d)| (BlockIndex(first + i as u64), d))
    }

    /// Hex digest of the `i`-th block.
    pub fn hex(&self, i: usize) -> Option<String> {
        self.get(i).map(hex)
    }

    /// Appends `other`, which must start where this map ends.
    pub fn extend(&mut self, other: &ScanMap) -> Result<()> {
        if other.algorithm != self.algorithm || other.first.0 != self.range().end() {
            return Err(Error::invalid("scan batches are not contiguous"));
        }
        self.digests.extend_from_slice(&other.digests);
        Ok(())
    }

    /// Runs of blocks whose digests differ from `other`'s (which covers the same blocks).
    pub fn mismatches(&self, other: &ScanMap) -> Vec<BlockRange> {
        let mut runs = RunBuilder::default();
        for ((i, a), (_, b)) in self.iter().zip(other.iter()) {
            if a != b {
                runs.push(i.0);
            }
        }
        runs.finish()
    }
}

/// Collects block indices, in ascending order, into runs.
#[derive(Debug, Default)]
pub struct RunBuilder {
    runs: Vec<BlockRange>,
}

impl RunBuilder {
    /// Adds block `b` (not less than any block added before).
    pub fn push(&mut self, b: u64) {
        match self.runs.last_mut() {
            Some(r) if r.end() == b => r.count += 1,
            _ => self.runs.push(BlockRange::new(b, 1)),
        }
    }

    /// The runs.
    pub fn finish(self) -> Vec<BlockRange> {
        self.runs
    }
}

/// Paces a background job to a byte rate (a token bucket with one second of burst).
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: f64,
    allowance: f64,
    last: Instant,
}

impl RateLimiter {
    /// A limiter at `mib_per_sec` MiB/s.
    pub fn new(mib_per_sec: f64) -> Self {
        let bytes_per_sec = mib_per_sec * 1024.0 * 1024.0;
        RateLimiter {
            bytes_per_sec,
            allowance: 0.0,
            last: Instant::now(),
        }
    }

    /// Waits until `bytes` more may go.
    pub fn take(&mut self, bytes: u64) {
        let now = Instant::now();
        self.allowance = (self.allowance
            + now.duration_since(self.last).as_secs_f64() * self.bytes_per_sec)
            .min(self.bytes_per_sec);
        self.last = now;
        self.allowance -= bytes as f64;
        if self.allowance < 0.0 {
            let wait = -self.allowance / self.bytes_per_sec;
            std::thread::sleep(Duration::from_secs_f64(wait));
        }
    }
}

/// How a scan runs.
#[derive(Debug, Clone, Copy)]
pub struct ScanOptions {
    /// Digest algorithm.
    pub algorithm: Algorithm,
    /// I/O priority of the reads.
    pub priority: IoPriority,
    /// Bytes per batch handed to the caller (rounded to whole blocks).
    pub batch_bytes: usize,
    /// Bytes per read submitted (a batch is read as several reads in flight).
    pub read_bytes: usize,
    /// Where the blocks are hashed.
    pub hashing: Hashing,
    /// Batches hashed at once on every core ([`Hashing::AllCores`]), at least one. With two
    /// (the default) the next batch is already queued on the pool when the current one's last
    /// blocks finish, so no core idles at a batch boundary waiting for the consumer to wake
    /// and hand it more — on a busy machine each such wake-up can cost a scheduler slice.
    pub hash_ahead: usize,
}

/// Where a scan's blocks are hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hashing {
    /// On every core, at the caller's priority (foreground scans: as fast as possible).
    AllCores,
    /// On the `SCHED_IDLE` background threads, in slices of `slice_bytes` with a yield between
    /// them (background jobs: foreground threads get a core the moment they wake).
    Idle {
        /// Bytes hashed between two yields (whole blocks, at least one).
        slice_bytes: usize,
    },
}

impl ScanOptions {
    /// Foreground scan with `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        ScanOptions {
            algorithm,
            priority: IoPriority::Normal,
            batch_bytes: 4 << 20,
            read_bytes: 1 << 20,
            hashing: Hashing::AllCores,
            hash_ahead: 2,
        }
    }

    /// The same, as a background job: idle I/O priority, hashing on the idle threads in slices.
    pub fn background(mut self) -> Self {
        self.priority = IoPriority::Idle;
        self.hashing = Hashing::Idle {
            slice_bytes: idle::SLICE_BYTES,
        };
        self
    }

    fn batch_blocks(&self, bs: BlockSize) -> u64 {
        (self.batch_bytes as u64 / bs.bytes()).max(1)
    }
}

/// Byte span `(offset, len)` of `range` in `vol`, its last block cut at the end of the volume.
pub fn byte_span(vol: &dyn Volume, range: BlockRange) -> (u64, usize) {
    let bs = vol.block_size();
    let offset = bs.offset_of(range.start);
    let end = bs.offset_of(BlockIndex(range.end())).min(vol.size());
    (offset, end.saturating_sub(offset) as usize)
}

/// Checks that `range` lies inside `vol`.
pub fn check_range(vol: &dyn Volume, range: BlockRange) -> Result<()> {
    let blocks = vol.blocks();
    if range.start.0 > blocks || range.count > blocks - range.start.0 {
        return Err(Error::invalid(format!(
            "blocks {}+{} reach past the end of {} ({} blocks)",
            range.start.0,
            range.count,
            vol.name(),
            blocks
        )));
    }
    Ok(())
}

/// Digests of every block of `data`, which starts on a block boundary, on every core.
pub fn hash_blocks(algorithm: Algorithm, bs: BlockSize, data: &[u8], out: &mut Vec<u8>) {
    hash_blocks_with(algorithm, bs, data, out, Hashing::AllCores)
}

fn hash_blocks_with(
    algorithm: Algorithm,
    bs: BlockSize,
    data: &[u8],
    out: &mut Vec<u8>,
    hashing: Hashing,
) {
    if let Hashing::Idle { slice_bytes } = hashing {
        return idle::hash_blocks(algorithm, bs, data, out, slice_bytes);
    }
    let w = algorithm.digest_len();
    let n = data.len().div_ceil(bs.as_usize());
    let start = out.len();
    out.resize(start + n * w, 0);
    out[start..]
        .par_chunks_mut(w)
        .zip(data.par_chunks(bs.as_usize()))
        .with_min_len(16)
        .for_each(|(d, block)| algorithm.digest_into(block, d));
}

/// A byte buffer whose start is page-aligned, so volumes opened with O_DIRECT can read into it
/// directly instead of bouncing through a buffer of their own.
#[derive(Debug, Default)]
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

/// Allocations of dropped [`AlignedBuf`]s of at least [`SPARE_MIN`] bytes, kept for the
/// next ones. A scan's buffers are megabytes, and a fresh allocation of that size costs a
/// page fault and a zeroed page for every 4 KiB it is read into; a secondary reads each chunk
/// a primary asks for into buffers of its own, so without this it paid that for every byte
/// it scanned.
static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
/// Smallest allocation worth keeping.
const SPARE_MIN: usize = 256 << 10;
/// Most allocations kept (a scan holds its reading-ahead buffers, about five, at once).
const SPARE_MAX: usize = 6;

impl AlignedBuf {
    /// Alignment of the start, in bytes.
    pub const ALIGN: usize = 4096;

    /// A buffer of `len` bytes (contents unspecified: it is read into).
    pub fn new(len: usize) -> Self {
        let mut b = AlignedBuf::default();
        b.resize(len);
        b
    }

    /// Makes the buffer `len` bytes long (contents unspecified, allocation reused when it fits).
    pub fn resize(&mut self, len: usize) {
        if self.raw.len() < self.start + len || self.raw.is_empty() {
            let want = len + Self::ALIGN;
            let spare = (want >= SPARE_MIN)
                .then(|| {
                    let mut spare = lock(&SPARE);
                    let i = spare.iter().position(|v| v.len() >= want)?;
                    Some(spare.swap_remove(i))
                })
                .flatten();
            let old = std::mem::replace(&mut self.raw, spare.unwrap_or_else(|| vec![0u8; want]));
            keep_spare(old);
            self.start = self.raw.as_ptr().align_offset(Self::ALIGN).min(Self::ALIGN);
        }
        self.len = len;
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        keep_spare(std::mem::take(&mut self.raw));
    }
}

/// Keeps `raw` for a later [`AlignedBuf`] when it is large and there is room.
fn keep_spare(raw: Vec<u8>) {
    if raw.len() >= SPARE_MIN {
        let mut spare = lock(&SPARE);
        if spare.len() < SPARE_MAX {
            spare.push(raw);
        }
    }
}

/// Reads `range` of `vol` in batches of reads in flight.
fn read_span(vol: &dyn Volume, offset: u64, buf: &mut [u8], opts: &ScanOptions) -> Result<()> {
    let piece = opts.read_bytes.max(vol.block_size().as_usize());
    let mut ops: Vec<ReadOp<'_>> = buf
        .chunks_mut(piece)
        .enumerate()
        .map(|(i, b)| ReadOp {
            offset: offset + (i * piece) as u64,
            buf: b,
        })
        .collect();
    vol.read_batch(&mut ops, opts.priority)
}

/// Scans `range` of `vol`, handing each batch of digests to `sink` in order. `pace` is called
/// with each batch's byte count before it is read (rate limits, yielding to foreground I/O);
/// `sink` returns `false` to stop early.
pub fn scan_range(
    vol: &dyn Volume,
    range: BlockRange,
    opts: ScanOptions,
    pace: impl FnMut(u64) -> Result<()> + Send,
    mut sink: impl FnMut(ScanMap) -> Result<bool>,
) -> Result<()> {
    scan_range_or::<()>(vol, range, opts, pace, None, |event| match event {
        ScanEvent::Batch(map) => sink(map),
        ScanEvent::Also(()) => Ok(true),
    })
}

/// What [`scan_range_or`] hands its consumer.
#[derive(Debug)]
pub enum ScanEvent<M> {
    /// The next batch of digests, in order.
    Batch(ScanMap),
    /// A message of the other channel, that came while the scan waited for a batch.
    Also(M),
}

/// [`scan_range`], and while it waits for the next batch read (a paced scan waits most of
/// the time), the messages of `also` are handed to `sink` as they come: a job answers its
/// peer while its own scan is held back. A disconnected `also` is no longer watched; only a
/// batch's `false` from `sink` stops the scan.
pub fn scan_range_or<M>(
    vol: &dyn Volume,
    range: BlockRange,
    opts: ScanOptions,
    mut pace: impl FnMut(u64) -> Result<()> + Send,
    also: Option<&crossbeam_channel::Receiver<M>>,
    mut sink: impl FnMut(ScanEvent<M>) -> Result<bool>,
) -> Result<()> {
    check_range(vol, range)?;
    let bs = vol.block_size();
    let per_batch = opts.batch_blocks(bs);
    if range.count <= per_batch {
        // One batch: nothing to overlap, so no reader thread (small resync windows are many).
        if range.is_empty() {
            return Ok(());
        }
        let (offset, len) = byte_span(vol, range);
        let mut buf = AlignedBuf::new(len);
        pace(len as u64)?;
        read_span(vol, offset, buf.as_mut_slice(), &opts)?;
        let mut digests = Vec::new();
        hash_blocks_with(
            opts.algorithm,
            bs,
            buf.as_slice(),
            &mut digests,
            opts.hashing,
        );
        sink(ScanEvent::Batch(ScanMap::new(
            opts.algorithm,
            range.start,
            digests,
        )?))?;
        return Ok(());
    }
    let mut also = Also::new(also);
    // Buffers: one being read, up to `ahead` held by the hashing, the rest in the channels.
    let ahead = opts.hash_ahead.max(1);
    let buffers = ahead + 2;
    let (free_tx, free_rx) = crossbeam_channel::bounded::<AlignedBuf>(buffers);
    let (full_tx, full_rx) = crossbeam_channel::bounded::<Result<(BlockIndex, AlignedBuf)>>(2);
    for _ in 0..buffers {
        let _ = free_tx.send(AlignedBuf::default());
    }
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut next = range.start.0;
            while next < range.end() {
                let batch = BlockRange::new(next, per_batch.min(range.end() - next));
                let Ok(mut buf) = free_rx.recv() else { return };
                let (offset, len) = byte_span(vol, batch);
                buf.resize(len);
                let res = pace(len as u64)
                    .and_then(|()| read_span(vol, offset, buf.as_mut_slice(), &opts));
                let failed = res.is_err();
                if full_tx.send(res.map(|()| (batch.start, buf))).is_err() || failed {
                    return;
                }
                next = batch.end();
            }
        });
        let result = (|| {
            if opts.hashing == Hashing::AllCores {
                return hash_pipelined(
                    opts.algorithm,
                    bs,
                    ahead,
                    &full_rx,
                    &free_tx,
                    &mut also,
                    &mut sink,
                );
            }
            while let Some(item) = also.recv(&full_rx, &mut sink)? {
                let (first, buf) = item?;
                let mut digests = Vec::new();
                hash_blocks_with(
                    opts.algorithm,
                    bs,
                    buf.as_slice(),
                    &mut digests,
                    opts.hashing,
                );
                let _ = free_tx.send(buf);
                if !sink(ScanEvent::Batch(ScanMap::new(
                    opts.algorithm,
                    first,
                    digests,
                )?))? {
                    break;
                }
            }
            Ok(())
        })();
        // Unblocks the reader whatever happened.
        drop(full_rx);
        drop(free_tx);
        result
    })
}

/// The other channel of [`scan_range_or`], while it is connected.
struct Also<M>(Option<crossbeam_channel::Receiver<M>>);

impl<M> Also<M> {
    fn new(rx: Option<&crossbeam_channel::Receiver<M>>) -> Self {
        Also(rx.cloned())
    }

    /// The next item of `rx` (None once it is closed), handing the messages of the other
    /// channel that come first to `sink`.
    fn recv<T>(
        &mut self,
        rx: &crossbeam_channel::Receiver<T>,
        sink: &mut impl FnMut(ScanEvent<M>) -> Result<bool>,
    ) -> Result<Option<T>> {
        loop {
            let Some(other) = &self.0 else {
                return Ok(rx.recv().ok());
            };
            crossbeam_channel::select! {
                recv(rx) -> item => return Ok(item.ok()),
                recv(other) -> m => self.hand(m, sink)?,
            }
        }
    }

    /// Hands `m`, received from the other channel, to `sink`; a closed channel is no longer
    /// watched.
    fn hand(
        &mut self,
        m: std::result::Result<M, crossbeam_channel::RecvError>,
        sink: &mut impl FnMut(ScanEvent<M>) -> Result<bool>,
    ) -> Result<()> {
        match m {
            Ok(m) => {
                sink(ScanEvent::Also(m))?;
            }
            Err(_) => self.0 = None,
        }
        Ok(())
    }
}

/// A hashed batch: its sequence number, first block, digests (or the hashing's panic) and buffer.
type Hashed = (u64, BlockIndex, std::thread::Result<Vec<u8>>, AlignedBuf);

/// The consumer of a foreground scan: hands each batch read to the pool as soon as it arrives
/// (at most `ahead` outstanding, so it holds at most one buffer when it waits for the
/// reader) and passes the digests to `sink` in block order. Each batch is hashed in place in the
/// buffer it was read into; only its digests move.
fn hash_pipelined<M>(
    algorithm: Algorithm,
    bs: BlockSize,
    ahead: usize,
    full_rx: &crossbeam_channel::Receiver<Result<(BlockIndex, AlignedBuf)>>,
    free_tx: &crossbeam_channel::Sender<AlignedBuf>,
    also: &mut Also<M>,
    sink: &mut impl FnMut(ScanEvent<M>) -> Result<bool>,
) -> Result<()> {
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<Hashed>();
    rayon::in_place_scope(|scope| {
        let mut ready: BTreeMap<u64, (BlockIndex, Vec<u8>, AlignedBuf)> = BTreeMap::new();
        let (mut sent, mut next, mut reading) = (0u64, 0u64, true);
        loop {
            // Batches may finish out of order; they are handed on in order.
            while let Some((first, digests, buf)) = ready.remove(&next) {
                next += 1;
                let _ = free_tx.send(buf);
                if !sink(ScanEvent::Batch(ScanMap::new(algorithm, first, digests)?))? {
                    return Ok(());
                }
            }
            if !reading && next == sent {
                return Ok(());
            }
            // Whichever comes first: a batch read (while fewer than `ahead` hash), a batch
            // hashed, or a message of `also`.
            let mut sel = crossbeam_channel::Select::new();
            let read = (reading && sent - next < ahead as u64).then(|| sel.recv(full_rx));
            let hashed = (sent > next).then(|| sel.recv(&done_rx));
            let other_rx = also.0.clone();
            let other = other_rx.as_ref().map(|rx| sel.recv(rx));
            let op = sel.select();
            let i = Some(op.index());
            if i == read {
                let Ok(item) = op.recv(full_rx) else {
                    reading = false;
                    continue;
                };
                let (first, buf) = item?;
                let (seq, done_tx) = (sent, done_tx.clone());
                scope.spawn(move |_| {
                    let digests = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        let mut d = Vec::new();
                        hash_blocks(algorithm, bs, buf.as_slice(), &mut d);
                        d
                    }));
                    let _ = done_tx.send((seq, first, digests, buf));
                });
                sent += 1;
            } else if i == hashed {
                let Ok((seq, first, digests, buf)) = op.recv(&done_rx) else {
                    unreachable!("this scope holds a sender")
                };
                let digests = digests.unwrap_or_else(|p| std::panic::resume_unwind(p));
                ready.insert(seq, (first, digests, buf));
            } else if let (true, Some(rx)) = (i == other, &other_rx) {
                also.hand(op.recv(rx), sink)?;
            }
        }
    })
}

/// Digests of every block of `range`, in one map.
pub fn scan_all(vol: &dyn Volume, range: BlockRange, opts: ScanOptions) -> Result<ScanMap> {
    let mut all = ScanMap::empty(opts.algorithm, range.start);
    scan_range(
        vol,
        range,
        opts,
        |_| Ok(()),
        |batch| {
            all.extend(&batch)?;
            Ok(true)
        },
    )?;
    Ok(all)
}

/// The `Digests` messages carrying `map` for request `req`, each within the frame limit. Scans
/// are what the controllers stream, so the framing of a batch lives with the batch.
pub fn digest_messages(req: u64, map: &ScanMap) -> impl Iterator<Item = Message> + '_ {
    let algorithm = map.algorithm();
    let first = map.first().0;
    map.as_bytes()
        .chunks(MAX_DIGESTS_PER_FRAME * algorithm.digest_len())
        .enumerate()
        .map(move |(i, chunk)| Message::Digests {
            req,
            algorithm,
            start: first + (i * MAX_DIGESTS_PER_FRAME) as u64,
            digests: chunk.to_vec(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::volume::MemVolume;

    fn patterned(size: usize) -> MemVolume {
        let bytes: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4096) as u8).collect();
        MemVolume::from_bytes(bytes, BlockSize::DEFAULT)
    }

    #[test]
    fn scan_digests_equal_per_block_hashes_including_partial_last_block() {
        let size = 4096 * 1000 + 123;
        let vol = patterned(size);
        let bytes = vol.to_vec();
        for (alg, background) in Algorithm::ALL
            .into_iter()
            .flat_map(|a| [(a, false), (a, true)])
        {
            let mut opts = ScanOptions::new(alg);
            if background {
                opts = opts.background();
            }
            opts.batch_bytes = 64 << 10; // many batches
            opts.hash_ahead = 1 + alg as usize % 3;
            let map = scan_all(&vol, BlockRange::new(0, vol.blocks()), opts).unwrap();
            assert_eq!(map.len(), 1001);
            for (i, chunk) in bytes.chunks(4096).enumerate() {
                assert_eq!(
                    map.get(i).unwrap(),
                    &alg.digest(chunk)[..],
                    "{alg} block {i}"
                );
            }
        }
    }

    #[test]
    fn scan_of_a_subrange_streams_batches_in_order() {
        let vol = patterned(4096 * 300);
        let mut opts = ScanOptions::new(Algorithm::Crc32);
        opts.batch_bytes = 4096 * 7;
        let mut starts = Vec::new();
        scan_range(
            &vol,
            BlockRange::new(10, 100),
            opts,
            |_| Ok(()),
            |b| {
                starts.push((b.first().0, b.len()));
                Ok(true)
            },
        )
        .unwrap();
        assert_eq!(starts.first(), Some(&(10, 7)));
        assert_eq!(starts.iter().map(|s| s.1).sum::<usize>(), 100);
        assert!(starts.windows(2).all(|w| w[0].0 + w[0].1 as u64 == w[1].0));
    }

    #[test]
    fn a_scan_its_sink_stops_ends_there_on_every_hashing_path() {
        let vol = patterned(4096 * 300);
        for (background, ahead) in [(false, 1), (false, 2), (false, 3), (true, 2)] {
            let mut opts = ScanOptions::new(Algorithm::Md5);
            if background {
                opts = opts.background();
            }
            opts.batch_bytes = 4096 * 10;
            opts.hash_ahead = ahead;
            let mut seen = Vec::new();
            scan_range(
                &vol,
                BlockRange::new(0, 300),
                opts,
                |_| Ok(()),
                |b| {
                    seen.push(b.first().0);
                    Ok(seen.len() < 3)
                },
            )
            .unwrap();
            assert_eq!(
                seen,
                vec![0, 10, 20],
                "background: {background}, ahead {ahead}"
            );
        }
    }

    #[test]
    fn scan_past_the_end_is_refused() {
        let vol = patterned(4096 * 4);
        let err = scan_all(
            &vol,
            BlockRange::new(2, 3),
            ScanOptions::new(Algorithm::Md5),
        )
        .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
    }

    #[test]
    fn aligned_buffers_start_on_a_page_and_keep_their_length() {
        let mut b = AlignedBuf::new(10_000);
        assert_eq!(b.as_slice().as_ptr() as usize % AlignedBuf::ALIGN, 0);
        assert_eq!(b.as_slice().len(), 10_000);
        b.as_mut_slice()[9_999] = 7;
        b.resize(100);
        assert_eq!(b.as_slice().len(), 100);
        b.resize(1 << 20);
        assert_eq!(b.as_slice().as_ptr() as usize % AlignedBuf::ALIGN, 0);
        assert_eq!(b.as_mut_slice().len(), 1 << 20);
    }

    #[test]
    fn large_buffers_are_kept_for_reuse_up_to_a_bound() {
        let bufs: Vec<AlignedBuf> = (0..SPARE_MAX + 4)
            .map(|_| AlignedBuf::new(1 << 20))
            .collect();
        drop(bufs);
        assert!(lock(&SPARE).len() <= SPARE_MAX);
        assert!(lock(&SPARE).iter().all(|v| v.len() >= SPARE_MIN));
        // A buffer made from a kept allocation is aligned and as long as asked, and one
        // shrunk and grown again stays so.
        let mut b = AlignedBuf::new(3 << 20);
        assert_eq!(b.as_slice().as_ptr() as usize % AlignedBuf::ALIGN, 0);
        assert_eq!(b.as_slice().len(), 3 << 20);
        b.resize(4096);
        b.resize(2 << 20);
        assert_eq!(b.as_slice().as_ptr() as usize % AlignedBuf::ALIGN, 0);
        assert_eq!(b.as_mut_slice().len(), 2 << 20);
    }

    #[test]
    fn mismatches_are_reported_as_runs() {
        let a = ScanMap::new(Algorithm::Crc32, BlockIndex(5), vec![0; 4 * 6]).unwrap();
        let mut d = vec![0; 4 * 6];
        d[4] = 1; // block 6
        d[8] = 1; // block 7
        d[20] = 1; // block 10
        let b = ScanMap::new(Algorithm::Crc32, BlockIndex(5), d).unwrap();
        assert_eq!(
            a.mismatches(&b),
            vec![BlockRange::new(6, 2), BlockRange::new(10, 1)]
        );
    }
}

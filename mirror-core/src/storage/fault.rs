//! A fault-injecting [`Volume`] wrapper for tests: simulated power loss, failed writes and
//! flushes with a chosen errno, and torn writes.
//!
//! The model is a disk with a volatile write cache. A write reaches the wrapped volume at once
//! (so reads see it, as they would from the page cache), and its pre-image is kept until a
//! flush succeeds. What the wrapper promises, and tests rely on:
//! - **A successful flush makes every write completed before it durable**: its pre-images are
//!   dropped and no later fault undoes it.
//! - **Power loss undoes writes since the last successful flush** ([`FaultVolume::power_loss`]
//!   undoes all of them, [`FaultVolume::power_loss_partial`] a random subset, keyed by a seed),
//!   newest first, so the contents never fall behind the last successful flush. The volume then
//!   refuses all I/O with `EIO` until [`FaultVolume::power_on`].
//! - **A failed flush loses what it did not make durable** (as Linux does after a writeback
//!   error: the pages are marked clean): the unflushed writes are undone before the error is
//!   returned, so a test can check that a resync repairs exactly those blocks.
//! - A failed write changes nothing, except a torn one, which leaves its first bytes written.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::units::BlockSize;
use crate::volume::{check_io, Volume};
use crate::{Error, Result};

/// One fault armed on the Nth operation of a kind (counted from 1, from the time it is armed).
#[derive(Debug, Clone, Copy)]
struct Armed {
    countdown: u64,
    errno: i32,
    /// For writes: bytes of the write that reach the volume before it fails.
    torn: Option<usize>,
}

#[derive(Debug, Default)]
struct State {
    /// (offset, contents before the write), oldest first, since the last successful flush.
    unflushed: VecDeque<(u64, Vec<u8>)>,
    writes: u64,
    flushes: u64,
    failed_writes: u64,
    failed_flushes: u64,
    power_losses: u64,
    next_write: Option<Armed>,
    next_flush: Option<Armed>,
    /// Every write fails with this errno (a full or read-only disk) until cleared.
    all_writes: Option<i32>,
    /// Every flush fails with this errno until cleared.
    all_flushes: Option<i32>,
    /// Powered off: every operation fails with `EIO`.
    off: bool,
}

/// What a [`FaultVolume`] has seen, for a test's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Writes that succeeded.
    pub writes: u64,
    /// Flushes that succeeded.
    pub flushes: u64,
    /// Writes failed by an injected fault (torn ones included).
    pub failed_writes: u64,
    /// Flushes failed by an injected fault.
    pub failed_flushes: u64,
    /// Simulated power losses.
    pub power_losses: u64,
    /// Writes not yet made durable by a flush.
    pub unflushed: u64,
}

/// A [`Volume`] over another one that injects the faults a test arms.
#[derive(Debug)]
pub struct FaultVolume {
    inner: Arc<dyn Volume>,
    name: String,
    state: Mutex<State>,
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl FaultVolume {
    /// Wraps `inner`; no fault is armed.
    pub fn new(inner: Arc<dyn Volume>) -> Self {
        FaultVolume {
            name: inner.name().to_owned(),
            inner,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `n`th write from now (1 = the next one) fails with `errno`, changing nothing.
    pub fn fail_write(&self, n: u64, errno: i32) {
        self.state().next_write = Some(Armed {
            countdown: n.max(1),
            errno,
            torn: None,
        });
    }

    /// The `n`th write from now writes only its first `keep` bytes, then fails with `errno`.
    pub fn tear_write(&self, n: u64, keep: usize, errno: i32) {
        self.state().next_write = Some(Armed {
            countdown: n.max(1),
            errno,
            torn: Some(keep),
        });
    }

    /// The `n`th flush from now fails with `errno`, losing the writes it should have made
    /// durable.
    pub fn fail_flush(&self, n: u64, errno: i32) {
        self.state().next_flush = Some(Armed {
            countdown: n.max(1),
            errno,
            torn: None,
        });
    }

    /// Every write fails with `errno` (`Some(ENOSPC)`: the disk is full) until `None`.
    pub fn fail_all_writes(&self, errno: Option<i32>) {
        self.state().all_writes = errno;
    }

    /// Every flush fails with `errno` until `None`.
    pub fn fail_all_flushes(&self, errno: Option<i32>) {
        self.state().all_flushes = errno;
    }

    /// Disarms every fault (a powered-off volume stays off).
    pub fn clear_faults(&self) {
        let mut s = self.state();
        s.next_write = None;
        s.next_flush = None;
        s.all_writes = None;
        s.all_flushes = None;
    }

    /// Simulated power loss: every write since the last successful flush is undone, then the
    /// volume refuses all I/O until [`power_on`](Self::power_on). Returns the byte ranges
    /// undone.
    pub fn power_loss(&self) -> Result<Vec<(u64, u64)>> {
        self.power_loss_with(|_| true)
    }

    /// Power loss where each unflushed write is lost or kept at random (seeded), as a disk
    /// cache that wrote back part of its contents would. Returns the byte ranges undone.
    pub fn power_loss_partial(&self, seed: u64) -> Result<Vec<(u64, u64)>> {
        let mut x = seed | 1;
        self.power_loss_with(move |_| {
            // xorshift64: enough to pick a subset reproducibly.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x & 1 == 0
        })
    }

    fn power_loss_with(&self, mut lose: impl FnMut(u64) -> bool) -> Result<Vec<(u64, u64)>> {
        let mut s = self.state();
        s.power_losses += 1;
        s.off = true;
        self.undo(&mut s, &mut lose)
    }

    /// Undoes unflushed writes, newest first (those `lose` picks); forgets all of them.
    fn undo(&self, s: &mut State, lose: &mut impl FnMut(u64) -> bool) -> Result<Vec<(u64, u64)>> {
        let mut undone = Vec::new();
        while let Some((offset, before)) = s.unflushed.pop_back() {
            if lose(offset) {
                self.inner.write_at(offset, &before)?;
                undone.push((offset, before.len() as u64));
            }
        }
        self.inner.flush()?;
        Ok(undone)
    }

    /// Powers the volume back on after a [`power_loss`](Self::power_loss).
    pub fn power_on(&self) {
        self.state().off = false;
    }

    /// What the volume has seen so far.
    pub fn counts(&self) -> FaultCounts {
        let s = self.state();
        FaultCounts {
            writes: s.writes,
            flushes: s.flushes,
            failed_writes: s.failed_writes,
            failed_flushes: s.failed_flushes,
            power_losses: s.power_losses,
            unflushed: s.unflushed.len() as u64,
        }
    }

    fn off_error(&self, op: &'static str, offset: u64) -> Error {
        Error::io(&self.name, op, offset, errno(libc_eio()))
    }

    /// Writes the first `keep` bytes of `data` at `offset`, whole blocks at a time: a block cut
    /// in the middle is read, patched and written back.
    fn write_prefix(&self, offset: u64, data: &[u8], keep: usize) -> Result<()> {
        let keep = keep.min(data.len());
        if keep == 0 {
            return Ok(());
        }
        let bs = self.inner.block_size().as_usize();
        let whole = keep / bs * bs;
        if whole > 0 {
            self.inner.write_at(offset, &data[..whole])?;
        }
        if whole < keep {
            let at = offset + whole as u64;
            let len = bs.min((self.inner.size() - at) as usize);
            let mut block = vec![0u8; len];
            self.inner.read_at(at, &mut block)?;
            block[..keep - whole].copy_from_slice(&data[whole..keep]);
            self.inner.write_at(at, &block)?;
        }
        Ok(())
    }
}

/// `EIO`, without a libc dependency in core.
fn libc_eio() -> i32 {
    5
}

fn fire(armed: &mut Option<Armed>) -> Option<Armed> {
    let a = armed.as_mut()?;
    a.countdown -= 1;
    if a.countdown == 0 {
        armed.take()
    } else {
        None
    }
}

impl Volume for FaultVolume {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn block_size(&self) -> BlockSize {
        self.inner.block_size()
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if self.state().off {
            return Err(self.off_error("read", offset));
        }
        self.inner.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        check_io(
            &self.name,
            self.size(),
            self.block_size(),
            offset,
            data.len() as u64,
        )?;
        // Held across the write, so pre-images and writes are recorded in one order.
        let mut s = self.state();
        if s.off {
            return Err(self.off_error("write", offset));
        }
        let fault = fire(&mut s.next_write).or(s.all_writes.map(|e| Armed {
            countdown: 0,
            errno: e,
            torn: None,
        }));
        let mut before = vec![0u8; data.len()];
        self.inner.read_at(offset, &mut before)?;
        if let Some(f) = fault {
            s.failed_writes += 1;
            if let Some(keep) = f.torn {
                s.unflushed.push_back((offset, before));
                self.write_prefix(offset, data, keep)?;
            }
            return Err(Error::io(&self.name, "write", offset, errno(f.errno)));
        }
        self.inner.write_at(offset, data)?;
        s.unflushed.push_back((offset, before));
        s.writes += 1;
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        let mut s = self.state();
        if s.off {
            return Err(self.off_error("flush", 0));
        }
        let fault = fire(&mut s.next_flush).or(s.all_flushes.map(|e| Armed {
            countdown: 0,
            errno: e,
            torn: None,
        }));
        if let Some(f) = fault {
            s.failed_flushes += 1;
            self.undo(&mut s, &mut |_| true)?;
            return Err(Error::io(&self.name, "flush", 0, errno(f.errno)));
        }
        self.inner.flush()?;
        s.unflushed.clear();
        s.flushes += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::MemVolume;
    use crate::ErrorKind;

    const BS: usize = 4096;

    fn vol() -> (Arc<MemVolume>, FaultVolume) {
        let mem = Arc::new(MemVolume::new(8 * BS as u64, BlockSize::DEFAULT));
        let f = FaultVolume::new(mem.clone());
        (mem, f)
    }

    #[test]
    fn power_loss_drops_only_writes_since_the_last_flush() {
        let (mem, f) = vol();
        f.write_at(0, &[1; BS]).unwrap();
        f.flush().unwrap();
        f.write_at(0, &[2; BS]).unwrap();
        f.write_at(BS as u64, &[3; BS]).unwrap();
        f.write_at(0, &[4; BS]).unwrap();
        let undone = f.power_loss().unwrap();
        assert_eq!(undone.len(), 3);
        let got = mem.to_vec();
        assert_eq!(&got[..BS], &[1; BS][..]);
        assert_eq!(&got[BS..2 * BS], &[0; BS][..]);
        let err = f.read_at(0, &mut [0; BS]).unwrap_err();
        assert_eq!(err.io_error().and_then(|e| e.raw_os_error()), Some(5));
        f.power_on();
        f.write_at(0, &[5; BS]).unwrap();
        assert_eq!(f.counts().power_losses, 1);
    }

    #[test]
    fn partial_power_loss_never_goes_behind_the_last_flush() {
        for seed in 0..32 {
            let (mem, f) = vol();
            f.write_at(0, &[1; 2 * BS]).unwrap();
            f.flush().unwrap();
            for i in 0..10u8 {
                f.write_at((i as u64 % 2) * BS as u64, &[10 + i; BS])
                    .unwrap();
            }
            f.power_loss_partial(seed).unwrap();
            let got = mem.to_vec();
            for b in 0..2 {
                let v = got[b * BS];
                assert!(
                    v == 1 || (10..20).contains(&v),
                    "seed {seed}: block {b} holds {v}"
                );
                assert!(got[b * BS..(b + 1) * BS].iter().all(|x| *x == v));
            }
        }
    }

    #[test]
    fn nth_write_fails_with_its_errno_and_changes_nothing() {
        let (mem, f) = vol();
        f.fail_write(2, 28);
        f.write_at(0, &[1; BS]).unwrap();
        let err = f.write_at(BS as u64, &[2; BS]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io);
        assert_eq!(err.io_error().and_then(|e| e.raw_os_error()), Some(28));
        assert_eq!(&mem.to_vec()[BS..2 * BS], &[0; BS][..]);
        f.write_at(BS as u64, &[2; BS]).unwrap();
        assert_eq!(f.counts().failed_writes, 1);
    }

    #[test]
    fn failed_flush_loses_the_unflushed_writes() {
        let (mem, f) = vol();
        f.write_at(0, &[1; BS]).unwrap();
        f.flush().unwrap();
        f.write_at(0, &[2; BS]).unwrap();
        f.fail_flush(1, 5);
        assert!(f.flush().is_err());
        assert_eq!(&mem.to_vec()[..BS], &[1; BS][..]);
        f.flush().unwrap();
    }

    #[test]
    fn torn_write_leaves_its_first_bytes() {
        let (mem, f) = vol();
        f.tear_write(1, BS + 512, 5);
        assert!(f.write_at(0, &[7; 2 * BS]).is_err());
        let got = mem.to_vec();
        assert!(got[..BS + 512].iter().all(|x| *x == 7));
        assert!(got[BS + 512..2 * BS].iter().all(|x| *x == 0));
        // The torn write is unflushed: power loss undoes it.
        f.power_loss().unwrap();
        assert!(mem.to_vec().iter().all(|x| *x == 0));
    }

    #[test]
    fn persistent_enospc_until_cleared() {
        let (_mem, f) = vol();
        f.fail_all_writes(Some(28));
        for _ in 0..3 {
            assert!(f.write_at(0, &[1; BS]).is_err());
        }
        f.fail_all_writes(None);
        f.write_at(0, &[1; BS]).unwrap();
        crate::volume::conformance::run(&FaultVolume::new(Arc::new(MemVolume::new(
            4096 * 5 + 100,
            BlockSize::DEFAULT,
        ))));
    }
}

//! Write-zeroes and trim: a range made zero on the local volume and on the secondary,
//! replicated in order exactly like a write — under the same region locks, registered as
//! pending before it is queued, acknowledged per the replication mode, and put in the dirty
//! map when the link is down or lost before the ack.
//!
//! Trim is not advisory: it releases storage where a volume can and leaves the range reading
//! as zeros on both sides, so the pair stays byte-equal and scans compare it exactly. A range
//! travels as a few small frames whatever its length (one per [`ZERO_SPAN`]), never as data.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::conn::{PendingKind, Waiter};
use super::{Primary, WriteOutcome};
use crate::config::ReplicationMode;
use crate::protocol::messages::Message;
use crate::storage::volume::check_io;
use crate::sync::lock;
use crate::Result;

/// Most bytes one WriteZeroes or Trim frame covers. The secondary applies a frame before it
/// reads the next (a heartbeat included), and a volume that cannot zero by itself writes
/// zeros: a bounded span keeps one frame's work well inside the link timeout even then (64 MiB
/// at 100 MB/s is under a second), and costs 37 bytes on the wire.
pub const ZERO_SPAN: u64 = 64 << 20;

/// Which zeroing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zeroing {
    WriteZeroes,
    Trim,
}

impl Primary {
    /// Makes `[offset, offset + len)` zero locally and on the secondary, the storage kept
    /// allocated where the volumes can. The range follows the write contract (block-aligned
    /// offset, whole blocks but the volume's last); it may be as long as the volume.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<WriteOutcome> {
        self.zero(Zeroing::WriteZeroes, offset, len)
    }

    /// Trims `[offset, offset + len)` locally and on the secondary: the storage is released
    /// where the volumes can (hole punching, discard) and the range reads as zeros on both
    /// sides afterwards — trim here means "contents become zero", so coherence and scans stay
    /// exact. Same contract and outcomes as [`write_zeroes`](Self::write_zeroes).
    pub fn trim(&self, offset: u64, len: u64) -> Result<WriteOutcome> {
        self.zero(Zeroing::Trim, offset, len)
    }

    /// The write path of [`Primary::submit`], for a range of zeros.
    fn zero(&self, how: Zeroing, offset: u64, len: u64) -> Result<WriteOutcome> {
        self.check_open()?;
        let inner = &*self.inner;
        let vol = &*inner.volume;
        check_io(vol.name(), vol.size(), vol.block_size(), offset, len)?;
        if len == 0 {
            return Ok(WriteOutcome::Replicated);
        }
        inner.last_write_ms.store(
            inner.started.elapsed().as_millis() as u64 + 1,
            Ordering::Relaxed,
        );
        let sync = inner.config.mode == ReplicationMode::Sync;
        let mut waiters = Vec::new();
        let mut degraded = false;
        {
            let _guards = inner.locks.lock(offset, len);
            match how {
                Zeroing::WriteZeroes => vol.write_zeroes(offset, len)?,
                Zeroing::Trim => vol.trim(offset, len)?,
            }
            let conn = lock(&inner.conn).clone().filter(|c| !c.is_dead());
            let end = offset + len;
            let mut off = offset;
            while off < end {
                // ZERO_SPAN is a multiple of every block size, so each span stays aligned.
                let n = (end - off).min(ZERO_SPAN);
                let queued = match &conn {
                    Some(c) => {
                        let w = sync.then(|| Arc::new(Waiter::default()));
                        let ok = c.submit(
                            |seq| match how {
                                Zeroing::WriteZeroes => Message::WriteZeroes {
                                    seq,
                                    offset: off,
                                    len: n,
                                    flags: 0,
                                },
                                Zeroing::Trim => Message::Trim {
                                    seq,
                                    offset: off,
                                    len: n,
                                    flags: 0,
                                },
                            },
                            PendingKind::Write {
                                offset: off,
                                len: n,
                            },
                            w.clone(),
                            !sync,
                        )?;
                        if ok {
                            waiters.extend(w);
                        }
                        ok
                    }
                    None => false,
                };
                if !queued {
                    lock(&inner.dirty).mark(off, n);
                    degraded = true;
                }
                off += n;
            }
        }
        if degraded {
            inner.poke();
        }
        for w in waiters {
            if !w.wait() {
                degraded = true;
            }
        }
        Ok(if degraded {
            WriteOutcome::Degraded
        } else if sync {
            WriteOutcome::Replicated
        } else {
            WriteOutcome::Queued
        })
    }
}

//! Write-zeroes and trim: a range made zero on the local volume and on the secondary,
//! replicated in order by the write path itself ([`super::replicate`]) — the same write-intent
//! marking, region locks, durability flags, dirty map and on-disconnect policy as a write.
//!
//! Trim is not advisory: it releases storage where a volume can and leaves the range reading
//! as zeros on both sides, so the pair stays byte-equal and scans compare it exactly. A range
//! travels as a few small frames whatever its length (one per [`ZERO_SPAN`]), never as data.

use super::replicate::Payload;
use super::{Primary, WriteOutcome};
use crate::Result;

/// Most bytes one WriteZeroes or Trim frame covers. The secondary applies a frame before it
/// reads the next (a heartbeat included), and a volume that cannot zero by itself writes
/// zeros: a bounded span keeps one frame's work well inside the link timeout even then (64 MiB
/// at 100 MB/s is under a second), and costs 37 bytes on the wire.
pub const ZERO_SPAN: u64 = 64 << 20;

/// Which zeroing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Zeroing {
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

    fn zero(&self, how: Zeroing, offset: u64, len: u64) -> Result<WriteOutcome> {
        self.submit_payload(offset, Payload::Zero(how, len), true)
    }
}

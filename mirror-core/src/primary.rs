//! The primary controller (API; the engine fills it in).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::config::PrimaryConfig;
use crate::digest::Algorithm;
use crate::report::{Report, Status};
use crate::scan::ScanMap;
use crate::units::BlockRange;
use crate::volume::Volume;
use crate::Result;

/// What became of a replicated write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The secondary has it (sync mode).
    Replicated,
    /// Queued on the link (async mode).
    Queued,
    /// No link: the range is marked in the dirty map.
    Degraded,
}

/// Progress of a long job: `done` of `total` blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Blocks compared so far.
    pub done: u64,
    /// Blocks to compare.
    pub total: u64,
}

/// Options of one resync or verify.
#[derive(Default)]
pub struct JobOptions<'a> {
    /// Compare every block, whatever the dirty map says.
    pub full: bool,
    /// Called as the job advances.
    pub progress: Option<&'a (dyn Fn(Progress) + Sync)>,
    /// Set to stop the job early ([`Error::Cancelled`](crate::Error::Cancelled)).
    pub cancel: Option<&'a AtomicBool>,
    /// How long to wait for the link.
    pub connect_timeout: Option<Duration>,
}

impl std::fmt::Debug for JobOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobOptions")
            .field("full", &self.full)
            .finish_non_exhaustive()
    }
}

/// The primary side of a mirrored pair.
#[derive(Debug)]
pub struct Primary {
    _volume: Arc<dyn Volume>,
}

impl Primary {
    /// Opens a primary over `volume`; it connects to `config.peer` in the background.
    pub fn open(volume: Arc<dyn Volume>, config: PrimaryConfig) -> Result<Primary> {
        let _ = config;
        Ok(Primary { _volume: volume })
    }

    /// Writes `data` at `offset` locally, then replicates it.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<WriteOutcome> {
        let _ = (offset, data);
        todo!()
    }

    /// Replicates `data`, already written locally at `offset`.
    pub fn replicate(&self, offset: u64, data: &[u8]) -> Result<WriteOutcome> {
        let _ = (offset, data);
        todo!()
    }

    /// Records that `[offset, offset + len)` changed and the secondary lacks it.
    pub fn mark_dirty(&self, offset: u64, len: u64) -> Result<()> {
        let _ = (offset, len);
        todo!()
    }

    /// Flushes the local volume and, when connected, the secondary's.
    pub fn flush(&self) -> Result<()> {
        todo!()
    }

    /// Per-block digests of `range` of the local volume.
    pub fn scan(&self, algorithm: Algorithm, range: BlockRange) -> Result<ScanMap> {
        let _ = (algorithm, range);
        todo!()
    }

    /// Makes the secondary coherent now.
    pub fn resync(&self) -> Result<Report> {
        self.resync_with(&JobOptions::default())
    }

    /// [`resync`](Self::resync) with options.
    pub fn resync_with(&self, opts: &JobOptions<'_>) -> Result<Report> {
        let _ = opts;
        todo!()
    }

    /// Compares every block, repairing nothing.
    pub fn verify(&self) -> Result<Report> {
        self.verify_with(&JobOptions::default())
    }

    /// [`verify`](Self::verify) with options.
    pub fn verify_with(&self, opts: &JobOptions<'_>) -> Result<Report> {
        let _ = opts;
        todo!()
    }

    /// Waits until the link is up and handshaken.
    pub fn wait_connected(&self, timeout: Duration) -> Result<()> {
        let _ = timeout;
        todo!()
    }

    /// A snapshot of the primary's state.
    pub fn status(&self) -> Status {
        todo!()
    }

    /// Stops the primary: waits for queued writes (bounded by the link timeout), then closes
    /// the link. Later calls fail with [`Error::Closed`](crate::Error::Closed).
    pub fn close(&self) -> Result<()> {
        todo!()
    }
}

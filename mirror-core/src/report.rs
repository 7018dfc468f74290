//! What a resync, verify or periodic scan reports, and the primary's status.

use std::fmt;

use crate::config::CompareSide;
use crate::storage::digest::Algorithm;
use crate::units::BlockRange;

/// How a resync found what to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncMode {
    /// Nothing was owed.
    None,
    /// The dirty map drove it: only dirty regions were compared.
    DirtyMap,
    /// The dirty map was not valid: every block was compared.
    FullScan,
    /// A periodic low-priority scan.
    Periodic,
    /// A comparison that repairs nothing.
    Verify,
}

impl ResyncMode {
    /// Lower-case name, as `--json` reports spell it.
    pub fn name(self) -> &'static str {
        match self {
            ResyncMode::None => "none",
            ResyncMode::DirtyMap => "dirty-map",
            ResyncMode::FullScan => "full-scan",
            ResyncMode::Periodic => "periodic",
            ResyncMode::Verify => "verify",
        }
    }
}

impl fmt::Display for ResyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The result of a resync, a verify or a periodic scan.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// How it ran.
    pub mode: ResyncMode,
    /// Digest algorithm.
    pub algorithm: Algorithm,
    /// Which side compared.
    pub compare: CompareSide,
    /// Blocks compared.
    pub blocks: u64,
    /// Blocks found different.
    pub mismatched: u64,
    /// Blocks whose contents were sent.
    pub blocks_sent: u64,
    /// Bytes the primary sent on the link during the job.
    pub bytes_sent: u64,
    /// Bytes the primary received on the link during the job.
    pub bytes_received: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Runs of mismatched blocks (for verify; at most [`Report::MAX_RANGES`] listed).
    pub mismatched_ranges: Vec<BlockRange>,
}

impl Report {
    /// Most mismatched runs a report lists.
    pub const MAX_RANGES: usize = 10_000;

    pub(crate) fn new(mode: ResyncMode, algorithm: Algorithm, compare: CompareSide) -> Self {
        Report {
            mode,
            algorithm,
            compare,
            blocks: 0,
            mismatched: 0,
            blocks_sent: 0,
            bytes_sent: 0,
            bytes_received: 0,
            seconds: 0.0,
            mismatched_ranges: Vec::new(),
        }
    }

    /// True when no block differed.
    pub fn coherent(&self) -> bool {
        self.mismatched == 0
    }
}

/// Where a primary's link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// No link; writes mark the dirty map. The primary keeps trying to connect.
    Disconnected,
    /// Connected, resyncing.
    Resyncing,
    /// Connected and coherent apart from writes in flight.
    Connected,
    /// Closed by its owner.
    Closed,
}

impl LinkState {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            LinkState::Disconnected => "disconnected",
            LinkState::Resyncing => "resyncing",
            LinkState::Connected => "connected",
            LinkState::Closed => "closed",
        }
    }
}

/// A snapshot of a primary.
#[derive(Debug, Clone)]
pub struct Status {
    /// Link state.
    pub state: LinkState,
    /// True when the dirty map can drive the next resync (otherwise a full scan is owed).
    pub map_valid: bool,
    /// Regions dirty or in flight.
    pub dirty_regions: u64,
    /// Bytes those regions cover.
    pub dirty_bytes: u64,
    /// Bytes per region.
    pub region_size: u64,
    /// Replicated writes not yet acknowledged by the secondary.
    pub pending_writes: u64,
    /// Bytes sent on every link since open.
    pub bytes_sent: u64,
    /// Bytes received on every link since open.
    pub bytes_received: u64,
    /// Connections made since open.
    pub connections: u64,
    /// The last link or resync error.
    pub last_error: Option<String>,
    /// The last resync or periodic scan, if any.
    pub last_report: Option<Report>,
}

//! What a resync, verify or periodic scan reports, and the primary's status.
//!
//! [`Report::FIELDS`] and [`Status::FIELDS`] are the one list of each type's fields. The
//! adapters that copy them into their own shapes (the CLI's `--json`, the C `mirror_report` and
//! `mirror_status`, the Python `Report` and `Status`) are checked against these lists, at
//! compile time with [`same_field_names`] or by a test, so a field added here cannot be
//! forgotten there.

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

    /// The names of a report's fields, in declaration order.
    pub const FIELDS: &'static [&'static str] = &[
        "mode",
        "algorithm",
        "compare",
        "blocks",
        "mismatched",
        "blocks_sent",
        "bytes_sent",
        "bytes_received",
        "seconds",
        "mismatched_ranges",
    ];

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

    /// True when the pair is coherent after the job: always after a resync or periodic scan
    /// (which return only once every mismatched block was repaired and acknowledged), and
    /// after a verify when no block differed. [`mismatched`](Self::mismatched) keeps what
    /// was found.
    pub fn coherent(&self) -> bool {
        self.mode != ResyncMode::Verify || self.mismatched == 0
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
    /// The last scan the secondary led (on connection or periodic), as the secondary
    /// reported it (its bytes are the secondary's), if any.
    pub last_secondary_report: Option<Report>,
    /// Bytes the running job (resync, verify or periodic scan) still has to compare (the last
    /// job's, zero at its end; zero before any).
    pub job_remaining_bytes: u64,
    /// Seconds that job needs still, at its recent rate (smoothed): zero once it ended, None
    /// before any job or while no rate is measured yet.
    pub job_eta_seconds: Option<f64>,
}

impl Status {
    /// The names of a status's fields, in declaration order.
    pub const FIELDS: &'static [&'static str] = &[
        "state",
        "map_valid",
        "dirty_regions",
        "dirty_bytes",
        "region_size",
        "pending_writes",
        "bytes_sent",
        "bytes_received",
        "connections",
        "last_error",
        "last_report",
        "last_secondary_report",
        "job_remaining_bytes",
        "job_eta_seconds",
    ];
}

/// True when `a` and `b` hold the same names in the same order. A `const fn`, so an adapter
/// can check its copy of a field list against [`Report::FIELDS`] or [`Status::FIELDS`] in a
/// `const` assertion, at compile time.
pub const fn same_field_names(a: &[&str], b: &[&str]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        let (x, y) = (a[i].as_bytes(), b[i].as_bytes());
        if x.len() != y.len() {
            return false;
        }
        let mut j = 0;
        while j < x.len() {
            if x[j] != y[j] {
                return false;
            }
            j += 1;
        }
        i += 1;
    }
    true
}

/// The field names of a struct, as a `&'static [&'static str]`, with a check that the list is
/// exhaustive: the struct pattern inside has no `..`, so a field added to or removed from the
/// struct stops the build until the list follows. Used by the tests here and by the adapters.
#[macro_export]
macro_rules! field_names {
    ($ty:ident { $($field:ident),* $(,)? }) => {{
        #[allow(dead_code)]
        fn exhaustive(v: $ty) {
            let $ty { $($field: _),* } = v;
        }
        &[$(stringify!($field)),*]
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_field_list_names_every_field_in_order() {
        let names: &[&str] = field_names!(Report {
            mode,
            algorithm,
            compare,
            blocks,
            mismatched,
            blocks_sent,
            bytes_sent,
            bytes_received,
            seconds,
            mismatched_ranges,
        });
        assert_eq!(names, Report::FIELDS);
    }

    #[test]
    fn status_field_list_names_every_field_in_order() {
        let names: &[&str] = field_names!(Status {
            state,
            map_valid,
            dirty_regions,
            dirty_bytes,
            region_size,
            pending_writes,
            bytes_sent,
            bytes_received,
            connections,
            last_error,
            last_report,
            last_secondary_report,
            job_remaining_bytes,
            job_eta_seconds,
        });
        assert_eq!(names, Status::FIELDS);
    }

    #[test]
    fn field_name_lists_compare_by_name_and_order() {
        assert!(same_field_names(&["a", "bc"], &["a", "bc"]));
        assert!(!same_field_names(&["a", "bc"], &["bc", "a"]));
        assert!(!same_field_names(&["a", "bc"], &["a", "bd"]));
        assert!(!same_field_names(&["a"], &["a", "b"]));
    }
}

//! The C enums and `#[repr(C)]` structs, and their one conversion from the engine's types.
//!
//! Enum values are ABI: explicit, never reused. Functions take enum arguments as `uint32_t`
//! and check them ([`CEnum::from_c`]), because C can pass any number. Structs are written by
//! the library only; their layout changes only with the major version.

use mirror_core::{
    Algorithm, CompareSide, Durability, LinkState, ReplicationMode, Report, ResyncMode,
    SecondaryStatus, Status, WriteOutcome,
};
use mirror_uring::IoBackend;

use crate::args::CEnum;

macro_rules! c_enum {
    ($name:ident, $cname:literal, [$($variant:ident),+ $(,)?]) => {
        impl CEnum for $name {
            const NAME: &'static str = $cname;
            const ALL: &'static [Self] = &[$($name::$variant),+];
            fn value(self) -> u32 {
                self as u32
            }
        }
    };
}

/// A per-block digest algorithm. The values are the wire ids.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum mirror_algorithm {
    /// CRC-32 (IEEE, as zlib's `crc32`): 4-byte digests, big-endian.
    Crc32 = 1,
    /// MD5: 16-byte digests. The default.
    Md5 = 2,
    /// SHA-1: 20-byte digests.
    Sha1 = 3,
}
c_enum!(mirror_algorithm, "mirror_algorithm", [Crc32, Md5, Sha1]);

impl From<mirror_algorithm> for Algorithm {
    fn from(a: mirror_algorithm) -> Self {
        match a {
            mirror_algorithm::Crc32 => Algorithm::Crc32,
            mirror_algorithm::Md5 => Algorithm::Md5,
            mirror_algorithm::Sha1 => Algorithm::Sha1,
        }
    }
}

impl From<Algorithm> for mirror_algorithm {
    fn from(a: Algorithm) -> Self {
        match a {
            Algorithm::Crc32 => mirror_algorithm::Crc32,
            Algorithm::Md5 => mirror_algorithm::Md5,
            Algorithm::Sha1 => mirror_algorithm::Sha1,
        }
    }
}

/// When a replicated write is acknowledged to its caller.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum mirror_mode {
    /// After the secondary has applied it. The default.
    Sync = 1,
    /// As soon as it is queued on the link; a full queue marks the dirty map instead.
    Async = 2,
}
c_enum!(mirror_mode, "mirror_mode", [Sync, Async]);

impl From<mirror_mode> for ReplicationMode {
    fn from(m: mirror_mode) -> Self {
        match m {
            mirror_mode::Sync => ReplicationMode::Sync,
            mirror_mode::Async => ReplicationMode::Async,
        }
    }
}

/// When the secondary acknowledges a replicated write.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum mirror_durability {
    /// Once on the secondary's stable storage (one flush per batch of writes). The default.
    Flushed = 1,
    /// After the secondary's write (perhaps still in its page cache).
    Written = 2,
    /// On arrival at the secondary, before its write.
    Received = 3,
}
c_enum!(
    mirror_durability,
    "mirror_durability",
    [Flushed, Written, Received]
);

impl From<mirror_durability> for Durability {
    fn from(d: mirror_durability) -> Self {
        match d {
            mirror_durability::Flushed => Durability::Flushed,
            mirror_durability::Written => Durability::Written,
            mirror_durability::Received => Durability::Received,
        }
    }
}

/// What a sync-mode write does while the link to the secondary is down.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum mirror_on_disconnect {
    /// Succeed degraded (`MIRROR_WRITE_DEGRADED`); the range goes into the dirty map. The
    /// default.
    Degrade = 1,
    /// Fail with `MIRROR_RESULT_LINK` (the range is in the dirty map all the same).
    Fail = 2,
    /// Wait for the link up to the given timeout, then fail with `MIRROR_RESULT_LINK`.
    Suspend = 3,
}
c_enum!(
    mirror_on_disconnect,
    "mirror_on_disconnect",
    [Degrade, Fail, Suspend]
);

/// The I/O backend of a volume.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum mirror_io_backend {
    /// io_uring, falling back to `SYNC` where the kernel does not allow it. The default.
    Uring = 1,
    /// Positioned reads and writes (pread/pwrite).
    Sync = 2,
}
c_enum!(mirror_io_backend, "mirror_io_backend", [Uring, Sync]);

impl From<mirror_io_backend> for IoBackend {
    fn from(b: mirror_io_backend) -> Self {
        match b {
            mirror_io_backend::Uring => IoBackend::Uring,
            mirror_io_backend::Sync => IoBackend::Sync,
        }
    }
}

/// Whether a volume is opened with `O_DIRECT`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum mirror_direct_io {
    /// On for block devices, off for regular files. The default.
    Auto = 1,
    /// Always (buffers are bounced to the required alignment by the library).
    On = 2,
    /// Never: I/O goes through the page cache.
    Off = 3,
}
c_enum!(mirror_direct_io, "mirror_direct_io", [Auto, On, Off]);

impl mirror_direct_io {
    pub(crate) fn option(self) -> Option<bool> {
        match self {
            mirror_direct_io::Auto => None,
            mirror_direct_io::On => Some(true),
            mirror_direct_io::Off => Some(false),
        }
    }
}

/// Which side compares digests during a checksum scan.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum mirror_compare_side {
    /// The secondary sends its digests; the primary compares and ships what differs. The default.
    Primary = 1,
    /// The primary sends its digests; the secondary compares and asks for what differs.
    Secondary = 2,
}
c_enum!(
    mirror_compare_side,
    "mirror_compare_side",
    [Primary, Secondary]
);

impl From<mirror_compare_side> for CompareSide {
    fn from(c: mirror_compare_side) -> Self {
        match c {
            mirror_compare_side::Primary => CompareSide::Primary,
            mirror_compare_side::Secondary => CompareSide::Secondary,
        }
    }
}

impl From<CompareSide> for mirror_compare_side {
    fn from(c: CompareSide) -> Self {
        match c {
            CompareSide::Primary => mirror_compare_side::Primary,
            CompareSide::Secondary => mirror_compare_side::Secondary,
        }
    }
}

/// Where a primary's link stands.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum mirror_link_state {
    /// No link: writes mark the dirty map; the primary keeps trying to connect.
    Disconnected = 1,
    /// Connected and resyncing.
    Resyncing = 2,
    /// Connected and coherent apart from writes in flight.
    Connected = 3,
    /// Closed by its owner.
    Closed = 4,
}

impl From<LinkState> for mirror_link_state {
    fn from(s: LinkState) -> Self {
        match s {
            LinkState::Disconnected => mirror_link_state::Disconnected,
            LinkState::Resyncing => mirror_link_state::Resyncing,
            LinkState::Connected => mirror_link_state::Connected,
            LinkState::Closed => mirror_link_state::Closed,
        }
    }
}

/// How a resync found what to send.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum mirror_resync_mode {
    /// Nothing was owed.
    None = 1,
    /// The dirty map drove it: only dirty regions were compared.
    DirtyMap = 2,
    /// The dirty map was not valid: every block was compared.
    FullScan = 3,
    /// A periodic low-priority scan.
    Periodic = 4,
    /// A comparison that repaired nothing (`mirror_primary_verify`).
    Verify = 5,
}

impl From<ResyncMode> for mirror_resync_mode {
    fn from(m: ResyncMode) -> Self {
        match m {
            ResyncMode::None => mirror_resync_mode::None,
            ResyncMode::DirtyMap => mirror_resync_mode::DirtyMap,
            ResyncMode::FullScan => mirror_resync_mode::FullScan,
            ResyncMode::Periodic => mirror_resync_mode::Periodic,
            ResyncMode::Verify => mirror_resync_mode::Verify,
        }
    }
}

/// What became of a replicated write.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum mirror_write_outcome {
    /// The secondary has it (sync mode).
    Replicated = 1,
    /// Queued on the link (async mode).
    Queued = 2,
    /// No link: the range is marked in the dirty map and will be resynced.
    Degraded = 3,
}

impl From<WriteOutcome> for mirror_write_outcome {
    fn from(o: WriteOutcome) -> Self {
        match o {
            WriteOutcome::Replicated => mirror_write_outcome::Replicated,
            WriteOutcome::Queued => mirror_write_outcome::Queued,
            WriteOutcome::Degraded => mirror_write_outcome::Degraded,
        }
    }
}

/// A run of blocks `[start, start + count)`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct mirror_block_range {
    /// First block.
    pub start: u64,
    /// Number of blocks.
    pub count: u64,
}

/// The result of a resync, a verify or a periodic scan.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct mirror_report {
    /// How it ran.
    pub mode: mirror_resync_mode,
    /// Digest algorithm.
    pub algorithm: mirror_algorithm,
    /// Which side compared.
    pub compare: mirror_compare_side,
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
    /// Runs of mismatched blocks the engine listed (at most 10000).
    pub mismatched_runs: u64,
}

impl From<&Report> for mirror_report {
    fn from(r: &Report) -> Self {
        mirror_report {
            mode: r.mode.into(),
            algorithm: r.algorithm.into(),
            compare: r.compare.into(),
            blocks: r.blocks,
            mismatched: r.mismatched,
            blocks_sent: r.blocks_sent,
            bytes_sent: r.bytes_sent,
            bytes_received: r.bytes_received,
            seconds: r.seconds,
            mismatched_runs: r.mismatched_ranges.len() as u64,
        }
    }
}

impl Default for mirror_report {
    fn default() -> Self {
        mirror_report {
            mode: mirror_resync_mode::None,
            algorithm: mirror_algorithm::Md5,
            compare: mirror_compare_side::Primary,
            blocks: 0,
            mismatched: 0,
            blocks_sent: 0,
            bytes_sent: 0,
            bytes_received: 0,
            seconds: 0.0,
            mismatched_runs: 0,
        }
    }
}

/// A snapshot of a primary.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct mirror_status {
    /// Link state.
    pub state: mirror_link_state,
    /// True when the dirty map can drive the next resync (otherwise a full scan is owed).
    pub map_valid: bool,
    /// True when `last_report` holds the last resync or periodic scan.
    pub has_last_report: bool,
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
    /// The last resync or periodic scan; zeroed unless `has_last_report`.
    pub last_report: mirror_report,
    /// True when `last_secondary_report` holds the last scan the secondary led.
    pub has_last_secondary_report: bool,
    /// The last scan the secondary led (on connection or periodic), as the secondary reported
    /// it; zeroed unless `has_last_secondary_report`.
    pub last_secondary_report: mirror_report,
    /// Bytes the running job (resync, verify or periodic scan) still has to compare (the last
    /// job's, zero at its end; zero before any).
    pub job_remaining_bytes: u64,
    /// True when `job_eta_seconds` holds an estimate.
    pub has_job_eta_seconds: bool,
    /// Seconds that job needs still at its recent rate (smoothed); zero once it ended, zero
    /// too and `has_job_eta_seconds` false before any job or while no rate is known.
    pub job_eta_seconds: f64,
}

impl From<&Status> for mirror_status {
    fn from(s: &Status) -> Self {
        mirror_status {
            state: s.state.into(),
            map_valid: s.map_valid,
            has_last_report: s.last_report.is_some(),
            dirty_regions: s.dirty_regions,
            dirty_bytes: s.dirty_bytes,
            region_size: s.region_size,
            pending_writes: s.pending_writes,
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            connections: s.connections,
            last_report: s.last_report.as_ref().map(Into::into).unwrap_or_default(),
            has_last_secondary_report: s.last_secondary_report.is_some(),
            last_secondary_report: s
                .last_secondary_report
                .as_ref()
                .map(Into::into)
                .unwrap_or_default(),
            job_remaining_bytes: s.job_remaining_bytes,
            has_job_eta_seconds: s.job_eta_seconds.is_some(),
            job_eta_seconds: s.job_eta_seconds.unwrap_or(0.0),
        }
    }
}

/// A snapshot of a secondary.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct mirror_secondary_status {
    /// True while listening (between `mirror_secondary_serve` and `mirror_secondary_stop`).
    pub serving: bool,
    /// True while a primary is connected.
    pub connected: bool,
    /// Connections accepted.
    pub connections: u64,
    /// Connections refused or ended by an error.
    pub rejected: u64,
    /// Writes applied (replicated and repairs).
    pub writes_applied: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// False while a resync that is not in write order is under way (or was cut off): the
    /// secondary's volume is then not a usable image. Kept in its metadata record.
    pub consistent: bool,
    /// Scans this secondary led to their end (on connection and periodic).
    pub lead_scans: u64,
    /// True when `last_report` holds the last of them.
    pub has_last_report: bool,
    /// The last scan this secondary led; zeroed unless `has_last_report`.
    pub last_report: mirror_report,
}

impl mirror_secondary_status {
    pub(crate) fn new(s: &SecondaryStatus, serving: bool) -> Self {
        mirror_secondary_status {
            serving,
            connected: s.peer.is_some(),
            connections: s.connections,
            rejected: s.rejected,
            writes_applied: s.writes_applied,
            bytes_received: s.bytes_received,
            bytes_sent: s.bytes_sent,
            consistent: s.consistent,
            lead_scans: s.lead_scans,
            has_last_report: s.last_report.is_some(),
            last_report: s.last_report.as_ref().map(Into::into).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use mirror_core::{field_names, Report, Status};

    use super::{mirror_report, mirror_status};

    #[test]
    fn c_report_carries_every_report_field() {
        let c: &[&str] = field_names!(mirror_report {
            mode,
            algorithm,
            compare,
            blocks,
            mismatched,
            blocks_sent,
            bytes_sent,
            bytes_received,
            seconds,
            mismatched_runs,
        });
        // A fixed-size struct cannot hold the runs: it counts them, and
        // `mirror_primary_verify` copies them into the caller's array.
        let core: Vec<&str> = Report::FIELDS
            .iter()
            .map(|&f| match f {
                "mismatched_ranges" => "mismatched_runs",
                other => other,
            })
            .collect();
        assert_eq!(c, core);
    }

    #[test]
    fn c_status_carries_every_status_field() {
        let c: &[&str] = field_names!(mirror_status {
            state,
            map_valid,
            has_last_report,
            dirty_regions,
            dirty_bytes,
            region_size,
            pending_writes,
            bytes_sent,
            bytes_received,
            connections,
            last_report,
            has_last_secondary_report,
            last_secondary_report,
            job_remaining_bytes,
            has_job_eta_seconds,
            job_eta_seconds,
        });
        // `has_X` stands for the `Option` of `X`; `last_error` is a string, which
        // `mirror_primary_last_link_error` copies out instead.
        let c: Vec<&str> = c
            .iter()
            .copied()
            .filter(|&f| !f.starts_with("has_"))
            .collect();
        let core: Vec<&str> = Status::FIELDS
            .iter()
            .copied()
            .filter(|&f| f != "last_error")
            .collect();
        assert_eq!(c, core);
    }
}

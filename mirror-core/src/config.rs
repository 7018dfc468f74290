//! Configuration of the two controllers, with the defaults a storage operator expects.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::dirty::DEFAULT_REGION_SIZE;
use crate::durability::{Durability, OnDisconnect};
use crate::protocol::auth::MIN_SECRET_LEN;
use crate::protocol::tls::TlsConfig;
pub use crate::secondary::gate::Limits;
use crate::storage::digest::Algorithm;
use crate::{Error, Result};

/// When a replicated write is acknowledged to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplicationMode {
    /// After the secondary has applied it (and flushed it, when a flush was asked).
    #[default]
    Sync,
    /// As soon as it is queued for the link; a full queue marks the dirty map instead.
    Async,
}

impl ReplicationMode {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            ReplicationMode::Sync => "sync",
            ReplicationMode::Async => "async",
        }
    }
}

impl FromStr for ReplicationMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sync" => Ok(ReplicationMode::Sync),
            "async" => Ok(ReplicationMode::Async),
            _ => Err(Error::invalid(format!(
                "unknown replication mode {s:?} (sync or async)"
            ))),
        }
    }
}

/// Which side compares digests during a checksum scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompareSide {
    /// The secondary streams its digests; the primary compares and ships what differs.
    #[default]
    Primary,
    /// The primary streams its digests; the secondary compares and requests what differs.
    Secondary,
}

impl CompareSide {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            CompareSide::Primary => "primary",
            CompareSide::Secondary => "secondary",
        }
    }
}

impl FromStr for CompareSide {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "primary" => Ok(CompareSide::Primary),
            "secondary" => Ok(CompareSide::Secondary),
            _ => Err(Error::invalid(format!(
                "unknown compare side {s:?} (primary or secondary)"
            ))),
        }
    }
}

/// The periodic low-priority scan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeriodicScan {
    /// Time between the end of one scan and the start of the next.
    pub interval: Duration,
    /// Read rate limit of the scan, MiB/s, on each side.
    pub rate_mib_s: f64,
}

impl PeriodicScan {
    /// Checks the interval and the rate.
    pub fn validate(&self) -> Result<()> {
        if self.interval.is_zero() {
            return Err(Error::invalid("periodic scan interval must be positive"));
        }
        if !(self.rate_mib_s.is_finite() && self.rate_mib_s > 0.0) {
            return Err(Error::invalid(
                "periodic scan rate must be a positive number of MiB/s",
            ));
        }
        Ok(())
    }
}

/// Configuration of a [`Primary`](crate::Primary).
#[derive(Debug, Clone)]
pub struct PrimaryConfig {
    /// The secondary's address, `host:port`.
    pub peer: String,
    /// Digest algorithm of checksum scans.
    pub algorithm: Algorithm,
    /// Bytes per dirty-map region (a power of two, at least the block size).
    pub region_size: u64,
    /// Replication mode.
    pub mode: ReplicationMode,
    /// Replicated writes that may wait in the link's queue (async mode).
    pub queue_depth: usize,
    /// Which side compares digests.
    pub compare: CompareSide,
    /// Shared secret; when set both peers must prove it (bound to the TLS session under TLS).
    pub secret: Option<Vec<u8>>,
    /// Mutual TLS: our identity and whom we trust. Required for a non-loopback peer unless
    /// `allow_insecure`.
    pub tls: Option<TlsConfig>,
    /// Connect to a non-loopback peer without TLS.
    pub allow_insecure: bool,
    /// A link silent this long is declared dead.
    pub link_timeout: Duration,
    /// Resync by itself on every (re)connection.
    pub auto_resync: bool,
    /// Make that resync a full checksum scan whatever the dirty map says: for a primary that
    /// is told of no writes (the `mirror primary` daemon), whose empty map proves nothing.
    pub full_scan_on_connect: bool,
    /// Periodic scan, if any.
    pub periodic: Option<PeriodicScan>,
    /// Identity of the primary volume sent at handshake when no metadata record is kept
    /// (zero: random per session). With `meta` the record's identity is used.
    pub volume_id: u128,
    /// When the secondary acknowledges a replicated write (default: once flushed).
    pub durability: Durability,
    /// What a sync-mode write does while the link is down (default: degrade).
    pub on_disconnect: OnDisconnect,
    /// The volume's metadata record (identity, generations, last coherent sync); `None`
    /// keeps it in memory only, so a restart forgets it — and the secondary, which cannot
    /// hold such a primary to a binding, admits it without identity or generation checks.
    pub meta: Option<PathBuf>,
    /// Rebind a secondary bound to another volume, discarding its data.
    pub adopt: bool,
    /// Resolve a split brain in favour of this primary, discarding the secondary's writes.
    pub discard_secondary: bool,
    /// Keep the persistent write-intent map beside the record (`meta` required), so a
    /// primary crash costs a resync of the dirty chunks instead of a full scan.
    pub write_intent: bool,
    /// Chunk of the write-intent map, bytes (a power of two, at least 4 KiB).
    pub intent_chunk: u64,
    /// Resyncs and verifies yield to the application: while replicated writes arrive their
    /// reads slow to `resync_min_rate`, and speed up again when the writes stop.
    pub resync_yield: bool,
    /// Floor of a yielding resync, MiB/s: what it keeps reading under load, so a busy
    /// volume still converges (like DRBD's `c-min-rate`).
    pub resync_min_rate: f64,
    /// Ceiling of a resync's or verify's reads, MiB/s, whatever the load (like DRBD's
    /// `c-max-rate`); None: as fast as the link and the disks go.
    pub resync_max_rate: Option<f64>,
}

/// Default floor of a yielding resync, MiB/s.
pub const DEFAULT_RESYNC_MIN_RATE: f64 = 4.0;

impl PrimaryConfig {
    /// Defaults for a secondary at `peer`.
    pub fn new(peer: impl Into<String>) -> Self {
        PrimaryConfig {
            peer: peer.into(),
            algorithm: Algorithm::default(),
            region_size: DEFAULT_REGION_SIZE,
            mode: ReplicationMode::Sync,
            queue_depth: 1024,
            compare: CompareSide::Primary,
            secret: None,
            tls: None,
            allow_insecure: false,
            link_timeout: Duration::from_secs(5),
            auto_resync: true,
            full_scan_on_connect: false,
            periodic: None,
            volume_id: 0,
            durability: Durability::Flushed,
            on_disconnect: OnDisconnect::Degrade,
            meta: None,
            adopt: false,
            discard_secondary: false,
            write_intent: false,
            intent_chunk: crate::meta::DEFAULT_INTENT_CHUNK,
            resync_yield: true,
            resync_min_rate: DEFAULT_RESYNC_MIN_RATE,
            resync_max_rate: None,
        }
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<()> {
        if self.peer.is_empty() {
            return Err(Error::invalid("peer address is empty"));
        }
        if self.queue_depth == 0 {
            return Err(Error::invalid("queue depth must be at least 1"));
        }
        if self.link_timeout < Duration::from_millis(100) {
            return Err(Error::invalid("link timeout must be at least 100 ms"));
        }
        self.on_disconnect.validate()?;
        if let Some(p) = &self.periodic {
            p.validate()?;
        }
        if let Some(s) = &self.secret {
            check_secret(s)?;
        }
        if self.write_intent && self.meta.is_none() {
            return Err(Error::invalid(
                "the write-intent map lives beside the metadata record: give a meta path",
            ));
        }
        if !self.intent_chunk.is_power_of_two() || self.intent_chunk < 4096 {
            return Err(Error::invalid(format!(
                "write-intent chunk {} must be a power of two of at least 4096",
                self.intent_chunk
            )));
        }
        check_resync_rates(self.resync_min_rate, self.resync_max_rate)
    }
}

/// Checks a resync's floor and ceiling, MiB/s: positive numbers, the floor not above the
/// ceiling.
pub fn check_resync_rates(min: f64, max: Option<f64>) -> Result<()> {
    if !(min.is_finite() && min > 0.0) {
        return Err(Error::invalid(format!(
            "resync minimum rate {min} is not a positive number of MiB/s"
        )));
    }
    if let Some(max) = max {
        if !(max.is_finite() && max > 0.0) {
            return Err(Error::invalid(format!(
                "resync maximum rate {max} is not a positive number of MiB/s"
            )));
        }
        if min > max {
            return Err(Error::invalid(format!(
                "resync minimum rate {min} MiB/s is above the maximum, {max} MiB/s"
            )));
        }
    }
    Ok(())
}

/// Configuration of a [`Secondary`](crate::Secondary).
#[derive(Debug, Clone)]
pub struct SecondaryConfig {
    /// Address to listen on, `host:port` (port 0: any free port).
    pub listen: String,
    /// Shared secret; when set a primary must prove it before anything is accepted.
    pub secret: Option<Vec<u8>>,
    /// Mutual TLS: our identity and the primaries we trust. Required on a non-loopback
    /// address unless `allow_insecure`.
    pub tls: Option<TlsConfig>,
    /// Listen on a non-loopback address without TLS.
    pub allow_insecure: bool,
    /// What connections cost before they authenticate: handshake deadline, caps.
    pub limits: Limits,
    /// A link silent this long is declared dead.
    pub link_timeout: Duration,
    /// The volume's metadata record (identity, binding, generations, consistent flag);
    /// `None` keeps it in memory only.
    pub meta: Option<PathBuf>,
    /// Lead a full checksum scan of the volume as soon as a primary's session is established
    /// (a new or a re-established link).
    pub scan_on_connect: bool,
    /// Lead a periodic low-priority scan while a session is up, if any.
    pub periodic: Option<PeriodicScan>,
    /// Which side compares the digests of the scans the secondary leads: the secondary
    /// (default: it asks for the primary's digests and requests the blocks that differ) or
    /// the primary (the secondary streams its digests).
    pub compare: CompareSide,
    /// Digest algorithm of the scans the secondary leads.
    pub algorithm: Algorithm,
}

impl SecondaryConfig {
    /// Defaults, listening on `listen`.
    pub fn new(listen: impl Into<String>) -> Self {
        SecondaryConfig {
            listen: listen.into(),
            secret: None,
            tls: None,
            allow_insecure: false,
            limits: Limits::default(),
            link_timeout: Duration::from_secs(5),
            meta: None,
            scan_on_connect: false,
            periodic: None,
            compare: CompareSide::Secondary,
            algorithm: Algorithm::default(),
        }
    }

    /// True when the secondary leads scans of its own.
    pub fn leads(&self) -> bool {
        self.scan_on_connect || self.periodic.is_some()
    }

    /// Checks every value, and refuses a non-loopback listener without TLS unless
    /// `allow_insecure` says the operator means it (a secret protects the handshake, not the
    /// frames).
    pub fn validate(&self, addr: &SocketAddr) -> Result<()> {
        if let Some(s) = &self.secret {
            check_secret(s)?;
        }
        if self.link_timeout < Duration::from_millis(100) {
            return Err(Error::invalid("link timeout must be at least 100 ms"));
        }
        if let Some(p) = &self.periodic {
            p.validate()?;
        }
        check_plaintext(addr, self.tls.is_some(), self.allow_insecure, "listen on")?;
        let l = &self.limits;
        if l.handshake_timeout < Duration::from_millis(100) {
            return Err(Error::invalid("handshake timeout must be at least 100 ms"));
        }
        if l.max_handshakes == 0 || l.max_sessions == 0 {
            return Err(Error::invalid(
                "the caps on handshakes and sessions must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Refuses plaintext to or from a non-loopback address unless `allow_insecure`.
pub fn check_plaintext(
    addr: &SocketAddr,
    tls: bool,
    allow_insecure: bool,
    what: &str,
) -> Result<()> {
    if tls || allow_insecure || addr.ip().is_loopback() {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "refusing to {what} non-loopback address {addr} without TLS (configure a certificate, key and trust file, or allow insecure links explicitly; a shared secret protects the handshake, not the data)"
    )))
}

/// Refuses a secret shorter than [`MIN_SECRET_LEN`] bytes.
pub fn check_secret(s: &[u8]) -> Result<()> {
    if s.len() < MIN_SECRET_LEN {
        return Err(Error::invalid(format!(
            "shared secret must be at least {MIN_SECRET_LEN} bytes"
        )));
    }
    Ok(())
}

/// Reads a shared secret from a file: its bytes, less one trailing newline.
pub fn read_secret_file(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let mut s = std::fs::read(path)
        .map_err(|e| Error::io(&path.display().to_string(), "read secret", 0, e))?;
    if s.last() == Some(&b'\n') {
        s.pop();
        if s.last() == Some(&b'\r') {
            s.pop();
        }
    }
    check_secret(&s).map_err(|_| {
        Error::invalid(format!(
            "{}: shared secret must be at least {MIN_SECRET_LEN} bytes",
            path.display()
        ))
    })?;
    Ok(s)
}

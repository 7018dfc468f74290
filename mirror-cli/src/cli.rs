//! The command line: every subcommand, its options and how their values are parsed.
//!
//! Values are parsed into the engine's own types (`Algorithm`, `BlockSize`, `CompareSide`,
//! `IoBackend`) here, so a bad value is refused by the parser with a one-line message before
//! any volume is opened or any connection made.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mirror_core::{Algorithm, BlockSize, CompareSide};
use mirror_uring::IoBackend;

/// Keep a secondary block volume coherent with a primary over TCP.
#[derive(Debug, Parser)]
#[command(name = "mirror", version, propagate_version = true)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a secondary: accept a primary's connection and apply what it sends.
    Serve(ServeArgs),
    /// One-shot full checksum resync of PATH onto the secondary at --peer.
    Sync(PairArgs),
    /// Compare PATH with the secondary at --peer, repairing nothing (exit 1 when they differ).
    Verify(PairArgs),
    /// Print the per-block digests of PATH.
    Scan(ScanArgs),
    /// Run a primary daemon that keeps a pair coherent by periodic low-priority scans.
    Primary(PrimaryArgs),
    /// Show the whole job on temporary files over loopback: replicate, cut the link, resync.
    Demo(DemoArgs),
    /// Benchmark: `mirror sync` of two files that differ in scattered blocks.
    #[command(hide = true, name = "bench-sync")]
    BenchSync(crate::bench::SyncBenchArgs),
    /// Benchmark: bytes resent after a link cut during random writes.
    #[command(hide = true, name = "bench-link-cut")]
    BenchLinkCut(crate::bench::LinkCutBenchArgs),
}

/// How a volume is opened.
#[derive(Debug, Clone, Args)]
pub struct VolumeArgs {
    /// Block size in bytes: a power of two from 512 to 1M (suffixes K and M allowed).
    #[arg(long, value_name = "N", default_value = "4096", value_parser = parse_block_size)]
    pub block_size: BlockSize,

    /// I/O backend: uring (falls back to sync where io_uring is unavailable) or sync.
    #[arg(long, value_name = "BACKEND", default_value = "uring", value_parser = parse_io)]
    pub io: IoBackend,
}

/// Options shared by everything that talks to a secondary.
#[derive(Debug, Clone, Args)]
pub struct LinkArgs {
    /// Digest algorithm of checksum scans.
    #[arg(long, value_name = "ALG", default_value = "sha1", value_parser = parse_algorithm)]
    pub algorithm: Algorithm,

    /// Which side compares digests: primary (secondary streams digests) or secondary (it
    /// requests the blocks that differ).
    #[arg(long, value_name = "SIDE", default_value = "primary", value_parser = parse_compare)]
    pub compare: CompareSide,

    /// File holding the shared secret (at least 8 bytes; one trailing newline is ignored).
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,

    /// A link silent this long is declared dead (e.g. 5s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub link_timeout: Duration,

    /// How long to wait for the secondary to answer.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
}

/// `mirror serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The secondary volume: a file or block device.
    #[arg(long, value_name = "PATH")]
    pub volume: PathBuf,

    /// Address to listen on, host:port (port 0 picks a free port). Non-loopback addresses
    /// need --secret-file or --allow-insecure.
    #[arg(long, value_name = "ADDR")]
    pub listen: String,

    /// Create PATH as a sparse file of SIZE bytes when it does not exist (suffixes K, M, G, T
    /// are powers of 1024).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub create: Option<u64>,

    /// File holding the shared secret a primary must prove.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,

    /// Listen on a non-loopback address without a shared secret.
    #[arg(long)]
    pub allow_insecure: bool,

    /// A link silent this long is declared dead.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub link_timeout: Duration,

    #[command(flatten)]
    pub volume_opts: VolumeArgs,
}

/// `mirror sync` and `mirror verify`.
#[derive(Debug, Args)]
pub struct PairArgs {
    /// The primary volume: a file or block device.
    #[arg(value_name = "PATH")]
    pub path: PathBuf,

    /// The secondary's address, host:port (a running `mirror serve`).
    #[arg(long, value_name = "ADDR")]
    pub peer: String,

    #[command(flatten)]
    pub link: LinkArgs,

    #[command(flatten)]
    pub volume_opts: VolumeArgs,

    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `mirror scan`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// The volume to scan: a file or block device.
    #[arg(value_name = "PATH")]
    pub path: PathBuf,

    /// Digest algorithm: crc32, md5 or sha1.
    #[arg(long, value_name = "ALG", default_value = "sha1", value_parser = parse_algorithm)]
    pub algorithm: Algorithm,

    #[command(flatten)]
    pub volume_opts: VolumeArgs,

    /// Print one JSON object instead of `INDEX HEXDIGEST` lines.
    #[arg(long)]
    pub json: bool,
}

/// `mirror primary`.
#[derive(Debug, Args)]
pub struct PrimaryArgs {
    /// The primary volume: a file or block device.
    #[arg(long, value_name = "PATH")]
    pub volume: PathBuf,

    /// The secondary's address, host:port.
    #[arg(long, value_name = "ADDR")]
    pub peer: String,

    /// Time between the end of one periodic scan and the start of the next (e.g. 10s, 5m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub interval: Duration,

    /// Read rate limit of the periodic scan, MiB/s, on each side.
    #[arg(long, value_name = "MIB_S", default_value = "64", value_parser = parse_rate)]
    pub rate: f64,

    #[command(flatten)]
    pub link: LinkArgs,

    #[command(flatten)]
    pub volume_opts: VolumeArgs,

    /// Print events as JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `mirror demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Size of each of the two temporary volumes.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    pub size: u64,

    /// Random 4 KiB writes in each writing step.
    #[arg(long, value_name = "N", default_value = "2000")]
    pub writes: u32,

    /// Digest algorithm of the checksum scans.
    #[arg(long, value_name = "ALG", default_value = "sha1", value_parser = parse_algorithm)]
    pub algorithm: Algorithm,

    /// I/O backend of the two volumes.
    #[arg(long, value_name = "BACKEND", default_value = "uring", value_parser = parse_io)]
    pub io: IoBackend,

    /// Seed of the random writes (default: drawn at random).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
}

/// The message of an engine error, without the kind's prefix, for a parser's error line.
fn message(e: mirror_core::Error) -> String {
    match e {
        mirror_core::Error::InvalidArgument(m) => m,
        other => other.to_string(),
    }
}

pub fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    s.parse().map_err(message)
}

pub fn parse_compare(s: &str) -> Result<CompareSide, String> {
    s.parse().map_err(message)
}

pub fn parse_io(s: &str) -> Result<IoBackend, String> {
    s.parse().map_err(message)
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (try 10s, 500ms or 5m)"))?;
    if d.is_zero() {
        return Err("duration must be positive".into());
    }
    Ok(d)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("{s:?} is not a positive number of MiB/s")),
    }
}

/// A byte count: digits with an optional binary suffix `K`, `M`, `G` or `T` (also spelt
/// `KiB`, `KB`, ...; all powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (try 4096, 64M or 1G)"))?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("{s:?} has an unknown size suffix (K, M, G or T)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

pub fn parse_block_size(s: &str) -> Result<BlockSize, String> {
    BlockSize::new(parse_size(s)?).map_err(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn block_sizes_are_powers_of_two_in_range() {
        assert_eq!(parse_block_size("4K").unwrap().get(), 4096);
        assert_eq!(parse_block_size("1M").unwrap().get(), 1 << 20);
        assert!(parse_block_size("256").is_err());
        assert!(parse_block_size("3000").is_err());
        assert!(parse_block_size("2M").is_err());
    }

    #[test]
    fn durations_are_humantime() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}

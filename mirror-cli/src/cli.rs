//! The command line: every subcommand, its options and how their values are parsed.
//!
//! Values are parsed into the engine's own types (`Algorithm`, `BlockSize`, `CompareSide`,
//! `IoBackend`) by the parsers of [`crate::parse`], so a bad value is refused with a one-line
//! message before any volume is opened or any connection made.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mirror_core::{Algorithm, BlockSize, CompareSide, Durability};
use mirror_uring::IoBackend;

use crate::parse::{
    parse_algorithm, parse_block_size, parse_compare, parse_durability, parse_duration, parse_io,
    parse_rate, parse_size,
};

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
    /// Print a volume's metadata record: identity, generation, consistent or not, last sync.
    Info(crate::info::InfoArgs),
    /// Show the whole job on temporary files over loopback: replicate, cut the link, resync.
    Demo(DemoArgs),
    /// Write a TLS identity (DIR/NAME.key, DIR/NAME.crt) or, with --secret, a shared secret.
    Keygen(crate::keygen::KeygenArgs),
    /// Benchmark: `mirror sync` of two files that differ in scattered blocks.
    #[command(hide = true, name = "bench-sync")]
    BenchSync(crate::bench::SyncBenchArgs),
    /// Benchmark: bytes resent after a link cut during random writes.
    #[command(hide = true, name = "bench-link-cut")]
    BenchLinkCut(crate::bench::LinkCutBenchArgs),
    /// Benchmark: sync and verify against rsync, on loopback and a slow link; peak RSS.
    #[command(hide = true, name = "bench-table")]
    BenchTable(crate::bench_table::TableBenchArgs),
    /// Benchmark: replication throughput of 1 MiB writes, alone and during a resync.
    #[command(hide = true, name = "bench-replicate")]
    BenchReplicate(crate::bench_replicate::ReplicateBenchArgs),
    /// Benchmark: mutual TLS against plaintext, and a sync under a connection flood.
    #[command(hide = true, name = "bench-tls")]
    BenchTls(crate::bench_tls::TlsBenchArgs),
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

    /// The volume's metadata record (default: PATH.mirror-meta beside the volume; give it
    /// for a block device).
    #[arg(long, value_name = "PATH")]
    pub meta: Option<PathBuf>,
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

    /// File holding the shared secret (at least 16 bytes; one trailing newline is ignored).
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,

    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,

    /// Connect to a non-loopback secondary without TLS.
    #[arg(long)]
    pub allow_insecure: bool,

    /// A link silent this long is declared dead (e.g. 5s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub link_timeout: Duration,

    /// How long to wait for the secondary to answer.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// When the secondary acknowledges what it is sent: flushed (on its stable storage),
    /// written (after its write) or received (on arrival).
    #[arg(long, value_name = "LEVEL", default_value = "flushed", value_parser = parse_durability)]
    pub durability: Durability,
    /// Rebind a secondary bound to another volume to this one, discarding its data.
    #[arg(long)]
    pub adopt: bool,

    /// Resolve a split brain in favour of this primary, discarding the secondary's writes.
    #[arg(long)]
    pub discard_secondary: bool,

    /// Floor of a resync or verify while the application writes, in MiB/s (suffixes as for
    /// --rate): it slows to this while replicated writes arrive, so a busy volume still
    /// converges, and speeds up again when they stop.
    #[arg(long, value_name = "MIB_S", default_value = "4", value_parser = parse_rate)]
    pub resync_min_rate: f64,

    /// Ceiling of a resync's or verify's reads, in MiB/s, whatever the load (default: none).
    #[arg(long, value_name = "MIB_S", value_parser = parse_rate)]
    pub resync_max_rate: Option<f64>,

    /// Resyncs and verifies do not yield to replicated writes (they read at the ceiling).
    #[arg(long)]
    pub no_resync_yield: bool,
}

/// `mirror serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The secondary volume: a file or block device.
    #[arg(long, value_name = "PATH")]
    pub volume: PathBuf,

    /// Address to listen on, host:port (port 0 picks a free port). Non-loopback addresses
    /// need TLS (--tls-cert, --tls-key, --tls-trust) or --allow-insecure.
    #[arg(long, value_name = "ADDR")]
    pub listen: String,

    /// Create PATH as a sparse file of SIZE bytes when it does not exist (suffixes K, M, G, T
    /// are powers of 1024).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub create: Option<u64>,

    /// File holding the shared secret a primary must prove (at least 16 bytes).
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,

    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,

    /// Listen on a non-loopback address without TLS.
    #[arg(long)]
    pub allow_insecure: bool,

    /// A link silent this long is declared dead.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub link_timeout: Duration,

    /// Lead a full checksum scan of the volume as soon as a primary's session is established
    /// (a new or a re-established link), and have what differs repaired.
    #[arg(long)]
    pub scan_on_connect: bool,

    /// Lead a low-priority checksum scan this long after the previous one ends, while a
    /// primary is connected (e.g. 10m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub interval: Option<Duration>,

    /// Read rate limit of the periodic scan, in MiB/s (suffixes as for `mirror primary`).
    #[arg(long, value_name = "MIB_S", default_value = "64", value_parser = parse_rate, requires = "interval")]
    pub rate: f64,

    /// Which side compares the digests of the scans this secondary leads: secondary (it asks
    /// for the primary's digests and requests the blocks that differ) or primary (it streams
    /// its digests).
    #[arg(long, value_name = "SIDE", default_value = "secondary", value_parser = parse_compare)]
    pub compare: CompareSide,

    /// Digest algorithm of the scans this secondary leads.
    #[arg(long, value_name = "ALG", default_value = "sha1", value_parser = parse_algorithm)]
    pub algorithm: Algorithm,

    /// Print the events (one per scan this secondary leads) as JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
    /// A connection that has not completed its handshake (TLS, secret, volume check) this
    /// long after it was accepted is closed.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Most connections in handshake at once; past it the oldest is closed.
    #[arg(long, value_name = "N", default_value = "64", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_handshakes: u32,

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

    /// Read rate limit of the periodic scan on each side, in MiB/s: a number (fractions
    /// allowed), optionally with a size suffix (50 and 50M are both 50 MiB/s; 512K, 1G).
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn rates_take_the_size_suffixes() {
        let rate = |v: &str| {
            let cli = Cli::try_parse_from([
                "mirror",
                "primary",
                "--volume",
                "v",
                "--peer",
                "p:1",
                "--interval",
                "1s",
                "--rate",
                v,
            ])
            .unwrap();
            match cli.command {
                Command::Primary(a) => a.rate,
                _ => unreachable!(),
            }
        };
        assert_eq!(rate("50"), 50.0);
        assert_eq!(rate("50M"), 50.0);
        assert_eq!(rate("1G"), 1024.0);
    }
}

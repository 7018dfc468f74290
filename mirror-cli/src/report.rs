//! How reports are printed: a short text summary, or one JSON object whose fields are the
//! command's documented interface (`mode`, `blocks`, `mismatched`, `bytes_sent`,
//! `bytes_received`, `seconds`, ...).

use indicatif::HumanBytes;
use mirror_core::{BlockRange, Report};
use serde::Serialize;

/// A run of blocks, as JSON spells it.
#[derive(Debug, Serialize)]
pub struct JsonRange {
    /// First block.
    pub start: u64,
    /// Number of blocks.
    pub count: u64,
}

/// A [`Report`] as JSON spells it.
#[derive(Debug, Serialize)]
pub struct JsonReport<'a> {
    /// The subcommand or step that produced it.
    pub command: &'a str,
    /// `none`, `dirty-map`, `full-scan`, `periodic` or `verify`.
    pub mode: &'static str,
    /// `crc32`, `md5` or `sha1`.
    pub algorithm: &'static str,
    /// `primary` or `secondary`.
    pub compare: &'static str,
    /// Blocks compared.
    pub blocks: u64,
    /// Blocks found different.
    pub mismatched: u64,
    /// Blocks whose contents were sent.
    pub blocks_sent: u64,
    /// Bytes the primary sent on the link.
    pub bytes_sent: u64,
    /// Bytes the primary received on the link.
    pub bytes_received: u64,
    /// Wall time.
    pub seconds: f64,
    /// True when no block differed (for sync: before repair).
    pub coherent: bool,
    /// Runs of mismatched blocks (verify lists them; at most 10,000 runs).
    pub mismatched_ranges: Vec<JsonRange>,
}

impl<'a> JsonReport<'a> {
    /// The JSON form of `r`.
    pub fn new(command: &'a str, r: &Report) -> Self {
        JsonReport {
            command,
            mode: r.mode.name(),
            algorithm: r.algorithm.name(),
            compare: r.compare.name(),
            blocks: r.blocks,
            mismatched: r.mismatched,
            blocks_sent: r.blocks_sent,
            bytes_sent: r.bytes_sent,
            bytes_received: r.bytes_received,
            seconds: r.seconds,
            coherent: r.coherent(),
            mismatched_ranges: r
                .mismatched_ranges
                .iter()
                .map(|g| JsonRange {
                    start: g.start.0,
                    count: g.count,
                })
                .collect(),
        }
    }
}

/// One line summing up a resync: what was compared, found, sent, and the time.
pub fn summary(r: &Report) -> String {
    format!(
        "{} ({}, {} compares): {} blocks compared, {} mismatched, {} sent; {} sent, {} received on the link in {:.2} s",
        r.mode,
        r.algorithm,
        r.compare.name(),
        r.blocks,
        r.mismatched,
        r.blocks_sent,
        HumanBytes(r.bytes_sent),
        HumanBytes(r.bytes_received),
        r.seconds
    )
}

/// A run of blocks as verify lists it: `START-END` (inclusive) with its length, or `START`.
pub fn range_line(g: &BlockRange) -> String {
    if g.count == 1 {
        format!("mismatched block {}", g.start.0)
    } else {
        format!("mismatched blocks {} ({} blocks)", g, g.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirror_core::{Algorithm, BlockIndex, CompareSide, ResyncMode};

    #[test]
    fn json_report_has_every_report_field_between_command_and_coherent() {
        let r = Report {
            mode: ResyncMode::Verify,
            algorithm: Algorithm::Sha1,
            compare: CompareSide::Primary,
            blocks: 8,
            mismatched: 2,
            blocks_sent: 0,
            bytes_sent: 1,
            bytes_received: 2,
            seconds: 0.5,
            mismatched_ranges: vec![BlockRange {
                start: BlockIndex(3),
                count: 2,
            }],
        };
        let json = serde_json::to_value(JsonReport::new("verify", &r)).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .filter(|&k| k != "command" && k != "coherent")
            .collect();
        let mut core = Report::FIELDS.to_vec();
        core.sort_unstable();
        keys.sort_unstable();
        assert_eq!(keys, core);
        assert_eq!(json["mismatched_ranges"][0]["start"], 3);
    }
}

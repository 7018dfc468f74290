//! `mirror scan`: per-block digests of a volume, streamed.
//!
//! Text: one line per block, `INDEX HEXDIGEST` (CRC-32 as the 8 hex digits of the CRC value,
//! as zlib prints it). JSON: one object, `{"path", "algorithm", "block_size", "size",
//! "blocks", "digests": [HEX, ...]}`, the digest of block `i` at position `i`. Both are
//! written batch by batch as the scan streams: nothing holds the whole list.

use std::io::{BufWriter, Write};
use std::sync::atomic::Ordering;

use mirror_core::scan::scan_range;
use mirror_core::{BlockRange, ScanOptions};

use crate::cli::ScanArgs;
use crate::error::{stdout_err, CliError, Result, EXIT_OK};
use crate::progress::Bar;
use crate::{signals, volumes};

pub fn run(args: ScanArgs) -> Result<u8> {
    let volume = volumes::open(&args.path, &args.volume_opts, true)?;
    let stop = signals::stop_flag()?;
    let blocks = volume.blocks();
    let bar = Bar::new(
        "scan",
        volume.size(),
        volume.block_size().bytes(),
        args.json,
    );
    let mut out = BufWriter::with_capacity(256 << 10, std::io::stdout().lock());
    if args.json {
        let head = serde_json::json!({
            "path": args.path.display().to_string(),
            "algorithm": args.algorithm.name(),
            "block_size": volume.block_size().get(),
            "size": volume.size(),
            "blocks": blocks,
        })
        .to_string();
        // The head object without its closing brace, then the streamed array.
        write!(out, "{},\"digests\":[", &head[..head.len() - 1]).map_err(stdout_err)?;
    }
    let mut first = true;
    let mut write_err: Option<CliError> = None;
    scan_range(
        volume.as_ref(),
        BlockRange::new(0, blocks),
        ScanOptions::new(args.algorithm),
        |_| {
            if stop.load(Ordering::Relaxed) {
                Err(mirror_core::Error::Cancelled("scan"))
            } else {
                Ok(())
            }
        },
        |batch| {
            let res = (|| -> std::io::Result<()> {
                for (i, (index, _)) in batch.iter().enumerate() {
                    let hex = batch.hex(i).unwrap_or_default();
                    if args.json {
                        let sep = if first { "" } else { "," };
                        write!(out, "{sep}\"{hex}\"")?;
                        first = false;
                    } else {
                        writeln!(out, "{index} {hex}")?;
                    }
                }
                Ok(())
            })();
            bar.inc(batch.len() as u64);
            match res {
                Ok(()) => Ok(true),
                Err(e) => {
                    write_err = Some(stdout_err(e));
                    Ok(false)
                }
            }
        },
    )?;
    if let Some(e) = write_err {
        return Err(e);
    }
    if args.json {
        writeln!(out, "]}}").map_err(stdout_err)?;
    }
    out.flush().map_err(stdout_err)?;
    bar.finish();
    Ok(EXIT_OK)
}

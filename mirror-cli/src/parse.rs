//! The parsers of option values: sizes, rates, durations and the engine's named choices.
//!
//! One place for them, so that every subcommand (and the benchmarks) spells a value the same
//! way: sizes and rates take the same binary suffixes (`K`, `M`, `G`, `T`, also spelt `KiB`,
//! `KB`, ...; all powers of 1024), durations are humantime (`500ms`, `10s`, `5m`). A parser
//! returns a one-line message for clap to print.

use std::time::Duration;

use mirror_core::{Algorithm, BlockSize, CompareSide, Durability};
use mirror_uring::IoBackend;

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

pub fn parse_durability(s: &str) -> Result<Durability, String> {
    s.parse().map_err(message)
}

pub fn parse_io(s: &str) -> Result<IoBackend, String> {
    s.parse().map_err(message)
}

/// A positive duration, humantime style.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (try 10s, 500ms or 5m)"))?;
    if d.is_zero() {
        return Err("duration must be positive".into());
    }
    Ok(d)
}

/// The power of two a size suffix stands for: nothing or `B` for bytes, then `K`, `M`, `G`,
/// `T` (case-insensitive, also spelt `KB`/`KiB`, ...). `None` for anything else.
fn suffix_shift(suffix: &str) -> Option<u32> {
    Some(match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    })
}

/// Splits `s` where its number (the leading characters `is_number` accepts) ends.
fn split_number(s: &str, is_number: impl Fn(char) -> bool) -> (&str, &str) {
    let at = s.find(|c: char| !is_number(c)).unwrap_or(s.len());
    s.split_at(at)
}

/// A byte count: digits with an optional binary suffix `K`, `M`, `G` or `T` (also spelt
/// `KiB`, `KB`, ...; all powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, suffix) = split_number(s.trim(), |c| c.is_ascii_digit());
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (try 4096, 64M or 1G)"))?;
    let shift = suffix_shift(suffix)
        .ok_or_else(|| format!("{s:?} has an unknown size suffix (K, M, G or T)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A block size: a size (suffixes allowed) that is a power of two from 512 to 1M.
pub fn parse_block_size(s: &str) -> Result<BlockSize, String> {
    BlockSize::new(parse_size(s)?).map_err(message)
}

/// A read rate in MiB/s: a positive number (fractions allowed) with an optional size suffix
/// and an optional `/s`. A bare number is MiB/s, so `50`, `50M` and `50MiB/s` are the same
/// rate; `512K` is 0.5 MiB/s and `1G` 1024 MiB/s.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let bad = || format!("{s:?} is not a positive number of MiB/s (try 64, 50M or 1G)");
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let (number, suffix) = split_number(t, |c| c.is_ascii_digit() || c == '.');
    let n: f64 = number.parse().map_err(|_| bad())?;
    let mib_s = if suffix.is_empty() {
        n
    } else {
        let shift = suffix_shift(suffix)
            .ok_or_else(|| format!("{s:?} has an unknown size suffix (K, M, G or T)"))?;
        n * 2f64.powi(shift as i32 - 20)
    };
    if mib_s.is_finite() && mib_s > 0.0 {
        Ok(mib_s)
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("2TB"), Ok(2 << 40));
        assert_eq!(parse_size("512b"), Ok(512));
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
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
    fn rates_are_mib_per_second_with_or_without_a_suffix() {
        assert_eq!(parse_rate("50"), Ok(50.0));
        assert_eq!(parse_rate("50M"), Ok(50.0));
        assert_eq!(parse_rate("50MiB/s"), Ok(50.0));
        assert_eq!(parse_rate("50m/s"), Ok(50.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        assert_eq!(parse_rate("512K"), Ok(0.5));
        assert_eq!(parse_rate("1G"), Ok(1024.0));
        assert_eq!(parse_rate("1.5G"), Ok(1536.0));
        assert_eq!(parse_rate("2T"), Ok(2.0 * 1024.0 * 1024.0));
        assert_eq!(parse_rate("1048576B"), Ok(1.0));
    }

    #[test]
    fn rates_that_are_not_positive_numbers_are_refused() {
        for bad in [
            "0", "0M", "-5", "fast", "", "M", "1.2.3", "12Q", "inf", "NaN",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_rate("fast")
            .unwrap_err()
            .contains("is not a positive number of MiB/s"));
    }

    #[test]
    fn sizes_and_rates_take_the_same_suffixes() {
        for suffix in [
            "", "b", "K", "kb", "KiB", "M", "mb", "MiB", "G", "gb", "GiB", "T", "TiB",
        ] {
            let size = parse_size(&format!("4{suffix}")).unwrap() as f64;
            let rate = parse_rate(&format!("4{suffix}")).unwrap();
            if suffix.is_empty() {
                assert_eq!(rate, 4.0, "a bare rate is MiB/s");
            } else {
                assert_eq!(rate, size / (1u64 << 20) as f64, "suffix {suffix:?}");
            }
        }
        assert!(parse_size("4Q").is_err() && parse_rate("4Q").is_err());
    }

    #[test]
    fn durations_are_humantime() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn named_choices_parse_and_refuse_unknown_names() {
        assert_eq!(parse_algorithm("md5"), Ok(Algorithm::Md5));
        assert!(parse_algorithm("sha256").is_err());
        assert_eq!(parse_compare("secondary"), Ok(CompareSide::Secondary));
        assert!(parse_compare("both").is_err());
        assert_eq!(parse_io("sync"), Ok(IoBackend::Sync));
        assert!(parse_io("aio").is_err());
    }
}

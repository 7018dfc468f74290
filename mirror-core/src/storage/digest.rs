//! Block digests: CRC32 (zlib/IEEE), MD5 and SHA-1.
//!
//! A digest is stored as bytes in the order its usual hex form prints them: CRC32 as the
//! big-endian bytes of the CRC value (so hex is what zlib prints), MD5 and SHA-1 as their
//! standard output. The algorithm ids are wire values: never reuse one.

use std::fmt;
use std::str::FromStr;

use md5::Digest as _;

use crate::{Error, Result};

/// A per-block digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Algorithm {
    /// CRC-32 (IEEE 802.3, as zlib's `crc32`), by crc32fast.
    Crc32 = 1,
    /// MD5, by md-5.
    Md5 = 2,
    /// SHA-1, by sha1. The default: it uses the CPU's SHA extensions where they exist (several
    /// times MD5's speed there, about MD5's elsewhere) and is the stronger of the two.
    #[default]
    Sha1 = 3,
}

/// The longest digest any algorithm yields.
pub const MAX_DIGEST_LEN: usize = 20;

impl Algorithm {
    /// Every algorithm, in id order.
    pub const ALL: [Algorithm; 3] = [Algorithm::Crc32, Algorithm::Md5, Algorithm::Sha1];

    /// Bytes per digest.
    pub const fn digest_len(self) -> usize {
        match self {
            Algorithm::Crc32 => 4,
            Algorithm::Md5 => 16,
            Algorithm::Sha1 => 20,
        }
    }

    /// Lower-case name, as the command line spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::Crc32 => "crc32",
            Algorithm::Md5 => "md5",
            Algorithm::Sha1 => "sha1",
        }
    }

    /// The wire id.
    pub const fn id(self) -> u8 {
        self as u8
    }

    /// The algorithm with wire id `id`.
    pub fn from_id(id: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.id() == id)
    }

    /// Writes the digest of `data` into `out`, which is [`digest_len`](Self::digest_len) long.
    pub fn digest_into(self, data: &[u8], out: &mut [u8]) {
        match self {
            Algorithm::Crc32 => out.copy_from_slice(&crc32fast::hash(data).to_be_bytes()),
            Algorithm::Md5 => out.copy_from_slice(&md5::Md5::digest(data)),
            Algorithm::Sha1 => out.copy_from_slice(&sha1::Sha1::digest(data)),
        }
    }

    /// The digest of `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        let mut out = vec![0; self.digest_len()];
        self.digest_into(data, &mut out);
        out
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| Error::invalid(format!("unknown algorithm {s:?} (crc32, md5 or sha1)")))
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    // Published vectors: RFC 1321 (MD5), FIPS 180 examples (SHA-1), and the CRC-32 check value
    // of "123456789" (0xCBF43926).
    #[test]
    fn known_answers_match_published_vectors() {
        let cases: &[(Algorithm, &[u8], &str)] = &[
            (Algorithm::Crc32, b"123456789", "cbf43926"),
            (Algorithm::Crc32, b"", "00000000"),
            (
                Algorithm::Crc32,
                b"The quick brown fox jumps over the lazy dog",
                "414fa339",
            ),
            (Algorithm::Md5, b"", "d41d8cd98f00b204e9800998ecf8427e"),
            (Algorithm::Md5, b"abc", "900150983cd24fb0d6963f7d28e17f72"),
            (
                Algorithm::Md5,
                b"message digest",
                "f96b697d7cb7938d525a2f31aaf161d0",
            ),
            (
                Algorithm::Sha1,
                b"abc",
                "a9993e364706816aba3e25717850c26c9cd0d89d",
            ),
            (
                Algorithm::Sha1,
                b"",
                "da39a3ee5e6b4b0d3255bfef95601890afd80709",
            ),
            (
                Algorithm::Sha1,
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                "84983e441c3bd26ebaae4aa1f95129e5e54670f1",
            ),
        ];
        for (alg, input, want) in cases {
            assert_eq!(hex(&alg.digest(input)), *want, "{alg} of {input:?}");
        }
    }

    #[test]
    fn algorithm_names_and_ids_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(a.name().parse::<Algorithm>().unwrap(), a);
            assert_eq!(Algorithm::from_id(a.id()), Some(a));
            assert!(a.digest_len() <= MAX_DIGEST_LEN);
        }
        assert!("sha256".parse::<Algorithm>().is_err());
        assert_eq!(Algorithm::from_id(0), None);
    }
}

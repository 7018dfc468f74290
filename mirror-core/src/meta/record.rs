//! The metadata record and its byte layout.
//!
//! A volume's record says who the volume is ([`VolumeId`], drawn from the OS's random source
//! when mirror first uses the volume), which generation of data it holds and which came before
//! ([`GenId`]: a generation is the primary session that wrote it), whom it mirrors when it is a
//! secondary, whether it is a usable image, and how far it is known coherent.
//!
//! Layout, version 1, all integers little-endian:
//!
//! ```text
//! offset  size  field
//!      0     8  magic "MIRRMETA"
//!      8     2  format version (1)
//!     10     2  flags: bit 0 consistent, bit 1 checkpoint present; others zero
//!     12     4  body length N (at most MAX_BODY)
//!     16     N  body:
//!                 16  identity (u128; never zero)
//!                  1  role last served: 0 none, 1 primary, 2 secondary
//!                 16  current generation (0: none yet)
//!                  1  history count H (at most HISTORY_MAX)
//!               16·H  earlier generations, newest first
//!                 16  bound to: the primary volume this one mirrors (0: none)
//!                 16  last coherent session (0: never)
//!                  8  last coherent epoch
//!                  8  last coherent time, milliseconds since the Unix epoch
//!                 16  peer volume at the last coherent sync (0: none)
//!                  2  peer address length L (at most MAX_PEER), then L bytes of UTF-8
//!                 16  checkpoint session   } present when flag bit 1 is set
//!                  8  checkpoint next block }
//!  16+N     4  CRC-32C (Castagnoli) of bytes [0, 16+N)
//! ```
//!
//! A decoder refuses a wrong magic, an unknown version, unknown flags, a body length past the
//! file or past `MAX_BODY`, a count past its bound, trailing bytes and a bad checksum; every
//! refusal says which, so `mirror info` can tell a torn record from a foreign file.

use std::fmt;

use crate::units::Generation;

/// The record's magic bytes.
pub const MAGIC: [u8; 8] = *b"MIRRMETA";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Most earlier generations a record keeps.
pub const HISTORY_MAX: usize = 16;
/// Longest peer address kept.
pub const MAX_PEER: usize = 255;
/// Largest body a record may have.
pub const MAX_BODY: usize = 4096;

const FLAG_CONSISTENT: u16 = 1;
const FLAG_CHECKPOINT: u16 = 2;
const HEADER: usize = 16;

/// A volume's identity: a random UUID (version 4), never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct VolumeId(pub u128);

impl VolumeId {
    /// A fresh identity from the OS's random source.
    pub fn random() -> VolumeId {
        VolumeId(uuid::Uuid::new_v4().as_u128())
    }

    /// True for the zero id, which means "none".
    pub fn is_none(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            f.write_str("none")
        } else {
            write!(f, "{}", uuid::Uuid::from_u128(self.0).hyphenated())
        }
    }
}

/// A generation of a volume's data: the primary session that wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct GenId(pub u128);

impl GenId {
    /// True for the zero id, which means "none".
    pub fn is_none(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for GenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            f.write_str("none")
        } else {
            write!(f, "{:032x}", self.0)
        }
    }
}

/// The role a volume last served in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Not yet used in a pair.
    #[default]
    None,
    /// Written by a primary of this volume.
    Primary,
    /// Written by a primary of another volume.
    Secondary,
}

impl Role {
    fn code(self) -> u8 {
        match self {
            Role::None => 0,
            Role::Primary => 1,
            Role::Secondary => 2,
        }
    }

    fn from_code(c: u8) -> Option<Role> {
        Some(match c {
            0 => Role::None,
            1 => Role::Primary,
            2 => Role::Secondary,
            _ => return None,
        })
    }

    /// Its name: `none`, `primary`, `secondary`.
    pub fn name(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }
}

/// How far a full checksum scan of one primary session got: every block below `next_block`
/// was compared and its repairs acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The primary session that ran the scan.
    pub session: u128,
    /// The first block not yet compared.
    pub next_block: u64,
}

/// What a volume's metadata record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRecord {
    /// The volume's identity.
    pub identity: VolumeId,
    /// The role the volume last served in.
    pub role: Role,
    /// The generation whose data the volume holds.
    pub current: GenId,
    /// Earlier generations, newest first (at most [`HISTORY_MAX`]).
    pub history: Vec<GenId>,
    /// The primary volume this one mirrors, when it is (or was) a secondary.
    pub bound_to: VolumeId,
    /// False while a resync that is not in write order is under way: the data is then not a
    /// usable image.
    pub consistent: bool,
    /// The (session, connection) last known coherent.
    pub last_coherent: Generation,
    /// When that was, in milliseconds since the Unix epoch.
    pub last_coherent_ms: u64,
    /// The peer volume of that sync.
    pub peer_identity: VolumeId,
    /// The peer's address then.
    pub peer_addr: String,
    /// Where an interrupted full scan may resume.
    pub checkpoint: Option<Checkpoint>,
}

impl MetaRecord {
    /// The record of a volume mirror has just met: a fresh identity, no history, consistent.
    pub fn fresh() -> MetaRecord {
        MetaRecord {
            identity: VolumeId::random(),
            role: Role::None,
            current: GenId::default(),
            history: Vec::new(),
            bound_to: VolumeId::default(),
            consistent: true,
            last_coherent: Generation::default(),
            last_coherent_ms: 0,
            peer_identity: VolumeId::default(),
            peer_addr: String::new(),
            checkpoint: None,
        }
    }

    /// Makes `g` the current generation, pushing the old one into the history (newest first,
    /// the oldest dropped past [`HISTORY_MAX`]).
    pub fn advance(&mut self, g: GenId) {
        if self.current == g {
            return;
        }
        if !self.current.is_none() {
            self.history.retain(|h| *h != self.current);
            self.history.insert(0, self.current);
        }
        self.history.retain(|h| *h != g);
        self.history.truncate(HISTORY_MAX);
        self.current = g;
    }

    /// The record's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(256);
        body.extend_from_slice(&self.identity.0.to_le_bytes());
        body.push(self.role.code());
        body.extend_from_slice(&self.current.0.to_le_bytes());
        let history = &self.history[..self.history.len().min(HISTORY_MAX)];
        body.push(history.len() as u8);
        for g in history {
            body.extend_from_slice(&g.0.to_le_bytes());
        }
        body.extend_from_slice(&self.bound_to.0.to_le_bytes());
        body.extend_from_slice(&self.last_coherent.session.to_le_bytes());
        body.extend_from_slice(&self.last_coherent.epoch.to_le_bytes());
        body.extend_from_slice(&self.last_coherent_ms.to_le_bytes());
        body.extend_from_slice(&self.peer_identity.0.to_le_bytes());
        let peer = truncate_utf8(&self.peer_addr, MAX_PEER);
        body.extend_from_slice(&(peer.len() as u16).to_le_bytes());
        body.extend_from_slice(peer.as_bytes());
        let mut flags = 0;
        if self.consistent {
            flags |= FLAG_CONSISTENT;
        }
        if let Some(c) = self.checkpoint {
            flags |= FLAG_CHECKPOINT;
            body.extend_from_slice(&c.session.to_le_bytes());
            body.extend_from_slice(&c.next_block.to_le_bytes());
        }
        let mut out = Vec::with_capacity(HEADER + body.len() + 4);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a record, or says why the bytes are not one.
    pub fn decode(bytes: &[u8]) -> Result<MetaRecord, String> {
        if bytes.len() < HEADER + 4 {
            return Err(format!("too short ({} bytes): torn write?", bytes.len()));
        }
        if bytes[..8] != MAGIC {
            return Err("bad magic: not a mirror metadata record".into());
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != FORMAT_VERSION {
            return Err(format!(
                "format version {version}, this build reads {FORMAT_VERSION}"
            ));
        }
        let flags = u16::from_le_bytes([bytes[10], bytes[11]]);
        let len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
        if len > MAX_BODY {
            return Err(format!("body length {len} exceeds {MAX_BODY}"));
        }
        if bytes.len() != HEADER + len + 4 {
            return Err(format!(
                "length {} does not match the header's {}: torn write?",
                bytes.len(),
                HEADER + len + 4
            ));
        }
        let stored = u32::from_le_bytes(bytes[HEADER + len..].try_into().expect("4 bytes"));
        if crc32c::crc32c(&bytes[..HEADER + len]) != stored {
            return Err("checksum mismatch: torn or corrupt".into());
        }
        if flags & !(FLAG_CONSISTENT | FLAG_CHECKPOINT) != 0 {
            return Err(format!("unknown flags {flags:#x}"));
        }
        let mut c = Cursor(&bytes[HEADER..HEADER + len]);
        let identity = VolumeId(c.u128()?);
        if identity.is_none() {
            return Err("identity is zero".into());
        }
        let role = Role::from_code(c.u8()?).ok_or("unknown role")?;
        let current = GenId(c.u128()?);
        let n = c.u8()? as usize;
        if n > HISTORY_MAX {
            return Err(format!("history of {n} generations exceeds {HISTORY_MAX}"));
        }
        let mut history = Vec::with_capacity(n);
        for _ in 0..n {
            history.push(GenId(c.u128()?));
        }
        let bound_to = VolumeId(c.u128()?);
        let last_coherent = Generation {
            session: c.u128()?,
            epoch: c.u64()?,
        };
        let last_coherent_ms = c.u64()?;
        let peer_identity = VolumeId(c.u128()?);
        let plen = c.u16()? as usize;
        if plen > MAX_PEER {
            return Err(format!("peer address of {plen} bytes exceeds {MAX_PEER}"));
        }
        let peer_addr = String::from_utf8(c.take(plen)?.to_vec())
            .map_err(|_| "peer address is not UTF-8".to_string())?;
        let checkpoint = if flags & FLAG_CHECKPOINT != 0 {
            Some(Checkpoint {
                session: c.u128()?,
                next_block: c.u64()?,
            })
        } else {
            None
        };
        if !c.0.is_empty() {
            return Err(format!("{} trailing bytes in the body", c.0.len()));
        }
        Ok(MetaRecord {
            identity,
            role,
            current,
            history,
            bound_to,
            consistent: flags & FLAG_CONSISTENT != 0,
            last_coherent,
            last_coherent_ms,
            peer_identity,
            peer_addr,
            checkpoint,
        })
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("body ends inside a field".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn u128(&mut self) -> Result<u128, String> {
        Ok(u128::from_le_bytes(self.take(16)?.try_into().expect("16")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MetaRecord {
        MetaRecord {
            identity: VolumeId(0x1111),
            role: Role::Secondary,
            current: GenId(7),
            history: vec![GenId(6), GenId(5)],
            bound_to: VolumeId(0x2222),
            consistent: false,
            last_coherent: Generation {
                session: 7,
                epoch: 3,
            },
            last_coherent_ms: 1_700_000_000_000,
            peer_identity: VolumeId(0x2222),
            peer_addr: "10.0.0.1:7070".into(),
            checkpoint: Some(Checkpoint {
                session: 7,
                next_block: 1234,
            }),
        }
    }

    #[test]
    fn record_round_trips() {
        let r = sample();
        assert_eq!(MetaRecord::decode(&r.encode()).unwrap(), r);
        let f = MetaRecord::fresh();
        assert_eq!(MetaRecord::decode(&f.encode()).unwrap(), f);
    }

    #[test]
    fn golden_bytes_of_a_minimal_record() {
        let r = MetaRecord {
            identity: VolumeId(1),
            role: Role::Primary,
            current: GenId(2),
            history: vec![],
            bound_to: VolumeId(0),
            consistent: true,
            last_coherent: Generation::default(),
            last_coherent_ms: 0,
            peer_identity: VolumeId(0),
            peer_addr: String::new(),
            checkpoint: None,
        };
        let b = r.encode();
        assert_eq!(&b[..16], b"MIRRMETA\x01\x00\x01\x00\x64\x00\x00\x00");
        assert_eq!(b.len(), 16 + 0x64 + 4);
        assert_eq!(b[16], 1, "identity, little-endian");
        assert_eq!(b[32], 1, "role primary");
        assert_eq!(b[33], 2, "current generation");
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_detected() {
        let b = sample().encode();
        for i in 0..b.len() * 8 {
            let mut c = b.clone();
            c[i / 8] ^= 1 << (i % 8);
            assert!(
                MetaRecord::decode(&c).is_err(),
                "bit {i} flipped went unnoticed"
            );
        }
        for n in 0..b.len() {
            assert!(MetaRecord::decode(&b[..n]).is_err(), "truncation to {n}");
        }
    }

    #[test]
    fn advance_keeps_history_newest_first_and_bounded() {
        let mut r = MetaRecord::fresh();
        for g in 1..=(HISTORY_MAX as u128 + 5) {
            r.advance(GenId(g));
        }
        assert_eq!(r.current, GenId(HISTORY_MAX as u128 + 5));
        assert_eq!(r.history.len(), HISTORY_MAX);
        assert_eq!(r.history[0], GenId(HISTORY_MAX as u128 + 4));
        r.advance(r.current);
        assert_eq!(r.history.len(), HISTORY_MAX);
    }

    #[test]
    fn identities_are_random_uuids() {
        let (a, b) = (VolumeId::random(), VolumeId::random());
        assert_ne!(a, b);
        assert_eq!(a.to_string().len(), 36);
        assert_eq!(VolumeId(0).to_string(), "none");
    }
}

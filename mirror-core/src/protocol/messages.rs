//! Messages of the wire protocol: declared once, in the table below, from which their kind
//! codes, names, encoders and decoders come. A new message is one table entry, plus a rule in
//! [`Message::check`] when its fields need more than their types say.
//!
//! # Conversation
//!
//! ```text
//! primary                                   secondary
//!              (TLS 1.3 handshake first, when configured: see `tls`)
//! Hello{magic, version, nonce_p}      -->
//!                                     <--   HelloReply{version, auth, nonce_s}
//! Auth{proof_p}        (secret set)   -->
//!                                     <--   AuthReply{proof_s}  (only once proof_p verified)
//! Open{volume, session, epoch, size, block_size, generation, flags, history}
//!                                     <--   OpenReply{size, block_size, last session, epoch,
//!                                                     volume, bound to, generation,
//!                                                     consistent, history}
//!                                     (or Error{MISMATCH | BUSY}: refused, nothing written)
//! Write / WriteZeroes / Trim / Flush / Barrier / ResyncDone / Ping ...
//!                                     -->   (in order)  <-- Ack{seq} / Pong
//! ScanRequest{req, range, level}      -->   <-- Digests{req, start, ...}* ScanEnd{req}
//! CompareRequest{req, range}, Digests* , CompareEnd{req}
//!                                     <--   BlockRequest{req, range}* CompareDone{req, n}
//!
//! The secondary may lead a scan of its own (request ids of its own numbering; the lead
//! messages are apart from the primary-led ones, so neither side mistakes whose id it is):
//!                                     <--   LeadScan{req, range, level}     (secondary compares)
//! LeadDigests{req, start, ...}*       -->   <-- RepairRequest{req, range}*  ... LeadEnd{req}
//!                                     <--   LeadCompare{req, range, level}, LeadDigests*,
//!                                           LeadEnd{req}                    (primary compares)
//! Write{REPAIR}* ... LeadDone{req, n} -->   (repairs ride the ordered stream, before LeadDone)
//!                                     <--   LeadReport{req, ...}            (for its status)
//! ```
//!
//! The primary proves the shared secret first; the secondary proves it only to a primary that
//! did, so a peer without the secret learns nothing it could guess the secret against. Each
//! proof is an HMAC over both nonces and the TLS exporter of the session (zeros without TLS),
//! so it is worthless on any other connection (see `auth`).
//!
//! Either side may send `Error{code, message}` and close. Before authentication its message is
//! generic (what was wrong, never a path or other local detail). A version the secondary does not
//! speak is answered with `Error{VERSION}` naming both versions.
//!
//! # Versions
//!
//! - 1: the first.
//! - 2: `Open` and `OpenReply` carry each volume's identity, generation and history (the
//!   newest [`MAX_WIRE_HISTORY`] generations, 16 bytes each, as the trailing bytes field) and
//!   the primary's `--adopt`/`--discard-secondary` flags ([`open_flags`]); the secondary says
//!   whether it is a consistent image. `ResyncDone` ends a resync. `Error{MISMATCH}` also
//!   refuses another volume's primary or a split brain; `Error{BUSY}` a second primary
//!   beside a live session. The primary proves the shared secret first (`Auth`), the
//!   secondary answers with `AuthReply` (`HelloReply` carries no proof), and proofs cover the
//!   TLS exporter. A version-1 peer is refused at `Hello` with `Error{VERSION}` naming both versions.
//!
//! The `level` byte of scan and compare requests selects what a digest covers: 0 is one block.
//! Higher levels (a digest over 2^level consecutive block digests, for a hierarchical
//! Merkle-style descent) travel in the tree messages of version 3, which name a chunk, a
//! level and a bitmap of its nodes (see [`super::tree`]); scan and compare requests of any
//! level but 0 are refused:
//!
//! ```text
//! TreeRequest{req, level, chunk, bitmap}    -->  <-- TreeDigests{req, level, chunk, bitmap ‖ digests}
//!                                                    (primary compares; one answer per request)
//! TreeDigests{req, level, chunk, ...}       -->  <-- TreeRequest{req, lower level, chunk, children}
//!                                                    (secondary compares) ... <-- BlockRequest*
//!                                                    TreeDone{req, chunk, mismatched}
//! ```
//!
//! # Payloads
//!
//! A payload is its message's fields in the order the table lists them, each encoded by its
//! type's [`Field`] codec: integers little-endian, `bool` one byte (0 or 1), arrays as they
//! are, an [`Algorithm`] as its id byte, a [`BlockRange`] as start then count (u64 each). A
//! `Vec<u8>` or `String` field is the rest of the payload, so it comes last.

use std::io;

use super::frame::{bad, encode_frame, Cursor};
use super::tree;
use crate::storage::digest::Algorithm;
use crate::units::BlockRange;

pub use super::frame::{
    read_frame, write_frame, FrameError, HEADER_LEN, MAX_HANDSHAKE_PAYLOAD, MAX_PAYLOAD,
    TRAILER_LEN,
};

/// Protocol version this build speaks.
///
/// Changes: 2 — the primary proves the shared secret first (`Auth`), the secondary answers
/// with `AuthReply`; `HelloReply` carries no proof; proofs cover the TLS exporter; `Open` and
/// `OpenReply` carry identities and generation histories (see Versions above); `WriteZeroes`
/// and `Trim` zero ranges. Version 1 (the secondary proved first, to anyone) is no longer
/// spoken.
///
/// 3 — hierarchical digests: `TreeRequest`, `TreeDigests` and `TreeDone` (see [`super::tree`]).
/// A secondary answers `Hello` with the lower of both versions, and a primary refused at
/// version 3 by an older secondary connects again at 2; at 2 jobs compare flat (level 0).
pub const PROTOCOL_VERSION: u16 = 3;
/// First protocol version with hierarchical digests.
pub const TREE_PROTOCOL_VERSION: u16 = 3;
/// Oldest protocol version this build speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 2;
/// Most generations of history an Open or OpenReply carries (16 bytes each), which keeps
/// both within the handshake's frame limit.
pub const MAX_WIRE_HISTORY: usize = 8;
/// Magic of the Hello message.
pub const MAGIC: [u8; 4] = *b"MIRR";
/// Most bytes of data one Write frame carries.
pub const MAX_WRITE_DATA: usize = 1 << 20;
/// Most blocks one scan or compare request covers.
pub const MAX_REQUEST_BLOCKS: u64 = 1 << 16;
/// Most digests one Digests frame carries.
pub const MAX_DIGESTS_PER_FRAME: usize = 4096;
/// Most bytes of an error message.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// Error codes of the `Error` message (wire values; never reuse one).
pub mod code {
    #![allow(missing_docs)]
    pub const PROTOCOL: u16 = 1;
    pub const VERSION: u16 = 2;
    pub const MISMATCH: u16 = 3;
    pub const AUTH: u16 = 4;
    pub const IO: u16 = 5;
    pub const OUT_OF_RANGE: u16 = 6;
    pub const UNSUPPORTED: u16 = 7;
    pub const SHUTDOWN: u16 = 8;
    /// The secondary is held by another live session.
    pub const BUSY: u16 = 9;
}

/// Flags of an Open message: what the primary's operator allowed to be discarded.
pub mod open_flags {
    /// Rebind a secondary bound to another volume (`--adopt`).
    pub const ADOPT: u8 = 1;
    /// Resolve a split brain in favour of this primary (`--discard-secondary`).
    pub const DISCARD_SECONDARY: u8 = 2;
    /// The primary keeps no metadata record: its identity and generation last one process,
    /// so the secondary cannot hold it to a binding and admits it without one.
    pub const EPHEMERAL: u8 = 4;
    /// Every flag this version knows.
    pub const ALL: u8 = ADOPT | DISCARD_SECONDARY | EPHEMERAL;
}

/// Generation ids as the 16-byte little-endian records of a history field.
pub fn history_bytes(h: &[u128]) -> Vec<u8> {
    h.iter()
        .take(MAX_WIRE_HISTORY)
        .flat_map(|g| g.to_le_bytes())
        .collect()
}

/// The generation ids of a history field (its length was checked on decode).
pub fn history_ids(b: &[u8]) -> Vec<u128> {
    b.chunks_exact(16)
        .map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes")))
        .collect()
}

/// Flags of a Write message.
pub mod write_flags {
    /// Flush the secondary's volume before acknowledging.
    pub const FLUSH: u8 = 1;
    /// A resync or repair block, not a replicated write.
    pub const REPAIR: u8 = 2;
    /// Acknowledge on arrival, before the write is applied (durability `received`).
    pub const RECEIVED: u8 = 4;
    /// Every flag this version knows.
    pub const ALL: u8 = FLUSH | REPAIR | RECEIVED;
}

/// Flags of the WriteZeroes and Trim messages.
pub mod zero_flags {
    /// Flush the secondary's volume before acknowledging.
    pub const FLUSH: u8 = super::write_flags::FLUSH;
    /// Acknowledge on arrival, before the range is zeroed (durability `received`).
    pub const RECEIVED: u8 = super::write_flags::RECEIVED;
    /// Every flag this version knows.
    pub const ALL: u8 = FLUSH | RECEIVED;
}

/// Priority byte of scan and compare requests.
pub mod priority {
    /// Foreground.
    pub const NORMAL: u8 = 0;
    /// Background (idle I/O class where the volume supports it).
    pub const IDLE: u8 = 1;
}

/// Declares the messages: for each, its kind code (a wire value; never reuse one), the name
/// of its `kind::` constant, its variant and its fields in wire order. A code used twice is an
/// unreachable pattern in [`kind_name`], which the lints refuse.
macro_rules! messages {
    ($(
        $(#[$doc:meta])*
        $code:literal => $KIND:ident $Variant:ident { $($field:ident : $ty:ty),* $(,)? }
    ),* $(,)?) => {
        /// One message of the protocol.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Message {
            $( $(#[$doc])* $Variant { $($field: $ty),* }, )*
        }

        /// Message kinds (wire values; never reuse one).
        pub mod kind {
            $(
                #[doc = concat!("Kind of `", stringify!($Variant), "`.")]
                pub const $KIND: u8 = $code;
            )*
        }

        /// Name of a message kind.
        pub fn kind_name(k: u8) -> &'static str {
            match k {
                $( kind::$KIND => stringify!($Variant), )*
                _ => "unknown",
            }
        }

        impl Message {
            /// The kind byte.
            pub fn kind(&self) -> u8 {
                match self {
                    $( Message::$Variant { .. } => kind::$KIND, )*
                }
            }

            fn encode_payload(&self, o: &mut Vec<u8>) {
                match self {
                    $( Message::$Variant { $($field),* } => { $( Field::put($field, o); )* } )*
                }
            }

            fn decode_fields(c: &mut Cursor<'_>) -> Result<Message, FrameError> {
                Ok(match c.kind() {
                    $( kind::$KIND => Message::$Variant { $($field: Field::get(c)?),* }, )*
                    other => return Err(bad(format!("unknown message kind {other}"))),
                })
            }
        }
    };
}

messages! {
    /// Primary's greeting.
    1 => HELLO Hello { magic: [u8; 4], version: u16, nonce: [u8; 32] },
    /// Secondary's answer: the version it will speak, whether it requires the shared secret.
    2 => HELLO_REPLY HelloReply { version: u16, auth_required: bool, nonce: [u8; 32] },
    /// Primary's proof of the shared secret.
    3 => AUTH Auth { proof: [u8; 32] },
    /// Primary's volume, session and connection, its generation and history, and what its
    /// operator allowed to be discarded.
    4 => OPEN Open { volume_id: u128, session: u128, epoch: u64, size: u64, block_size: u32, generation: u128, flags: u8, history: Vec<u8> },
    /// Secondary's volume, the session and connection it last followed, its identity, the
    /// volume it mirrors, its generation, whether it is a consistent image, and its history.
    5 => OPEN_REPLY OpenReply { size: u64, block_size: u32, last_session: u128, last_epoch: u64, volume_id: u128, bound_to: u128, generation: u128, consistent: bool, history: Vec<u8> },
    /// Data to write at a byte offset.
    6 => WRITE Write { seq: u64, offset: u64, flags: u8, data: Vec<u8> },
    /// Acknowledges the Write, Flush or Barrier `seq`.
    7 => ACK Ack { seq: u64 },
    /// Flush the volume, then acknowledge.
    8 => FLUSH Flush { seq: u64 },
    /// Acknowledge once everything before it is applied.
    9 => BARRIER Barrier { seq: u64 },
    /// Send the digests of a range.
    10 => SCAN_REQUEST ScanRequest { req: u64, algorithm: Algorithm, level: u8, priority: u8, range: BlockRange },
    /// Digests of consecutive blocks from `start`.
    11 => DIGESTS Digests { req: u64, algorithm: Algorithm, start: u64, digests: Vec<u8> },
    /// All digests of request `req` were sent.
    12 => SCAN_END ScanEnd { req: u64 },
    /// The primary will stream its digests of a range; compare and ask for what differs.
    13 => COMPARE_REQUEST CompareRequest { req: u64, algorithm: Algorithm, level: u8, priority: u8, range: BlockRange },
    /// The primary sent every digest of compare `req`.
    14 => COMPARE_END CompareEnd { req: u64 },
    /// Blocks whose digests differ.
    15 => BLOCK_REQUEST BlockRequest { req: u64, range: BlockRange },
    /// Compare `req` is finished; `mismatched` blocks were requested.
    16 => COMPARE_DONE CompareDone { req: u64, mismatched: u64 },
    /// Liveness probe.
    17 => PING Ping { nonce: u64 },
    /// Answer to a Ping.
    18 => PONG Pong { nonce: u64 },
    /// A fatal error; the sender closes the connection.
    19 => ERROR Error { code: u16, message: String },
    /// A barrier that ends a whole resync: once everything before it is applied the
    /// secondary is a consistent image again, durably, and then acknowledges.
    20 => RESYNC_DONE ResyncDone { seq: u64 },
    /// The secondary's volume failed an I/O (`op` one of the [`io_op`] codes) with the OS
    /// error `errno`; the sender closes the connection. Sent instead of `Error{IO}` so the
    /// primary can tell the secondary's disk from the link.
    24 => IO_ERROR IoError { errno: u32, offset: u64, op: u8, volume: String },
    /// Zeros over `len` bytes at a byte offset, storage kept allocated where the volume can.
    /// Bounded by the volume, not by the frame: nothing of `len` is allocated.
    25 => WRITE_ZEROES WriteZeroes { seq: u64, offset: u64, len: u64, flags: u8 },
    /// Trim `len` bytes at a byte offset: storage released where the volume can, and the
    /// range reads as zeros on every volume (trim is not advisory in mirror).
    26 => TRIM Trim { seq: u64, offset: u64, len: u64, flags: u8 },
    /// Secondary leads, and compares: send your digests of a range (as `LeadDigests`).
    40 => LEAD_SCAN LeadScan { req: u64, algorithm: Algorithm, level: u8, priority: u8, range: BlockRange },
    /// Secondary leads, the primary compares: the secondary's digests of a range follow (as
    /// `LeadDigests`, then `LeadEnd`); repair what differs.
    41 => LEAD_COMPARE LeadCompare { req: u64, algorithm: Algorithm, level: u8, priority: u8, range: BlockRange },
    /// Digests of consecutive blocks from `start`, for the secondary-led request `req`.
    42 => LEAD_DIGESTS LeadDigests { req: u64, algorithm: Algorithm, start: u64, digests: Vec<u8> },
    /// Send these blocks: the primary reads them under their region locks and sends them as
    /// repair writes on the ordered stream.
    43 => REPAIR_REQUEST RepairRequest { req: u64, range: BlockRange },
    /// The secondary sent everything of `req` (of its current `LeadCompare`, when comparing on
    /// the primary); answered with `LeadDone`.
    44 => LEAD_END LeadEnd { req: u64 },
    /// Every repair write caused by `req` up to its `LeadEnd` is before this on the stream;
    /// `repaired` blocks were sent since the previous `LeadDone` of `req`.
    45 => LEAD_DONE LeadDone { req: u64, repaired: u64 },
    /// The report of a secondary-led scan, for the primary's status. `mode` is 0 for a scan on
    /// connection, 1 for a periodic one; `compare` 0 for the primary, 1 for the secondary.
    46 => LEAD_REPORT LeadReport { req: u64, mode: u8, compare: u8, algorithm: Algorithm, blocks: u64, mismatched: u64, blocks_sent: u64, bytes_sent: u64, bytes_received: u64, micros: u64 },
    /// Secondary's proof of the shared secret, sent once the primary's has verified.
    47 => AUTH_REPLY AuthReply { proof: [u8; 32] },
    /// Send the digests at `level` of the nodes of the chunk `range` in the groups of
    /// 2^`group` nodes marked in the bitmap `nodes` (see [`super::tree`]), as one
    /// `TreeDigests`. Version 3.
    48 => TREE_REQUEST TreeRequest { req: u64, algorithm: Algorithm, level: u8, group: u8, priority: u8, range: BlockRange, nodes: Vec<u8> },
    /// Digests at `level` of nodes of the chunk `range`: the group bitmap (as in
    /// `TreeRequest`), then one digest per node of the marked groups, in order. From the
    /// secondary it answers a `TreeRequest`; from the primary it asks the secondary to
    /// compare. Version 3.
    49 => TREE_DIGESTS TreeDigests { req: u64, algorithm: Algorithm, level: u8, group: u8, priority: u8, range: BlockRange, nodes: Vec<u8> },
    /// The secondary compared the chunk `range` of tree compare `req` to its leaves and asked
    /// for its `mismatched` differing blocks (`BlockRequest`s before this). Version 3.
    50 => TREE_DONE TreeDone { req: u64, range: BlockRange, mismatched: u64 },
}

/// The operation of an `IoError` message (wire values; never reuse one).
pub mod io_op {
    #![allow(missing_docs)]
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const FLUSH: u8 = 3;
    pub const OTHER: u8 = 0;

    /// The engine's name of an operation code.
    pub fn name(op: u8) -> &'static str {
        match op {
            READ => "read",
            WRITE => "write",
            FLUSH => "flush",
            _ => "I/O",
        }
    }

    /// The code of an engine operation name.
    pub fn code(name: &str) -> u8 {
        match name {
            "read" => READ,
            "write" => WRITE,
            "flush" => FLUSH,
            _ => OTHER,
        }
    }
}

impl Message {
    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        kind_name(self.kind())
    }

    /// Appends the whole frame (header, payload, checksum) to `out`.
    ///
    /// Panics never: a payload over [`MAX_PAYLOAD`] is a bug of the caller and is refused
    /// with an error.
    pub fn encode(&self, out: &mut Vec<u8>) -> io::Result<()> {
        encode_frame(out, self.kind(), |o| self.encode_payload(o))
    }

    /// The whole frame.
    pub fn to_frame(&self) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        self.encode(&mut v)?;
        Ok(v)
    }

    /// Decodes the payload of a frame of kind `kind`.
    pub fn decode(kind: u8, p: &[u8]) -> Result<Message, FrameError> {
        let mut c = Cursor::new(kind, p);
        let msg = Message::decode_fields(&mut c)?;
        c.finish()?;
        msg.check()?;
        Ok(msg)
    }

    /// The rules a decoded message must keep beyond its field types: every length and count
    /// is bounded before anything acts on it.
    fn check(&self) -> Result<(), FrameError> {
        match self {
            Message::Open { flags, history, .. }
                if flags & !open_flags::ALL != 0 || !history_ok(history) =>
            {
                return Err(bad(format!(
                    "Open with flags {flags:#x} and a history of {} bytes (known flags {:#x}; at most {MAX_WIRE_HISTORY} generations of 16 bytes)",
                    history.len(),
                    open_flags::ALL
                )));
            }
            Message::OpenReply { history, .. } if !history_ok(history) => {
                return Err(bad(format!(
                    "OpenReply with a history of {} bytes (at most {MAX_WIRE_HISTORY} generations of 16 bytes)",
                    history.len()
                )));
            }
            Message::Write { flags, data, .. } => {
                if flags & !write_flags::ALL != 0 {
                    return Err(bad(format!("Write with unknown flags {flags:#x}")));
                }
                if data.is_empty() || data.len() > MAX_WRITE_DATA {
                    return Err(bad(format!(
                        "Write of {} bytes (1 to {MAX_WRITE_DATA})",
                        data.len()
                    )));
                }
            }
            Message::WriteZeroes {
                offset, len, flags, ..
            }
            | Message::Trim {
                offset, len, flags, ..
            } => {
                if flags & !zero_flags::ALL != 0 {
                    return Err(bad(format!(
                        "{} with unknown flags {flags:#x}",
                        self.name()
                    )));
                }
                // The volume bounds the range (checked before any I/O by the receiver); here
                // only what no volume could hold.
                if *len == 0 || offset.checked_add(*len).is_none() {
                    return Err(bad(format!(
                        "{} of {len} bytes at {offset} (1 byte or more, within u64)",
                        self.name()
                    )));
                }
            }
            Message::ScanRequest {
                priority, range, ..
            }
            | Message::CompareRequest {
                priority, range, ..
            }
            | Message::LeadScan {
                priority, range, ..
            }
            | Message::LeadCompare {
                priority, range, ..
            } => {
                if !request_range_ok(range) {
                    return Err(bad(format!(
                        "request for {} blocks at {} (1 to {MAX_REQUEST_BLOCKS})",
                        range.count, range.start.0
                    )));
                }
                if *priority > priority::IDLE {
                    return Err(bad(format!("unknown priority {priority}")));
                }
            }
            Message::Digests {
                algorithm,
                start,
                digests,
                ..
            }
            | Message::LeadDigests {
                algorithm,
                start,
                digests,
                ..
            } => {
                let w = algorithm.digest_len();
                if digests.is_empty()
                    || digests.len() % w != 0
                    || digests.len() / w > MAX_DIGESTS_PER_FRAME
                {
                    return Err(bad(format!(
                        "Digests of {} bytes is not 1 to {MAX_DIGESTS_PER_FRAME} {algorithm} digests",
                        digests.len()
                    )));
                }
                if start.checked_add((digests.len() / w) as u64).is_none() {
                    return Err(bad("Digests reach past the largest block index"));
                }
            }
            Message::BlockRequest { range, .. } | Message::RepairRequest { range, .. }
                if !request_range_ok(range) =>
            {
                return Err(bad(format!(
                    "{} for {} blocks at {}",
                    self.name(),
                    range.count,
                    range.start.0
                )));
            }
            Message::TreeRequest {
                algorithm,
                level,
                group,
                priority,
                range,
                nodes,
                ..
            }
            | Message::TreeDigests {
                algorithm,
                level,
                group,
                priority,
                range,
                nodes,
                ..
            } => {
                if !tree_range_ok(range) {
                    return Err(bad(format!(
                        "{} for a chunk of {} blocks at {} (1 to {})",
                        self.name(),
                        range.count,
                        range.start.0,
                        tree::MAX_TREE_BLOCKS
                    )));
                }
                if *priority > priority::IDLE {
                    return Err(bad(format!("unknown priority {priority}")));
                }
                if u16::from(*level) + u16::from(*group) > u16::from(tree::MAX_TREE_LEVEL) {
                    return Err(bad(format!(
                        "{} at tree level {level} in groups of 2^{group} (0 to {} together)",
                        self.name(),
                        tree::MAX_TREE_LEVEL
                    )));
                }
                // A request is its bitmap; an answer its bitmap, then the digests.
                let answer = matches!(self, Message::TreeDigests { .. });
                let map = if answer {
                    tree::bitmap_len(range.count, *level, *group).min(nodes.len())
                } else {
                    nodes.len()
                };
                let (bitmap, digests) = nodes.split_at(map);
                let marked = tree::check_bitmap(range.count, *level, *group, bitmap)
                    .map_err(|e| bad(format!("{}: {e}", self.name())))?;
                if answer && digests.len() as u64 != marked * algorithm.digest_len() as u64 {
                    return Err(bad(format!(
                        "TreeDigests with {} bytes of digests for {marked} {algorithm} nodes",
                        digests.len()
                    )));
                }
            }
            Message::TreeDone {
                range, mismatched, ..
            } if !tree_range_ok(range) || *mismatched > range.count => {
                return Err(bad(format!(
                    "TreeDone of {mismatched} blocks for a chunk of {} blocks at {}",
                    range.count, range.start.0
                )));
            }
            Message::LeadReport { mode, compare, .. } if *mode > 1 || *compare > 1 => {
                return Err(bad(format!(
                    "LeadReport with mode {mode} and compare {compare} (0 or 1 each)"
                )));
            }
            _ => {}
        }
        Ok(())
    }
}

/// The chunk of a tree message covers 1 to [`tree::MAX_TREE_BLOCKS`] blocks, all with an index.
fn tree_range_ok(range: &BlockRange) -> bool {
    range.count != 0
        && range.count <= tree::MAX_TREE_BLOCKS
        && range.start.0.checked_add(range.count).is_some()
}

fn history_ok(h: &[u8]) -> bool {
    h.len() % 16 == 0 && h.len() <= 16 * MAX_WIRE_HISTORY
}

/// A scan, compare or block request covers 1 to [`MAX_REQUEST_BLOCKS`] blocks, all with an
/// index.
fn request_range_ok(range: &BlockRange) -> bool {
    range.count != 0
        && range.count <= MAX_REQUEST_BLOCKS
        && range.start.0.checked_add(range.count).is_some()
}

/// How a field of one type is written to and read from a payload.
trait Field: Sized {
    fn put(&self, o: &mut Vec<u8>);
    fn get(c: &mut Cursor<'_>) -> Result<Self, FrameError>;
}

macro_rules! le_fields {
    ($($t:ty),*) => {$(
        impl Field for $t {
            fn put(&self, o: &mut Vec<u8>) {
                o.extend_from_slice(&self.to_le_bytes());
            }
            fn get(c: &mut Cursor<'_>) -> Result<Self, FrameError> {
                Ok(<$t>::from_le_bytes(c.array()?))
            }
        }
    )*};
}
le_fields!(u8, u16, u32, u64, u128);

impl Field for bool {
    fn put(&self, o: &mut Vec<u8>) {
        o.push(*self as u8);
    }
    fn get(c: &mut Cursor<'_>) -> Result<Self, FrameError> {
        match u8::get(c)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(bad(format!("{}: boolean byte {v}", kind_name(c.kind())))),
        }
    }
}

impl<const N: usize> Field for [u8; N] {
    fn put(&self, o: &mut Vec<u8>) {
        o.extend_from_slice(self);
    }
    fn get(c: &mut Cursor<'_>) -> Result<Self, FrameError> {
        c.array()
    }
}

impl Field for Algorithm {
    fn put(&self, o: &mut Vec<u8>) {
        o.push(self.id());
    }
    fn get(c: &mut Cursor<'_>) -> Result<Self, FrameError> {
        let id = u8::get(c)?;
        Algorithm::from_id(id).ok_or_else(|| bad(format!("unknown algorithm id {id}")))
    }
}

impl Field for BlockRange {
    fn put(&self, o: &mut Vec<u8>) {
        self.start.0.put(o);
        self.count.put(o);
    }
    fn get(c: &mut Cursor<'_>) -> Result<Self, FrameError> {
        Ok(BlockRange::new(u64::get(c)?, u64::get(c)?))
    }
}

/// The rest of the payload, as bytes.
impl Field for Vec<u8> {
    fn put(&self, o: &mut Vec<u8>) {
        o.extend_from_slice(self);
    }
    fn get(c: &mut Cursor<'_>) -> Result<Self, FrameError> {
        Ok(c.rest().to_vec())
    }
}

/// The rest of the payload, as text of at most [`MAX_ERROR_MESSAGE`] bytes (cut at a
/// character boundary on encode, refused beyond it on decode).
impl Field for String {
    fn put(&self, o: &mut Vec<u8>) {
        o.extend_from_slice(truncate_utf8(self, MAX_ERROR_MESSAGE).as_bytes());
    }
    fn get(c: &mut Cursor<'_>) -> Result<Self, FrameError> {
        let rest = c.rest();
        if rest.len() > MAX_ERROR_MESSAGE {
            return Err(bad(format!("{} message too long", kind_name(c.kind()))));
        }
        Ok(String::from_utf8_lossy(rest).into_owned())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message> {
        use Message::*;
        vec![
            IoError {
                errno: 28,
                offset: 4096,
                op: io_op::WRITE,
                volume: "/dev/sdb".into(),
            },
            Hello {
                magic: MAGIC,
                version: 1,
                nonce: [7; 32],
            },
            HelloReply {
                version: 2,
                auth_required: true,
                nonce: [8; 32],
            },
            Auth { proof: [3; 32] },
            AuthReply { proof: [9; 32] },
            TreeRequest {
                req: 5,
                algorithm: Algorithm::Sha1,
                level: 3,
                group: 0,
                priority: priority::NORMAL,
                range: BlockRange::new(1024, 1000),
                nodes: crate::protocol::tree::bitmap(125, [0, 124]),
            },
            TreeDigests {
                req: 5,
                algorithm: Algorithm::Md5,
                level: 10,
                group: 0,
                priority: priority::IDLE,
                range: BlockRange::new(0, 1024),
                nodes: [vec![1], vec![7; 16]].concat(),
            },
            TreeDone {
                req: 5,
                range: BlockRange::new(0, 1024),
                mismatched: 3,
            },
            Open {
                volume_id: 1 << 100,
                session: 42,
                epoch: 3,
                size: 1 << 30,
                block_size: 4096,
                generation: 77,
                flags: open_flags::ADOPT,
                history: history_bytes(&[76, 75]),
            },
            OpenReply {
                size: 1 << 30,
                block_size: 4096,
                last_session: 42,
                last_epoch: 2,
                volume_id: 1 << 90,
                bound_to: 1 << 100,
                generation: 76,
                consistent: true,
                history: history_bytes(&[75]),
            },
            ResyncDone { seq: 12 },
            Write {
                seq: 9,
                offset: 8192,
                flags: write_flags::REPAIR,
                data: vec![5; 4096],
            },
            Ack { seq: 9 },
            Flush { seq: 10 },
            Barrier { seq: 11 },
            ScanRequest {
                req: 1,
                algorithm: Algorithm::Sha1,
                level: 0,
                priority: priority::IDLE,
                range: BlockRange::new(5, 100),
            },
            Digests {
                req: 1,
                algorithm: Algorithm::Md5,
                start: 5,
                digests: vec![1; 32],
            },
            ScanEnd { req: 1 },
            CompareRequest {
                req: 2,
                algorithm: Algorithm::Crc32,
                level: 0,
                priority: 0,
                range: BlockRange::new(0, 10),
            },
            CompareEnd { req: 2 },
            BlockRequest {
                req: 2,
                range: BlockRange::new(3, 2),
            },
            CompareDone {
                req: 2,
                mismatched: 2,
            },
            Ping { nonce: 77 },
            Pong { nonce: 77 },
            Error {
                code: code::MISMATCH,
                message: "size differs".into(),
            },
            WriteZeroes {
                seq: 12,
                offset: 1 << 40,
                len: 1 << 35,
                flags: zero_flags::FLUSH,
            },
            Trim {
                seq: 13,
                offset: 4096,
                len: u64::MAX - 4096,
                flags: 0,
            },
            LeadScan {
                req: 3,
                algorithm: Algorithm::Crc32,
                level: 0,
                priority: priority::IDLE,
                range: BlockRange::new(0, 1024),
            },
            LeadCompare {
                req: 4,
                algorithm: Algorithm::Sha1,
                level: 0,
                priority: priority::NORMAL,
                range: BlockRange::new(1024, 1024),
            },
            LeadDigests {
                req: 4,
                algorithm: Algorithm::Sha1,
                start: 1024,
                digests: vec![2; 40],
            },
            RepairRequest {
                req: 3,
                range: BlockRange::new(7, 3),
            },
            LeadEnd { req: 3 },
            LeadDone {
                req: 3,
                repaired: 3,
            },
            LeadReport {
                req: 3,
                mode: 1,
                compare: 1,
                algorithm: Algorithm::Crc32,
                blocks: 4096,
                mismatched: 3,
                blocks_sent: 3,
                bytes_sent: 100,
                bytes_received: 200,
                micros: 1_500_000,
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples() {
            let frame = m.to_frame().unwrap();
            let (back, n) = read_frame(&mut &frame[..], MAX_PAYLOAD).unwrap();
            assert_eq!(back, m);
            assert_eq!(n, frame.len());
        }
    }

    #[test]
    fn hello_golden_bytes() {
        let m = Message::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            nonce: [0xAB; 32],
        };
        let f = m.to_frame().unwrap();
        assert_eq!(&f[..8], &[38, 0, 0, 0, kind::HELLO, 0, 0, 0]);
        assert_eq!(&f[8..14], b"MIRR\x03\x00");
        assert_eq!(&f[14..46], &[0xAB; 32]);
        let crc = crc32fast::hash(&f[..46]);
        assert_eq!(&f[46..], &crc.to_le_bytes());
        assert_eq!(f.len(), 50);
    }

    #[test]
    fn open_golden_bytes() {
        // Version 2: identity, session, epoch, size, block size, generation, flags, history.
        let m = Message::Open {
            volume_id: 1,
            session: 2,
            epoch: 3,
            size: 4,
            block_size: 4096,
            generation: 5,
            flags: open_flags::DISCARD_SECONDARY,
            history: history_bytes(&[6]),
        };
        let f = m.to_frame().unwrap();
        let mut want = vec![85, 0, 0, 0, kind::OPEN, 0, 0, 0];
        want.extend_from_slice(&1u128.to_le_bytes());
        want.extend_from_slice(&2u128.to_le_bytes());
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(&4u64.to_le_bytes());
        want.extend_from_slice(&4096u32.to_le_bytes());
        want.extend_from_slice(&5u128.to_le_bytes());
        want.push(2);
        want.extend_from_slice(&6u128.to_le_bytes());
        assert_eq!(&f[..f.len() - 4], &want[..]);
    }

    #[test]
    fn write_zeroes_and_trim_golden_bytes() {
        for (m, k) in [
            (
                Message::WriteZeroes {
                    seq: 1,
                    offset: 8192,
                    len: 1 << 32,
                    flags: zero_flags::FLUSH,
                },
                kind::WRITE_ZEROES,
            ),
            (
                Message::Trim {
                    seq: 1,
                    offset: 8192,
                    len: 1 << 32,
                    flags: zero_flags::FLUSH,
                },
                kind::TRIM,
            ),
        ] {
            let f = m.to_frame().unwrap();
            let mut want = vec![25, 0, 0, 0, k, 0, 0, 0];
            want.extend_from_slice(&1u64.to_le_bytes());
            want.extend_from_slice(&8192u64.to_le_bytes());
            want.extend_from_slice(&(1u64 << 32).to_le_bytes());
            want.push(1);
            assert_eq!(&f[..f.len() - 4], &want[..]);
            assert_eq!(f.len(), 8 + 25 + 4, "a zero range costs no payload");
        }
        assert_eq!((kind::WRITE_ZEROES, kind::TRIM), (25, 26));
    }

    #[test]
    fn zero_ranges_that_no_volume_holds_are_refused() {
        let zero = |k: u8, offset: u64, len: u64, flags: u8| {
            let mut p = 7u64.to_le_bytes().to_vec();
            p.extend_from_slice(&offset.to_le_bytes());
            p.extend_from_slice(&len.to_le_bytes());
            p.push(flags);
            Message::decode(k, &p)
        };
        for k in [kind::WRITE_ZEROES, kind::TRIM] {
            assert!(zero(k, 0, 4096, 0).is_ok());
            assert!(
                zero(k, 0, u64::MAX, 1).is_ok(),
                "the volume bounds it, not the frame"
            );
            assert!(zero(k, 0, 0, 0).is_err(), "empty range");
            assert!(zero(k, 4096, u64::MAX, 0).is_err(), "overflow");
            assert!(
                zero(k, 0, 4096, write_flags::REPAIR).is_err(),
                "unknown flag"
            );
            assert!(zero(k, 0, 4096, 0x80).is_err(), "unknown flag");
            // Truncated payload.
            assert!(Message::decode(k, &[0; 24]).is_err());
        }
    }

    #[test]
    fn open_reply_golden_bytes() {
        let m = Message::OpenReply {
            size: 4,
            block_size: 512,
            last_session: 2,
            last_epoch: 3,
            volume_id: 7,
            bound_to: 1,
            generation: 5,
            consistent: false,
            history: Vec::new(),
        };
        let f = m.to_frame().unwrap();
        let mut want = vec![85, 0, 0, 0, kind::OPEN_REPLY, 0, 0, 0];
        want.extend_from_slice(&4u64.to_le_bytes());
        want.extend_from_slice(&512u32.to_le_bytes());
        want.extend_from_slice(&2u128.to_le_bytes());
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(&7u128.to_le_bytes());
        want.extend_from_slice(&1u128.to_le_bytes());
        want.extend_from_slice(&5u128.to_le_bytes());
        want.push(0);
        assert_eq!(&f[..f.len() - 4], &want[..]);
    }

    #[test]
    fn the_largest_open_and_open_reply_fit_the_handshake_limit() {
        let h = history_bytes(&[u128::MAX; 20]);
        assert_eq!(h.len(), 16 * MAX_WIRE_HISTORY);
        let open = Message::Open {
            volume_id: 1,
            session: 2,
            epoch: 3,
            size: 4,
            block_size: 4096,
            generation: 5,
            flags: open_flags::ALL,
            history: h.clone(),
        };
        let reply = Message::OpenReply {
            size: 4,
            block_size: 512,
            last_session: 2,
            last_epoch: 3,
            volume_id: 7,
            bound_to: 1,
            generation: 5,
            consistent: true,
            history: h,
        };
        for m in [open, reply] {
            let f = m.to_frame().unwrap();
            assert!(
                read_frame(&mut &f[..], MAX_HANDSHAKE_PAYLOAD).is_ok(),
                "{}",
                m.name()
            );
        }
    }

    #[test]
    fn open_with_unknown_flags_or_a_ragged_history_is_refused() {
        let open = |flags: u8, hist: usize| {
            let mut p = vec![0u8; 16 + 16 + 8 + 8 + 4 + 16];
            p.push(flags);
            p.extend(std::iter::repeat_n(0u8, hist));
            Message::decode(kind::OPEN, &p)
        };
        assert!(open(open_flags::ALL, 32).is_ok());
        assert!(open(8, 0).is_err());
        assert!(open(0, 15).is_err());
        assert!(open(0, 16 * (MAX_WIRE_HISTORY + 1)).is_err());
    }

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let mut f = vec![0xff, 0xff, 0xff, 0x7f, kind::WRITE, 0, 0, 0];
        f.extend_from_slice(&[0; 16]);
        match read_frame(&mut &f[..], MAX_PAYLOAD) {
            Err(FrameError::Malformed(m)) => assert!(m.contains("exceeds the limit"), "{m}"),
            other => panic!("{other:?}"),
        }
        let big = Message::Write {
            seq: 0,
            offset: 0,
            flags: 0,
            data: vec![0; MAX_PAYLOAD + 1],
        };
        assert!(big.to_frame().is_err());
    }

    #[test]
    fn corrupted_truncated_and_garbage_frames_are_refused() {
        let f = Message::Ack { seq: 1 }.to_frame().unwrap();
        let mut flipped = f.clone();
        flipped[9] ^= 1;
        assert!(
            matches!(read_frame(&mut &flipped[..], MAX_PAYLOAD), Err(FrameError::Malformed(m)) if m.contains("checksum"))
        );
        assert!(
            matches!(read_frame(&mut &f[..f.len() - 1], MAX_PAYLOAD), Err(FrameError::Malformed(m)) if m.contains("truncated"))
        );
        let mut reserved = f.clone();
        reserved[6] = 1;
        assert!(matches!(
            read_frame(&mut &reserved[..], MAX_PAYLOAD),
            Err(FrameError::Malformed(_))
        ));
        // A valid frame of an unknown kind.
        let mut unknown = vec![0, 0, 0, 0, 200, 0, 0, 0];
        let crc = crc32fast::hash(&unknown);
        unknown.extend_from_slice(&crc.to_le_bytes());
        assert!(
            matches!(read_frame(&mut &unknown[..], MAX_PAYLOAD), Err(FrameError::Malformed(m)) if m.contains("unknown message kind"))
        );
    }

    #[test]
    fn lead_requests_keep_the_same_bounds_as_primary_led_ones() {
        let too_many = Message::LeadScan {
            req: 1,
            algorithm: Algorithm::Crc32,
            level: 0,
            priority: 0,
            range: BlockRange::new(0, MAX_REQUEST_BLOCKS + 1),
        };
        let f = too_many.to_frame().unwrap();
        assert!(read_frame(&mut &f[..], MAX_PAYLOAD).is_err());
        let repair = Message::RepairRequest {
            req: 1,
            range: BlockRange::new(u64::MAX, 2),
        };
        let f = repair.to_frame().unwrap();
        assert!(read_frame(&mut &f[..], MAX_PAYLOAD).is_err());
        let report = Message::LeadReport {
            req: 1,
            mode: 2,
            compare: 0,
            algorithm: Algorithm::Crc32,
            blocks: 0,
            mismatched: 0,
            blocks_sent: 0,
            bytes_sent: 0,
            bytes_received: 0,
            micros: 0,
        };
        let f = report.to_frame().unwrap();
        assert!(read_frame(&mut &f[..], MAX_PAYLOAD).is_err());
        let digests = Message::LeadDigests {
            req: 1,
            algorithm: Algorithm::Md5,
            start: 0,
            digests: vec![0; 15],
        };
        let f = digests.to_frame().unwrap();
        assert!(read_frame(&mut &f[..], MAX_PAYLOAD).is_err());
    }

    #[test]
    fn tree_messages_with_a_bad_level_bitmap_or_digest_count_are_refused() {
        use crate::protocol::tree::{bitmap, MAX_TREE_BLOCKS, MAX_TREE_LEVEL};
        let decode = |m: Message| {
            let f = m.to_frame().unwrap();
            read_frame(&mut &f[..], MAX_PAYLOAD).map(|(m, _)| m)
        };
        let req = |level: u8, count: u64, nodes: Vec<u8>| Message::TreeRequest {
            req: 1,
            algorithm: Algorithm::Crc32,
            level,
            group: 0,
            priority: 0,
            range: BlockRange::new(64, count),
            nodes,
        };
        let answer = |level: u8, count: u64, nodes: Vec<u8>| Message::TreeDigests {
            req: 1,
            algorithm: Algorithm::Crc32,
            level,
            group: 0,
            priority: 0,
            range: BlockRange::new(64, count),
            nodes,
        };
        assert!(decode(req(3, 1000, bitmap(125, [3]))).is_ok());
        assert!(
            decode(req(MAX_TREE_LEVEL + 1, 1000, vec![1])).is_err(),
            "level"
        );
        assert!(decode(req(255, 1000, vec![1])).is_err(), "level");
        assert!(
            decode(req(3, 1000, vec![1; 17])).is_err(),
            "bitmap too long"
        );
        assert!(
            decode(req(3, 1000, vec![1; 15])).is_err(),
            "bitmap too short"
        );
        assert!(decode(req(3, 1000, vec![0; 16])).is_err(), "no node");
        let mut past = bitmap(125, [3]);
        past[15] |= 0x20;
        assert!(decode(req(3, 1000, past)).is_err(), "node past the chunk");
        assert!(decode(req(0, MAX_TREE_BLOCKS + 1, vec![1; 513])).is_err());
        assert!(decode(req(0, 0, vec![])).is_err());
        assert!(decode(answer(6, 1000, [vec![0b11, 0], vec![0; 8]].concat())).is_ok());
        assert!(decode(answer(6, 1000, [vec![0b11, 0], vec![0; 7]].concat())).is_err());
        assert!(decode(answer(6, 1000, [vec![0b11, 0], vec![0; 12]].concat())).is_err());
        assert!(decode(answer(6, 1000, vec![])).is_err());
        let done = |mismatched: u64| Message::TreeDone {
            req: 1,
            range: BlockRange::new(0, 10),
            mismatched,
        };
        // Groups: leaves in groups of 8 under level-3 nodes 0 and 124 of 1,000 blocks.
        let grouped = |group: u8, digests: usize| Message::TreeDigests {
            req: 1,
            algorithm: Algorithm::Crc32,
            level: 0,
            group,
            priority: 0,
            range: BlockRange::new(0, 1000),
            nodes: [bitmap(125, [0, 124]), vec![0; 4 * digests]].concat(),
        };
        assert!(decode(grouped(3, 16)).is_ok());
        assert!(decode(grouped(3, 2)).is_err());
        assert!(
            decode(grouped(MAX_TREE_LEVEL + 1, 16)).is_err(),
            "group past the top"
        );
        assert!(decode(done(10)).is_ok());
        assert!(decode(done(11)).is_err());
    }

    #[test]
    fn payload_fields_are_validated() {
        // Ack with trailing bytes.
        assert!(Message::decode(kind::ACK, &[0; 9]).is_err());
        // Write with no data, unknown flags.
        assert!(Message::decode(kind::WRITE, &[0; 17]).is_err());
        let mut w = vec![0; 16];
        w.push(0x80);
        w.push(1);
        assert!(Message::decode(kind::WRITE, &w).is_err());
        // Scan of zero blocks, too many blocks, unknown algorithm.
        let scan = |alg: u8, count: u64| {
            let mut p = 1u64.to_le_bytes().to_vec();
            p.extend_from_slice(&[alg, 0, 0]);
            p.extend_from_slice(&0u64.to_le_bytes());
            p.extend_from_slice(&count.to_le_bytes());
            Message::decode(kind::SCAN_REQUEST, &p)
        };
        assert!(scan(1, 1).is_ok());
        assert!(scan(1, 0).is_err());
        assert!(scan(1, MAX_REQUEST_BLOCKS + 1).is_err());
        assert!(scan(9, 1).is_err());
        // Digests not a whole number of digests.
        let mut d = 1u64.to_le_bytes().to_vec();
        d.push(Algorithm::Md5.id());
        d.extend_from_slice(&0u64.to_le_bytes());
        d.extend_from_slice(&[0; 15]);
        assert!(Message::decode(kind::DIGESTS, &d).is_err());
    }
}

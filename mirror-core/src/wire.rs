//! The wire protocol between a primary and a secondary.
//!
//! # Frames
//!
//! Every message travels in one frame:
//!
//! ```text
//! offset  size  field
//! 0       4     payload length, u32 little-endian (at most MAX_PAYLOAD; before the handshake
//!               completes, at most MAX_HANDSHAKE_PAYLOAD)
//! 4       1     message kind (the `KIND_*` constants; never reused)
//! 5       3     reserved, zero
//! 8       n     payload (per kind, below; integers little-endian)
//! 8+n     4     CRC-32 (IEEE) of bytes 0..8+n, u32 little-endian
//! ```
//!
//! The length is checked against the limit *before* anything is allocated, on encode and on
//! decode; a bad length, kind, reserved byte, checksum or payload ends the connection with a
//! protocol error.
//!
//! # Conversation
//!
//! ```text
//! primary                                   secondary
//! Hello{magic, version, nonce_p}      -->
//!                                     <--   HelloReply{version, auth, nonce_s, proof_s}
//! Auth{proof_p}        (secret set)   -->
//! Open{volume, session, epoch, size, block_size}
//!                                     <--   OpenReply{size, block_size, last session, epoch}
//! Write / Flush / Barrier / Ping ...  -->   (applied in order)  <-- Ack{seq} / Pong
//! ScanRequest{req, range, level}      -->   <-- Digests{req, start, ...}* ScanEnd{req}
//! CompareRequest{req, range}, Digests* , CompareEnd{req}
//!                                     <--   BlockRequest{req, range}* CompareDone{req, n}
//! ```
//!
//! Either side may send `Error{code, message}` and close. A version the secondary does not
//! speak is answered with `Error{VERSION}` naming both versions.
//!
//! The `level` byte of scan and compare requests selects what a digest covers: 0 is one block.
//! Higher levels (a digest over 2^level consecutive block digests, for a hierarchical
//! Merkle-style descent) fit the same messages; a secondary refuses a level it does not know
//! with `Error{UNSUPPORTED}`, so adding them needs no new protocol version.

use std::io::{self, Read, Write};

use crate::digest::Algorithm;
use crate::units::BlockRange;

/// Protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Oldest protocol version this build speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// Magic of the Hello message.
pub const MAGIC: [u8; 4] = *b"MIRR";
/// Bytes of the frame header.
pub const HEADER_LEN: usize = 8;
/// Bytes of the frame trailer (checksum).
pub const TRAILER_LEN: usize = 4;
/// Largest payload of any frame: one 1 MiB block plus its header fields.
pub const MAX_PAYLOAD: usize = (1 << 20) + 64;
/// Largest payload accepted before the handshake completes.
pub const MAX_HANDSHAKE_PAYLOAD: usize = 256;
/// Most bytes of data one Write frame carries.
pub const MAX_WRITE_DATA: usize = 1 << 20;
/// Most blocks one scan or compare request covers.
pub const MAX_REQUEST_BLOCKS: u64 = 1 << 16;
/// Most digests one Digests frame carries.
pub const MAX_DIGESTS_PER_FRAME: usize = 4096;
/// Most bytes of an error message.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// Message kinds (wire values; never reuse one).
pub mod kind {
    #![allow(missing_docs)]
    pub const HELLO: u8 = 1;
    pub const HELLO_REPLY: u8 = 2;
    pub const AUTH: u8 = 3;
    pub const OPEN: u8 = 4;
    pub const OPEN_REPLY: u8 = 5;
    pub const WRITE: u8 = 6;
    pub const ACK: u8 = 7;
    pub const FLUSH: u8 = 8;
    pub const BARRIER: u8 = 9;
    pub const SCAN_REQUEST: u8 = 10;
    pub const DIGESTS: u8 = 11;
    pub const SCAN_END: u8 = 12;
    pub const COMPARE_REQUEST: u8 = 13;
    pub const COMPARE_END: u8 = 14;
    pub const BLOCK_REQUEST: u8 = 15;
    pub const COMPARE_DONE: u8 = 16;
    pub const PING: u8 = 17;
    pub const PONG: u8 = 18;
    pub const ERROR: u8 = 19;
}

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
}

/// Flags of a Write message.
pub mod write_flags {
    /// Flush the secondary's volume before acknowledging.
    pub const FLUSH: u8 = 1;
    /// A resync or repair block, not a replicated write.
    pub const REPAIR: u8 = 2;
    /// Every flag this version knows.
    pub const ALL: u8 = FLUSH | REPAIR;
}

/// Priority byte of scan and compare requests.
pub mod priority {
    /// Foreground.
    pub const NORMAL: u8 = 0;
    /// Background (idle I/O class where the volume supports it).
    pub const IDLE: u8 = 1;
}

/// One message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Primary's greeting.
    Hello {
        magic: [u8; 4],
        version: u16,
        nonce: [u8; 32],
    },
    /// Secondary's answer; `proof` is all zeros when it holds no secret.
    HelloReply {
        version: u16,
        auth_required: bool,
        nonce: [u8; 32],
        proof: [u8; 32],
    },
    /// Primary's proof of the shared secret.
    Auth { proof: [u8; 32] },
    /// Primary's volume and generation.
    Open {
        volume_id: u128,
        session: u128,
        epoch: u64,
        size: u64,
        block_size: u32,
    },
    /// Secondary's volume and the generation it was last coherent with.
    OpenReply {
        size: u64,
        block_size: u32,
        last_session: u128,
        last_epoch: u64,
    },
    /// Data to write at a byte offset.
    Write {
        seq: u64,
        offset: u64,
        flags: u8,
        data: Vec<u8>,
    },
    /// Acknowledges the Write, Flush or Barrier `seq`.
    Ack { seq: u64 },
    /// Flush the volume, then acknowledge.
    Flush { seq: u64 },
    /// Acknowledge once everything before it is applied.
    Barrier { seq: u64 },
    /// Send the digests of a range.
    ScanRequest {
        req: u64,
        algorithm: Algorithm,
        level: u8,
        priority: u8,
        range: BlockRange,
    },
    /// Digests of consecutive blocks from `start`.
    Digests {
        req: u64,
        algorithm: Algorithm,
        start: u64,
        digests: Vec<u8>,
    },
    /// All digests of request `req` were sent.
    ScanEnd { req: u64 },
    /// The primary will stream its digests of a range; compare and ask for what differs.
    CompareRequest {
        req: u64,
        algorithm: Algorithm,
        level: u8,
        priority: u8,
        range: BlockRange,
    },
    /// The primary sent every digest of compare `req`.
    CompareEnd { req: u64 },
    /// Blocks whose digests differ.
    BlockRequest { req: u64, range: BlockRange },
    /// Compare `req` is finished; `mismatched` blocks were requested.
    CompareDone { req: u64, mismatched: u64 },
    /// Liveness probe.
    Ping { nonce: u64 },
    /// Answer to a Ping.
    Pong { nonce: u64 },
    /// A fatal error; the sender closes the connection.
    Error { code: u16, message: String },
}

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// The socket failed or closed.
    Io(io::Error),
    /// The bytes break the protocol.
    Malformed(String),
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

fn bad(msg: impl Into<String>) -> FrameError {
    FrameError::Malformed(msg.into())
}

impl Message {
    /// The kind byte.
    pub fn kind(&self) -> u8 {
        use Message::*;
        match self {
            Hello { .. } => kind::HELLO,
            HelloReply { .. } => kind::HELLO_REPLY,
            Auth { .. } => kind::AUTH,
            Open { .. } => kind::OPEN,
            OpenReply { .. } => kind::OPEN_REPLY,
            Write { .. } => kind::WRITE,
            Ack { .. } => kind::ACK,
            Flush { .. } => kind::FLUSH,
            Barrier { .. } => kind::BARRIER,
            ScanRequest { .. } => kind::SCAN_REQUEST,
            Digests { .. } => kind::DIGESTS,
            ScanEnd { .. } => kind::SCAN_END,
            CompareRequest { .. } => kind::COMPARE_REQUEST,
            CompareEnd { .. } => kind::COMPARE_END,
            BlockRequest { .. } => kind::BLOCK_REQUEST,
            CompareDone { .. } => kind::COMPARE_DONE,
            Ping { .. } => kind::PING,
            Pong { .. } => kind::PONG,
            Error { .. } => kind::ERROR,
        }
    }

    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        kind_name(self.kind())
    }

    /// Appends the whole frame (header, payload, checksum) to `out`.
    ///
    /// Panics never: a payload over [`MAX_PAYLOAD`] is a bug of the caller and is refused
    /// with an error.
    pub fn encode(&self, out: &mut Vec<u8>) -> io::Result<()> {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_LEN]);
        self.encode_payload(out);
        let len = out.len() - start - HEADER_LEN;
        if len > MAX_PAYLOAD {
            out.truncate(start);
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} payload of {len} bytes exceeds the frame limit",
                    self.name()
                ),
            ));
        }
        out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
        out[start + 4] = self.kind();
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    /// The whole frame.
    pub fn to_frame(&self) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        self.encode(&mut v)?;
        Ok(v)
    }

    fn encode_payload(&self, o: &mut Vec<u8>) {
        use Message::*;
        match self {
            Hello {
                magic,
                version,
                nonce,
            } => {
                o.extend_from_slice(magic);
                o.extend_from_slice(&version.to_le_bytes());
                o.extend_from_slice(nonce);
            }
            HelloReply {
                version,
                auth_required,
                nonce,
                proof,
            } => {
                o.extend_from_slice(&version.to_le_bytes());
                o.push(*auth_required as u8);
                o.extend_from_slice(nonce);
                o.extend_from_slice(proof);
            }
            Auth { proof } => o.extend_from_slice(proof),
            Open {
                volume_id,
                session,
                epoch,
                size,
                block_size,
            } => {
                o.extend_from_slice(&volume_id.to_le_bytes());
                o.extend_from_slice(&session.to_le_bytes());
                o.extend_from_slice(&epoch.to_le_bytes());
                o.extend_from_slice(&size.to_le_bytes());
                o.extend_from_slice(&block_size.to_le_bytes());
            }
            OpenReply {
                size,
                block_size,
                last_session,
                last_epoch,
            } => {
                o.extend_from_slice(&size.to_le_bytes());
                o.extend_from_slice(&block_size.to_le_bytes());
                o.extend_from_slice(&last_session.to_le_bytes());
                o.extend_from_slice(&last_epoch.to_le_bytes());
            }
            Write {
                seq,
                offset,
                flags,
                data,
            } => {
                o.extend_from_slice(&seq.to_le_bytes());
                o.extend_from_slice(&offset.to_le_bytes());
                o.push(*flags);
                o.extend_from_slice(data);
            }
            Ack { seq } | Flush { seq } | Barrier { seq } => {
                o.extend_from_slice(&seq.to_le_bytes())
            }
            ScanRequest {
                req,
                algorithm,
                level,
                priority,
                range,
            }
            | CompareRequest {
                req,
                algorithm,
                level,
                priority,
                range,
            } => {
                o.extend_from_slice(&req.to_le_bytes());
                o.push(algorithm.id());
                o.push(*level);
                o.push(*priority);
                o.extend_from_slice(&range.start.0.to_le_bytes());
                o.extend_from_slice(&range.count.to_le_bytes());
            }
            Digests {
                req,
                algorithm,
                start,
                digests,
            } => {
                o.extend_from_slice(&req.to_le_bytes());
                o.push(algorithm.id());
                o.extend_from_slice(&start.to_le_bytes());
                o.extend_from_slice(digests);
            }
            ScanEnd { req } | CompareEnd { req } => o.extend_from_slice(&req.to_le_bytes()),
            BlockRequest { req, range } => {
                o.extend_from_slice(&req.to_le_bytes());
                o.extend_from_slice(&range.start.0.to_le_bytes());
                o.extend_from_slice(&range.count.to_le_bytes());
            }
            CompareDone { req, mismatched } => {
                o.extend_from_slice(&req.to_le_bytes());
                o.extend_from_slice(&mismatched.to_le_bytes());
            }
            Ping { nonce } | Pong { nonce } => o.extend_from_slice(&nonce.to_le_bytes()),
            Error { code, message } => {
                let msg = truncate_utf8(message, MAX_ERROR_MESSAGE);
                o.extend_from_slice(&code.to_le_bytes());
                o.extend_from_slice(msg.as_bytes());
            }
        }
    }

    /// Decodes the payload of a frame of kind `kind`.
    pub fn decode(kind: u8, p: &[u8]) -> Result<Message, FrameError> {
        let mut c = Cursor {
            buf: p,
            pos: 0,
            kind,
        };
        let msg = match kind {
            kind::HELLO => Message::Hello {
                magic: c.array()?,
                version: c.u16()?,
                nonce: c.array()?,
            },
            kind::HELLO_REPLY => Message::HelloReply {
                version: c.u16()?,
                auth_required: c.bool()?,
                nonce: c.array()?,
                proof: c.array()?,
            },
            kind::AUTH => Message::Auth { proof: c.array()? },
            kind::OPEN => Message::Open {
                volume_id: c.u128()?,
                session: c.u128()?,
                epoch: c.u64()?,
                size: c.u64()?,
                block_size: c.u32()?,
            },
            kind::OPEN_REPLY => Message::OpenReply {
                size: c.u64()?,
                block_size: c.u32()?,
                last_session: c.u128()?,
                last_epoch: c.u64()?,
            },
            kind::WRITE => {
                let seq = c.u64()?;
                let offset = c.u64()?;
                let flags = c.u8()?;
                if flags & !write_flags::ALL != 0 {
                    return Err(bad(format!("Write with unknown flags {flags:#x}")));
                }
                let data = c.rest().to_vec();
                if data.is_empty() || data.len() > MAX_WRITE_DATA {
                    return Err(bad(format!(
                        "Write of {} bytes (1 to {MAX_WRITE_DATA})",
                        data.len()
                    )));
                }
                return Ok(Message::Write {
                    seq,
                    offset,
                    flags,
                    data,
                });
            }
            kind::ACK => Message::Ack { seq: c.u64()? },
            kind::FLUSH => Message::Flush { seq: c.u64()? },
            kind::BARRIER => Message::Barrier { seq: c.u64()? },
            kind::SCAN_REQUEST | kind::COMPARE_REQUEST => {
                let req = c.u64()?;
                let algorithm = c.algorithm()?;
                let level = c.u8()?;
                let priority = c.u8()?;
                let range = BlockRange::new(c.u64()?, c.u64()?);
                if range.count == 0
                    || range.count > MAX_REQUEST_BLOCKS
                    || range.start.0.checked_add(range.count).is_none()
                {
                    return Err(bad(format!(
                        "request for {} blocks at {} (1 to {MAX_REQUEST_BLOCKS})",
                        range.count, range.start.0
                    )));
                }
                if priority > priority::IDLE {
                    return Err(bad(format!("unknown priority {priority}")));
                }
                if kind == kind::SCAN_REQUEST {
                    Message::ScanRequest {
                        req,
                        algorithm,
                        level,
                        priority,
                        range,
                    }
                } else {
                    Message::CompareRequest {
                        req,
                        algorithm,
                        level,
                        priority,
                        range,
                    }
                }
            }
            kind::DIGESTS => {
                let req = c.u64()?;
                let algorithm = c.algorithm()?;
                let start = c.u64()?;
                let digests = c.rest().to_vec();
                let w = algorithm.digest_len();
                if digests.is_empty()
                    || digests.len() % w != 0
                    || digests.len() / w > MAX_DIGESTS_PER_FRAME
                {
                    return Err(bad(format!("Digests of {} bytes is not 1 to {MAX_DIGESTS_PER_FRAME} {algorithm} digests", digests.len())));
                }
                if start.checked_add((digests.len() / w) as u64).is_none() {
                    return Err(bad("Digests reach past the largest block index"));
                }
                return Ok(Message::Digests {
                    req,
                    algorithm,
                    start,
                    digests,
                });
            }
            kind::SCAN_END => Message::ScanEnd { req: c.u64()? },
            kind::COMPARE_END => Message::CompareEnd { req: c.u64()? },
            kind::BLOCK_REQUEST => {
                let req = c.u64()?;
                let range = BlockRange::new(c.u64()?, c.u64()?);
                if range.count == 0
                    || range.count > MAX_REQUEST_BLOCKS
                    || range.start.0.checked_add(range.count).is_none()
                {
                    return Err(bad(format!(
                        "BlockRequest for {} blocks at {}",
                        range.count, range.start.0
                    )));
                }
                Message::BlockRequest { req, range }
            }
            kind::COMPARE_DONE => Message::CompareDone {
                req: c.u64()?,
                mismatched: c.u64()?,
            },
            kind::PING => Message::Ping { nonce: c.u64()? },
            kind::PONG => Message::Pong { nonce: c.u64()? },
            kind::ERROR => {
                let code = c.u16()?;
                let rest = c.rest();
                if rest.len() > MAX_ERROR_MESSAGE {
                    return Err(bad("Error message too long"));
                }
                return Ok(Message::Error {
                    code,
                    message: String::from_utf8_lossy(rest).into_owned(),
                });
            }
            other => return Err(bad(format!("unknown message kind {other}"))),
        };
        c.finish()?;
        Ok(msg)
    }
}

/// The `Digests` messages carrying `map` for request `req`, each within the frame limit.
pub fn digest_messages(req: u64, map: &crate::scan::ScanMap) -> impl Iterator<Item = Message> + '_ {
    let algorithm = map.algorithm();
    let first = map.first().0;
    map.as_bytes()
        .chunks(MAX_DIGESTS_PER_FRAME * algorithm.digest_len())
        .enumerate()
        .map(move |(i, chunk)| Message::Digests {
            req,
            algorithm,
            start: first + (i * MAX_DIGESTS_PER_FRAME) as u64,
            digests: chunk.to_vec(),
        })
}

/// Name of a message kind.
pub fn kind_name(k: u8) -> &'static str {
    match k {
        kind::HELLO => "Hello",
        kind::HELLO_REPLY => "HelloReply",
        kind::AUTH => "Auth",
        kind::OPEN => "Open",
        kind::OPEN_REPLY => "OpenReply",
        kind::WRITE => "Write",
        kind::ACK => "Ack",
        kind::FLUSH => "Flush",
        kind::BARRIER => "Barrier",
        kind::SCAN_REQUEST => "ScanRequest",
        kind::DIGESTS => "Digests",
        kind::SCAN_END => "ScanEnd",
        kind::COMPARE_REQUEST => "CompareRequest",
        kind::COMPARE_END => "CompareEnd",
        kind::BLOCK_REQUEST => "BlockRequest",
        kind::COMPARE_DONE => "CompareDone",
        kind::PING => "Ping",
        kind::PONG => "Pong",
        kind::ERROR => "Error",
        _ => "unknown",
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

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    kind: u8,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() - self.pos < n {
            return Err(bad(format!(
                "{} payload truncated at {} of {} bytes",
                kind_name(self.kind),
                self.buf.len(),
                self.pos + n
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, FrameError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(bad(format!("{}: boolean byte {v}", kind_name(self.kind)))),
        }
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn u128(&mut self) -> Result<u128, FrameError> {
        Ok(u128::from_le_bytes(self.array()?))
    }
    fn algorithm(&mut self) -> Result<Algorithm, FrameError> {
        let id = self.u8()?;
        Algorithm::from_id(id).ok_or_else(|| bad(format!("unknown algorithm id {id}")))
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }
    fn finish(&self) -> Result<(), FrameError> {
        if self.pos != self.buf.len() {
            return Err(bad(format!(
                "{} payload has {} trailing bytes",
                kind_name(self.kind),
                self.buf.len() - self.pos
            )));
        }
        Ok(())
    }
}

/// Reads one frame from `r`, refusing payloads over `max_payload` before allocating.
/// Returns the message and the frame's size in bytes.
pub fn read_frame(r: &mut impl Read, max_payload: usize) -> Result<(Message, usize), FrameError> {
    let mut header = [0u8; HEADER_LEN];
    r.read_exact(&mut header)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let kind = header[4];
    if header[5..8] != [0, 0, 0] {
        return Err(bad("frame header reserved bytes are not zero"));
    }
    if len > max_payload {
        return Err(bad(format!(
            "{} frame of {len} bytes exceeds the limit of {max_payload}",
            kind_name(kind)
        )));
    }
    let mut body = vec![0u8; len + TRAILER_LEN];
    r.read_exact(&mut body).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            bad(format!("{} frame truncated", kind_name(kind)))
        } else {
            FrameError::Io(e)
        }
    })?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header);
    hasher.update(&body[..len]);
    let want = u32::from_le_bytes([body[len], body[len + 1], body[len + 2], body[len + 3]]);
    if hasher.finalize() != want {
        return Err(bad(format!("{} frame checksum mismatch", kind_name(kind))));
    }
    let msg = Message::decode(kind, &body[..len])?;
    Ok((msg, HEADER_LEN + len + TRAILER_LEN))
}

/// Writes one message as a frame; returns its size in bytes.
pub fn write_frame(w: &mut impl Write, msg: &Message) -> io::Result<usize> {
    let frame = msg.to_frame()?;
    w.write_all(&frame)?;
    Ok(frame.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message> {
        use Message::*;
        vec![
            Hello {
                magic: MAGIC,
                version: 1,
                nonce: [7; 32],
            },
            HelloReply {
                version: 1,
                auth_required: true,
                nonce: [8; 32],
                proof: [9; 32],
            },
            Auth { proof: [3; 32] },
            Open {
                volume_id: 1 << 100,
                session: 42,
                epoch: 3,
                size: 1 << 30,
                block_size: 4096,
            },
            OpenReply {
                size: 1 << 30,
                block_size: 4096,
                last_session: 42,
                last_epoch: 2,
            },
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
            version: 1,
            nonce: [0xAB; 32],
        };
        let f = m.to_frame().unwrap();
        assert_eq!(&f[..8], &[38, 0, 0, 0, kind::HELLO, 0, 0, 0]);
        assert_eq!(&f[8..14], b"MIRR\x01\x00");
        assert_eq!(&f[14..46], &[0xAB; 32]);
        let crc = crc32fast::hash(&f[..46]);
        assert_eq!(&f[46..], &crc.to_le_bytes());
        assert_eq!(f.len(), 50);
    }

    #[test]
    fn open_golden_bytes() {
        let m = Message::Open {
            volume_id: 1,
            session: 2,
            epoch: 3,
            size: 4,
            block_size: 4096,
        };
        let f = m.to_frame().unwrap();
        let mut want = vec![52, 0, 0, 0, kind::OPEN, 0, 0, 0];
        want.extend_from_slice(&1u128.to_le_bytes());
        want.extend_from_slice(&2u128.to_le_bytes());
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(&4u64.to_le_bytes());
        want.extend_from_slice(&4096u32.to_le_bytes());
        assert_eq!(&f[..f.len() - 4], &want[..]);
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

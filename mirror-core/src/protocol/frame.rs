//! Frames: the envelope every message travels in, and the bounded reader of payload fields.
//!
//! ```text
//! offset  size  field
//! 0       4     payload length, u32 little-endian (at most MAX_PAYLOAD; before the handshake
//!               completes, at most MAX_HANDSHAKE_PAYLOAD)
//! 4       1     message kind (the `kind::*` constants; never reused)
//! 5       3     reserved, zero
//! 8       n     payload (per kind, see `messages`; integers little-endian)
//! 8+n     4     CRC-32 (IEEE) of bytes 0..8+n, u32 little-endian
//! ```
//!
//! The length is checked against the limit *before* anything is allocated, on encode and on
//! decode; a bad length, kind, reserved byte, checksum or payload ends the connection with a
//! protocol error.

use std::io::{self, Read, Write};

use super::messages::{kind_name, Message};

/// Bytes of the frame header.
pub const HEADER_LEN: usize = 8;
/// Bytes of the frame trailer (checksum).
pub const TRAILER_LEN: usize = 4;
/// Largest payload of any frame: one 1 MiB block plus its header fields.
pub const MAX_PAYLOAD: usize = (1 << 20) + 64;
/// Largest payload accepted before the handshake completes.
pub const MAX_HANDSHAKE_PAYLOAD: usize = 256;

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

pub(crate) fn bad(msg: impl Into<String>) -> FrameError {
    FrameError::Malformed(msg.into())
}

/// Appends one frame of kind `kind` to `out`, its payload written by `payload`. A payload
/// over [`MAX_PAYLOAD`] is refused (nothing is appended).
pub(crate) fn encode_frame(
    out: &mut Vec<u8>,
    kind: u8,
    payload: impl FnOnce(&mut Vec<u8>),
) -> io::Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    payload(out);
    let len = out.len() - start - HEADER_LEN;
    if len > MAX_PAYLOAD {
        out.truncate(start);
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} payload of {len} bytes exceeds the frame limit",
                kind_name(kind)
            ),
        ));
    }
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4] = kind;
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(())
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

/// Reads the fields of one payload in order; every read is bounded by the payload.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    kind: u8,
}

impl<'a> Cursor<'a> {
    /// A reader of the payload `buf` of a frame of kind `kind`.
    pub(crate) fn new(kind: u8, buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0, kind }
    }

    /// The kind of the frame being read (for error messages).
    pub(crate) fn kind(&self) -> u8 {
        self.kind
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
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

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    /// Fails when bytes are left over.
    pub(crate) fn finish(&self) -> Result<(), FrameError> {
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

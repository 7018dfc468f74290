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
//!
//! A `Write` frame's data is never copied into a frame in user space on the hot path: the
//! sender sends [`WriteFrameParts`] around the caller's buffer in one vectored write, and the
//! receiver reads the data straight into a buffer it reuses ([`read_frame_reusing`]). The bytes
//! on the wire are the same as [`Message::encode`]'s.

use std::io::{self, Read, Write};

use super::messages::{kind, kind_name, Message, MAX_WRITE_DATA};

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

/// Bytes of a `Write` payload before its data: seq (u64), offset (u64), flags (u8).
pub const WRITE_FIELDS_LEN: usize = 17;

/// A `Write` frame but its data: the header and fields before it, the checksum after it.
pub(crate) struct WriteFrameParts {
    /// Frame header, then seq, offset and flags.
    pub(crate) head: [u8; HEADER_LEN + WRITE_FIELDS_LEN],
    /// CRC-32 of the head and the data.
    pub(crate) trailer: [u8; TRAILER_LEN],
}

impl WriteFrameParts {
    /// The frame of `Message::Write { seq, offset, flags, data }` around `data`. Data that no
    /// Write may carry (empty, over [`MAX_WRITE_DATA`]) is refused.
    pub(crate) fn new(seq: u64, offset: u64, flags: u8, data: &[u8]) -> io::Result<Self> {
        if data.is_empty() || data.len() > MAX_WRITE_DATA {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("Write of {} bytes (1 to {MAX_WRITE_DATA})", data.len()),
            ));
        }
        let mut head = [0u8; HEADER_LEN + WRITE_FIELDS_LEN];
        head[..4].copy_from_slice(&((WRITE_FIELDS_LEN + data.len()) as u32).to_le_bytes());
        head[4] = kind::WRITE;
        head[8..16].copy_from_slice(&seq.to_le_bytes());
        head[16..24].copy_from_slice(&offset.to_le_bytes());
        head[24] = flags;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&head);
        hasher.update(data);
        Ok(WriteFrameParts {
            head,
            trailer: hasher.finalize().to_le_bytes(),
        })
    }
}

/// `read_exact`, with a short read named as a truncated frame of `kind`.
fn read_body(r: &mut impl Read, buf: &mut [u8], kind: u8) -> Result<(), FrameError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            bad(format!("{} frame truncated", kind_name(kind)))
        } else {
            FrameError::Io(e)
        }
    })
}

/// Reads one frame from `r`, refusing payloads over `max_payload` before allocating.
/// Returns the message and the frame's size in bytes.
pub fn read_frame(r: &mut impl Read, max_payload: usize) -> Result<(Message, usize), FrameError> {
    read_frame_reusing(r, max_payload, &mut Vec::new())
}

/// [`read_frame`], reading a `Write`'s data straight into `spare` (taken; give it back
/// once the data is applied) instead of into a frame buffer that is then copied from.
pub(crate) fn read_frame_reusing(
    r: &mut impl Read,
    max_payload: usize,
    spare: &mut Vec<u8>,
) -> Result<(Message, usize), FrameError> {
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
    if kind == kind::WRITE && len > WRITE_FIELDS_LEN {
        let mut fields = [0u8; WRITE_FIELDS_LEN];
        read_body(r, &mut fields, kind)?;
        // Reused at its length: no zeroing of bytes the read overwrites anyway.
        let mut data = std::mem::take(spare);
        data.resize(len - WRITE_FIELDS_LEN, 0);
        read_body(r, &mut data, kind)?;
        let mut trailer = [0u8; TRAILER_LEN];
        read_body(r, &mut trailer, kind)?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header);
        hasher.update(&fields);
        hasher.update(&data);
        if hasher.finalize() != u32::from_le_bytes(trailer) {
            return Err(bad(format!("{} frame checksum mismatch", kind_name(kind))));
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&fields[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let msg = Message::Write {
            seq: u64_at(0),
            offset: u64_at(8),
            flags: fields[16],
            data,
        };
        msg.check()?;
        return Ok((msg, HEADER_LEN + len + TRAILER_LEN));
    }
    let mut body = vec![0u8; len + TRAILER_LEN];
    read_body(r, &mut body, kind)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write(seq: u64, offset: u64, flags: u8, data: Vec<u8>) -> Message {
        Message::Write {
            seq,
            offset,
            flags,
            data,
        }
    }

    #[test]
    fn a_vectored_write_frame_is_the_bytes_of_the_encoded_message() {
        for len in [1usize, 17, 4096, MAX_WRITE_DATA] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let m = write(0x0102_0304_0506_0708, 1 << 40, 2, data.clone());
            let parts = WriteFrameParts::new(0x0102_0304_0506_0708, 1 << 40, 2, &data).unwrap();
            let mut sent = parts.head.to_vec();
            sent.extend_from_slice(&data);
            sent.extend_from_slice(&parts.trailer);
            assert_eq!(sent, m.to_frame().unwrap(), "{len} bytes");
        }
        assert!(WriteFrameParts::new(1, 0, 0, &[]).is_err());
        assert!(WriteFrameParts::new(1, 0, 0, &vec![0; MAX_WRITE_DATA + 1]).is_err());
    }

    #[test]
    fn writes_read_into_a_reused_buffer_keep_their_own_length_and_bytes() {
        let frames = [
            write(1, 0, 0, vec![0xAA; 8192]),
            write(2, 4096, 0, vec![0xBB; 4096]),
            Message::Ack { seq: 9 },
            write(3, 8192, 0, vec![0xCC; 16384]),
        ];
        let mut stream = Vec::new();
        for m in &frames {
            stream.extend_from_slice(&m.to_frame().unwrap());
        }
        let (mut r, mut spare) = (&stream[..], Vec::new());
        for m in &frames {
            let (back, n) = read_frame_reusing(&mut r, MAX_PAYLOAD, &mut spare).unwrap();
            assert_eq!(&back, m);
            assert_eq!(n, m.to_frame().unwrap().len());
            if let Message::Write { data, .. } = back {
                spare = data;
            }
        }
        assert!(r.is_empty());
    }

    #[test]
    fn a_write_read_into_a_reused_buffer_is_still_checked() {
        let frame = write(1, 0, 0, vec![0x11; 4096]).to_frame().unwrap();
        let mut spare = vec![0u8; 1 << 20];
        let mut flipped = frame.clone();
        flipped[HEADER_LEN + WRITE_FIELDS_LEN + 100] ^= 1;
        assert!(matches!(
            read_frame_reusing(&mut &flipped[..], MAX_PAYLOAD, &mut spare),
            Err(FrameError::Malformed(m)) if m.contains("checksum")
        ));
        assert!(matches!(
            read_frame_reusing(&mut &frame[..frame.len() - 1], MAX_PAYLOAD, &mut Vec::new()),
            Err(FrameError::Malformed(m)) if m.contains("truncated")
        ));
        let unknown_flags = write(1, 0, 0x80, vec![0; 4096]).to_frame().unwrap();
        assert!(matches!(
            read_frame_reusing(&mut &unknown_flags[..], MAX_PAYLOAD, &mut Vec::new()),
            Err(FrameError::Malformed(m)) if m.contains("unknown flags")
        ));
    }
}

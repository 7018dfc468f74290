//! Frame I/O on a TCP connection, in clear or inside TLS, shared by both controllers: byte
//! accounting, timeouts and the mapping of socket, TLS and frame failures to engine errors.
//!
//! The frame codec is the same either way: under TLS the frames ride inside the records, and
//! TLS adds what the CRC cannot give (integrity against a party on the path, secrecy,
//! ordering and replay protection of the records).

use std::io::{self, BufReader, IoSlice, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::frame::{read_frame_reusing, WriteFrameParts};
use crate::protocol::messages::{self as wire, code, FrameError, Message};
use crate::protocol::tls::{self, TlsReader, TlsStream, TlsWriter};
use crate::{Error, Result};

/// What carries a connection's frames.
#[derive(Debug)]
pub enum Transport {
    /// The TCP socket itself (loopback, or an operator's explicit choice).
    Plain(TcpStream),
    /// Mutual TLS 1.3 over the socket, past its handshake (boxed: a rustls connection is
    /// large, and a transport moves once).
    Tls(Box<TlsStream>),
}

/// The reading side of a transport.
#[derive(Debug)]
pub enum ReadHalf {
    /// In clear.
    Plain(TcpStream),
    /// Inside TLS.
    Tls(TlsReader),
}

impl Read for ReadHalf {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ReadHalf::Plain(s) => s.read(buf),
            ReadHalf::Tls(t) => t.read(buf),
        }
    }
}

/// The writing side of a transport.
#[derive(Debug)]
pub enum WriteHalf {
    /// In clear.
    Plain(TcpStream),
    /// Inside TLS.
    Tls(TlsWriter),
}

impl Write for WriteHalf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            WriteHalf::Plain(s) => s.write(buf),
            WriteHalf::Tls(t) => t.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            WriteHalf::Plain(s) => s.write_vectored(bufs),
            WriteHalf::Tls(t) => t.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            WriteHalf::Plain(s) => s.flush(),
            WriteHalf::Tls(t) => t.flush(),
        }
    }
}

/// The engine error for an I/O error on a connection with `peer` (whose role is `role`): a
/// TLS failure is named as one (certificate refusals are authentication errors), the rest are
/// link errors.
fn transport_error(peer: &str, role: &str, e: &io::Error, during: &str) -> Option<Error> {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .map(|t| tls::tls_error(peer, role, t, during))
}

/// Bytes moved on one connection.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes written to the socket.
    pub sent: AtomicU64,
    /// Bytes read from the socket.
    pub received: AtomicU64,
}

/// The reading half of a connection.
#[derive(Debug)]
pub struct FrameReader {
    inner: BufReader<ReadHalf>,
    peer: String,
    role: &'static str,
    counters: Arc<Counters>,
    max_payload: usize,
    timeout: Duration,
    /// The buffer the next `Write`'s data is read into (see [`FrameReader::recycle`]).
    spare: Vec<u8>,
}

impl FrameReader {
    /// Reads from `half`, whose socket declares the link dead after `timeout` of silence.
    fn new(
        half: ReadHalf,
        peer: String,
        role: &'static str,
        counters: Arc<Counters>,
        timeout: Duration,
    ) -> Result<Self> {
        Ok(FrameReader {
            // Small next to a Write's data, which is read past it straight into `spare`.
            inner: BufReader::with_capacity(64 << 10, half),
            peer,
            role,
            counters,
            max_payload: wire::MAX_HANDSHAKE_PAYLOAD,
            timeout,
            spare: Vec::new(),
        })
    }

    /// Lifts the frame limit from the handshake's to the protocol's.
    pub fn handshake_done(&mut self) {
        self.max_payload = wire::MAX_PAYLOAD;
    }

    /// The next message. A peer's `Error` message is returned as an error.
    pub fn recv(&mut self) -> Result<Message> {
        match read_frame_reusing(&mut self.inner, self.max_payload, &mut self.spare) {
            Ok((Message::Error { code, message }, n)) => {
                self.counters
                    .received
                    .fetch_add(n as u64, Ordering::Relaxed);
                Err(peer_error(&self.peer, code, &message))
            }
            Ok((
                Message::IoError {
                    errno,
                    offset,
                    op,
                    volume,
                },
                n,
            )) => {
                self.counters
                    .received
                    .fetch_add(n as u64, Ordering::Relaxed);
                Err(Error::RemoteIo {
                    peer: self.peer.clone(),
                    volume,
                    op: super::messages::io_op::name(op),
                    offset,
                    errno: errno as i32,
                })
            }
            Ok((msg, n)) => {
                self.counters
                    .received
                    .fetch_add(n as u64, Ordering::Relaxed);
                Ok(msg)
            }
            Err(FrameError::Malformed(m)) => Err(Error::protocol(&self.peer, m)),
            Err(FrameError::Io(e)) => Err(self.io_error(e)),
        }
    }

    fn io_error(&self, e: io::Error) -> Error {
        if let Some(t) = transport_error(&self.peer, self.role, &e, "receive") {
            return t;
        }
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::link(
                &self.peer,
                format!(
                    "no frame received for {:.1}s (link dead or stalled)",
                    self.timeout.as_secs_f64()
                ),
            ),
            io::ErrorKind::UnexpectedEof => Error::link(&self.peer, "connection closed by peer"),
            _ => Error::link(&self.peer, e.to_string()),
        }
    }

    /// Gives back the data buffer of a `Write` once applied: the next one is read into it.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if buf.capacity() > self.spare.capacity() {
            self.spare = buf;
        }
    }

    /// True when a frame (or part of one) is already buffered.
    pub fn has_buffered(&self) -> bool {
        !self.inner.buffer().is_empty()
    }

    /// The peer's address.
    pub fn peer(&self) -> &str {
        &self.peer
    }
}

/// Frames buffered before they are sent together.
const SEND_BUFFER: usize = 256 << 10;

/// Writes all of `bufs`, in as few vectored writes as the socket takes.
fn write_all_vectored(w: &mut impl Write, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The writing half of a connection. Small frames gather in a buffer; a large one, and a
/// `Write`'s data, go to the socket from where they are, with the buffered frames before
/// them, in one vectored write.
#[derive(Debug)]
pub struct FrameWriter {
    half: WriteHalf,
    /// Encoded frames not sent yet, in order.
    out: Vec<u8>,
    peer: String,
    role: &'static str,
    counters: Arc<Counters>,
    scratch: Vec<u8>,
}

impl FrameWriter {
    /// Writes to `half`, whose socket fails a write blocked longer than the link timeout.
    fn new(half: WriteHalf, peer: String, role: &'static str, counters: Arc<Counters>) -> Self {
        FrameWriter {
            half,
            out: Vec::with_capacity(SEND_BUFFER),
            peer,
            role,
            counters,
            scratch: Vec::new(),
        }
    }

    /// Buffers one message.
    pub fn send(&mut self, msg: &Message) -> Result<()> {
        self.scratch.clear();
        msg.encode(&mut self.scratch)
            .map_err(|e| Error::protocol(&self.peer, e.to_string()))?;
        self.send_raw_frame_buffered()
    }

    /// Buffers an already encoded frame (a large one is sent at once, after the buffer).
    pub fn send_frame(&mut self, frame: &[u8]) -> Result<()> {
        if self.out.len() + frame.len() <= SEND_BUFFER {
            self.out.extend_from_slice(frame);
        } else {
            self.send_parts(&[frame])?;
        }
        self.counters
            .sent
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// True when what is sent is sealed first (TLS): sealing a large write costs its sender
    /// as much as the copy it saves, so such writes are better handed to the writer thread.
    pub fn encrypted(&self) -> bool {
        matches!(self.half, WriteHalf::Tls(_))
    }

    /// Sends a `Write` of `data` now, its data from the caller's buffer: one vectored write
    /// of whatever is buffered, the frame's head, the data and its checksum.
    pub fn send_write_now(&mut self, seq: u64, offset: u64, flags: u8, data: &[u8]) -> Result<()> {
        let parts = WriteFrameParts::new(seq, offset, flags, data)
            .map_err(|e| Error::protocol(&self.peer, e.to_string()))?;
        self.send_parts(&[&parts.head, data, &parts.trailer])?;
        self.counters.sent.fetch_add(
            (parts.head.len() + data.len() + parts.trailer.len()) as u64,
            Ordering::Relaxed,
        );
        self.half.flush().map_err(|e| self.io_error(e))
    }

    /// Sends the buffered frames, then `parts`, in one vectored write where the socket takes it.
    fn send_parts(&mut self, parts: &[&[u8]]) -> Result<()> {
        let mut bufs = Vec::with_capacity(parts.len() + 1);
        bufs.push(IoSlice::new(&self.out));
        bufs.extend(parts.iter().map(|p| IoSlice::new(p)));
        let r = write_all_vectored(&mut self.half, &mut bufs);
        self.out.clear();
        r.map_err(|e| self.io_error(e))
    }

    fn send_raw_frame_buffered(&mut self) -> Result<()> {
        let frame = std::mem::take(&mut self.scratch);
        let r = self.send_frame(&frame);
        self.scratch = frame;
        r
    }

    /// Sends what is buffered.
    pub fn flush(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            self.send_parts(&[])?;
        }
        self.half.flush().map_err(|e| self.io_error(e))
    }

    /// Sends one message now.
    pub fn send_now(&mut self, msg: &Message) -> Result<()> {
        self.send(msg)?;
        self.flush()
    }

    fn io_error(&self, e: io::Error) -> Error {
        if let Some(t) = transport_error(&self.peer, self.role, &e, "send") {
            return t;
        }
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::link(
                &self.peer,
                "send blocked past the link timeout (link stalled)",
            ),
            _ => Error::link(&self.peer, e.to_string()),
        }
    }
}

/// The engine error for an `Error` message received from `peer`.
pub fn peer_error(peer: &str, code: u16, message: &str) -> Error {
    let msg = format!("peer reported: {message}");
    match code {
        code::VERSION | code::MISMATCH => Error::Mismatch(format!("{peer}: {message}")),
        code::AUTH => Error::auth(peer, message),
        code::BUSY => Error::Busy(format!("{peer}: {message}")),
        code::IO | code::SHUTDOWN => Error::link(peer, msg),
        _ => Error::protocol(peer, msg),
    }
}

/// The wire code for an engine error sent to a peer.
pub fn error_code(e: &Error) -> u16 {
    use crate::ErrorKind;
    match e.kind() {
        ErrorKind::Mismatch => code::MISMATCH,
        ErrorKind::Auth => code::AUTH,
        ErrorKind::Busy => code::BUSY,
        ErrorKind::Io | ErrorKind::RemoteIo => code::IO,
        ErrorKind::InvalidArgument => code::OUT_OF_RANGE,
        ErrorKind::Closed | ErrorKind::Cancelled => code::SHUTDOWN,
        _ => code::PROTOCOL,
    }
}

/// Sets a socket's timeouts: a read or a write blocked longer than `timeout` fails.
pub fn set_timeouts(stream: &TcpStream, peer: &str, timeout: Duration) -> Result<()> {
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| Error::link(peer, format!("set timeout: {e}")))
}

/// Splits a connection into its two halves with shared counters. `role` names the peer
/// ("primary", "secondary") in errors; the socket's timeouts are set to `timeout`.
pub fn split(
    transport: Transport,
    peer: &str,
    role: &'static str,
    timeout: Duration,
) -> Result<(FrameReader, FrameWriter, Arc<Counters>)> {
    let counters = Arc::new(Counters::default());
    let clone_err = |e: io::Error| Error::link(peer, format!("clone socket: {e}"));
    let (r, w) = match transport {
        Transport::Plain(stream) => {
            set_timeouts(&stream, peer, timeout)?;
            let w = stream.try_clone().map_err(clone_err)?;
            (ReadHalf::Plain(stream), WriteHalf::Plain(w))
        }
        Transport::Tls(t) => {
            let (r, w) = (*t).split().map_err(clone_err)?;
            set_timeouts(r.socket(), peer, timeout)?;
            (ReadHalf::Tls(r), WriteHalf::Tls(w))
        }
    };
    let reader = FrameReader::new(r, peer.to_owned(), role, counters.clone(), timeout)?;
    let writer = FrameWriter::new(w, peer.to_owned(), role, counters.clone());
    Ok((reader, writer, counters))
}

//! Frame I/O on a TCP connection, shared by both controllers: byte accounting, timeouts and the
//! mapping of socket and frame failures to engine errors.

use std::io::{self, BufReader, BufWriter, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::messages::{self as wire, code, FrameError, Message};
use crate::{Error, Result};

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
    inner: BufReader<TcpStream>,
    peer: String,
    counters: Arc<Counters>,
    max_payload: usize,
    timeout: Duration,
}

impl FrameReader {
    /// Reads from `stream`, declaring the link dead after `timeout` of silence.
    pub fn new(
        stream: TcpStream,
        peer: String,
        counters: Arc<Counters>,
        timeout: Duration,
    ) -> Result<Self> {
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| Error::link(&peer, format!("set timeout: {e}")))?;
        Ok(FrameReader {
            inner: BufReader::with_capacity(256 << 10, stream),
            peer,
            counters,
            max_payload: wire::MAX_HANDSHAKE_PAYLOAD,
            timeout,
        })
    }

    /// Lifts the frame limit from the handshake's to the protocol's.
    pub fn handshake_done(&mut self) {
        self.max_payload = wire::MAX_PAYLOAD;
    }

    /// The next message. A peer's `Error` message is returned as an error.
    pub fn recv(&mut self) -> Result<Message> {
        match wire::read_frame(&mut self.inner, self.max_payload) {
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

    /// True when a frame (or part of one) is already buffered.
    pub fn has_buffered(&self) -> bool {
        !self.inner.buffer().is_empty()
    }

    /// The peer's address.
    pub fn peer(&self) -> &str {
        &self.peer
    }
}

/// The writing half of a connection.
#[derive(Debug)]
pub struct FrameWriter {
    inner: BufWriter<TcpStream>,
    peer: String,
    counters: Arc<Counters>,
    scratch: Vec<u8>,
}

impl FrameWriter {
    /// Writes to `stream`; a write blocked longer than `timeout` fails.
    pub fn new(
        stream: TcpStream,
        peer: String,
        counters: Arc<Counters>,
        timeout: Duration,
    ) -> Result<Self> {
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| Error::link(&peer, format!("set timeout: {e}")))?;
        Ok(FrameWriter {
            inner: BufWriter::with_capacity(256 << 10, stream),
            peer,
            counters,
            scratch: Vec::new(),
        })
    }

    /// Buffers one message.
    pub fn send(&mut self, msg: &Message) -> Result<()> {
        self.scratch.clear();
        msg.encode(&mut self.scratch)
            .map_err(|e| Error::protocol(&self.peer, e.to_string()))?;
        self.send_raw_frame_buffered()
    }

    /// Buffers an already encoded frame.
    pub fn send_frame(&mut self, frame: &[u8]) -> Result<()> {
        self.inner.write_all(frame).map_err(|e| self.io_error(e))?;
        self.counters
            .sent
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn send_raw_frame_buffered(&mut self) -> Result<()> {
        let frame = std::mem::take(&mut self.scratch);
        let r = self.send_frame(&frame);
        self.scratch = frame;
        r
    }

    /// Sends what is buffered.
    pub fn flush(&mut self) -> Result<()> {
        self.inner.flush().map_err(|e| self.io_error(e))
    }

    /// Sends one message now.
    pub fn send_now(&mut self, msg: &Message) -> Result<()> {
        self.send(msg)?;
        self.flush()
    }

    fn io_error(&self, e: io::Error) -> Error {
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

/// Splits a connected stream into its two halves with shared counters.
pub fn split(
    stream: TcpStream,
    peer: &str,
    timeout: Duration,
) -> Result<(FrameReader, FrameWriter, Arc<Counters>)> {
    let _ = stream.set_nodelay(true);
    let counters = Arc::new(Counters::default());
    let w = stream
        .try_clone()
        .map_err(|e| Error::link(peer, format!("clone socket: {e}")))?;
    let reader = FrameReader::new(stream, peer.to_owned(), counters.clone(), timeout)?;
    let writer = FrameWriter::new(w, peer.to_owned(), counters.clone(), timeout)?;
    Ok((reader, writer, counters))
}

//! The protocol between a primary and a secondary: frames, the messages they carry, frame
//! I/O on a connection, and authentication.
//!
//! - [`frame`]: the envelope — length, kind, checksum — checked before anything is allocated.
//! - [`messages`]: every message, declared once; field rules checked on decode.
//! - [`link`]: frame I/O on a TCP connection, byte accounting and timeouts.
//! - [`auth`]: the shared-secret challenge–response of the handshake, bound to the session.
//! - [`tls`]: mutual TLS 1.3 (rustls): identities, trust, the handshake and the stream the
//!   frames ride in across anything but loopback.
//! - [`tree`]: hierarchical digests — what a node covers, node bitmaps, the descent's levels.
//!
//! Invariants held here: every length, offset and count off the wire is bounded before any
//! allocation or I/O (a bad frame is a protocol error that ends the connection); before the
//! handshake completes a frame is at most [`frame::MAX_HANDSHAKE_PAYLOAD`] bytes; kind and
//! error codes are wire values, never reused. Nothing here knows volumes or scans.

pub mod auth;
pub mod frame;
pub mod link;
pub mod messages;
pub mod tls;
pub mod tree;

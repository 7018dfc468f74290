//! Bad input from the wire: every malformed, out-of-range or unauthenticated frame ends that
//! connection with a clear error, never touches the volume, and the secondary keeps serving.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use mirror_core::wire::{self, code, kind, Message};
use mirror_core::{Algorithm, BlockRange, ErrorKind, SecondaryConfig, Volume};

const SIZE: u64 = 1 << 20;

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn send(s: &mut TcpStream, m: &Message) {
    s.write_all(&m.to_frame().unwrap()).unwrap();
}

/// Reads frames until an Error message or the end of the stream.
fn read_error(s: &mut TcpStream) -> Option<(u16, String)> {
    loop {
        match wire::read_frame(s, wire::MAX_PAYLOAD) {
            Ok((Message::Error { code, message }, _)) => return Some((code, message)),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

fn hello(s: &mut TcpStream, version: u16) {
    send(
        s,
        &Message::Hello {
            magic: wire::MAGIC,
            version,
            nonce: [1; 32],
        },
    );
}

/// Hello and Open with the given geometry; returns the stream after OpenReply (or not).
fn open(addr: SocketAddr, size: u64, block_size: u32) -> TcpStream {
    let mut s = connect(addr);
    hello(&mut s, wire::PROTOCOL_VERSION);
    match wire::read_frame(&mut s, wire::MAX_PAYLOAD).unwrap().0 {
        Message::HelloReply {
            auth_required: false,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    send(
        &mut s,
        &Message::Open {
            volume_id: 1,
            session: 77,
            epoch: 1,
            size,
            block_size,
            generation: 77,
            flags: 0,
            history: Vec::new(),
        },
    );
    s
}

fn opened(addr: SocketAddr) -> TcpStream {
    let mut s = open(addr, SIZE, BS as u32);
    match wire::read_frame(&mut s, wire::MAX_PAYLOAD).unwrap().0 {
        Message::OpenReply { size, .. } => assert_eq!(size, SIZE),
        other => panic!("{other:?}"),
    }
    s
}

/// After a bad connection: the volume is as it was, and a real primary still syncs.
fn still_serves(pair: &Pair, before: &[u8]) {
    assert_eq!(
        read(&pair.secondary_path),
        before,
        "the bad connection changed the volume"
    );
    let p = pair.open_primary(pair.config());
    wait_coherent(&p);
    assert!(pair.equal());
}

fn setup() -> (Pair, SocketAddr, Vec<u8>) {
    let pair = Pair::new(SIZE, 42);
    let addr = pair.secondary.local_addr().unwrap();
    let before = read(&pair.secondary_path);
    (pair, addr, before)
}

#[test]
fn garbage_instead_of_hello_is_refused() {
    let (pair, addr, before) = setup();
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let _ = read_error(&mut s);
    wait_for(5, "rejection recorded", || {
        pair.secondary.status().rejected >= 1
    });
    still_serves(&pair, &before);
}

#[test]
fn truncated_frame_is_refused() {
    let (pair, addr, before) = setup();
    let mut s = opened(addr);
    let f = Message::Write {
        seq: 1,
        offset: 0,
        flags: 0,
        data: vec![7; 4096],
    }
    .to_frame()
    .unwrap();
    s.write_all(&f[..100]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = read_error(&mut s);
    wait_for(5, "rejection", || {
        pair.secondary
            .status()
            .last_error
            .is_some_and(|e| e.contains("truncated") || e.contains("closed"))
    });
    still_serves(&pair, &before);
}

#[test]
fn corrupted_checksum_and_oversized_length_are_refused() {
    let (pair, addr, before) = setup();
    let mut s = opened(addr);
    let mut f = Message::Write {
        seq: 1,
        offset: 0,
        flags: 0,
        data: vec![7; 4096],
    }
    .to_frame()
    .unwrap();
    f[100] ^= 0xff;
    s.write_all(&f).unwrap();
    let (c, m) = read_error(&mut s).expect("an Error frame");
    assert_eq!(c, code::PROTOCOL);
    assert!(m.contains("checksum"), "{m}");

    let mut s = opened(addr);
    let mut header = vec![0xff, 0xff, 0xff, 0x0f, kind::WRITE, 0, 0, 0];
    header.extend_from_slice(&[0; 64]);
    s.write_all(&header).unwrap();
    let (_, m) = read_error(&mut s).expect("an Error frame");
    assert!(m.contains("exceeds the limit"), "{m}");
    still_serves(&pair, &before);
}

#[test]
fn wrong_protocol_version_is_answered_with_both_versions() {
    let (pair, addr, before) = setup();
    let mut s = connect(addr);
    hello(&mut s, 1);
    let (c, m) = read_error(&mut s).expect("an Error frame");
    assert_eq!(c, code::VERSION);
    assert!(
        m.contains("1") && m.contains(&wire::PROTOCOL_VERSION.to_string()),
        "{m}"
    );
    // A newer primary is answered with the version this secondary speaks.
    let mut s = connect(addr);
    hello(&mut s, 99);
    match wire::read_frame(&mut s, wire::MAX_PAYLOAD).unwrap().0 {
        Message::HelloReply { version, .. } => assert_eq!(version, wire::PROTOCOL_VERSION),
        other => panic!("{other:?}"),
    }
    still_serves(&pair, &before);
}

#[test]
fn size_and_block_size_mismatch_are_refused_naming_both_values() {
    let (pair, addr, before) = setup();
    let mut s = open(addr, SIZE * 2, BS as u32);
    let (c, m) = read_error(&mut s).expect("an Error frame");
    assert_eq!(c, code::MISMATCH);
    assert!(
        m.contains(&(SIZE * 2).to_string()) && m.contains(&SIZE.to_string()),
        "{m}"
    );

    let mut s = open(addr, SIZE, 512);
    let (c, m) = read_error(&mut s).expect("an Error frame");
    assert_eq!(c, code::MISMATCH);
    assert!(m.contains("512") && m.contains("4096"), "{m}");
    still_serves(&pair, &before);

    // Through the API: the primary reports the mismatch as such.
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::write(&small, vec![0u8; (SIZE / 2) as usize]).unwrap();
    let vol = std::sync::Arc::new(
        mirror_core::FileVolume::open(&small, mirror_core::BlockSize::DEFAULT).unwrap(),
    );
    let mut c = pair.config();
    c.peer = addr.to_string();
    let p = mirror_core::Primary::open(vol, c).unwrap();
    let e = p.wait_connected(Duration::from_secs(60)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Mismatch, "{e}");
    assert!(
        e.to_string().contains("524288") && e.to_string().contains("1048576"),
        "{e}"
    );
}

#[test]
fn writes_and_scans_past_the_end_or_unaligned_are_refused_before_any_io() {
    let (pair, addr, before) = setup();
    let cases = [
        Message::Write {
            seq: 1,
            offset: SIZE,
            flags: 0,
            data: vec![1; 4096],
        },
        Message::Write {
            seq: 1,
            offset: SIZE - 4096,
            flags: 0,
            data: vec![1; 8192],
        },
        Message::Write {
            seq: 1,
            offset: 100,
            flags: 0,
            data: vec![1; 4096],
        },
        Message::Write {
            seq: 1,
            offset: u64::MAX - 4095,
            flags: 0,
            data: vec![1; 4096],
        },
        Message::ScanRequest {
            req: 1,
            algorithm: Algorithm::Md5,
            level: 0,
            priority: 0,
            range: BlockRange::new(250, 10),
        },
        Message::ScanRequest {
            req: 1,
            algorithm: Algorithm::Md5,
            level: 3,
            priority: 0,
            range: BlockRange::new(0, 1),
        },
        Message::Digests {
            req: 9,
            algorithm: Algorithm::Crc32,
            start: 0,
            digests: vec![0; 4],
        },
        Message::Ack { seq: 1 },
    ];
    for m in cases {
        let mut s = opened(addr);
        send(&mut s, &m);
        let (c, msg) = read_error(&mut s).unwrap_or_else(|| panic!("no Error frame for {m:?}"));
        assert_ne!(c, 0, "{msg}");
        assert!(!msg.is_empty());
        assert_eq!(
            read(&pair.secondary_path),
            before,
            "{m:?} changed the volume"
        );
    }
    still_serves(&pair, &before);
}

#[test]
fn malformed_or_unasked_tree_messages_are_refused_before_any_io() {
    let (pair, addr, before) = setup();
    let request = |level: u8, range: BlockRange, nodes: Vec<u8>| Message::TreeRequest {
        req: 1,
        algorithm: Algorithm::Sha1,
        level,
        group: 0,
        priority: 0,
        range,
        nodes,
    };
    let chunk = BlockRange::new(0, 200);
    let cases = [
        // A level above any a chunk holds.
        request(13, chunk, vec![1]),
        // A bitmap longer than the level's nodes (200 blocks at level 3: 25 nodes, 4 bytes).
        request(3, chunk, vec![1; 5]),
        // Nodes past the chunk's last: unaligned with the level.
        request(3, chunk, vec![0, 0, 0, 0x02]),
        // Nothing asked for.
        request(3, chunk, vec![0; 4]),
        // A chunk past the end of the volume (256 blocks).
        request(0, BlockRange::new(200, 100), vec![0xff; 13]),
        // A chunk longer than any tree message names.
        request(12, BlockRange::new(0, 8192), vec![0b11]),
        // Digests that do not match the bitmap.
        Message::TreeDigests {
            req: 1,
            algorithm: Algorithm::Crc32,
            level: 6,
            group: 0,
            priority: 0,
            range: chunk,
            nodes: vec![0b11, 1, 2, 3],
        },
    ];
    for m in cases {
        let mut s = opened(addr);
        send(&mut s, &m);
        let (c, msg) = read_error(&mut s).unwrap_or_else(|| panic!("no Error frame for {m:?}"));
        assert_ne!(c, 0, "{msg}");
        assert_eq!(
            read(&pair.secondary_path),
            before,
            "{m:?} changed the volume"
        );
    }
    // A session of protocol version 2 speaks no trees.
    let mut s = connect(addr);
    hello(&mut s, 2);
    match wire::read_frame(&mut s, wire::MAX_PAYLOAD).unwrap().0 {
        Message::HelloReply { version, .. } => assert_eq!(version, 2),
        other => panic!("{other:?}"),
    }
    drop(s);
    still_serves(&pair, &before);
}

#[test]
fn shared_secret_is_required_and_checked_both_ways() {
    let mut cfg = SecondaryConfig::new("127.0.0.1:0");
    cfg.secret = Some(b"correct horse battery".to_vec());
    let pair = Pair::with(SIZE, 43, cfg);
    let addr = pair.secondary.local_addr().unwrap();
    let before = read(&pair.secondary_path);

    // No secret on the primary.
    let p = pair.open_primary(pair.config());
    let e = p.wait_connected(Duration::from_secs(60)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert!(e.to_string().contains("requires a shared secret"), "{e}");
    drop(p);

    // The wrong secret: the secondary's proof does not verify.
    let mut c = pair.config();
    c.secret = Some(b"wrong horse battery".to_vec());
    let p = pair.open_primary(c);
    let e = p.wait_connected(Duration::from_secs(60)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    drop(p);

    // A raw client that skips Auth and writes.
    let mut s = connect(addr);
    hello(&mut s, wire::PROTOCOL_VERSION);
    let _ = wire::read_frame(&mut s, wire::MAX_PAYLOAD).unwrap();
    send(
        &mut s,
        &Message::Open {
            volume_id: 1,
            session: 5,
            epoch: 1,
            size: SIZE,
            block_size: 4096,
            generation: 5,
            flags: 0,
            history: Vec::new(),
        },
    );
    let (c, m) = read_error(&mut s).expect("an Error frame");
    assert_eq!(c, code::AUTH, "{m}");
    // A forged proof.
    let mut s = connect(addr);
    hello(&mut s, wire::PROTOCOL_VERSION);
    let _ = wire::read_frame(&mut s, wire::MAX_PAYLOAD).unwrap();
    send(&mut s, &Message::Auth { proof: [0; 32] });
    // Refused in general terms, and no proof of the secondary's comes back: nothing to
    // guess the secret against.
    let (c, m) = read_error(&mut s).expect("an Error frame, not an AuthReply");
    assert_eq!(c, code::AUTH);
    assert_eq!(m, "authentication failed");
    assert_eq!(read(&pair.secondary_path), before);

    // The right secret works.
    let mut c = pair.config();
    c.secret = Some(b"correct horse battery".to_vec());
    let p = pair.open_primary(c);
    wait_coherent(&p);
    assert!(pair.equal());

    // A primary with a secret refuses a secondary without one.
    let open = Pair::new(SIZE, 44);
    let mut c = open.config();
    c.secret = Some(b"correct horse battery".to_vec());
    let p = open.open_primary(c);
    let e = p.wait_connected(Duration::from_secs(60)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
}

#[test]
fn non_loopback_listener_needs_tls_or_an_explicit_override() {
    let vol = std::sync::Arc::new(mirror_core::MemVolume::new(
        SIZE,
        mirror_core::BlockSize::DEFAULT,
    ));
    let s = mirror_core::Secondary::new(vol.clone(), SecondaryConfig::new("0.0.0.0:0")).unwrap();
    let e = s.serve().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("without TLS"), "{e}");
    // A secret alone protects the handshake, not the frames: still refused.
    let mut cfg = SecondaryConfig::new("0.0.0.0:0");
    cfg.secret = Some(b"0123456789abcdef".to_vec());
    let s = mirror_core::Secondary::new(vol.clone(), cfg).unwrap();
    assert!(s.serve().unwrap_err().to_string().contains("without TLS"));
    // A secret shorter than 16 bytes is refused.
    let mut cfg = SecondaryConfig::new("127.0.0.1:0");
    cfg.secret = Some(b"0123456789abcde".to_vec());
    let e = mirror_core::Secondary::new(vol.clone(), cfg).unwrap_err();
    assert!(e.to_string().contains("at least 16 bytes"), "{e}");
    let mut cfg = SecondaryConfig::new("0.0.0.0:0");
    cfg.allow_insecure = true;
    let s = mirror_core::Secondary::new(vol, cfg).unwrap();
    assert!(s.serve().is_ok());
    s.stop();
}

#[test]
fn a_second_primary_takes_over_and_never_interleaves() {
    let (pair, addr, _) = setup();
    let mut a = opened(addr);
    let mut b = opened(addr);
    // The first connection was shut down by the takeover.
    let mut buf = [0u8; 1];
    let r = a.read(&mut buf);
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    send(
        &mut b,
        &Message::Write {
            seq: 1,
            offset: 0,
            flags: 0,
            data: vec![9; 4096],
        },
    );
    match wire::read_frame(&mut b, wire::MAX_PAYLOAD).unwrap().0 {
        Message::Ack { seq: 1 } => {}
        other => panic!("{other:?}"),
    }
    let mut got = vec![0; 4096];
    pair.secondary_vol.read_at(0, &mut got).unwrap();
    assert_eq!(got, vec![9; 4096]);
}

#[test]
fn zero_and_trim_ranges_past_the_end_or_unaligned_are_refused_before_any_io() {
    let (pair, addr, before) = setup();
    let mut cases = Vec::new();
    for (offset, len) in [
        // Past the end, by a block and by far (a length no frame could carry as data).
        (SIZE - 4096, 8192),
        (0, u64::MAX / 2),
        (SIZE, 4096),
        // Unaligned offset, a partial block that does not end the volume.
        (100, 4096),
        (0, 4097),
    ] {
        cases.push(Message::WriteZeroes {
            seq: 1,
            offset,
            len,
            flags: 0,
        });
        cases.push(Message::Trim {
            seq: 1,
            offset,
            len,
            flags: 0,
        });
    }
    for m in cases {
        let mut s = opened(addr);
        send(&mut s, &m);
        let (c, msg) = read_error(&mut s).unwrap_or_else(|| panic!("no Error frame for {m:?}"));
        assert_eq!(c, code::OUT_OF_RANGE, "{m:?}: {msg}");
        assert_eq!(
            read(&pair.secondary_path),
            before,
            "{m:?} changed the volume"
        );
    }
    still_serves(&pair, &before);
}

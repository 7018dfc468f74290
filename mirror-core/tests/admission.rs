//! Before authentication a connection can cost the secondary only a bounded, small amount:
//! a whole-handshake deadline, a cap on connections in handshake (a flood cannot lock a real
//! primary out), generic error messages that reveal nothing local.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use mirror_core::config::Limits;
use mirror_core::wire::{self, code, Message};
use mirror_core::SecondaryConfig;

const SIZE: u64 = 1 << 20;

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Waits until the secondary closes `s` (EOF or reset); how long it took.
fn closed_within(s: &mut TcpStream) -> Duration {
    let t = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return t.elapsed(),
            Ok(_) => continue,
        }
    }
}

fn config(limits: Limits) -> SecondaryConfig {
    let mut c = SecondaryConfig::new("127.0.0.1:0");
    c.limits = limits;
    c.secret = Some(b"a secret of sixteen bytes or more".to_vec());
    c
}

#[test]
fn errors_before_authentication_are_generic_and_name_nothing_local() {
    let pair = Pair::with(SIZE, 1, config(Limits::default()));
    let addr = pair.secondary.local_addr().unwrap();
    let path = pair.secondary_path.display().to_string();
    let name = pair
        .secondary_path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let cases: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        Message::Open {
            volume_id: 1,
            session: 1,
            epoch: 1,
            size: 12345,
            block_size: 512,
            generation: 1,
            flags: 0,
            history: Vec::new(),
        }
        .to_frame()
        .unwrap(),
    ];
    for bytes in cases {
        let mut s = connect(addr);
        s.write_all(&bytes).unwrap();
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
        let text = String::from_utf8_lossy(&all);
        assert!(!text.contains(&path) && !text.contains(&name), "{text:?}");
    }
    // Hello, then an Open without Auth: refused with a generic message.
    let mut s = connect(addr);
    s.write_all(
        &Message::Hello {
            magic: wire::MAGIC,
            version: wire::PROTOCOL_VERSION,
            nonce: [1; 32],
        }
        .to_frame()
        .unwrap(),
    )
    .unwrap();
    let (reply, _) = wire::read_frame(&mut s, wire::MAX_PAYLOAD).unwrap();
    assert!(matches!(
        reply,
        Message::HelloReply {
            auth_required: true,
            ..
        }
    ));
    s.write_all(
        &Message::Open {
            volume_id: 1,
            session: 1,
            epoch: 1,
            size: 12345,
            block_size: 512,
            generation: 1,
            flags: 0,
            history: Vec::new(),
        }
        .to_frame()
        .unwrap(),
    )
    .unwrap();
    match wire::read_frame(&mut s, wire::MAX_PAYLOAD).unwrap().0 {
        Message::Error { code: c, message } => {
            assert_eq!(c, code::AUTH);
            assert_eq!(message, "authentication failed");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_handshake_past_its_deadline_is_closed_however_slowly_the_peer_drips() {
    let limits = Limits {
        handshake_timeout: Duration::from_millis(800),
        ..Limits::default()
    };
    let pair = Pair::with(SIZE, 2, config(limits));
    let addr = pair.secondary.local_addr().unwrap();
    // Silent.
    let mut idle = connect(addr);
    // A byte of a Hello frame every 100 ms: each read succeeds, the whole never completes.
    let mut drip = connect(addr);
    let frame = Message::Hello {
        magic: wire::MAGIC,
        version: wire::PROTOCOL_VERSION,
        nonce: [1; 32],
    }
    .to_frame()
    .unwrap();
    let mut drip2 = drip.try_clone().unwrap();
    let dripper = std::thread::spawn(move || {
        for b in &frame {
            if drip2.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let t = closed_within(&mut idle);
    assert!(t < Duration::from_secs(10), "idle connection lived {t:?}");
    let t = closed_within(&mut drip);
    assert!(
        t < Duration::from_secs(10),
        "dripping connection lived {t:?}"
    );
    dripper.join().unwrap();
    // And a real primary still gets in.
    let mut c = pair.config();
    c.secret = Some(b"a secret of sixteen bytes or more".to_vec());
    let p = pair.open_primary(c);
    wait_coherent(&p);
    assert!(pair.equal());
}

#[test]
fn a_flood_of_idle_connections_past_the_cap_does_not_lock_a_primary_out() {
    let limits = Limits {
        handshake_timeout: Duration::from_secs(30),
        max_handshakes: 8,
        max_sessions: 2,
    };
    let pair = Pair::with(SIZE, 3, config(limits));
    let addr = pair.secondary.local_addr().unwrap();
    // Far more idle connections than the cap, held for longer than the test.
    let mut flood: Vec<TcpStream> = (0..100).map(|_| connect(addr)).collect();
    // Let them age past the eviction floor (a tenth of the deadline, at most 1 s).
    std::thread::sleep(Duration::from_millis(1500));
    let mut c = pair.config();
    c.secret = Some(b"a secret of sixteen bytes or more".to_vec());
    let p = pair.open_primary(c);
    wait_coherent(&p);
    assert!(pair.equal());
    // Most of the flood was closed: at most the cap are still held in handshake.
    for s in &flood {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    }
    let mut buf = [0u8; 1];
    let mut open = 0;
    for s in flood.iter_mut() {
        if let Err(e) = s.read(&mut buf) {
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                open += 1;
            }
        }
    }
    assert!(open <= 8, "{open} flood connections still held (cap 8)");
}

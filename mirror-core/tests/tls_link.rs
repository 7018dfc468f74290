//! The link under mutual TLS, through a man in the middle: tampering ends the connection and
//! never reaches the secondary's volume, nothing written travels in clear, and certificates
//! that are not trusted, expired or not yet valid are refused.
//!
//! Every write reaching the secondary's volume is checked against what the primary ever held
//! at that offset (`Guarded`), so "no block of the secondary ever holds bytes the primary did
//! not send" is asserted on each write, not only at the end.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::mitm::{Attack, Framing, Mitm};
use common::*;
use mirror_core::tls::{Identity, TlsConfig, Validity};
use mirror_core::wire::Message;
use mirror_core::{
    BlockSize, ErrorKind, FileVolume, IoPriority, Primary, PrimaryConfig, ReadOp, Secondary,
    SecondaryConfig, Volume,
};

const SIZE: u64 = 4 << 20;

/// The secondary's volume, refusing (and recording) any write of bytes the primary never held
/// at that offset.
#[derive(Debug)]
struct Guarded {
    inner: Arc<FileVolume>,
    allowed: Mutex<HashMap<u64, HashSet<Vec<u8>>>>,
    foreign: Mutex<Vec<u64>>,
}

impl Guarded {
    fn allow(&self, offset: u64, data: &[u8]) {
        let mut a = self.allowed.lock().unwrap();
        for (i, block) in data.chunks(BS as usize).enumerate() {
            a.entry(offset + i as u64 * BS)
                .or_default()
                .insert(block.to_vec());
        }
    }
    fn foreign(&self) -> Vec<u64> {
        self.foreign.lock().unwrap().clone()
    }
}

impl Volume for Guarded {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn block_size(&self) -> BlockSize {
        self.inner.block_size()
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> mirror_core::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn read_batch(&self, ops: &mut [ReadOp<'_>], p: IoPriority) -> mirror_core::Result<()> {
        self.inner.read_batch(ops, p)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> mirror_core::Result<()> {
        {
            let a = self.allowed.lock().unwrap();
            for (i, block) in data.chunks(BS as usize).enumerate() {
                let off = offset + i as u64 * BS;
                if !a.get(&off).is_some_and(|s| s.contains(block)) {
                    self.foreign.lock().unwrap().push(off);
                    return Err(mirror_core::Error::InvalidArgument(format!(
                        "foreign bytes at {off}"
                    )));
                }
            }
        }
        self.inner.write_at(offset, data)
    }
    fn flush(&self) -> mirror_core::Result<()> {
        self.inner.flush()
    }
}

fn identities() -> (Identity, Identity) {
    let v = Validity::default_from_now();
    (
        Identity::self_signed("primary", v).unwrap(),
        Identity::self_signed("secondary", v).unwrap(),
    )
}

fn tls(me: &Identity, trust: &Identity) -> TlsConfig {
    TlsConfig::from_pem(
        me.cert_pem.as_bytes(),
        me.key_pem.as_bytes(),
        trust.cert_pem.as_bytes(),
    )
    .unwrap()
}

struct Setup {
    _dir: tempfile::TempDir,
    primary_path: std::path::PathBuf,
    secondary_path: std::path::PathBuf,
    primary_vol: Arc<FileVolume>,
    guarded: Arc<Guarded>,
    secondary: Secondary,
    mitm: Mitm,
}

impl Setup {
    /// A pair whose secondary's volume is guarded, behind a man in the middle.
    fn new(secondary_tls: Option<TlsConfig>, framing: Framing, seed: u64) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let primary_path = dir.path().join("p.img");
        let secondary_path = dir.path().join("s.img");
        let content = random_bytes(&mut rng(seed), SIZE as usize);
        std::fs::write(&primary_path, &content).unwrap();
        std::fs::write(&secondary_path, vec![0u8; SIZE as usize]).unwrap();
        let bs = BlockSize::new(BS).unwrap();
        let primary_vol = Arc::new(FileVolume::open(&primary_path, bs).unwrap());
        let guarded = Arc::new(Guarded {
            inner: Arc::new(FileVolume::open(&secondary_path, bs).unwrap()),
            allowed: Mutex::new(HashMap::new()),
            foreign: Mutex::new(Vec::new()),
        });
        guarded.allow(0, &content);
        let mut cfg = SecondaryConfig::new("127.0.0.1:0");
        cfg.tls = secondary_tls;
        let secondary = Secondary::new(guarded.clone(), cfg).unwrap();
        let addr = secondary.serve().unwrap();
        let mitm = Mitm::start(addr, framing);
        Setup {
            _dir: dir,
            primary_path,
            secondary_path,
            primary_vol,
            guarded,
            secondary,
            mitm,
        }
    }

    /// A pair behind a man in the middle, with mutual TLS or in clear, its primary connected
    /// and coherent.
    fn connected(with_tls: bool, seed: u64) -> (Setup, Primary) {
        let (pi, si) = identities();
        let framing = if with_tls {
            Framing::Tls
        } else {
            Framing::Mirror
        };
        let s = Setup::new(with_tls.then(|| tls(&si, &pi)), framing, seed);
        let p = s.primary(with_tls.then(|| tls(&pi, &si)));
        wait_coherent(&p);
        (s, p)
    }

    fn primary(&self, tls: Option<TlsConfig>) -> Primary {
        let mut c = PrimaryConfig::new(self.mitm.addr.to_string());
        c.link_timeout = Duration::from_secs(3);
        c.tls = tls;
        Primary::open(self.primary_vol.clone(), c).unwrap()
    }

    /// Writes `data` at `offset` through the primary, allowing it on the secondary first.
    fn write(&self, p: &Primary, offset: u64, data: &[u8]) {
        self.guarded.allow(offset, data);
        let _ = p.write(offset, data);
    }

    fn equal(&self) -> bool {
        read(&self.primary_path) == read(&self.secondary_path)
    }
}

fn block(tag: u8, i: u64) -> Vec<u8> {
    let mut v = vec![tag; BS as usize];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

/// An `Attack::Inject` unit for the framing: a Write frame of "EVIL" in clear; a TLS
/// application-data record of the same length under TLS.
fn injected(framing: Framing) -> Vec<u8> {
    let frame = Message::Write {
        seq: 1 << 40,
        offset: 0,
        flags: 0,
        data: b"EVIL".repeat(BS as usize / 4),
    }
    .to_frame()
    .unwrap();
    match framing {
        Framing::Mirror => frame,
        Framing::Tls => {
            let mut r = vec![0x17, 0x03, 0x03];
            r.extend_from_slice(&(frame.len() as u16).to_be_bytes());
            r.extend_from_slice(&frame);
            r
        }
    }
}

/// Runs `attack` on a connected pair; returns the setup after the primary reconnected and
/// resynced (or after the attack, when `expect_reconnect` is false).
fn attacked(attack: Attack, with_tls: bool, seed: u64) -> (Setup, Primary) {
    let (s, p) = Setup::connected(with_tls, seed);
    assert!(s.equal(), "the first connection resynced to equality");
    for i in 0..8 {
        s.write(&p, i * 7 * BS, &block(b'a', i));
    }
    s.mitm.arm(attack);
    let connections = s.mitm.connections();
    for i in 0..64 {
        s.write(&p, (i * 13 % 1000) * BS, &block(b'b', i));
        if s.mitm.fired() > 0 && i > 16 {
            break;
        }
    }
    wait_for(30, "the attack", || s.mitm.fired() == 1);
    if with_tls {
        wait_for(60, "the primary to reconnect", || {
            s.mitm.connections() > connections
        });
        wait_coherent(&p);
    }
    (s, p)
}

#[test]
fn tampering_on_the_path_ends_a_tls_connection_and_never_reaches_the_volume() {
    let attacks = [
        ("flip", Attack::FlipByte),
        ("inject", Attack::Inject(injected(Framing::Tls))),
        ("replay", Attack::Replay),
        ("truncate", Attack::Truncate),
    ];
    for (seed, (name, attack)) in attacks.into_iter().enumerate() {
        let (s, p) = attacked(attack, true, seed as u64);
        assert!(
            s.guarded.foreign().is_empty(),
            "{name}: foreign bytes reached the secondary at {:?}",
            s.guarded.foreign()
        );
        // More writes on the new connection, then byte equality.
        for i in 0..8 {
            s.write(&p, (500 + i) * BS, &block(b'c', i));
        }
        p.flush().unwrap();
        wait_coherent(&p);
        assert!(
            s.equal(),
            "{name}: the clean connection resynced to equality"
        );
        assert!(
            s.secondary.status().rejected + s.mitm.connections() >= 2,
            "{name}: the tampered connection ended"
        );
    }
}

/// Without TLS (loopback) the frame checks still refuse a flipped byte and never apply a
/// truncated frame; an injected well-formed frame (or a replayed one) is obeyed: only TLS
/// stops those, which is why a non-loopback link needs it.
#[test]
fn without_tls_frame_checks_stop_flips_and_truncation_but_not_injection() {
    for (seed, (name, attack)) in [("flip", Attack::FlipByte), ("truncate", Attack::Truncate)]
        .into_iter()
        .enumerate()
    {
        let (s, p) = attacked(attack, false, 10 + seed as u64);
        wait_for(60, "the primary to reconnect", || s.mitm.connections() >= 2);
        wait_coherent(&p);
        assert!(
            s.guarded.foreign().is_empty(),
            "{name}: foreign bytes applied"
        );
        assert!(s.equal(), "{name}");
    }
    // Injection: the secondary's guard sees the relay's bytes arrive as a valid Write.
    let (s, _p) = attacked(Attack::Inject(injected(Framing::Mirror)), false, 20);
    wait_for(30, "the injected frame to reach the volume", || {
        !s.guarded.foreign().is_empty()
    });
    assert_eq!(
        s.guarded.foreign(),
        vec![0],
        "only TLS stops an injected frame"
    );
}

#[test]
fn nothing_written_travels_in_clear_under_tls() {
    let marker = b"SNIFF-ME-IF-YOU-CAN-0123456789ab".repeat(BS as usize / 32);
    for with_tls in [false, true] {
        let (s, p) = Setup::connected(with_tls, 30);
        s.write(&p, 100 * BS, &marker);
        p.flush().unwrap();
        let seen = s.mitm.seen();
        let found = seen.windows(32).any(|w| w == &marker[..32]);
        assert_eq!(
            found, !with_tls,
            "marker in the relayed bytes (tls: {with_tls})"
        );
        assert!(s.equal());
    }
}

fn refused(
    primary_id: &Identity,
    primary_trusts: &Identity,
    secondary_id: &Identity,
    secondary_trusts: &Identity,
) -> mirror_core::Error {
    let s = Setup::new(Some(tls(secondary_id, secondary_trusts)), Framing::Tls, 40);
    let p = s.primary(Some(tls(primary_id, primary_trusts)));
    let e = p.wait_connected(Duration::from_secs(30)).unwrap_err();
    assert!(
        read(&s.secondary_path).iter().all(|&b| b == 0),
        "nothing written"
    );
    assert!(s.guarded.foreign().is_empty());
    e
}

#[test]
fn untrusted_expired_and_not_yet_valid_certificates_are_refused_with_the_reason() {
    let (pi, si) = identities();
    let stranger = Identity::self_signed("secondary", Validity::default_from_now()).unwrap();
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let expired = Identity::self_signed(
        "secondary",
        Validity {
            not_before: now - 30 * day,
            not_after: now - day,
        },
    )
    .unwrap();
    let future = Identity::self_signed(
        "secondary",
        Validity {
            not_before: now + day,
            not_after: now + 30 * day,
        },
    )
    .unwrap();

    // The secondary presents a certificate the primary does not trust.
    let e = refused(&pi, &si, &stranger, &pi);
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert!(e.to_string().contains("not in the trust file"), "{e}");
    // The secondary's trust file names someone else: the primary is told it was refused.
    let e = refused(&pi, &si, &si, &stranger);
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert!(e.to_string().contains("refused our certificate"), "{e}");
    // Expired and not yet valid, each named.
    let e = refused(&pi, &expired, &expired, &pi);
    assert!(e.to_string().contains("expired"), "{e}");
    let e = refused(&pi, &future, &future, &pi);
    assert!(e.to_string().contains("not valid before"), "{e}");
    // A primary without TLS is refused by a TLS secondary, and the reverse.
    let e = refused_plain_primary(&si, &pi);
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
}

fn refused_plain_primary(si: &Identity, pi: &Identity) -> mirror_core::Error {
    let s = Setup::new(Some(tls(si, pi)), Framing::Tls, 41);
    let p = s.primary(None);
    let e = p.wait_connected(Duration::from_secs(30)).unwrap_err();
    assert!(read(&s.secondary_path).iter().all(|&b| b == 0));
    e
}

#[test]
fn a_tls_primary_refuses_a_plaintext_secondary() {
    let (pi, si) = identities();
    let s = Setup::new(None, Framing::Mirror, 42);
    let p = s.primary(Some(tls(&pi, &si)));
    let e = p.wait_connected(Duration::from_secs(30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert!(e.to_string().contains("TLS"), "{e}");
}

#[test]
fn the_shared_secret_is_bound_to_the_tls_session() {
    // Same secret on both sides, with TLS: connects. A proof is computed over the exporter,
    // so it verifies only on its own session (unit-tested in the authentication module).
    let (pi, si) = identities();
    let dir = tempfile::tempdir().unwrap();
    let _ = dir;
    let secret = b"0123456789abcdef-long-enough".to_vec();
    let mut cfg = SecondaryConfig::new("127.0.0.1:0");
    cfg.tls = Some(tls(&si, &pi));
    cfg.secret = Some(secret.clone());
    let pair = Pair::with(SIZE, 50, cfg);
    let mut c = pair.config();
    c.tls = Some(tls(&pi, &si));
    c.secret = Some(secret);
    let p = pair.open_primary(c);
    wait_coherent(&p);
    assert!(pair.equal());
}

#[test]
fn large_sync_writes_sent_from_the_callers_buffer_arrive_whole_in_clear_and_under_tls() {
    for with_tls in [false, true] {
        let (s, p) = Setup::connected(with_tls, 40);
        let mut r = rng(41);
        for len in [64usize << 10, SIZE as usize / 2, SIZE as usize] {
            let offset = rand::Rng::gen_range(&mut r, 0..=(SIZE - len as u64) / BS) * BS;
            let data = random_bytes(&mut r, len);
            s.guarded.allow(offset, &data);
            assert_eq!(
                p.write(offset, &data).unwrap(),
                mirror_core::WriteOutcome::Replicated,
                "{len} bytes (tls: {with_tls})"
            );
        }
        p.flush().unwrap();
        assert!(s.equal(), "tls: {with_tls}");
        assert!(s.guarded.foreign().is_empty());
    }
}

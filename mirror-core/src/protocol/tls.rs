//! Mutual TLS 1.3 for the link (rustls with the `ring` provider).
//!
//! Each peer has an identity (a certificate and its private key, PEM) and a trust file (PEM
//! certificates): the peer's own self-signed certificate(s) — the pinned set-up `mirror keygen`
//! writes for — or a CA that signed the peer's certificate. Both sides present a certificate
//! and both verify the other's with webpki: the chain must end at a certificate of the trust
//! file, every certificate of it must be valid now (not expired, not yet valid), and the
//! end-entity certificate must allow the TLS role it plays. Host names are not checked: a
//! pinned certificate names nobody, and what the trust file lists is what is trusted (a CA put
//! there vouches for every certificate it signs).
//!
//! Invariants:
//! - Only TLS 1.3; no session resumption and no tickets, so every connection verifies the
//!   peer's certificate afresh, at the time it connects.
//! - [`TlsStream::split`] gives a reading and a writing half over one rustls connection. The
//!   connection's lock is never held across a socket call: the reader reads raw bytes without
//!   it, then takes it to decrypt them; the writer takes it to encrypt, then writes the
//!   records under the send lock alone. Records leave the socket in the order rustls produced
//!   them because everything that sends (the writer, and the reader when rustls must answer,
//!   e.g. a key update) takes the send lock before the connection's lock.
//! - A connection that ends without TLS `close_notify` is an error (`UnexpectedEof`), so a
//!   truncation by the path is never taken for a clean end.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, ClientConnection, Connection,
    DigitallySignedStruct, RootCertStore, ServerConfig, ServerConnection, SignatureScheme,
};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Label of the TLS exporter whose output binds the shared secret's proofs to the session.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-mirror-secret-binding-v1";

/// The name a primary asks for in its ClientHello. Certificates are not checked against it.
const SERVER_NAME: &str = "mirror.invalid";

/// Bytes read from the socket at a time by the reading half.
const RAW_READ: usize = 64 << 10;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `sha256:<hex>` of a DER certificate: how mirror names a certificate in logs and output.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", crate::digest::hex(&Sha256::digest(der)))
}

/// Our identity and whom we trust, ready to make TLS connections in either role.
#[derive(Clone)]
pub struct TlsConfig {
    inner: Arc<Loaded>,
}

struct Loaded {
    fingerprint: String,
    trusted: Vec<String>,
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key: fingerprints only.
        f.debug_struct("TlsConfig")
            .field("certificate", &self.inner.fingerprint)
            .field("trusted", &self.inner.trusted)
            .finish()
    }
}

impl TlsConfig {
    /// Loads our certificate (chain) and key and the trust file, each PEM. Errors name the file.
    pub fn from_files(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
        trust: impl AsRef<Path>,
    ) -> Result<TlsConfig> {
        let read = |p: &Path, what: &'static str| {
            std::fs::read(p).map_err(|e| Error::io(&p.display().to_string(), what, 0, e))
        };
        let (cert, key, trust) = (cert.as_ref(), key.as_ref(), trust.as_ref());
        let cert_pem = read(cert, "read TLS certificate")?;
        let key_pem = read(key, "read TLS key")?;
        let trust_pem = read(trust, "read TLS trust file")?;
        Self::build(
            (&cert_pem, &cert.display().to_string()),
            (&key_pem, &key.display().to_string()),
            (&trust_pem, &trust.display().to_string()),
        )
    }

    /// The same from PEM held in memory.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8], trust_pem: &[u8]) -> Result<TlsConfig> {
        Self::build(
            (cert_pem, "TLS certificate"),
            (key_pem, "TLS key"),
            (trust_pem, "TLS trust"),
        )
    }

    fn build(cert: (&[u8], &str), key: (&[u8], &str), trust: (&[u8], &str)) -> Result<TlsConfig> {
        let certs = parse_certs(cert.0, cert.1)?;
        let key_der = PrivateKeyDer::from_pem_slice(key.0)
            .map_err(|e| Error::invalid(format!("{}: no usable PEM private key: {e}", key.1)))?;
        let anchors = parse_certs(trust.0, trust.1)?;
        let mut roots = RootCertStore::empty();
        let mut trusted = Vec::new();
        for a in &anchors {
            roots.add(a.clone()).map_err(|e| {
                Error::invalid(format!("{}: a certificate cannot be trusted: {e}", trust.1))
            })?;
            trusted.push(fingerprint(a));
        }
        let roots = Arc::new(roots);
        let provider = provider();
        let tls13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        let bad_identity = |e: rustls::Error| {
            Error::invalid(format!(
                "{} / {}: not a usable identity: {e}",
                cert.1, key.1
            ))
        };

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| Error::invalid(format!("{}: {e}", trust.1)))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(tls13)
            .map_err(bad_identity)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(certs.clone(), key_der.clone_key())
            .map_err(bad_identity)?;
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;

        let server_verifier = Arc::new(TrustFileVerifier {
            roots,
            algorithms: provider.signature_verification_algorithms,
        });
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(tls13)
            .map_err(bad_identity)?
            .dangerous()
            .with_custom_certificate_verifier(server_verifier)
            .with_client_auth_cert(certs.clone(), key_der)
            .map_err(bad_identity)?;
        client.resumption = Resumption::disabled();

        Ok(TlsConfig {
            inner: Arc::new(Loaded {
                fingerprint: fingerprint(&certs[0]),
                trusted,
                client: Arc::new(client),
                server: Arc::new(server),
            }),
        })
    }

    /// Fingerprint of our own certificate.
    pub fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    /// Fingerprints of the certificates of the trust file.
    pub fn trusted(&self) -> &[String] {
        &self.inner.trusted
    }

    /// Runs the handshake as the connecting side (the primary) on `stream`, whose timeouts
    /// bound each wait. `peer` names the other side in errors.
    pub fn connect(&self, stream: TcpStream, peer: &str) -> Result<TlsStream> {
        let name = ServerName::try_from(SERVER_NAME).unwrap_or_else(|_| unreachable!());
        let conn = ClientConnection::new(self.inner.client.clone(), name)
            .map_err(|e| Error::link(peer, format!("TLS set-up: {e}")))?;
        handshake(Connection::Client(conn), stream, peer, "secondary")
    }

    /// Runs the handshake as the accepting side (the secondary) on `stream`.
    pub fn accept(&self, stream: TcpStream, peer: &str) -> Result<TlsStream> {
        let conn = ServerConnection::new(self.inner.server.clone())
            .map_err(|e| Error::link(peer, format!("TLS set-up: {e}")))?;
        handshake(Connection::Server(conn), stream, peer, "primary")
    }
}

fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid(format!("{what}: bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::invalid(format!(
            "{what}: no PEM certificate (BEGIN CERTIFICATE) found"
        )));
    }
    Ok(certs)
}

/// The primary's check of the secondary's certificate: webpki's chain, validity-period and
/// key-usage checks against the trust file, without the host-name check (see the module
/// comment).
#[derive(Debug)]
struct TrustFileVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for TrustFileVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is offered; a TLS 1.2 signature is never acceptable.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn handshake(mut conn: Connection, stream: TcpStream, peer: &str, role: &str) -> Result<TlsStream> {
    {
        let mut io = &stream;
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut io) {
                linger(&stream);
                return Err(io_error(peer, role, e, "TLS handshake"));
            }
        }
    }
    let binding = conn
        .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
        .map_err(|e| Error::link(peer, format!("TLS exporter: {e}")))?;
    let peer_fingerprint = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| fingerprint(c))
        .unwrap_or_default();
    Ok(TlsStream {
        conn,
        stream,
        binding,
        peer_fingerprint,
        peer: peer.to_owned(),
    })
}

/// Closes a failed handshake so that the peer reads the alert explaining why rather than a
/// reset: stop sending, then drain what the peer still sends for a moment (bounded).
fn linger(stream: &TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(250)));
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 4096];
    let mut s = stream;
    while std::time::Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// The engine error for an I/O error on a TLS connection with `peer` (whose role is `role`):
/// certificate refusals are authentication errors naming the reason, the rest link errors.
pub fn io_error(peer: &str, role: &str, e: io::Error, during: &str) -> Error {
    if let Some(t) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return tls_error(peer, role, t, during);
    }
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            Error::link(peer, format!("{during}: timed out"))
        }
        io::ErrorKind::UnexpectedEof => {
            Error::link(peer, format!("{during}: connection closed by the {role}"))
        }
        _ => Error::link(peer, format!("{during}: {e}")),
    }
}

/// The engine error for a rustls error on a connection with `peer`.
pub fn tls_error(peer: &str, role: &str, e: &rustls::Error, during: &str) -> Error {
    use rustls::Error as E;
    let auth = |msg: String| Error::auth(peer, msg);
    match e {
        E::InvalidCertificate(c) => auth(format!(
            "the {role}'s certificate is refused: {}",
            certificate_reason(c)
        )),
        E::NoCertificatesPresented => auth(format!("the {role} presented no certificate")),
        E::AlertReceived(a) => match a {
            AlertDescription::CertificateExpired => auth(format!(
                "the {role} refused our certificate: expired or not yet valid (check the clocks and the certificate's dates)"
            )),
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateRequired => auth(format!(
                "the {role} refused our certificate: not trusted by its trust file ({a:?})"
            )),
            AlertDescription::ProtocolVersion | AlertDescription::HandshakeFailure => {
                auth(format!(
                    "the {role} refused the TLS handshake ({a:?}): it needs TLS 1.3 and a certificate"
                ))
            }
            // A certificate whose signature does not verify against the trust file (same
            // name, other key) is answered with decrypt_error during the handshake.
            AlertDescription::DecryptError if during == "TLS handshake" => auth(format!(
                "the {role} refused our certificate: not trusted by its trust file ({a:?})"
            )),
            AlertDescription::DecryptError | AlertDescription::BadRecordMac => Error::link(
                peer,
                format!("{during}: the {role} received a record that failed authentication (tampered with on the path?)"),
            ),
            _ => Error::link(peer, format!("{during}: the {role} sent TLS alert {a:?}")),
        },
        E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. }
            if during == "TLS handshake" =>
        {
            auth(format!(
                "the {role} does not speak TLS (is it configured with a certificate, key and trust file?)"
            ))
        }
        E::DecryptError => Error::link(
            peer,
            format!("{during}: a record failed authentication (tampered with on the path?)"),
        ),
        E::PeerIncompatible(p) => auth(format!("the {role}'s TLS is incompatible: {p:?}")),
        other => Error::link(peer, format!("{during}: {other}")),
    }
}

fn certificate_reason(c: &CertificateError) -> String {
    match c {
        CertificateError::Expired => "it has expired".into(),
        CertificateError::ExpiredContext { time, not_after } => format!(
            "it expired at {} (now {})",
            unix_date(*not_after),
            unix_date(*time)
        ),
        CertificateError::NotValidYet => "it is not valid yet".into(),
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "it is not valid before {} (now {})",
            unix_date(*not_before),
            unix_date(*time)
        ),
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            "it is not in the trust file, nor signed by a certificate of it".into()
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "its key usage does not allow this TLS role".into()
        }
        CertificateError::BadEncoding => "it cannot be parsed".into(),
        other => format!("{other:?}"),
    }
}

fn unix_date(t: UnixTime) -> String {
    humantime_like(t.as_secs())
}

/// `YYYY-MM-DD HH:MM:SS UTC` of seconds since the epoch.
fn humantime_like(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A connection past its TLS handshake.
pub struct TlsStream {
    conn: Connection,
    stream: TcpStream,
    binding: [u8; 32],
    peer_fingerprint: String,
    peer: String,
}

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("peer", &self.peer)
            .field("peer_certificate", &self.peer_fingerprint)
            .finish()
    }
}

impl TlsStream {
    /// 32 bytes both ends derive from this session's secrets (the TLS exporter): what the
    /// shared secret's proofs are bound to.
    pub fn binding(&self) -> [u8; 32] {
        self.binding
    }

    /// Fingerprint of the certificate the peer presented.
    pub fn peer_fingerprint(&self) -> &str {
        &self.peer_fingerprint
    }

    /// The reading and writing halves, for two threads.
    pub fn split(mut self) -> io::Result<(TlsReader, TlsWriter)> {
        let out = self.stream.try_clone()?;
        // The handshake may have read records past its end (the peer's first frames arrive
        // with its Finished): take their plaintext now, or nothing would ever ask for it.
        let mut plain = Vec::with_capacity(RAW_READ);
        let mut closed = false;
        self.conn
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        match self.conn.reader().read_to_end(&mut plain) {
            Ok(_) => closed = true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        let shared = Arc::new(Shared {
            conn: Mutex::new(self.conn),
            send: Mutex::new(out),
        });
        let reader = TlsReader {
            shared: shared.clone(),
            sock: self.stream,
            raw: vec![0; RAW_READ].into_boxed_slice(),
            raw_pos: 0,
            raw_len: 0,
            plain,
            plain_pos: 0,
            closed,
        };
        let writer = TlsWriter {
            shared,
            out: Vec::with_capacity(RAW_READ),
        };
        Ok((reader, writer))
    }
}

struct Shared {
    conn: Mutex<Connection>,
    /// The socket as used for sending; held while records are written to it.
    send: Mutex<TcpStream>,
}

impl Shared {
    /// Sends whatever rustls has queued (alerts, key updates).
    fn flush_pending(&self) -> io::Result<()> {
        let mut sock = lock(&self.send);
        let mut out = Vec::new();
        {
            let mut c = lock(&self.conn);
            while c.wants_write() {
                c.write_tls(&mut out)?;
            }
        }
        sock.write_all(&out)
    }
}

/// The reading half of a TLS connection: plaintext out, records in.
pub struct TlsReader {
    shared: Arc<Shared>,
    sock: TcpStream,
    raw: Box<[u8]>,
    raw_pos: usize,
    raw_len: usize,
    plain: Vec<u8>,
    plain_pos: usize,
    closed: bool,
}

impl fmt::Debug for TlsReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsReader").finish_non_exhaustive()
    }
}

impl TlsReader {
    /// The socket underneath (for timeouts).
    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }

    /// Decrypts the raw bytes held, appending their plaintext.
    fn ingest(&mut self) -> io::Result<()> {
        self.plain.clear();
        self.plain_pos = 0;
        let mut failed = None;
        let wants_write = {
            let mut c = lock(&self.shared.conn);
            while self.raw_pos < self.raw_len && failed.is_none() {
                let mut slice = &self.raw[self.raw_pos..self.raw_len];
                let n = c.read_tls(&mut slice)?;
                self.raw_pos += n;
                match c.process_new_packets() {
                    Ok(state) => {
                        // Empties rustls's plaintext buffer, so read_tls never finds it full.
                        match c.reader().read_to_end(&mut self.plain) {
                            Ok(_) => self.closed = true,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(e) => failed = Some(e),
                        }
                        if state.peer_has_closed() {
                            self.closed = true;
                        }
                    }
                    Err(e) => failed = Some(io::Error::new(io::ErrorKind::InvalidData, e)),
                }
                if n == 0 || self.closed {
                    break;
                }
            }
            c.wants_write()
        };
        if wants_write {
            // An answer rustls owes the peer (a key update), or the alert of a failure.
            let r = self.shared.flush_pending();
            if failed.is_none() {
                r?;
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.plain_pos < self.plain.len() {
                let n = buf.len().min(self.plain.len() - self.plain_pos);
                buf[..n].copy_from_slice(&self.plain[self.plain_pos..self.plain_pos + n]);
                self.plain_pos += n;
                return Ok(n);
            }
            if self.closed || buf.is_empty() {
                return Ok(0);
            }
            if self.raw_pos == self.raw_len {
                let n = loop {
                    match self.sock.read(&mut self.raw) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        r => break r?,
                    }
                };
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed without TLS close_notify",
                    ));
                }
                self.raw_pos = 0;
                self.raw_len = n;
            }
            self.ingest()?;
        }
    }
}

/// The writing half of a TLS connection: plaintext in, records out, sent at once.
pub struct TlsWriter {
    shared: Arc<Shared>,
    out: Vec<u8>,
}

impl fmt::Debug for TlsWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsWriter").finish_non_exhaustive()
    }
}

impl TlsWriter {
    /// Sends TLS `close_notify`: the peer reads a clean end of stream.
    pub fn close(&mut self) -> io::Result<()> {
        lock(&self.shared.conn).send_close_notify();
        self.shared.flush_pending()
    }
}

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut sock = lock(&self.shared.send);
        self.out.clear();
        {
            let mut c = lock(&self.shared.conn);
            let mut rest = buf;
            while !rest.is_empty() {
                let n = c.writer().write(rest)?;
                rest = &rest[n..];
                while c.wants_write() {
                    c.write_tls(&mut self.out)?;
                }
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "TLS connection accepts no more data",
                    ));
                }
            }
        }
        sock.write_all(&self.out)?;
        if self.out.capacity() > 4 * RAW_READ {
            self.out = Vec::with_capacity(RAW_READ);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Every write is sent before it returns.
        Ok(())
    }
}

/// When a generated certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Not valid before.
    pub not_before: SystemTime,
    /// Not valid after.
    pub not_after: SystemTime,
}

impl Validity {
    /// From a day ago (clocks differ) to twenty years from now.
    pub fn default_from_now() -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - Duration::from_secs(86_400),
            not_after: now + Duration::from_secs(20 * 365 * 86_400),
        }
    }
}

/// A generated identity: certificate and key, PEM.
#[derive(Clone)]
pub struct Identity {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
    /// `sha256:<hex>` of the DER certificate.
    pub fingerprint: String,
    key: Arc<rcgen::KeyPair>,
    params: Arc<rcgen::CertificateParams>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

fn to_offset(t: SystemTime) -> Result<time::OffsetDateTime> {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| Error::invalid(format!("certificate date out of range: {e}")))
}

impl Identity {
    /// A fresh ECDSA P-256 key and a self-signed certificate for it, usable by either peer
    /// (server and client authentication), named `name` (common name).
    pub fn self_signed(name: &str, validity: Validity) -> Result<Identity> {
        Self::generate(name, validity, None, false)
    }

    /// A certificate authority: what signs peers' certificates in the CA set-up.
    pub fn authority(name: &str, validity: Validity) -> Result<Identity> {
        Self::generate(name, validity, None, true)
    }

    /// A fresh key with a certificate signed by `ca`.
    pub fn signed_by(name: &str, validity: Validity, ca: &Identity) -> Result<Identity> {
        Self::generate(name, validity, Some(ca), false)
    }

    fn generate(
        name: &str,
        validity: Validity,
        ca: Option<&Identity>,
        is_ca: bool,
    ) -> Result<Identity> {
        let bad = |e: rcgen::Error| Error::invalid(format!("certificate generation: {e}"));
        if name.is_empty() || name.len() > 64 {
            return Err(Error::invalid(
                "certificate name must be 1 to 64 characters",
            ));
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(bad)?;
        let mut params = rcgen::CertificateParams::new(vec!["mirror".to_owned()]).map_err(bad)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.not_before = to_offset(validity.not_before)?;
        params.not_after = to_offset(validity.not_after)?;
        let mut serial = [0u8; 16];
        getrandom::getrandom(&mut serial)
            .map_err(|e| Error::invalid(format!("no OS randomness for a serial number: {e}")))?;
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        if is_ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::DigitalSignature,
            ];
        } else {
            params.is_ca = rcgen::IsCa::ExplicitNoCa;
            params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
        }
        let cert = match ca {
            None => params.clone().self_signed(&key).map_err(bad)?,
            Some(ca) => {
                let issuer = (*ca.params).clone().self_signed(&ca.key).map_err(bad)?;
                params
                    .clone()
                    .signed_by(&key, &issuer, &ca.key)
                    .map_err(bad)?
            }
        };
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            fingerprint: fingerprint(cert.der()),
            key: Arc::new(key),
            params: Arc::new(params),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn day() -> Duration {
        Duration::from_secs(86_400)
    }

    fn pair() -> (Identity, Identity) {
        let v = Validity::default_from_now();
        (
            Identity::self_signed("primary", v).unwrap(),
            Identity::self_signed("secondary", v).unwrap(),
        )
    }

    fn config(me: &Identity, trust: &Identity) -> TlsConfig {
        TlsConfig::from_pem(
            me.cert_pem.as_bytes(),
            me.key_pem.as_bytes(),
            trust.cert_pem.as_bytes(),
        )
        .unwrap()
    }

    /// Runs a handshake between `client` and `server` over loopback; returns both results.
    fn handshake_pair(
        client: TlsConfig,
        server: TlsConfig,
    ) -> (Result<TlsStream>, Result<TlsStream>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let r = server.accept(s, "primary-peer");
            // Let the client read what the server sent (an alert) before the socket closes.
            if let Ok(st) = &r {
                let _ = st.stream.set_read_timeout(Some(Duration::from_millis(200)));
            }
            r
        });
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let c = client.connect(s, "secondary-peer");
        (c, t.join().unwrap())
    }

    /// After the handshake, the client's first read shows whether the server accepted it.
    fn client_first_read(c: TlsStream) -> io::Result<usize> {
        let (mut r, _w) = c.split().unwrap();
        let mut b = [0u8; 1];
        r.read(&mut b)
    }

    #[test]
    fn mutual_pinned_handshake_binds_both_ends_to_the_same_exporter_and_carries_data() {
        let (p, s) = pair();
        let (c, srv) = handshake_pair(config(&p, &s), config(&s, &p));
        let (c, srv) = (c.unwrap(), srv.unwrap());
        assert_eq!(c.binding(), srv.binding());
        assert_ne!(c.binding(), [0; 32]);
        assert_eq!(c.peer_fingerprint(), s.fingerprint);
        assert_eq!(srv.peer_fingerprint(), p.fingerprint);
        let (mut cr, mut cw) = c.split().unwrap();
        let (mut sr, mut sw) = srv.split().unwrap();
        // Both directions at once, more than the socket buffers hold, from two threads.
        let big: Vec<u8> = (0..8 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
        let big2 = big.clone();
        let t = std::thread::spawn(move || {
            cw.write_all(&big2).unwrap();
            cw.close().unwrap();
            let mut back = Vec::new();
            cr.read_to_end(&mut back).unwrap();
            back
        });
        let mut got = Vec::new();
        let mut buf = vec![0u8; 100_000];
        let echo = std::thread::spawn(move || {
            sw.write_all(b"hello from the secondary").unwrap();
            sw
        });
        loop {
            let n = sr.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got == big, "plaintext arrives intact and in order");
        let mut sw = echo.join().unwrap();
        sw.close().unwrap();
        assert_eq!(t.join().unwrap(), b"hello from the secondary");
    }

    #[test]
    fn a_peer_not_in_the_trust_file_is_refused_on_both_sides() {
        let (p, s) = pair();
        let stranger = Identity::self_signed("secondary", Validity::default_from_now()).unwrap();
        // The primary trusts `s` but a stranger (same name, other key) answers.
        let (c, srv) = handshake_pair(config(&p, &s), config(&stranger, &p));
        let e = c.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Auth, "{e}");
        assert!(e.to_string().contains("not in the trust file"), "{e}");
        let e = srv.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Auth, "{e}");
        assert!(e.to_string().contains("refused our certificate"), "{e}");

        // The secondary does not trust the primary: the primary learns it at its first read.
        let (c, srv) = handshake_pair(config(&p, &s), config(&s, &stranger));
        let e = srv.unwrap_err();
        assert!(
            e.to_string().contains("primary's certificate is refused"),
            "{e}"
        );
        let e = client_first_read(c.unwrap()).unwrap_err();
        let e = io_error("x", "secondary", e, "read");
        assert_eq!(e.kind(), crate::ErrorKind::Auth, "{e}");
        assert!(
            e.to_string().contains("not trusted by its trust file"),
            "{e}"
        );
    }

    #[test]
    fn expired_and_not_yet_valid_certificates_are_refused_naming_the_reason() {
        let now = SystemTime::now();
        let (p, _) = pair();
        let expired = Identity::self_signed(
            "old",
            Validity {
                not_before: now - 400 * day(),
                not_after: now - day(),
            },
        )
        .unwrap();
        let future = Identity::self_signed(
            "new",
            Validity {
                not_before: now + 10 * day(),
                not_after: now + 400 * day(),
            },
        )
        .unwrap();
        for (cert, want) in [(&expired, "expired"), (&future, "not valid before")] {
            let (c, srv) = handshake_pair(config(&p, cert), config(cert, &p));
            let e = c.unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Auth);
            assert!(e.to_string().contains(want), "{e}");
            assert!(srv.is_err());
            // And as the primary's certificate, refused by the secondary.
            let (c, srv) = handshake_pair(config(cert, &p), config(&p, cert));
            let e = srv.unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
            let e = io_error(
                "x",
                "secondary",
                client_first_read(c.unwrap()).unwrap_err(),
                "read",
            );
            assert!(e.to_string().contains("expired or not yet valid"), "{e}");
        }
    }

    #[test]
    fn a_ca_in_the_trust_file_vouches_for_the_certificates_it_signed() {
        let v = Validity::default_from_now();
        let ca = Identity::authority("mirror CA", v).unwrap();
        let p = Identity::signed_by("primary", v, &ca).unwrap();
        let s = Identity::signed_by("secondary", v, &ca).unwrap();
        let (c, srv) = handshake_pair(config(&p, &ca), config(&s, &ca));
        assert_eq!(c.unwrap().binding(), srv.unwrap().binding());
        // A self-signed certificate with the CA's name is not the CA.
        let fake = Identity::self_signed("primary", v).unwrap();
        let (_, srv) = handshake_pair(config(&fake, &s), config(&s, &ca));
        assert!(srv.is_err());
    }

    #[test]
    fn a_plaintext_peer_is_told_apart_from_a_bad_certificate() {
        let (p, s) = pair();
        let server = config(&s, &p);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (st, _) = l.accept().unwrap();
            st.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            server.accept(st, "p")
        });
        let mut c = TcpStream::connect(addr).unwrap();
        // A mirror Hello frame in clear.
        c.write_all(&[40, 0, 0, 0, 1, 0, 0, 0, b'M', b'I', b'R', b'R'])
            .unwrap();
        let e = t.join().unwrap().unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Auth);
        assert!(e.to_string().contains("does not speak TLS"), "{e}");
    }

    #[test]
    fn pem_errors_name_the_file_and_keys_must_match_certificates() {
        let (p, s) = pair();
        let e = TlsConfig::from_pem(b"nothing", p.key_pem.as_bytes(), s.cert_pem.as_bytes())
            .unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let e = TlsConfig::from_pem(p.cert_pem.as_bytes(), b"", s.cert_pem.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("private key"), "{e}");
        let e = TlsConfig::from_pem(
            p.cert_pem.as_bytes(),
            s.key_pem.as_bytes(),
            s.cert_pem.as_bytes(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a usable identity"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = TlsConfig::from_files(dir.path().join("a"), dir.path().join("b"), "c").unwrap_err();
        assert!(e.to_string().contains("/a"), "{e}");
        // Debug never shows the key.
        let dbg = format!("{:?}", config(&p, &s));
        assert!(dbg.contains(&p.fingerprint) && !dbg.contains("PRIVATE"));
    }

    #[test]
    fn fingerprint_is_sha256_of_the_der_certificate() {
        let (p, _) = pair();
        let der = CertificateDer::from_pem_slice(p.cert_pem.as_bytes()).unwrap();
        assert_eq!(p.fingerprint, fingerprint(&der));
        assert_eq!(p.fingerprint.len(), "sha256:".len() + 64);
        assert_eq!(
            fingerprint(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn dates_print_as_utc() {
        assert_eq!(humantime_like(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(humantime_like(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(humantime_like(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }
}

//! Shared-secret authentication: an HMAC-SHA256 challenge–response in both directions.
//!
//! Each peer sends a fresh 32-byte nonce from the OS generator (no fallback: without one the
//! handshake fails); each proves the secret by the HMAC of a label naming its role, both
//! nonces (its peer's first) and the session binding — the TLS exporter of the connection
//! (zeros without TLS) — so a proof can be neither replayed, reflected back, nor relayed onto
//! another connection. The primary proves first; the secondary answers only a proof that
//! verified. Comparison is constant-time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// Label of the secondary's proof.
pub const SECONDARY_LABEL: &[u8] = b"mirror v1 secondary";
/// Label of the primary's proof.
pub const PRIMARY_LABEL: &[u8] = b"mirror v1 primary";

/// Fewest bytes of a shared secret.
pub const MIN_SECRET_LEN: usize = 16;

/// What both ends of one connection derive alike and nobody else can: the TLS exporter, or
/// zeros on a plaintext connection.
pub type Binding = [u8; 32];

/// The binding of a plaintext connection.
pub const NO_BINDING: Binding = [0; 32];

fn mac(
    secret: &[u8],
    label: &[u8],
    peer_nonce: &[u8; 32],
    own_nonce: &[u8; 32],
    binding: &Binding,
) -> HmacSha256 {
    // HMAC takes keys of any length: new_from_slice cannot fail.
    let mut m = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    m.update(label);
    m.update(peer_nonce);
    m.update(own_nonce);
    m.update(binding);
    m
}

/// The proof a peer with `label` sends, over its peer's nonce, its own, and the session.
pub fn proof(
    secret: &[u8],
    label: &[u8],
    peer_nonce: &[u8; 32],
    own_nonce: &[u8; 32],
    binding: &Binding,
) -> [u8; 32] {
    mac(secret, label, peer_nonce, own_nonce, binding)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a proof in constant time.
pub fn verify(
    secret: &[u8],
    label: &[u8],
    peer_nonce: &[u8; 32],
    own_nonce: &[u8; 32],
    binding: &Binding,
    proof: &[u8; 32],
) -> bool {
    mac(secret, label, peer_nonce, own_nonce, binding)
        .verify_slice(proof)
        .is_ok()
}

/// 32 random bytes from the OS; an error (and so a failed handshake) when it has none.
pub fn nonce() -> Result<[u8; 32]> {
    let mut n = [0u8; 32];
    random_bytes(&mut n)?;
    Ok(n)
}

/// A random 128-bit id (session ids, volume ids); never zero.
pub fn random_id() -> Result<u128> {
    let mut b = [0u8; 16];
    random_bytes(&mut b)?;
    Ok(u128::from_le_bytes(b).max(1))
}

/// Fills `buf` from the OS generator. There is no fallback: a predictable nonce or key is
/// worse than none.
pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
    getrandom::getrandom(buf).map_err(|e| Error::Io {
        path: "the OS random generator".into(),
        op: "read",
        offset: 0,
        source: std::io::Error::other(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_verifies_only_with_the_same_secret_label_nonces_and_session() {
        let (a, b) = (nonce().unwrap(), nonce().unwrap());
        assert_ne!(a, b);
        let k = b"s3cret-key-of-16+";
        let session = [5u8; 32];
        let p = proof(k, PRIMARY_LABEL, &a, &b, &session);
        assert!(verify(k, PRIMARY_LABEL, &a, &b, &session, &p));
        assert!(!verify(
            b"other-key-of-16+!",
            PRIMARY_LABEL,
            &a,
            &b,
            &session,
            &p
        ));
        assert!(!verify(k, SECONDARY_LABEL, &a, &b, &session, &p));
        assert!(!verify(k, PRIMARY_LABEL, &b, &a, &session, &p));
        // The same proof on another TLS session (another exporter), or in clear: worthless.
        assert!(!verify(k, PRIMARY_LABEL, &a, &b, &[6u8; 32], &p));
        assert!(!verify(k, PRIMARY_LABEL, &a, &b, &NO_BINDING, &p));
        assert_ne!(random_id().unwrap(), random_id().unwrap());
    }

    #[test]
    fn hmac_sha256_matches_rfc4231_case_2() {
        let mut m = HmacSha256::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        let out: [u8; 32] = m.finalize().into_bytes().into();
        assert_eq!(
            crate::storage::digest::hex(&out),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

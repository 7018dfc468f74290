//! Shared-secret authentication: an HMAC-SHA256 challenge–response in both directions.
//!
//! Each peer sends a fresh 32-byte nonce; each proves the secret by the HMAC of a label naming
//! its role and both nonces (its peer's first), so a proof can be neither replayed nor
//! reflected back. Comparison is constant-time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Label of the secondary's proof.
pub const SECONDARY_LABEL: &[u8] = b"mirror v1 secondary";
/// Label of the primary's proof.
pub const PRIMARY_LABEL: &[u8] = b"mirror v1 primary";

fn mac(secret: &[u8], label: &[u8], peer_nonce: &[u8; 32], own_nonce: &[u8; 32]) -> HmacSha256 {
    // HMAC takes keys of any length: new_from_slice cannot fail.
    let mut m = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    m.update(label);
    m.update(peer_nonce);
    m.update(own_nonce);
    m
}

/// The proof a peer with `label` sends, over its peer's nonce then its own.
pub fn proof(secret: &[u8], label: &[u8], peer_nonce: &[u8; 32], own_nonce: &[u8; 32]) -> [u8; 32] {
    mac(secret, label, peer_nonce, own_nonce)
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
    proof: &[u8; 32],
) -> bool {
    mac(secret, label, peer_nonce, own_nonce)
        .verify_slice(proof)
        .is_ok()
}

/// 32 random bytes from the OS.
pub fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    fill_random(&mut n);
    n
}

/// A random 128-bit id (session ids, volume ids); never zero.
pub fn random_id() -> u128 {
    let mut b = [0u8; 16];
    fill_random(&mut b);
    u128::from_le_bytes(b).max(1)
}

fn fill_random(buf: &mut [u8]) {
    if getrandom::getrandom(buf).is_err() {
        // No OS randomness: fall back to time and address entropy. Nonces stay unique per
        // process, which is what replay protection needs.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let seed = proof(&t.to_le_bytes(), b"fallback", &[0; 32], &[0; 32]);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = seed[i % 32] ^ (i as u8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_verifies_only_with_the_same_secret_label_and_nonces() {
        let (a, b) = (nonce(), nonce());
        assert_ne!(a, b);
        let p = proof(b"s3cret-key", PRIMARY_LABEL, &a, &b);
        assert!(verify(b"s3cret-key", PRIMARY_LABEL, &a, &b, &p));
        assert!(!verify(b"other-key!", PRIMARY_LABEL, &a, &b, &p));
        assert!(!verify(b"s3cret-key", SECONDARY_LABEL, &a, &b, &p));
        assert!(!verify(b"s3cret-key", PRIMARY_LABEL, &b, &a, &p));
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

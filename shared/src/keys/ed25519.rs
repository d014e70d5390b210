//! Ed25519 verification with a per-key table: the same checks as ed25519-dalek's `verify_strict` (canonical
//! `S`, `R` a valid point not of small order, the key not of small order, `[S]B - [k]A` encoding to exactly
//! the signature's `R` bytes), computed as two fixed-base multiplications instead of one double-scalar one.
//!
//! Why: a fresh EdDSA token's cost is this check. The generic `[k](-A) + [S]B` doubles ~253 times; with a
//! radix-16 table of `-A` (built at the key's first use, ≈ 30 KB on wasm32, shared by clones) and the
//! library's static table of `B`, each product is 64 additions and 4 doublings, about 1.7× fewer field
//! operations. The issuer's key is fixed, so the table is paid once per key per VM.

use std::sync::{Arc, OnceLock};

use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsBasepointTable, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::BasepointTable as _;
use sha2::{Digest, Sha512};

/// A decoded Ed25519 public key and, once used, the table of its negation.
#[derive(Clone)]
pub(super) struct Key {
    inner: Arc<Inner>,
}

struct Inner {
    /// The key's 32 bytes as published (hashed into `k` as is, as RFC 8032 §5.1.7 says).
    encoded: [u8; 32],
    minus_a: EdwardsPoint,
    small_order: bool,
    table: OnceLock<EdwardsBasepointTable>,
}

impl Key {
    /// Decodes the point; None when the bytes are not a point (a key loader refuses those first).
    pub(super) fn new(encoded: [u8; 32]) -> Option<Self> {
        let point = CompressedEdwardsY(encoded).decompress()?;
        Some(Self {
            inner: Arc::new(Inner {
                encoded,
                minus_a: -point,
                small_order: point.is_small_order(),
                table: OnceLock::new(),
            }),
        })
    }

    /// Verifies a 64-byte Ed25519 signature over `message`; anything malformed is simply invalid.
    pub(super) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let inner = &*self.inner;
        let (Some(r_bytes), Some(s_bytes)) = (signature.get(..32), signature.get(32..64)) else {
            return false;
        };
        if signature.len() != 64 || inner.small_order {
            return false;
        }
        let (Ok(r_bytes), Ok(s_bytes)) =
            (<[u8; 32]>::try_from(r_bytes), <[u8; 32]>::try_from(s_bytes))
        else {
            return false;
        };
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else {
            return false;
        };
        let mut h = Sha512::new();
        h.update(r_bytes);
        h.update(inner.encoded);
        h.update(message);
        let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        let table = inner
            .table
            .get_or_init(|| EdwardsBasepointTable::create(&inner.minus_a));
        let expected = ED25519_BASEPOINT_TABLE * &s + table * &k;
        // `R` is not decompressed: bytes equal to the canonical encoding of `expected` are a valid point
        // (anything else, a non-canonical or off-curve `R` included, is refused here as by verify_strict),
        // and that point is `expected` itself, so its small-order check is three doublings, not a square root.
        expected.compress().to_bytes() == r_bytes && !expected.is_small_order()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use ed25519_dalek::{Signer as _, SigningKey};

    /// The table path agrees with ed25519-dalek's `verify_strict` on valid, altered and malleated signatures.
    #[test]
    fn agrees_with_verify_strict() {
        for seed in 0u8..8 {
            let signing = SigningKey::from_bytes(&[seed.wrapping_mul(29).wrapping_add(1); 32]);
            let public = signing.verifying_key();
            let key = Key::new(public.to_bytes()).unwrap();
            for len in [0usize, 1, 63, 700] {
                let message: Vec<u8> = (0..len).map(|i| (i as u8) ^ seed).collect();
                let mut sig = signing.sign(&message).to_bytes();
                let strict = |sig: &[u8; 64]| {
                    public
                        .verify_strict(&message, &ed25519_dalek::Signature::from_bytes(sig))
                        .is_ok()
                };
                assert!(key.verify(&message, &sig));
                assert!(strict(&sig));
                for (i, bit) in [(0usize, 1u8), (31, 0x80), (32, 1), (63, 0x10)] {
                    let mut bad = sig;
                    bad[i] ^= bit;
                    assert_eq!(key.verify(&message, &bad), strict(&bad), "byte {i}");
                }
                // S + l (not canonical): refused by both.
                let l: [u8; 32] = [
                    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde,
                    0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
                ];
                let mut carry = 0u16;
                for j in 0..32 {
                    let v = u16::from(sig[32 + j]) + u16::from(l[j]) + carry;
                    sig[32 + j] = v as u8;
                    carry = v >> 8;
                }
                assert!(!key.verify(&message, &sig));
                assert!(!strict(&sig));
                assert!(!key.verify(&message, &sig[..63]));
            }
        }
    }
}

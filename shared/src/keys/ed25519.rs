//! Ed25519 verification with a per-key table: the same checks as ed25519-dalek's `verify_strict` (canonical
//! `S`, `R` a valid point not of small order, the key not of small order, `[S]B - [k]A` encoding to exactly
//! the signature's `R` bytes), computed from two fixed-base tables instead of one double-scalar product.
//!
//! Why: a fresh EdDSA token's cost is this check. The generic `[k](-A) + [S]B` doubles ~253 times; with a
//! signed radix-64 table of `-A` (22 rows of the multiples 1..32 of `2^(12i)·(-A)`, built at the key's first
//! use: 112,640 bytes per key on wasm32 and on 64-bit targets, shared by clones, ≈ 700 point additions once)
//! and the same table of `B` (built once per process), both products together are at most 86 additions and
//! 6 doublings. Verification handles public data only (the key, the signature, the message), so the lookups
//! are variable-time: a signed digit indexes its row directly and a zero digit adds nothing. In Wasm
//! (wasm instructions of a fresh EdDSA token check): curve25519-dalek's constant-time radix-16 basepoint
//! tables 1,707k, its radix-64 ones 2,165k (each lookup scans the whole row), this at radix 16 1,345k, at
//! radix 64 1,065k.

use std::sync::{Arc, OnceLock};

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity as _;
use sha2::{Digest, Sha512};

/// The window: scalars are written in signed radix `2^W`.
const W: usize = 6;
/// Entries per row: the multiples `1..=2^(W-1)`.
const HALF: usize = 1 << (W - 1);
/// Signed digits of a reduced scalar (below `2^253`).
const DIGITS: usize = 256_usize.div_ceil(W);

/// Row `i` holds `[1..=HALF]·2^(2·W·i)·P`.
type Table = Vec<[EdwardsPoint; HALF]>;

/// `2^k·p`.
fn times_pow2(p: EdwardsPoint, mut k: usize) -> EdwardsPoint {
    let mut q = p;
    while k >= 3 {
        q = q.mul_by_cofactor();
        k -= 3;
    }
    for _ in 0..k {
        q += q;
    }
    q
}

/// The table of `P` (one row per two digits).
fn build_table(point: &EdwardsPoint) -> Table {
    let count = DIGITS.div_ceil(2);
    let mut rows = Vec::with_capacity(count);
    let mut base = *point;
    for _ in 0..count {
        let mut row = [base; HALF];
        let mut acc = base;
        for entry in row.iter_mut().skip(1) {
            acc += base;
            *entry = acc;
        }
        // 2^(2W)·base = 2^(W+1)·(2^(W-1)·base).
        base = times_pow2(row[HALF - 1], W + 1);
        rows.push(row);
    }
    rows
}

/// The basepoint's table, once per process.
fn base_table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| build_table(&ED25519_BASEPOINT_POINT))
}

/// The scalar's signed radix-`2^W` digits, each in `[-HALF, HALF]` (curve25519-dalek's `as_radix_2w`).
fn radix_digits(scalar: &Scalar) -> [i16; DIGITS] {
    let bytes = scalar.as_bytes();
    let bit = |i: usize| bytes.get(i / 8).map_or(0, |b| (b >> (i % 8)) & 1);
    let mut digits = [0i16; DIGITS];
    let mut carry = 0i16;
    for (i, digit) in digits.iter_mut().enumerate() {
        let window = (0..W).fold(0i16, |acc, j| acc | (i16::from(bit(i * W + j)) << j));
        let coef = window + carry;
        carry = (coef + (1 << (W - 1))) >> W;
        *digit = coef - (carry << W);
    }
    // The scalar is below 2^253, so the top digit absorbs the last carry.
    if let Some(last) = digits.last_mut() {
        *last += carry << W;
    }
    digits
}

/// `acc + d·entry`, where `row[j]` is `(j+1)·entry`; variable-time (public data only).
fn add_digit(acc: EdwardsPoint, row: &[EdwardsPoint; HALF], digit: i16) -> EdwardsPoint {
    let Some(index) = usize::from(digit.unsigned_abs()).checked_sub(1) else {
        return acc;
    };
    match row.get(index) {
        Some(entry) if digit > 0 => acc + entry,
        Some(entry) => acc - entry,
        // |digit| <= HALF by construction.
        None => acc,
    }
}

/// `a·A + b·B` from the two tables: the odd digits, times `2^W`, then the even ones (dalek's order).
fn double_fixed_base(a: &Scalar, table_a: &Table, b: &Scalar, table_b: &Table) -> EdwardsPoint {
    let (da, db) = (radix_digits(a), radix_digits(b));
    let rows = || table_a.iter().zip(table_b);
    let digits = |parity: usize| {
        da.iter()
            .zip(&db)
            .skip(parity)
            .step_by(2)
            .map(|(x, y)| (*x, *y))
    };
    let mut acc = EdwardsPoint::identity();
    for ((ra, rb), (x, y)) in rows().zip(digits(1)) {
        acc = add_digit(add_digit(acc, ra, x), rb, y);
    }
    acc = times_pow2(acc, W);
    for ((ra, rb), (x, y)) in rows().zip(digits(0)) {
        acc = add_digit(add_digit(acc, ra, x), rb, y);
    }
    acc
}

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
    table: OnceLock<Table>,
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
        let table = inner.table.get_or_init(|| build_table(&inner.minus_a));
        let expected = double_fixed_base(&k, table, &s, base_table());
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

    /// The two tables give curve25519-dalek's double-scalar product, for scalars with every kind of digit.
    #[test]
    fn double_fixed_base_matches_dalek() {
        let a_point = ED25519_BASEPOINT_POINT.mul_by_cofactor() + ED25519_BASEPOINT_POINT;
        let table_a = build_table(&a_point);
        let mut scalars = vec![Scalar::ZERO, Scalar::ONE, -Scalar::ONE, Scalar::from(8u8)];
        for seed in 0u8..16 {
            let wide: Vec<u8> = (0..64u8)
                .map(|i| i.wrapping_mul(37).wrapping_add(seed.wrapping_mul(101)) ^ 0x5a)
                .collect();
            scalars.push(Scalar::from_bytes_mod_order_wide(&wide.try_into().unwrap()));
        }
        for a in &scalars {
            for b in scalars.iter().rev().take(6) {
                let expected = EdwardsPoint::vartime_double_scalar_mul_basepoint(a, &a_point, b);
                let got = double_fixed_base(a, &table_a, b, base_table());
                assert_eq!(got.compress(), expected.compress());
            }
        }
    }

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

//! base64url as JWS uses it: no padding, no whitespace, no non-alphabet bytes, and canonical (the unused low
//! bits of the last character must be zero), so one token has exactly one spelling.

use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use sha2::{Digest, Sha256};

const STRICT: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

/// Decodes strict base64url; `None` for anything non-canonical.
pub fn decode_b64url(text: &str) -> Option<Vec<u8>> {
    STRICT.decode(text).ok()
}

/// Encodes base64url without padding.
pub fn encode_b64url(bytes: &[u8]) -> String {
    STRICT.encode(bytes)
}

/// Appends `n` in decimal, as `Display` writes it (without the formatting machinery: this runs for every
/// rate-limited decision, and `format!` cost more in Wasm than the rest of the key).
pub fn push_decimal(out: &mut String, n: u64) {
    let mut buffer = [0u8; 20];
    for &d in decimal_digits(n, &mut buffer) {
        out.push(char::from(d));
    }
}

/// `n`'s decimal digits, written at the end of `buffer` (20 bytes hold every `u64`).
pub(crate) fn decimal_digits(n: u64, buffer: &mut [u8; 20]) -> &[u8] {
    let mut at = buffer.len();
    let mut rest = n;
    loop {
        at -= 1;
        if let Some(d) = buffer.get_mut(at) {
            *d = b'0' + (rest % 10) as u8;
        }
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    buffer.get(at..).unwrap_or_default()
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex_lower(&Sha256::digest(bytes))
}

/// Raw SHA-256.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    // A table lookup, not `write!("{b:02x}")`: this runs for every decision (token and arguments hashes)
    // and the formatting machinery cost more than the SHA-256 it renders.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    let digit = |nibble: u8| {
        DIGITS
            .get(usize::from(nibble))
            .map_or('0', |d| char::from(*d))
    };
    for b in bytes {
        out.push(digit(b >> 4));
        out.push(digit(b & 0x0f));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn push_decimal_is_display() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            4_294_967_295,
            1_000_000_000_000,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = String::from("x");
            super::push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}"));
        }
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refuses_padding_whitespace_and_standard_alphabet() {
        assert_eq!(decode_b64url("YQ").unwrap(), b"a");
        assert!(decode_b64url("YQ==").is_none());
        assert!(decode_b64url("Y Q").is_none());
        assert!(decode_b64url("+/8").is_none());
        assert!(decode_b64url("-_8").is_some());
    }

    #[test]
    fn refuses_non_canonical_trailing_bits() {
        // "YQ" is canonical for "a"; "YR" decodes to the same byte with a non-zero unused bit.
        assert!(decode_b64url("YR").is_none());
    }

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    proptest! {
        #[test]
        fn round_trips(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
            prop_assert_eq!(decode_b64url(&encode_b64url(&bytes)).unwrap(), bytes);
        }

        #[test]
        fn decoding_is_canonical(text in "[A-Za-z0-9_=+/ -]{0,16}") {
            if let Some(bytes) = decode_b64url(&text) {
                prop_assert_eq!(encode_b64url(&bytes), text);
            }
        }
    }
}

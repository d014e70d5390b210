//! Verification keys: JWK parsing with every weak-key check done at load, key sets selected by `kid`, and the
//! key ring that holds one set per issuer and tracks when a host should fetch again. The token never brings
//! or picks a key type: each key carries the one algorithm it may verify.

mod compile;
#[cfg(feature = "rust-verify")]
mod ed25519;
pub mod refresh;
mod ring;
mod spec;

pub use compile::{parse_jwk, KeyError, KeySet, SkippedKey};
pub use ring::{IssuerKeys, KeyLookup, KeyRing, KeyRole};
pub use spec::{
    same_media_type, Algorithm, KeySource, RemoteSpec, Strictness, DEFAULT_MAX_STALE_SECONDS,
    DEFAULT_MIN_REFETCH_SECONDS, DEFAULT_REFRESH_SECONDS, TXN_TOKEN_TYP, WIT_TYP,
};

use core::fmt;

#[cfg(feature = "rsa")]
use jwt_compact::alg::{Rsa, RsaSignature, StrongAlg, StrongKey};
#[cfg(feature = "rsa")]
use jwt_compact::{Algorithm as _, AlgorithmSignature as _};
use serde_json::Value;

/// The parsed key. Ed25519 and P-256 keys are decoded (and so checked for being on their curve, and for small
/// order) in every build; RSA keys are checked on their bytes, and only the `rust-verify` build also builds an
/// RSA key object, since only that build can verify with it. P-384 points are checked on the curve only by the
/// `rust-verify` build (`p384`); elsewhere the coordinates' lengths are checked and the host's WebCrypto import
/// checks the point.
#[derive(Clone)]
#[cfg_attr(not(feature = "rust-verify"), allow(dead_code))]
enum Material {
    /// Checked at load by ed25519-compact (on the curve, not of small order), verified with `verify_strict`'s
    /// checks (canonical `S`, no small-order `R`) and a per-key table ([`ed25519`]).
    #[cfg(feature = "rust-verify")]
    Ed25519(ed25519::Key),
    #[cfg(not(feature = "rust-verify"))]
    Ed25519,
    /// The key's fixed-base table (see [`es256`]).
    #[cfg(feature = "rust-verify")]
    P256(es256::Table),
    /// A P-256 key (checked on the curve) in a build without the core's verifiers.
    #[cfg(not(feature = "rust-verify"))]
    P256,
    /// A P-384 key, checked on the curve at load (`p384`, the `es384` feature).
    #[cfg(feature = "es384")]
    P384(p384::ecdsa::VerifyingKey),
    /// A P-384 key in a build without the core's verifiers (the Worker): its coordinates have the right
    /// length; the point itself is checked by the host's WebCrypto import, and a key it refuses verifies
    /// nothing (fail closed). `p384` is not linked there, to keep the Worker small.
    #[cfg(not(feature = "rust-verify"))]
    P384,
    #[cfg(feature = "rsa")]
    Rsa(StrongKey<rsa::RsaPublicKey>),
    /// An RSA key in a build without the core's verifiers: the host verifies with its JWK.
    #[cfg(not(feature = "rust-verify"))]
    Rsa,
}

/// One validated public key, bound to exactly one algorithm.
#[derive(Clone)]
pub struct PublicKey {
    kid: Option<String>,
    alg: Algorithm,
    // Read only by the core's own verifiers; kept in every build so that loading checks the same things.
    #[cfg_attr(not(feature = "rust-verify"), allow(dead_code))]
    material: Material,
    jwk: Value,
    fingerprint: String,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl PublicKey {
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The public JWK (public members only), e.g. for WebCrypto `importKey("jwk", ...)`.
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// SHA-256 of the canonical public JWK: a stable handle for caching imported host keys.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Verifies a JWS signature over `signing_input` with jwt-compact's implementation of this key's one
    /// algorithm. Malformed signatures (wrong length, r or s out of range) are simply invalid.
    #[cfg(feature = "rust-verify")]
    pub fn verify(&self, signing_input: &[u8], signature: &[u8]) -> bool {
        // jwt-compact's fixed-size signature constructors copy without checking the length (a panic on a
        // short signature), so the length is checked here first.
        if self
            .alg
            .signature_len()
            .is_some_and(|len| signature.len() != len)
        {
            return false;
        }
        match (&self.material, self.alg) {
            // `EdDSA` and `Ed25519` are two names of one signature scheme (RFC 9864).
            (Material::Ed25519(key), Algorithm::EdDSA | Algorithm::Ed25519) => {
                key.verify(signing_input, signature)
            }
            (Material::P256(table), Algorithm::ES256) => {
                es256::verify(table, signing_input, signature)
            }
            // ECDSA verification (SHA-384 digest, `r` and `s` in [1, n-1]); a high `s` is valid ECDSA.
            #[cfg(feature = "es384")]
            (Material::P384(key), Algorithm::ES384) => {
                use p384::ecdsa::signature::Verifier as _;
                match p384::ecdsa::Signature::from_slice(signature) {
                    Ok(sig) => key.verify(signing_input, &sig).is_ok(),
                    Err(_) => false,
                }
            }
            #[cfg(feature = "rsa")]
            (Material::Rsa(key), Algorithm::RS256 | Algorithm::PS256) => {
                let expected_len = rsa::traits::PublicKeyParts::size(key.as_ref());
                if signature.len() != expected_len {
                    return false;
                }
                let Ok(sig) = RsaSignature::try_from_slice(signature) else {
                    return false;
                };
                let alg = if self.alg == Algorithm::RS256 {
                    Rsa::rs256()
                } else {
                    Rsa::ps256()
                };
                StrongAlg(alg).verify_signature(&sig, key, signing_input)
            }
            _ => false,
        }
    }

    /// A build without the `rust-verify` feature (the Worker: it verifies with WebCrypto) links no signature
    /// code, so it cannot vouch for any signature: every signature is invalid here (fail closed) and only the
    /// host, answering `Step::VerifySignature`, can accept one.
    #[cfg(not(feature = "rust-verify"))]
    pub fn verify(&self, _signing_input: &[u8], _signature: &[u8]) -> bool {
        false
    }

    /// Whether this build can verify signatures itself (`rust-verify` feature); hosts that always verify with
    /// their own crypto turn it off.
    pub const fn verifies_natively() -> bool {
        cfg!(feature = "rust-verify")
    }
}

/// ES256 verification with per-key precomputation. Keys are long-lived and P-256 is slow in Wasm (no 64×64→128
/// multiply), so each configured key gets a fixed-base table at load (and the generator one, shared, at first
/// use): `u1·G + u2·Q` then costs at most 128 additions and no doublings, against about 256 doublings and
/// 128 additions for the generic double-and-add. Everything here works on public data, so variable time is fine.
/// The signature rules are those of ECDSA verification (SEC 1 §4.1.4): `r` and `s` in `[1, n-1]`, the SHA-256
/// digest reduced mod `n`, the result not the identity and its `x` reduced mod `n` equal to `r`.
#[cfg(feature = "rust-verify")]
mod es256 {
    use std::sync::{Arc, OnceLock};

    use p256::elliptic_curve::group::Group as _;
    use p256::elliptic_curve::ops::{Invert as _, Reduce};
    use p256::elliptic_curve::point::AffineCoordinates as _;
    use p256::elliptic_curve::{Field as _, PrimeField as _};
    use p256::{AffinePoint, FieldBytes, ProjectivePoint, Scalar, U256};
    use sha2::{Digest as _, Sha256};

    /// 4-bit windows: 64 windows of 15 points (`j·16^i·P`, `j` in 1..=15): 960 points, 92 KB per key. They stay
    /// projective: normalising them would cost an inversion each (the curve crate exposes no batch inversion
    /// for P-256) and the complete addition formulas are barely cheaper with an affine operand.
    const WINDOWS: usize = 64;
    const PER_WINDOW: usize = 15;

    /// A key's table, built at its first use: a policy may list keys it never sees a token for, and loading
    /// stays cheap. Clones (the key ring copies keys) share it.
    #[derive(Clone)]
    pub struct Table {
        point: ProjectivePoint,
        points: Arc<OnceLock<Vec<ProjectivePoint>>>,
    }

    /// `j·16^i·P` at index `i·15 + (j-1)`.
    fn build(point: ProjectivePoint) -> Vec<ProjectivePoint> {
        let mut points = Vec::with_capacity(WINDOWS * PER_WINDOW);
        let mut base = point;
        for _ in 0..WINDOWS {
            let mut multiple = base;
            for _ in 0..PER_WINDOW {
                points.push(multiple);
                multiple += base;
            }
            // `multiple` is now 16·base: the next window's base.
            base = multiple;
        }
        points
    }

    /// `k·P` added to `acc`, with `table` = `build(P)`.
    fn mul(table: &[ProjectivePoint], scalar: &Scalar, acc: &mut ProjectivePoint) {
        let bytes = scalar.to_repr();
        // The last byte holds windows 0 (low nibble) and 1.
        for (byte_index, byte) in bytes.iter().rev().enumerate() {
            for (half, nibble) in [(0, byte & 0x0f), (1, byte >> 4)] {
                if nibble == 0 {
                    continue;
                }
                let index = (byte_index * 2 + half) * PER_WINDOW + usize::from(nibble) - 1;
                if let Some(point) = table.get(index) {
                    *acc += point;
                }
            }
        }
    }

    impl Table {
        pub fn new(point: &AffinePoint) -> Self {
            Self {
                point: ProjectivePoint::from(*point),
                points: Arc::new(OnceLock::new()),
            }
        }

        fn points(&self) -> &[ProjectivePoint] {
            self.points.get_or_init(|| build(self.point))
        }
    }

    fn generator() -> &'static [ProjectivePoint] {
        static GENERATOR: OnceLock<Vec<ProjectivePoint>> = OnceLock::new();
        GENERATOR.get_or_init(|| build(ProjectivePoint::GENERATOR))
    }

    fn scalar(bytes: &[u8]) -> Option<Scalar> {
        let bytes: [u8; 32] = bytes.try_into().ok()?;
        let value: Option<Scalar> = Scalar::from_repr(FieldBytes::from(bytes)).into();
        value.filter(|v| !bool::from(v.is_zero()))
    }

    /// Verifies a JWS ES256 signature (`r ‖ s`, 32 bytes each) over `message` with the key's table.
    pub fn verify(key: &Table, message: &[u8], signature: &[u8]) -> bool {
        let (Some(r), Some(s)) = (
            signature.get(..32).and_then(scalar),
            signature.get(32..64).and_then(scalar),
        ) else {
            return false;
        };
        if signature.len() != 64 {
            return false;
        }
        let Some(s_inv) = Option::<Scalar>::from(s.invert_vartime()) else {
            return false;
        };
        let digest = Sha256::digest(message);
        let z = <Scalar as Reduce<U256>>::reduce_bytes(&digest);
        let mut sum = ProjectivePoint::IDENTITY;
        mul(generator(), &(z * s_inv), &mut sum);
        mul(key.points(), &(r * s_inv), &mut sum);
        if bool::from(sum.is_identity()) {
            return false;
        }
        let x = sum.to_affine().x();
        <Scalar as Reduce<U256>>::reduce_bytes(&x) == r
    }
}

#[cfg(test)]
mod tests {
    use super::compile::big_endian_bits;
    use super::*;
    use serde_json::json;

    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    /// A filter built without the ES384 or RSA verifier (`--no-default-features`) refuses those keys when it
    /// loads them, naming the feature, after the checks every build makes (so a weak RSA key is still weak).
    #[cfg(all(feature = "rust-verify", not(feature = "es384"), not(feature = "rsa")))]
    #[test]
    fn keys_of_algorithms_left_out_of_the_build_are_refused_at_load() {
        let b64 = crate::encoding::encode_b64url;
        let p384 = json!({"kty":"EC","crv":"P-384","x":b64(&[1u8; 48]),"y":b64(&[2u8; 48])});
        let err = parse_jwk(3, &p384, &Algorithm::ALL).unwrap_err();
        assert_eq!(
            err,
            KeyError::NotBuiltIn {
                index: 3,
                alg: Algorithm::ES384,
                feature: "es384"
            }
        );
        assert!(err.to_string().contains("no ES384 verifier"), "{err}");
        let n2048 = b64(&[0xffu8; 256]);
        let err = rsa_error(&n2048, "AQAB", Some("PS256"));
        assert_eq!(
            err,
            KeyError::NotBuiltIn {
                index: 0,
                alg: Algorithm::PS256,
                feature: "rsa"
            }
        );
        let n1024 = b64(&[0xffu8; 128]);
        assert!(matches!(
            rsa_error(&n1024, "AQAB", Some("RS256")),
            KeyError::WeakRsa { .. }
        ));
        // EdDSA and ES256 keys load as in every build.
        let ed = json!({"kty":"OKP","crv":"Ed25519","x":ED_X,"kid":"ed"});
        assert!(parse_jwk(0, &ed, &Algorithm::ALL).is_ok());
        // A fetched set (an issuer's JWKS) keeps the keys this build can use and says which it skipped; an
        // inline set is refused as a whole.
        let mut p384 = p384;
        p384["kid"] = "ec".into();
        let doc = json!({"keys": [p384, ed]});
        let (set, skipped) =
            KeySet::from_value(&doc, &Algorithm::ALL, Strictness::Fetched).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!((skipped.len(), skipped[0].index), (1, 0));
        assert!(
            skipped[0].reason.contains("no ES384 verifier"),
            "{}",
            skipped[0].reason
        );
        assert!(matches!(
            KeySet::from_value(&doc, &Algorithm::ALL, Strictness::Inline),
            Err(KeyError::NotBuiltIn { index: 0, .. })
        ));
    }

    #[test]
    fn ed25519_key_loads_with_its_one_algorithm() {
        let key = parse_jwk(
            0,
            &json!({"kty":"OKP","crv":"Ed25519","x":ED_X,"kid":"a"}),
            &Algorithm::ALL,
        )
        .unwrap();
        assert_eq!(key.algorithm(), Algorithm::EdDSA);
        assert_eq!(key.kid(), Some("a"));
        assert_eq!(key.jwk()["alg"], "EdDSA");
    }

    /// An Ed25519 key is bound to one of its two names (RFC 9864): its `alg` when given, else `EdDSA` when
    /// allowed, else `Ed25519`.
    #[test]
    fn ed25519_key_names() {
        let jwk = |alg: Option<&str>| {
            let mut v = json!({"kty":"OKP","crv":"Ed25519","x":ED_X});
            if let Some(alg) = alg {
                v["alg"] = alg.into();
            }
            v
        };
        let bound = |alg: Option<&str>, allowed: &[Algorithm]| {
            parse_jwk(0, &jwk(alg), allowed).map(|k| k.algorithm())
        };
        assert_eq!(bound(None, &Algorithm::ALL), Ok(Algorithm::EdDSA));
        assert_eq!(bound(None, &[Algorithm::Ed25519]), Ok(Algorithm::Ed25519));
        assert_eq!(
            bound(Some("Ed25519"), &Algorithm::ALL),
            Ok(Algorithm::Ed25519)
        );
        assert_eq!(bound(Some("EdDSA"), &Algorithm::ALL), Ok(Algorithm::EdDSA));
        assert!(matches!(
            bound(Some("Ed25519"), &[Algorithm::EdDSA]),
            Err(KeyError::AlgorithmNotAllowed { .. })
        ));
        assert!(matches!(
            bound(Some("EdDSA"), &[Algorithm::Ed25519]),
            Err(KeyError::AlgorithmNotAllowed { .. })
        ));
        assert!(matches!(
            bound(Some("Ed448"), &Algorithm::ALL),
            Err(KeyError::UnsupportedAlgorithm { .. })
        ));
        let key = parse_jwk(0, &jwk(Some("Ed25519")), &Algorithm::ALL).unwrap();
        assert_eq!(key.jwk()["alg"], "Ed25519");
    }

    /// ES384: P-384 points are checked at load (with `rust-verify`), signatures are 96 bytes `r ‖ s` over
    /// SHA-384, and the key verifies nothing else.
    #[cfg(feature = "es384")]
    #[test]
    fn es384_keys_and_signatures() {
        use p384::ecdsa::signature::Signer as _;
        let sk = p384::ecdsa::SigningKey::from_slice(&[7u8; 48]).unwrap();
        let point = sk.verifying_key().to_encoded_point(false);
        let b64 = crate::encoding::encode_b64url;
        let jwk = json!({"kty":"EC","crv":"P-384","x":b64(point.x().unwrap()),"y":b64(point.y().unwrap())});
        let key = parse_jwk(0, &jwk, &Algorithm::ALL).unwrap();
        assert_eq!(key.algorithm(), Algorithm::ES384);
        let sig: p384::ecdsa::Signature = sk.sign(b"a.b");
        let sig = sig.to_bytes();
        assert_eq!(sig.len(), 96);
        assert!(key.verify(b"a.b", &sig));
        assert!(!key.verify(b"a.c", &sig));
        assert!(!key.verify(b"a.b", &sig[..64]));
        assert!(!key.verify(b"a.b", &[0u8; 96]));
        let mut flipped = sig.to_vec();
        flipped[95] ^= 1;
        assert!(!key.verify(b"a.b", &flipped));
        // Off the curve, wrong lengths, a foreign alg.
        let mut off = jwk.clone();
        off["y"] = b64(&[1u8; 48]).into();
        assert_eq!(
            parse_jwk(0, &off, &Algorithm::ALL).unwrap_err(),
            KeyError::InvalidPoint { index: 0 }
        );
        let mut short = jwk.clone();
        short["x"] = b64(&[1u8; 32]).into();
        assert_eq!(
            parse_jwk(0, &short, &Algorithm::ALL).unwrap_err(),
            KeyError::InvalidPoint { index: 0 }
        );
        let mut es256 = jwk.clone();
        es256["alg"] = "ES256".into();
        assert!(matches!(
            parse_jwk(0, &es256, &Algorithm::ALL),
            Err(KeyError::AlgorithmNotAllowed { .. })
        ));
        assert!(matches!(
            parse_jwk(0, &jwk, &[Algorithm::ES256]),
            Err(KeyError::AlgorithmNotAllowed { .. })
        ));
    }

    #[test]
    fn small_order_ed25519_key_is_refused() {
        // The identity point (0, 1) encodes as 01 00..00.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let x = crate::encoding::encode_b64url(&identity);
        let err = parse_jwk(
            0,
            &json!({"kty":"OKP","crv":"Ed25519","x":x}),
            &Algorithm::ALL,
        )
        .unwrap_err();
        assert_eq!(err, KeyError::SmallOrder { index: 0 });
    }

    #[test]
    fn private_keys_are_refused() {
        let err = parse_jwk(
            0,
            &json!({"kty":"OKP","crv":"Ed25519","x":ED_X,"d":ED_X}),
            &Algorithm::ALL,
        )
        .unwrap_err();
        assert_eq!(
            err,
            KeyError::PrivateMaterial {
                index: 0,
                member: "d"
            }
        );
    }

    #[test]
    fn alg_must_fit_key_and_allow_list() {
        let jwk = json!({"kty":"OKP","crv":"Ed25519","x":ED_X,"alg":"ES256"});
        assert!(matches!(
            parse_jwk(0, &jwk, &Algorithm::ALL),
            Err(KeyError::AlgorithmNotAllowed { .. })
        ));
        let jwk = json!({"kty":"OKP","crv":"Ed25519","x":ED_X});
        assert!(matches!(
            parse_jwk(0, &jwk, &[Algorithm::ES256]),
            Err(KeyError::AlgorithmNotAllowed { .. })
        ));
        let jwk = json!({"kty":"OKP","crv":"Ed25519","x":ED_X,"alg":"HS256"});
        assert!(matches!(
            parse_jwk(0, &jwk, &Algorithm::ALL),
            Err(KeyError::UnsupportedAlgorithm { .. })
        ));
    }

    /// The error loading an RSA JWK (modulus and exponent in base64url, `alg` when given).
    fn rsa_error(n: &str, e: &str, alg: Option<&str>) -> KeyError {
        let mut jwk = json!({"kty":"RSA","n":n,"e":e});
        if let Some(alg) = alg {
            jwk["alg"] = alg.into();
        }
        parse_jwk(0, &jwk, &Algorithm::ALL).unwrap_err()
    }

    #[test]
    fn weak_rsa_and_bad_exponent_are_refused() {
        let n1024 = crate::encoding::encode_b64url(&[0xffu8; 128]);
        let err = rsa_error(&n1024, "AQAB", Some("RS256"));
        assert_eq!(
            err,
            KeyError::WeakRsa {
                index: 0,
                bits: 1024
            }
        );
        let n2048 = crate::encoding::encode_b64url(&[0xffu8; 256]);
        let err = rsa_error(&n2048, "AQ", Some("RS256"));
        assert_eq!(err, KeyError::BadRsaExponent { index: 0 });
        // (A build without RSA refuses the key as not built in before its algorithm is settled.)
        #[cfg(feature = "rsa")]
        assert_eq!(
            rsa_error(&n2048, "AQAB", None),
            KeyError::AmbiguousAlgorithm { index: 0 }
        );
    }

    #[test]
    fn rsa_exponent_bounds_are_checked_on_bytes() {
        let n2048 = crate::encoding::encode_b64url(&[0xffu8; 256]);
        // 2^33 + 1: odd but above the bound; nine bytes: too long even with a leading zero.
        for e in [&[0x02, 0, 0, 0, 0x01][..], &[0, 0, 0, 0, 0, 0, 0, 0, 0x03]] {
            let e = crate::encoding::encode_b64url(e);
            let err = rsa_error(&n2048, &e, Some("RS256"));
            assert_eq!(err, KeyError::BadRsaExponent { index: 0 });
        }
        // Leading zero bytes do not count towards the modulus size.
        let mut n = vec![0u8; 2];
        n.extend_from_slice(&[0xffu8; 255]);
        let n = crate::encoding::encode_b64url(&n);
        let err = rsa_error(&n, "AQAB", Some("RS256"));
        assert_eq!(
            err,
            KeyError::WeakRsa {
                index: 0,
                bits: 2040
            }
        );
        assert_eq!(big_endian_bits(&[]), 0);
        assert_eq!(big_endian_bits(&[0, 1]), 1);
        assert_eq!(big_endian_bits(&[0x80, 0]), 16);
    }

    /// Without the `rust-verify` feature (the Worker) the core accepts no signature, not even a valid one:
    /// only the host's own check can accept it. With it, the same valid signature verifies.
    #[test]
    fn the_core_verifies_only_with_rust_verify() {
        let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7u8; 32]));
        let x = crate::encoding::encode_b64url(kp.pk.as_ref());
        let key = parse_jwk(
            0,
            &json!({"kty":"OKP","crv":"Ed25519","x":x}),
            &Algorithm::ALL,
        )
        .unwrap();
        let sig = kp.sk.sign(b"a.b", None);
        let native = cfg!(feature = "rust-verify");
        assert_eq!(PublicKey::verifies_natively(), native);
        assert_eq!(key.verify(b"a.b", sig.as_ref()), native);
        assert!(!key.verify(b"a.c", sig.as_ref()));
    }

    #[test]
    fn off_curve_p256_point_is_refused() {
        let x = crate::encoding::encode_b64url(&[1u8; 32]);
        let err = parse_jwk(
            0,
            &json!({"kty":"EC","crv":"P-256","x":x,"y":x}),
            &Algorithm::ALL,
        )
        .unwrap_err();
        assert_eq!(err, KeyError::InvalidPoint { index: 0 });
    }

    #[test]
    fn key_sets_need_unique_kids() {
        let set = json!({"keys":[{"kty":"OKP","crv":"Ed25519","x":ED_X,"kid":"a"},{"kty":"OKP","crv":"Ed25519","x":ED_X,"kid":"a"}]});
        let err = KeySet::from_value(&set, &Algorithm::ALL, Strictness::Inline).unwrap_err();
        assert_eq!(err, KeyError::DuplicateKid { kid: "a".into() });
        let set = json!({"keys":[{"kty":"OKP","crv":"Ed25519","x":ED_X,"kid":"a"},{"kty":"OKP","crv":"Ed25519","x":ED_X}]});
        assert!(matches!(
            KeySet::from_value(&set, &Algorithm::ALL, Strictness::Inline),
            Err(KeyError::MissingKid { .. })
        ));
    }

    #[test]
    fn fetched_sets_skip_foreign_algorithms_but_not_weak_keys() {
        let set = json!({"keys":[{"kty":"OKP","crv":"Ed25519","x":ED_X,"kid":"a"},{"kty":"EC","crv":"P-521","x":"AA","y":"AA","kid":"b"}]});
        let (keys, skipped) =
            KeySet::from_value(&set, &[Algorithm::EdDSA], Strictness::Fetched).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(skipped.len(), 1);
        assert!(KeySet::from_value(&set, &[Algorithm::EdDSA], Strictness::Inline).is_err());
    }

    #[test]
    fn ring_tracks_staleness_and_debounces_refetch() {
        let mut ring = KeyRing::new();
        let source = KeySource::Remote {
            uri: "http://k".into(),
            cluster: None,
            refresh_ms: 1000,
            max_stale_ms: 5000,
            min_refetch_ms: 500,
        };
        ring.add_issuer("r".into(), None, vec![Algorithm::EdDSA], source, None);
        assert!(matches!(
            ring.lookup(Some("a"), 0),
            KeyLookup::Unavailable { issuer: 0 }
        ));
        assert_eq!(ring.refresh_due(0), vec![0]);
        let jwks =
            serde_json::to_vec(&json!({"keys":[{"kty":"OKP","crv":"Ed25519","x":ED_X,"kid":"a"}]}))
                .unwrap();
        ring.install(0, &jwks, 100).unwrap();
        assert!(matches!(
            ring.lookup(Some("a"), 200),
            KeyLookup::Found { issuer: 0, .. }
        ));
        assert!(matches!(
            ring.lookup(Some("zz"), 200),
            KeyLookup::UnknownKid { .. }
        ));
        assert!(ring.refresh_due(600).is_empty());
        assert_eq!(ring.refresh_due(1100), vec![0]);
        assert!(ring.claim_refetch(0, 1000));
        assert!(!ring.claim_refetch(0, 1400));
        assert!(ring.claim_refetch(0, 1500));
        // Past the staleness bound the last good set is no longer used: fail closed.
        assert!(matches!(
            ring.lookup(Some("a"), 5101),
            KeyLookup::Unavailable { .. }
        ));
        // A bad fetch keeps the old set.
        assert!(ring.install(0, b"{}", 200).is_err());
        assert!(matches!(
            ring.lookup(Some("a"), 300),
            KeyLookup::Found { .. }
        ));
    }
}

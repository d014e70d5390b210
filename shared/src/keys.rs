//! Verification keys: JWK parsing with every weak-key check done at load, key sets selected by `kid`, and the
//! key ring that holds one set per issuer and tracks when a host should fetch again. The token never brings
//! or picks a key type: each key carries the one algorithm it may verify.

use core::fmt;
use std::sync::Arc;

#[cfg(feature = "rust-verify")]
use jwt_compact::alg::{Rsa, RsaSignature, StrongAlg, StrongKey};
#[cfg(feature = "rust-verify")]
use jwt_compact::{Algorithm as _, AlgorithmSignature as _};
use serde_json::{Map, Value};

use crate::encoding::{decode_b64url, sha256_hex};
use crate::json::{parse_strict, JsonError};

/// The JWS algorithms txngate verifies. Anything else (none, HS*, ES512, Ed448, ...) is refused by name.
/// `EdDSA` and `Ed25519` (RFC 9864's fully specified name for the same Ed25519 signature) are two names, and
/// a key is bound to one of them: a token must name the one its key is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    EdDSA,
    /// RFC 9864: EdDSA over Ed25519, fully specified.
    Ed25519,
    ES256,
    /// ECDSA over P-384 with SHA-384 (RFC 7518 §3.4).
    ES384,
    RS256,
    PS256,
}

impl Algorithm {
    pub const ALL: [Self; 6] = [
        Self::EdDSA,
        Self::Ed25519,
        Self::ES256,
        Self::ES384,
        Self::RS256,
        Self::PS256,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::EdDSA => "EdDSA",
            Self::Ed25519 => "Ed25519",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::RS256 => "RS256",
            Self::PS256 => "PS256",
        }
    }

    /// The length of a well-formed JWS signature, where it is fixed by the algorithm (RFC 7518 §3.4: `r ‖ s`).
    pub fn signature_len(self) -> Option<usize> {
        match self {
            Self::EdDSA | Self::Ed25519 | Self::ES256 => Some(64),
            Self::ES384 => Some(96),
            Self::RS256 | Self::PS256 => None,
        }
    }

    /// Exact, case-sensitive match (RFC 7515: `alg` values are case-sensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a key or key set was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    Json(JsonError),
    /// The document is not `{"keys": [...]}`.
    NotAKeySet,
    /// Key `index` is not a JSON object.
    NotAnObject {
        index: usize,
    },
    MissingMember {
        index: usize,
        member: &'static str,
    },
    WrongType {
        index: usize,
        member: &'static str,
        expected: &'static str,
    },
    BadBase64 {
        index: usize,
        member: &'static str,
    },
    UnsupportedKeyType {
        index: usize,
        kty: String,
        crv: Option<String>,
    },
    UnsupportedAlgorithm {
        index: usize,
        alg: String,
    },
    /// The key's `alg` does not fit its type, or is not in the issuer's allow-list.
    AlgorithmNotAllowed {
        index: usize,
        alg: Algorithm,
        allowed: Vec<Algorithm>,
    },
    /// An RSA key without `alg` while both RS256 and PS256 are allowed: one algorithm per key.
    AmbiguousAlgorithm {
        index: usize,
    },
    /// `use` other than `sig`, or `key_ops` without `verify`.
    NotForSignatures {
        index: usize,
    },
    /// A private member (`d`, `p`, ...) in a verification key set.
    PrivateMaterial {
        index: usize,
        member: &'static str,
    },
    WeakRsa {
        index: usize,
        bits: usize,
    },
    RsaTooLarge {
        index: usize,
        bits: usize,
    },
    BadRsaExponent {
        index: usize,
    },
    /// Not a point on the curve, wrong length, or the identity.
    InvalidPoint {
        index: usize,
    },
    /// An Ed25519 key of small order: it would accept forged signatures.
    SmallOrder {
        index: usize,
    },
    DuplicateKid {
        kid: String,
    },
    /// Several keys and one without `kid`: it could never be selected unambiguously.
    MissingKid {
        index: usize,
    },
    EmptySet,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Json(e) => write!(f, "key set is not valid JSON: {e}"),
            Self::NotAKeySet => f.write_str("expected a JWK set: an object with a \"keys\" array"),
            Self::NotAnObject { index } => write!(f, "key {index}: expected a JWK object"),
            Self::MissingMember { index, member } => write!(f, "key {index}: missing member {member:?}"),
            Self::WrongType { index, member, expected } => {
                write!(f, "key {index}: member {member:?} must be {expected}")
            }
            Self::BadBase64 { index, member } => {
                write!(f, "key {index}: member {member:?} is not canonical unpadded base64url")
            }
            Self::UnsupportedKeyType { index, kty, crv } => match crv {
                Some(crv) => write!(f, "key {index}: unsupported key type {kty:?} with curve {crv:?} (supported: OKP/Ed25519, EC/P-256, EC/P-384, RSA)"),
                None => write!(f, "key {index}: unsupported key type {kty:?} (supported: OKP/Ed25519, EC/P-256, EC/P-384, RSA)"),
            },
            Self::UnsupportedAlgorithm { index, alg } => {
                write!(f, "key {index}: unsupported alg {alg:?} (supported: EdDSA, Ed25519, ES256, ES384, RS256, PS256)")
            }
            Self::AlgorithmNotAllowed { index, alg, allowed } => {
                let names: Vec<&str> = allowed.iter().map(|a| a.name()).collect();
                write!(f, "key {index}: algorithm {alg} does not fit this key or is not in the issuer's algorithms [{}]", names.join(", "))
            }
            Self::AmbiguousAlgorithm { index } => write!(
                f,
                "key {index}: RSA key without \"alg\" while both RS256 and PS256 are allowed; set \"alg\" (one algorithm per key)"
            ),
            Self::NotForSignatures { index } => {
                write!(f, "key {index}: not a signature-verification key (\"use\" must be \"sig\", \"key_ops\" must include \"verify\")")
            }
            Self::PrivateMaterial { index, member } => write!(
                f,
                "key {index}: contains private member {member:?}; publish only the public key"
            ),
            Self::WeakRsa { index, bits } => write!(f, "key {index}: RSA modulus is {bits} bits, at least 2048 required"),
            Self::RsaTooLarge { index, bits } => write!(f, "key {index}: RSA modulus is {bits} bits, at most 4096 supported"),
            Self::BadRsaExponent { index } => write!(f, "key {index}: RSA public exponent must be odd and at least 3"),
            Self::InvalidPoint { index } => write!(f, "key {index}: public key is not a valid point on its curve"),
            Self::SmallOrder { index } => write!(f, "key {index}: Ed25519 public key has small order (weak key)"),
            Self::DuplicateKid { kid } => write!(f, "two keys share kid {kid:?}"),
            Self::MissingKid { index } => {
                write!(f, "key {index}: a key set of more than one key needs a \"kid\" on every key")
            }
            Self::EmptySet => f.write_str("the key set has no usable key"),
        }
    }
}

impl std::error::Error for KeyError {}

/// The parsed key. Ed25519 and P-256 keys are decoded (and so checked for being on their curve, and for small
/// order) in every build; RSA keys are checked on their bytes, and only the `rust-verify` build also builds an
/// RSA key object, since only that build can verify with it. P-384 points are checked on the curve only by the
/// `rust-verify` build (`p384`); elsewhere the coordinates' lengths are checked and the host's WebCrypto import
/// checks the point.
#[derive(Clone)]
#[cfg_attr(not(feature = "rust-verify"), allow(dead_code))]
enum Material {
    /// Checked at load by ed25519-compact (on the curve, not of small order), verified by ed25519-dalek's
    /// `verify_strict` (canonical `S`, no small-order `R`).
    #[cfg(feature = "rust-verify")]
    Ed25519(ed25519_dalek::VerifyingKey),
    #[cfg(not(feature = "rust-verify"))]
    Ed25519,
    /// The key's fixed-base table (see [`es256`]).
    #[cfg(feature = "rust-verify")]
    P256(es256::Table),
    /// A P-256 key (checked on the curve) in a build without the core's verifiers.
    #[cfg(not(feature = "rust-verify"))]
    P256,
    /// A P-384 key, checked on the curve at load (`p384`).
    #[cfg(feature = "rust-verify")]
    P384(p384::ecdsa::VerifyingKey),
    /// A P-384 key in a build without the core's verifiers (the Worker): its coordinates have the right
    /// length; the point itself is checked by the host's WebCrypto import, and a key it refuses verifies
    /// nothing (fail closed). `p384` is not linked there, to keep the Worker small.
    #[cfg(not(feature = "rust-verify"))]
    P384,
    #[cfg(feature = "rust-verify")]
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
                match ed25519_dalek::Signature::from_slice(signature) {
                    Ok(sig) => key.verify_strict(signing_input, &sig).is_ok(),
                    Err(_) => false,
                }
            }
            (Material::P256(table), Algorithm::ES256) => {
                es256::verify(table, signing_input, signature)
            }
            // ECDSA verification (SHA-384 digest, `r` and `s` in [1, n-1]); a high `s` is valid ECDSA.
            (Material::P384(key), Algorithm::ES384) => {
                use p384::ecdsa::signature::Verifier as _;
                match p384::ecdsa::Signature::from_slice(signature) {
                    Ok(sig) => key.verify(signing_input, &sig).is_ok(),
                    Err(_) => false,
                }
            }
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

const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "oth"];

/// Parses and validates one public JWK. `allowed` is the issuer's algorithm allow-list.
pub fn parse_jwk(index: usize, jwk: &Value, allowed: &[Algorithm]) -> Result<PublicKey, KeyError> {
    let obj = jwk.as_object().ok_or(KeyError::NotAnObject { index })?;
    if let Some(member) = PRIVATE_MEMBERS.into_iter().find(|m| obj.contains_key(*m)) {
        return Err(KeyError::PrivateMaterial { index, member });
    }
    let kty = string_member(obj, index, "kty")?.ok_or(KeyError::MissingMember {
        index,
        member: "kty",
    })?;
    let crv = string_member(obj, index, "crv")?;
    if let Some(usage) = string_member(obj, index, "use")? {
        if usage != "sig" {
            return Err(KeyError::NotForSignatures { index });
        }
    }
    if let Some(ops) = obj.get("key_ops") {
        let ops = ops.as_array().ok_or(KeyError::WrongType {
            index,
            member: "key_ops",
            expected: "an array",
        })?;
        if !ops.iter().any(|op| op.as_str() == Some("verify")) {
            return Err(KeyError::NotForSignatures { index });
        }
    }
    let kid = string_member(obj, index, "kid")?.map(str::to_string);
    let declared = match string_member(obj, index, "alg")? {
        Some(name) => {
            Some(
                Algorithm::from_name(name).ok_or_else(|| KeyError::UnsupportedAlgorithm {
                    index,
                    alg: name.to_string(),
                })?,
            )
        }
        None => None,
    };

    let (material, fits, mut public): (Material, Vec<Algorithm>, Map<String, Value>) =
        match (kty, crv) {
            ("OKP", Some("Ed25519")) => {
                let x = bytes_member(obj, index, "x")?;
                let key = ed25519_compact::PublicKey::from_slice(&x)
                    .map_err(|_| KeyError::InvalidPoint { index })?;
                match key.validate() {
                    Ok(()) => {}
                    Err(ed25519_compact::Error::WeakPublicKey) => {
                        return Err(KeyError::SmallOrder { index })
                    }
                    Err(_) => return Err(KeyError::InvalidPoint { index }),
                }
                #[cfg(feature = "rust-verify")]
                let material = Material::Ed25519(
                    ed25519_dalek::VerifyingKey::from_bytes(&key)
                        .map_err(|_| KeyError::InvalidPoint { index })?,
                );
                #[cfg(not(feature = "rust-verify"))]
                let material = Material::Ed25519;
                // Preference order for a key without `alg`: EdDSA (the name such keys always had) first.
                (
                    material,
                    vec![Algorithm::EdDSA, Algorithm::Ed25519],
                    public_members(obj, &["kty", "crv", "x"]),
                )
            }
            ("EC", Some("P-256")) => {
                let x = bytes_member(obj, index, "x")?;
                let y = bytes_member(obj, index, "y")?;
                if x.len() != 32 || y.len() != 32 {
                    return Err(KeyError::InvalidPoint { index });
                }
                let mut sec1 = Vec::with_capacity(65);
                sec1.push(0x04);
                sec1.extend_from_slice(&x);
                sec1.extend_from_slice(&y);
                let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                    .map_err(|_| KeyError::InvalidPoint { index })?;
                #[cfg(feature = "rust-verify")]
                let material = Material::P256(es256::Table::new(key.as_affine()));
                #[cfg(not(feature = "rust-verify"))]
                let material = {
                    let _ = key;
                    Material::P256
                };
                (
                    material,
                    vec![Algorithm::ES256],
                    public_members(obj, &["kty", "crv", "x", "y"]),
                )
            }
            ("EC", Some("P-384")) => {
                let x = bytes_member(obj, index, "x")?;
                let y = bytes_member(obj, index, "y")?;
                if x.len() != 48 || y.len() != 48 {
                    return Err(KeyError::InvalidPoint { index });
                }
                #[cfg(feature = "rust-verify")]
                let material = {
                    let mut sec1 = Vec::with_capacity(97);
                    sec1.push(0x04);
                    sec1.extend_from_slice(&x);
                    sec1.extend_from_slice(&y);
                    Material::P384(
                        p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                            .map_err(|_| KeyError::InvalidPoint { index })?,
                    )
                };
                #[cfg(not(feature = "rust-verify"))]
                let material = Material::P384;
                (
                    material,
                    vec![Algorithm::ES384],
                    public_members(obj, &["kty", "crv", "x", "y"]),
                )
            }
            ("RSA", _) => {
                let n = bytes_member(obj, index, "n")?;
                let e = bytes_member(obj, index, "e")?;
                // Checked on the big-endian bytes, the same in every build (with or without `rsa`).
                let bits = big_endian_bits(&n);
                if bits < 2048 {
                    return Err(KeyError::WeakRsa { index, bits });
                }
                if bits > 4096 {
                    return Err(KeyError::RsaTooLarge { index, bits });
                }
                // At most 8 bytes, odd, and within [3, 2^33 - 1] (the `rsa` crate's own bounds).
                let exponent = (e.len() <= 8)
                    .then(|| e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)));
                if !exponent.is_some_and(|v| (3..=RSA_MAX_EXPONENT).contains(&v) && v & 1 == 1) {
                    return Err(KeyError::BadRsaExponent { index });
                }
                if n.last().is_none_or(|b| b & 1 == 0) {
                    return Err(KeyError::InvalidPoint { index });
                }
                #[cfg(feature = "rust-verify")]
                let material = {
                    let n_big = rsa::BigUint::from_bytes_be(&n);
                    let e_big = rsa::BigUint::from_bytes_be(&e);
                    let key = rsa::RsaPublicKey::new_with_max_size(n_big, e_big, 4096)
                        .map_err(|_| KeyError::BadRsaExponent { index })?;
                    let key =
                        StrongKey::try_from(key).map_err(|_| KeyError::WeakRsa { index, bits })?;
                    Material::Rsa(key)
                };
                #[cfg(not(feature = "rust-verify"))]
                let material = Material::Rsa;
                (
                    material,
                    vec![Algorithm::RS256, Algorithm::PS256],
                    public_members(obj, &["kty", "n", "e"]),
                )
            }
            (kty, crv) => {
                return Err(KeyError::UnsupportedKeyType {
                    index,
                    kty: kty.to_string(),
                    crv: crv.map(str::to_string),
                })
            }
        };

    let alg = match declared {
        Some(alg) if fits.contains(&alg) && allowed.contains(&alg) => alg,
        Some(alg) => {
            return Err(KeyError::AlgorithmNotAllowed {
                index,
                alg,
                allowed: allowed.to_vec(),
            })
        }
        None => {
            let candidates: Vec<Algorithm> = fits
                .iter()
                .copied()
                .filter(|a| allowed.contains(a))
                .collect();
            match candidates.as_slice() {
                [one] => *one,
                // An Ed25519 key fits two names of one scheme: the first allowed (EdDSA, then Ed25519).
                [first, ..] if fits.contains(&Algorithm::EdDSA) => *first,
                [] => {
                    let first = fits.first().copied().unwrap_or(Algorithm::RS256);
                    return Err(KeyError::AlgorithmNotAllowed {
                        index,
                        alg: first,
                        allowed: allowed.to_vec(),
                    });
                }
                _ => return Err(KeyError::AmbiguousAlgorithm { index }),
            }
        }
    };

    public.insert("alg".into(), Value::String(alg.name().into()));
    if let Some(kid) = &kid {
        public.insert("kid".into(), Value::String(kid.clone()));
    }
    let jwk = Value::Object(public);
    let fingerprint = sha256_hex(&crate::json::canonical(&jwk));
    Ok(PublicKey {
        kid,
        alg,
        material,
        jwk,
        fingerprint,
    })
}

/// The largest RSA public exponent accepted (2^33 - 1, as the `rsa` crate bounds it).
const RSA_MAX_EXPONENT: u64 = (1 << 33) - 1;

/// The bit length of a big-endian unsigned integer (leading zero bytes ignored).
fn big_endian_bits(bytes: &[u8]) -> usize {
    let mut rest = bytes.iter().skip_while(|b| **b == 0);
    match rest.next() {
        Some(first) => {
            let tail = rest.count();
            tail * 8 + (8 - first.leading_zeros() as usize)
        }
        None => 0,
    }
}

fn public_members(obj: &Map<String, Value>, names: &[&str]) -> Map<String, Value> {
    names
        .iter()
        .filter_map(|n| obj.get(*n).map(|v| ((*n).to_string(), v.clone())))
        .collect()
}

fn string_member<'a>(
    obj: &'a Map<String, Value>,
    index: usize,
    member: &'static str,
) -> Result<Option<&'a str>, KeyError> {
    match obj.get(member) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(KeyError::WrongType {
            index,
            member,
            expected: "a string",
        }),
    }
}

fn bytes_member(
    obj: &Map<String, Value>,
    index: usize,
    member: &'static str,
) -> Result<Vec<u8>, KeyError> {
    let text =
        string_member(obj, index, member)?.ok_or(KeyError::MissingMember { index, member })?;
    decode_b64url(text).ok_or(KeyError::BadBase64 { index, member })
}

/// What a lenient (fetched) key set load left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    pub index: usize,
    pub kid: Option<String>,
    pub reason: String,
}

/// A validated set of verification keys.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<PublicKey>,
}

/// How strictly a set is read: keys written into the policy must all be usable; a fetched JWKS may also
/// publish keys for algorithms this issuer does not allow, which are skipped (never weak or invalid ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    Inline,
    Fetched,
}

impl KeySet {
    pub fn parse(
        bytes: &[u8],
        allowed: &[Algorithm],
        strictness: Strictness,
    ) -> Result<(Self, Vec<SkippedKey>), KeyError> {
        let doc = parse_strict(bytes, 16).map_err(KeyError::Json)?;
        Self::from_value(&doc, allowed, strictness)
    }

    pub fn from_value(
        doc: &Value,
        allowed: &[Algorithm],
        strictness: Strictness,
    ) -> Result<(Self, Vec<SkippedKey>), KeyError> {
        let list = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(KeyError::NotAKeySet)?;
        let mut keys: Vec<PublicKey> = Vec::with_capacity(list.len());
        let mut skipped = Vec::new();
        for (index, jwk) in list.iter().enumerate() {
            match parse_jwk(index, jwk, allowed) {
                Ok(key) => keys.push(key),
                Err(
                    err @ (KeyError::UnsupportedKeyType { .. }
                    | KeyError::UnsupportedAlgorithm { .. }
                    | KeyError::AlgorithmNotAllowed { .. }
                    | KeyError::NotForSignatures { .. }),
                ) if strictness == Strictness::Fetched => {
                    let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_string);
                    skipped.push(SkippedKey {
                        index,
                        kid,
                        reason: err.to_string(),
                    });
                }
                Err(err) => return Err(err),
            }
        }
        let set = Self { keys };
        set.check_kids(list)?;
        if set.keys.is_empty() && strictness == Strictness::Fetched {
            return Err(KeyError::EmptySet);
        }
        Ok((set, skipped))
    }

    fn check_kids(&self, list: &[Value]) -> Result<(), KeyError> {
        for (i, key) in self.keys.iter().enumerate() {
            match &key.kid {
                Some(kid)
                    if self
                        .keys
                        .iter()
                        .skip(i + 1)
                        .any(|k| k.kid.as_deref() == Some(kid)) =>
                {
                    return Err(KeyError::DuplicateKid { kid: kid.clone() });
                }
                Some(_) => {}
                None if self.keys.len() > 1 => {
                    let index = list
                        .iter()
                        .position(|v| v.get("kid").is_none())
                        .unwrap_or(i);
                    return Err(KeyError::MissingKid { index });
                }
                None => {}
            }
        }
        Ok(())
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    pub fn by_kid(&self, kid: &str) -> Option<&PublicKey> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Inline,
    /// Fetched by the host from `uri` (through Envoy `cluster` where set).
    Remote {
        uri: String,
        cluster: Option<String>,
        refresh_ms: u64,
        max_stale_ms: u64,
        min_refetch_ms: u64,
    },
}

/// One issuer's current keys and fetch bookkeeping. Replaced atomically: a request sees the old set or the
/// new one, never a mix.
#[derive(Debug, Clone)]
pub struct IssuerKeys {
    pub name: String,
    /// The `iss` this issuer's tokens carry. RFC 8725 §3.8: a token with an `iss` is accepted only from a key
    /// of an issuer that declares that very `iss`; an issuer without one verifies only tokens without `iss`.
    pub iss: Option<String>,
    pub algorithms: Vec<Algorithm>,
    /// JOSE `typ` values accepted from this issuer (media types: compared case-insensitively, with or
    /// without the `application/` prefix, RFC 7515 §4.1.9).
    pub typ: Vec<String>,
    pub source: KeySource,
    keys: Option<Arc<KeySet>>,
    fetched_at_ms: Option<u64>,
    last_refetch_ms: Option<u64>,
    generation: u64,
}

impl IssuerKeys {
    /// Whether a token header's `typ` is one this issuer may use.
    pub fn accepts_typ(&self, typ: &str) -> bool {
        self.typ.iter().any(|allowed| same_media_type(allowed, typ))
    }

    /// The current set, fresh or stale (None until a remote set is first fetched).
    pub fn key_set(&self) -> Option<&KeySet> {
        self.keys.as_deref()
    }

    pub fn fetched_at_ms(&self) -> Option<u64> {
        self.fetched_at_ms
    }
}

/// Media type names compare case-insensitively, and a JOSE `typ` may omit the `application/` prefix (RFC 7515
/// §4.1.9): `application/TxnToken+JWT` is `txntoken+jwt`. Nothing else is folded (no parameters, no spaces).
pub fn same_media_type(a: &str, b: &str) -> bool {
    fn bare(t: &str) -> &str {
        t.get(..12)
            .filter(|p| p.eq_ignore_ascii_case("application/"))
            .map_or(t, |_| t.get(12..).unwrap_or(""))
    }
    let (a, b) = (bare(a), bare(b));
    !a.is_empty() && a.eq_ignore_ascii_case(b)
}

/// The `typ` every issuer accepts unless its policy entry says otherwise (the Transaction Tokens draft).
pub const TXN_TOKEN_TYP: &str = "txntoken+jwt";

/// What the key ring says about a key lookup.
#[derive(Debug)]
pub enum KeyLookup<'a> {
    Found {
        issuer: usize,
        key: &'a PublicKey,
    },
    /// No configured key has this `kid`; `refetch` lists remote issuers a host could refetch.
    UnknownKid {
        refetch: Vec<usize>,
    },
    /// No `kid` and more than one candidate key.
    KidRequired,
    /// The same `kid` in two issuers' sets.
    AmbiguousKid,
    /// Remote keys never fetched, or older than their staleness bound.
    Unavailable {
        issuer: usize,
    },
}

/// All issuers' keys.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    issuers: Vec<IssuerKeys>,
}

impl KeyRing {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_issuer(
        &mut self,
        name: String,
        iss: Option<String>,
        algorithms: Vec<Algorithm>,
        source: KeySource,
        inline: Option<KeySet>,
    ) {
        self.add_issuer_with_types(
            name,
            iss,
            algorithms,
            vec![TXN_TOKEN_TYP.to_string()],
            source,
            inline,
        );
    }

    /// [`KeyRing::add_issuer`] with the issuer's accepted `typ` values.
    pub fn add_issuer_with_types(
        &mut self,
        name: String,
        iss: Option<String>,
        algorithms: Vec<Algorithm>,
        typ: Vec<String>,
        source: KeySource,
        inline: Option<KeySet>,
    ) {
        let keys = inline.map(Arc::new);
        self.issuers.push(IssuerKeys {
            name,
            iss,
            algorithms,
            typ,
            source,
            keys,
            fetched_at_ms: None,
            last_refetch_ms: None,
            generation: 0,
        });
    }

    pub fn issuers(&self) -> &[IssuerKeys] {
        &self.issuers
    }

    pub fn issuer(&self, index: usize) -> Option<&IssuerKeys> {
        self.issuers.get(index)
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.issuers.iter().position(|i| i.name == name)
    }

    /// A change counter per issuer; hosts and caches use it to notice a replaced set.
    pub fn generation(&self) -> u64 {
        self.issuers.iter().map(|i| i.generation).sum()
    }

    /// Installs a fetched JWKS for issuer `index`, replacing the old set whole. On error the old set stays.
    pub fn install(
        &mut self,
        index: usize,
        jwks: &[u8],
        now_ms: u64,
    ) -> Result<Vec<SkippedKey>, KeyError> {
        let Some(issuer) = self.issuers.get_mut(index) else {
            return Err(KeyError::NotAKeySet);
        };
        let (set, skipped) = KeySet::parse(jwks, &issuer.algorithms, Strictness::Fetched)?;
        issuer.keys = Some(Arc::new(set));
        issuer.fetched_at_ms = Some(now_ms);
        issuer.generation += 1;
        Ok(skipped)
    }

    /// Marks a successful fetch whose content did not change (e.g. 304), extending freshness.
    pub fn touch(&mut self, index: usize, now_ms: u64) {
        if let Some(issuer) = self.issuers.get_mut(index) {
            if issuer.keys.is_some() {
                issuer.fetched_at_ms = Some(now_ms);
            }
        }
    }

    /// Remote issuers whose periodic refresh is due (never fetched, or older than `refresh`).
    pub fn refresh_due(&self, now_ms: u64) -> Vec<usize> {
        self.issuers
            .iter()
            .enumerate()
            .filter(|(_, i)| match (&i.source, i.fetched_at_ms) {
                (KeySource::Remote { .. }, None) => true,
                (KeySource::Remote { refresh_ms, .. }, Some(at)) => {
                    now_ms.saturating_sub(at) >= *refresh_ms
                }
                (KeySource::Inline, _) => false,
            })
            .map(|(n, _)| n)
            .collect()
    }

    /// Debounced refetch on an unknown `kid`: true at most once per `min_refetch` window per issuer.
    pub fn claim_refetch(&mut self, index: usize, now_ms: u64) -> bool {
        let Some(issuer) = self.issuers.get_mut(index) else {
            return false;
        };
        let KeySource::Remote { min_refetch_ms, .. } = issuer.source else {
            return false;
        };
        if issuer
            .last_refetch_ms
            .is_some_and(|last| now_ms.saturating_sub(last) < min_refetch_ms)
        {
            return false;
        }
        issuer.last_refetch_ms = Some(now_ms);
        true
    }

    fn usable(issuer: &IssuerKeys, now_ms: u64) -> Option<&Arc<KeySet>> {
        match (&issuer.source, issuer.fetched_at_ms) {
            (KeySource::Inline, _) => issuer.keys.as_ref(),
            (KeySource::Remote { max_stale_ms, .. }, Some(at))
                if now_ms.saturating_sub(at) <= *max_stale_ms =>
            {
                issuer.keys.as_ref()
            }
            (KeySource::Remote { .. }, _) => None,
        }
    }

    /// Whether issuer `index`'s keys may be used at `now_ms` (inline, or fetched within the staleness bound).
    pub fn is_usable(&self, index: usize, now_ms: u64) -> bool {
        self.issuers
            .get(index)
            .is_some_and(|i| Self::usable(i, now_ms).is_some())
    }

    /// Selects the key for a token header's `kid` (the only thing a token may say about keys).
    pub fn lookup(&self, kid: Option<&str>, now_ms: u64) -> KeyLookup<'_> {
        let mut found: Option<(usize, &PublicKey)> = None;
        let mut unavailable: Option<usize> = None;
        let mut candidates = 0usize;
        let mut sole: Option<(usize, &PublicKey)> = None;
        for (index, issuer) in self.issuers.iter().enumerate() {
            let Some(set) = Self::usable(issuer, now_ms) else {
                unavailable.get_or_insert(index);
                continue;
            };
            match kid {
                Some(kid) => {
                    if let Some(key) = set.by_kid(kid) {
                        if found.is_some() {
                            return KeyLookup::AmbiguousKid;
                        }
                        found = Some((index, key));
                    }
                }
                None => {
                    candidates += set.len();
                    if let Some(key) = set.keys().first() {
                        sole = Some((index, key));
                    }
                }
            }
        }
        match kid {
            Some(_) => match found {
                Some((issuer, key)) => KeyLookup::Found { issuer, key },
                None => match unavailable {
                    // The kid may belong to keys we cannot use right now: say so rather than "unknown".
                    Some(issuer) => KeyLookup::Unavailable { issuer },
                    None => KeyLookup::UnknownKid {
                        refetch: self
                            .issuers
                            .iter()
                            .enumerate()
                            .filter(|(_, i)| matches!(i.source, KeySource::Remote { .. }))
                            .map(|(n, _)| n)
                            .collect(),
                    },
                },
            },
            None => match (candidates, sole, unavailable) {
                (1, Some((issuer, key)), None) => KeyLookup::Found { issuer, key },
                (0, _, Some(issuer)) => KeyLookup::Unavailable { issuer },
                _ => KeyLookup::KidRequired,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;
    use serde_json::json;

    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

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
    #[cfg(feature = "rust-verify")]
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
        let err = rsa_error(&n2048, "AQAB", None);
        assert_eq!(err, KeyError::AmbiguousAlgorithm { index: 0 });
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

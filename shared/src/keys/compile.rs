//! Reading keys: one JWK into a `PublicKey` with every weak-key check, a JWKS into a `KeySet`, and why a
//! key was refused.

use core::fmt;

#[cfg(feature = "rsa")]
use jwt_compact::alg::StrongKey;
use serde_json::{Map, Value};

use crate::encoding::{decode_b64url, sha256_hex};
use crate::json::{parse_strict, JsonError};

use super::*;

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
    /// The key's algorithm is valid but this build was made without its verifier (a cargo feature).
    NotBuiltIn {
        index: usize,
        alg: Algorithm,
        feature: &'static str,
    },
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
            Self::NotBuiltIn { index, alg, feature } => write!(
                f,
                "key {index}: this build has no {alg} verifier (built without the `{feature}` feature); use the default build, which verifies every supported algorithm"
            ),
        }
    }
}

impl std::error::Error for KeyError {}

/// A key of an algorithm whose verifier this build left out (the core's `es384` or `rsa` feature): refused
/// when it is loaded, so that no token signed with it is ever turned away as merely "bad signature".
#[cfg(all(
    feature = "rust-verify",
    any(not(feature = "es384"), not(feature = "rsa"))
))]
fn not_built_in(index: usize, alg: Algorithm, feature: &'static str) -> Result<Material, KeyError> {
    Err(KeyError::NotBuiltIn {
        index,
        alg,
        feature,
    })
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
                    super::ed25519::Key::new(*key).ok_or(KeyError::InvalidPoint { index })?,
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
                #[cfg(all(feature = "rust-verify", not(feature = "es384")))]
                let material = not_built_in(index, Algorithm::ES384, "es384")?;
                #[cfg(feature = "es384")]
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
                #[cfg(all(feature = "rust-verify", not(feature = "rsa")))]
                let material = not_built_in(index, declared.unwrap_or(Algorithm::RS256), "rsa")?;
                #[cfg(feature = "rsa")]
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
pub(super) fn big_endian_bits(bytes: &[u8]) -> usize {
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
                    | KeyError::NotBuiltIn { .. }
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

//! Development key pairs as JWK files: `private.jwk` (kept by the development issuer) and `jwks.json` (what a
//! policy or a JWKS endpoint publishes).

use anyhow::{anyhow, bail, Context, Result};
use jwt_compact::alg::{Ed25519, Es256, Rsa, StrongAlg, StrongKey};
use jwt_compact::{Algorithm as _, AlgorithmSignature as _};
use rand::rngs::OsRng;
use rand::RngCore;
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use serde_json::{json, Map, Value};
use txngate_core::encoding::{decode_b64url, encode_b64url};
use txngate_core::Algorithm;

/// A private signing key read from a JWK.
pub enum SigningKey {
    Ed25519(ed25519_compact::SecretKey),
    P256(p256::ecdsa::SigningKey),
    /// ES384: RFC 6979 deterministic ECDSA over P-384 / SHA-384, `r ‖ s` (96 bytes).
    P384(p384::ecdsa::SigningKey),
    Rsa(Box<StrongKey<rsa::RsaPrivateKey>>, Algorithm),
}

pub struct PrivateJwk {
    pub key: SigningKey,
    pub alg: Algorithm,
    pub kid: Option<String>,
}

impl PrivateJwk {
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match &self.key {
            SigningKey::Ed25519(sk) => Ed25519.sign(sk, message).as_bytes().into_owned(),
            SigningKey::P256(sk) => Es256.sign(sk, message).as_bytes().into_owned(),
            SigningKey::P384(sk) => {
                use p384::ecdsa::signature::Signer as _;
                let sig: p384::ecdsa::Signature = sk.sign(message);
                sig.to_bytes().to_vec()
            }
            SigningKey::Rsa(sk, alg) => {
                let rsa = if *alg == Algorithm::PS256 {
                    Rsa::ps256()
                } else {
                    Rsa::rs256()
                };
                StrongAlg(rsa)
                    .sign(sk.as_ref(), message)
                    .as_bytes()
                    .into_owned()
            }
        }
    }
}

/// Generates a key pair; returns (private JWK, public JWKS).
pub fn generate(alg: Algorithm, kid: &str) -> Result<(Value, Value)> {
    let mut rng = OsRng;
    let (private, public) = match alg {
        // The same Ed25519 key pair under either name; the JWK's `alg` says which one it is bound to.
        Algorithm::EdDSA | Algorithm::Ed25519 => {
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            let pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(seed));
            let x = encode_b64url(pair.pk.as_ref());
            (
                json!({"kty":"OKP","crv":"Ed25519","x":x,"d":encode_b64url(&seed)}),
                json!({"kty":"OKP","crv":"Ed25519","x":x}),
            )
        }
        Algorithm::ES256 => {
            let sk = p256::ecdsa::SigningKey::random(&mut rng);
            let point = sk.verifying_key().to_encoded_point(false);
            let x = encode_b64url(point.x().ok_or_else(|| anyhow!("P-256 point without x"))?);
            let y = encode_b64url(point.y().ok_or_else(|| anyhow!("P-256 point without y"))?);
            let d = encode_b64url(&sk.to_bytes());
            (
                json!({"kty":"EC","crv":"P-256","x":x,"y":y,"d":d}),
                json!({"kty":"EC","crv":"P-256","x":x,"y":y}),
            )
        }
        Algorithm::ES384 => {
            let sk = p384::ecdsa::SigningKey::random(&mut rng);
            let point = sk.verifying_key().to_encoded_point(false);
            let x = encode_b64url(point.x().ok_or_else(|| anyhow!("P-384 point without x"))?);
            let y = encode_b64url(point.y().ok_or_else(|| anyhow!("P-384 point without y"))?);
            let d = encode_b64url(&sk.to_bytes());
            (
                json!({"kty":"EC","crv":"P-384","x":x,"y":y,"d":d}),
                json!({"kty":"EC","crv":"P-384","x":x,"y":y}),
            )
        }
        Algorithm::RS256 | Algorithm::PS256 => {
            let sk = rsa::RsaPrivateKey::new(&mut rng, 2048).context("generating an RSA key")?;
            let b = |n: &rsa::BigUint| encode_b64url(&n.to_bytes_be());
            let primes = sk.primes();
            let (p, q) = match primes {
                [p, q, ..] => (p, q),
                _ => bail!("RSA key without two primes"),
            };
            let dp = sk.dp().ok_or_else(|| anyhow!("RSA key without dp"))?;
            let dq = sk.dq().ok_or_else(|| anyhow!("RSA key without dq"))?;
            let qi = sk
                .crt_coefficient()
                .ok_or_else(|| anyhow!("RSA key without qi"))?;
            let public = json!({"kty":"RSA","n":b(sk.n()),"e":b(sk.e())});
            let mut private = public.clone();
            if let Value::Object(m) = &mut private {
                m.insert("d".into(), b(sk.d()).into());
                m.insert("p".into(), b(p).into());
                m.insert("q".into(), b(q).into());
                m.insert("dp".into(), b(dp).into());
                m.insert("dq".into(), b(dq).into());
                m.insert("qi".into(), encode_b64url(&qi.to_bytes_be()).into());
            }
            (private, public)
        }
    };
    let finish = |mut v: Value| {
        if let Value::Object(m) = &mut v {
            m.insert("kid".into(), kid.into());
            m.insert("alg".into(), alg.name().into());
            m.insert("use".into(), "sig".into());
        }
        v
    };
    let private = finish(private);
    let mut public = finish(public);
    if let Value::Object(m) = &mut public {
        m.remove("d");
    }
    Ok((private, json!({"keys": [public]})))
}

fn member(obj: &Map<String, Value>, name: &str) -> Result<Vec<u8>> {
    let text = obj
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("private JWK: missing member {name:?}"))?;
    decode_b64url(text).ok_or_else(|| anyhow!("private JWK: member {name:?} is not base64url"))
}

/// Reads a private JWK written by `keygen` (or any Ed25519 / P-256 / P-384 / RSA private JWK; `alg` picks
/// between EdDSA and Ed25519, and between RS256 and PS256).
pub fn read_private(text: &str) -> Result<PrivateJwk> {
    let v: Value = serde_json::from_str(text).context("private JWK is not JSON")?;
    let obj = v
        .as_object()
        .ok_or_else(|| anyhow!("private JWK is not an object"))?;
    let kid = obj.get("kid").and_then(Value::as_str).map(str::to_string);
    let kty = obj.get("kty").and_then(Value::as_str).unwrap_or_default();
    let named = obj
        .get("alg")
        .and_then(Value::as_str)
        .and_then(Algorithm::from_name);
    let (key, alg) = match kty {
        "OKP" => {
            let seed: [u8; 32] = member(obj, "d")?
                .try_into()
                .map_err(|_| anyhow!("Ed25519 seed must be 32 bytes"))?;
            let pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(seed));
            let alg = match named {
                Some(Algorithm::Ed25519) => Algorithm::Ed25519,
                _ => Algorithm::EdDSA,
            };
            (SigningKey::Ed25519(pair.sk), alg)
        }
        "EC" => {
            let d = member(obj, "d")?;
            match obj.get("crv").and_then(Value::as_str) {
                Some("P-384") => {
                    let sk = p384::ecdsa::SigningKey::from_slice(&d)
                        .map_err(|e| anyhow!("P-384 private key: {e}"))?;
                    (SigningKey::P384(sk), Algorithm::ES384)
                }
                Some("P-256") | None => {
                    let sk = p256::ecdsa::SigningKey::from_slice(&d)
                        .map_err(|e| anyhow!("P-256 private key: {e}"))?;
                    (SigningKey::P256(sk), Algorithm::ES256)
                }
                Some(other) => bail!("private JWK: unsupported curve {other:?}"),
            }
        }
        "RSA" => {
            let big = |n: &str| member(obj, n).map(|b| rsa::BigUint::from_bytes_be(&b));
            let sk = rsa::RsaPrivateKey::from_components(
                big("n")?,
                big("e")?,
                big("d")?,
                vec![big("p")?, big("q")?],
            )
            .map_err(|e| anyhow!("RSA private key: {e}"))?;
            let sk =
                StrongKey::try_from(sk).map_err(|_| anyhow!("RSA key shorter than 2048 bits"))?;
            let alg = named.unwrap_or(Algorithm::RS256);
            (SigningKey::Rsa(Box::new(sk), alg), alg)
        }
        other => bail!("private JWK: unsupported kty {other:?}"),
    };
    if let Some(named) = named {
        if named != alg {
            bail!("private JWK: alg {named} does not fit key type {kty}");
        }
    }
    Ok(PrivateJwk { key, alg, kid })
}

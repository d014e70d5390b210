//! The cases: one signature check each, over fixed keys (tests/vectors/keys) and a token-sized message, so the
//! same work can be timed natively and inside wasmtime. Setup (signing) is never timed.
#![allow(clippy::indexing_slicing)]

use std::sync::OnceLock;

use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use txngate_core::keys::{parse_jwk, Algorithm, PublicKey};

/// Case names, by index (the wasm export takes the index).
pub const CASES: [&str; 7] = [
    "EdDSA txngate (ed25519-dalek verify_strict)",
    "EdDSA ed25519-compact verify (the old backend)",
    "ES256 txngate (fixed-base tables)",
    "ES256 p256 VerifyingKey::verify (the old path)",
    "sha256 of a 600-byte token",
    "base64url decode of a 600-byte token",
    "serde_json parse of a token payload",
];

struct Fixture {
    message: Vec<u8>,
    ed_key: PublicKey,
    ed_sig: Vec<u8>,
    compact_key: ed25519_compact::PublicKey,
    es_key: PublicKey,
    es_sig: Vec<u8>,
    p256_key: p256::ecdsa::VerifyingKey,
    token_b64: String,
    payload: Vec<u8>,
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap_or_default()
}

fn member(jwk: &serde_json::Value, name: &str) -> Vec<u8> {
    b64(jwk.get(name).and_then(|v| v.as_str()).unwrap_or_default())
}

/// The JWK without its private member (the core refuses key sets carrying one).
fn public_only(jwk: &serde_json::Value) -> serde_json::Value {
    let mut public = jwk.clone();
    if let Some(o) = public.as_object_mut() {
        o.remove("d");
    }
    public
}

fn fixture() -> Option<Fixture> {
    let ed: serde_json::Value =
        serde_json::from_str(include_str!("../../vectors/keys/ed/private.jwk")).ok()?;
    let ec: serde_json::Value =
        serde_json::from_str(include_str!("../../vectors/keys/ec/private.jwk")).ok()?;
    // A token-sized signing input: header.payload of a typical Txn-Token.
    let payload = br#"{"iss":"https://tts.example.com","aud":"trust.example","sub":"user:alice","iat":1764460800,"exp":1764461100,"txn":"7f3c2a9e-5b1d-4c8e-9a6f-0d2e4b7c1a35","scope":"calendar:read email:send","req_wl":"spiffe://example.com/orchestrator","tctx":{"recipient":"bob@example.com","budget":100},"rctx":{"req_ip":"192.0.2.7","authn":"urn:ietf:rfc:6749"},"agent":"spiffe://example.com/agent/mail"}"#.to_vec();
    let header = br#"{"alg":"EdDSA","kid":"vec-ed","typ":"txntoken+jwt"}"#;
    let enc = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let message = format!("{}.{}", enc(header), enc(&payload)).into_bytes();

    let seed: [u8; 32] = member(&ed, "d").try_into().ok()?;
    let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(seed));
    let ed_sig = kp.sk.sign(&message, None).to_vec();
    let ed_key = parse_jwk(0, &public_only(&ed), &[Algorithm::EdDSA]).ok()?;
    let compact_key = kp.pk;

    let sk = p256::ecdsa::SigningKey::from_slice(&member(&ec, "d")).ok()?;
    let sig: p256::ecdsa::Signature = sk.sign(&message);
    let es_sig = sig.to_bytes().to_vec();
    let es_key = parse_jwk(0, &public_only(&ec), &[Algorithm::ES256]).ok()?;
    let p256_key = *sk.verifying_key();
    let token_b64 = String::from_utf8(message.clone()).ok()?;
    Some(Fixture {
        message,
        ed_key,
        ed_sig,
        compact_key,
        es_key,
        es_sig,
        p256_key,
        token_b64,
        payload,
    })
}

static FIXTURE: OnceLock<Option<Fixture>> = OnceLock::new();

/// Builds the keys and signatures (untimed). False if the fixture could not be built.
pub fn setup() -> bool {
    FIXTURE.get_or_init(fixture).is_some()
}

/// Runs case `case` `iterations` times; returns how many checks succeeded (all of them, or the case is broken).
pub fn run(case: u32, iterations: u32) -> u32 {
    let Some(Some(f)) = FIXTURE.get() else {
        return 0;
    };
    let mut ok = 0u32;
    for _ in 0..iterations {
        let good = match case {
            0 => f.ed_key.verify(&f.message, &f.ed_sig),
            1 => ed25519_compact::Signature::from_slice(&f.ed_sig)
                .is_ok_and(|s| f.compact_key.verify(&f.message, &s).is_ok()),
            2 => f.es_key.verify(&f.message, &f.es_sig),
            3 => {
                use p256::ecdsa::signature::Verifier as _;
                p256::ecdsa::Signature::from_slice(&f.es_sig)
                    .is_ok_and(|s| f.p256_key.verify(&f.message, &s).is_ok())
            }
            4 => {
                use sha2::Digest as _;
                // black_box: the digest must be computed, whatever its value.
                std::hint::black_box(sha2::Sha256::digest(f.token_b64.as_bytes())).len() == 32
            }
            5 => !b64(&f.token_b64.replace('.', "")).is_empty(),
            6 => serde_json::from_slice::<serde_json::Value>(&f.payload).is_ok(),
            _ => false,
        };
        ok += u32::from(good);
    }
    ok
}

/// The wasm entry points the runner calls.
#[cfg(target_arch = "wasm32")]
mod exports {
    #[allow(unsafe_code)]
    #[no_mangle]
    pub extern "C" fn bench_setup() -> u32 {
        u32::from(super::setup())
    }

    #[allow(unsafe_code)]
    #[no_mangle]
    pub extern "C" fn bench_run(case: u32, iterations: u32) -> u32 {
        super::run(case, iterations)
    }
}

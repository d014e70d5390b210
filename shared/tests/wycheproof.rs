//! Wycheproof vectors through the signature path every host uses (`PublicKey::verify`, jwt-compact inside):
//! ECDSA P-256 (IEEE P1363 = JWS ES256), Ed25519 (JWS EdDSA and, RFC 9864, Ed25519), RSASSA-PKCS1-v1_5
//! 2048/SHA-256 (JWS RS256). The vendored subset has no P-384 file; ES384 is covered by the keys tests.
//! Every `valid` case must verify and every `invalid` case must fail; `acceptable` cases are counted and
//! must fail too (txngate takes the strict side). A key refused at load must only carry non-valid cases.
#![allow(clippy::indexing_slicing, clippy::unwrap_used)] // test helpers (clippy.toml: #[test] fns)

use serde_json::Value;
use txngate_core::keys::{parse_jwk, Algorithm};

fn load(name: &str) -> Value {
    let path = format!(
        "{}/tests/vectors/wycheproof/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

/// Some ECDSA groups carry no JWK; the point is given uncompressed (04 ‖ x ‖ y).
fn jwk_from_uncompressed(public: &Value) -> Value {
    let point = hex(public["uncompressed"].as_str().unwrap());
    let b64 = |b: &[u8]| txngate_core::encoding::encode_b64url(b);
    serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])})
}

#[derive(Default, Debug)]
struct Tally {
    cases: usize,
    valid: usize,
    invalid: usize,
    acceptable: usize,
    refused_keys: usize,
    disagreements: Vec<String>,
}

fn run(file: &str, jwk_member: &str, alg: Algorithm) -> Tally {
    let doc = load(file);
    let mut t = Tally::default();
    for group in doc["testGroups"].as_array().unwrap() {
        let jwk = match &group[jwk_member] {
            Value::Null => jwk_from_uncompressed(&group["publicKey"]),
            jwk => jwk.clone(),
        };
        let key = parse_jwk(0, &jwk, &[alg]);
        if key.is_err() {
            t.refused_keys += 1;
        }
        for case in group["tests"].as_array().unwrap() {
            t.cases += 1;
            let result = case["result"].as_str().unwrap();
            let verified = match &key {
                Ok(key) => key.verify(
                    &hex(case["msg"].as_str().unwrap()),
                    &hex(case["sig"].as_str().unwrap()),
                ),
                Err(_) => false,
            };
            match result {
                "valid" => t.valid += 1,
                "invalid" => t.invalid += 1,
                _ => t.acceptable += 1,
            }
            let expected = result == "valid";
            if verified != expected {
                t.disagreements.push(format!(
                    "tcId {} ({result}, {}): verified={verified}",
                    case["tcId"], case["comment"]
                ));
            }
        }
    }
    t
}

#[test]
fn ecdsa_p256_p1363_all_agree() {
    let t = run(
        "ecdsa_secp256r1_sha256_p1363_test.json",
        "publicKeyJwk",
        Algorithm::ES256,
    );
    assert!(t.cases >= 200, "{t:?}");
    assert!(t.disagreements.is_empty(), "{:#?}", t.disagreements);
}

#[test]
fn ed25519_all_agree() {
    let t = run("ed25519_test.json", "publicKeyJwk", Algorithm::EdDSA);
    assert!(t.cases >= 140, "{t:?}");
    assert!(t.disagreements.is_empty(), "{:#?}", t.disagreements);
}

/// The same vectors with the keys bound to RFC 9864's fully specified name: one verifier, two names.
#[test]
fn ed25519_fully_specified_name_all_agree() {
    let t = run("ed25519_test.json", "publicKeyJwk", Algorithm::Ed25519);
    assert!(t.cases >= 140, "{t:?}");
    assert!(t.disagreements.is_empty(), "{:#?}", t.disagreements);
}

#[test]
fn rsa_2048_pkcs1_sha256_all_agree() {
    let t = run(
        "rsa_signature_2048_sha256_test.json",
        "keyJwk",
        Algorithm::RS256,
    );
    assert!(t.cases >= 200, "{t:?}");
    assert!(t.disagreements.is_empty(), "{:#?}", t.disagreements);
}

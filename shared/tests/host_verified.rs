//! Host-verified mode: the host's verifier checked the signature and attests it (`HostVerified`); the gate applies
//! every other rule, and fails closed whenever the attestation is missing or is not for this token.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::{json, Value};
use txngate_core::encoding::encode_b64url;
use txngate_core::ratelimit::MemoryStore;
use txngate_core::token::{HostVerified, TokenError};
use txngate_core::{Body, Gate, Outcome, Request};

const NOW: u64 = 1_800_000_000;
const TD: &str = "trust.example";
const MAX: usize = 8192;

fn ed_pair() -> ed25519_compact::KeyPair {
    ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7u8; 32]))
}

fn gate() -> Gate {
    let jwks = json!({"keys": [{"kty":"OKP","crv":"Ed25519","x": encode_b64url(ed_pair().pk.as_ref()),"kid":"ed"}]});
    let policy = json!({
        "trust_domain": TD,
        "issuers": [{"name": "tts", "jwks": jwks, "algorithms": ["EdDSA"]}],
        "agents": {"spiffe://trust.example/agent/*": {"max_scopes": ["calendar:read"]}},
        "tools": {"calendar_read": {"scopes": ["calendar:read"]}, "*": {"effect": "deny"}}
    });
    Gate::from_json(&serde_json::to_vec(&policy).unwrap()).unwrap()
}

fn claims() -> Value {
    json!({"iat": NOW, "exp": NOW + 60, "aud": TD, "txn": "t-1", "sub": "alice", "scope": "calendar:read",
           "req_wl": "spiffe://trust.example/agent/a", "act": {"sub": "spiffe://trust.example/agent/a"}})
}

/// A token whose signature is garbage: in host-verified mode only the attestation vouches for it.
fn token(claims: &Value) -> String {
    let header = json!({"alg": "EdDSA", "typ": "txntoken+jwt", "kid": "ed"});
    format!(
        "{}.{}.{}",
        encode_b64url(&serde_json::to_vec(&header).unwrap()),
        encode_b64url(&serde_json::to_vec(claims).unwrap()),
        encode_b64url(&[1u8; 64])
    )
}

fn decide(gate: &mut Gate, tok: &str, attestation: &Result<HostVerified, TokenError>) -> Outcome {
    let headers = vec![("txn-token".to_string(), tok.to_string())];
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"calendar_read","arguments":{}}}"#;
    let request = Request {
        method: "POST",
        path: "/mcp",
        headers: &headers,
        body: Body::Complete(body),
        peer: None,
    };
    gate.decide(
        &request,
        NOW * 1000,
        txngate_core::Verification::Host(attestation),
        &mut MemoryStore::new(),
    )
}

/// What Envoy's protobuf `Struct` makes of the payload: every number a double.
fn as_struct(v: &Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64().unwrap()),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), as_struct(v))).collect())
        }
        other => other.clone(),
    }
}

#[test]
fn attested_token_is_allowed_without_the_gate_checking_its_signature() {
    let mut gate = gate();
    let tok = token(&claims());
    let att = HostVerified::attest(&tok, MAX, Some(&as_struct(&claims())));
    let o = decide(&mut gate, &tok, &att);
    assert_eq!(o.decision.reason(), "allow", "{:?}", o.audit);
    // Cached, the next request still needs its own attestation.
    let o = decide(&mut gate, &tok, &att);
    assert!(o.audit.cached);
    assert_eq!(o.decision.reason(), "allow");
    let missing = HostVerified::attest(&tok, MAX, None);
    let o = decide(&mut gate, &tok, &missing);
    assert_eq!(
        (o.decision.status(), o.decision.reason()),
        (401, "token.host_unverified")
    );
}

#[test]
fn the_gate_checks_the_signature_natively_without_host_verification() {
    let mut gate = gate();
    let tok = token(&claims());
    let headers = vec![("txn-token".to_string(), tok)];
    let request = Request {
        method: "GET",
        path: "/x",
        headers: &headers,
        body: Body::Absent,
        peer: None,
    };
    let o = gate.decide(
        &request,
        NOW * 1000,
        txngate_core::Verification::Core,
        &mut MemoryStore::new(),
    );
    assert_eq!(o.decision.reason(), "token.signature");
}

#[test]
fn no_verified_payload_fails_closed() {
    let mut gate = gate();
    let tok = token(&claims());
    let o = decide(&mut gate, &tok, &HostVerified::attest(&tok, MAX, None));
    assert_eq!(
        (o.decision.status(), o.decision.reason()),
        (401, "token.host_unverified")
    );
}

#[test]
fn a_payload_that_differs_in_any_claim_fails_closed() {
    let mut gate = gate();
    let tok = token(&claims());
    let variants = [
        json!({"scope": "calendar:read email:send"}),
        json!({"exp": NOW + 61}),
        json!({"act": {"sub": "spiffe://trust.example/agent/b"}}),
        json!({"extra": true}),
    ];
    for patch in variants {
        let mut verified = claims();
        for (k, v) in patch.as_object().unwrap() {
            verified[k] = v.clone();
        }
        let att = HostVerified::attest(&tok, MAX, Some(&as_struct(&verified)));
        let o = decide(&mut gate, &tok, &att);
        assert_eq!(o.decision.reason(), "token.host_unverified", "{patch}");
    }
    // A claim dropped from the verified payload (e.g. `act`) is a difference too.
    let mut fewer = claims();
    fewer.as_object_mut().unwrap().remove("act");
    let att = HostVerified::attest(&tok, MAX, Some(&fewer));
    assert_eq!(
        decide(&mut gate, &tok, &att).decision.reason(),
        "token.host_unverified"
    );
}

#[test]
fn an_attestation_for_another_token_fails_closed() {
    let mut gate = gate();
    let other = token(
        &json!({"iat": NOW, "exp": NOW + 60, "aud": TD, "txn": "t-2", "sub": "alice",
                              "scope": "calendar:read", "req_wl": "spiffe://trust.example/agent/a"}),
    );
    let att = HostVerified::attest(
        &other,
        MAX,
        Some(&as_struct(&json!({"iat": NOW, "exp": NOW + 60, "aud": TD,
        "txn": "t-2", "sub": "alice", "scope": "calendar:read", "req_wl": "spiffe://trust.example/agent/a"}))),
    );
    assert!(att.is_ok());
    let o = decide(&mut gate, &token(&claims()), &att);
    assert_eq!(o.decision.reason(), "token.host_unverified");
}

#[test]
fn every_other_rule_still_applies() {
    let mut gate = gate();
    let expired = json!({"iat": NOW - 600, "exp": NOW - 300, "aud": TD, "txn": "t-3", "sub": "alice",
                         "scope": "calendar:read", "req_wl": "spiffe://trust.example/agent/a"});
    let tok = token(&expired);
    let att = HostVerified::attest(&tok, MAX, Some(&as_struct(&expired)));
    assert_eq!(
        decide(&mut gate, &tok, &att).decision.reason(),
        "token.expired"
    );
    let mut wrong_aud = claims();
    wrong_aud["aud"] = json!("elsewhere");
    let tok = token(&wrong_aud);
    let att = HostVerified::attest(&tok, MAX, Some(&as_struct(&wrong_aud)));
    assert_eq!(
        decide(&mut gate, &tok, &att).decision.reason(),
        "token.audience"
    );
}

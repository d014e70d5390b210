//! `Body::Held`, the header stage of a host that holds the body (the proxy-wasm filter's default mode): what
//! needs no body is checked exactly as the full decision checks it; the body, the tool rule and the rate
//! limit are left to the full decision, which the host must still take.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use jwt_compact::{Algorithm as _, AlgorithmSignature as _};
use serde_json::{json, Value};
use txngate_core::encoding::encode_b64url;
use txngate_core::ratelimit::MemoryStore;
use txngate_core::token::{HostVerified, TokenError};
use txngate_core::{Body, Gate, Request, Verification};

const NOW_S: u64 = 1_800_000_000;
const NOW_MS: u64 = NOW_S * 1000;

fn pair() -> ed25519_compact::KeyPair {
    ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7u8; 32]))
}

fn gate() -> Gate {
    let policy = json!({
        "trust_domain": "trust.example",
        "issuers": [{"name": "tts", "algorithms": ["EdDSA"],
                     "jwks": {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": encode_b64url(pair().pk.as_ref())}]}}],
        "agents": {"spiffe://trust.example/agent/*": {"max_scopes": ["calendar:read", "web:search"]}},
        "tools": {
            "calendar_read": {"scopes": ["calendar:read"]},
            "search_web": {"scopes": ["web:search"], "rate_limit": {"key": "agent", "limit": 1, "period_seconds": 60}},
            "*": {"effect": "deny"}
        }
    });
    Gate::from_json(&serde_json::to_vec(&policy).unwrap()).unwrap()
}

fn token(agent: &str, scope: &str) -> String {
    let claims = json!({
        "iat": NOW_S, "exp": NOW_S + 60, "aud": "trust.example", "txn": "txn-1", "sub": "user-1",
        "scope": scope, "req_wl": agent, "act": {"sub": agent}
    });
    let header = json!({"alg": "EdDSA", "typ": "txntoken+jwt", "kid": "ed"});
    let input = format!(
        "{}.{}",
        encode_b64url(&serde_json::to_vec(&header).unwrap()),
        encode_b64url(&serde_json::to_vec(&claims).unwrap())
    );
    let sig = jwt_compact::alg::Ed25519.sign(&pair().sk, input.as_bytes());
    format!("{input}.{}", encode_b64url(sig.as_bytes().as_ref()))
}

fn request<'a>(headers: &'a [(String, String)], body: Body<'a>) -> Request<'a> {
    Request {
        method: "POST",
        path: "/mcp",
        headers,
        body,
        peer: None,
    }
}

fn call(tool: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                 "params": {"name": tool, "arguments": {"day": "mon", "query": "q"}}}))
    .unwrap()
}

#[test]
fn a_good_token_gets_its_identity_and_the_body_is_left_to_the_full_decision() {
    let mut gate = gate();
    let agent = "spiffe://trust.example/agent/a1";
    let headers = vec![("txn-token".to_string(), token(agent, "calendar:read"))];
    let stage = gate.decide(
        &request(&headers, Body::Held),
        NOW_MS,
        Verification::Core,
        &mut MemoryStore::default(),
    );
    assert!(stage.decision.is_allowed(), "{:?}", stage.decision);
    let identity: Vec<(&str, &str)> = stage
        .decision
        .upstream_headers()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        identity,
        [
            ("x-txngate-agent", agent),
            ("x-txngate-sub", "user-1"),
            ("x-txngate-txn", "txn-1")
        ]
    );
    assert!(stage.decision.list_filter().is_none());
    assert_eq!(stage.audit.rpc_method, None, "the body was not read");

    // The full decision gives the same identity for an allowed call, and refuses what the body asks for.
    let mut store = MemoryStore::default();
    let body = call("calendar_read");
    let full = gate.decide(
        &request(&headers, Body::Complete(&body)),
        NOW_MS,
        Verification::Core,
        &mut store,
    );
    assert!(full.decision.is_allowed());
    assert_eq!(
        full.decision.upstream_headers(),
        stage.decision.upstream_headers()
    );
    let body = call("search_web");
    let full = gate.decide(
        &request(&headers, Body::Complete(&body)),
        NOW_MS,
        Verification::Core,
        &mut store,
    );
    assert_eq!(
        (full.decision.status(), full.decision.reason()),
        (403, "tool.scope")
    );
}

#[test]
fn no_rate_limit_is_consumed_at_the_header_stage() {
    let mut gate = gate();
    let headers = vec![(
        "txn-token".to_string(),
        token("spiffe://trust.example/agent/s1", "web:search"),
    )];
    for _ in 0..5 {
        let stage = gate.decide(
            &request(&headers, Body::Held),
            NOW_MS,
            Verification::Core,
            &mut MemoryStore::default(),
        );
        assert!(stage.decision.is_allowed());
        assert!(stage.audit.limit.is_none());
    }
    let mut store = MemoryStore::default();
    let body = call("search_web");
    let first = gate.decide(
        &request(&headers, Body::Complete(&body)),
        NOW_MS,
        Verification::Core,
        &mut store,
    );
    assert!(first.decision.is_allowed(), "the bucket is still full");
    let second = gate.decide(
        &request(&headers, Body::Complete(&body)),
        NOW_MS,
        Verification::Core,
        &mut store,
    );
    assert_eq!(second.decision.reason(), "ratelimit.exceeded");
}

#[test]
fn token_and_delegation_refusals_are_the_same_as_the_full_decisions() {
    let mut gate = gate();
    let good = token("spiffe://trust.example/agent/a1", "calendar:read");
    let mut forged = good.clone();
    forged.pop();
    forged.push(if good.ends_with('A') { 'B' } else { 'A' });
    let cases: Vec<(Vec<(String, String)>, u16)> = vec![
        (vec![], 401),
        (vec![("txn-token".into(), "not-a-token".into())], 401),
        (vec![("txn-token".into(), forged)], 401),
        (
            vec![(
                "txn-token".into(),
                token("spiffe://elsewhere.example/x", "calendar:read"),
            )],
            403,
        ),
    ];
    for (headers, status) in cases {
        let stage = gate.decide(
            &request(&headers, Body::Held),
            NOW_MS,
            Verification::Core,
            &mut MemoryStore::default(),
        );
        assert!(!stage.decision.is_allowed());
        assert_eq!(
            stage.decision.status(),
            status,
            "{}",
            stage.decision.reason()
        );
        assert!(stage.decision.upstream_headers().is_empty());
        let body = call("calendar_read");
        let full = gate.decide(
            &request(&headers, Body::Complete(&body)),
            NOW_MS,
            Verification::Core,
            &mut MemoryStore::default(),
        );
        assert_eq!(full.decision.reason(), stage.decision.reason());
        assert_eq!(stage.audit.verdict, "deny");
    }
}

#[test]
fn hybrid_mode_never_checks_the_signature_itself() {
    let mut gate = gate();
    let headers = vec![(
        "txn-token".to_string(),
        token("spiffe://trust.example/agent/a1", "calendar:read"),
    )];
    let missing: Result<HostVerified, TokenError> = Err(TokenError::HostUnverified {
        detail: "no jwt_authn metadata",
    });
    let stage = gate.decide(
        &request(&headers, Body::Held),
        NOW_MS,
        Verification::Host(&missing),
        &mut MemoryStore::default(),
    );
    assert_eq!(
        (stage.decision.status(), stage.decision.reason()),
        (401, "token.host_unverified")
    );
    let _: Value = serde_json::from_str(stage.decision.body().unwrap()).unwrap();
}

//! Transaction Tokens and JOSE through the whole gate: RFC 8725 §3.8 issuer binding, the per-issuer `typ`
//! list, the Ed25519 (RFC 9864) and ES384 algorithms, opaque token scopes, `delegation.prior_actors`
//! (RFC 8693 §4.1) and the agents profile's `agentic_ctx` (constraints and audit).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use p384::ecdsa::signature::Signer as _;
use serde_json::{json, Value};
use txngate_core::encoding::encode_b64url;
use txngate_core::ratelimit::MemoryStore;
use txngate_core::{Body, Gate, Outcome, Request};

const NOW: u64 = 1_800_000_000;
const TD: &str = "trust.example";

/// Two Ed25519 keys (`a`: issuer with `iss`, `b`: issuer without, accepting a legacy `typ`), one Ed25519 key
/// bound to the fully specified name (`fs`), one P-384 key (`p384`).
fn seed(kid: &str) -> [u8; 32] {
    match kid {
        "a" => [1u8; 32],
        "b" => [2u8; 32],
        _ => [3u8; 32],
    }
}

fn ed_pair(kid: &str) -> ed25519_compact::KeyPair {
    ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(seed(kid)))
}

fn p384_key() -> p384::ecdsa::SigningKey {
    p384::ecdsa::SigningKey::from_slice(&[5u8; 48]).unwrap()
}

fn ed_jwk(kid: &str, alg: Option<&str>) -> Value {
    let mut v =
        json!({"kty":"OKP","crv":"Ed25519","x": encode_b64url(ed_pair(kid).pk.as_ref()),"kid":kid});
    if let Some(alg) = alg {
        v["alg"] = alg.into();
    }
    v
}

fn policy() -> Value {
    let point = p384_key().verifying_key().to_encoded_point(false);
    json!({
        "trust_domain": TD,
        "issuers": [
            {"name": "tts-a", "iss": "https://tts-a.trust.example",
             "jwks": {"keys": [ed_jwk("a", None), ed_jwk("fs", Some("Ed25519")),
                               {"kty":"EC","crv":"P-384","kid":"p384",
                                "x": encode_b64url(point.x().unwrap()), "y": encode_b64url(point.y().unwrap())}]}},
            {"name": "legacy-b", "typ": ["txntoken+jwt", "txn_token"], "algorithms": ["EdDSA"],
             "jwks": {"keys": [ed_jwk("b", None)]}}
        ],
        "agents": {
            "spiffe://trust.example/gw": {"max_scopes": ["*"]},
            "spiffe://trust.example/orchestrator": {"max_scopes": ["calendar:*"]},
            "spiffe://trust.example/agent/*": {"max_scopes": ["email:*", "a*"]}
        },
        "delegation": {"max_depth": 3},
        "tools": {
            "send_email": {"scopes": ["email:send"]},
            "odd_scope": {"scopes": ["a:b"]},
            "billing": {"constraints": [{"argument": "/agent", "claim": "/agentic_ctx/current_actor"},
                                         {"argument": "/hops", "claim": "/agentic_ctx/chain_metadata/hop_count"}]}
        }
    })
}

fn gate_with(p: &Value) -> Gate {
    Gate::from_json(&serde_json::to_vec(p).unwrap()).unwrap()
}

fn claims() -> Value {
    json!({
        "iat": NOW, "exp": NOW + 60, "aud": TD, "txn": "txn-1", "sub": "user:alice",
        "scope": "email:send", "req_wl": "spiffe://trust.example/gw",
        "act": {"sub": "spiffe://trust.example/agent/mailer"}
    })
}

fn with(mut v: Value, patch: Value) -> Value {
    for (k, val) in patch.as_object().unwrap() {
        if val.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = val.clone();
        }
    }
    v
}

/// Signs `claims` with key `kid`; `header` is merged into the default JOSE header.
fn token(kid: &str, claims: &Value, header: Value) -> String {
    let alg = match kid {
        "fs" => "Ed25519",
        "p384" => "ES384",
        _ => "EdDSA",
    };
    let h = with(
        json!({"alg": alg, "typ": "txntoken+jwt", "kid": kid}),
        header,
    );
    let input = format!(
        "{}.{}",
        encode_b64url(&serde_json::to_vec(&h).unwrap()),
        encode_b64url(&serde_json::to_vec(claims).unwrap())
    );
    let sig = if kid == "p384" {
        let sig: p384::ecdsa::Signature = p384_key().sign(input.as_bytes());
        sig.to_bytes().to_vec()
    } else {
        ed_pair(kid).sk.sign(input.as_bytes(), None).to_vec()
    };
    format!("{input}.{}", encode_b64url(&sig))
}

fn call(tool: &str, args: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":tool,"arguments":args}}))
        .unwrap()
}

fn decide(gate: &mut Gate, token: &str, body: &[u8]) -> Outcome {
    let headers = vec![("txn-token".to_string(), token.to_string())];
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
        txngate_core::Verification::Core,
        &mut MemoryStore::new(),
    )
}

fn verdict(gate: &mut Gate, token: &str, body: &[u8]) -> (u16, &'static str) {
    let o = decide(gate, token, body);
    (o.decision.status(), o.decision.reason())
}

fn send_email() -> Vec<u8> {
    call("send_email", json!({"to": "bob@example.com"}))
}

const ISS_A: &str = "https://tts-a.trust.example";

/// RFC 8725 §3.8: the key that verified a token with `iss` must belong to an issuer declaring that `iss`; an
/// issuer without `iss` verifies only tokens without one.
#[test]
fn rfc8725_3_8_the_verifying_key_belongs_to_the_named_issuer() {
    let mut gate = gate_with(&policy());
    let with_iss = |iss: &str| with(claims(), json!({"iss": iss}));
    for (name, kid, claims, expected) in [
        ("a's iss with a's key", "a", with_iss(ISS_A), (200, "allow")),
        (
            "a's iss with b's key",
            "b",
            with_iss(ISS_A),
            (401, "token.issuer"),
        ),
        (
            "another iss with b's key",
            "b",
            with_iss("https://legacy-b.trust.example"),
            (401, "token.issuer"),
        ),
        ("no iss with b's key", "b", claims(), (200, "allow")),
        ("no iss with a's key", "a", claims(), (401, "token.issuer")),
        (
            "iss differing by case",
            "a",
            with_iss("https://TTS-A.trust.example"),
            (401, "token.issuer"),
        ),
    ] {
        let o = decide(&mut gate, &token(kid, &claims, json!({})), &send_email());
        assert_eq!(
            (o.decision.status(), o.decision.reason()),
            expected,
            "{name}: {:?}",
            o.audit.detail
        );
    }
    let o = decide(
        &mut gate,
        &token("b", &with_iss(ISS_A), json!({})),
        &send_email(),
    );
    let detail = o.audit.detail.unwrap();
    assert!(detail.contains("declares no iss"), "{detail}");
    let www = o
        .decision
        .response_headers()
        .iter()
        .find(|(k, _)| k == "www-authenticate");
    assert!(
        www.is_some_and(|(_, v)| v.contains("token.issuer")),
        "{www:?}"
    );
}

/// The `typ` allow-list is per issuer: the default is exactly `txntoken+jwt`; `legacy-b` also accepts
/// `txn_token`, and only its own keys get that.
#[test]
fn typ_allow_list_is_per_issuer() {
    let mut gate = gate_with(&policy());
    let a = with(claims(), json!({"iss": ISS_A}));
    for (name, kid, claims, typ, expected) in [
        (
            "legacy typ at b",
            "b",
            claims(),
            "txn_token",
            (200, "allow"),
        ),
        (
            "legacy typ, other spelling",
            "b",
            claims(),
            "application/TXN_TOKEN",
            (200, "allow"),
        ),
        (
            "standard typ at b",
            "b",
            claims(),
            "txntoken+jwt",
            (200, "allow"),
        ),
        (
            "legacy typ at a",
            "a",
            a.clone(),
            "txn_token",
            (401, "token.typ"),
        ),
        ("JWT at b", "b", claims(), "JWT", (401, "token.typ")),
        ("at+jwt at a", "a", a.clone(), "at+jwt", (401, "token.typ")),
    ] {
        assert_eq!(
            verdict(
                &mut gate,
                &token(kid, &claims, json!({"typ": typ})),
                &send_email()
            ),
            expected,
            "{name}"
        );
    }
    let o = decide(
        &mut gate,
        &token("a", &a, json!({"typ": "txn_token"})),
        &send_email(),
    );
    assert!(o.audit.detail.unwrap().contains("txntoken+jwt"));
    // No typ at all, or not a string: refused before any key is looked at.
    for header in [json!({"typ": null}), json!({"typ": 1})] {
        assert_eq!(
            verdict(&mut gate, &token("b", &claims(), header), &send_email()),
            (401, "token.typ")
        );
    }
}

/// Ed25519 (RFC 9864) and ES384 tokens pass; a key bound to one Ed25519 name refuses the other; a tampered
/// or short ES384 signature is refused.
#[test]
fn ed25519_and_es384_through_the_gate() {
    let mut gate = gate_with(&policy());
    let a = with(claims(), json!({"iss": ISS_A}));
    assert_eq!(
        verdict(&mut gate, &token("fs", &a, json!({})), &send_email()),
        (200, "allow")
    );
    assert_eq!(
        verdict(&mut gate, &token("p384", &a, json!({})), &send_email()),
        (200, "allow")
    );
    assert_eq!(
        verdict(
            &mut gate,
            &token("fs", &a, json!({"alg": "EdDSA"})),
            &send_email()
        ),
        (401, "token.alg_mismatch")
    );
    assert_eq!(
        verdict(
            &mut gate,
            &token("a", &a, json!({"alg": "Ed25519"})),
            &send_email()
        ),
        (401, "token.alg_mismatch")
    );
    assert_eq!(
        verdict(
            &mut gate,
            &token("p384", &a, json!({"alg": "ES256"})),
            &send_email()
        ),
        (401, "token.alg_mismatch")
    );
    let good = token("p384", &with(a.clone(), json!({"txn": "txn-2"})), json!({}));
    let (input, sig) = good.rsplit_once('.').unwrap();
    let mut raw = txngate_core::encoding::decode_b64url(sig).unwrap();
    raw[10] ^= 1;
    let tampered = format!("{input}.{}", encode_b64url(&raw));
    assert_eq!(
        verdict(&mut gate, &tampered, &send_email()),
        (401, "token.signature")
    );
    let short = format!("{input}.{}", encode_b64url(&raw[..64]));
    assert_eq!(
        verdict(&mut gate, &short, &send_email()),
        (401, "token.signature")
    );
}

/// Token scope values are opaque: `email:*` in a token is not a wildcard (403 for `email:send`, not 401),
/// and `a*b` is an ordinary scope.
#[test]
fn token_scopes_are_opaque_strings() {
    let mut gate = gate_with(&policy());
    for (scope, tool, expected) in [
        ("email:*", "send_email", (403, "tool.scope")),
        ("*", "send_email", (403, "tool.scope")),
        ("a*b", "send_email", (403, "tool.scope")),
        ("a*", "odd_scope", (403, "tool.scope")),
        ("a*b email:send", "send_email", (200, "allow")),
    ] {
        let c = with(
            claims(),
            json!({"scope": scope, "txn": format!("t-{scope}")}),
        );
        let o = decide(
            &mut gate,
            &token("b", &c, json!({})),
            &call(tool, json!({})),
        );
        assert_eq!(
            (o.decision.status(), o.decision.reason()),
            expected,
            "{scope} → {tool}"
        );
        if expected.0 == 200 {
            assert_eq!(o.audit.scope.as_deref(), Some("a*b email:send"));
        }
    }
}

/// RFC 8693 §4.1 with `prior_actors: informational`: an unknown prior actor passes and narrows nothing; the
/// current actor still must be known; the audit keeps the whole chain. `narrow` refuses the chain.
#[test]
fn prior_actors_informational_and_narrow() {
    let chain = json!({"sub": "spiffe://trust.example/agent/mailer",
                       "act": {"sub": "spiffe://partner.example/assistant",
                               "act": {"sub": "spiffe://trust.example/orchestrator"}}});
    let c = with(claims(), json!({"act": chain}));
    let mut p = policy();
    p["delegation"]["prior_actors"] = json!("narrow");
    let mut narrow = gate_with(&p);
    assert_eq!(
        verdict(&mut narrow, &token("b", &c, json!({})), &send_email()),
        (403, "delegation.unknown_agent")
    );
    let mut p = policy();
    p["delegation"]["prior_actors"] = json!("informational");
    let mut informational = gate_with(&p);
    let o = decide(
        &mut informational,
        &token("b", &c, json!({})),
        &send_email(),
    );
    assert_eq!((o.decision.status(), o.decision.reason()), (200, "allow"));
    assert_eq!(o.audit.actors.len(), 3);
    assert_eq!(o.audit.actors[1], "spiffe://partner.example/assistant");
    // The orchestrator (prior, ceiling calendar:*) would have removed email:send under `narrow`.
    assert_eq!(o.audit.scope.as_deref(), Some("email:send"));
    let unknown_current = with(
        claims(),
        json!({"act": {"sub": "spiffe://partner.example/assistant"}, "txn": "t-2"}),
    );
    assert_eq!(
        verdict(
            &mut informational,
            &token("b", &unknown_current, json!({})),
            &send_email()
        ),
        (403, "delegation.unknown_agent")
    );
    let deep = with(
        claims(),
        json!({"txn": "t-3", "act": {"sub": "spiffe://trust.example/agent/a", "act": {"sub": "x", "act": {"sub": "y", "act": {"sub": "z"}}}}}),
    );
    assert_eq!(
        verdict(
            &mut informational,
            &token("b", &deep, json!({})),
            &send_email()
        ),
        (403, "delegation.depth")
    );
}

/// draft-araut-oauth-transaction-tokens-for-agents: constraints point into `agentic_ctx`, and the audit record
/// keeps its agent fields (`current_actor`, `originator`, `chain_metadata`), nothing else of it.
#[test]
fn agentic_ctx_constraints_and_audit() {
    let mut gate = gate_with(&policy());
    let agentic = json!({
        "current_actor": "spiffe://trust.example/agent/billing",
        "originator": "3p-assistant-ext-99",
        "chain_metadata": {"hop_count": 2, "min_assurance_level": "low"},
        "posture": {"tee": "aws-nitro-enclave"}
    });
    let c = with(claims(), json!({"agentic_ctx": agentic}));
    let billing = |agent: &str, hops: u64| call("billing", json!({"agent": agent, "hops": hops}));
    let o = decide(
        &mut gate,
        &token("b", &c, json!({})),
        &billing("spiffe://trust.example/agent/billing", 2),
    );
    assert_eq!((o.decision.status(), o.decision.reason()), (200, "allow"));
    let record: Value = serde_json::from_str(&o.audit.to_json()).unwrap();
    assert_eq!(
        record["agentic_ctx"],
        json!({"current_actor": "spiffe://trust.example/agent/billing", "originator": "3p-assistant-ext-99",
               "chain_metadata": {"hop_count": 2, "min_assurance_level": "low"}})
    );
    assert!(!o.audit.to_json().contains("nitro"));
    for (agent, hops) in [
        ("spiffe://trust.example/agent/other", 2),
        ("spiffe://trust.example/agent/billing", 3),
    ] {
        let o = decide(&mut gate, &token("b", &c, json!({})), &billing(agent, hops));
        assert_eq!(
            (o.decision.status(), o.decision.reason()),
            (403, "tool.constraint"),
            "{agent} {hops}"
        );
        assert!(
            o.audit.agentic_ctx.is_some(),
            "refusals keep the agent fields too"
        );
    }
    // Without the claim the constraint cannot hold, and the record has no agentic_ctx.
    let o = decide(
        &mut gate,
        &token("b", &with(claims(), json!({"txn": "t-4"})), json!({})),
        &billing("spiffe://trust.example/agent/billing", 2),
    );
    assert_eq!(
        (o.decision.status(), o.decision.reason()),
        (403, "tool.constraint")
    );
    assert!(o.audit.agentic_ctx.is_none());
    // The draft makes it a JSON object.
    let bad = with(claims(), json!({"agentic_ctx": "billing", "txn": "t-5"}));
    assert_eq!(
        verdict(&mut gate, &token("b", &bad, json!({})), &send_email()),
        (401, "token.claim_type")
    );
}

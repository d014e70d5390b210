//! WIMSE proofs through the whole gate: the WIT's and the WPT's signatures come out as sans-IO steps after the
//! Txn-Token's, the proven workload is bound like an mTLS peer, and every failure has its reason.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use p256::ecdsa::signature::Signer as _;
use serde_json::{json, Value};
use txngate_core::encoding::encode_b64url;
use txngate_core::ratelimit::MemoryStore;
use txngate_core::token::HostVerified;
use txngate_core::wimse::token_hash;
use txngate_core::{Body, Gate, Outcome, Request, Step, Verification};

const NOW_S: u64 = 1_800_000_000;
const NOW: u64 = NOW_S * 1000;
const AGENT: &str = "spiffe://trust.example/agent/mailer";

fn issuer() -> ed25519_compact::KeyPair {
    ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7u8; 32]))
}

fn identity_server() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&[3u8; 32]).unwrap()
}

fn workload(seed: u8) -> ed25519_compact::KeyPair {
    ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([seed; 32]))
}

fn policy(binding: Value) -> Value {
    let point = identity_server().verifying_key().to_encoded_point(false);
    json!({
        "trust_domain": "trust.example",
        "issuers": [{"name": "tts", "algorithms": ["EdDSA"], "jwks": {"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": encode_b64url(issuer().pk.as_ref())}]}}],
        "agents": {"spiffe://trust.example/agent/*": {"max_scopes": ["calendar:read"]},
                   "spiffe://trust.example/orchestrator": {"max_scopes": ["*"]}},
        "peer_binding": binding,
        "wimse": {
            "trust_domains": {"trust.example": {"algorithms": ["ES256"], "jwks": {"keys": [
                {"kty": "EC", "crv": "P-256", "kid": "td", "x": encode_b64url(point.x().unwrap()),
                 "y": encode_b64url(point.y().unwrap())}]}}},
            "audiences": ["https://mcp.example"]
        },
        "tools": {"calendar_read": {"scopes": ["calendar:read"]}}
    })
}

fn gate(binding: Value) -> Gate {
    Gate::from_json(&serde_json::to_vec(&policy(binding)).unwrap()).unwrap()
}

fn encode(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        encode_b64url(&serde_json::to_vec(header).unwrap()),
        encode_b64url(&serde_json::to_vec(claims).unwrap())
    )
}

fn sign_ed(pair: &ed25519_compact::KeyPair, header: &Value, claims: &Value) -> String {
    let input = encode(header, claims);
    let sig = pair.sk.sign(input.as_bytes(), None);
    format!("{input}.{}", encode_b64url(sig.as_ref()))
}

fn txn_token() -> String {
    let claims = json!({"iat": NOW_S, "exp": NOW_S + 60, "aud": "trust.example", "txn": "t1", "sub": "user:alice",
        "scope": "calendar:read", "req_wl": "spiffe://trust.example/gw",
        "act": {"sub": AGENT, "act": {"sub": "spiffe://trust.example/orchestrator"}}});
    sign_ed(
        &issuer(),
        &json!({"alg": "EdDSA", "typ": "txntoken+jwt", "kid": "ed"}),
        &claims,
    )
}

fn wit(sub: &str) -> String {
    let claims = json!({"sub": sub, "exp": NOW_S + 3600, "cnf": {"jwk": {"kty": "OKP", "crv": "Ed25519",
        "alg": "EdDSA", "x": encode_b64url(workload(1).pk.as_ref())}}});
    let input = encode(
        &json!({"alg": "ES256", "typ": "wit+jwt", "kid": "td"}),
        &claims,
    );
    let sig: p256::ecdsa::Signature = identity_server().sign(input.as_bytes());
    format!("{input}.{}", encode_b64url(&sig.to_bytes()))
}

fn wpt(wit: &str, txn: &str, jti: &str) -> String {
    let claims = json!({"aud": "https://mcp.example/mcp", "exp": NOW_S + 30, "jti": jti,
        "wth": token_hash(wit), "tth": token_hash(txn)});
    sign_ed(
        &workload(1),
        &json!({"alg": "EdDSA", "typ": "wpt+jwt"}),
        &claims,
    )
}

fn body() -> Vec<u8> {
    serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "calendar_read", "arguments": {}}}))
    .unwrap()
}

fn headers(txn: &str, proof: Option<(&str, &str)>) -> Vec<(String, String)> {
    let mut h = vec![("txn-token".to_string(), txn.to_string())];
    if let Some((wit, wpt)) = proof {
        h.push(("Workload-Identity-Token".into(), wit.into()));
        h.push(("Workload-Proof-Token".into(), wpt.into()));
    }
    h
}

/// The headers of a call with `txn`, the WIT `wit` and its WPT `jti` for `txn`.
fn proven(txn: &str, wit: &str, jti: &str) -> Vec<(String, String)> {
    headers(txn, Some((wit, &wpt(wit, txn, jti))))
}

fn decide(gate: &mut Gate, headers: &[(String, String)], peer: Option<&str>) -> Outcome {
    decide_at(gate, headers, peer, NOW)
}

fn decide_at(
    gate: &mut Gate,
    headers: &[(String, String)],
    peer: Option<&str>,
    now: u64,
) -> Outcome {
    let body = body();
    let req = Request {
        method: "POST",
        path: "/mcp",
        headers,
        body: Body::Complete(&body),
        peer,
    };
    gate.decide(&req, now, Verification::Core, &mut MemoryStore::new())
}

fn reason(o: &Outcome) -> (u16, &'static str) {
    (o.decision.status(), o.decision.reason())
}

#[test]
fn a_bound_call_takes_three_signature_steps_and_audits_the_caller() {
    let mut g = gate(json!({"mode": "require", "source": "wimse"}));
    let txn = txn_token();
    let w = wit(AGENT);
    let h = proven(&txn, &w, "j1");
    let body = body();
    let req = Request {
        method: "POST",
        path: "/mcp",
        headers: &h,
        body: Body::Complete(&body),
        peer: None,
    };
    let mut step = g.evaluate(&req, NOW, Verification::Core);
    let mut algorithms = Vec::new();
    let outcome = loop {
        step = match step {
            Step::Done(o) => break *o,
            Step::VerifySignature(pending) => {
                algorithms.push(pending.algorithm().name());
                let valid = pending.verify_native();
                g.resume_signature(*pending, valid)
            }
            Step::ConsultLimiter(_) => panic!("no limit here"),
        };
    };
    assert_eq!(algorithms, ["EdDSA", "ES256", "EdDSA"]);
    assert!(outcome.decision.is_allowed(), "{:?}", outcome.decision);
    assert_eq!(outcome.audit.caller.as_deref(), Some(AGENT));
    assert_eq!(outcome.audit.caller_proof, Some("wimse"));
}

#[test]
fn a_stolen_token_without_its_proof_is_refused() {
    let mut g = gate(json!({"mode": "require", "source": "wimse"}));
    let txn = txn_token();
    assert_eq!(
        reason(&decide(&mut g, &headers(&txn, None), None)),
        (400, "wimse.proof_missing")
    );
    // Even with the right mTLS peer: the policy takes the caller from the proof.
    assert_eq!(
        reason(&decide(&mut g, &headers(&txn, None), Some(AGENT))),
        (400, "wimse.proof_missing")
    );
    // The thief's own proof covers another token.
    let w = wit("spiffe://trust.example/agent/thief");
    let other = sign_ed(
        &issuer(),
        &json!({"alg": "EdDSA", "typ": "txntoken+jwt", "kid": "ed"}),
        &json!({}),
    );
    let p = wpt(&w, &other, "j1");
    assert_eq!(
        reason(&decide(&mut g, &headers(&txn, Some((&w, &p))), None)),
        (400, "wimse.txn_token_hash")
    );
    // Its proof for this token proves the thief, who is not the acting agent.
    assert_eq!(
        reason(&decide(&mut g, &proven(&txn, &w, "j2"), None)),
        (403, "delegation.peer_mismatch")
    );
}

#[test]
fn a_replayed_proof_is_refused_also_for_a_cached_token() {
    let mut g = gate(json!({"mode": "require", "source": "wimse"}));
    let txn = txn_token();
    let w = wit(AGENT);
    let h = proven(&txn, &w, "j1");
    assert!(decide(&mut g, &h, None).decision.is_allowed());
    let again = decide(&mut g, &h, None);
    assert!(again.audit.cached);
    assert_eq!(reason(&again), (400, "wimse.replay"));
    assert!(decide(&mut g, &proven(&txn, &w, "j2"), None)
        .decision
        .is_allowed());
}

#[test]
fn the_header_stage_does_not_take_the_jti() {
    let mut g = gate(json!({"mode": "require", "source": "wimse"}));
    let txn = txn_token();
    let w = wit(AGENT);
    let h = proven(&txn, &w, "j1");
    let req = Request {
        method: "POST",
        path: "/mcp",
        headers: &h,
        body: Body::Held,
        peer: None,
    };
    assert!(g
        .decide(&req, NOW, Verification::Core, &mut MemoryStore::new())
        .decision
        .is_allowed());
    assert!(decide(&mut g, &h, None).decision.is_allowed());
}

#[test]
fn host_verified_tokens_still_have_their_proofs_checked_by_the_core() {
    let mut g = gate(json!({"mode": "require", "source": "wimse"}));
    let txn = txn_token();
    let payload: Value = serde_json::from_slice(
        &txngate_core::encoding::decode_b64url(txn.split('.').nth(1).unwrap()).unwrap(),
    )
    .unwrap();
    let attestation = HostVerified::attest(&txn, 8192, Some(&payload));
    let w = wit(AGENT);
    let body = body();
    let run = |g: &mut Gate, p: &str| {
        let h = headers(&txn, Some((&w, p)));
        let req = Request {
            method: "POST",
            path: "/mcp",
            headers: &h,
            body: Body::Complete(&body),
            peer: None,
        };
        g.decide(
            &req,
            NOW,
            Verification::Host(&attestation),
            &mut MemoryStore::new(),
        )
    };
    assert!(run(&mut g, &wpt(&w, &txn, "j1")).decision.is_allowed());
    let forged = sign_ed(
        &workload(9),
        &json!({"alg": "EdDSA", "typ": "wpt+jwt"}),
        &json!({"aud": "https://mcp.example/mcp", "exp": NOW_S + 30, "jti": "j2",
                "wth": token_hash(&w), "tth": token_hash(&txn)}),
    );
    assert_eq!(reason(&run(&mut g, &forged)), (400, "wimse.wpt_signature"));
}

#[test]
fn mtls_or_wimse_takes_either_and_both_must_agree() {
    let mut g = gate(json!({"mode": "require", "source": "mtls_or_wimse"}));
    let txn = txn_token();
    let o = decide(&mut g, &headers(&txn, None), Some(AGENT));
    assert!(o.decision.is_allowed());
    assert_eq!(o.audit.caller_proof, Some("mtls"));
    assert_eq!(
        reason(&decide(&mut g, &headers(&txn, None), None)),
        (403, "delegation.peer_missing")
    );
    let w = wit(AGENT);
    let o = decide(&mut g, &proven(&txn, &w, "j1"), None);
    assert!(o.decision.is_allowed());
    assert_eq!(o.audit.caller_proof, Some("wimse"));
    let o = decide(
        &mut g,
        &proven(&txn, &w, "j2"),
        Some("spiffe://trust.example/agent/other"),
    );
    assert_eq!(reason(&o), (403, "delegation.peer_mismatch"));
}

#[test]
fn the_mtls_source_ignores_proofs_and_audits_the_peer() {
    let mut g = gate(json!("require"));
    let txn = txn_token();
    let o = decide(&mut g, &headers(&txn, Some(("x", "y"))), Some(AGENT));
    assert!(o.decision.is_allowed());
    assert_eq!(o.audit.caller.as_deref(), Some(AGENT));
    assert_eq!(o.audit.caller_proof, Some("mtls"));
}

#[test]
fn the_policy_is_checked_at_load_with_a_path() {
    let load = |p: Value| Gate::from_json(&serde_json::to_vec(&p).unwrap()).map(|_| ());
    let mut p = policy(json!({"mode": "require", "source": "wimse"}));
    p.as_object_mut().unwrap().remove("wimse");
    assert_eq!(load(p).unwrap_err().path(), "/wimse");
    let p = policy(json!({"mode": "require", "source": "carrier-pigeon"}));
    let e = load(p).unwrap_err();
    assert_eq!(e.path(), "/peer_binding");
    assert!(e.to_string().contains("source"), "{e}");
    let mut p = policy(json!("require"));
    p["wimse"]["audiences"] = json!(["mcp.example"]);
    assert_eq!(load(p).unwrap_err().path(), "/wimse/audiences/0");
    let mut p = policy(json!("require"));
    p["wimse"]["trust_domains"]["trust.example"]["jwks"]["keys"][0]["d"] = json!("AAAA");
    assert_eq!(
        load(p).unwrap_err().path(),
        "/wimse/trust_domains/trust.example/jwks"
    );
}

/// A trust domain whose keys come from a `jwks_uri`: fetched through the key ring's refresher like an
/// issuer's, with the same unknown-`kid` refetch and the same staleness bound (the clock is the test's).
mod remote_trust_domain {
    use super::*;
    use txngate_core::keys::refresh::{FetchReason, FetchResult, Refreshed};

    const ENTRY: usize = 1;

    fn ec_jwk(key: &p256::ecdsa::SigningKey, kid: &str) -> Value {
        let point = key.verifying_key().to_encoded_point(false);
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": encode_b64url(point.x().unwrap()),
               "y": encode_b64url(point.y().unwrap())})
    }

    fn rotated() -> p256::ecdsa::SigningKey {
        p256::ecdsa::SigningKey::from_slice(&[5u8; 32]).unwrap()
    }

    fn remote_gate() -> Gate {
        let mut p = policy(json!({"mode": "require", "source": "wimse"}));
        p["wimse"]["trust_domains"]["trust.example"] = json!({
            "algorithms": ["ES256"], "jwks_uri": "https://id.trust.example/jwks", "cluster": "identity",
            "refresh_seconds": 1, "max_stale_seconds": 2, "min_refetch_seconds": 1});
        Gate::from_json(&serde_json::to_vec(&p).unwrap()).unwrap()
    }

    fn wit_by(key: &p256::ecdsa::SigningKey, kid: &str) -> String {
        let claims = json!({"sub": AGENT, "exp": NOW_S + 3600, "cnf": {"jwk": {"kty": "OKP",
            "crv": "Ed25519", "alg": "EdDSA", "x": encode_b64url(workload(1).pk.as_ref())}}});
        let input = encode(
            &json!({"alg": "ES256", "typ": "wit+jwt", "kid": kid}),
            &claims,
        );
        let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
        format!("{input}.{}", encode_b64url(&sig.to_bytes()))
    }

    fn call(g: &mut Gate, w: &str, jti: &str, now: u64) -> Outcome {
        decide_at(g, &proven(&txn_token(), w, jti), None, now)
    }

    fn answer(g: &mut Gate, keys: &[Value], now: u64) -> Refreshed {
        let body = serde_json::to_vec(&json!({ "keys": keys })).unwrap();
        let result = FetchResult::Response {
            status: 200,
            body: &body,
            length: body.len(),
        };
        g.on_keys_response(ENTRY, result, now)
    }

    #[test]
    fn the_refresher_fetches_the_trust_domain_like_an_issuer() {
        let mut g = remote_gate();
        let w = wit_by(&identity_server(), "td");
        // Never fetched: fail closed as for an issuer's keys, and the host is told to fetch.
        let o = call(&mut g, &w, "j0", NOW);
        assert_eq!(reason(&o), (503, "keys.unavailable"));
        assert_eq!(o.refetch_issuer, Some(ENTRY));
        let fetches = g.poll_keys(NOW);
        let fetch = fetches.iter().find(|f| f.issuer == ENTRY).unwrap();
        assert_eq!(fetch.uri, "https://id.trust.example/jwks");
        assert_eq!(fetch.cluster.as_deref(), Some("identity"));
        assert!(fetch.blocking);
        assert!(matches!(
            answer(&mut g, &[ec_jwk(&identity_server(), "td")], NOW),
            Refreshed::Installed { .. }
        ));
        let o = call(&mut g, &w, "j1", NOW + 10);
        assert!(o.decision.is_allowed(), "{:?}", o.decision);
        assert_eq!(o.audit.caller.as_deref(), Some(AGENT));

        // The Identity Server rotates: an unknown kid is refused and refetched (debounced), then accepted.
        let w2 = wit_by(&rotated(), "td-2");
        let o = call(&mut g, &w2, "j2", NOW + 1500);
        assert_eq!(reason(&o), (400, "wimse.wit_untrusted"));
        assert_eq!(o.refetch_issuer, Some(ENTRY));
        let o = call(&mut g, &w2, "j3", NOW + 1600);
        assert_eq!(
            o.refetch_issuer, None,
            "one refetch per min_refetch_seconds"
        );
        let fetches = g.poll_keys(NOW + 1600);
        let fetch = fetches.iter().find(|f| f.issuer == ENTRY).unwrap();
        assert!(matches!(
            fetch.reason,
            FetchReason::UnknownKid | FetchReason::Periodic
        ));
        let keys = [ec_jwk(&identity_server(), "td"), ec_jwk(&rotated(), "td-2")];
        answer(&mut g, &keys, NOW + 1600);
        let o = call(&mut g, &w2, "j4", NOW + 1700);
        assert!(o.decision.is_allowed(), "{:?}", o.decision);

        // Past max_stale_seconds without a good fetch: 503 keys.unavailable, never the stale keys.
        let o = call(&mut g, &w, "j5", NOW + 1600 + 2001);
        assert_eq!(reason(&o), (503, "keys.unavailable"));
        assert!(o
            .decision
            .reply()
            .unwrap()
            .headers
            .iter()
            .any(|(k, v)| k == "retry-after" && v == "5"));
    }

    #[test]
    fn trust_domain_keys_never_verify_txn_tokens_and_issuer_keys_never_wits() {
        let mut g = remote_gate();
        answer(&mut g, &[ec_jwk(&identity_server(), "td")], NOW);
        // A WIT naming the Txn-Token issuer's kid: no trust-domain key has it.
        let forged = sign_ed(
            &issuer(),
            &json!({"alg": "EdDSA", "typ": "wit+jwt", "kid": "ed"}),
            &json!({"sub": AGENT, "exp": NOW_S + 3600}),
        );
        let o = call(&mut g, &forged, "j1", NOW + 10);
        assert_eq!(reason(&o), (400, "wimse.wit_untrusted"));
        // A Txn-Token signed by the Identity Server's key: no issuer has kid "td".
        let claims = json!({"iat": NOW_S, "exp": NOW_S + 60, "aud": "trust.example", "txn": "t1",
            "sub": "user:alice", "scope": "calendar:read"});
        let input = encode(
            &json!({"alg": "ES256", "typ": "txntoken+jwt", "kid": "td"}),
            &claims,
        );
        let sig: p256::ecdsa::Signature = identity_server().sign(input.as_bytes());
        let txn = format!("{input}.{}", encode_b64url(&sig.to_bytes()));
        let h = headers(&txn, None);
        let o = decide(&mut g, &h, None);
        assert_eq!(o.decision.status(), 401, "{:?}", o.decision);
    }

    #[test]
    fn the_remote_source_is_checked_at_load_with_a_path() {
        let load = |td: Value| {
            let mut p = policy(json!({"mode": "require", "source": "wimse"}));
            p["wimse"]["trust_domains"]["trust.example"] = td;
            Gate::from_json(&serde_json::to_vec(&p).unwrap())
                .map(|_| ())
                .unwrap_err()
                .path()
                .to_string()
        };
        let at = "/wimse/trust_domains/trust.example";
        assert_eq!(
            load(json!({"jwks_uri": "ftp://x/jwks"})),
            format!("{at}/jwks_uri")
        );
        assert_eq!(
            load(json!({"jwks_uri": "https://x/jwks", "refresh_seconds": 0})),
            format!("{at}/refresh_seconds")
        );
        assert_eq!(
            load(
                json!({"jwks_uri": "https://x/jwks", "refresh_seconds": 60, "max_stale_seconds": 30})
            ),
            format!("{at}/max_stale_seconds")
        );
        assert_eq!(
            load(json!({"jwks_uri": "https://x/jwks", "jwks": {"keys": []}})),
            format!("{at}/jwks_uri")
        );
        assert_eq!(load(json!({"algorithms": ["ES256"]})), at);
        assert_eq!(
            load(json!({"jwks": {"keys": [ec_jwk(&identity_server(), "td")]}, "cluster": "c"})),
            format!("{at}/cluster")
        );
    }
}

//! The whole decision, one rule at a time: every test breaks exactly one rule and checks its status, reason
//! and rendering.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use jwt_compact::{Algorithm as _, AlgorithmSignature as _};
use serde_json::{json, Value};
use txngate_core::encoding::encode_b64url;
use txngate_core::ratelimit::{LimitRule, LimitState, MemoryStore, RateLimitStore, StoreError};
use txngate_core::{is_identity_header, Body, Gate, Limiter, Outcome, Request, Step};

const NOW: u64 = 1_800_000_000;
const TD: &str = "trust.example";

fn ed_pair() -> ed25519_compact::KeyPair {
    ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7u8; 32]))
}

fn p256_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap()
}

fn jwks() -> Value {
    let ed = ed_pair();
    let point = p256_key().verifying_key().to_encoded_point(false);
    json!({"keys": [
        {"kty":"OKP","crv":"Ed25519","x": encode_b64url(ed.pk.as_ref()),"kid":"ed"},
        {"kty":"EC","crv":"P-256","x": encode_b64url(point.x().unwrap()),"y": encode_b64url(point.y().unwrap()),"kid":"ec"}
    ]})
}

fn policy() -> Value {
    json!({
        "trust_domain": TD,
        "issuers": [{"name": "tts", "jwks": jwks(), "algorithms": ["EdDSA", "ES256"]}],
        "agents": {
            "spiffe://trust.example/gw": {"max_scopes": ["*"]},
            "spiffe://trust.example/orchestrator": {"max_scopes": ["calendar:*", "email:*"]},
            "spiffe://trust.example/agent/*": {"max_scopes": ["calendar:read", "email:send"]}
        },
        "delegation": {"max_depth": 2},
        "tools": {
            "send_email": {"scopes": ["email:send"], "constraints": [{"argument": "/to", "claim": "/tctx/recipient"}],
                           "rate_limit": {"key": "agent", "limit": 10, "period_seconds": 60}},
            "calendar_read": {"scopes": ["calendar:read"]},
            "calendar_write": {"scopes": ["calendar:write"]},
            "audit_me": {"scopes": ["admin"], "mode": "dry_run"},
            "delete_repo": {"effect": "deny"}
        }
    })
}

fn gate_with(p: &Value) -> Gate {
    Gate::from_json(&serde_json::to_vec(p).unwrap()).unwrap()
}

fn claims() -> Value {
    json!({
        "iat": NOW, "exp": NOW + 60, "aud": TD, "txn": "txn-1", "sub": "user:alice",
        "scope": "email:send calendar:read calendar:write", "req_wl": "spiffe://trust.example/gw",
        "tctx": {"recipient": ["bob@example.com", "carol@example.com"]},
        "act": {"sub": "spiffe://trust.example/agent/mailer", "act": {"sub": "spiffe://trust.example/orchestrator"}}
    })
}

fn header(kid: &str) -> Value {
    let alg = if kid == "ec" { "ES256" } else { "EdDSA" };
    json!({"alg": alg, "typ": "txntoken+jwt", "kid": kid})
}

fn sign_raw(header: &Value, payload: &[u8], kid_key: &str) -> String {
    let input = format!(
        "{}.{}",
        encode_b64url(&serde_json::to_vec(header).unwrap()),
        encode_b64url(payload)
    );
    let sig = if kid_key == "ec" {
        jwt_compact::alg::Es256
            .sign(&p256_key(), input.as_bytes())
            .as_bytes()
            .into_owned()
    } else {
        jwt_compact::alg::Ed25519
            .sign(&ed_pair().sk, input.as_bytes())
            .as_bytes()
            .into_owned()
    };
    format!("{input}.{}", encode_b64url(&sig))
}

fn token(claims: &Value) -> String {
    sign_raw(&header("ed"), &serde_json::to_vec(claims).unwrap(), "ed")
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

fn call(tool: &str, args: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":tool,"arguments":args}})).unwrap()
}

fn send_email() -> Vec<u8> {
    call("send_email", json!({"to":"bob@example.com","subject":"hi"}))
}

struct Req {
    method: &'static str,
    path: &'static str,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    peer: Option<&'static str>,
}

impl Req {
    fn mcp(tok: &str, body: Vec<u8>) -> Self {
        Self {
            method: "POST",
            path: "/mcp",
            headers: vec![("Txn-Token".into(), tok.into())],
            body: Some(body),
            peer: None,
        }
    }
    fn request(&self) -> Request<'_> {
        Request {
            method: self.method,
            path: self.path,
            headers: &self.headers,
            body: self.body.as_deref().map_or(Body::Absent, Body::Complete),
            peer: self.peer,
        }
    }
}

fn decide(gate: &mut Gate, req: &Req) -> Outcome {
    gate.decide(
        &req.request(),
        NOW * 1000,
        txngate_core::Verification::Core,
        &mut MemoryStore::new(),
    )
}

fn reason_of(gate: &mut Gate, req: &Req) -> (u16, &'static str) {
    let o = decide(gate, req);
    (o.decision.status(), o.decision.reason())
}

#[test]
fn delegated_tool_call_is_allowed_with_identity_headers_and_audit() {
    let mut gate = gate_with(&policy());
    let tok = token(&claims());
    let o = decide(&mut gate, &Req::mcp(&tok, send_email()));
    assert_eq!(o.decision.reason(), "allow", "{:?}", o.audit);
    let up: std::collections::HashMap<_, _> =
        o.decision.upstream_headers().iter().cloned().collect();
    assert_eq!(up["x-txngate-agent"], "spiffe://trust.example/agent/mailer");
    assert_eq!(up["x-txngate-sub"], "user:alice");
    assert_eq!(up["x-txngate-txn"], "txn-1");
    let a = &o.audit;
    assert_eq!(
        a.actors,
        vec![
            "spiffe://trust.example/agent/mailer",
            "spiffe://trust.example/orchestrator"
        ]
    );
    assert_eq!(a.tool.as_deref(), Some("send_email"));
    assert_eq!(a.scope.as_deref(), Some("calendar:read email:send"));
    assert_eq!(a.limit.as_ref().unwrap().remaining, 9);
    assert!(a.arguments_sha256.is_some());
    let line = a.to_json();
    assert!(!line.contains(&tok), "the token must never be logged");
    assert!(line.contains(&txngate_core::encoding::sha256_hex(tok.as_bytes())));
}

#[test]
fn es256_tokens_verify_and_repeat_calls_hit_the_cache() {
    let mut gate = gate_with(&policy());
    let tok = sign_raw(&header("ec"), &serde_json::to_vec(&claims()).unwrap(), "ec");
    let req = Req::mcp(&tok, call("calendar_read", json!({"day":"mon"})));
    let first = decide(&mut gate, &req);
    assert_eq!(first.decision.reason(), "allow");
    assert!(!first.audit.cached);
    let second = decide(&mut gate, &req);
    assert!(second.audit.cached);
    assert_eq!(gate.cached_tokens(), 1);
}

#[test]
fn each_token_rule_has_its_reason() {
    let mut gate = gate_with(&policy());
    let body = send_email();
    let cases: Vec<(String, u16, &str)> = vec![
        ("a.b".into(), 401, "token.malformed"),
        ("a.b.c.d.e".into(), 401, "token.encrypted"),
        ("x".repeat(9000), 401, "token.too_large"),
        (format!("{}=", token(&claims())), 401, "token.base64"),
        (
            sign_raw(
                &json!({"alg":"EdDSA","typ":"JWT","kid":"ed"}),
                &serde_json::to_vec(&claims()).unwrap(),
                "ed",
            ),
            401,
            "token.typ",
        ),
        (
            sign_raw(
                &json!({"alg":"EdDSA","kid":"ed"}),
                &serde_json::to_vec(&claims()).unwrap(),
                "ed",
            ),
            401,
            "token.typ",
        ),
        (
            sign_raw(&json!({"alg":"none","typ":"txntoken+jwt"}), b"{}", "ed"),
            401,
            "token.alg_none",
        ),
        (
            sign_raw(
                &json!({"alg":"HS256","typ":"txntoken+jwt","kid":"ed"}),
                b"{}",
                "ed",
            ),
            401,
            "token.alg",
        ),
        (
            sign_raw(
                &json!({"alg":"ES256","typ":"txntoken+jwt","kid":"ed"}),
                &serde_json::to_vec(&claims()).unwrap(),
                "ed",
            ),
            401,
            "token.alg_mismatch",
        ),
        (
            sign_raw(
                &json!({"alg":"EdDSA","typ":"txntoken+jwt","kid":"ed","crit":["x"],"x":1}),
                b"{}",
                "ed",
            ),
            401,
            "token.crit",
        ),
        (
            sign_raw(
                &json!({"alg":"EdDSA","typ":"txntoken+jwt","kid":"ed","jku":"https://evil/jwks"}),
                b"{}",
                "ed",
            ),
            401,
            "token.embedded_key",
        ),
        (
            sign_raw(
                &json!({"alg":"EdDSA","typ":"txntoken+jwt","kid":"ed","cty":"JWT"}),
                b"{}",
                "ed",
            ),
            401,
            "token.nested",
        ),
        (
            sign_raw(
                &json!({"alg":"EdDSA","typ":"txntoken+jwt"}),
                &serde_json::to_vec(&claims()).unwrap(),
                "ed",
            ),
            401,
            "token.kid_required",
        ),
        (
            sign_raw(
                &json!({"alg":"EdDSA","typ":"txntoken+jwt","kid":"../../etc/passwd"}),
                b"{}",
                "ed",
            ),
            401,
            "token.kid_unknown",
        ),
        (
            sign_raw(&header("ed"), br#"{"sub":"a","sub":"b"}"#, "ed"),
            401,
            "token.claims",
        ),
        (
            token(&with(claims(), json!({"exp": (NOW + 60).to_string()}))),
            401,
            "token.claim_type",
        ),
        (
            token(&with(claims(), json!({"aud": 5}))),
            401,
            "token.claim_type",
        ),
        (
            token(&with(claims(), json!({"txn": null}))),
            401,
            "token.claim_missing",
        ),
        (
            token(&with(claims(), json!({"req_wl": null}))),
            401,
            "token.claim_missing",
        ),
        (
            token(&with(claims(), json!({"scope": ["email:send"]}))),
            401,
            "token.claim_type",
        ),
        (
            token(&with(
                claims(),
                json!({"sub": "alice\r\nx-txngate-agent: evil"}),
            )),
            401,
            "token.claim_type",
        ),
        (
            token(&with(claims(), json!({"tctx": "flat"}))),
            401,
            "token.claim_type",
        ),
        (
            token(&with(claims(), json!({"act": {"sub": 7}}))),
            401,
            "token.claim_type",
        ),
        (
            token(&with(claims(), json!({"aud": "other.example"}))),
            401,
            "token.audience",
        ),
        (
            token(&with(claims(), json!({"aud": []}))),
            401,
            "token.audience",
        ),
        (
            token(&with(claims(), json!({"exp": NOW - 31, "iat": NOW - 90}))),
            401,
            "token.expired",
        ),
        (
            token(&with(claims(), json!({"nbf": NOW + 31}))),
            401,
            "token.not_yet_valid",
        ),
        (
            token(&with(claims(), json!({"iat": NOW + 31, "exp": NOW + 60}))),
            401,
            "token.issued_in_future",
        ),
        (
            token(&with(claims(), json!({"exp": NOW + 301, "iat": NOW}))),
            401,
            "token.lifetime",
        ),
        (
            token(&with(claims(), json!({"exp": i64::MAX}))),
            401,
            "token.lifetime",
        ),
    ];
    for (tok, status, reason) in cases {
        let got = reason_of(&mut gate, &Req::mcp(&tok, body.clone()));
        assert_eq!(got, (status, reason), "token {}", &tok[..tok.len().min(80)]);
    }
}

#[test]
fn leeway_accepts_small_skew() {
    let mut gate = gate_with(&policy());
    let tok = token(&with(claims(), json!({"exp": NOW - 29, "iat": NOW - 89})));
    assert_eq!(
        reason_of(&mut gate, &Req::mcp(&tok, send_email())).1,
        "allow"
    );
}

#[test]
fn tampered_payload_fails_the_signature() {
    let mut gate = gate_with(&policy());
    let tok = token(&claims());
    let mut parts: Vec<&str> = tok.split('.').collect();
    let forged = encode_b64url(
        &serde_json::to_vec(&with(claims(), json!({"scope": "admin email:send"}))).unwrap(),
    );
    parts[1] = &forged;
    assert_eq!(
        reason_of(&mut gate, &Req::mcp(&parts.join("."), send_email())),
        (401, "token.signature")
    );
    // A signature of the wrong length is invalid, never a panic.
    let short = format!(
        "{}.{}.{}",
        parts[0],
        encode_b64url(b"{}"),
        encode_b64url(&[1u8; 10])
    );
    assert_eq!(
        reason_of(&mut gate, &Req::mcp(&short, send_email())),
        (401, "token.signature")
    );
}

#[test]
fn missing_and_repeated_headers() {
    let mut gate = gate_with(&policy());
    let mut req = Req::mcp("", send_email());
    req.headers.clear();
    let o = decide(&mut gate, &req);
    assert_eq!(
        (o.decision.status(), o.decision.reason()),
        (401, "token.missing")
    );
    let www = o
        .decision
        .response_headers()
        .iter()
        .find(|(k, _)| k == "www-authenticate")
        .unwrap();
    assert_eq!(
        www.1,
        "Txn-Token error=\"invalid_token\", error_description=\"token.missing\""
    );
    let body: Value = serde_json::from_str(o.decision.body().unwrap()).unwrap();
    assert_eq!(body["id"], 42);
    assert_eq!(body["error"]["code"], -31401);
    let tok = token(&claims());
    let mut req = Req::mcp(&tok, send_email());
    req.headers.push(("txn-token".into(), tok.clone()));
    assert_eq!(reason_of(&mut gate, &req), (400, "token.multiple"));
    // Only Txn-Token counts: Authorization is ignored.
    let mut req = Req::mcp(&tok, send_email());
    req.headers = vec![("authorization".into(), format!("Bearer {tok}"))];
    assert_eq!(reason_of(&mut gate, &req).1, "token.missing");
}

#[test]
fn delegation_rules() {
    let mut gate = gate_with(&policy());
    let body = send_email();
    let deep = json!({"sub": "spiffe://trust.example/agent/a", "act": {"sub": "spiffe://trust.example/agent/b", "act": {"sub": "spiffe://trust.example/orchestrator"}}});
    assert_eq!(
        reason_of(
            &mut gate,
            &Req::mcp(&token(&with(claims(), json!({"act": deep}))), body.clone())
        ),
        (403, "delegation.depth")
    );
    let stranger = json!({"sub": "spiffe://evil.example/agent"});
    assert_eq!(
        reason_of(
            &mut gate,
            &Req::mcp(
                &token(&with(claims(), json!({"act": stranger}))),
                body.clone()
            )
        ),
        (403, "delegation.unknown_agent")
    );
    let mut p = policy();
    p["peer_binding"] = json!("require");
    let mut gate = gate_with(&p);
    let tok = token(&claims());
    assert_eq!(
        reason_of(&mut gate, &Req::mcp(&tok, body.clone())),
        (403, "delegation.peer_missing")
    );
    let mut req = Req::mcp(&tok, body.clone());
    req.peer = Some("spiffe://trust.example/agent/other");
    assert_eq!(
        reason_of(&mut gate, &req),
        (403, "delegation.peer_mismatch")
    );
    req.peer = Some("spiffe://trust.example/agent/mailer");
    assert_eq!(reason_of(&mut gate, &req).1, "allow");
}

#[test]
fn mcp_body_rules() {
    let mut gate = gate_with(&policy());
    let tok = token(&claims());
    for (body, status, reason, code) in [
        (b"{".to_vec(), 400, "mcp.parse", -32700),
        (br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]"#.to_vec(), 400, "mcp.batch", -32600),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"calendar_read","name":"send_email"}}"#.to_vec(), 400, "mcp.duplicate_key", -32700),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":""}}"#.to_vec(), 400, "mcp.tool_name", -32602),
    ] {
        let o = decide(&mut gate, &Req::mcp(&tok, body));
        assert_eq!((o.decision.status(), o.decision.reason()), (status, reason));
        let b: Value = serde_json::from_str(o.decision.body().unwrap()).unwrap();
        assert_eq!(b["error"]["code"], code, "{reason}");
    }
    let mut req = Req::mcp(&tok, send_email());
    req.body = None;
    assert_eq!(reason_of(&mut gate, &req), (400, "mcp.body_missing"));
    let req = Req::mcp(&tok, send_email());
    let too_large = Request {
        body: Body::TooLarge,
        ..req.request()
    };
    let o = gate.decide(
        &too_large,
        NOW * 1000,
        txngate_core::Verification::Core,
        &mut MemoryStore::new(),
    );
    assert_eq!(
        (o.decision.status(), o.decision.reason()),
        (413, "mcp.body_too_large")
    );
    let mut req = Req::mcp(&tok, send_email());
    req.headers.push(("Mcp-Method".into(), "tools/call".into()));
    req.headers
        .push(("Mcp-Name".into(), "calendar_read".into()));
    let o = decide(&mut gate, &req);
    assert_eq!(
        (o.decision.status(), o.decision.reason()),
        (400, "mcp.header_mismatch")
    );
    let b: Value = serde_json::from_str(o.decision.body().unwrap()).unwrap();
    assert_eq!(b["error"]["code"], -32020);
}

#[test]
fn tool_rules() {
    let mut gate = gate_with(&policy());
    let tok = token(&claims());
    // The mailer's ceiling has no calendar:write even though the token grants it: delegation narrows.
    let o = decide(
        &mut gate,
        &Req::mcp(&tok, call("calendar_write", json!({}))),
    );
    assert_eq!(
        (o.decision.status(), o.decision.reason()),
        (403, "tool.scope")
    );
    let www = o
        .decision
        .response_headers()
        .iter()
        .find(|(k, _)| k == "www-authenticate")
        .unwrap();
    assert_eq!(
        www.1,
        "Txn-Token error=\"insufficient_scope\", scope=\"calendar:write\""
    );
    let body: Value = serde_json::from_str(o.decision.body().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], -31403);
    assert_eq!(
        reason_of(&mut gate, &Req::mcp(&tok, call("delete_repo", json!({})))),
        (403, "tool.denied")
    );
    assert_eq!(
        reason_of(&mut gate, &Req::mcp(&tok, call("unknown_tool", json!({})))),
        (403, "tool.no_rule")
    );
    assert_eq!(
        reason_of(
            &mut gate,
            &Req::mcp(&tok, call("send_email", json!({"to":"eve@example.com"})))
        ),
        (403, "tool.constraint")
    );
    assert_eq!(
        reason_of(&mut gate, &Req::mcp(&tok, call("send_email", json!({})))),
        (403, "tool.constraint")
    );
    assert_eq!(
        reason_of(
            &mut gate,
            &Req::mcp(&tok, call("send_email", json!({"to":"carol@example.com"})))
        )
        .1,
        "allow"
    );
    // Names are case-sensitive: a case variant of a rule is refused outright, never sent to `*`.
    assert_eq!(
        reason_of(&mut gate, &Req::mcp(&tok, call("DELETE_REPO", json!({})))),
        (403, "tool.name_variant")
    );
    let o = decide(&mut gate, &Req::mcp(&tok, call("audit_me", json!({}))));
    assert_eq!(
        (o.decision.status(), o.decision.reason()),
        (200, "allow.dry_run")
    );
    assert_eq!(o.audit.dry_run_reason, Some("tool.scope"));
}

#[test]
fn other_mcp_methods_and_paths_need_only_a_valid_token() {
    let mut gate = gate_with(&policy());
    let tok = token(&claims());
    let init = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#.to_vec();
    assert_eq!(reason_of(&mut gate, &Req::mcp(&tok, init)).1, "allow");
    let mut req = Req::mcp(&tok, vec![]);
    req.method = "GET";
    req.body = None;
    assert_eq!(reason_of(&mut gate, &req).1, "allow");
    let mut req = Req::mcp(&tok, vec![]);
    req.path = "/healthz";
    req.body = None;
    assert_eq!(reason_of(&mut gate, &req).1, "allow");
    let o = decide(
        &mut gate,
        &Req {
            headers: vec![],
            ..Req::mcp("", vec![])
        }
        .tap_path("/api"),
    );
    let b: Value = serde_json::from_str(o.decision.body().unwrap()).unwrap();
    assert_eq!(
        b["error"], "invalid_token",
        "non-MCP paths get an OAuth error body"
    );
}

trait TapPath {
    fn tap_path(self, path: &'static str) -> Self;
}
impl TapPath for Req {
    fn tap_path(mut self, path: &'static str) -> Self {
        self.path = path;
        self.body = None;
        self
    }
}

#[test]
fn tools_list_is_filtered_for_the_caller() {
    let mut gate = gate_with(&policy());
    let tok = token(&claims());
    let o = decide(
        &mut gate,
        &Req::mcp(
            &tok,
            br#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#.to_vec(),
        ),
    );
    let filter = o
        .decision
        .list_filter()
        .expect("tools/list responses are filtered");
    let list = json!({"jsonrpc":"2.0","id":3,"result":{"tools":[
        {"name":"send_email"},{"name":"calendar_read"},{"name":"calendar_write"},{"name":"delete_repo"},{"name":"other"},{"name":"audit_me"}]}});
    let out: Value = serde_json::from_slice(
        &filter
            .apply("application/json", list.to_string().as_bytes())
            .unwrap(),
    )
    .unwrap();
    let names: Vec<&str> = out["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["send_email", "calendar_read", "audit_me"]);
}

#[test]
fn eleventh_call_gets_429_with_retry_after() {
    let mut gate = gate_with(&policy());
    let tok = token(&claims());
    let req = Req::mcp(&tok, send_email());
    let mut store = MemoryStore::new();
    for i in 0..10 {
        let o = gate.decide(
            &req.request(),
            NOW * 1000 + i,
            txngate_core::Verification::Core,
            &mut store,
        );
        assert_eq!(o.decision.reason(), "allow", "call {i}");
    }
    let o = gate.decide(
        &req.request(),
        NOW * 1000 + 10,
        txngate_core::Verification::Core,
        &mut store,
    );
    assert_eq!(
        (o.decision.status(), o.decision.reason()),
        (429, "ratelimit.exceeded")
    );
    let h: std::collections::HashMap<_, _> =
        o.decision.response_headers().iter().cloned().collect();
    assert_eq!(h["retry-after"], "6");
    assert_eq!(h["ratelimit-policy"], "\"send_email\";q=10;w=60");
    assert!(h["ratelimit"].starts_with("\"send_email\";r=0;"));
    let body: Value = serde_json::from_str(o.decision.body().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], -31429);
    // Another agent of the same user has its own bucket.
    let other = token(&with(
        claims(),
        json!({"act": {"sub": "spiffe://trust.example/agent/other", "act": {"sub": "spiffe://trust.example/orchestrator"}}}),
    ));
    let o = gate.decide(
        &Req::mcp(&other, send_email()).request(),
        NOW * 1000 + 11,
        txngate_core::Verification::Core,
        &mut store,
    );
    assert_eq!(o.decision.reason(), "allow");
}

struct Broken;
impl Limiter for Broken {
    fn consume(&mut self, _: &str, _: &LimitRule, _: u64) -> Result<LimitState, StoreError> {
        Err(StoreError::Backend {
            detail: "down".into(),
        })
    }
}

#[test]
fn store_failures_fail_closed_unless_the_rule_says_otherwise() {
    let mut gate = gate_with(&policy());
    let tok = token(&claims());
    let req = Req::mcp(&tok, send_email());
    let o = gate.decide(
        &req.request(),
        NOW * 1000,
        txngate_core::Verification::Core,
        &mut Broken,
    );
    assert_eq!(
        (o.decision.status(), o.decision.reason()),
        (503, "ratelimit.store_error")
    );
    let mut p = policy();
    p["tools"]["send_email"]["rate_limit"]["on_store_error"] = json!("allow");
    let mut gate = gate_with(&p);
    assert_eq!(
        gate.decide(
            &req.request(),
            NOW * 1000,
            txngate_core::Verification::Core,
            &mut Broken
        )
        .decision
        .reason(),
        "allow"
    );
}

#[test]
fn sans_io_steps_let_the_host_verify_and_limit() {
    let mut gate = gate_with(&policy());
    let tok = token(&claims());
    let req = Req::mcp(&tok, send_email());
    let Step::VerifySignature(pending) =
        gate.evaluate(&req.request(), NOW * 1000, txngate_core::Verification::Core)
    else {
        panic!("expected a signature step")
    };
    assert_eq!(pending.algorithm(), txngate_core::Algorithm::EdDSA);
    assert_eq!(pending.key().kid(), Some("ed"));
    assert_eq!(pending.key().jwk()["crv"], "Ed25519");
    assert!(tok.starts_with(std::str::from_utf8(pending.signing_input()).unwrap()));
    let Step::ConsultLimiter(limit) = gate.resume_signature(*pending, true) else {
        panic!("expected a limit step")
    };
    assert!(limit.bucket_key().contains("send_email"));
    let mut store = MemoryStore::new();
    let state = txngate_core::ratelimit::consume(
        &mut store,
        limit.bucket_key(),
        limit.rule(),
        limit.now_ms(),
    )
    .unwrap();
    // Every resume returns the next step: after the limit, the outcome.
    let Step::Done(o) = gate.resume_limit(*limit, Ok(state)) else {
        panic!("expected the outcome")
    };
    assert_eq!(o.decision.reason(), "allow");
    // A host that reports a failed check gets a refusal.
    let mut gate = gate_with(&policy());
    let Step::VerifySignature(pending) =
        gate.evaluate(&req.request(), NOW * 1000, txngate_core::Verification::Core)
    else {
        panic!()
    };
    let Step::Done(o) = gate.resume_signature(*pending, false) else {
        panic!()
    };
    assert_eq!(o.decision.reason(), "token.signature");
}

#[test]
fn remote_keys_refetch_on_unknown_kid_and_fail_closed_when_stale() {
    let p = json!({
        "trust_domain": TD,
        "issuers": [{"name": "tts", "jwks_uri": "https://tts.example/jwks", "refresh_seconds": 60, "max_stale_seconds": 120, "min_refetch_seconds": 10}],
        "agents": {"spiffe://trust.example/**": {"max_scopes": ["*"]}},
        "tools": {"*": {}}
    });
    let mut gate = gate_with(&p);
    let tok = token(&claims());
    let req = Req::mcp(&tok, send_email());
    let now = NOW * 1000;
    let o = gate.decide(
        &req.request(),
        now,
        txngate_core::Verification::Core,
        &mut MemoryStore::new(),
    );
    assert_eq!(
        (o.decision.status(), o.decision.reason()),
        (503, "keys.unavailable")
    );
    assert_eq!(
        o.refetch_issuer,
        Some(0),
        "keys never fetched: the host is asked to fetch"
    );
    assert_eq!(gate.refresh_due(now), vec![0]);
    let only_ec = json!({"keys": [jwks()["keys"][1].clone()]});
    gate.install_jwks(0, &serde_json::to_vec(&only_ec).unwrap(), now)
        .unwrap();
    let o = gate.decide(
        &req.request(),
        now + 1,
        txngate_core::Verification::Core,
        &mut MemoryStore::new(),
    );
    assert_eq!(o.decision.reason(), "token.kid_unknown");
    assert_eq!(
        o.refetch_issuer, None,
        "refetches are debounced (10 s here)"
    );
    let o = gate.decide(
        &req.request(),
        now + 10_000,
        txngate_core::Verification::Core,
        &mut MemoryStore::new(),
    );
    assert_eq!(
        o.refetch_issuer,
        Some(0),
        "an unknown kid asks the host to refetch"
    );
    let later = now + 10_001;
    gate.install_jwks(0, &serde_json::to_vec(&jwks()).unwrap(), later)
        .unwrap();
    assert_eq!(
        gate.decide(
            &req.request(),
            later + 1,
            txngate_core::Verification::Core,
            &mut MemoryStore::new()
        )
        .decision
        .reason(),
        "allow"
    );
    // Past max_stale without a successful fetch, the last good keys are no longer trusted.
    let late = gate.decide(
        &req.request(),
        later + 120_001,
        txngate_core::Verification::Core,
        &mut MemoryStore::new(),
    );
    assert_eq!(late.decision.reason(), "keys.unavailable");
}

#[test]
fn identity_headers_are_recognised_for_stripping() {
    assert!(is_identity_header("X-TxnGate-Agent"));
    assert!(is_identity_header("x-txngate-"));
    assert!(!is_identity_header("x-txn"));
    assert!(!is_identity_header("txn-token"));
}

#[test]
fn store_cas_semantics_of_the_memory_store() {
    let mut s = MemoryStore::new();
    assert!(s.compare_and_swap("k", None, b"a").unwrap());
    assert!(!s.compare_and_swap("k", None, b"b").unwrap());
    let (_, v) = s.load("k").unwrap().unwrap();
    assert!(s.compare_and_swap("k", Some(v), b"c").unwrap());
    assert!(!s.compare_and_swap("k", Some(v), b"d").unwrap());
}

#[test]
fn issuer_claim_and_ambiguous_kids() {
    let mut p = policy();
    p["issuers"][0]["iss"] = json!("https://tts.trust.example");
    let mut gate = gate_with(&p);
    let body = send_email();
    assert_eq!(
        reason_of(&mut gate, &Req::mcp(&token(&claims()), body.clone())),
        (401, "token.issuer")
    );
    let with_iss = token(&with(claims(), json!({"iss": "https://tts.trust.example"})));
    assert_eq!(
        reason_of(&mut gate, &Req::mcp(&with_iss, body.clone())).1,
        "allow"
    );
    let wrong_iss = token(&with(claims(), json!({"iss": "https://evil.example"})));
    assert_eq!(
        reason_of(&mut gate, &Req::mcp(&wrong_iss, body.clone())),
        (401, "token.issuer")
    );

    // Two remote issuers publishing the same kid: the token cannot say which one it means.
    let p = json!({
        "trust_domain": TD,
        "issuers": [{"name": "a", "jwks_uri": "https://a/jwks"}, {"name": "b", "jwks_uri": "https://b/jwks"}],
        "agents": {"spiffe://trust.example/**": {"max_scopes": ["*"]}},
        "tools": {"*": {}}
    });
    let mut gate = gate_with(&p);
    let set = serde_json::to_vec(&jwks()).unwrap();
    gate.install_jwks(0, &set, NOW * 1000).unwrap();
    gate.install_jwks(1, &set, NOW * 1000).unwrap();
    assert_eq!(
        reason_of(&mut gate, &Req::mcp(&token(&claims()), body)),
        (401, "token.kid_ambiguous")
    );
}

#[test]
fn header_that_is_not_json_is_refused() {
    let mut gate = gate_with(&policy());
    let tok = format!(
        "{}.{}.{}",
        encode_b64url(b"not json"),
        encode_b64url(b"{}"),
        encode_b64url(&[0u8; 64])
    );
    assert_eq!(
        reason_of(&mut gate, &Req::mcp(&tok, send_email())),
        (401, "token.header")
    );
}

#[test]
fn cached_tokens_do_not_outlive_stale_keys() {
    let p = json!({
        "trust_domain": TD,
        "issuers": [{"name": "tts", "jwks_uri": "https://tts.example/jwks", "refresh_seconds": 60, "max_stale_seconds": 120}],
        "token": {"max_lifetime_seconds": 300},
        "agents": {"spiffe://trust.example/**": {"max_scopes": ["*"]}},
        "tools": {"*": {}}
    });
    let mut gate = gate_with(&p);
    let now = NOW * 1000;
    gate.install_jwks(0, &serde_json::to_vec(&jwks()).unwrap(), now)
        .unwrap();
    let tok = token(&with(claims(), json!({"exp": NOW + 300})));
    let req = Req::mcp(&tok, send_email());
    assert_eq!(
        gate.decide(
            &req.request(),
            now,
            txngate_core::Verification::Core,
            &mut MemoryStore::new()
        )
        .decision
        .reason(),
        "allow"
    );
    let cached = gate.decide(
        &req.request(),
        now + 1000,
        txngate_core::Verification::Core,
        &mut MemoryStore::new(),
    );
    assert!(cached.audit.cached);
    let stale = gate.decide(
        &req.request(),
        now + 120_001,
        txngate_core::Verification::Core,
        &mut MemoryStore::new(),
    );
    assert_eq!(
        (stale.decision.status(), stale.decision.reason()),
        (503, "keys.unavailable")
    );
}

#[test]
fn hosts_agree_on_joined_headers_and_empty_bodies() {
    let mut gate = gate_with(&policy());
    let tok = token(&claims());
    // One header value holding two tokens joined by a comma is two tokens.
    let mut req = Req::mcp(&format!("{tok}, {tok}"), send_email());
    assert_eq!(reason_of(&mut gate, &req), (400, "token.multiple"));
    // A repeated Mcp-Name is refused, as two entries (Envoy) or joined into one value (fetch), even when
    // each copy matches the body.
    req = Req::mcp(&tok, send_email());
    req.headers.push(("mcp-name".into(), "send_email".into()));
    req.headers.push(("Mcp-Name".into(), "send_email".into()));
    assert_eq!(reason_of(&mut gate, &req), (400, "mcp.header_repeated"));
    req = Req::mcp(&tok, send_email());
    req.headers
        .push(("mcp-name".into(), "send_email, send_email".into()));
    assert_eq!(reason_of(&mut gate, &req), (400, "mcp.header_repeated"));
    // An empty body is no body.
    assert_eq!(
        reason_of(&mut gate, &Req::mcp(&tok, Vec::new())),
        (400, "mcp.body_missing")
    );
}

#[test]
fn refused_tokens_within_the_size_cap_are_audited_by_hash() {
    let mut gate = gate_with(&policy());
    let tok = sign_raw(
        &json!({"alg":"EdDSA","typ":"JWT","kid":"ed"}),
        &serde_json::to_vec(&claims()).unwrap(),
        "ed",
    );
    let o = decide(&mut gate, &Req::mcp(&tok, send_email()));
    assert_eq!(o.decision.reason(), "token.typ");
    assert_eq!(
        o.audit.token_sha256.as_deref(),
        Some(txngate_core::encoding::sha256_hex(tok.as_bytes()).as_str())
    );
    let huge = "x".repeat(9000);
    assert!(decide(&mut gate, &Req::mcp(&huge, send_email()))
        .audit
        .token_sha256
        .is_none());
}

fn body_of(o: &Outcome) -> Value {
    serde_json::from_str(o.decision.body().unwrap()).unwrap()
}

/// Every refusal of a body with a usable id answers that id, whatever the refusal is about (the token, the
/// routing headers, the body's own content); without one the `id` member is absent, never `null`.
#[test]
fn refusals_answer_the_request_id() {
    let mut gate = gate_with(&policy());
    let tok = token(&claims());
    for (body, reason, code) in [
        (
            json!({"jsonrpc":"2.0","id":"r-1","method":"tools/call","params":{"name":""}}),
            "mcp.tool_name",
            -32602,
        ),
        (
            json!({"jsonrpc":"2.0","id":"r-1","method":"tools/call","params":{"name":"send\u{7}email"}}),
            "mcp.tool_name",
            -32602,
        ),
        (
            json!({"jsonrpc":"2.0","id":"r-1","method":"tools/call","params":{"name":"send_email","arguments":[]}}),
            "mcp.arguments",
            -32602,
        ),
        (
            json!({"jsonrpc":"2.0","id":"r-1","method":"prompts/get","params":{}}),
            "mcp.prompt_name",
            -32602,
        ),
        (
            json!({"jsonrpc":"2.0","id":"r-1","method":"resources/read","params":{"uri":5}}),
            "mcp.resource_uri",
            -32602,
        ),
        (
            json!({"jsonrpc":"2.0","id":"r-1","method":"tools/list","params":7}),
            "mcp.invalid",
            -32600,
        ),
    ] {
        let o = decide(
            &mut gate,
            &Req::mcp(&tok, serde_json::to_vec(&body).unwrap()),
        );
        assert_eq!(
            (o.decision.status(), o.decision.reason()),
            (400, reason),
            "{body}"
        );
        let reply = body_of(&o);
        assert_eq!(reply["id"], "r-1", "{body}");
        assert_eq!(reply["error"]["code"], code, "{body}");
        assert_eq!(reply["error"]["data"]["reason"], reason);
        assert_eq!(o.audit.rpc_id, Some(json!("r-1")));
    }
    // The token is refused first, and that refusal answers the id too.
    let o = decide(
        &mut gate,
        &Req::mcp(
            "x",
            br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":""}}"#.to_vec(),
        ),
    );
    assert_eq!(o.decision.reason(), "token.malformed");
    assert_eq!(body_of(&o)["id"], 3);
    // No usable id: no id member.
    for body in [
        b"{".to_vec(),
        br#"{"jsonrpc":"2.0","id":null,"method":"tools/list"}"#.to_vec(),
        br#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":""}}"#.to_vec(),
    ] {
        let o = decide(&mut gate, &Req::mcp(&tok, body.clone()));
        assert_eq!(o.decision.status(), 400);
        let reply = body_of(&o);
        assert!(reply.get("id").is_none(), "{reply}");
        assert_eq!(reply["jsonrpc"], "2.0");
    }
    let mut req = Req::mcp("", send_email());
    req.headers.clear();
    req.body = None;
    let o = decide(&mut gate, &req);
    assert_eq!(o.decision.reason(), "token.missing");
    assert!(body_of(&o).get("id").is_none());
}

/// The routing headers of MCP 2026-07-28 through the whole gate: per method, base64, repetition, required on
/// the new version, the version against `_meta`; every refusal 400 / -32020 with the request's id.
#[test]
fn routing_headers_through_the_gate() {
    let mut gate = gate_with(&policy());
    let tok = token(&claims());
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28"});
    let modern = |method: &str, mut params: Value| {
        params["_meta"] = meta.clone();
        serde_json::to_vec(&json!({"jsonrpc":"2.0","id":5,"method":method,"params":params}))
            .unwrap()
    };
    let with_headers = |body: Vec<u8>, headers: &[(&str, &str)]| {
        let mut req = Req::mcp(&tok, body);
        req.headers
            .extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        req
    };
    let v = ("MCP-Protocol-Version", "2026-07-28");
    let cases: Vec<(Req, u16, &str)> = vec![
        (
            with_headers(
                modern(
                    "tools/call",
                    json!({"name":"send_email","arguments":{"to":"bob@example.com"}}),
                ),
                &[v, ("Mcp-Method", "tools/call"), ("Mcp-Name", "send_email")],
            ),
            200,
            "allow",
        ),
        (
            with_headers(
                modern(
                    "tools/call",
                    json!({"name":"send_email","arguments":{"to":"bob@example.com"}}),
                ),
                &[
                    v,
                    ("Mcp-Method", "tools/call"),
                    ("Mcp-Name", "=?base64?c2VuZF9lbWFpbA==?="),
                ],
            ),
            200,
            "allow",
        ),
        (
            with_headers(
                modern("prompts/get", json!({"name":"code_review"})),
                &[
                    v,
                    ("Mcp-Method", "prompts/get"),
                    ("Mcp-Name", "code_review"),
                ],
            ),
            200,
            "allow",
        ),
        (
            with_headers(
                modern("resources/read", json!({"uri":"file:///docs/é.txt"})),
                &[
                    v,
                    ("Mcp-Method", "resources/read"),
                    ("Mcp-Name", "=?base64?ZmlsZTovLy9kb2NzL8OpLnR4dA==?="),
                ],
            ),
            200,
            "allow",
        ),
        (
            with_headers(
                modern("server/discover", json!({})),
                &[v, ("Mcp-Method", "server/discover")],
            ),
            200,
            "allow",
        ),
        (
            with_headers(
                modern("resources/read", json!({"uri":"file:///docs/a.txt"})),
                &[
                    v,
                    ("Mcp-Method", "resources/read"),
                    ("Mcp-Name", "file:///etc/passwd"),
                ],
            ),
            400,
            "mcp.header_mismatch",
        ),
        (
            with_headers(
                modern("tools/call", json!({"name":"send_email"})),
                &[v, ("Mcp-Method", "tools/call")],
            ),
            400,
            "mcp.header_missing",
        ),
        (
            with_headers(
                modern("tools/call", json!({"name":"send_email"})),
                &[
                    v,
                    ("Mcp-Method", "tools/call"),
                    ("Mcp-Method", "tools/call"),
                    ("Mcp-Name", "send_email"),
                ],
            ),
            400,
            "mcp.header_repeated",
        ),
        (
            with_headers(
                modern("tools/call", json!({"name":"send_email"})),
                &[
                    v,
                    ("Mcp-Method", "tools/call"),
                    ("Mcp-Name", "=?base64?c2VuZF9lbWFpbA?="),
                ],
            ),
            400,
            "mcp.header_invalid",
        ),
        (
            with_headers(
                modern("tools/list", json!({})),
                &[
                    ("MCP-Protocol-Version", "2025-11-25"),
                    ("Mcp-Method", "tools/list"),
                ],
            ),
            400,
            "mcp.header_mismatch",
        ),
    ];
    for (req, status, reason) in cases {
        let o = decide(&mut gate, &req);
        assert_eq!((o.decision.status(), o.decision.reason()), (status, reason));
        if status == 400 {
            let reply = body_of(&o);
            assert_eq!(reply["id"], 5);
            assert_eq!(reply["error"]["code"], -32020);
        }
    }
}

/// One driver: `decide` counts a remote limit on its limiter (no rate limit service here), `drive` hands
/// it back to the host as a step, and every `resume_*` returns a step the driver can go on from.
#[test]
fn the_driver_counts_a_remote_limit_or_hands_it_back() {
    let mut p = policy();
    p["tools"]["send_email"]["rate_limit"] =
        json!({"key": "agent", "limit": 1, "period_seconds": 60, "remote": {}});
    p["rate_limit_service"] = json!({"cluster": "ratelimit", "domain": "txngate"});
    let tok = token(&claims());
    let req = Req::mcp(&tok, send_email());

    let mut gate = gate_with(&p);
    let mut store = MemoryStore::new();
    let first = gate.decide(
        &req.request(),
        NOW * 1000,
        txngate_core::Verification::Core,
        &mut store,
    );
    assert_eq!(first.decision.reason(), "allow");
    let second = gate.decide(
        &req.request(),
        NOW * 1000 + 1,
        txngate_core::Verification::Core,
        &mut store,
    );
    assert_eq!(second.decision.reason(), "ratelimit.exceeded");

    let mut gate = gate_with(&p);
    let step = gate.evaluate(&req.request(), NOW * 1000, txngate_core::Verification::Core);
    let Step::ConsultLimiter(pending) = gate.drive(
        step,
        txngate_core::Verification::Core,
        &mut MemoryStore::new(),
    ) else {
        panic!("a remote limit comes back to the host")
    };
    assert!(pending.remote().is_some());
    let refused = Err(StoreError::Backend {
        detail: "the service did not answer".into(),
    });
    let step = gate.resume_limit(*pending, refused);
    let Step::Done(o) = gate.drive(
        step,
        txngate_core::Verification::Core,
        &mut MemoryStore::new(),
    ) else {
        panic!("the limit was the last step")
    };
    assert_eq!(o.decision.status(), 503);
    assert!(o.reply_to.is_mcp());
}

//! Txn-Token header values through `UntrustedToken::parse` and a whole `Gate::decide` with a fixed policy.
//!
//! The first byte picks the mode:
//! - even: the rest is the raw `Txn-Token` header value (shape, base64url, header JSON, kid lookup, signature);
//! - odd: the rest is `header JSON \0 claims JSON \0 MCP body`, signed here with the policy's Ed25519 key, so
//!   the fuzzer reaches what only a validly signed token reaches (claims, delegation, tool rules, limits).
//!
//! Beyond "never panics", every decision must hold these invariants: the token never appears in the audit
//! line, the response body or any header; an allow is a 200 without body, a deny one of the known statuses;
//! the `delete_repo` deny rule never lets any spelling of that tool through.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use txngate_core::encoding::encode_b64url;
use txngate_core::mcp::is_valid_tool_name;
use txngate_core::ratelimit::MemoryStore;
use txngate_core::token::UntrustedToken;
use txngate_core::{Body, Decision, Gate, Request, Verification};

const NOW_MS: u64 = 1_800_000_000_000;
const MAX_BYTES: usize = 8192;

fn key_pair() -> &'static ed25519_compact::KeyPair {
    static KEY: OnceLock<ed25519_compact::KeyPair> = OnceLock::new();
    KEY.get_or_init(|| ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7u8; 32])))
}

fn gate() -> &'static Mutex<Gate> {
    static GATE: OnceLock<Mutex<Gate>> = OnceLock::new();
    GATE.get_or_init(|| {
        let x = encode_b64url(key_pair().pk.as_ref());
        let policy = serde_json::json!({
            "trust_domain": "trust.example",
            "issuers": [{"name": "tts", "algorithms": ["EdDSA", "ES256"], "jwks": {"keys": [
                {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "ed"},
                {"kty": "EC", "crv": "P-256", "kid": "ec",
                 "x": "cTX6T9k6Cdzpi79oG0v89Q58DWNU5ir7C_8qNClheGU",
                 "y": "7UwfAt25Aj7lalV-UV1qncZsEfIglg3llDNN9Yh3ZyQ"}
            ]}}],
            "token": {"max_bytes": MAX_BYTES, "cache_entries": 0},
            "agents": {
                "spiffe://trust.example/gw": {"max_scopes": ["*"]},
                "spiffe://trust.example/agent/*": {"max_scopes": ["calendar:read", "email:send"]}
            },
            "delegation": {"max_depth": 2},
            "tools": {
                "send_email": {"scopes": ["email:send"],
                               "constraints": [{"argument": "/to", "claim": "/tctx/recipient"}],
                               "rate_limit": {"key": "agent", "limit": 3, "period_seconds": 60}},
                "calendar_read": {"scopes": ["calendar:read"]},
                "delete_repo": {"effect": "deny"},
                "*": {}
            },
            "audit": {"arguments": "full"}
        });
        let bytes = serde_json::to_vec(&policy).unwrap_or_default();
        match Gate::from_json(&bytes) {
            Ok(gate) => Mutex::new(gate),
            Err(e) => panic!("fuzz policy does not compile: {e}"),
        }
    })
}

const DEFAULT_BODY: &[u8] =
    br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send_email","arguments":{"to":"bob@example.com"}}}"#;

fn signed(header: &[u8], claims: &[u8]) -> String {
    let input = format!("{}.{}", encode_b64url(header), encode_b64url(claims));
    let sig = key_pair().sk.sign(input.as_bytes(), None);
    format!("{input}.{}", encode_b64url(sig.as_ref()))
}

fn check_parse(raw: &str) {
    if let Ok(t) = UntrustedToken::parse(raw, MAX_BYTES) {
        assert!(raw.len() <= MAX_BYTES);
        assert!(raw.starts_with(t.signing_input()));
        let _ = (t.algorithm(), t.kid(), t.signature(), t.payload());
    }
}

fn decide(raw: &str, body: &[u8]) {
    let headers = vec![("Txn-Token".to_string(), raw.to_string())];
    let request = Request {
        method: "POST",
        path: "/mcp",
        headers: &headers,
        body: Body::Complete(body),
        peer: None,
    };
    let outcome = {
        let mut gate = gate()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        gate.decide(&request, NOW_MS, Verification::Core, &mut MemoryStore::new())
    };
    let d = &outcome.decision;
    match d {
        Decision::Allowed(_) => {
            if let Some(tool) = &outcome.audit.tool {
                assert!(
                    is_valid_tool_name(tool),
                    "allowed an invalid tool name {tool:?}"
                );
                assert!(
                    !tool.eq_ignore_ascii_case("delete_repo"),
                    "allowed {tool:?} under a deny rule"
                );
            }
        }
        Decision::Denied(denied) => assert!(
            matches!(denied.reply.status, 400 | 401 | 403 | 413 | 429 | 503),
            "unexpected status {} ({})",
            denied.reply.status,
            denied.reason
        ),
    }
    let trimmed = raw.trim_matches([' ', '\t']);
    if trimmed.len() >= 24 {
        assert!(
            !outcome.audit.to_json().contains(trimmed),
            "token in the audit line"
        );
        assert!(
            !d.body.as_deref().unwrap_or("").contains(trimmed),
            "token in the body"
        );
        for (k, v) in d.response_headers.iter().chain(&d.upstream_headers) {
            assert!(!v.contains(trimmed), "token in header {k}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let raw = String::from_utf8_lossy(rest);
        check_parse(&raw);
        decide(&raw, DEFAULT_BODY);
    } else {
        let mut parts = rest.splitn(3, |b| *b == 0);
        let header = parts.next().unwrap_or_default();
        let claims = parts.next().unwrap_or_default();
        let body = parts
            .next()
            .filter(|b| !b.is_empty())
            .unwrap_or(DEFAULT_BODY);
        let raw = signed(header, claims);
        check_parse(&raw);
        decide(&raw, body);
    }
});

//! Prompts, resources and names through the whole gate (issue #12): every name-bearing method authorized by
//! its section, per-kind reasons and audit fields, rate-limit buckets per kind, dry-run, and every list
//! filtered per caller and marked private.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::{json, Value};
use txngate_core::encoding::encode_b64url;
use txngate_core::ratelimit::{LimitRule, LimitState, MemoryStore, StoreError};
use txngate_core::{Body, Gate, Limiter, Outcome, Request};

const NOW: u64 = 1_800_000_000;
const TD: &str = "trust.example";

fn ed_pair() -> ed25519_compact::KeyPair {
    ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7u8; 32]))
}

fn base_policy() -> Value {
    json!({
        "trust_domain": TD,
        "issuers": [{"name": "tts", "jwks": {"keys": [
            {"kty":"OKP","crv":"Ed25519","x": encode_b64url(ed_pair().pk.as_ref()),"kid":"ed"}]},
            "algorithms": ["EdDSA"]}],
        "agents": {
            "spiffe://trust.example/gw": {"max_scopes": ["*"]},
            "spiffe://trust.example/agent/*": {"max_scopes": ["prompts:*", "docs:read", "email:send"]}
        },
        "tools": {
            "send_email": {"scopes": ["email:send"]},
            "review": {"rate_limit": {"key": "tool", "limit": 1, "period_seconds": 3600}},
            "a:b": {"rate_limit": {"key": "agent", "limit": 1, "period_seconds": 3600}},
            "a": {"rate_limit": {"key": "agent", "limit": 1, "period_seconds": 3600}}
        }
    })
}

fn policy() -> Value {
    let mut p = base_policy();
    p["prompts"] = json!({
        "code_review": {"scopes": ["prompts:review"],
                        "constraints": [{"argument": "/repo", "claim": "/tctx/repo"}]},
        "summarize": {},
        "admin_report": {"scopes": ["admin:report"]},
        "dry_admin": {"scopes": ["admin:report"], "mode": "dry_run"},
        "review": {"rate_limit": {"key": "tool", "limit": 1, "period_seconds": 3600}},
        "Weird prompt!": {},
        "locked": {"effect": "deny"}
    });
    p["resources"] = json!({
        "file:///docs/**": {"scopes": ["docs:read"],
                            "rate_limit": {"key": "agent", "limit": 2, "period_seconds": 3600}},
        "file:///docs/public.txt": {},
        "file:///pub/*.txt": {},
        "file:///admin/*": {"scopes": ["admin:read"]},
        "db://*/users/*": {"effect": "deny"},
        "*": {"effect": "deny"}
    });
    p
}

fn gate_with(p: &Value) -> Gate {
    Gate::from_json(&serde_json::to_vec(p).unwrap()).unwrap()
}

fn token_for(agent: &str, scope: &str) -> String {
    let claims = json!({
        "iat": NOW, "exp": NOW + 60, "aud": TD, "txn": "txn-1", "sub": "user:alice", "scope": scope,
        "req_wl": "spiffe://trust.example/gw", "tctx": {"repo": "acme/api"},
        "act": {"sub": agent}
    });
    let header = json!({"alg": "EdDSA", "typ": "txntoken+jwt", "kid": "ed"});
    let input = format!(
        "{}.{}",
        encode_b64url(&serde_json::to_vec(&header).unwrap()),
        encode_b64url(&serde_json::to_vec(&claims).unwrap())
    );
    let sig = ed_pair().sk.sign(input.as_bytes(), None);
    format!("{input}.{}", encode_b64url(sig.as_ref()))
}

fn token() -> String {
    token_for(
        "spiffe://trust.example/agent/a",
        "prompts:review docs:read email:send",
    )
}

fn rpc(method: &str, params: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"jsonrpc":"2.0","id":9,"method":method,"params":params})).unwrap()
}

fn prompt(name: &str, args: Value) -> Vec<u8> {
    rpc("prompts/get", json!({"name": name, "arguments": args}))
}

fn read(uri: &str) -> Vec<u8> {
    rpc("resources/read", json!({"uri": uri}))
}

/// A limiter over a memory store that records the bucket keys it was asked for.
#[derive(Default)]
struct Recording {
    store: MemoryStore,
    keys: Vec<String>,
}

impl Limiter for Recording {
    fn consume(
        &mut self,
        key: &str,
        rule: &LimitRule,
        now_ms: u64,
    ) -> Result<LimitState, StoreError> {
        self.keys.push(key.to_string());
        Limiter::consume(&mut self.store, key, rule, now_ms)
    }
}

fn decide_in(gate: &mut Gate, tok: &str, body: Vec<u8>, limiter: &mut dyn Limiter) -> Outcome {
    let headers = vec![("Txn-Token".to_string(), tok.to_string())];
    let request = Request {
        method: "POST",
        path: "/mcp",
        headers: &headers,
        body: Body::Complete(&body),
        peer: None,
    };
    gate.decide(
        &request,
        NOW * 1000,
        txngate_core::Verification::Core,
        limiter,
    )
}

fn decide(gate: &mut Gate, tok: &str, body: Vec<u8>) -> Outcome {
    decide_in(gate, tok, body, &mut MemoryStore::new())
}

fn verdict(gate: &mut Gate, tok: &str, body: Vec<u8>) -> (u16, &'static str) {
    let o = decide(gate, tok, body);
    (o.decision.status(), o.decision.reason())
}

fn header<'a>(o: &'a Outcome, name: &str) -> Option<&'a str> {
    o.decision
        .response_headers()
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn prompts_are_authorized_by_their_rules() {
    let mut gate = gate_with(&policy());
    let tok = token();
    let o = decide(
        &mut gate,
        &tok,
        prompt("code_review", json!({"repo": "acme/api"})),
    );
    assert_eq!(o.decision.reason(), "allow");
    assert_eq!(o.audit.prompt.as_deref(), Some("code_review"));
    assert_eq!(o.audit.rule.as_deref(), Some("code_review"));
    assert!(o.audit.tool.is_none());
    assert!(o.audit.arguments_sha256.is_some());

    let o = decide(&mut gate, &tok, prompt("admin_report", json!({})));
    assert_eq!(
        (o.decision.status(), o.decision.reason()),
        (403, "prompt.scope")
    );
    assert_eq!(
        header(&o, "www-authenticate"),
        Some("Txn-Token error=\"insufficient_scope\", scope=\"admin:report\"")
    );
    for (body, expected) in [
        (
            prompt("code_review", json!({"repo": "acme/other"})),
            (403, "prompt.constraint"),
        ),
        (prompt("code_review", json!({})), (403, "prompt.constraint")),
        (prompt("locked", json!({})), (403, "prompt.denied")),
        (prompt("unknown", json!({})), (403, "prompt.no_rule")),
        (
            prompt("Code_Review", json!({})),
            (403, "prompt.name_variant"),
        ),
        (
            prompt("ｓｕｍｍａｒｉｚｅ", json!({})),
            (403, "prompt.name_variant"),
        ),
        (
            prompt("other prompt", json!({})),
            (403, "prompt.name_alphabet"),
        ),
        (prompt("Weird prompt!", json!({})), (200, "allow")),
        (
            prompt("weird prompt!", json!({})),
            (403, "prompt.name_variant"),
        ),
        (prompt("summarize", json!({})), (200, "allow")),
    ] {
        assert_eq!(
            verdict(&mut gate, &tok, body.clone()),
            expected,
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
    let o = decide(&mut gate, &tok, prompt("Code_Review", json!({})));
    let detail = o.audit.detail.unwrap();
    assert!(
        detail.contains("\"code_review\""),
        "the detail names the rule: {detail}"
    );
    let body: Value = serde_json::from_str(o.decision.body().unwrap()).unwrap();
    assert_eq!(body["id"], 9);
}

#[test]
fn a_prompt_default_rule_is_never_reached_by_a_variant() {
    let mut p = policy();
    p["prompts"] = json!({"summarize": {"effect": "deny"}, "*": {}});
    let mut gate = gate_with(&p);
    let tok = token();
    assert_eq!(
        verdict(&mut gate, &tok, prompt("anything", json!({}))),
        (200, "allow")
    );
    assert_eq!(
        verdict(&mut gate, &tok, prompt("SUMMARIZE", json!({}))),
        (403, "prompt.name_variant")
    );
    assert_eq!(
        verdict(&mut gate, &tok, prompt("summarize", json!({}))),
        (403, "prompt.denied")
    );
}

#[test]
fn resources_are_authorized_by_uri_pattern() {
    let mut gate = gate_with(&policy());
    let tok = token();
    for (uri, expected, rule) in [
        (
            "file:///docs/public.txt",
            (200, "allow"),
            "file:///docs/public.txt",
        ),
        ("file:///docs/a/b/c.md", (200, "allow"), "file:///docs/**"),
        ("file:///pub/notes.txt", (200, "allow"), "file:///pub/*.txt"),
        ("file:///pub/x/notes.txt", (403, "resource.denied"), "*"),
        (
            "file:///admin/keys",
            (403, "resource.scope"),
            "file:///admin/*",
        ),
        (
            "db://main/users/1",
            (403, "resource.denied"),
            "db://*/users/*",
        ),
        ("https://example.com/", (403, "resource.denied"), "*"),
    ] {
        let o = decide(&mut gate, &tok, read(uri));
        assert_eq!(
            (o.decision.status(), o.decision.reason()),
            expected,
            "{uri}"
        );
        assert_eq!(o.audit.resource.as_deref(), Some(uri));
        assert_eq!(o.audit.rule.as_deref(), Some(rule), "{uri}");
    }
    // Dot-segments, decodable escapes and an uppercase scheme match only an exact rule, not a pattern nor `*`.
    for uri in [
        "file:///docs/../etc/passwd",
        "file:///docs/%2e%2e/etc/passwd",
        "file:///doc%73/public.txt",
        "FILE:///docs/public.txt",
    ] {
        let o = decide(&mut gate, &tok, read(uri));
        assert_eq!(
            (o.decision.status(), o.decision.reason()),
            (403, "resource.no_rule"),
            "{uri}"
        );
        assert_eq!(o.audit.rule, None, "{uri}");
    }
    // An authorized read is for this caller only: no shared HTTP cache may serve it to another.
    let o = decide(&mut gate, &tok, read("file:///docs/public.txt"));
    assert_eq!(header(&o, "cache-control"), Some("private"));
    let o = decide(&mut gate, &tok, prompt("summarize", json!({})));
    assert!(header(&o, "cache-control").is_none());
    let scope_less = token_for("spiffe://trust.example/agent/a", "email:send");
    assert_eq!(
        verdict(&mut gate, &scope_less, read("file:///docs/x")),
        (403, "resource.scope")
    );
    let mut p = policy();
    p["resources"] = json!({});
    let mut gate = gate_with(&p);
    assert_eq!(
        verdict(&mut gate, &tok, read("file:///docs/x")),
        (403, "resource.no_rule")
    );
}

#[test]
fn without_their_sections_prompts_and_resources_pass_on_token_and_delegation() {
    let mut gate = gate_with(&base_policy());
    let tok = token();
    let o = decide(&mut gate, &tok, prompt("anything at all", json!({"x": 1})));
    assert_eq!(o.decision.reason(), "allow");
    assert_eq!(o.audit.prompt.as_deref(), Some("anything at all"));
    assert!(o.audit.rule.is_none());
    let o = decide(&mut gate, &tok, read("file:///etc/passwd"));
    assert_eq!(o.decision.reason(), "allow");
    assert!(
        header(&o, "cache-control").is_none(),
        "no rule, nothing per caller"
    );
    assert_eq!(o.audit.resource.as_deref(), Some("file:///etc/passwd"));
    // Their lists are not filtered; tools/list always is.
    for method in ["prompts/list", "resources/list", "resources/templates/list"] {
        let o = decide(&mut gate, &tok, rpc(method, json!({})));
        assert!(o.decision.list_filter().is_none(), "{method}");
        assert!(header(&o, "cache-control").is_none(), "{method}");
    }
    let o = decide(&mut gate, &tok, rpc("tools/list", json!({})));
    assert!(o.decision.list_filter().is_some());
    assert_eq!(header(&o, "cache-control"), Some("private"));
    // Still refused without a valid delegation.
    let stranger = token_for("spiffe://other.example/x", "docs:read");
    assert_eq!(verdict(&mut gate, &stranger, read("file:///docs/x")).0, 403);
}

#[test]
fn rate_limits_have_per_kind_buckets() {
    let mut gate = gate_with(&policy());
    let tok = token();
    let mut limiter = Recording::default();
    // A tool and a prompt both named `review`, each limited to one call: separate buckets.
    let o = decide_in(
        &mut gate,
        &tok,
        rpc("tools/call", json!({"name": "review"})),
        &mut limiter,
    );
    assert_eq!(o.decision.reason(), "allow");
    let o = decide_in(&mut gate, &tok, prompt("review", json!({})), &mut limiter);
    assert_eq!(o.decision.reason(), "allow");
    assert_eq!(
        header(&o, "ratelimit-policy"),
        Some("\"prompt:review\";q=1;w=3600")
    );
    let o = decide_in(&mut gate, &tok, prompt("review", json!({})), &mut limiter);
    assert_eq!(
        (o.decision.status(), o.decision.reason()),
        (429, "ratelimit.exceeded")
    );
    assert!(o.audit.detail.unwrap().contains("prompt \"review\""));
    assert_ne!(limiter.keys[0], limiter.keys[1]);
    assert_eq!(limiter.keys[1], limiter.keys[2]);
    // A resource rule limits per pattern: two URIs under one pattern share its bucket.
    let mut limiter = Recording::default();
    for (uri, reason) in [
        ("file:///docs/a", "allow"),
        ("file:///docs/b/c", "allow"),
        ("file:///docs/d", "ratelimit.exceeded"),
    ] {
        let o = decide_in(&mut gate, &tok, read(uri), &mut limiter);
        assert_eq!(o.decision.reason(), reason, "{uri}");
        if reason == "allow" {
            assert_eq!(header(&o, "cache-control"), Some("private"));
        }
    }
    assert!(limiter.keys.iter().all(|k| k == &limiter.keys[0]));
    assert!(
        limiter.keys[0].contains("resource-agent"),
        "{}",
        limiter.keys[0]
    );
    // Names with `:` cannot reach into another bucket's segments (`a:b` + agent vs `a` + `b:`agent).
    let mut limiter = Recording::default();
    let o = decide_in(
        &mut gate,
        &tok,
        rpc("tools/call", json!({"name": "a:b"})),
        &mut limiter,
    );
    assert_eq!(o.decision.reason(), "allow");
    let o = decide_in(
        &mut gate,
        &tok,
        rpc("tools/call", json!({"name": "a"})),
        &mut limiter,
    );
    assert_eq!(o.decision.reason(), "allow");
    assert_ne!(limiter.keys[0], limiter.keys[1]);
    assert!(limiter.keys[0].contains(":a%3Ab:"), "{}", limiter.keys[0]);
}

#[test]
fn dry_run_prompt_rules_audit_without_refusing() {
    let mut gate = gate_with(&policy());
    let o = decide(&mut gate, &token(), prompt("dry_admin", json!({})));
    assert_eq!(
        (o.decision.status(), o.decision.reason()),
        (200, "allow.dry_run")
    );
    assert_eq!(o.audit.dry_run_reason, Some("prompt.scope"));
    assert_eq!(o.audit.rule.as_deref(), Some("dry_admin"));
}

fn names(out: &[u8], key: &str, field: &str) -> Vec<String> {
    let v: Value = serde_json::from_slice(out).unwrap();
    assert_eq!(v["result"]["cacheScope"], "private");
    v["result"][key]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[field].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_list_is_filtered_per_caller_and_marked_private() {
    let mut gate = gate_with(&policy());
    let tok = token();
    let list = |gate: &mut Gate, method: &str, key: &str, field: &str, entries: &[&str]| {
        let o = decide(gate, &tok, rpc(method, json!({})));
        assert_eq!(o.decision.reason(), "allow");
        assert_eq!(header(&o, "cache-control"), Some("private"), "{method}");
        let filter = o.decision.list_filter().expect("filtered");
        let entries: Vec<Value> = entries.iter().map(|e| json!({ field: e })).collect();
        let body = json!({"jsonrpc":"2.0","id":9,"result":{key: entries, "cacheScope": "public"}});
        names(
            &filter
                .apply("application/json", body.to_string().as_bytes())
                .unwrap(),
            key,
            field,
        )
    };
    assert_eq!(
        list(
            &mut gate,
            "prompts/list",
            "prompts",
            "name",
            &[
                "code_review",
                "admin_report",
                "dry_admin",
                "locked",
                "unknown",
                "Summarize",
                "summarize",
                "Weird prompt!"
            ]
        ),
        ["code_review", "dry_admin", "summarize", "Weird prompt!"]
    );
    assert_eq!(
        list(
            &mut gate,
            "resources/list",
            "resources",
            "uri",
            &[
                "file:///docs/a.md",
                "file:///admin/x",
                "file:///pub/a.txt",
                "file:///etc/passwd",
                "db://m/users/1"
            ]
        ),
        ["file:///docs/a.md", "file:///pub/a.txt"]
    );
    assert_eq!(
        list(
            &mut gate,
            "resources/templates/list",
            "resourceTemplates",
            "uriTemplate",
            &[
                "file:///docs/{path}",
                "file:///{path}",
                "file:///admin/{name}",
                "db://{db}/users/{id}",
                "https://{host}/"
            ]
        ),
        ["file:///docs/{path}", "file:///{path}"]
    );
}

#[test]
fn sse_list_responses_are_filtered_too() {
    let mut gate = gate_with(&policy());
    let o = decide(&mut gate, &token(), rpc("prompts/list", json!({})));
    let filter = o.decision.list_filter().unwrap();
    let event = json!({"jsonrpc":"2.0","id":9,"result":{"prompts":[{"name":"summarize"},{"name":"locked"}]}});
    let sse = format!("event: message\ndata: {event}\n\n");
    let out =
        String::from_utf8(filter.apply("text/event-stream", sse.as_bytes()).unwrap()).unwrap();
    assert!(
        out.contains("summarize") && !out.contains("locked"),
        "{out}"
    );
    assert!(out.contains("\"cacheScope\":\"private\""), "{out}");
    assert!(txngate_core::gate::is_filtered_status(204));
    assert!(!txngate_core::gate::is_filtered_status(302));
}

fn complete(reference: Value) -> Vec<u8> {
    rpc(
        "completion/complete",
        json!({"ref": reference, "argument": {"name": "repo", "value": "ac"}}),
    )
}

fn listen(uris: Value) -> Vec<u8> {
    rpc(
        "subscriptions/listen",
        json!({"notifications": {"toolsListChanged": true, "resourceSubscriptions": uris}}),
    )
}

#[test]
fn completions_need_the_prompt_or_resource_they_complete() {
    let mut gate = gate_with(&policy());
    let tok = token();
    let prompt_ref = |name: &str| complete(json!({"type": "ref/prompt", "name": name}));
    let resource_ref = |uri: &str| complete(json!({"type": "ref/resource", "uri": uri}));
    for (body, expected) in [
        // Constraints bind prompts/get arguments: a completion is checked by effect and scopes only.
        (prompt_ref("code_review"), (200, "allow")),
        (prompt_ref("summarize"), (200, "allow")),
        (prompt_ref("locked"), (403, "prompt.denied")),
        (prompt_ref("admin_report"), (403, "prompt.scope")),
        (prompt_ref("unknown_prompt"), (403, "prompt.no_rule")),
        (prompt_ref("Code_Review"), (403, "prompt.name_variant")),
        (prompt_ref("weird name"), (403, "prompt.name_alphabet")),
        (prompt_ref("dry_admin"), (200, "allow.dry_run")),
        (resource_ref("file:///docs/public.txt"), (200, "allow")),
        // A template is matched as written: `{name}` inside one segment falls under `file:///pub/*.txt`.
        (resource_ref("file:///pub/{name}.txt"), (200, "allow")),
        (
            resource_ref("file:///admin/{name}"),
            (403, "resource.scope"),
        ),
        (resource_ref("db://x/users/{id}"), (403, "resource.denied")),
        (resource_ref("file:///etc/{name}"), (403, "resource.denied")),
        (
            resource_ref("file:///pub/../admin/x"),
            (403, "resource.no_rule"),
        ),
    ] {
        let shown = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(verdict(&mut gate, &tok, body), expected, "{shown}");
    }
    let o = decide(&mut gate, &tok, prompt_ref("locked"));
    assert_eq!(o.audit.prompt.as_deref(), Some("locked"));
    assert_eq!(o.audit.rule.as_deref(), Some("locked"));
    assert!(o.audit.tool.is_none());
    let body: Value = serde_json::from_str(o.decision.body().unwrap()).unwrap();
    assert_eq!(
        (body["id"].clone(), body["error"]["code"].clone()),
        (json!(9), json!(-31403))
    );
    let o = decide(&mut gate, &tok, resource_ref("file:///admin/{name}"));
    assert_eq!(o.audit.resource.as_deref(), Some("file:///admin/{name}"));
    assert!(header(&o, "www-authenticate")
        .unwrap()
        .contains("admin:read"));
}

#[test]
fn completion_refs_are_parsed_structurally() {
    let mut gate = gate_with(&policy());
    let tok = token();
    for params in [
        json!({}),
        json!({"ref": "ref/prompt"}),
        json!({"ref": {"name": "summarize"}}),
        json!({"ref": {"type": 1, "name": "summarize"}}),
        json!({"ref": {"type": "ref/tool", "name": "send_email"}}),
        json!({"ref": {"type": "REF/PROMPT", "name": "summarize"}}),
        json!({"ref": {"type": "ref/prompt"}}),
        json!({"ref": {"type": "ref/prompt", "name": ""}}),
        json!({"ref": {"type": "ref/prompt", "uri": "summarize"}}),
        json!({"ref": {"type": "ref/resource", "uri": 7}}),
        json!({"ref": {"type": "ref/resource", "uri": "file:///a\n"}}),
    ] {
        let o = decide(&mut gate, &tok, rpc("completion/complete", params.clone()));
        assert_eq!(
            (o.decision.status(), o.decision.reason()),
            (400, "mcp.completion_ref"),
            "{params}"
        );
        let body: Value = serde_json::from_str(o.decision.body().unwrap()).unwrap();
        assert_eq!(body["error"]["code"], -32602, "{params}");
        assert_eq!(body["id"], 9, "{params}");
    }
    // Any spelling of the method is one.
    assert_eq!(
        verdict(&mut gate, &tok, rpc("Completion/Complete", json!({}))),
        (400, "mcp.completion_ref")
    );
}

#[test]
fn subscriptions_need_each_resource_rule() {
    let mut gate = gate_with(&policy());
    let tok = token();
    for method in ["resources/subscribe", "resources/unsubscribe"] {
        for (uri, expected) in [
            ("file:///docs/public.txt", (200, "allow")),
            ("file:///docs/a/b", (200, "allow")),
            ("file:///admin/x", (403, "resource.scope")),
            ("file:///etc/passwd", (403, "resource.denied")),
        ] {
            let o = decide(&mut gate, &tok, rpc(method, json!({"uri": uri})));
            assert_eq!(
                (o.decision.status(), o.decision.reason()),
                expected,
                "{method} {uri}"
            );
            assert_eq!(o.audit.resource.as_deref(), Some(uri));
        }
        assert_eq!(
            verdict(&mut gate, &tok, rpc(method, json!({"uri": 1}))),
            (400, "mcp.resource_uri")
        );
    }
    let o = decide(
        &mut gate,
        &tok,
        listen(json!(["file:///docs/public.txt", "file:///docs/a"])),
    );
    assert_eq!(o.decision.reason(), "allow");
    assert_eq!(o.audit.resources.len(), 2);
    assert!(o.audit.resource.is_none());
    let o = decide(
        &mut gate,
        &tok,
        listen(json!([
            "file:///docs/public.txt",
            "file:///admin/x",
            "file:///etc/x"
        ])),
    );
    assert_eq!(
        (o.decision.status(), o.decision.reason()),
        (403, "resource.scope")
    );
    assert_eq!(o.audit.resource.as_deref(), Some("file:///admin/x"));
    assert_eq!(o.audit.rule.as_deref(), Some("file:///admin/*"));
    // List-changed subscriptions name nothing: they pass.
    assert_eq!(verdict(&mut gate, &tok, listen(json!([]))), (200, "allow"));
    assert_eq!(
        verdict(
            &mut gate,
            &tok,
            rpc(
                "subscriptions/listen",
                json!({"notifications": {"promptsListChanged": true}})
            )
        ),
        (200, "allow")
    );
    for params in [
        json!({"notifications": []}),
        json!({"notifications": {"resourceSubscriptions": "file:///docs/a"}}),
        json!({"notifications": {"resourceSubscriptions": ["file:///docs/a", 3]}}),
        json!({"notifications": {"resourceSubscriptions": [""]}}),
    ] {
        assert_eq!(
            verdict(&mut gate, &tok, rpc("subscriptions/listen", params.clone())),
            (400, "mcp.subscriptions"),
            "{params}"
        );
    }
}

#[test]
fn completions_and_subscriptions_consume_no_rate_limit() {
    let mut gate = gate_with(&policy());
    let tok = token();
    let mut limiter = Recording::default();
    for body in [
        complete(json!({"type": "ref/prompt", "name": "review"})),
        complete(json!({"type": "ref/resource", "uri": "file:///docs/a"})),
        rpc("resources/subscribe", json!({"uri": "file:///docs/a"})),
        listen(json!(["file:///docs/a", "file:///docs/b"])),
    ] {
        let o = decide_in(&mut gate, &tok, body, &mut limiter);
        assert_eq!(o.decision.reason(), "allow");
        assert!(o.audit.limit.is_none());
    }
    assert!(limiter.keys.is_empty(), "{:?}", limiter.keys);
}

#[test]
fn without_their_sections_completions_and_subscriptions_pass() {
    let mut gate = gate_with(&base_policy());
    let tok = token();
    for body in [
        complete(json!({"type": "ref/prompt", "name": "anything"})),
        complete(json!({"type": "ref/resource", "uri": "file:///etc/{x}"})),
        rpc("resources/subscribe", json!({"uri": "file:///etc/passwd"})),
        listen(json!(["file:///etc/passwd"])),
    ] {
        let shown = String::from_utf8_lossy(&body).into_owned();
        let o = decide(&mut gate, &tok, body);
        assert_eq!(o.decision.reason(), "allow", "{shown}");
        assert!(o.audit.rule.is_none());
    }
    // Structure is still checked.
    assert_eq!(
        verdict(&mut gate, &tok, complete(json!({"type": "ref/prompt"}))),
        (400, "mcp.completion_ref")
    );
}

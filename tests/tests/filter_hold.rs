//! The filter's body-holding mode (its default; filters/src/filter/hold.rs) in the wasmtime harness, configured
//! the way Istio's `WasmPlugin` configures Envoy: the policy as the plugin configuration and nothing else, no
//! `allow_on_headers_stop_iteration`. The token is verified at the headers, the headers go on with the
//! verified identity, the body is held until the whole decision: refused, the upstream has the headers and
//! not one byte of the body; allowed, it has the body unchanged.
//!
//!     cargo test -p txngate-harness --test filter_hold
#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used
)] // test helpers (clippy.toml: #[test] fns)

mod filter_data;

use filter_data::tokens::*;
use filter_data::*;
use serde_json::{json, Value};
use txngate_harness::{HttpOutcome, HttpRequest, UpstreamResponse, VmOptions};

/// A body the filter must release byte for byte: odd spacing, key order and a trailing newline that any
/// re-serialisation would lose.
const EMAIL_BODY: &str = "{ \"params\" : {\"arguments\":{\"subject\":\"hi\",  \"to\":\"bob@example.com\",\"body\":\"hello\"},\"name\":\"send_email\"},\n  \"method\":\"tools/call\", \"id\": 7,\"jsonrpc\":\"2.0\" }\n";

fn raw_mcp(token: &str, body: &str) -> HttpRequest {
    HttpRequest::post("/mcp")
        .header("txn-token", token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("accept-encoding", "gzip")
        .body(body.as_bytes().to_vec())
}

/// Refused after the headers went on: the upstream has the headers, never a byte of the body.
fn assert_headers_only(o: &HttpOutcome) {
    let f = o
        .forwarded
        .as_ref()
        .unwrap_or_else(|| panic!("the headers went on: {:?}", o.local_reply));
    assert!(
        f.body.is_empty(),
        "no body byte reached the upstream: {:?}",
        f.body_str()
    );
    assert!(!f.complete, "the upstream request was never completed");
    assert!(o.local_reply.is_some(), "a local reply answered the client");
}

/// Refused at the headers: the upstream saw nothing.
fn assert_nothing_forwarded(o: &HttpOutcome) {
    assert!(o.forwarded.is_none(), "{:?}", o.forwarded);
    assert!(o.local_reply.is_some());
}

fn reason(o: &HttpOutcome) -> String {
    rpc_error(o)["data"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn allowed_call_gets_the_verified_identity_and_its_body_unchanged() {
    let host = host();
    let mut vm = hold_vm(&host, &policy());
    let o = vm.http(
        raw_mcp(EMAIL_A1, EMAIL_BODY)
            .header("x-txngate-agent", "spiffe://evil/agent")
            .header("X-TxnGate-Scope", "everything"),
    );
    assert_eq!(o.status(), Some(200), "{:?}", o.local_reply);
    assert!(o.trapped.is_none() && !o.stalled);
    let f = o.forwarded.as_ref().unwrap();
    assert!(f.complete);
    assert_eq!(f.body, EMAIL_BODY.as_bytes(), "released byte for byte");
    let identity: Vec<_> = f
        .headers
        .iter()
        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("x-txngate-"))
        .collect();
    assert_eq!(identity.len(), 3, "{identity:?}");
    assert_eq!(
        f.header("x-txngate-agent"),
        Some("spiffe://trust.example/agent/a1")
    );
    assert_eq!(f.header("x-txngate-sub"), Some("user-1"));
    assert_eq!(f.header("x-txngate-txn"), Some("txn-email-a1"));
    assert_eq!(f.header("txn-token"), Some(EMAIL_A1));
    assert_eq!(
        f.header("accept-encoding"),
        None,
        "dropped at the headers: a tools/list answer must be readable"
    );
    assert_eq!(
        o.response_header("ratelimit-policy"),
        Some("\"send_email\";q=10;w=60")
    );
    // One decision, one audit line: the header stage of an accepted request is not a decision.
    let audit = audit(&o);
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["verdict"], "allow");
    assert_eq!(audit[0]["tool"], "send_email");
    assert_eq!(o.metric("txngate.requests.allow.allow"), Some(1));
}

#[test]
fn token_and_delegation_refusals_happen_at_the_headers_before_anything_moves() {
    let host = host();
    let mut vm = hold_vm(&host, &policy());
    for (token, status, want) in [
        ("not-a-token", 401, "token.malformed"),
        (WRONG_TYP_A1, 401, "token.typ"),
        (CALENDAR_K2_A1, 401, "token.kid_unknown"),
    ] {
        let o = vm.http(raw_mcp(token, EMAIL_BODY));
        assert_eq!(o.status(), Some(status), "{want}: {}", o.body_str());
        assert_eq!(reason(&o), want);
        assert!(o.response_header("www-authenticate").is_some());
        assert_nothing_forwarded(&o);
        assert_eq!(audit(&o).len(), 1, "{want}: audited once");
    }
    let o = vm.http(HttpRequest::post("/mcp").body(EMAIL_BODY));
    assert_eq!(
        (o.status(), reason(&o).as_str()),
        (Some(401), "token.missing")
    );
    assert_nothing_forwarded(&o);

    // An agent outside the agents table.
    let mut p = policy();
    p["agents"] = json!({"spiffe://trust.example/agent/s*": {"max_scopes": ["web:search"]}});
    let mut vm = hold_vm(&host, &p);
    let o = vm.http(raw_mcp(EMAIL_A1, EMAIL_BODY));
    assert_eq!(o.status(), Some(403));
    assert_eq!(reason(&o), "delegation.unknown_agent");
    assert_nothing_forwarded(&o);
}

#[test]
fn body_refusals_are_local_replies_and_the_upstream_never_gets_the_body() {
    let host = host();
    let mut vm = hold_vm(&host, &policy());
    let cases: [(&str, Value, u16, &str); 4] = [
        (
            CALENDAR_A1,
            tools_call("send_email", email_args()),
            403,
            "tool.scope",
        ),
        (
            EMAIL_A1,
            tools_call(
                "send_email",
                json!({"to": "eve@example.com", "subject": "s", "body": "b"}),
            ),
            403,
            "tool.constraint",
        ),
        (
            EMAIL_A1,
            tools_call("delete_repo", json!({"name": "r"})),
            403,
            "tool.denied",
        ),
        (
            EMAIL_A1,
            json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"arguments": {}}}),
            400,
            "mcp.tool_name",
        ),
    ];
    for (token, body, status, want) in cases {
        for chunk in [None, Some(5)] {
            let mut req = mcp(token, &body);
            if let Some(size) = chunk {
                req = req.chunked(size);
            }
            let o = vm.http(req);
            assert_eq!(o.status(), Some(status), "{want}: {}", o.body_str());
            assert_eq!(reason(&o), want);
            assert!(rpc_error(&o)["code"].as_i64().is_some());
            if want.starts_with("tool.") {
                assert_eq!(o.body_json().unwrap()["id"], 7, "{want}: the JSON-RPC id");
            }
            assert_headers_only(&o);
            let audit = audit(&o);
            assert_eq!(audit.len(), 1, "{want}: {audit:?}");
            assert_eq!(audit[0]["reason"], want);
        }
    }
    // Not JSON at all.
    let o = vm.http(raw_mcp(EMAIL_A1, "{\"jsonrpc\": \"2.0\", "));
    assert_eq!((o.status(), reason(&o).as_str()), (Some(400), "mcp.parse"));
    assert_headers_only(&o);
    if let Some(scope) = o.response_header("www-authenticate") {
        panic!("no challenge for a parse error: {scope}");
    }
}

#[test]
fn rate_limited_call_is_refused_with_429_and_never_forwarded() {
    let host = host();
    let mut vm = hold_vm(&host, &policy());
    let first = vm.http(mcp(
        SEARCH_S1,
        &tools_call("search_web", json!({"query": "q"})),
    ));
    assert_eq!(first.status(), Some(200), "{:?}", first.local_reply);
    assert!(first.forwarded.as_ref().unwrap().complete);
    let second =
        vm.http(mcp(SEARCH_S1, &tools_call("search_web", json!({"query": "q"}))).chunked(9));
    assert_eq!(second.status(), Some(429), "{}", second.body_str());
    assert_eq!(reason(&second), "ratelimit.exceeded");
    assert!(second.response_header("retry-after").is_some());
    assert_headers_only(&second);
    assert_eq!(second.metric("txngate.ratelimited.search_web"), Some(1));
    // Another agent has its own bucket.
    let other = vm.http(mcp(
        SEARCH_S2,
        &tools_call("search_web", json!({"query": "q"})),
    ));
    assert_eq!(other.status(), Some(200));
}

#[test]
fn bodies_over_the_cap_get_413() {
    let host = host();
    let mut vm = hold_vm(&host, &policy());
    let big = tools_call("calendar_read", json!({"day": "x".repeat(5000)}));
    // Announced: refused at the headers, nothing moves.
    let o = vm.http(mcp(CALENDAR_A1, &big));
    assert_eq!(
        (o.status(), reason(&o).as_str()),
        (Some(413), "mcp.body_too_large")
    );
    assert_nothing_forwarded(&o);
    // Not announced (chunked transfer): refused as soon as the held body passes the cap.
    let mut req = mcp(CALENDAR_A1, &big).chunked(1000);
    req.auto_content_length = false;
    let o = vm.http(req);
    assert_eq!(
        (o.status(), reason(&o).as_str()),
        (Some(413), "mcp.body_too_large")
    );
    assert_headers_only(&o);
    // A bad token still wins over the size: refused at the headers.
    let mut req = mcp("not-a-token", &big).chunked(1000);
    req.auto_content_length = false;
    let o = vm.http(req);
    assert_eq!(o.status(), Some(401));
    assert_nothing_forwarded(&o);
}

#[test]
fn chunked_bodies_are_held_whole_and_released_unchanged() {
    let host = host();
    let mut vm = hold_vm(&host, &policy());
    for size in [1, 3, 64] {
        let mut req = raw_mcp(EMAIL_A1, EMAIL_BODY).chunked(size);
        req.auto_content_length = size != 3;
        let o = vm.http(req);
        assert_eq!(
            o.status(),
            Some(200),
            "chunks of {size}: {:?}",
            o.local_reply
        );
        let f = o.forwarded.as_ref().unwrap();
        assert!(f.complete);
        assert_eq!(f.body, EMAIL_BODY.as_bytes(), "chunks of {size}");
    }
    // The decision is taken on the whole body: a refusal whose tell is in the last chunk.
    let body = serde_json::to_string(&tools_call(
        "send_email",
        json!({"subject": "s", "body": "b", "to": "eve@example.com"}),
    ))
    .unwrap();
    let (head, tail) = body.split_at(body.len() - 30);
    let o = vm.http(
        HttpRequest::post("/mcp")
            .header("txn-token", EMAIL_A1)
            .body_chunks(vec![head.as_bytes().to_vec(), tail.as_bytes().to_vec()]),
    );
    assert_eq!(
        (o.status(), reason(&o).as_str()),
        (Some(403), "tool.constraint")
    );
    assert_headers_only(&o);
}

#[test]
fn tools_list_is_filtered_in_the_body_holding_mode() {
    let host = host();
    let mut vm = hold_vm(&host, &policy());
    let tools: Vec<Value> = [
        "send_email",
        "calendar_read",
        "calendar_write",
        "search_web",
        "delete_repo",
    ]
    .iter()
    .map(|t| json!({"name": t, "inputSchema": {"type": "object"}}))
    .collect();
    let answer = json!({"jsonrpc": "2.0", "id": 7, "result": {"tools": tools}});
    let list = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"});
    let names = |o: &HttpOutcome, v: &Value| -> Vec<String> {
        assert_eq!(o.status(), Some(200), "{:?}", o.local_reply);
        v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };
    let o = vm.http(
        mcp(CALENDAR_A1, &list)
            .header("accept-encoding", "gzip")
            .upstream(UpstreamResponse::json(200, &answer).chunked(40)),
    );
    assert_eq!(o.forwarded_header("accept-encoding"), None);
    assert_eq!(
        names(&o, &o.body_json().unwrap()),
        ["calendar_read", "calendar_write"]
    );

    let event = answer.to_string();
    let o = vm
        .http(mcp(EMAIL_A1, &list).upstream(UpstreamResponse::sse(&[event.as_str()]).chunked(50)));
    let body = o.body_str();
    let data = body.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    assert_eq!(
        names(&o, &serde_json::from_str(data).unwrap()),
        ["send_email"]
    );

    // Unfilterable: the headers already went on (pausing them needs the option), so the stream is reset;
    // the unfiltered list never reaches the client.
    let o = vm.http(
        mcp(CALENDAR_A1, &list).upstream(
            UpstreamResponse::text(200, "{\"result\":{\"tools\":[")
                .header("content-type", "application/json"),
        ),
    );
    assert!(o.reset, "{:?} {}", o.status(), o.body_str());
    assert!(!o.body_str().contains("tools\":["), "{}", o.body_str());
    assert!(o.logged("tools_list.filter"));
}

#[test]
fn requests_without_a_body_to_read_are_decided_at_the_headers_as_before() {
    let host = host();
    let mut vm = hold_vm(&host, &policy());
    let o = vm.http(HttpRequest::get("/mcp").header("txn-token", CALENDAR_A1));
    assert_eq!(o.status(), Some(200), "{:?}", o.local_reply);
    let f = o.forwarded.as_ref().unwrap();
    assert_eq!(
        f.header("x-txngate-agent"),
        Some("spiffe://trust.example/agent/a1")
    );
    let o = vm.http(HttpRequest::get("/mcp"));
    assert_eq!(o.status(), Some(401));
    assert_nothing_forwarded(&o);
    // An MCP POST without a body: decided at the headers (400), nothing forwarded.
    let o = vm.http(HttpRequest::post("/mcp").header("txn-token", CALENDAR_A1));
    assert_eq!(
        (o.status(), reason(&o).as_str()),
        (Some(400), "mcp.body_missing")
    );
    assert_nothing_forwarded(&o);
}

/// The guarantee that matters, over every kind of request: with `allow_on_headers_stop_iteration` off, a
/// request either gets the whole decision and its body unchanged, or is refused and the upstream has no
/// byte of its body. Never stalled, never forwarded unchecked. The same holds with the option on (the
/// mode does not depend on it).
#[test]
fn with_the_option_off_nothing_passes_unchecked() {
    for allow_stop in [false, true] {
        // A fresh world each time: the rate-limit buckets start full.
        let host = host();
        let mut vm = host
            .vm_with(
                VmOptions::new(policy().to_string()).allow_on_headers_stop_iteration(allow_stop),
            )
            .unwrap();
        let requests: Vec<(&str, Value, bool)> = vec![
            (EMAIL_A1, tools_call("send_email", email_args()), true),
            (
                EMAIL_A2,
                tools_call(
                    "send_email",
                    json!({"to": "x@example.com", "subject": "s", "body": "b"}),
                ),
                false,
            ),
            (
                CALENDAR_A1,
                tools_call("calendar_read", json!({"day": "mon"})),
                true,
            ),
            (
                CALENDAR_A1,
                tools_call("calendar_write", json!({"day": "mon", "title": "t"})),
                true,
            ),
            (
                CALENDAR_A1,
                tools_call("search_web", json!({"query": "q"})),
                false,
            ),
            (
                CALENDAR_A1,
                tools_call("delete_repo", json!({"name": "r"})),
                false,
            ),
            (
                SEARCH_S3,
                tools_call("search_web", json!({"query": "q"})),
                true,
            ),
            (
                SEARCH_S3,
                tools_call("search_web", json!({"query": "q"})),
                false,
            ),
            (
                "bad",
                tools_call("calendar_read", json!({"day": "mon"})),
                false,
            ),
        ];
        for (i, (token, body, allowed)) in requests.into_iter().enumerate() {
            for chunk in [None, Some(11)] {
                let mut req = mcp(token, &body);
                if let Some(size) = chunk {
                    req = req.chunked(size);
                }
                let o = vm.http(req);
                let label = format!("option {allow_stop}, request {i}, chunks {chunk:?}");
                assert!(
                    !o.stalled && o.trapped.is_none(),
                    "{label}: {:?}",
                    o.stall_reason
                );
                if allowed && !(i == 6 && chunk.is_some()) {
                    assert_eq!(o.status(), Some(200), "{label}: {:?}", o.local_reply);
                    let f = o.forwarded.as_ref().unwrap();
                    assert!(f.complete, "{label}");
                    assert_eq!(
                        serde_json::from_slice::<Value>(&f.body).unwrap(),
                        body,
                        "{label}"
                    );
                } else {
                    assert!(
                        o.status().is_some_and(|s| s >= 400),
                        "{label}: {:?}",
                        o.status()
                    );
                    if let Some(f) = &o.forwarded {
                        assert!(
                            f.body.is_empty() && !f.complete,
                            "{label}: {:?}",
                            f.body_str()
                        );
                    }
                }
                let audit = audit(&o);
                assert_eq!(audit.len(), 1, "{label}: one decision, one record");
            }
        }
    }
}

#[test]
fn pause_at_headers_must_be_a_boolean() {
    let host = host();
    for bad in [json!("true"), json!(1), json!(null)] {
        let mut p = policy();
        p["pause_at_headers"] = bad;
        assert_refused_at_configure(&host, &p, "txngate: pause_at_headers must be true or false");
    }
    // Spelled out as false: the default, body holding.
    let mut p = policy();
    p["pause_at_headers"] = json!(false);
    let mut vm = hold_vm(&host, &p);
    let o = vm.http(mcp(
        CALENDAR_A1,
        &tools_call("calendar_read", json!({"day": "mon"})),
    ));
    assert_eq!(o.status(), Some(200), "{:?}", o.local_reply);
}

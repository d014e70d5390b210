//! The txngate filter (filters/, built for wasm32-wasip1) in the wasmtime harness: configuration, what it
//! gathers, how it renders the core's decisions, body handling and tools/list filtering, on one VM.
//!
//!     cargo test -p txngate-harness --test filter_gate
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
use txngate_harness::{HttpRequest, LogLevel, UpstreamResponse, VmOptions};

#[test]
fn bad_policy_is_refused_at_configure_with_its_json_pointer() {
    let mut p = policy();
    p["tools"]["send_email"]["rate_limit"]["period_seconds"] = json!(0);
    let err = host().vm(p.to_string()).unwrap_err();
    let err = err.downcast::<txngate_harness::StartError>().unwrap();
    assert_eq!(err.stage, "on_configure");
    assert!(
        err.plugin_messages().contains(
            &"txngate: policy: at /tools/send_email/rate_limit/period_seconds: must be at least 1"
        ),
        "{:?}",
        err.plugin_messages()
    );
    for config in ["", "  ", "{", "[]"] {
        let err = host()
            .vm(config)
            .unwrap_err()
            .downcast::<txngate_harness::StartError>()
            .unwrap();
        assert!(
            err.plugin_messages()
                .iter()
                .any(|m| m.starts_with("txngate: policy")),
            "{config:?}: {:?}",
            err.plugin_messages()
        );
    }
}

#[test]
fn allowed_call_reaches_the_upstream_with_verified_identity_only() {
    let host = host();
    let mut vm = vm(&host, &policy());
    let o = vm.http(
        mcp(EMAIL_A1, &tools_call("send_email", email_args()))
            .header("x-txngate-agent", "spiffe://evil/agent")
            .header("X-TxnGate-Scope", "everything")
            .header("x-txngate-agent", "second copy"),
    );
    assert_eq!(o.status(), Some(200), "{:?}", o.local_reply);
    assert!(o.trapped.is_none() && !o.stalled);
    let f = o.forwarded.as_ref().unwrap();
    assert!(f.complete);
    let identity: Vec<_> = f
        .headers
        .iter()
        .filter(|(k, _)| k.starts_with("x-txngate-"))
        .collect();
    assert_eq!(identity.len(), 3, "{identity:?}");
    assert_eq!(
        f.header("x-txngate-agent"),
        Some("spiffe://trust.example/agent/a1")
    );
    assert_eq!(f.header("x-txngate-sub"), Some("user-1"));
    assert_eq!(f.header("x-txngate-txn"), Some("txn-email-a1"));
    assert_eq!(
        f.header("txn-token"),
        Some(EMAIL_A1),
        "the token is forwarded unmodified"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&f.body).unwrap(),
        tools_call("send_email", email_args())
    );
    // RateLimit headers on the response.
    assert_eq!(
        o.response_header("ratelimit-policy"),
        Some("\"send_email\";q=10;w=60")
    );
    assert_eq!(
        o.response_header("ratelimit"),
        Some("\"send_email\";r=9;t=6")
    );
    // One audit line, filter state for the access log, a counter.
    let audit = audit(&o);
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (audit[0]["verdict"].as_str(), audit[0]["tool"].as_str()),
        (Some("allow"), Some("send_email"))
    );
    assert_eq!(o.property_set(&["txngate_verdict"]), Some(&b"allow"[..]));
    assert_eq!(
        o.property_set(&["txngate_agent"]),
        Some(&b"spiffe://trust.example/agent/a1"[..])
    );
    assert_eq!(o.property_set(&["txngate_tool"]), Some(&b"send_email"[..]));
    assert_eq!(o.property_set(&["txngate_txn"]), Some(&b"txn-email-a1"[..]));
    assert_eq!(o.metric("txngate.requests.allow.allow"), Some(1));
}

#[test]
fn audit_sink_filter_state_writes_the_record_as_one_value_and_logs_nothing() {
    let host = host();
    let mut p = policy();
    p["audit_sink"] = json!("filter_state");
    let mut fs_vm = vm(&host, &p);
    let allowed = fs_vm.http(mcp(EMAIL_A1, &tools_call("send_email", email_args())));
    assert_eq!(allowed.status(), Some(200), "{:?}", allowed.local_reply);
    let refused = fs_vm.http(mcp(CALENDAR_A1, &tools_call("send_email", email_args())));
    assert_eq!(refused.status(), Some(403));
    for (o, verdict, reason) in [
        (&allowed, "allow", "allow"),
        (&refused, "deny", "tool.scope"),
    ] {
        assert!(audit(o).is_empty(), "no audit line in the log");
        let record: Value =
            serde_json::from_slice(o.property_set(&["txngate_audit"]).unwrap()).unwrap();
        assert_eq!(
            (record["verdict"].as_str(), record["reason"].as_str()),
            (Some(verdict), Some(reason))
        );
        assert_eq!(record["tool"].as_str(), Some("send_email"));
        assert!(record["token_sha256"]
            .as_str()
            .is_some_and(|h| h.len() == 64));
        assert_eq!(o.property_set(&["txngate_verdict"]), None);
    }
    assert_eq!(
        fs_vm
            .http(mcp(EMAIL_A1, &tools_call("send_email", email_args())))
            .status(),
        Some(200)
    );

    // The default, spelt out, is the log line; anything else is refused at configure.
    p["audit_sink"] = json!("log");
    let mut log_vm = vm(&host, &p);
    let o = log_vm.http(mcp(EMAIL_A1, &tools_call("send_email", email_args())));
    assert_eq!(audit(&o).len(), 1);
    assert_eq!(o.property_set(&["txngate_audit"]), None);
    for bad in [json!("none"), json!(null), json!(true)] {
        p["audit_sink"] = bad;
        assert_refused_at_configure(&host, &p, "txngate: audit_sink must be");
    }
}

#[test]
fn access_log_fields_false_keeps_the_audit_line_and_drops_the_per_field_filter_state() {
    let host = host();
    let mut p = policy();
    p["access_log_fields"] = json!(false);
    let mut vm = vm(&host, &p);
    let allowed = vm.http(mcp(EMAIL_A1, &tools_call("send_email", email_args())));
    assert_eq!(allowed.status(), Some(200), "{:?}", allowed.local_reply);
    let refused = vm.http(mcp(CALENDAR_A1, &tools_call("send_email", email_args())));
    assert_eq!(refused.status(), Some(403));
    for (o, verdict) in [(&allowed, "allow"), (&refused, "deny")] {
        let audit = audit(o);
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0]["verdict"].as_str(), Some(verdict));
        assert!(o.properties_set.is_empty(), "{:?}", o.properties_set);
    }
    assert_eq!(
        vm.http(mcp(EMAIL_A1, &tools_call("send_email", email_args())))
            .metric("txngate.requests.allow.allow"),
        Some(2)
    );
    // Only a boolean is accepted.
    for bad in [json!("false"), json!(0), json!(null)] {
        p["access_log_fields"] = bad;
        assert_refused_at_configure(&host, &p, "txngate: access_log_fields must be");
    }
}

#[test]
fn refusals_are_local_replies_with_the_cores_status_and_json_rpc_error() {
    let host = host();
    let mut vm = vm(&host, &policy());
    let cases = [
        (
            CALENDAR_A1,
            tools_call("send_email", email_args()),
            403,
            -31403,
            "tool.scope",
        ),
        (
            EMAIL_A1,
            tools_call("send_email", json!({"to": "eve@example.com"})),
            403,
            -31403,
            "tool.constraint",
        ),
        (
            EMAIL_A1,
            tools_call("delete_repo", json!({"name": "r"})),
            403,
            -31403,
            "tool.denied",
        ),
        (
            "not-a-token",
            tools_call("send_email", email_args()),
            401,
            -31401,
            "token.malformed",
        ),
        (
            WRONG_TYP_A1,
            tools_call("send_email", email_args()),
            401,
            -31401,
            "token.typ",
        ),
        (
            CALENDAR_K2_A1,
            tools_call("calendar_read", json!({"day": "mon"})),
            401,
            -31401,
            "token.kid_unknown",
        ),
    ];
    for (token, body, status, code, reason) in cases {
        let o = vm.http(mcp(token, &body));
        assert_eq!(o.status(), Some(status), "{reason}: {}", o.body_str());
        assert!(
            o.forwarded.is_none(),
            "{reason}: a refused request never reaches the upstream"
        );
        let error = rpc_error(&o);
        assert_eq!(
            (error["code"].as_i64(), error["data"]["reason"].as_str()),
            (Some(code), Some(reason))
        );
        assert_eq!(o.body_json().unwrap()["id"], 7);
        assert_eq!(o.response_header("content-type"), Some("application/json"));
        assert_eq!(o.property_set(&["txngate_reason"]), Some(reason.as_bytes()));
        assert_eq!(audit(&o)[0]["reason"], reason);
    }
    let o = vm.http(mcp(CALENDAR_A1, &tools_call("send_email", email_args())));
    assert_eq!(
        o.response_header("www-authenticate"),
        Some("Txn-Token error=\"insufficient_scope\", scope=\"email:send\"")
    );
    // A missing token; non-MCP paths are refused too (plain JSON error).
    let o = vm.http(HttpRequest::get("/other"));
    assert_eq!(o.status(), Some(401));
    assert_eq!(o.body_json().unwrap()["reason"], "token.missing");
    assert_eq!(host.metric("txngate.requests.deny.tool_scope"), Some(2));
}

#[test]
fn body_arriving_in_chunks_is_reassembled_before_deciding() {
    let mut vm = vm(&host(), &policy());
    let o = vm.http(mcp(EMAIL_A1, &tools_call("send_email", email_args())).chunked(7));
    assert_eq!(o.status(), Some(200));
    assert_eq!(
        serde_json::from_slice::<Value>(&o.forwarded.unwrap().body).unwrap(),
        tools_call("send_email", email_args())
    );
    // Without content-length too.
    let mut req = mcp(
        CALENDAR_A1,
        &tools_call("calendar_read", json!({"day": "mon"})),
    )
    .chunked(5);
    req.auto_content_length = false;
    assert_eq!(vm.http(req).status(), Some(200));
}

#[test]
fn oversized_bodies_get_413_without_buffering_or_forwarding() {
    let mut vm = vm(&host(), &policy());
    let big = tools_call("calendar_read", json!({"day": "x".repeat(5000)}));
    // Announced by content-length: refused at the headers.
    let o = vm.http(mcp(CALENDAR_A1, &big).chunked(1000));
    assert_eq!(o.status(), Some(413));
    assert_eq!(rpc_error(&o)["data"]["reason"], "mcp.body_too_large");
    assert!(o.forwarded.is_none());
    assert!(
        !o.logged("request body"),
        "refused before any body callback"
    );
    // Not announced: refused as soon as the buffered body passes the cap.
    let mut req = mcp(CALENDAR_A1, &big).chunked(1000);
    req.auto_content_length = false;
    let o = vm.http(req);
    assert_eq!(o.status(), Some(413));
    assert!(o.forwarded.is_none());
}

#[test]
fn mcp_post_without_a_body_is_refused() {
    let mut vm = vm(&host(), &policy());
    let o = vm.http(HttpRequest::post("/mcp").header("txn-token", CALENDAR_A1));
    assert_eq!(o.status(), Some(400));
    assert_eq!(rpc_error(&o)["data"]["reason"], "mcp.body_missing");
}

#[test]
fn without_allow_on_headers_stop_iteration_the_watchdog_refuses_the_request() {
    let host = host();
    // The strict mode, misconfigured: `pause_at_headers` without Envoy's option.
    let mut p = policy();
    p["pause_at_headers"] = json!(true);
    let mut vm = host.vm_with(VmOptions::new(p.to_string())).unwrap();
    let o = vm.http(mcp(
        CALENDAR_A1,
        &tools_call("calendar_read", json!({"day": "mon"})),
    ));
    assert!(o.stalled, "Envoy holds the body back: {:?}", o.stall_reason);
    assert!(o.forwarded.is_none());
    host.advance_ms(3000);
    let r = vm.run_due_ticks();
    assert!(r.callbacks >= 1);
    assert!(
        r.logged("set `allow_on_headers_stop_iteration: true`"),
        "{:#?}",
        r.logs
    );
    assert!(r.logs.iter().any(|l| l.level == LogLevel::Critical));
    assert!(r.logged("\"reason\":\"mcp.body_missing\""));
    // The stream got the refusal (whether the harness reports it on the stalled stream or not, the
    // request never reached the upstream).
    if let Some(context) = vm.stalled_streams().first().copied() {
        let t = vm.timeout_stream(context).unwrap();
        assert!(t.forwarded.is_none());
    }
}

fn tools_list_response(tools: &[&str]) -> Value {
    let tools: Vec<Value> = tools
        .iter()
        .map(|t| json!({"name": t, "inputSchema": {"type": "object"}}))
        .collect();
    json!({"jsonrpc": "2.0", "id": 7, "result": {"tools": tools}})
}

const ALL_TOOLS: [&str; 5] = [
    "send_email",
    "calendar_read",
    "calendar_write",
    "search_web",
    "delete_repo",
];

#[test]
fn tools_list_json_and_sse_are_filtered_to_the_callers_tools() {
    let mut vm = vm(&host(), &policy());
    let list = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"});
    let o = vm.http(
        mcp(CALENDAR_A1, &list)
            .header("accept-encoding", "gzip")
            .upstream(UpstreamResponse::json(200, &tools_list_response(&ALL_TOOLS)).chunked(40)),
    );
    assert_eq!(o.status(), Some(200));
    assert_eq!(
        o.forwarded_header("accept-encoding"),
        None,
        "the response must come back readable"
    );
    let names: Vec<String> = o.body_json().unwrap()["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["calendar_read", "calendar_write"]);
    assert_eq!(o.response_header("content-length"), None);

    let event = tools_list_response(&ALL_TOOLS).to_string();
    let o = vm
        .http(mcp(EMAIL_A1, &list).upstream(UpstreamResponse::sse(&[event.as_str()]).chunked(50)));
    assert_eq!(o.status(), Some(200));
    assert_eq!(o.response_header("content-type"), Some("text/event-stream"));
    let body = o.body_str();
    let data = body.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let names: Vec<Value> = serde_json::from_str::<Value>(data).unwrap()["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].clone())
        .collect();
    assert_eq!(names, [json!("send_email")]);
}

#[test]
fn unfilterable_tools_list_response_fails_closed_with_502() {
    let mut vm = vm(&host(), &policy());
    let list = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"});
    let o = vm.http(
        mcp(CALENDAR_A1, &list).upstream(
            UpstreamResponse::text(200, "{\"result\":{\"tools\":[")
                .header("content-type", "application/json"),
        ),
    );
    assert_eq!(o.status(), Some(502), "{}", o.body_str());
    assert!(
        !o.body_str().contains("tools\":["),
        "the unfiltered body never reaches the client"
    );
    assert_eq!(rpc_error(&o)["data"]["reason"], "tools_list.filter");
    assert_eq!(o.body_json().unwrap()["id"], 7);
    // Error statuses pass through untouched (nothing to filter).
    let o = vm.http(mcp(CALENDAR_A1, &list).upstream(UpstreamResponse::text(503, "busy")));
    assert_eq!((o.status(), o.body_str().as_str()), (Some(503), "busy"));
}

#[test]
fn nothing_traps_on_hostile_input() {
    let mut vm = vm(&host(), &policy());
    let long = "a".repeat(20_000);
    let requests = vec![
        mcp(&long, &tools_call("send_email", email_args())),
        HttpRequest::post("/mcp")
            .header("txn-token", EMAIL_A1)
            .body(vec![0xff, 0xfe, 0x00, b'{']),
        HttpRequest::post("/mcp")
            .header("txn-token", EMAIL_A1)
            .body("[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}]"),
        HttpRequest::post("/mcp")
            .header("txn-token", EMAIL_A1)
            .header("txn-token", EMAIL_A1)
            .body("{}"),
        HttpRequest::post("/mcp")
            .header("txn-token", EMAIL_A1)
            .body(format!("{}{}", "[".repeat(200), "]".repeat(200))),
        HttpRequest::get("/mcp?x=%ff").header("txn-token", "é.é.é"),
    ];
    for req in requests {
        let o = vm.http(req);
        assert!(o.trapped.is_none(), "{:?}", o.trapped);
        assert!(!o.stalled);
        assert!(o.status().is_some_and(|s| s >= 400), "{:?}", o.status());
        assert!(o.forwarded.is_none());
    }
    assert!(!vm.is_failed());
}

/// What a repeated (cached) token costs the host per request, besides the filter's own instructions: its
/// proxy-wasm and WASI host calls and the callbacks into it (docs/performance.md, issue #17 target 1).
/// Printed for the record (`--nocapture`); the bound catches a regression.
#[test]
fn repeated_token_host_calls_per_request() {
    let host = host();
    let mut vm = vm(&host, &policy());
    let mut counts = Vec::new();
    for _ in 0..3 {
        let o = vm.http(mcp(EMAIL_A1, &tools_call("send_email", email_args())));
        assert_eq!(o.status(), Some(200), "{:?}", o.local_reply);
        counts.push((o.host_calls, o.callbacks));
    }
    eprintln!("repeated token (host calls, callbacks) per request: {counts:?}");
    // Exact bounds: a host call or callback more per cached request fails here (lower the bound when one
    // goes). Per request: the header map, the peer property, the time (twice), the body, the GCRA slot's
    // get and compare-and-swap, the audit line, five filter-state fields, one counter, three identity
    // headers, two RateLimit response headers.
    let (host_calls, callbacks) = counts[2];
    assert!(
        host_calls <= HOST_CALLS && callbacks <= CALLBACKS,
        "{counts:?}"
    );

    // `limits.headers: refusals`: an allowed call's response is left alone (two header writes fewer).
    let mut p = policy();
    p["limits"] = json!({"headers": "refusals"});
    let mut vm = filter_data::vm(&host, &p);
    let mut quiet = Vec::new();
    for _ in 0..3 {
        let o = vm.http(mcp(EMAIL_A1, &tools_call("send_email", email_args())));
        assert_eq!(o.status(), Some(200), "{:?}", o.local_reply);
        assert_eq!(o.response_header("ratelimit"), None);
        assert_eq!(o.response_header("ratelimit-policy"), None);
        quiet.push((o.host_calls, o.callbacks));
    }
    eprintln!("with limits.headers = refusals: {quiet:?}");
    // A refusal still says when to come back.
    assert_eq!(search(&mut vm, SEARCH_S1).status(), Some(200));
    let refused = search(&mut vm, SEARCH_S1);
    assert_eq!(refused.status(), Some(429));
    assert!(refused.response_header("ratelimit").is_some());
    assert!(refused.response_header("retry-after").is_some());
    assert!(quiet[2].0 + 2 <= counts[2].0, "{quiet:?} {counts:?}");

    // `access_log_fields: false`: the audit line without the five filter-state fields.
    p["access_log_fields"] = json!(false);
    let mut vm = filter_data::vm(&host, &p);
    let mut lean = Vec::new();
    for _ in 0..3 {
        let o = vm.http(mcp(EMAIL_A1, &tools_call("send_email", email_args())));
        assert_eq!(o.status(), Some(200), "{:?}", o.local_reply);
        assert_eq!(audit(&o).len(), 1);
        lean.push((o.host_calls, o.callbacks));
    }
    eprintln!("with access_log_fields = false as well: {lean:?}");
    assert!(lean[2].0 + 5 <= quiet[2].0, "{lean:?} {quiet:?}");
    assert!(
        lean[2].0 <= HOST_CALLS - 7 && lean[2].1 <= CALLBACKS,
        "{lean:?}"
    );
}

/// Host calls and callbacks of a cached `tools/call` (default sink, RateLimit headers on the response).
const HOST_CALLS: u64 = 19;
const CALLBACKS: u64 = 11;

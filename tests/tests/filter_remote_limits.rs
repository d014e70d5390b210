//! Remote rate limits (`rate_limit.remote`, Envoy's rate limit service protocol) in the wasmtime harness: the
//! filter pauses on `dispatch_grpc_call`, and every way the call can end has a test: OK, OVER_LIMIT (429 with
//! the service's `Retry-After`), a timeout, an unreachable service (a failed connection or an unknown
//! cluster), an error status, a malformed answer; each failure under the rule's `on_store_error` (refuse 503
//! by default, or let through) and counted as `txngate.ratelimit.remote_*`. Also `local_first` (a local
//! bucket in front: refused calls never reach the service) and one budget across VMs. These run in the
//! pause-at-headers mode; the `held_*` tests run the default body-holding mode (filters/src/filter/hold.rs),
//! where the headers went on already and only the body waits for the service. Prompt and resource rules send
//! their own descriptor entry (`prompt`, `resource`). The real service with Redis and two Envoys:
//! tests/e2e/test_envoy_mesh_limits.py.
//!
//!     cargo test -p txngate-harness --test filter_remote_limits
#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used
)] // test helpers (clippy.toml: #[test] fns)

mod filter_data;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use filter_data::tokens::*;
use filter_data::*;
use serde_json::{json, Value};
use txngate_core::rls_wire::{
    encode_response, Code, Descriptor, RateLimitRequest, RateLimitResponse, Status, Unit,
};
use txngate_harness::{
    CallReply, CallState, GrpcResponse, GrpcTarget, Host, HostOptions, HttpCall, HttpOutcome,
    HttpRequest, Vm, VmOptions,
};

const CLUSTER: &str = "ratelimit";

/// The test policy with `search_web` counted remotely: 3 calls per minute per agent.
fn remote_policy() -> Value {
    let mut p = policy();
    p["rate_limit_service"] = json!({"cluster": CLUSTER, "domain": "txngate", "timeout_ms": 250});
    p["tools"]["search_web"]["rate_limit"] =
        json!({"key": "agent", "limit": 3, "period_seconds": 60, "remote": {}});
    p
}

fn answer(code: Code, remaining: u32, reset_ms: u64) -> CallReply {
    let status = Status {
        code: Some(code),
        requests_per_unit: Some(3),
        limit_remaining: remaining,
        until_reset_ms: Some(reset_ms),
    };
    GrpcResponse::new(encode_response(&RateLimitResponse {
        overall_code: code,
        statuses: vec![status],
        headers: vec![],
    }))
    .reply()
}

/// A VM in the pause-at-headers mode (as `filter_data::vm`) whose gRPC calls `f` answers.
fn vm_answering(
    host: &Host,
    policy: &Value,
    f: impl Fn(&HttpCall) -> CallReply + Send + Sync + 'static,
) -> Vm {
    let mut config = policy.clone();
    config["pause_at_headers"] = json!(true);
    host.vm_with(
        VmOptions::new(config.to_string())
            .allow_on_headers_stop_iteration(true)
            .responder(f),
    )
    .unwrap()
}

/// A VM in the default body-holding mode, configured as Istio's `WasmPlugin` does (as `filter_data::hold_vm`).
fn hold_answering(
    host: &Host,
    policy: &Value,
    f: impl Fn(&HttpCall) -> CallReply + Send + Sync + 'static,
) -> Vm {
    host.vm_with(VmOptions::new(policy.to_string()).responder(f))
        .unwrap()
}

fn metric(host: &Host, name: &str) -> i64 {
    host.metric(name).unwrap_or(0)
}

fn reason(o: &HttpOutcome) -> Value {
    rpc_error(o)["data"]["reason"].clone()
}

fn s1_agent() -> String {
    format!("{AGENT}s1")
}

#[test]
fn ok_allows_and_the_request_carries_the_verified_identity() {
    let host = host();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let mut a = vm_answering(&host, &remote_policy(), move |call| {
        log.lock().unwrap().push(call.clone());
        answer(Code::Ok, 2, 41_500)
    });
    let o = search(&mut a, SEARCH_S1);
    assert_eq!(o.status(), Some(200), "{}", o.body_str());
    assert!(o.forwarded.is_some());
    assert_eq!(
        o.response_header("ratelimit"),
        Some("\"search_web\";r=2;t=42")
    );
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.cluster, CLUSTER);
    assert_eq!(
        call.grpc,
        Some(GrpcTarget {
            service: "envoy.service.ratelimit.v3.RateLimitService".into(),
            method: "ShouldRateLimit".into()
        })
    );
    assert_eq!(call.timeout_ms, 250);
    assert_eq!(o.http_calls[0].state, CallState::GrpcClosed { code: 0 });
    let expected = RateLimitRequest {
        domain: "txngate".into(),
        descriptors: vec![Descriptor {
            entries: vec![
                ("tool".into(), "search_web".into()),
                ("agent".into(), s1_agent()),
            ],
            limit: Some((3, Unit::Minute)),
        }],
        hits_addend: 1,
    };
    assert_eq!(call.body, expected.encode());
    // The identity the service counted is the verified one, forwarded upstream too.
    assert_eq!(
        o.forwarded_header("x-txngate-agent"),
        Some(s1_agent().as_str())
    );
}

#[test]
fn over_limit_is_a_429_with_the_services_retry_after() {
    let host = host();
    let mut a = vm_answering(&host, &remote_policy(), |_| {
        answer(Code::OverLimit, 0, 12_300)
    });
    let o = search(&mut a, SEARCH_S1);
    assert_eq!(o.status(), Some(429), "{}", o.body_str());
    assert!(o.forwarded.is_none());
    assert_eq!(o.response_header("retry-after"), Some("13"));
    assert_eq!(rpc_error(&o)["code"], -31429);
    assert_eq!(reason(&o), "ratelimit.exceeded");
    assert_eq!(metric(&host, "txngate.ratelimited.search_web"), 1);
    let records = audit(&o);
    assert_eq!(records[0]["limit"]["retry_after_seconds"], 13);
}

#[test]
fn a_timeout_refuses_with_503_and_is_counted() {
    let host = host();
    let mut a = vm_answering(&host, &remote_policy(), |_| CallReply::Pending);
    let o = search(&mut a, SEARCH_S1);
    assert!(o.stalled, "the request waits for the service");
    assert!(o.forwarded.is_none());
    host.advance_ms(250);
    let done = a.expire_http_calls();
    assert_eq!(done.len(), 1);
    let o = &done[0];
    assert_eq!(o.status(), Some(503), "{}", o.body_str());
    assert_eq!(rpc_error(o)["code"], -31503);
    assert_eq!(reason(o), "ratelimit.remote_timeout");
    assert!(o.forwarded.is_none());
    assert_eq!(metric(&host, "txngate.ratelimit.remote_timeout"), 1);
    assert_eq!(o.http_calls[0].state, CallState::GrpcClosed { code: 4 });
    let records = audit(o);
    assert!(
        records
            .iter()
            .any(|r| r["reason"] == "ratelimit.remote_timeout"
                && r["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("timed out"))),
        "{records:?}"
    );
}

#[test]
fn an_unreachable_service_refuses_with_503_and_is_counted() {
    let host = host();
    // The connection fails (Envoy closes the call with 14 UNAVAILABLE).
    let mut a = vm_answering(&host, &remote_policy(), |_| CallReply::Fail);
    let o = search(&mut a, SEARCH_S1);
    assert_eq!(o.status(), Some(503), "{}", o.body_str());
    assert_eq!(reason(&o), "ratelimit.remote_unreachable");
    assert_eq!(o.response_header("retry-after"), Some("1"));
    assert_eq!(metric(&host, "txngate.ratelimit.remote_unreachable"), 1);
    // A cluster Envoy does not know: Envoy refuses the dispatch with BadArgument, which the proxy-wasm Rust
    // SDK 0.2.5 does not map (it panics): the VM traps and Envoy fails the request closed (docs/ratelimits.md).
    let host = Host::from_file_with(
        filter_wasm(),
        HostOptions {
            vm_id: "txngate".into(),
            root_id: "txngate".into(),
            start_time_ms: Some(START_MS),
            clusters: Some(["other".to_string()].into_iter().collect()),
            ..HostOptions::default()
        },
    )
    .unwrap();
    let mut b = vm(&host, &remote_policy());
    let o = search(&mut b, SEARCH_S1);
    assert!(o.trapped.is_some());
    assert_eq!(o.status(), Some(503), "{}", o.body_str());
    assert!(o.forwarded.is_none());
}

#[test]
fn errors_and_malformed_answers_refuse_with_503() {
    let host = host();
    let replies = [
        CallReply::GrpcStatus(13),
        GrpcResponse::new(vec![0x0b, 0x01]).reply(),
        GrpcResponse::new(encode_response(&RateLimitResponse {
            overall_code: Code::Unknown,
            statuses: vec![],
            headers: vec![],
        }))
        .reply(),
    ];
    for (i, reply) in replies.into_iter().enumerate() {
        let mut a = vm_answering(&host, &remote_policy(), move |_| reply.clone());
        let o = search(&mut a, SEARCH_S1);
        assert!(o.trapped.is_none() && !a.is_failed(), "{i}");
        assert_eq!(o.status(), Some(503), "{i}: {}", o.body_str());
        assert_eq!(reason(&o), "ratelimit.remote_error", "{i}");
        assert!(o.forwarded.is_none());
        assert_eq!(
            metric(&host, "txngate.ratelimit.remote_error"),
            i as i64 + 1
        );
    }
}

#[test]
fn on_store_error_allow_lets_the_call_through_but_counts_and_audits_it() {
    let host = host();
    let mut p = remote_policy();
    p["tools"]["search_web"]["rate_limit"]["on_store_error"] = json!("allow");
    let mut a = vm_answering(&host, &p, |_| CallReply::Pending);
    let o = search(&mut a, SEARCH_S1);
    assert!(o.stalled);
    host.advance_ms(250);
    let done = a.expire_http_calls();
    let o = &done[0];
    assert_eq!(o.status(), Some(200), "{}", o.body_str());
    assert!(o.forwarded.is_some());
    assert_eq!(metric(&host, "txngate.ratelimit.remote_timeout"), 1);
    let records = audit(o);
    assert!(
        records.iter().any(|r| r["verdict"] == "allow"
            && r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("rate limit service timed out"))),
        "{records:?}"
    );
}

#[test]
fn metadata_callbacks_around_the_message_are_harmless() {
    let host = host();
    let mut a = vm_answering(&host, &remote_policy(), |_| {
        let CallReply::Grpc(mut r) = answer(Code::Ok, 1, 1000) else {
            unreachable!()
        };
        r.initial_metadata = vec![("content-type".into(), "application/grpc".into())];
        r.trailing_metadata = vec![("grpc-status".into(), "0".into())];
        CallReply::Grpc(r)
    });
    let o = search(&mut a, SEARCH_S1);
    assert_eq!(o.status(), Some(200), "{}", o.body_str());
    assert!(o.trapped.is_none());
}

#[test]
fn local_first_keeps_a_flooding_agent_away_from_the_service() {
    let host = host();
    let mut p = remote_policy();
    p["tools"]["search_web"]["rate_limit"] =
        json!({"key": "agent", "limit": 2, "period_seconds": 60, "remote": {"local_first": true}});
    let asked = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&asked);
    let mut a = vm_answering(&host, &p, move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        answer(Code::Ok, 2 - n.min(2), 60_000)
    });
    let statuses: Vec<_> = (0..5).map(|_| search(&mut a, SEARCH_S1).status()).collect();
    assert_eq!(
        statuses,
        [Some(200), Some(200), Some(429), Some(429), Some(429)]
    );
    // Only the two calls the local bucket admitted reached the service.
    assert_eq!(asked.load(Ordering::SeqCst), 2);
    // And the service still has the last word: it refuses what the local bucket admits.
    let mut b = vm_answering(&host, &p, |_| answer(Code::OverLimit, 0, 5_000));
    let o = search(&mut b, SEARCH_S2);
    assert_eq!(o.status(), Some(429));
    assert_eq!(o.response_header("retry-after"), Some("5"));
}

#[test]
fn one_service_budget_holds_across_vms() {
    // The service is scripted as one counter (the real one, limitador over Redis, is in the e2e suite).
    let host = host();
    let used = Arc::new(AtomicU32::new(0));
    let mk = |used: Arc<AtomicU32>| {
        move |_: &HttpCall| {
            let n = used.fetch_add(1, Ordering::SeqCst) + 1;
            if n <= 3 {
                answer(Code::Ok, 3 - n, 60_000)
            } else {
                answer(Code::OverLimit, 0, 60_000)
            }
        }
    };
    let mut vms = [
        vm_answering(&host, &remote_policy(), mk(Arc::clone(&used))),
        vm_answering(&host, &remote_policy(), mk(Arc::clone(&used))),
    ];
    let allowed = (0..6)
        .filter(|i| search(&mut vms[i % 2], SEARCH_S1).status() == Some(200))
        .count();
    assert_eq!(allowed, 3);
}

// ---------------------------------------------------------------------------------------------------------
// The body-holding mode (the default): the decision, and so the call to the service, happens at the end of
// the body; the headers went on already, the body waits.
// ---------------------------------------------------------------------------------------------------------

/// Refused after the headers went on: the upstream has the headers, never a byte of the body.
fn assert_headers_only(o: &HttpOutcome) {
    let f = o
        .forwarded
        .as_ref()
        .unwrap_or_else(|| panic!("the headers went on: {:?}", o.local_reply));
    assert!(f.body.is_empty(), "no body byte: {:?}", f.body_str());
    assert!(!f.complete);
}

#[test]
fn held_ok_releases_the_body_after_the_services_answer() {
    let host = host();
    let asked = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&asked);
    let mut a = hold_answering(&host, &remote_policy(), move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        answer(Code::Ok, 2, 41_500)
    });
    let o = search(&mut a, SEARCH_S1);
    assert_eq!(o.status(), Some(200), "{:?}", o.local_reply);
    assert!(o.trapped.is_none() && !o.stalled);
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    let f = o.forwarded.as_ref().unwrap();
    assert!(
        f.complete,
        "the held body was released (resume_http_request)"
    );
    let body: Value = serde_json::from_slice(&f.body).unwrap();
    assert_eq!(body["params"]["name"], "search_web");
    assert_eq!(
        o.forwarded_header("x-txngate-agent"),
        Some(s1_agent().as_str())
    );
    assert_eq!(
        o.response_header("ratelimit"),
        Some("\"search_web\";r=2;t=42")
    );
}

#[test]
fn held_over_limit_refuses_and_no_body_byte_passes() {
    let host = host();
    let mut a = hold_answering(&host, &remote_policy(), |_| {
        answer(Code::OverLimit, 0, 12_300)
    });
    let o = search(&mut a, SEARCH_S1);
    assert_eq!(o.status(), Some(429), "{}", o.body_str());
    assert_headers_only(&o);
    assert_eq!(o.response_header("retry-after"), Some("13"));
    assert_eq!(rpc_error(&o)["code"], -31429);
    assert_eq!(reason(&o), "ratelimit.exceeded");
    assert_eq!(metric(&host, "txngate.ratelimited.search_web"), 1);
}

#[test]
fn held_body_waits_for_the_service_then_a_timeout_refuses() {
    let host = host();
    let mut a = hold_answering(&host, &remote_policy(), |_| CallReply::Pending);
    let o = search(&mut a, SEARCH_S1);
    assert!(o.stalled, "the body waits for the service");
    assert_headers_only(&o);
    assert_eq!(a.pending_http_calls().len(), 1);
    host.advance_ms(250);
    let done = a.expire_http_calls();
    assert_eq!(done.len(), 1);
    let o = &done[0];
    assert_eq!(o.status(), Some(503), "{}", o.body_str());
    assert_eq!(rpc_error(o)["code"], -31503);
    assert_eq!(reason(o), "ratelimit.remote_timeout");
    assert_headers_only(o);
    assert_eq!(metric(&host, "txngate.ratelimit.remote_timeout"), 1);
}

#[test]
fn held_on_store_error_allow_releases_the_body_after_the_timeout() {
    let host = host();
    let mut p = remote_policy();
    p["tools"]["search_web"]["rate_limit"]["on_store_error"] = json!("allow");
    let mut a = hold_answering(&host, &p, |_| CallReply::Pending);
    let o = search(&mut a, SEARCH_S1);
    assert!(o.stalled);
    host.advance_ms(250);
    let done = a.expire_http_calls();
    let o = &done[0];
    assert_eq!(o.status(), Some(200), "{}", o.body_str());
    let f = o.forwarded.as_ref().unwrap();
    assert!(f.complete && !f.body.is_empty(), "the body was released");
    assert_eq!(metric(&host, "txngate.ratelimit.remote_timeout"), 1);
}

#[test]
fn held_local_first_refusal_never_reaches_the_service() {
    let host = host();
    let mut p = remote_policy();
    p["tools"]["search_web"]["rate_limit"] =
        json!({"key": "agent", "limit": 1, "period_seconds": 60, "remote": {"local_first": true}});
    let asked = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&asked);
    let mut a = hold_answering(&host, &p, move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        answer(Code::Ok, 0, 60_000)
    });
    assert_eq!(search(&mut a, SEARCH_S1).status(), Some(200));
    let o = search(&mut a, SEARCH_S1);
    assert_eq!(o.status(), Some(429));
    assert_headers_only(&o);
    assert_eq!(asked.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------------------------
// Prompt and resource rules
// ---------------------------------------------------------------------------------------------------------

fn rpc(method: &str, params: Value) -> HttpRequest {
    mcp(
        SEARCH_S1,
        &json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}),
    )
}

#[test]
fn prompt_and_resource_rules_send_their_own_descriptor_entry() {
    let host = host();
    let mut p = remote_policy();
    let rl = json!({"key": "sub", "limit": 5, "period_seconds": 60, "remote": {}});
    p["prompts"] = json!({"code_review": {"rate_limit": rl.clone()}});
    p["resources"] = json!({"file:///docs/**": {"rate_limit": rl}});
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let mut a = hold_answering(&host, &p, move |call| {
        log.lock().unwrap().push(call.body.clone());
        answer(Code::Ok, 4, 60_000)
    });
    let o = a.http(rpc(
        "prompts/get",
        json!({"name": "code_review", "arguments": {}}),
    ));
    assert_eq!(o.status(), Some(200), "{}", o.body_str());
    let o = a.http(rpc(
        "resources/read",
        json!({"uri": "file:///docs/a/b.txt"}),
    ));
    assert_eq!(o.status(), Some(200), "{}", o.body_str());
    let sub = audit(&o)[0]["sub"].as_str().unwrap_or_default().to_string();
    assert!(!sub.is_empty(), "{:?}", audit(&o));
    let expected = |kind: &str, name: &str| {
        RateLimitRequest {
            domain: "txngate".into(),
            descriptors: vec![Descriptor {
                entries: vec![(kind.into(), name.into()), ("sub".into(), sub.clone())],
                limit: Some((5, Unit::Minute)),
            }],
            hits_addend: 1,
        }
        .encode()
    };
    let bodies = seen.lock().unwrap().clone();
    // The prompt's exact name; the resource rule's pattern, not the URI (one budget per rule).
    assert_eq!(
        bodies,
        vec![
            expected("prompt", "code_review"),
            expected("resource", "file:///docs/**")
        ]
    );
}

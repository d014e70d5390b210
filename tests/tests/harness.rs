//! Tests of the harness itself, driving the probe filter fixture (tests/fixtures/probe-filter).
#![allow(clippy::expect_used)] // test helpers (clippy.toml: #[test] fns)

mod common;

use common::{host, START_MS};
use txngate_harness::{
    CallReply, CallState, Host, HostOptions, HttpCallResponse, HttpRequest, LogLevel, LogSource,
    MetricKind, StartError, UpstreamResponse, VmOptions,
};

fn body_logs(o: &txngate_harness::HttpOutcome, prefix: &str) -> Vec<String> {
    o.plugin_logs(LogLevel::Info)
        .into_iter()
        .filter(|m| m.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

#[test]
fn local_reply_goes_through_the_response_callbacks() {
    let mut vm = host().vm("").unwrap();
    let o = vm.http(HttpRequest::get("/secret").header("x-probe-deny", "no token"));
    let lr = o.local_reply.as_ref().expect("local reply");
    assert_eq!(lr.status, 403);
    assert_eq!(lr.body_str(), "denied: no token");
    assert_eq!(lr.header("x-probe"), Some("denied"));
    assert!(
        o.forwarded.is_none(),
        "a local reply must not reach the upstream"
    );
    let resp = o.response.as_ref().expect("client response");
    assert_eq!(resp.status, 403);
    assert_eq!(resp.body_str(), "denied: no token");
    assert!(resp.complete);
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    // Like in Envoy, the local reply went through on_http_response_headers/body.
    assert_eq!(resp.header("x-probe-resp"), Some("1"));
    assert!(o.logged("response headers: status=403 eos=false"));
    assert!(o.logged("response body: size=16 eos=true"));
    assert!(o.logged("on_log status=403"));
    assert!(!o.stalled);
    assert!(o.trapped.is_none());
}

#[test]
fn forwarded_headers_and_properties() {
    let mut vm = host().vm("").unwrap();
    let o = vm.http(
        HttpRequest::get("/items?x=1")
            .header("Host", "api.example")
            .header("X-Custom", "v")
            .peer("spiffe://cluster.local/ns/agents/sa/agent-1")
            .source("10.1.2.3:4444"),
    );
    let f = o.forwarded.as_ref().expect("forwarded");
    assert!(f.complete);
    assert_eq!(f.header(":authority"), Some("api.example"));
    assert_eq!(f.header(":path"), Some("/items?x=1"));
    assert_eq!(f.header(":method"), Some("GET"));
    assert_eq!(f.header("x-custom"), Some("v"));
    assert_eq!(
        f.header("x-probe-seen"),
        Some("1"),
        "filter mutation forwarded"
    );
    assert!(o.logged(
        "peer=spiffe://cluster.local/ns/agents/sa/agent-1 source=10.1.2.3:4444 plugin=txngate \
         missing_is_none=true"
    ));
    assert_eq!(o.status(), Some(200));
    let echo = o.body_json().expect("echo body");
    assert_eq!(echo["headers"]["x-probe-seen"], "1");
    assert_eq!(echo["path"], "/items?x=1");
    assert_eq!(o.response_header("x-probe-resp"), Some("1"));

    // Without mTLS the peer property is absent and does not trap.
    let o = vm.http(HttpRequest::get("/"));
    assert!(o.logged("peer=none source=127.0.0.1:50000"), "{:?}", o.logs);
    assert!(o.trapped.is_none());
}

#[test]
fn request_body_chunks_accumulate_while_the_filter_buffers() {
    let mut vm = host().vm("").unwrap();
    let o = vm.http(
        HttpRequest::post("/upload")
            .header("x-probe-buffer", "upper")
            .body("hello world")
            .chunked(4),
    );
    assert_eq!(
        body_logs(&o, "request body:"),
        vec![
            "request body: chunk=1 size=4 eos=false",
            "request body: chunk=2 size=8 eos=false",
            "request body: chunk=3 size=11 eos=true",
        ]
    );
    assert!(o.logged("full request body (11 bytes): hello world"));
    let f = o.forwarded.as_ref().unwrap();
    assert_eq!(f.body_str(), "HELLO WORLD");
    assert!(f.complete);
    assert_eq!(f.header("content-length"), Some("11"));
    assert_eq!(o.body_json().unwrap()["body"], "HELLO WORLD");
}

#[test]
fn streaming_chunks_pass_one_at_a_time() {
    let mut vm = host().vm("").unwrap();
    let o = vm.http(HttpRequest::post("/stream").body("hello world").chunked(4));
    assert_eq!(
        body_logs(&o, "request body:"),
        vec![
            "request body: chunk=1 size=4 eos=false",
            "request body: chunk=2 size=4 eos=false",
            "request body: chunk=3 size=3 eos=true",
        ]
    );
    assert_eq!(o.forwarded.as_ref().unwrap().body_str(), "hello world");
}

#[test]
fn shared_data_cas_counter_across_two_vms() {
    let host = host();
    let mut vms = [host.vm("").unwrap(), host.vm("").unwrap()];
    for i in 0..6 {
        let o = vms[i % 2].http(HttpRequest::get("/").header("x-probe-cas", "1"));
        assert_eq!(o.vm, vms[i % 2].index());
        let expected = (i + 1).to_string();
        assert_eq!(
            o.forwarded_header("x-probe-counter"),
            Some(expected.as_str())
        );
    }
    let (value, cas) = host.shared_value("counter").unwrap();
    assert_eq!(value, b"6");

    // Test-side writes follow the same rules as the plugin's.
    assert!(
        !host.set_shared_data("counter", b"50", cas + 1),
        "stale cas must be rejected"
    );
    assert_eq!(host.shared_value("counter").unwrap(), (b"6".to_vec(), cas));
    assert!(
        host.set_shared_data("counter", b"99", 0),
        "cas 0 overwrites unconditionally"
    );
    let o = vms[1].http(HttpRequest::get("/").header("x-probe-cas", "1"));
    assert_eq!(o.forwarded_header("x-probe-counter"), Some("100"));
    assert!(
        host.set_shared_data("brand-new", b"x", 4242),
        "a missing key ignores the cas"
    );
    // One global, increasing cas counter.
    let (_, counter_cas) = host.shared_value("counter").unwrap();
    let (_, new_cas) = host.shared_value("brand-new").unwrap();
    assert!(new_cas > counter_cas && counter_cas > cas);
}

#[test]
fn shared_data_rules_seen_from_the_plugin() {
    let mut vm = host().vm("").unwrap();
    let o = vm.http(HttpRequest::get("/").header("x-probe-shared-rules", "1"));
    assert_eq!(
        o.forwarded_header("x-probe-rules"),
        Some(
            "missing:Ok(()) stale:Err(CasMismatch) zero:Ok(()) value:Some(\"c\") \
             cas_advanced:true absent:Ok((None, None))"
        )
    );
}

#[test]
fn http_call_answered_by_the_responder_resumes_the_request() {
    let mut vm = host()
        .vm_with(VmOptions::new("").responder(|call| {
            if call.path() == "/check-headers" {
                HttpCallResponse::new(200).body("tok-1").reply()
            } else {
                CallReply::Fail
            }
        }))
        .unwrap();
    let o = vm.http(HttpRequest::get("/x").header("x-probe-call", "headers"));
    assert!(!o.stalled, "{:?}", o.stall_reason);
    assert_eq!(o.forwarded_header("x-probe-authz"), Some("tok-1"));
    assert_eq!(o.status(), Some(200));
    assert_eq!(o.http_calls.len(), 1);
    let call = &o.http_calls[0];
    assert_eq!(call.cluster, "authz");
    assert_eq!(call.header(":method"), Some("POST"));
    assert_eq!(call.path(), "/check-headers");
    assert_eq!(call.body_str(), "check");
    assert_eq!(call.header("content-length"), Some("5"));
    assert_eq!(
        call.header("x-probe-context"),
        Some(o.context_id.to_string().as_str())
    );
    assert_eq!(call.timeout_ms, 500);
    assert_eq!(call.state, CallState::Answered { status: 200 });
    assert!(o.logged("authz call 1 answered status=200 body=tok-1"));
}

#[test]
fn http_call_denial_and_failure_become_local_replies() {
    let mut vm = host().vm("").unwrap();
    let denied = vm.http(
        HttpRequest::get("/x")
            .header("x-probe-call", "headers")
            .responder(|_| HttpCallResponse::new(403).reply()),
    );
    assert_eq!(denied.local_reply.as_ref().unwrap().status, 403);
    assert_eq!(denied.body_str(), "authz said no");
    assert!(denied.forwarded.is_none());

    let failed = vm.http(
        HttpRequest::get("/x")
            .header("x-probe-call", "headers")
            .responder(|_| CallReply::Fail),
    );
    assert_eq!(failed.status(), Some(503));
    assert_eq!(failed.body_str(), "authz down");
    assert_eq!(failed.http_calls[0].state, CallState::Failed);
    assert!(failed.logged("authz call 2 failed"));
}

#[test]
fn pending_http_call_stalls_the_stream_until_answered() {
    let mut vm = host().vm("").unwrap();
    let o = vm.http(HttpRequest::get("/x").header("x-probe-call", "headers"));
    assert!(o.stalled);
    let reason = o.stall_reason.clone().unwrap();
    assert!(
        reason.contains("pending http calls: #1 to authz POST /check-headers"),
        "{reason}"
    );
    assert!(o.forwarded.is_none());
    assert!(o.response.is_none());
    assert_eq!(vm.stalled_streams(), vec![o.context_id]);
    let pending = vm.pending_http_calls();
    assert_eq!(pending.len(), 1);

    let o2 = vm
        .respond_http_call(
            pending[0].token,
            HttpCallResponse::new(200).body("late").reply(),
        )
        .unwrap()
        .expect("the stream's outcome");
    assert!(!o2.stalled);
    assert_eq!(o2.context_id, o.context_id);
    assert_eq!(o2.forwarded_header("x-probe-authz"), Some("late"));
    assert_eq!(o2.status(), Some(200));
    assert!(vm.stalled_streams().is_empty());
    assert!(vm.pending_http_calls().is_empty());
}

#[test]
fn body_phase_http_call_sees_and_changes_the_buffered_body() {
    let mut vm = host().vm("").unwrap();
    let o = vm.http(
        HttpRequest::post("/tx")
            .header("x-probe-call", "body")
            .body("payload")
            .chunked(3)
            .responder(|_| HttpCallResponse::new(200).body("ok").reply()),
    );
    assert!(!o.stalled, "{:?}", o.stall_reason);
    assert!(o.logged("full request body (7 bytes): payload"));
    let f = o.forwarded.as_ref().unwrap();
    assert_eq!(f.body_str(), "payload|authz=ok");
    assert!(f.complete);
}

#[test]
fn changing_request_headers_after_they_were_forwarded_traps_like_envoy() {
    let mut vm = host().vm("").unwrap();
    let o = vm.http(
        HttpRequest::post("/tx")
            .header("x-probe-call", "body-header")
            .body("payload")
            .responder(|_| HttpCallResponse::new(200).body("ok").reply()),
    );
    let trap = o.trapped.clone().expect("trap");
    assert!(trap.contains("unexpected status: 2"), "{trap}");
    assert!(
        o.logs.iter().any(|l| l.source == LogSource::Host
            && l.message
                .contains("replace_header_map_value(RequestHeaders")
            && l.message.contains("not available")),
        "{:#?}",
        o.logs
    );
    assert_eq!(o.status(), Some(503));
    // The headers had been forwarded, the body never completed.
    assert!(!o.forwarded.as_ref().unwrap().complete);
}

#[test]
fn pause_in_request_headers_without_allow_on_headers_stop_iteration_stalls() {
    let mut vm = host().vm("").unwrap();
    let o = vm.http(
        HttpRequest::post("/p")
            .header("x-probe-pause", "1")
            .body("abc"),
    );
    assert!(o.stalled);
    assert!(o.forwarded.is_none());
    assert!(o.response.is_none());
    assert!(
        !o.logged("request body:"),
        "Envoy does not deliver the body"
    );
    let reason = o.stall_reason.clone().unwrap();
    assert!(
        reason.contains("allow_on_headers_stop_iteration is false"),
        "{reason}"
    );
    assert!(reason.contains("3 bytes held"), "{reason}");

    // Envoy's stream timeout ends it with a 504 that goes through the response callbacks.
    let t = vm.timeout_stream(o.context_id).unwrap();
    assert!(t.timed_out);
    assert!(!t.stalled);
    assert_eq!(t.status(), Some(504));
    assert_eq!(t.response_header("x-probe-resp"), Some("1"));
    assert!(vm.stalled_streams().is_empty());
}

#[test]
fn with_allow_on_headers_stop_iteration_the_body_is_delivered() {
    let mut vm = host().vm("").unwrap();
    let o = vm.http(
        HttpRequest::post("/p")
            .header("x-probe-pause", "1")
            .body("abc")
            .allow_on_headers_stop_iteration(true),
    );
    assert!(!o.stalled, "{:?}", o.stall_reason);
    assert!(o.logged("request body: chunk=1 size=3 eos=true"));
    // A Continue from the body callback releases the paused headers with the body.
    let f = o.forwarded.as_ref().unwrap();
    assert_eq!(f.body_str(), "abc");
    assert!(f.complete);
    assert_eq!(o.status(), Some(200));
}

#[test]
fn resuming_a_stop_all_delivers_the_held_body_in_one_callback() {
    let mut vm = host().vm("").unwrap();
    let o = vm.http(
        HttpRequest::post("/x")
            .header("x-probe-call", "headers")
            .body("abcdef")
            .chunked(2),
    );
    assert!(o.stalled);
    assert!(o.stall_reason.as_deref().unwrap().contains("6 bytes held"));
    let token = vm.pending_http_calls()[0].token;
    let o2 = vm
        .respond_http_call(token, HttpCallResponse::new(200).body("t").reply())
        .unwrap()
        .unwrap();
    assert_eq!(
        body_logs(&o2, "request body:"),
        vec!["request body: chunk=1 size=6 eos=true"]
    );
    let f = o2.forwarded.as_ref().unwrap();
    assert_eq!(f.header("x-probe-authz"), Some("t"));
    assert_eq!(f.body_str(), "abcdef");
    assert_eq!(o2.status(), Some(200));
}

#[test]
fn metrics_are_shared_by_vms_and_follow_envoy_rules() {
    let host = host();
    let mut vm0 = host.vm("").unwrap();
    let mut vm1 = host.vm("").unwrap();
    vm0.http(HttpRequest::get("/"));
    vm1.http(HttpRequest::get("/"));
    let o = vm0.http(
        HttpRequest::post("/")
            .header("x-probe-buffer", "keep")
            .body("12345"),
    );
    assert_eq!(host.metric("probe_requests"), Some(3));
    assert!(
        o.logged("requests=3"),
        "get_metric reads the shared counter"
    );
    assert_eq!(host.metric("probe_gauge"), Some(30));
    let metrics = host.metrics();
    assert_eq!(metrics["probe_requests"].kind, MetricKind::Counter);
    assert_eq!(metrics["probe_gauge"].kind, MetricKind::Gauge);
    assert_eq!(metrics["probe_body_bytes"].kind, MetricKind::Histogram);
    assert_eq!(metrics["probe_body_bytes"].samples, vec![5]);
    assert_eq!(o.metric("probe_requests"), Some(3));
}

#[test]
fn ticks_follow_the_clock_and_can_dispatch_calls() {
    let host = host();
    let mut vm = host
        .vm_with(VmOptions::new("tick=1000\ntick_call=1").responder(|call| {
            HttpCallResponse::new(200)
                .body(format!("pong {}", call.path()))
                .reply()
        }))
        .unwrap();
    assert_eq!(vm.tick_period_ms(), 1000);
    assert_eq!(vm.run_due_ticks().callbacks, 0, "no time has passed");
    host.advance_ms(3500);
    let r = vm.run_due_ticks();
    assert_eq!(r.callbacks, 3);
    assert!(r.trapped.is_none());
    let now = START_MS + 3500;
    assert!(
        r.logged(&format!("tick 1 now_ms={now} shared_ticks=1")),
        "{:#?}",
        r.logs
    );
    assert!(r.logged(&format!("tick 3 now_ms={now} shared_ticks=3")));
    assert_eq!(r.http_calls.len(), 3);
    assert!(r.http_calls.iter().all(|c| c.path() == "/tick"));
    assert!(r.logged("tick call 1 answered: status=200 body=pong /tick"));
    assert_eq!(host.shared_value("ticks").unwrap().0, b"3");
    let r = vm.tick();
    assert!(r.logged("tick 4 "));
    assert_eq!(host.now_ms(), now);
}

#[test]
fn trap_fails_the_vm_like_envoy() {
    let host = host();
    let mut vm = host.vm("").unwrap();
    let o = vm.http(HttpRequest::get("/").header("x-probe-panic", "headers"));
    let trap = o.trapped.clone().expect("trap captured");
    assert!(trap.contains("unreachable"), "{trap}");
    assert!(trap.contains("probe panic in request headers"), "{trap}");
    assert_eq!(o.status(), Some(503));
    assert!(o.forwarded.is_none());
    assert!(o.vm_failed);
    assert!(vm.is_failed());
    assert!(vm.failure().unwrap().contains("probe panic"));

    // The failed VM answers 503 without running the plugin.
    let o2 = vm.http(HttpRequest::get("/after"));
    assert_eq!(o2.status(), Some(503));
    assert!(o2.vm_failed);
    assert!(o2.trapped.is_none());
    assert!(o2.plugin_logs(LogLevel::Trace).is_empty());

    // New VMs can be created from the same host.
    let mut fresh = host.vm("").unwrap();
    assert_eq!(fresh.http(HttpRequest::get("/")).status(), Some(200));

    // A trap in the response phase, before the response headers left: 503 as well.
    let o3 = fresh.http(HttpRequest::get("/").header("x-probe-panic", "response"));
    assert!(o3
        .trapped
        .as_deref()
        .unwrap()
        .contains("probe panic in response headers"));
    assert!(o3.forwarded.as_ref().unwrap().complete);
    assert_eq!(o3.status(), Some(503));
}

#[test]
fn fail_open_bypasses_a_failed_vm() {
    let mut vm = host().vm_with(VmOptions::new("").fail_open(true)).unwrap();
    let o = vm.http(HttpRequest::get("/").header("x-probe-panic", "headers"));
    assert!(o.trapped.is_some());
    assert_eq!(o.status(), Some(200));
    assert_eq!(
        o.forwarded_header("x-probe-seen"),
        None,
        "the filter died before"
    );
    let o2 = vm.http(HttpRequest::get("/next"));
    assert!(o2.vm_failed);
    assert_eq!(o2.status(), Some(200));
}

#[test]
fn rejected_configuration_reports_the_plugin_logs() {
    let err = host().vm("fail=missing issuer").unwrap_err();
    let start = err.downcast_ref::<StartError>().expect("a StartError");
    assert_eq!(start.stage, "on_configure");
    assert!(start.trap.is_none());
    assert!(start
        .plugin_messages()
        .contains(&"invalid probe config: missing issuer"));
    assert!(err
        .to_string()
        .contains("invalid probe config: missing issuer"));
}

#[test]
fn response_body_can_be_replaced() {
    let mut vm = host().vm("").unwrap();
    let o = vm.http(
        HttpRequest::get("/")
            .header("x-probe-replace", "1")
            .upstream(UpstreamResponse::text(200, "abcdefgh").chunked(3)),
    );
    assert_eq!(o.body_str(), "replaced:abcdefgh");
    assert_eq!(o.response_header("content-length"), None);
    assert_eq!(
        body_logs(&o, "response body:"),
        vec![
            "response body: size=3 eos=false",
            "response body: size=6 eos=false",
            "response body: size=8 eos=true",
        ]
    );

    let o = vm.http(HttpRequest::get("/events").upstream(UpstreamResponse::sse(&["one", "two"])));
    assert_eq!(o.body_str(), "data: one\n\ndata: two\n\n");
    assert_eq!(o.response_header("content-type"), Some("text/event-stream"));
    assert_eq!(
        body_logs(&o, "response body:"),
        vec![
            "response body: size=11 eos=false",
            "response body: size=11 eos=true",
        ]
    );
}

#[test]
fn shared_queue_notifies_the_registering_vm() {
    let host = host();
    let mut vm = host.vm("").unwrap();
    vm.http(HttpRequest::get("/").header("x-probe-enqueue", "hello"));
    assert!(vm.logs().iter().any(|l| l.message == "queue 1 item: hello"));
    host.enqueue("probe_queue", b"from test").unwrap();
    assert_eq!(host.queue_len("probe_queue"), Some(1));
    let r = vm.deliver_queue_notifications();
    assert!(r.logged("queue 1 item: from test"));
    assert_eq!(host.queue_len("probe_queue"), Some(0));
}

#[test]
fn set_property_is_recorded() {
    let mut vm = host().vm("").unwrap();
    let o = vm.http(HttpRequest::get("/").header("x-probe-prop", "abc"));
    assert_eq!(o.property_set(&["probe", "marker"]), Some(&b"abc"[..]));
}

#[test]
fn vm_start_sees_configuration_log_level_and_stdout() {
    let host = host();
    let vm = host
        .vm_with(
            VmOptions::new("print=hi")
                .vm_config("vm-conf")
                .log_level(LogLevel::Debug),
        )
        .unwrap();
    let logs = vm.logs();
    assert!(logs
        .iter()
        .any(|l| l.message == "vm start: vm_config=\"vm-conf\" size=7 host_log_level=1"));
    assert!(logs
        .iter()
        .any(|l| l.source == LogSource::Stdout && l.message == "stdout says hi"));
}

#[test]
fn the_probe_imports_are_all_implemented() {
    let host = host();
    for import in [
        "env.proxy_log",
        "env.proxy_http_call",
        "env.proxy_set_shared_data",
    ] {
        assert!(host.imports().iter().any(|i| i == import), "{import}");
    }
}

/// A module with only function imports of type `() -> ()`.
fn module_with_imports(imports: &[(&str, &str)]) -> Vec<u8> {
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.extend([1, 4, 1, 0x60, 0, 0]);
    let mut section = vec![imports.len() as u8];
    for (module, name) in imports {
        section.push(module.len() as u8);
        section.extend(module.as_bytes());
        section.push(name.len() as u8);
        section.extend(name.as_bytes());
        section.extend([0, 0]);
    }
    m.push(2);
    m.push(section.len() as u8);
    m.extend(section);
    m
}

#[test]
fn unimplemented_imports_are_reported_by_name() {
    let wasm = module_with_imports(&[
        ("env", "proxy_log"),
        ("env", "proxy_future_call"),
        ("wasi_snapshot_preview1", "sock_accept"),
    ]);
    let err = Host::from_bytes(&wasm, HostOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 function(s)"), "{err}");
    assert!(err.contains("env.proxy_future_call"), "{err}");
    assert!(err.contains("wasi_snapshot_preview1.sock_accept"), "{err}");
    assert!(!err.contains("env.proxy_log"), "{err}");
}

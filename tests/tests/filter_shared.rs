//! The txngate filter across VMs (Envoy workers) in the wasmtime harness: rate limits in shared data (the
//! creation lock of filters/src/store.rs, the bounded slot table), and remote JWKS fetched by one VM and
//! adopted by the others.
//!
//!     cargo test -p txngate-harness --test filter_shared
#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used
)] // test helpers (clippy.toml: #[test] fns)

mod filter_data;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use filter_data::tokens::*;
use filter_data::*;
use serde_json::{json, Value};
use txngate_harness::{CallReply, Host, HttpCallResponse, Vm, VmOptions};

#[test]
fn a_limit_of_ten_holds_across_two_vms() {
    let host = host();
    let mut vms = [vm(&host, &policy()), vm(&host, &policy())];
    assert_eq!(
        host.shared_value(LOCK_KEY).unwrap().0,
        b"free",
        "created at VM start"
    );
    let mut statuses = Vec::new();
    for i in 0..11 {
        let o = vms[i % 2].http(mcp(EMAIL_A1, &tools_call("send_email", email_args())));
        statuses.push(o.status().unwrap());
        if i == 10 {
            assert_eq!(o.response_header("retry-after"), Some("6"));
            assert_eq!(rpc_error(&o)["code"], -31429);
            assert_eq!(o.metric("txngate.ratelimited.send_email"), Some(1));
        }
    }
    assert_eq!(statuses, [[200; 10].as_slice(), &[429]].concat());
    // Another agent has its own bucket; after 6 s agent a1 gets one more call.
    assert_eq!(
        vms[1]
            .http(mcp(EMAIL_A2, &tools_call("send_email", email_args())))
            .status(),
        Some(200)
    );
    host.advance_ms(6000);
    assert_eq!(
        vms[0]
            .http(mcp(EMAIL_A1, &tools_call("send_email", email_args())))
            .status(),
        Some(200)
    );
    // Two buckets, two slots, one lock: nothing else was written.
    let keys: Vec<String> = host.shared_data().into_keys().collect();
    assert_eq!(
        keys.iter()
            .filter(|k| k.starts_with("txngate:rl:slot:"))
            .count(),
        2,
        "{keys:?}"
    );
    assert_eq!(host.shared_value(LOCK_KEY).unwrap().0, b"free");
}

/// A lock value as a VM that died while holding it would leave it: `H ‖ owner ‖ sequence ‖ since_ms`.
fn held_lock(since_ms: u64) -> Vec<u8> {
    let mut v = vec![b'H'];
    v.extend_from_slice(&42u64.to_le_bytes());
    v.extend_from_slice(&1u64.to_le_bytes());
    v.extend_from_slice(&since_ms.to_le_bytes());
    v
}

#[test]
fn a_held_creation_lock_fails_closed_until_it_can_be_stolen() {
    let host = host();
    let mut a = vm(&host, &policy());
    let mut b = vm(&host, &policy());
    // VM "c" took the lock to create a slot and trapped before releasing it.
    let (_, cas) = host.shared_value(LOCK_KEY).unwrap();
    assert!(host.set_shared_data(LOCK_KEY, &held_lock(host.now_ms()), cas));

    // A new bucket needs a new slot: it cannot be created while the lock is live (fail closed, 503).
    let o = search(&mut a, SEARCH_S1);
    assert_eq!(o.status(), Some(503), "{}", o.body_str());
    assert_eq!(rpc_error(&o)["data"]["reason"], "ratelimit.contention");
    assert_eq!(o.response_header("retry-after"), Some("1"));
    assert!(o.forwarded.is_none());
    assert!(
        host.shared_data()
            .keys()
            .all(|k| !k.starts_with("txngate:rl:slot:")),
        "nothing created without the lock"
    );

    // Past the steal timeout the lock is taken over, the slot created and the lock released.
    host.advance_ms(1000);
    let o = search(&mut b, SEARCH_S1);
    assert_eq!(o.status(), Some(200), "{}", o.body_str());
    assert!(o.logged("took over the rate-limit creation lock"));
    assert_eq!(o.metric("txngate.ratelimit.lock_stolen"), Some(1));
    assert_eq!(host.shared_value(LOCK_KEY).unwrap().0, b"free");
    // And the bucket is shared: the other VM sees it spent (limit 1 per minute).
    assert_eq!(search(&mut a, SEARCH_S1).status(), Some(429));
}

#[test]
fn a_corrupt_or_missing_lock_never_lets_a_call_through_unchecked() {
    let host = host();
    let mut a = vm(&host, &policy());
    assert!(host.set_shared_data(LOCK_KEY, b"garbage", 0));
    let o = search(&mut a, SEARCH_S1);
    assert_eq!(o.status(), Some(503));
    assert_eq!(rpc_error(&o)["data"]["reason"], "ratelimit.store_error");
    assert!(o.forwarded.is_none());
    // A host where the lock was never created: the first creation makes it.
    let fresh = host.with_fresh_state();
    let mut c = vm(&fresh, &policy());
    assert!(fresh.set_shared_data(LOCK_KEY, b"free", 0));
    assert_eq!(search(&mut c, SEARCH_S1).status(), Some(200));
}

#[test]
fn the_bucket_key_space_is_bounded_and_reused_when_drained() {
    let host = host();
    let mut p = policy();
    p["limits"] = json!({"max_keys": 4});
    let mut vms = [vm(&host, &p), vm(&host, &p)];
    let agents = [
        SEARCH_S1, SEARCH_S2, SEARCH_S3, SEARCH_S4, SEARCH_S5, SEARCH_S6,
    ];
    // Each bucket may probe all 4 slots: the first four agents take them, the next ones find every slot
    // live and are refused (fail closed) rather than counted nowhere.
    let statuses = |vms: &mut [Vm; 2]| -> Vec<u16> {
        agents
            .iter()
            .enumerate()
            .map(|(i, token)| search(&mut vms[i % 2], token).status().unwrap())
            .collect()
    };
    assert_eq!(statuses(&mut vms), [200, 200, 200, 200, 503, 503]);
    let o = search(&mut vms[0], SEARCH_S6);
    assert_eq!(rpc_error(&o)["data"]["reason"], "ratelimit.store_full");
    let slots = |h: &Host| {
        h.shared_data()
            .keys()
            .filter(|k| k.starts_with("txngate:rl:slot:"))
            .count()
    };
    assert_eq!(slots(&host), 4);
    // A minute later every bucket drained: slots are reused, the store does not grow.
    host.advance_ms(60_000);
    assert_eq!(statuses(&mut vms), [200, 200, 200, 200, 503, 503]);
    assert_eq!(slots(&host), 4);
}

// -- remote JWKS -------------------------------------------------------------------------------------------

fn remote_policy() -> Value {
    let mut p = policy();
    p["issuers"] = json!([{
        "name": "tts", "jwks_uri": "https://tts.trust.example/.well-known/jwks.json", "cluster": "tts",
        "refresh_seconds": 60, "max_stale_seconds": 120, "min_refetch_seconds": 5, "algorithms": ["EdDSA"]
    }]);
    p
}

/// A JWKS endpoint serving `current`, counting requests.
fn jwks_server(
    current: Arc<std::sync::Mutex<(u16, String)>>,
    count: Arc<AtomicUsize>,
) -> impl Fn(&txngate_harness::HttpCall) -> CallReply + Send + Sync {
    move |call| {
        assert_eq!(call.cluster, "tts");
        assert_eq!(call.header(":authority"), Some("tts.trust.example"));
        assert_eq!(call.path(), "/.well-known/jwks.json");
        assert_eq!(call.header(":method"), Some("GET"));
        count.fetch_add(1, Ordering::SeqCst);
        let (status, body) = current.lock().unwrap().clone();
        if status == 0 {
            return CallReply::Fail;
        }
        HttpCallResponse::new(status)
            .header("content-type", "application/json")
            .body(body)
            .reply()
    }
}

#[test]
fn remote_keys_are_fetched_once_shared_and_rotated_on_an_unknown_kid() {
    let host = host();
    let current = Arc::new(std::sync::Mutex::new((200u16, JWKS_K1.to_string())));
    let count = Arc::new(AtomicUsize::new(0));
    let options = || {
        VmOptions::new(remote_policy().to_string())
            .allow_on_headers_stop_iteration(true)
            .responder(jwks_server(current.clone(), count.clone()))
    };
    let mut a = host.vm_with(options()).unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 1, "fetched at configure");
    let mut b = host.vm_with(options()).unwrap();
    // B found A's claim and set in shared data: no second fetch.
    assert_eq!(count.load(Ordering::SeqCst), 1);
    let call = tools_call("calendar_read", json!({"day": "mon"}));
    assert_eq!(a.http(mcp(CALENDAR_A1, &call)).status(), Some(200));
    host.advance_ms(500);
    b.run_due_ticks();
    assert_eq!(
        b.http(mcp(CALENDAR_A1, &call)).status(),
        Some(200),
        "B adopted the shared set"
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);

    // Rotation: the issuer now signs with k2 only.
    *current.lock().unwrap() = (200, JWKS_K2.to_string());
    let o = b.http(mcp(CALENDAR_K2_A1, &call));
    assert_eq!(o.status(), Some(401));
    assert_eq!(rpc_error(&o)["data"]["reason"], "token.kid_unknown");
    host.advance_ms(500);
    let r = b.run_due_ticks();
    assert_eq!(r.http_calls.len(), 1, "B refetches on the unknown kid");
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert_eq!(b.http(mcp(CALENDAR_K2_A1, &call)).status(), Some(200));
    // A adopts the new set at its next tick: k2 passes, the retired k1 does not.
    a.run_due_ticks();
    assert_eq!(a.http(mcp(CALENDAR_K2_A1, &call)).status(), Some(200));
    assert_eq!(a.http(mcp(CALENDAR_A1, &call)).status(), Some(401));
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert!(host.metric("txngate.jwks.tts.refresh_ok").unwrap() >= 2);
    assert!(host.metric("txngate.jwks.tts.adopted").unwrap() >= 2);
}

#[test]
fn failing_jwks_server_keeps_the_last_good_set_until_it_is_too_stale() {
    let host = host();
    let current = Arc::new(std::sync::Mutex::new((200u16, JWKS_K1.to_string())));
    let count = Arc::new(AtomicUsize::new(0));
    let mut a = host
        .vm_with(
            VmOptions::new(remote_policy().to_string())
                .allow_on_headers_stop_iteration(true)
                .responder(jwks_server(current.clone(), count.clone())),
        )
        .unwrap();
    let call = tools_call("calendar_read", json!({"day": "mon"}));
    assert_eq!(a.http(mcp(CALENDAR_A1, &call)).status(), Some(200));
    // The server breaks: errors, junk, an oversized answer, no answer at all.
    for broken in [
        (500, "oops".to_string()),
        (200, "{\"keys\":[]}".to_string()),
        (200, " ".repeat(300 * 1024)),
        (0, String::new()),
    ] {
        *current.lock().unwrap() = broken;
        host.advance_ms(61_000); // past refresh_seconds
        let r = a.run_due_ticks();
        assert!(r.logged("keeping the last good key set"), "{:#?}", r.logs);
    }
    // 61 s after the fetch the set is stale but usable; well past max_stale_seconds (120 s) it is not.
    // (A token verified earlier stays in the VM's token cache until it expires; a fresh one needs the keys.)
    assert!(host.now_ms() - START_MS > 120_000);
    let o = a.http(mcp(EMAIL_A1, &tools_call("send_email", email_args())));
    assert_eq!(o.status(), Some(503));
    assert_eq!(rpc_error(&o)["data"]["reason"], "keys.unavailable");
    assert!(host.metric("txngate.jwks.tts.refresh_failed").unwrap() >= 4);
    // Failures back off: far fewer fetches than ticks.
    let fetches = count.load(Ordering::SeqCst);
    assert!(fetches <= 12, "{fetches} fetches");
    // Recovery.
    *current.lock().unwrap() = (200, JWKS_K1.to_string());
    host.advance_ms(65_000);
    a.run_due_ticks();
    assert_eq!(
        a.http(mcp(EMAIL_A2, &tools_call("send_email", email_args())))
            .status(),
        Some(200)
    );
}

#[test]
fn remote_keys_never_fetched_fail_closed() {
    let host = host();
    let mut a = host
        .vm_with(VmOptions::new(remote_policy().to_string()).allow_on_headers_stop_iteration(true))
        .unwrap();
    assert_eq!(
        a.pending_http_calls().len(),
        1,
        "the first fetch is under way"
    );
    let o = a.http(mcp(
        CALENDAR_A1,
        &tools_call("calendar_read", json!({"day": "mon"})),
    ));
    assert_eq!(o.status(), Some(503));
    assert_eq!(o.response_header("retry-after"), Some("5"));
    assert!(o.forwarded.is_none());
}

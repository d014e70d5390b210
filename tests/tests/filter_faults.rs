//! Store failures and JWKS refetch bursts in the wasmtime harness, where the conditions can be produced
//! exactly (a held or corrupt creation lock, corrupt slots, a full slot table, VMs ticking in lock step).
//! Each failure must fail closed (unless the rule says `on_store_error: allow`) and be counted under its own
//! metric: `txngate.ratelimit.contention`, `.store_error`, `.store_full`. The Envoy side is
//! tests/e2e/test_envoy_faults.py.
//!
//!     cargo test -p txngate-harness --test filter_faults
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
use txngate_harness::{Host, HttpCallResponse, Vm, VmOptions};

/// The lock as a live VM holding it would leave it: `H ‖ owner ‖ sequence ‖ since_ms`.
fn held_lock(since_ms: u64) -> Vec<u8> {
    let mut v = vec![b'H'];
    v.extend_from_slice(&7u64.to_le_bytes());
    v.extend_from_slice(&1u64.to_le_bytes());
    v.extend_from_slice(&since_ms.to_le_bytes());
    v
}

fn metric(host: &Host, name: &str) -> i64 {
    host.metric(name).unwrap_or(0)
}

#[test]
fn contention_fails_closed_and_is_counted() {
    let host = host();
    let mut a = vm(&host, &policy());
    let (_, cas) = host.shared_value(LOCK_KEY).unwrap();
    assert!(host.set_shared_data(LOCK_KEY, &held_lock(host.now_ms()), cas));
    for expected in 1..=3 {
        let o = search(&mut a, SEARCH_S1);
        assert_eq!(o.status(), Some(503), "{}", o.body_str());
        assert_eq!(rpc_error(&o)["data"]["reason"], "ratelimit.contention");
        assert!(o.forwarded.is_none());
        assert_eq!(metric(&host, "txngate.ratelimit.contention"), expected);
    }
    assert_eq!(
        metric(&host, "txngate.requests.deny.ratelimit_contention"),
        3
    );
    assert_eq!(metric(&host, "txngate.ratelimit.store_error"), 0);
}

#[test]
fn a_corrupt_lock_or_slot_is_a_counted_store_error() {
    let host = host();
    let mut p = policy();
    p["limits"] = json!({"max_keys": 2});
    let mut a = vm(&host, &p);
    // A lock value that is neither free nor held.
    assert!(host.set_shared_data(LOCK_KEY, b"garbage", 0));
    let o = search(&mut a, SEARCH_S1);
    assert_eq!(o.status(), Some(503));
    assert_eq!(rpc_error(&o)["data"]["reason"], "ratelimit.store_error");
    assert_eq!(metric(&host, "txngate.ratelimit.store_error"), 1);
    // Slots that hold something other than a bucket.
    assert!(host.set_shared_data(LOCK_KEY, b"free", 0));
    for slot in 0..2 {
        assert!(host.set_shared_data(&format!("txngate:rl:slot:{slot}"), b"not a bucket", 0));
    }
    let o = search(&mut a, SEARCH_S2);
    assert_eq!(o.status(), Some(503));
    assert_eq!(rpc_error(&o)["data"]["reason"], "ratelimit.store_error");
    assert!(o.forwarded.is_none());
    assert_eq!(metric(&host, "txngate.ratelimit.store_error"), 2);
    assert_eq!(metric(&host, "txngate.ratelimit.contention"), 0);
}

#[test]
fn a_full_table_is_counted_as_store_full() {
    let host = host();
    let mut p = policy();
    p["limits"] = json!({"max_keys": 1});
    let mut vms = [vm(&host, &p), vm(&host, &p)];
    assert_eq!(search(&mut vms[0], SEARCH_S1).status(), Some(200));
    for (i, token) in [SEARCH_S2, SEARCH_S3].into_iter().enumerate() {
        let o = search(&mut vms[i % 2], token);
        assert_eq!(o.status(), Some(503));
        assert_eq!(rpc_error(&o)["data"]["reason"], "ratelimit.store_full");
    }
    // Counted by both VMs into one metric (Envoy defines it once per name).
    assert_eq!(metric(&host, "txngate.ratelimit.store_full"), 2);
}

#[test]
fn on_store_error_allow_lets_the_call_through_but_still_counts_it() {
    let host = host();
    let mut p = policy();
    p["tools"]["search_web"]["rate_limit"]["on_store_error"] = json!("allow");
    let mut a = vm(&host, &p);
    assert!(host.set_shared_data(LOCK_KEY, b"garbage", 0));
    let o = search(&mut a, SEARCH_S1);
    assert_eq!(o.status(), Some(200), "{}", o.body_str());
    assert!(o.forwarded.is_some());
    assert_eq!(metric(&host, "txngate.ratelimit.store_error"), 1);
    let records = audit(&o);
    assert!(
        records.iter().any(|r| r["verdict"] == "allow"
            && r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("rate-limit store"))),
        "{records:?}"
    );
}

// -- unknown kids across VMs -------------------------------------------------------------------------------

fn remote_policy(min_refetch_seconds: u32) -> Value {
    let mut p = policy();
    p["issuers"] = json!([{
        "name": "tts", "jwks_uri": "https://tts.trust.example/.well-known/jwks.json", "cluster": "tts",
        "refresh_seconds": 300, "max_stale_seconds": 3600, "min_refetch_seconds": min_refetch_seconds,
        "algorithms": ["EdDSA"]
    }]);
    p
}

#[test]
fn unknown_kids_on_every_vm_cost_one_refetch_per_window() {
    let host = host();
    let count = Arc::new(AtomicUsize::new(0));
    let options = || {
        let count = count.clone();
        VmOptions::new(remote_policy(5).to_string())
            .allow_on_headers_stop_iteration(true)
            .responder(move |_| {
                count.fetch_add(1, Ordering::SeqCst);
                HttpCallResponse::new(200)
                    .header("content-type", "application/json")
                    .body(JWKS_K1)
                    .reply()
            })
    };
    let mut vms: Vec<Vm> = (0..3).map(|_| host.vm_with(options()).unwrap()).collect();
    assert_eq!(count.load(Ordering::SeqCst), 1, "one fetch at configure");
    let call = tools_call("calendar_read", json!({"day": "mon"}));
    host.advance_ms(500);
    for vm in vms.iter_mut() {
        vm.run_due_ticks();
    }
    // A burst of tokens with a kid the set does not have, on every VM, over 12 s (windows of 5 s).
    let mut fetches = Vec::new();
    for step in 0..24 {
        for vm in vms.iter_mut() {
            for _ in 0..5 {
                let o = vm.http(mcp(CALENDAR_K2_A1, &call));
                assert_eq!(o.status(), Some(401));
                assert_eq!(rpc_error(&o)["data"]["reason"], "token.kid_unknown");
            }
        }
        host.advance_ms(500);
        for vm in vms.iter_mut() {
            vm.run_due_ticks();
        }
        fetches.push((step, count.load(Ordering::SeqCst) - 1));
    }
    let refetches = count.load(Ordering::SeqCst) - 1;
    // 12 s of unknown kids with a 5 s window: refetches at 0 s, 5 s, 10 s: three, not three per VM.
    assert!((2..=3).contains(&refetches), "{refetches}: {fetches:?}");
    assert_eq!(
        metric(&host, "txngate.jwks.tts.refetch") as usize,
        refetches
    );
}

//! A WIMSE trust domain whose Identity Server keys come from a `jwks_uri`, in the wasmtime harness: the
//! filter fetches them through the same refresher as a Txn-Token issuer's (Envoy `dispatch_http_call` to the
//! trust domain's `cluster`), refetches on a WIT's unknown `kid`, and fails closed when the set is stale.
//!
//!     cargo test -p txngate-harness --test filter_wimse_jwks
#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used
)] // test helpers (clippy.toml: #[test] fns)

mod filter_data;

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ed25519_compact::{KeyPair, Seed};
use filter_data::tokens::*;
use filter_data::*;
use serde_json::{json, Value};
use txngate_core::encoding::encode_b64url;
use txngate_core::wimse::token_hash;
use txngate_harness::{HttpCallResponse, HttpOutcome, Vm, VmOptions};

const CALLER: &str = "spiffe://trust.example/agent/a1";

fn pair(seed: u8) -> KeyPair {
    KeyPair::from_seed(Seed::new([seed; 32]))
}

fn jwk(key: &KeyPair, kid: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": kid, "x": encode_b64url(key.pk.as_ref())})
}

fn sign(key: &KeyPair, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        encode_b64url(&serde_json::to_vec(header).unwrap()),
        encode_b64url(&serde_json::to_vec(claims).unwrap())
    );
    let sig = key.sk.sign(input.as_bytes(), None);
    format!("{input}.{}", encode_b64url(sig.as_ref()))
}

/// A WIT for [`CALLER`] signed by the Identity Server key `kid`, confirming workload key 9.
fn wit(server: &KeyPair, kid: &str) -> String {
    let mut cnf = jwk(&pair(9), "wl");
    cnf.as_object_mut().unwrap().remove("kid");
    sign(
        server,
        &json!({"alg": "EdDSA", "typ": "wit+jwt", "kid": kid}),
        &json!({"sub": CALLER, "exp": ISSUED_AT_S + 3600, "iat": ISSUED_AT_S, "cnf": {"jwk": cnf}}),
    )
}

fn wpt(wit: &str, jti: &str, now_s: u64) -> String {
    sign(
        &pair(9),
        &json!({"alg": "EdDSA", "typ": "wpt+jwt"}),
        &json!({"aud": "https://mcp.example/mcp", "exp": now_s + 30, "jti": jti,
                "wth": token_hash(wit), "tth": token_hash(CALENDAR_A1)}),
    )
}

fn wimse_policy() -> Value {
    let mut p = policy();
    p["peer_binding"] = json!({"mode": "require", "source": "wimse"});
    p["wimse"] = json!({
        "trust_domains": {"trust.example": {
            "jwks_uri": "https://spire.trust.example/keys", "cluster": "spire", "algorithms": ["EdDSA"],
            "refresh_seconds": 5, "max_stale_seconds": 10, "min_refetch_seconds": 1}},
        "audiences": ["https://mcp.example"]
    });
    p
}

fn call(vm: &mut Vm, wit: &str, jti: &str, now_ms: u64) -> HttpOutcome {
    let body = tools_call("calendar_read", json!({"day": "mon"}));
    vm.http(
        mcp(CALENDAR_A1, &body)
            .header("workload-identity-token", wit)
            .header("workload-proof-token", &wpt(wit, jti, now_ms / 1000)),
    )
}

#[test]
fn trust_domain_keys_are_fetched_refetched_and_fail_closed_when_stale() {
    let host = host();
    let keys = Arc::new(Mutex::new(
        json!({"keys": [jwk(&pair(1), "td-1")]}).to_string(),
    ));
    let status = Arc::new(AtomicU16::new(200));
    let fetches = Arc::new(AtomicUsize::new(0));
    let options = {
        let (keys, status, fetches) = (keys.clone(), status.clone(), fetches.clone());
        VmOptions::new(wimse_policy().to_string())
            .allow_on_headers_stop_iteration(true)
            .responder(move |c| {
                assert_eq!(c.cluster, "spire", "the trust domain's cluster");
                assert_eq!(c.path(), "/keys");
                fetches.fetch_add(1, Ordering::SeqCst);
                HttpCallResponse::new(status.load(Ordering::SeqCst))
                    .header("content-type", "application/json")
                    .body(keys.lock().unwrap().clone())
                    .reply()
            })
    };
    let mut vm = host.vm_with(options).unwrap();
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "fetched at configure");
    host.advance_ms(100);
    vm.run_due_ticks();

    // A WIT verified with the fetched key: the bound call passes.
    let w1 = wit(&pair(1), "td-1");
    let o = call(&mut vm, &w1, "j1", host.now_ms());
    assert_eq!(o.status(), Some(200), "{:?}", o.local_reply);
    let record = audit(&o).pop().unwrap();
    assert_eq!(record["caller"], CALLER);
    assert_eq!(record["caller_proof"], "wimse");

    // The Identity Server rotates to td-2: refused once, refetched, then accepted.
    *keys.lock().unwrap() =
        json!({"keys": [jwk(&pair(1), "td-1"), jwk(&pair(2), "td-2")]}).to_string();
    let w2 = wit(&pair(2), "td-2");
    let before = fetches.load(Ordering::SeqCst);
    let o = call(&mut vm, &w2, "j2", host.now_ms());
    assert_eq!(o.status(), Some(400));
    assert_eq!(rpc_error(&o)["data"]["reason"], "wimse.wit_untrusted");
    host.advance_ms(500); // one tick (filters::TICK_MS)
    vm.run_due_ticks();
    assert_eq!(fetches.load(Ordering::SeqCst), before + 1, "one refetch");
    assert_eq!(
        host.metric("txngate.jwks.trust_domain_trust_example.refetch"),
        Some(1)
    );
    let o = call(&mut vm, &w2, "j3", host.now_ms());
    assert_eq!(o.status(), Some(200), "{:?}", o.local_reply);

    // The Identity Server fails from now on: past max_stale_seconds the old set is not used.
    status.store(500, Ordering::SeqCst);
    for _ in 0..12 {
        host.advance_ms(1000);
        vm.run_due_ticks();
    }
    let o = call(&mut vm, &w1, "j4", host.now_ms());
    assert_eq!(o.status(), Some(503), "{:?}", o.local_reply);
    assert_eq!(rpc_error(&o)["data"]["reason"], "keys.unavailable");
}

//! Policy documents through `Policy::from_json`: strict JSON, the hand-written reader with JSON-pointer errors, inline
//! JWKS validation and every compile step. A policy that compiles must also build a `Gate` and decide a
//! request (no token: the cheapest full path) without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use txngate_core::ratelimit::MemoryStore;
use txngate_core::{Body, Gate, Policy, Request};

fuzz_target!(|data: &[u8]| {
    match Policy::from_json(data) {
        Ok(policy) => {
            let _ = policy.tool_rule("send_email");
            let _ = policy.tool_rule("SEND_EMAIL");
            let mut gate = Gate::new(policy);
            let headers: Vec<(String, String)> = Vec::new();
            let request = Request {
                method: "POST",
                path: "/mcp",
                headers: &headers,
                body: Body::Complete(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
                peer: None,
            };
            let outcome = gate.decide(
                &request,
                1_800_000_000_000,
                txngate_core::Verification::Core,
                &mut MemoryStore::new(),
            );
            assert!(!outcome.decision.is_allowed(), "allowed without a token");
        }
        Err(e) => {
            let path = e.path();
            assert!(
                path.is_empty() || path.starts_with('/'),
                "not a JSON pointer: {path:?}"
            );
            let _ = e.to_string();
        }
    }
});

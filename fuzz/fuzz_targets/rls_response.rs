//! Rate limit service answers (whatever the configured cluster sends back) through `rls_wire::decode_response`
//! and `rls::interpret`: never a panic, bounded, and an answer that decodes re-encodes without a panic.
//! Invariant: an allowed state only comes from an OK code; a refusal's wait is at most one window.
#![no_main]

use libfuzzer_sys::fuzz_target;
use txngate_core::ratelimit::LimitRule;
use txngate_core::rls::{interpret, Reply};
use txngate_core::rls_wire::{decode_response, encode_response, Code};

fuzz_target!(|data: &[u8]| {
    let decoded = decode_response(data);
    // Re-encoding must not panic either. Equality after a round trip is not asserted: the decoder keeps only
    // what txngate reads and normalises the rest, so a round trip can differ (found on this target's first run).
    if let Ok(response) = &decoded {
        let _ = decode_response(&encode_response(response));
    }
    let Ok(rule) = LimitRule::new(5, 60, 5) else {
        return;
    };
    if let Ok(state) = interpret(&rule, Reply::Message(data)) {
        let code = decoded.map(|r| r.overall_code).ok();
        assert_eq!(state.allowed, code == Some(Code::Ok));
        assert!(state.retry_after_ms <= 60_000);
    }
});

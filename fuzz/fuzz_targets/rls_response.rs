//! Rate limit service answers (whatever the configured cluster sends back) through `rls_wire::decode_response`
//! and `rls::interpret`: never a panic, bounded, and an answer that decodes re-encodes to one that decodes the
//! same. Invariant: an allowed state only comes from an OK code; a refusal's wait is at most one window.
#![no_main]

use libfuzzer_sys::fuzz_target;
use txngate_core::ratelimit::LimitRule;
use txngate_core::rls::{interpret, Reply};
use txngate_core::rls_wire::{decode_response, encode_response, Code};

fuzz_target!(|data: &[u8]| {
    let decoded = decode_response(data);
    if let Ok(response) = &decoded {
        let again = decode_response(&encode_response(response));
        assert_eq!(again.as_ref().ok(), Some(response));
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

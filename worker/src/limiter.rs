//! Global, exact rate limits: one Durable Object per bucket key.
//!
//! The Worker's shell asks `TXNGATE_LIMITER.idFromName(key)` — the core's bucket key, which names the tool, the
//! dimension (agent / sub / tool), the id and the rule's numbers — and the object runs one GCRA step
//! (`txngate_core::ratelimit::gcra`, through `txngateGcra`) over its own storage. The object itself is plain
//! JS (`TxngateRateLimiter` in worker/shell.js): it only stores the state; the key, the rule, the step and
//! every check of its answer are here and in the core. A Durable Object is a single thread of execution
//! with exactly one live instance worldwide, so every call of a bucket is serialised through it and no
//! compare-and-swap is needed: the count is exact whichever edge location the calls arrive at. One object
//! per key (rather than one object for everything, or one per tool) spreads load with no hot spot and keeps
//! each object's storage to a single 16-byte timestamp; the object deletes that state with an alarm once the
//! bucket has drained, so idle buckets cost nothing.
//!
//! Optional approximate mode (`TXNGATE_LIMITER_MODE = "approximate"`) uses the Workers Rate Limiting binding
//! instead; see `shell::approximate_result` and docs/cloudflare.md ("Rate limits") for why it is never the default.

use serde::Serialize;
use txngate_core::ratelimit::{LimitRule, LimitState, StoreError};
use txngate_core::PendingLimit;

/// The Durable Object binding name (wrangler.toml `durable_objects.bindings`).
pub const BINDING: &str = "TXNGATE_LIMITER";

/// What the Worker sends the object.
#[derive(Debug, Serialize)]
pub struct ConsumeRequest {
    pub key: String,
    pub limit: u32,
    pub period_seconds: u64,
    pub burst: u32,
    pub now_ms: u64,
}

/// The result of one exchange with the bucket's Durable Object, as the shell reports it (`kind`: see
/// `shell::resume_limit`), bounded by `timeout_ms` for the whole exchange (the call, its answer's body).
/// Any failure is a `StoreError`, and the rule's `on_store_error` decides (deny by default: 503
/// `ratelimit.store_error`). The error's text reaches the client inside the 503 message, so it only names
/// the kind of failure; the runtime's exception text or the object's body go to the log.
pub fn exact_result(
    pending: &PendingLimit,
    timeout_ms: u32,
    kind: u8,
    status: u16,
    text: &str,
) -> Result<LimitState, StoreError> {
    let result = match kind {
        0 if status != 200 => Err(failure(
            &format!("durable object answered HTTP {status}"),
            txngate_core::host::excerpt(text),
        )),
        0 => serde_json::from_str::<LimitState>(text)
            .map_err(|e| failure("durable object answer is not a limit state", e.to_string())),
        1 => Err(failure(
            "durable object binding missing",
            format!("binding {BINDING}: {text}"),
        )),
        2 => Err(failure("durable object stub failed", text)),
        3 => Err(failure("durable object call failed", text)),
        4 => Err(failure(
            "durable object answer is not a limit state",
            "the answer's body could not be read as text",
        )),
        // The call abandoned: the object may still finish it, which is harmless (a late step of a bucket
        // the request was already refused or allowed on by `on_store_error`).
        _ => Err(Failure {
            public: format!("durable object did not answer within {timeout_ms} ms"),
            detail: String::new(),
        }),
    };
    let rule = pending.rule();
    let failed = match result {
        Ok(state) => match check_answer(&state, rule) {
            Ok(()) => return Ok(state),
            Err(what) => Failure {
                public: "durable object answer does not fit the rule".into(),
                detail: what,
            },
        },
        Err(failure) => failure,
    };
    worker::console_error!(
        "{}",
        serde_json::json!({"txngate": "limiter.failed", "key": pending.bucket_key(), "error": &failed.public, "detail": &failed.detail})
    );
    Err(StoreError::Backend {
        detail: failed.public,
    })
}

/// A failed exchange: what may be shown (kind of failure) and what only the log gets.
struct Failure {
    public: String,
    detail: String,
}

fn failure(public: &str, detail: impl Into<String>) -> Failure {
    Failure {
        public: public.into(),
        detail: detail.into(),
    }
}

/// A well-formed answer must still be the answer for this rule: an object of another version, or one
/// whose storage was tampered with, could say "allowed" with numbers the rule never had.
fn check_answer(state: &LimitState, rule: &LimitRule) -> Result<(), String> {
    if state.limit != rule.limit()
        || state.burst != rule.burst()
        || state.period_seconds != rule.period_seconds()
    {
        return Err(format!(
            "answer for limit {} / burst {} / {} s, rule is {} / {} / {} s",
            state.limit,
            state.burst,
            state.period_seconds,
            rule.limit(),
            rule.burst(),
            rule.period_seconds()
        ));
    }
    if state.remaining > state.burst {
        return Err(format!(
            "remaining {} exceeds burst {}",
            state.remaining, state.burst
        ));
    }
    if !state.allowed && (state.remaining != 0 || state.retry_after_ms == 0) {
        return Err("a refusal with calls remaining or no retry time".into());
    }
    Ok(())
}

/// The alarm time for a bucket with this TAT: when it has drained, not before `host::MIN_ALARM_DELAY_MS`
/// from now (why: see there).
pub fn alarm_for(tat: u128, limit: u32) -> u64 {
    txngate_core::host::alarm_at(drain_ms(tat, limit), crate::now_ms())
}

/// When a bucket with this TAT is full again (ms since the epoch): TAT units are `1/limit` ms.
pub fn drain_ms(tat: u128, limit: u32) -> u64 {
    u64::try_from(tat.div_ceil(u128::from(limit.max(1)))).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use txngate_core::ratelimit;

    #[test]
    fn drain_time_is_the_tat_in_ms_rounded_up() {
        let rule = LimitRule::new(10, 60, 10).unwrap();
        // One call at t = 1_000_000 ms: TAT = now + one emission interval (6 s), in units of 1/limit ms.
        let (tat, state) = ratelimit::gcra(&rule, None, 1_000_000);
        assert!(state.allowed);
        assert_eq!(drain_ms(tat.unwrap(), rule.limit()), 1_006_000);
        assert_eq!(drain_ms(7, 3), 3);
        assert_eq!(drain_ms(u128::MAX, 1), u64::MAX);
    }

    #[test]
    fn an_answer_must_fit_the_rule() {
        let rule = LimitRule::new(10, 60, 10).unwrap();
        let (_, allowed) = ratelimit::gcra(&rule, None, 1_000);
        assert_eq!(check_answer(&allowed, &rule), Ok(()));
        // A refusal from the real step fits too.
        let mut tat = None;
        let mut last = allowed;
        for _ in 0..11 {
            let (next, state) = ratelimit::gcra(&rule, tat, 1_000);
            tat = next.or(tat);
            last = state;
        }
        assert!(!last.allowed);
        assert_eq!(check_answer(&last, &rule), Ok(()));

        let other_rule = LimitState {
            limit: 1_000_000,
            ..allowed
        };
        assert!(check_answer(&other_rule, &rule).is_err());
        let other_period = LimitState {
            period_seconds: 1,
            ..allowed
        };
        assert!(check_answer(&other_period, &rule).is_err());
        let too_many_left = LimitState {
            remaining: 11,
            ..allowed
        };
        assert!(check_answer(&too_many_left, &rule).is_err());
        let odd_refusal = LimitState {
            allowed: false,
            remaining: 3,
            retry_after_ms: 0,
            ..allowed
        };
        assert!(check_answer(&odd_refusal, &rule).is_err());
    }

    #[test]
    fn wire_state_round_trips() {
        let rule = LimitRule::new(2, 1, 1).unwrap();
        let (_, state) = ratelimit::gcra(&rule, None, 5);
        let json = serde_json::to_string(&state).unwrap();
        let back: LimitState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
    }
}

//! Global, exact rate limits: one Durable Object per bucket key.
//!
//! The Worker asks `TXNGATE_LIMITER.idFromName(key)` — the core's bucket key, which names the tool, the
//! dimension (agent / sub / tool), the id and the rule's numbers — and the object runs one GCRA step
//! (`txngate_core::ratelimit::gcra`) over its own storage. A Durable Object is a single thread of execution
//! with exactly one live instance worldwide, so every call of a bucket is serialised through it and no
//! compare-and-swap is needed: the count is exact whichever edge location the calls arrive at. One object
//! per key (rather than one object for everything, or one per tool) spreads load with no hot spot and keeps
//! each object's storage to a single 16-byte timestamp; the object deletes that state with an alarm once the
//! bucket has drained, so idle buckets cost nothing.
//!
//! Optional approximate mode (`TXNGATE_LIMITER_MODE = "approximate"`) uses the Workers Rate Limiting binding
//! instead; see [`approximate`] and docs/cloudflare.md ("Rate limits") for why it is never the default.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::{select, Either};
use wasm_bindgen_futures::JsFuture;

use serde::{Deserialize, Serialize};
use txngate_core::ratelimit::{self, LimitRule, LimitState, StoreError};
use txngate_core::PendingLimit;
use worker::{
    durable_object, Date, DurableObject, Env, Method, Request, RequestInit, Response,
    ScheduledTime, State,
};

/// The Durable Object binding name (wrangler.toml `durable_objects.bindings`).
pub const BINDING: &str = "TXNGATE_LIMITER";

/// What the Worker sends the object.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConsumeRequest {
    pub key: String,
    pub limit: u32,
    pub period_seconds: u64,
    pub burst: u32,
    pub now_ms: u64,
}

fn backend(detail: impl Into<String>) -> StoreError {
    StoreError::Backend {
        detail: detail.into(),
    }
}

/// Consults the bucket's Durable Object, bounded by `timeout_ms` for the whole exchange (the call, its
/// answer's body). Any failure is a `StoreError`, and the rule's `on_store_error` decides (deny by default:
/// 503 `ratelimit.store_error`). The error's text reaches the client inside the 503 message, so it only
/// names the kind of failure; the runtime's exception text or the object's body go to the log.
pub async fn consume(
    env: &Env,
    pending: &PendingLimit,
    timeout_ms: u32,
) -> Result<LimitState, StoreError> {
    let exchange = std::pin::pin!(exchange(env, pending));
    let timer = std::pin::pin!(worker::Delay::from(Duration::from_millis(u64::from(
        timeout_ms
    ))));
    let result = match select(exchange, timer).await {
        Either::Left((result, _)) => result,
        // Dropping the exchange abandons the call: the object may still finish it, which is harmless (a
        // late step of a bucket the request was already refused or allowed on by `on_store_error`).
        Either::Right(((), _)) => Err(Failure {
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
    Err(backend(failed.public))
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

/// One request to the object and its parsed answer, unbounded in time (the caller bounds it).
async fn exchange(env: &Env, pending: &PendingLimit) -> Result<LimitState, Failure> {
    let rule = pending.rule();
    let body = ConsumeRequest {
        key: pending.bucket_key().to_string(),
        limit: rule.limit(),
        period_seconds: rule.period_seconds(),
        burst: rule.burst(),
        now_ms: pending.now_ms(),
    };
    let namespace = env.durable_object(BINDING).map_err(|e| {
        failure(
            "durable object binding missing",
            format!("binding {BINDING}: {e}"),
        )
    })?;
    let stub = namespace
        .id_from_name(pending.bucket_key())
        .and_then(|id| id.get_stub())
        .map_err(|e| failure("durable object stub failed", e.to_string()))?;
    let json = serde_json::to_string(&body)
        .map_err(|e| failure("durable object request failed", e.to_string()))?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_body(Some(json.into()));
    let request = Request::new_with_init("https://txngate-limiter.internal/consume", &init)
        .map_err(|e| failure("durable object request failed", e.to_string()))?;
    let mut response = stub
        .fetch_with_request(request)
        .await
        .map_err(|e| failure("durable object call failed", e.to_string()))?;
    let status = response.status_code();
    if status != 200 {
        let text = response.text().await.unwrap_or_default();
        return Err(failure(
            &format!("durable object answered HTTP {status}"),
            txngate_core::host::excerpt(&text),
        ));
    }
    // The answer is a few dozen bytes: one native `text()` call, rather than workers-rs's `json()`, which
    // reads the body as a stream chunk by chunk through a reader (a profile showed its `read` and
    // `releaseLock` among the top costs of a rate-limited call).
    let raw: web_sys::Response = response.into();
    let text = match raw.text() {
        Ok(promise) => JsFuture::from(promise)
            .await
            .ok()
            .and_then(|t| t.as_string()),
        Err(_) => None,
    }
    .ok_or_else(|| {
        failure(
            "durable object answer is not a limit state",
            "the answer's body could not be read as text",
        )
    })?;
    serde_json::from_str::<LimitState>(&text)
        .map_err(|e| failure("durable object answer is not a limit state", e.to_string()))
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

/// Approximate mode: the Workers Rate Limiting binding `TXNGATE_RL_<limit>_<period>` (periods 10 or 60 s
/// only, counted per Cloudflare location, eventually consistent). It answers only yes or no, so the state
/// reports `remaining: 0` and a retry of one full period when refused.
pub async fn approximate(env: &Env, pending: &PendingLimit) -> Result<LimitState, StoreError> {
    let rule = pending.rule();
    let name = format!("TXNGATE_RL_{}_{}", rule.limit(), rule.period_seconds());
    let limiter = env
        .rate_limiter(&name)
        .map_err(|_| backend(format!("approximate mode: no Rate Limiting binding {name}")))?;
    let outcome = limiter
        .limit(pending.bucket_key().to_string())
        .await
        .map_err(|e| backend(format!("rate limiting binding {name}: {e}")))?;
    let period_ms = rule.period_seconds().saturating_mul(1000);
    Ok(LimitState {
        allowed: outcome.success,
        limit: rule.limit(),
        burst: rule.burst(),
        period_seconds: rule.period_seconds(),
        remaining: 0,
        retry_after_ms: if outcome.success { 0 } else { period_ms },
        reset_ms: period_ms,
    })
}

/// The Durable Object class (wrangler.toml: `class_name = "TxngateRateLimiter"`, a `new_sqlite_classes`
/// migration). Its whole state is one theoretical arrival time per bucket key, mirrored in memory.
#[durable_object]
pub struct TxngateRateLimiter {
    state: State,
    /// Bucket key → TAT in the core's scaled units. Always at least as new as storage: it is written first.
    tats: RefCell<HashMap<String, (u128, u32)>>,
    /// The alarm time this instance set (ms since the epoch), if any.
    alarm_at: Cell<Option<u64>>,
}

impl std::fmt::Debug for TxngateRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxngateRateLimiter")
            .field("buckets", &self.tats.borrow().len())
            .field("alarm_at", &self.alarm_at.get())
            .finish()
    }
}

/// Stored value: the TAT (decimal, it is a u128) and the limit that scales it.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    tat: String,
    limit: u32,
}

impl DurableObject for TxngateRateLimiter {
    fn new(state: State, _env: Env) -> Self {
        Self {
            state,
            tats: RefCell::new(HashMap::new()),
            alarm_at: Cell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        if req.method() == Method::Get {
            // Introspection (tests, operators with a binding): how many buckets this object stores.
            let storage = self.state.storage();
            let buckets = storage.list().await?.size();
            let alarm = storage.get_alarm().await?;
            return Response::from_json(
                &serde_json::json!({"buckets": buckets, "alarm_ms": alarm}),
            );
        }
        let body: ConsumeRequest = match req.json().await {
            Ok(b) => b,
            Err(e) => return Response::error(format!("bad request: {e}"), 400),
        };
        let period = u32::try_from(body.period_seconds).unwrap_or(u32::MAX);
        let rule = match LimitRule::new(body.limit, period, body.burst) {
            Ok(rule) => rule,
            Err((field, message)) => {
                return Response::error(format!("bad rule: {field} {message}"), 400)
            }
        };
        let storage = self.state.storage();
        let mirrored = self.tats.borrow().get(&body.key).map(|(tat, _)| *tat);
        let stored = match mirrored {
            Some(tat) => Some(tat),
            None => {
                let loaded: Option<Stored> = storage.get(&body.key).await?;
                let loaded = loaded.and_then(|s| s.tat.parse::<u128>().ok());
                // A call that ran while we waited wrote the mirror first; it wins over what storage said.
                self.tats
                    .borrow()
                    .get(&body.key)
                    .map(|(tat, _)| *tat)
                    .or(loaded)
            }
        };
        // From here to the mirror update nothing awaits: the step is atomic within this object.
        let (next, state) = ratelimit::gcra(&rule, stored, body.now_ms);
        if let Some(next) = next {
            self.tats
                .borrow_mut()
                .insert(body.key.clone(), (next, rule.limit()));
            let value = Stored {
                tat: next.to_string(),
                limit: rule.limit(),
            };
            if let Err(e) = storage.put(&body.key, value).await {
                self.tats.borrow_mut().remove(&body.key);
                return Err(e);
            }
            let drained_at = not_before_min_delay(drain_ms(next, rule.limit()));
            if self.alarm_at.get().is_none() {
                storage.set_alarm(at_time(drained_at)).await?;
                self.alarm_at.set(Some(drained_at));
            }
        }
        Response::from_json(&state)
    }

    /// Deletes buckets that have drained (a drained bucket holds no information); re-arms for the rest.
    async fn alarm(&self) -> worker::Result<Response> {
        self.alarm_at.set(None);
        let storage = self.state.storage();
        let now = Date::now().as_millis();
        let entries = storage.list().await?;
        let mut latest: Option<u64> = None;
        let mut drained = Vec::new();
        for entry in entries.entries() {
            let Ok(pair) = entry else { continue };
            let pair = js_sys::Array::from(&pair);
            let Some(key) = pair.get(0).as_string() else {
                continue;
            };
            let stored: Option<Stored> = serde_wasm(pair.get(1));
            let Some(stored) = stored else {
                drained.push(key);
                continue;
            };
            let at = stored
                .tat
                .parse::<u128>()
                .map_or(0, |tat| drain_ms(tat, stored.limit));
            if at <= now {
                drained.push(key);
            } else {
                latest = Some(latest.map_or(at, |l| l.max(at)));
            }
        }
        for key in &drained {
            self.tats.borrow_mut().remove(key);
        }
        if !drained.is_empty() {
            storage.delete_multiple(drained).await?;
        }
        if let Some(at) = latest.map(not_before_min_delay) {
            storage.set_alarm(at_time(at)).await?;
            self.alarm_at.set(Some(at));
        }
        Response::ok("")
    }
}

/// The core's alarm time for state drained at `at_ms`: not before `host::MIN_ALARM_DELAY_MS` from now (why:
/// see there).
fn not_before_min_delay(at_ms: u64) -> u64 {
    txngate_core::host::alarm_at(at_ms, Date::now().as_millis())
}

/// An absolute alarm time (workers-rs reads a bare integer as an offset from now).
fn at_time(ms: u64) -> ScheduledTime {
    // Milliseconds since the epoch fit an f64 exactly for the next 285 000 years.
    let ms = ms as f64;
    ScheduledTime::new(js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(ms)))
}

/// When a bucket with this TAT is full again (ms since the epoch): TAT units are `1/limit` ms.
fn drain_ms(tat: u128, limit: u32) -> u64 {
    u64::try_from(tat.div_ceil(u128::from(limit.max(1)))).unwrap_or(u64::MAX)
}

fn serde_wasm(value: wasm_bindgen::JsValue) -> Option<Stored> {
    let text = js_sys::JSON::stringify(&value).ok()?.as_string()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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

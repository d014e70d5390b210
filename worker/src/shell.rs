//! The synchronous API the Worker's JS shell (`worker/shell.js`) calls: one call per step of a request,
//! no futures on the request path. The shell does the I/O with the runtime's own objects (body, `fetch`,
//! WebCrypto, the Durable Object, `console.log`); every decision, every reply's status, headers and body,
//! every header rule and every error text stays here and in the core.
//!
//! A request is a slot (an id) holding what the core needs to evaluate it again and the step it waits on;
//! the shell releases it when the request ends. Each call answers one line of JSON saying what to do next
//! (`k`: `reply`, `go`, `deny`, `allow`, `verify`, `limit`, `refetch`), followed, for a decision, by a
//! newline and the audit line to log as is.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use serde_json::{json, Value};
use txngate_core::host::forwards_request_header;
use txngate_core::ratelimit::{self, LimitRule, LimitState, StoreError};
use txngate_core::reply::MAX_LIST_BYTES;
use txngate_core::{
    Algorithm, Body, Decision, Failure, Outcome, PendingLimit, PendingSignature, Reply, ReplyTo,
    Request as CoreRequest, Step, Verification,
};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::config::{self, Config, LimiterMode};
use crate::limiter;

/// The body as the shell read it.
enum ReadBody {
    Absent,
    Complete(Vec<u8>),
    TooLarge,
}

enum Waiting {
    Nothing,
    Signature(Box<PendingSignature>),
    Limit(Box<PendingLimit>),
}

/// One request between the shell's calls.
struct Slot {
    config: Rc<Config>,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: ReadBody,
    waiting: Waiting,
    /// The outcome that named an issuer to refetch, kept while the shell refetches.
    outcome: Option<Outcome>,
    refetched: bool,
    /// Whom a failure of this request answers (known after the decision; before it, from the path).
    reply_to: ReplyTo,
    list_filter: Option<txngate_core::ListFilter>,
}

thread_local! {
    static SLOTS: RefCell<(u32, HashMap<u32, Slot>)> = RefCell::new((0, HashMap::new()));
}

fn with_slot<R>(id: u32, f: impl FnOnce(&mut Slot) -> R) -> Option<R> {
    // The slot is taken out while `f` runs, so `f` may use the gate freely.
    let mut slot = SLOTS.with(|s| s.borrow_mut().1.remove(&id))?;
    let r = f(&mut slot);
    SLOTS.with(|s| s.borrow_mut().1.insert(id, slot));
    Some(r)
}

fn reply_json(reply: &Reply) -> String {
    json!({"k": "reply", "status": reply.status, "headers": reply.headers, "body": reply.body})
        .to_string()
}

/// No such request (released, or never begun): an internal error, fail closed.
fn lost() -> String {
    reply_json(&ReplyTo::plain().failure(Failure::Internal {
        reason: "worker.state",
    }))
}

/// Milliseconds from the shell's `Date.now()` (never negative, never fractional).
fn ms(now: f64) -> u64 {
    if now.is_finite() && now > 0.0 {
        now as u64
    } else {
        0
    }
}

/// Loads the isolate's configuration from `env` (once: later calls change nothing). The shell calls it
/// once per isolate, at startup when the runtime offers `env` there, else before its first request; requests
/// then never hand `env` to Wasm (each `env` put in Wasm's reference table cost ≈ 60 µs of workerd CPU).
#[wasm_bindgen(js_name = txngateConfigure)]
pub fn configure(env: JsValue) {
    // An error is kept (and logged once) by `load`; every request then fails closed with it.
    let _ = config::load(&env.unchecked_into());
}

/// Starts a request: `{"k":"go","id","body":bool,"cap","keys":bool}` (`body`: read it, up to `cap` bytes;
/// `keys`: call `txngateKeys` first), or `{"k":"reply",...}` when the configuration did not load (or was
/// never loaded: `txngateConfigure` comes first).
#[wasm_bindgen(js_name = txngateBegin)]
pub fn begin(method: String, url: String, now: f64) -> String {
    let path = crate::path_and_query(&url);
    let config = match config::current() {
        Some(Ok(config)) => config,
        Some(Err(message)) => {
            return reply_json(&crate::proxy::config_failure(&method, &path, &message));
        }
        None => {
            return reply_json(&ReplyTo::plain().failure(Failure::Internal {
                reason: "worker.state",
            }))
        }
    };
    let keys = crate::jwks::needs_work(&config, ms(now));
    let (needs_body, cap, reply_to) = {
        let gate = config.gate.borrow();
        let to = if gate.is_mcp_path(&path) {
            ReplyTo::mcp(None)
        } else {
            ReplyTo::plain()
        };
        (gate.needs_body(&method, &path), gate.max_body_bytes(), to)
    };
    let slot = Slot {
        config,
        method,
        path,
        headers: Vec::new(),
        body: ReadBody::Absent,
        waiting: Waiting::Nothing,
        outcome: None,
        refetched: false,
        reply_to,
        list_filter: None,
    };
    let id = SLOTS.with(|s| {
        let mut s = s.borrow_mut();
        let (next, slots) = &mut *s;
        let mut id = *next;
        while slots.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        *next = id.wrapping_add(1);
        slots.insert(id, slot);
        id
    });
    json!({"k": "go", "id": id, "body": needs_body, "cap": cap, "keys": keys}).to_string()
}

/// The request's end: forgets its slot.
#[wasm_bindgen(js_name = txngateRelease)]
pub fn release(id: u32) {
    SLOTS.with(|s| s.borrow_mut().1.remove(&id));
}

/// Decides the request. `headers`: the request's headers as `name\nvalue\n...` (the Fetch API's pairs,
/// names in lower case). `body_state`: 0 not read, 1 read (`body`), 2 over the cap.
#[wasm_bindgen(js_name = txngateEvaluate)]
pub fn evaluate(id: u32, headers: &str, body: &[u8], body_state: u8, now: f64) -> String {
    with_slot(id, |slot| {
        let token_header = slot.config.gate.borrow().policy().token.header.clone();
        slot.headers = split_headers(headers, &token_header);
        slot.body = match body_state {
            1 => ReadBody::Complete(body.to_vec()),
            2 => ReadBody::TooLarge,
            _ => ReadBody::Absent,
        };
        let step = start(slot, ms(now));
        advance(slot, step)
    })
    .unwrap_or_else(lost)
}

/// The Fetch API joins repeated headers with ", ". A Txn-Token never contains a comma, so a comma in its
/// value means the client sent several: the core gets them as the separate headers they were.
fn split_headers(flat: &str, token_header: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut parts = flat.split('\n');
    while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        if name.eq_ignore_ascii_case(token_header) && value.contains(',') {
            out.extend(
                value
                    .split(',')
                    .map(|part| (name.to_string(), part.trim().to_string())),
            );
        } else {
            out.push((name.to_string(), value.to_string()));
        }
    }
    out
}

fn start(slot: &Slot, now: u64) -> Step {
    let body = match &slot.body {
        ReadBody::Complete(bytes) if bytes.is_empty() => Body::Absent,
        ReadBody::Complete(bytes) => Body::Complete(bytes),
        ReadBody::TooLarge => Body::TooLarge,
        ReadBody::Absent => Body::Absent,
    };
    let request = CoreRequest {
        method: &slot.method,
        path: &slot.path,
        headers: &slot.headers,
        body,
        peer: None,
    };
    slot.config
        .gate
        .borrow_mut()
        .evaluate(&request, now, Verification::Core)
}

/// Hands the shell the next thing to do.
fn advance(slot: &mut Slot, step: Step) -> String {
    match step {
        Step::Done(outcome) => {
            let outcome = *outcome;
            match outcome.refetch_issuer {
                Some(issuer) if !slot.refetched => {
                    slot.refetched = true;
                    slot.outcome = Some(outcome);
                    json!({"k": "refetch", "issuer": issuer}).to_string()
                }
                _ => done(slot, outcome),
            }
        }
        Step::VerifySignature(pending) => {
            let out = verify_step(&pending);
            slot.waiting = Waiting::Signature(pending);
            out
        }
        Step::ConsultLimiter(pending) => {
            let out = limit_step(&slot.config, &pending);
            slot.waiting = Waiting::Limit(pending);
            out
        }
    }
}

fn done(slot: &mut Slot, outcome: Outcome) -> String {
    let audit = outcome.audit.to_json();
    slot.reply_to = outcome.reply_to;
    let head = match outcome.decision {
        Decision::Denied(denied) => {
            let r = &denied.reply;
            json!({"k": "deny", "status": r.status, "headers": r.headers, "body": r.body})
        }
        Decision::Allowed(allowed) => {
            let drop: Vec<&str> = slot
                .headers
                .iter()
                .map(|(name, _)| name.as_str())
                .filter(|name| !forwards_request_header(&name.to_ascii_lowercase()))
                .collect();
            let list = allowed.list_filter.is_some();
            slot.list_filter = allowed.list_filter;
            json!({
                "k": "allow",
                "target": format!("{}{}", slot.config.origin, slot.path),
                "drop": drop,
                "up": allowed.upstream_headers,
                "rh": allowed.response_headers,
                "list": list,
                "cap": MAX_LIST_BYTES,
                "timeout": slot.config.origin_timeout_ms,
            })
        }
    };
    format!("{head}\n{audit}")
}

fn verify_step(pending: &PendingSignature) -> String {
    let key = pending.key();
    let alg = key.algorithm();
    let mut jwk = key.jwk().clone();
    // WebCrypto checks a JWK's `alg` against the algorithm it imports for, and runtimes know only "EdDSA"
    // for Ed25519 keys; RFC 9864's "Ed25519" is dropped here (the core already bound the key to it).
    if alg == Algorithm::Ed25519 {
        if let Some(o) = jwk.as_object_mut() {
            o.remove("alg");
        }
    }
    let (import, verify) = webcrypto_params(alg);
    json!({
        "k": "verify",
        "fp": key.fingerprint(),
        "kid": key.kid(),
        "alg": alg.name(),
        "jwk": jwk,
        "import": import,
        "verify": verify,
        "max_keys": txngate_core::host::MAX_CACHED_KEYS,
    })
    .to_string()
}

/// WebCrypto's import and verify parameters for `alg`.
fn webcrypto_params(alg: Algorithm) -> (Value, Value) {
    match alg {
        Algorithm::EdDSA | Algorithm::Ed25519 => {
            (json!({"name": "Ed25519"}), json!({"name": "Ed25519"}))
        }
        Algorithm::ES256 => (
            json!({"name": "ECDSA", "namedCurve": "P-256"}),
            json!({"name": "ECDSA", "hash": "SHA-256"}),
        ),
        // WebCrypto's ECDSA signature is IEEE P1363 `r ‖ s`, as JWS carries it (96 bytes for P-384).
        Algorithm::ES384 => (
            json!({"name": "ECDSA", "namedCurve": "P-384"}),
            json!({"name": "ECDSA", "hash": "SHA-384"}),
        ),
        Algorithm::RS256 => (
            json!({"name": "RSASSA-PKCS1-v1_5", "hash": "SHA-256"}),
            json!({"name": "RSASSA-PKCS1-v1_5"}),
        ),
        // RFC 7518 §3.5: PS256 uses a salt as long as the hash.
        Algorithm::PS256 => (
            json!({"name": "RSA-PSS", "hash": "SHA-256"}),
            json!({"name": "RSA-PSS", "saltLength": 32}),
        ),
    }
}

/// The signature the request waits on (empty if none).
#[wasm_bindgen(js_name = txngateSignature)]
pub fn signature(id: u32) -> Vec<u8> {
    awaited_bytes(id, |p| p.signature())
}

/// The signing input of the signature the request waits on (empty if none).
#[wasm_bindgen(js_name = txngateSigningInput)]
pub fn signing_input(id: u32) -> Vec<u8> {
    awaited_bytes(id, |p| p.signing_input())
}

/// Bytes of the signature check the request waits on, copied out for WebCrypto; empty if it waits on none.
fn awaited_bytes(id: u32, part: impl Fn(&PendingSignature) -> &[u8]) -> Vec<u8> {
    with_slot(id, |slot| match &slot.waiting {
        Waiting::Signature(p) => part(p).to_vec(),
        _ => Vec::new(),
    })
    .unwrap_or_default()
}

/// WebCrypto's verdict: 0 invalid, 1 valid, 2 WebCrypto could not be used (the core's `verify_native`
/// decides: a refusal unless built with `native-fallback`).
#[wasm_bindgen(js_name = txngateResumeSignature)]
pub fn resume_signature(id: u32, verdict: u8) -> String {
    with_slot(id, |slot| {
        let Waiting::Signature(pending) = std::mem::replace(&mut slot.waiting, Waiting::Nothing)
        else {
            return lost();
        };
        let valid = match verdict {
            1 => true,
            2 => pending.verify_native(),
            _ => false,
        };
        let step = slot
            .config
            .gate
            .borrow_mut()
            .resume_signature(*pending, valid);
        advance(slot, step)
    })
    .unwrap_or_else(lost)
}

fn limit_step(config: &Config, pending: &PendingLimit) -> String {
    let rule = pending.rule();
    match config.limiter {
        LimiterMode::Exact => {
            let body = limiter::ConsumeRequest {
                key: pending.bucket_key().to_string(),
                limit: rule.limit(),
                period_seconds: rule.period_seconds(),
                burst: rule.burst(),
                now_ms: pending.now_ms(),
            };
            json!({
                "k": "limit",
                "mode": "exact",
                "binding": limiter::BINDING,
                "key": pending.bucket_key(),
                "body": serde_json::to_string(&body).unwrap_or_default(),
                "timeout": config.limiter_timeout_ms,
            })
        }
        LimiterMode::Approximate => json!({
            "k": "limit",
            "mode": "approximate",
            "binding": format!("TXNGATE_RL_{}_{}", rule.limit(), rule.period_seconds()),
            "key": pending.bucket_key(),
        }),
    }
    .to_string()
}

/// What the limiter said. `kind`: 0 the object answered (`status`, `text`: its body), 1 no binding, 2 no
/// stub, 3 the call failed (`text`: the exception), 4 the body could not be read, 5 no answer in time;
/// approximate mode: 10 answered (`status` 1 allowed, 0 limited), 11 no binding, 12 the call failed.
#[wasm_bindgen(js_name = txngateResumeLimit)]
pub fn resume_limit(id: u32, kind: u8, status: u16, text: &str) -> String {
    with_slot(id, |slot| {
        let Waiting::Limit(pending) = std::mem::replace(&mut slot.waiting, Waiting::Nothing) else {
            return lost();
        };
        let result = if kind >= 10 {
            approximate_result(&pending, kind, status, text)
        } else {
            limiter::exact_result(&pending, slot.config.limiter_timeout_ms, kind, status, text)
        };
        let step = slot.config.gate.borrow_mut().resume_limit(*pending, result);
        advance(slot, step)
    })
    .unwrap_or_else(lost)
}

/// Approximate mode: the Workers Rate Limiting binding `TXNGATE_RL_<limit>_<period>` (periods 10 or 60 s
/// only, counted per Cloudflare location, eventually consistent). It answers only yes or no, so the state
/// reports `remaining: 0` and a retry of one full period when refused.
fn approximate_result(
    pending: &PendingLimit,
    kind: u8,
    success: u16,
    text: &str,
) -> Result<LimitState, StoreError> {
    let rule = pending.rule();
    let name = format!("TXNGATE_RL_{}_{}", rule.limit(), rule.period_seconds());
    let backend = |detail: String| StoreError::Backend { detail };
    match kind {
        10 => {
            let allowed = success == 1;
            let period_ms = rule.period_seconds().saturating_mul(1000);
            Ok(LimitState {
                allowed,
                limit: rule.limit(),
                burst: rule.burst(),
                period_seconds: rule.period_seconds(),
                remaining: 0,
                retry_after_ms: if allowed { 0 } else { period_ms },
                reset_ms: period_ms,
            })
        }
        11 => Err(backend(format!(
            "approximate mode: no Rate Limiting binding {name}"
        ))),
        _ => Err(backend(format!("rate limiting binding {name}: {text}"))),
    }
}

/// After the refetch an unknown `kid` asked for: evaluates once more if the keys changed, else the
/// outcome stands.
#[wasm_bindgen(js_name = txngateAfterRefetch)]
pub fn after_refetch(id: u32, changed: bool, now: f64) -> String {
    with_slot(id, |slot| {
        let Some(outcome) = slot.outcome.take() else {
            return lost();
        };
        if changed {
            let step = start(slot, ms(now));
            advance(slot, step)
        } else {
            done(slot, outcome)
        }
    })
    .unwrap_or_else(lost)
}

/// A failure of the Worker or of the origin, rendered for the request (`{"k":"reply",...}`); the detail
/// goes to the log. `kind`: 0 the origin could not be reached (`reason`: origin.request, origin.fetch,
/// origin.response), 1 no response headers in time, 2 list over the cap, 3 list unfilterable, 4 the
/// request could not be read, else an internal error.
#[wasm_bindgen(js_name = txngateFailure)]
pub fn failure(id: u32, kind: u8, reason: &str, detail: &str) -> String {
    let failure = match kind {
        0 => Failure::UpstreamUnreachable {
            reason: match reason {
                "origin.request" => "origin.request",
                "origin.fetch" => "origin.fetch",
                _ => "origin.response",
            },
        },
        1 => Failure::UpstreamTimeout,
        2 => Failure::ListTooLarge,
        3 => Failure::ListUnfilterable,
        4 => Failure::Internal {
            reason: "request.read",
        },
        _ => Failure::Internal {
            reason: "worker.internal",
        },
    };
    let to = with_slot(id, |slot| slot.reply_to.clone()).unwrap_or_default();
    reply_json(&crate::proxy::failure(failure, detail, &to))
}

/// Filters a list response (`tools/list`, ...) to what this caller may use; throws the reason it cannot.
#[wasm_bindgen(js_name = txngateFilterList)]
pub fn filter_list(id: u32, content_type: &str, body: &[u8]) -> Result<Vec<u8>, JsValue> {
    with_slot(id, |slot| match &slot.list_filter {
        Some(filter) => filter
            .apply(content_type, body)
            .map_err(|e| JsValue::from_str(&e.to_string())),
        None => Err(JsValue::from_str("no list filter")),
    })
    .unwrap_or_else(|| Err(JsValue::from_str("no such request")))
}

/// The limiter object's step (worker/shell.js's `TxngateRateLimiter` stores only the state): the core's
/// GCRA over `stored` (the bucket's TAT, decimal). `{"next": tat|null, "alarm_at": ms|null, "state"}`, or
/// `{"error"}` for a rule the core refuses.
#[wasm_bindgen(js_name = txngateGcra)]
pub fn gcra(
    limit: u32,
    period_seconds: f64,
    burst: u32,
    stored: Option<String>,
    now: f64,
) -> String {
    let period = if period_seconds.is_finite() && period_seconds >= 0.0 {
        period_seconds.min(f64::from(u32::MAX)) as u32
    } else {
        u32::MAX
    };
    let rule = match LimitRule::new(limit, period, burst) {
        Ok(rule) => rule,
        Err((field, message)) => {
            return json!({"error": format!("bad rule: {field} {message}")}).to_string()
        }
    };
    let stored = stored.and_then(|s| s.parse::<u128>().ok());
    let (next, state) = ratelimit::gcra(&rule, stored, ms(now));
    let alarm_at = next.map(|tat| limiter::alarm_for(tat, rule.limit()));
    json!({
        "next": next.map(|t| t.to_string()),
        "alarm_at": alarm_at,
        "state": state,
    })
    .to_string()
}

/// When a stored bucket is full again (ms since the epoch; 0 for a TAT that does not parse).
#[wasm_bindgen(js_name = txngateDrainMs)]
pub fn drain_ms(tat: &str, limit: u32) -> f64 {
    tat.parse::<u128>()
        .map_or(0, |tat| limiter::drain_ms(tat, limit)) as f64
}

/// The alarm time for state drained at `at_ms` (not before the core's minimum delay from now).
#[wasm_bindgen(js_name = txngateAlarmAt)]
pub fn alarm_at(at_ms: f64, now: f64) -> f64 {
    txngate_core::host::alarm_at(ms(at_ms), ms(now)) as f64
}

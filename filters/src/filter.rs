//! The proxy-wasm glue: root and HTTP contexts. Gathers input for the core and renders its output.

// `proxy_wasm::main!` expands to the `#[no_mangle] _initialize` export (and a call of the WASI constructors)
// that every proxy-wasm module must have.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};
use serde_json::{json, Value};
use txngate_core::gate::is_filtered_status;
use txngate_core::keys::KeySource;
use txngate_core::mcp::adapter_error_body;
use txngate_core::ratelimit::{LimitRule, LimitState, SlotTable, StoreError};
use txngate_core::token::{HostVerified, TokenError};
use txngate_core::{
    is_identity_header, AuditRecord, Body, Decision, Gate, Limiter, ListFilter, Outcome,
    PendingLimit, Request, Verdict,
};

use crate::hybrid::Hybrid;
use crate::jwks::{self, Meta, Target};
use crate::mode::BodyMode;
use crate::plugin::PluginConfig;
use crate::rls_client;
use crate::sink::{self, AuditSink};
use crate::store::{self, LockOwner, SharedData, SharedStore};
use crate::{BODY_WAIT_MS, MAX_TOOLS_LIST_BYTES, TICK_MS};

mod hold;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    // Replaces the SDK's hook (which unwraps its own log call): a panic is logged at critical level, then
    // the VM aborts (panic = "abort"), and Envoy fails the filter closed.
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("txngate: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> { Box::new(Root::new(context_id)) });
}}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

/// Shared data through the host.
#[derive(Debug, Clone, Copy)]
struct HostShared;

impl SharedData for HostShared {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, String> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), cas)) => Ok(Some((value, cas.unwrap_or(0)))),
            Ok((None, Some(cas))) => Ok(Some((Vec::new(), cas))),
            Ok((None, None)) => Ok(None),
            Err(status) => Err(format!("get_shared_data({key}): {status:?}")),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, String> {
        match hostcalls::set_shared_data(key, Some(value), Some(cas)) {
            Ok(()) => Ok(true),
            Err(Status::CasMismatch) => Ok(false),
            Err(status) => Err(format!("set_shared_data({key}): {status:?}")),
        }
    }

    fn now_ms(&mut self) -> u64 {
        now_ms()
    }
}

/// Counters, defined on first use. Names come from bounded sets (reason codes, rule and issuer names of
/// the policy), never from request input.
#[derive(Debug, Default)]
struct Metrics {
    ids: HashMap<String, u32>,
    /// `txngate.requests.<verdict>.<reason>` by its two static parts: the per-decision counter is found
    /// without formatting its name each time.
    decisions: HashMap<(&'static str, &'static str), u32>,
}

const MAX_METRICS: usize = 2048;

impl Metrics {
    /// A rate-limit store (or rate limit service) failure, `txngate.ratelimit.<kind>`: counted whatever the
    /// rule's `on_store_error` made of it, since an allowed call that could not be counted is exactly what an
    /// operator must see.
    fn store_failure(&mut self, reason: &str) {
        let kind = reason.strip_prefix("ratelimit.").unwrap_or(reason);
        self.increment(&format!("txngate.ratelimit.{}", segment(kind)));
    }

    fn increment(&mut self, name: &str) {
        let id = match self.ids.get(name) {
            Some(id) => *id,
            None => {
                let Ok(id) = hostcalls::define_metric(MetricType::Counter, name) else {
                    return;
                };
                if self.ids.len() < MAX_METRICS {
                    self.ids.insert(name.to_string(), id);
                }
                id
            }
        };
        let _ = hostcalls::increment_metric(id, 1);
    }

    /// `txngate.requests.<verdict>.<reason>`, once per decision.
    fn increment_decision(&mut self, verdict: &'static str, reason: &'static str) {
        if let Some(id) = self.decisions.get(&(verdict, reason)) {
            let _ = hostcalls::increment_metric(*id, 1);
            return;
        }
        let name = format!("txngate.requests.{verdict}.{}", segment(reason));
        let Ok(id) = hostcalls::define_metric(MetricType::Counter, &name) else {
            return;
        };
        if self.decisions.len() < MAX_METRICS {
            self.decisions.insert((verdict, reason), id);
        }
        let _ = hostcalls::increment_metric(id, 1);
    }
}

/// A metric name segment: `[A-Za-z0-9_-]`, anything else becomes `_`.
fn segment(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A limiter that remembers the store failure (its reason code) a decision ran into, so store errors,
/// contention and a full slot table get their own counters (`txngate.ratelimit.store_error`,
/// `.contention`, `.store_full`) next to the per-verdict ones.
struct Watched<'l> {
    inner: &'l mut dyn Limiter,
    failure: Option<&'static str>,
}

impl Limiter for Watched<'_> {
    fn consume(
        &mut self,
        key: &str,
        rule: &LimitRule,
        now_ms: u64,
    ) -> Result<LimitState, StoreError> {
        let result = self.inner.consume(key, rule, now_ms);
        if let Err(e) = &result {
            self.failure = Some(e.reason());
        }
        result
    }
}

/// The request as gathered at `on_http_request_headers`.
#[derive(Debug)]
struct Captured {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    peer: Option<String>,
    /// Hybrid mode only: whether jwt_authn verified this request's token (read at request headers, when
    /// its dynamic metadata is there; the body watchdog reuses it).
    attestation: Option<Result<HostVerified, TokenError>>,
}

impl Captured {
    fn gather() -> Self {
        // Values as bytes: a header value that is not UTF-8 must not trap the VM (the SDK's `get_map`
        // unwraps). Lossy text can only make a token fail verification.
        let headers: Vec<(String, String)> = hostcalls::get_map_bytes(MapType::HttpRequestHeaders)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let pseudo = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let method = pseudo(":method");
        let path = pseudo(":path");
        let peer = hostcalls::get_property(vec!["connection", "uri_san_peer_certificate"])
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|s| !s.is_empty());
        Self {
            method,
            path,
            headers,
            peer,
            attestation: None,
        }
    }

    /// Hybrid mode: attests the token from jwt_authn's dynamic metadata (never from a header).
    fn attest(&mut self, hybrid: &Hybrid, gate: &Gate) -> Result<HostVerified, TokenError> {
        let metadata = hostcalls::get_property(vec!["metadata"]).ok().flatten();
        let name = gate.policy().token.header.as_str();
        let token = self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        hybrid.attest(metadata.as_deref(), token, gate.policy().token.max_bytes)
    }

    fn request<'a>(&'a self, body: Body<'a>) -> Request<'a> {
        Request {
            method: &self.method,
            path: &self.path,
            headers: &self.headers,
            body,
            peer: self.peer.as_deref(),
        }
    }

    fn content_length(&self) -> Option<u64> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
    }
}

/// A request paused until its body arrives.
#[derive(Debug)]
struct Awaiting {
    since_ms: u64,
    captured: Captured,
}

/// Fetch bookkeeping of one remote issuer.
#[derive(Debug)]
struct Fetch {
    issuer: usize,
    name: String,
    target: Option<Target>,
    keys: jwks::Keys,
    refresh_ms: u64,
    min_refetch_ms: u64,
    in_flight: Option<(u32, u64)>,
    failures: u32,
    retry_at_ms: u64,
    /// The set this VM has installed (fetch time and hash).
    installed: Option<Meta>,
    /// A shared set this VM could not install (not retried).
    rejected: Option<Meta>,
}

/// Everything one VM (one root context and its HTTP contexts) shares. Single-threaded.
#[derive(Debug)]
struct Vm {
    gate: Option<Gate>,
    /// Set when the plugin configuration turns hybrid mode on (see [`crate::hybrid`]).
    hybrid: Option<Hybrid>,
    /// Where audit records go (see [`crate::sink`]).
    sink: AuditSink,
    /// Where a request waits for its body (see [`crate::mode`]).
    body_mode: BodyMode,
    lock_owner: LockOwner,
    metrics: Metrics,
    awaiting: BTreeMap<u32, Awaiting>,
    /// Issuers an HTTP context asked to refetch (unknown `kid`); the next tick fetches.
    refetch: BTreeSet<usize>,
    fetches: Vec<Fetch>,
    /// Some body callback reached this VM, so `allow_on_headers_stop_iteration` is on.
    body_delivered: bool,
    warned_no_body: bool,
}

impl Vm {
    /// Decides with the core: signatures with its crypto, limits in shared data behind its `SlotTable`. A
    /// remote limit comes back pending: the caller asks the rate limit service.
    fn decide(
        &mut self,
        captured: &Captured,
        body: Body<'_>,
        now: u64,
    ) -> Option<Result<Outcome, Box<PendingLimit>>> {
        let Vm {
            gate, lock_owner, ..
        } = self;
        let gate = gate.as_mut()?;
        let slots = gate.policy().max_limit_keys;
        let mut store = SharedStore::new(HostShared, lock_owner);
        let (outcome, failure) = {
            let mut slots = SlotTable::new(&mut store, slots);
            let mut limiter = Watched {
                inner: &mut slots,
                failure: None,
            };
            let outcome = gate.decide_or_remote(
                &captured.request(body),
                now,
                captured.attestation.as_ref(),
                &mut limiter,
            );
            (outcome, limiter.failure)
        };
        if let Some(reason) = failure {
            self.metrics.store_failure(reason);
        }
        if store.stats.stolen > 0 {
            log(
                LogLevel::Warn,
                "txngate: took over the rate-limit creation lock of a VM that died holding it",
            );
            self.metrics.increment("txngate.ratelimit.lock_stolen");
        }
        Some(outcome)
    }

    /// A remote limit's local bucket (`local_first`), in shared data like any local limit.
    fn consume_local(&mut self, pending: &PendingLimit) -> Result<LimitState, StoreError> {
        let Vm {
            gate, lock_owner, ..
        } = self;
        let slots = gate.as_ref().map_or(1, |g| g.policy().max_limit_keys);
        let mut store = SharedStore::new(HostShared, lock_owner);
        let mut slots = SlotTable::new(&mut store, slots);
        let result = Limiter::consume(&mut slots, pending.key(), pending.rule(), pending.now_ms());
        if let Err(e) = &result {
            self.metrics.store_failure(e.reason());
        }
        result
    }

    /// Audit line, filter state, metrics, refetch request.
    fn record(&mut self, outcome: &Outcome) {
        let audit = &outcome.audit;
        match self.sink {
            AuditSink::FilterState => {
                let _ = hostcalls::set_property(
                    vec![sink::AUDIT_STATE],
                    Some(audit.to_json().as_bytes()),
                );
            }
            AuditSink::Log => {
                // Not even serialised when Envoy would drop the line (log level above info).
                let dropped = hostcalls::get_log_level().is_ok_and(|l| {
                    matches!(l, LogLevel::Warn | LogLevel::Error | LogLevel::Critical)
                });
                if !dropped {
                    log(LogLevel::Info, &audit.to_json());
                }
                set_filter_state(audit);
            }
        }
        self.metrics.increment_decision(audit.verdict, audit.reason);
        if audit.reason == "ratelimit.exceeded"
            || audit.dry_run_reason == Some("ratelimit.exceeded")
        {
            let rule = audit.rule.as_deref().map_or_else(
                || "unknown".to_string(),
                |r| {
                    if r == "*" {
                        "default".to_string()
                    } else {
                        segment(r)
                    }
                },
            );
            self.metrics
                .increment(&format!("txngate.ratelimited.{rule}"));
        }
        if let Some(issuer) = outcome.refetch_issuer {
            self.refetch.insert(issuer);
        }
    }
}

fn set_filter_state(audit: &AuditRecord) {
    let fields: [(&str, Option<&str>); 5] = [
        ("txngate_verdict", Some(audit.verdict)),
        ("txngate_reason", Some(audit.reason)),
        ("txngate_agent", audit.agent.as_deref()),
        ("txngate_tool", audit.tool.as_deref()),
        ("txngate_txn", audit.txn.as_deref()),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            let _ = hostcalls::set_property(vec![name], Some(value.as_bytes()));
        }
    }
}

/// The names of the client-sent identity headers (`x-txngate-*`), which never reach the upstream.
fn client_identity(captured: &Captured) -> Vec<String> {
    captured
        .headers
        .iter()
        .filter(|(name, _)| is_identity_header(name))
        .map(|(name, _)| name.clone())
        .collect()
}

/// Identity headers: the client's go (`client_identity`), the verified ones come in.
fn set_identity(
    client_identity: &[String],
    upstream: &[(String, String)],
) -> Result<(), &'static str> {
    for name in client_identity {
        if hostcalls::remove_map_value(MapType::HttpRequestHeaders, name).is_err() {
            return Err("could not remove a client-sent identity header");
        }
    }
    for (name, value) in upstream {
        if hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)).is_err() {
            return Err("could not set the identity headers");
        }
    }
    Ok(())
}

fn send_local(status: u16, headers: &[(String, String)], body: &str) {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if let Err(e) = hostcalls::send_http_response(u32::from(status), headers, Some(body.as_bytes()))
    {
        log(
            LogLevel::Error,
            &format!("txngate: send_http_response failed: {e:?}"),
        );
    }
}

fn send_deny(decision: &Decision) {
    send_local(
        decision.status,
        &decision.response_headers,
        decision.body.as_deref().unwrap_or(""),
    );
}

/// A failure of the adapter itself (not a policy decision): always a refusal. Rendered by the core as the
/// Worker renders its own (a JSON-RPC error when the request had an id, txngate's code for the status).
fn send_adapter_error(status: u16, reason: &str, message: &str, rpc_id: Option<&Value>) {
    let body = adapter_error_body(status, reason, &format!("txngate: {message}"), rpc_id);
    let headers = [
        ("content-type".to_string(), "application/json".to_string()),
        ("cache-control".to_string(), "no-store".to_string()),
    ];
    log(
        LogLevel::Warn,
        &json!({"verdict": "deny", "reason": reason, "status": status, "detail": message})
            .to_string(),
    );
    send_local(status, &headers, &body);
}

// ---------------------------------------------------------------------------------------------------------
// Root context
// ---------------------------------------------------------------------------------------------------------

struct Root {
    context_id: u32,
    vm: Rc<RefCell<Vm>>,
}

impl Root {
    fn new(context_id: u32) -> Self {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(now_ms());
        hasher.write_u32(context_id);
        let vm = Vm {
            gate: None,
            hybrid: None,
            sink: AuditSink::Log,
            body_mode: BodyMode::HoldBody,
            lock_owner: LockOwner::new(hasher.finish()),
            metrics: Metrics::default(),
            awaiting: BTreeMap::new(),
            refetch: BTreeSet::new(),
            fetches: Vec::new(),
            body_delivered: false,
            warned_no_body: false,
        };
        Self {
            context_id,
            vm: Rc::new(RefCell::new(vm)),
        }
    }

    /// Refuses requests that waited for a body that never came.
    fn watchdog(&self, now: u64) {
        let expired: Vec<u32> = self
            .vm
            .borrow()
            .awaiting
            .iter()
            .filter(|(_, a)| now.saturating_sub(a.since_ms) >= BODY_WAIT_MS)
            .map(|(id, _)| *id)
            .collect();
        if expired.is_empty() {
            return;
        }
        let mut vm = self.vm.borrow_mut();
        for id in expired {
            let Some(waiting) = vm.awaiting.remove(&id) else {
                continue;
            };
            if !vm.body_delivered && !vm.warned_no_body {
                vm.warned_no_body = true;
                log(
                    LogLevel::Critical,
                    "txngate: an MCP request body did not reach the filter within 3 s and no body ever has: set \
                     `allow_on_headers_stop_iteration: true` in the Wasm filter configuration (requests are refused \
                     until then)",
                );
            }
            if hostcalls::set_effective_context(id).is_err() {
                continue;
            }
            match vm.decide(&waiting.captured, Body::Absent, now) {
                Some(Ok(outcome)) if outcome.decision.verdict == Verdict::Deny => {
                    vm.record(&outcome);
                    send_deny(&outcome.decision);
                }
                // A paused request without its body never passes, whatever the policy says.
                _ => send_adapter_error(
                    500,
                    "filter.body_missing",
                    "the request body never reached the filter",
                    None,
                ),
            }
        }
        let _ = hostcalls::set_effective_context(self.context_id);
    }

    /// Adopts newer shared JWKS, then fetches what is due (periodic refresh or unknown `kid`).
    fn poll_jwks(&self, now: u64) {
        let mut vm = self.vm.borrow_mut();
        let Vm {
            gate,
            fetches,
            refetch,
            metrics,
            ..
        } = &mut *vm;
        let Some(gate) = gate.as_mut() else { return };
        let wanted = std::mem::take(refetch);
        let mut data = HostShared;
        for f in fetches.iter_mut() {
            adopt_shared(gate, f, &mut data, metrics);
            if let Some((_, started)) = f.in_flight {
                if now.saturating_sub(started) < jwks::CLAIM_MS {
                    continue;
                }
                f.in_flight = None;
            }
            let due = gate.refresh_due(now).contains(&f.issuer) && now >= f.retry_at_ms;
            if !due {
                // An unknown `kid` asks for a refetch at most once per `min_refetch_seconds` per VM (the
                // core's debounce); the window is also claimed in shared data, so a burst of unknown kids
                // spread over N workers still costs one fetch per window, not N.
                if !wanted.contains(&f.issuer)
                    || !claim_window(&mut data, &f.keys.refetch, now, f.min_refetch_ms)
                {
                    continue;
                }
                metrics.increment(&format!("txngate.jwks.{}.refetch", segment(&f.name)));
            }
            let Some(target) = f.target.clone() else {
                continue;
            };
            if !claim(&mut data, &f.keys.claim, now) {
                continue;
            }
            let headers = vec![
                (":method", "GET"),
                (":path", target.path.as_str()),
                (":authority", target.authority.as_str()),
                ("accept", "application/json, application/jwk-set+json"),
                ("user-agent", "txngate"),
            ];
            match hostcalls::dispatch_http_call(
                &target.cluster,
                headers,
                None,
                vec![],
                Duration::from_millis(jwks::FETCH_TIMEOUT_MS),
            ) {
                Ok(token) => f.in_flight = Some((token, now)),
                Err(status) => {
                    fetch_failed(
                        f,
                        &mut data,
                        now,
                        metrics,
                        &format!(
                            "dispatch to cluster {:?} failed: {status:?}",
                            target.cluster
                        ),
                    );
                }
            }
        }
    }
}

/// Takes the fetch claim of an issuer (see [`jwks`]): false while another VM's fetch is in flight or a
/// failed fetch's backoff runs.
fn claim(data: &mut HostShared, key: &str, now: u64) -> bool {
    let until = jwks::encode_ms(now.saturating_add(jwks::CLAIM_MS));
    match data.get(key) {
        Ok(None) => data.set(key, &until, 0).unwrap_or(false),
        Ok(Some((value, cas))) => {
            if jwks::decode_ms(&value).is_some_and(|held_until| now < held_until) {
                return false;
            }
            data.set(key, &until, cas).unwrap_or(false)
        }
        // Cannot coordinate: fetch anyway (a duplicate fetch is harmless).
        Err(_) => true,
    }
}

/// Takes a time window in shared data: true (and the window is ours from `now`) unless another VM took it
/// less than `window_ms` ago. A shared-data error answers true: the per-VM debounce still holds.
fn claim_window(data: &mut HostShared, key: &str, now: u64, window_ms: u64) -> bool {
    match data.get(key) {
        Ok(None) => data.set(key, &jwks::encode_ms(now), 0).unwrap_or(true),
        Ok(Some((value, cas))) => {
            let at = jwks::decode_ms(&value).unwrap_or(0);
            if at != 0 && now.saturating_sub(at) < window_ms {
                return false;
            }
            data.set(key, &jwks::encode_ms(now), cas).unwrap_or(true)
        }
        Err(_) => true,
    }
}

fn adopt_shared(gate: &mut Gate, f: &mut Fetch, data: &mut HostShared, metrics: &mut Metrics) {
    let Some(meta) = data
        .get(&f.keys.meta)
        .ok()
        .flatten()
        .and_then(|(bytes, _)| Meta::decode(&bytes))
    else {
        return;
    };
    if f.installed.is_some_and(|m| m.fetched_ms >= meta.fetched_ms) || f.rejected == Some(meta) {
        return;
    }
    if f.installed.is_some_and(|m| m.sha256 == meta.sha256) {
        gate.touch_jwks(f.issuer, meta.fetched_ms);
        f.installed = Some(meta);
        return;
    }
    let Some((body, _)) = data.get(&f.keys.body).ok().flatten() else {
        return;
    };
    if !meta.matches(&body) {
        return; // another VM is between its two writes; next tick
    }
    match gate.install_jwks(f.issuer, &body, meta.fetched_ms) {
        Ok(_) => {
            f.installed = Some(meta);
            metrics.increment(&format!("txngate.jwks.{}.adopted", segment(&f.name)));
        }
        Err(e) => {
            f.rejected = Some(meta);
            log(
                LogLevel::Warn,
                &format!(
                    "txngate: jwks: issuer {:?}: shared key set refused: {e}",
                    f.name
                ),
            );
        }
    }
}

/// Counts and logs a failed fetch and backs off: this VM until `retry_at_ms`, and every VM through the
/// shared claim, held until then (so N workers do not each retry a failing server).
fn fetch_failed(
    f: &mut Fetch,
    data: &mut HostShared,
    now: u64,
    metrics: &mut Metrics,
    detail: &str,
) {
    f.failures = f.failures.saturating_add(1);
    f.retry_at_ms = now.saturating_add(jwks::backoff_ms(f.failures, f.refresh_ms));
    let _ = data.set(&f.keys.claim, &jwks::encode_ms(f.retry_at_ms), 0);
    metrics.increment(&format!("txngate.jwks.{}.refresh_failed", segment(&f.name)));
    log(
        LogLevel::Warn,
        &format!(
            "txngate: jwks: issuer {:?}: {detail}; keeping the last good key set",
            f.name
        ),
    );
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let now = now_ms();
        let mut vm = self.vm.borrow_mut();
        let Vm {
            gate,
            fetches,
            metrics,
            ..
        } = &mut *vm;
        let Some(gate) = gate.as_mut() else { return };
        let Some(f) = fetches
            .iter_mut()
            .find(|f| f.in_flight.is_some_and(|(t, _)| t == token_id))
        else {
            return;
        };
        f.in_flight = None;
        let mut data = HostShared;
        // A failed call (connection error, timeout) has no response maps at all: reading one would be a
        // host error (and a trap in the SDK).
        if num_headers == 0 {
            return fetch_failed(
                f,
                &mut data,
                now,
                metrics,
                "no response (connection failure or timeout)",
            );
        }
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| String::from_utf8(s).ok())
            .unwrap_or_default();
        if status != "200" {
            let status = if status.is_empty() {
                "no response".to_string()
            } else {
                format!("status {status}")
            };
            return fetch_failed(f, &mut data, now, metrics, &status);
        }
        if body_size > jwks::MAX_JWKS_BYTES {
            return fetch_failed(
                f,
                &mut data,
                now,
                metrics,
                &format!(
                    "response of {body_size} bytes is over the {} byte cap",
                    jwks::MAX_JWKS_BYTES
                ),
            );
        }
        let body = if body_size == 0 {
            Vec::new()
        } else {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        let meta = Meta::of(&body, now);
        if f.installed.is_some_and(|m| m.sha256 == meta.sha256) {
            gate.touch_jwks(f.issuer, now);
        } else {
            match gate.install_jwks(f.issuer, &body, now) {
                Ok(skipped) => {
                    let count = gate
                        .keys()
                        .issuer(f.issuer)
                        .and_then(|i| i.key_set())
                        .map_or(0, |s| s.len());
                    log(
                        LogLevel::Info,
                        &format!(
                            "txngate: jwks: issuer {:?}: installed {count} keys ({} skipped)",
                            f.name,
                            skipped.len()
                        ),
                    );
                    for s in skipped {
                        log(
                            LogLevel::Info,
                            &format!(
                                "txngate: jwks: issuer {:?}: skipped key {} ({:?}): {}",
                                f.name, s.index, s.kid, s.reason
                            ),
                        );
                    }
                }
                Err(e) => {
                    return fetch_failed(
                        f,
                        &mut data,
                        now,
                        metrics,
                        &format!("key set refused: {e}"),
                    )
                }
            }
        }
        f.installed = Some(meta);
        f.failures = 0;
        f.retry_at_ms = 0;
        let _ = data.set(&f.keys.claim, &jwks::encode_ms(0), 0);
        metrics.increment(&format!("txngate.jwks.{}.refresh_ok", segment(&f.name)));
        // Share it unless another VM already shared a newer fetch.
        let shared = data
            .get(&f.keys.meta)
            .ok()
            .flatten()
            .and_then(|(b, _)| Meta::decode(&b));
        let newer = shared.is_none_or(|m| m.fetched_ms < now);
        if newer
            && (data.set(&f.keys.body, &body, 0).is_err()
                || data.set(&f.keys.meta, &meta.encode(), 0).is_err())
        {
            log(
                LogLevel::Warn,
                "txngate: jwks: could not share the fetched key set",
            );
        }
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        if let Err(e) = store::ensure_lock(&mut HostShared) {
            log(LogLevel::Error, &format!("txngate: rate-limit lock: {e}"));
        }
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        if config.iter().all(u8::is_ascii_whitespace) {
            log(
                LogLevel::Error,
                "txngate: policy: the plugin configuration is empty; it must be the policy JSON",
            );
            return false;
        }
        let PluginConfig {
            policy,
            sink,
            body_mode,
            hybrid,
        } = match PluginConfig::parse(&config) {
            Ok(parsed) => parsed,
            Err(e) => {
                log(LogLevel::Error, &format!("txngate: {e}"));
                return false;
            }
        };
        let gate = match Gate::from_json(&policy) {
            Ok(gate) => gate,
            Err(e) => {
                log(LogLevel::Error, &format!("txngate: {e}"));
                return false;
            }
        };
        let mut fetches = Vec::new();
        for (issuer, keys) in gate.keys().issuers().iter().enumerate() {
            let KeySource::Remote {
                uri,
                cluster,
                refresh_ms,
                min_refetch_ms,
                ..
            } = &keys.source
            else {
                continue;
            };
            let target = jwks::target(uri, cluster.as_deref());
            match &target {
                None => {
                    log(LogLevel::Error, &format!("txngate: policy: issuer {:?}: jwks_uri {uri:?} cannot be requested", keys.name));
                    return false;
                }
                Some(t) if cluster.is_none() => log(
                    LogLevel::Warn,
                    &format!("txngate: issuer {:?} has no `cluster`: fetching {uri} through Envoy cluster {:?}", keys.name, t.cluster),
                ),
                Some(_) => {}
            }
            fetches.push(Fetch {
                issuer,
                name: keys.name.clone(),
                target,
                keys: jwks::keys(&keys.name, uri),
                refresh_ms: *refresh_ms,
                min_refetch_ms: *min_refetch_ms,
                in_flight: None,
                failures: 0,
                retry_at_ms: 0,
                installed: None,
                rejected: None,
            });
        }
        let remote = !fetches.is_empty();
        {
            let mut vm = self.vm.borrow_mut();
            vm.gate = Some(gate);
            vm.hybrid = hybrid;
            vm.sink = sink;
            vm.body_mode = body_mode;
            vm.fetches = fetches;
            vm.refetch.clear();
        }
        log(LogLevel::Info, "txngate: policy loaded");
        if hostcalls::set_tick_period(Duration::from_millis(TICK_MS)).is_err() {
            log(
                LogLevel::Error,
                "txngate: cannot set the tick period; remote keys and the body watchdog need it",
            );
            return false;
        }
        if remote {
            self.poll_jwks(now_ms());
        }
        true
    }

    fn on_tick(&mut self) {
        let now = now_ms();
        self.watchdog(now);
        self.poll_jwks(now);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http::new(context_id, Rc::clone(&self.vm))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

// ---------------------------------------------------------------------------------------------------------
// HTTP context
// ---------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Headers,
    /// Paused until the body is complete; the request sits in `Vm::awaiting` until the first body callback,
    /// then in `Http::pending`.
    AwaitingBody,
    /// Body-holding mode ([`BodyMode::HoldBody`]): the token was verified and the headers went on with the
    /// verified identity; every byte of the body is held until the whole request is decided.
    Holding,
    /// Paused on the rate limit service (`Http::remote`); resumes in `on_grpc_call_response`. In the
    /// body-holding mode only the body waits (the headers went on already).
    AwaitingLimit,
    Allowed,
    /// Refused (or answered by the watchdog): nothing may continue.
    Refused,
}

/// A request paused on the rate limit service.
struct RemoteCall {
    token: u32,
    pending: Box<PendingLimit>,
    render: Render,
}

/// What an allowed outcome still has to do to the request headers.
enum Render {
    /// The headers are paused: the client-sent identity headers (these names) go, the verified ones come in.
    Headers { client_identity: Vec<String> },
    /// Body-holding mode: the headers went on with `Http::identity`; the decision must give the same.
    Held,
}

struct Http {
    id: u32,
    vm: Rc<RefCell<Vm>>,
    phase: Phase,
    pending: Option<Captured>,
    max_body: usize,
    response_headers: Vec<(String, String)>,
    list_filter: Option<ListFilter>,
    rpc_id: Option<Value>,
    /// Content type of a list response (`tools/list`, ...) being buffered for filtering.
    filtering: Option<String>,
    /// Body-holding mode: the identity headers set on the headers that went on (the full decision must
    /// give the same).
    identity: Vec<(String, String)>,
    /// The request went through the body-holding mode (see `hold::Http::hold_headers`).
    held: bool,
    /// The call to the rate limit service this request waits for.
    remote: Option<RemoteCall>,
}

impl Http {
    fn new(id: u32, vm: Rc<RefCell<Vm>>) -> Self {
        Self {
            id,
            vm,
            phase: Phase::Headers,
            pending: None,
            max_body: 0,
            response_headers: Vec::new(),
            list_filter: None,
            rpc_id: None,
            filtering: None,
            identity: Vec::new(),
            held: false,
            remote: None,
        }
    }

    /// Decides and renders with the headers paused. Returns what the current callback must return.
    fn decide(&mut self, captured: &Captured, body: Body<'_>) -> Action {
        let render = Render::Headers {
            client_identity: client_identity(captured),
        };
        self.decide_with(captured, body, render)
    }

    /// Decides; a remote limit pauses on the rate limit service (see [`Http::consult_remote`]).
    fn decide_with(&mut self, captured: &Captured, body: Body<'_>, render: Render) -> Action {
        let now = now_ms();
        let decided = self.vm.borrow_mut().decide(captured, body, now);
        match decided {
            None => {
                self.phase = Phase::Refused;
                send_adapter_error(503, "filter.unconfigured", "no policy is loaded", None);
                Action::Pause
            }
            Some(Ok(outcome)) => self.render(render, outcome),
            Some(Err(pending)) => self.consult_remote(pending, render),
        }
    }

    /// A remote limit: the local bucket first (`local_first`), then the rate limit service. Pauses until
    /// its answer unless the outcome is known at once.
    fn consult_remote(&mut self, pending: Box<PendingLimit>, render: Render) -> Action {
        let local_first = pending.remote().is_some_and(|r| r.local_first);
        let service = {
            let vm = self.vm.borrow();
            vm.gate
                .as_ref()
                .and_then(|g| g.policy().rate_limit_service.clone())
        };
        let immediate = match service {
            None => Some(rls_client::refused(&pending, "no rate_limit_service")),
            Some(_) if local_first => {
                let local = self.vm.borrow_mut().consume_local(&pending);
                match local {
                    Ok(state) if state.allowed => None,
                    // Refused (or unknown) locally: the service is not asked.
                    other => Some(other),
                }
            }
            Some(_) => None,
        };
        let result = match (immediate, service) {
            (Some(result), _) => result,
            (None, Some(service)) => match rls_client::dispatch(&service, &pending) {
                Ok(token) => {
                    self.phase = Phase::AwaitingLimit;
                    self.remote = Some(RemoteCall {
                        token,
                        pending,
                        render,
                    });
                    return Action::Pause;
                }
                Err(why) => rls_client::refused(&pending, &why),
            },
            (None, None) => rls_client::refused(&pending, "no rate_limit_service"),
        };
        self.finish_remote(pending, result, render)
    }

    /// Finishes a remote limit with the service's answer (or its failure).
    fn finish_remote(
        &mut self,
        pending: Box<PendingLimit>,
        result: Result<LimitState, StoreError>,
        render: Render,
    ) -> Action {
        let outcome = {
            let mut vm = self.vm.borrow_mut();
            if let Err(e) = &result {
                vm.metrics.store_failure(e.reason());
            }
            vm.gate
                .as_mut()
                .map(|gate| gate.resume_limit(*pending, result))
        };
        match outcome {
            Some(outcome) => self.render(render, outcome),
            None => {
                self.phase = Phase::Refused;
                send_adapter_error(503, "filter.unconfigured", "no policy is loaded", None);
                Action::Pause
            }
        }
    }

    /// Records and renders an outcome.
    fn render(&mut self, render: Render, outcome: Outcome) -> Action {
        self.vm.borrow_mut().record(&outcome);
        let Outcome {
            decision, audit, ..
        } = outcome;
        if decision.verdict == Verdict::Deny {
            self.phase = Phase::Refused;
            send_deny(&decision);
            return Action::Pause;
        }
        self.rpc_id = audit.rpc_id;
        match render {
            Render::Headers { client_identity } => {
                if let Err(message) = set_identity(&client_identity, &decision.upstream_headers) {
                    return self.fail_closed(500, "filter.headers", message);
                }
                if decision.list_filter.is_some() {
                    // The response must be readable to be filtered.
                    let _ =
                        hostcalls::remove_map_value(MapType::HttpRequestHeaders, "accept-encoding");
                }
            }
            // accept-encoding went with the headers (`hold_headers`).
            Render::Held => {
                if decision.upstream_headers != self.identity {
                    return self.fail_closed(
                        500,
                        "filter.identity_changed",
                        "the decision's identity differs from the one sent with the headers",
                    );
                }
            }
        }
        self.response_headers = decision.response_headers;
        self.list_filter = decision.list_filter;
        self.phase = Phase::Allowed;
        Action::Continue
    }

    fn fail_closed(&mut self, status: u16, reason: &str, message: &str) -> Action {
        self.phase = Phase::Refused;
        send_adapter_error(status, reason, message, self.rpc_id.as_ref());
        Action::Pause
    }

    /// The request being buffered: from `Vm::awaiting` at the first body callback. None when the watchdog
    /// answered it already.
    fn take_pending(&mut self) -> Option<Captured> {
        if let Some(captured) = self.pending.take() {
            return Some(captured);
        }
        let mut vm = self.vm.borrow_mut();
        vm.body_delivered = true;
        vm.awaiting.remove(&self.id).map(|a| a.captured)
    }

    fn finish_body(&mut self, size: Option<usize>) -> Action {
        let Some(captured) = self.take_pending() else {
            self.phase = Phase::Refused;
            return Action::Pause;
        };
        let limit = self.max_body.saturating_add(1);
        let body = hostcalls::get_buffer(
            BufferType::HttpRequestBody,
            0,
            size.unwrap_or(limit).min(limit),
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        if body.len() > self.max_body {
            return self.decide(&captured, Body::TooLarge);
        }
        self.decide(&captured, Body::Complete(&body))
    }

    fn finish_response(&mut self, size: Option<usize>) -> Action {
        let (Some(content_type), Some(filter)) = (self.filtering.take(), self.list_filter.as_ref())
        else {
            return Action::Continue;
        };
        let limit = MAX_TOOLS_LIST_BYTES.saturating_add(1);
        let body = hostcalls::get_buffer(
            BufferType::HttpResponseBody,
            0,
            size.unwrap_or(limit).min(limit),
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        if body.len() > MAX_TOOLS_LIST_BYTES {
            return self.fail_closed(
                502,
                "tools_list.too_large",
                "the list response is too large to filter",
            );
        }
        match filter.apply(&content_type, &body) {
            Ok(filtered) => {
                if hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body.len(), &filtered)
                    .is_err()
                {
                    return self.fail_closed(
                        502,
                        "tools_list.filter",
                        "could not replace the list response",
                    );
                }
                Action::Continue
            }
            Err(e) => self.fail_closed(
                502,
                "tools_list.filter",
                &format!("the list response could not be filtered: {e}"),
            ),
        }
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        if let Ok(mut vm) = self.vm.try_borrow_mut() {
            vm.awaiting.remove(&self.id);
        }
    }
}

impl Context for Http {
    /// The rate limit service answered (or failed: `status_code` is the gRPC status, 4 on timeout).
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let Some(call) = self.remote.take_if(|c| c.token == token_id) else {
            return;
        };
        let result = rls_client::answer(&call.pending, status_code, response_size);
        if self.finish_remote(call.pending, result, call.render) == Action::Continue {
            let _ = hostcalls::resume_http_request();
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let mut captured = Captured::gather();
        #[cfg(feature = "fault-injection")]
        fault::inject(&captured.headers);
        let (needs_body, max_body, body_mode) = match &*self.vm.borrow() {
            Vm {
                gate: Some(gate),
                hybrid,
                body_mode,
                ..
            } => {
                if let Some(hybrid) = hybrid {
                    captured.attestation = Some(captured.attest(hybrid, gate));
                }
                (
                    gate.needs_body(&captured.method, &captured.path),
                    gate.max_body_bytes(),
                    *body_mode,
                )
            }
            _ => (false, 0, BodyMode::default()),
        };
        if !needs_body || end_of_stream {
            return self.decide(&captured, Body::Absent);
        }
        self.max_body = max_body;
        if captured
            .content_length()
            .is_some_and(|n| n > max_body as u64)
        {
            return self.decide(&captured, Body::TooLarge);
        }
        if body_mode == BodyMode::HoldBody {
            return self.hold_headers(captured);
        }
        self.phase = Phase::AwaitingBody;
        self.vm.borrow_mut().awaiting.insert(
            self.id,
            Awaiting {
                since_ms: now_ms(),
                captured,
            },
        );
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.phase {
            Phase::AwaitingBody => {}
            Phase::Holding => return self.hold_body(body_size, end_of_stream),
            Phase::Refused | Phase::AwaitingLimit => return Action::Pause,
            Phase::Headers | Phase::Allowed => return Action::Continue,
        }
        if body_size > self.max_body {
            let Some(captured) = self.take_pending() else {
                self.phase = Phase::Refused;
                return Action::Pause;
            };
            return self.decide(&captured, Body::TooLarge);
        }
        if !end_of_stream {
            // Keep buffering; the request leaves the watchdog's list at the first chunk.
            if self.pending.is_none() {
                match self.take_pending() {
                    Some(captured) => self.pending = Some(captured),
                    None => self.phase = Phase::Refused,
                }
            }
            return Action::Pause;
        }
        self.finish_body(Some(body_size))
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        match self.phase {
            Phase::AwaitingBody => self.finish_body(None),
            Phase::Holding => self.finish_held(None),
            Phase::Refused | Phase::AwaitingLimit => Action::Pause,
            Phase::Headers | Phase::Allowed => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.phase == Phase::Holding || (self.held && self.phase == Phase::AwaitingLimit) {
            // A response before the held body was released (see `hold::early_response`).
            return self.early_response();
        }
        if self.phase != Phase::Allowed {
            // Our own local reply (or Envoy's) passing through: leave it alone.
            return Action::Continue;
        }
        for (name, value) in &self.response_headers {
            let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value);
        }
        if self.list_filter.is_none() || end_of_stream {
            return Action::Continue;
        }
        let header = |name: &str| {
            hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)
                .ok()
                .flatten()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        };
        // The same rule as the Worker's: every 2xx list response is filtered.
        let successful = header(":status")
            .and_then(|s| s.trim().parse::<u16>().ok())
            .is_some_and(is_filtered_status);
        if !successful {
            return Action::Continue;
        }
        self.filtering = Some(header("content-type").unwrap_or_default());
        let _ = hostcalls::remove_map_value(MapType::HttpResponseHeaders, "content-length");
        if self.held {
            // Body-holding mode runs where Envoy may lack `allow_on_headers_stop_iteration`, and without it a
            // Pause here would keep the response body from this filter for good. The headers go on; the body
            // is still buffered whole and replaced by the filtered one; a failure then resets the stream.
            return Action::Continue;
        }
        // Hold the headers until the filtered body is ready, so a failure can still become a 502.
        Action::Pause
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.filtering.is_none() {
            return Action::Continue;
        }
        if body_size > MAX_TOOLS_LIST_BYTES {
            self.filtering = None;
            return self.fail_closed(
                502,
                "tools_list.too_large",
                "the list response is too large to filter",
            );
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.finish_response(Some(body_size))
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.filtering.is_none() {
            return Action::Continue;
        }
        self.finish_response(None)
    }
}

/// Test-only faults (cargo feature `fault-injection`, never in the shipped build): lets the Envoy fault
/// tests make the VM fail in the middle of a request, the way a bug would, to show that Envoy answers that
/// request itself (fail closed) and serves the next one from a fresh VM (`failure_policy: FAIL_RELOAD`).
#[cfg(feature = "fault-injection")]
mod fault {
    /// The request header that triggers a fault: `trap` (a Wasm `unreachable`) or `panic` (a Rust panic,
    /// logged by the panic hook, then an abort, which is also a trap).
    pub const HEADER: &str = "x-txngate-test-fault";

    #[allow(clippy::panic)]
    pub fn inject(headers: &[(String, String)]) {
        let Some((_, value)) = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(HEADER)) else {
            return;
        };
        match value.as_str() {
            "trap" => core::arch::wasm32::unreachable(),
            "panic" => panic!("fault injected by the {HEADER} request header"),
            _ => {}
        }
    }
}

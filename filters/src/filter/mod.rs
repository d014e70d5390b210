//! The proxy-wasm glue: root and HTTP contexts. Gathers input for the core and renders its output.

// `proxy_wasm::main!` expands to the `#[no_mangle] _initialize` export (and a call of the WASI constructors)
// that every proxy-wasm module must have.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};
use serde_json::json;
use txngate_core::host::MAX_METRICS;
use txngate_core::ratelimit::{LimitRule, LimitState, SlotTable, StoreError};
use txngate_core::refresh::{Fetch, FetchResult};
use txngate_core::reply::{is_filtered_status, MAX_LIST_BYTES};
use txngate_core::token::{HostVerified, TokenError};
use txngate_core::{
    is_identity_header, AuditRecord, Body, Decision, Failure, Gate, Limiter, ListFilter, Outcome,
    PendingLimit, Reply, ReplyTo, Request, Step, Verification,
};

use crate::host_verified::JwtAuthn;
use crate::jwks;
use crate::mode::BodyMode;
use crate::plugin::PluginConfig;
use crate::rls_client;
use crate::sink::{self, AuditSink};
use crate::store::{self, LockOwner, SharedData, SharedStore};
use crate::{BODY_WAIT_MS, TICK_MS};

mod hold;
mod host;
mod http;
mod root;

use host::*;
use http::{Http, Phase, Render};
use root::Root;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    // Replaces the SDK's hook (which unwraps its own log call): a panic is logged at critical level, then
    // the VM aborts (panic = "abort"), and Envoy fails the filter closed.
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("txngate: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> { Box::new(Root::new(context_id)) });
}}

/// Counters, defined on first use. Names come from bounded sets (reason codes, rule and issuer names of
/// the policy), never from request input.
#[derive(Debug, Default)]
struct Metrics {
    ids: HashMap<String, u32>,
    /// `txngate.requests.<verdict>.<reason>` by its two static parts: the per-decision counter is found
    /// without formatting its name each time.
    decisions: HashMap<(&'static str, &'static str), u32>,
}

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
    /// Host-verified mode only: whether jwt_authn verified this request's token (read at request headers,
    /// when its dynamic metadata is there; the body watchdog reuses it).
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

    /// Host-verified mode: attests the token from jwt_authn's dynamic metadata (never from a header).
    fn attest(&mut self, jwt_authn: &JwtAuthn, gate: &Gate) -> Result<HostVerified, TokenError> {
        let metadata = hostcalls::get_property(vec!["metadata"]).ok().flatten();
        let name = gate.policy().token.header.as_str();
        let token = self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        jwt_authn.attest(metadata.as_deref(), token, gate.policy().token.max_bytes)
    }

    /// Who checks this request's signature: jwt_authn in host-verified mode, else the core.
    fn verification(&self) -> Verification<'_> {
        match &self.attestation {
            Some(attestation) => Verification::Host(attestation),
            None => Verification::Core,
        }
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

/// Everything one VM (one root context and its HTTP contexts) shares. Single-threaded.
#[derive(Debug)]
struct Vm {
    gate: Option<Gate>,
    /// Set when the plugin configuration turns host-verified mode on (see [`crate::host_verified`]).
    host_verified: Option<JwtAuthn>,
    /// Where audit records go (see [`crate::sink`]).
    sink: AuditSink,
    /// The `log` sink's five per-field filter-state values (`access_log_fields`, see [`crate::sink`]).
    access_log_fields: bool,
    /// Where a request waits for its body (see [`crate::mode`]).
    body_mode: BodyMode,
    lock_owner: LockOwner,
    metrics: Metrics,
    awaiting: BTreeMap<u32, Awaiting>,
    /// Remote issuers as this VM reaches and shares them (see [`crate::jwks`]).
    remotes: Vec<jwks::Remote>,
    /// Key fetches sent, by `dispatch_http_call` token.
    jwks_in_flight: BTreeMap<u32, Fetch>,
    /// Some body callback reached this VM, so `allow_on_headers_stop_iteration` is on.
    body_delivered: bool,
    warned_no_body: bool,
    /// Envoy drops info lines (its log level is above info), as read at configure and at every tick: the
    /// audit line is then not even serialised, and no request asks the host for its log level.
    info_dropped: bool,
}

impl Vm {
    /// Starts the core's decision on `captured` with `body` and drives it ([`Vm::drive`]).
    fn decide(&mut self, captured: &Captured, body: Body<'_>, now: u64) -> Option<Step> {
        let verification = captured.verification();
        self.drive(verification, |gate| {
            gate.evaluate(&captured.request(body), now, verification)
        })
    }

    /// Runs the core from the step `start` makes (None without a policy) with the filter's synchronous
    /// means, the core's own driver ([`Gate::drive`]): signatures per `verification`, local limits in
    /// shared data behind its `SlotTable`. Returns the outcome, or a remote limit for the caller to ask the
    /// rate limit service about.
    fn drive(
        &mut self,
        verification: Verification<'_>,
        start: impl FnOnce(&mut Gate) -> Step,
    ) -> Option<Step> {
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
            let step = start(gate);
            let outcome = gate.drive(step, verification, &mut limiter);
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
        let result = Limiter::consume(
            &mut slots,
            pending.bucket_key(),
            pending.rule(),
            pending.now_ms(),
        );
        if let Err(e) = &result {
            self.metrics.store_failure(e.reason());
        }
        result
    }

    /// Audit line, filter state, metrics (an unknown `kid` already asked the core's refresher for a refetch).
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
                if !self.info_dropped {
                    log(LogLevel::Info, &audit.to_json());
                }
                if self.access_log_fields {
                    set_filter_state(audit);
                }
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

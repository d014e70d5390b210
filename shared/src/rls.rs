//! Remote rate limits: a rule's bucket counted by a rate limit service speaking Envoy's
//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` (envoyproxy/ratelimit, Kuadrant's Limitador;
//! both with Redis behind them), so one budget holds across every Envoy of a mesh.
//!
//! Policy: a top-level `rate_limit_service` (cluster, domain, timeout) and, per rule, `rate_limit.remote`
//! (the descriptor entries and whether a local bucket runs first). The gate still decides and audits: the host
//! sends [`RemoteLimit::request`] and feeds the answer to [`interpret`], whose `LimitState` (or `StoreError`)
//! goes to `Gate::resume_limit` exactly like a local bucket's.
//!
//! Mapping onto the protocol (the stock servers count fixed windows and know no burst):
//! * `limit` per `period_seconds` is sent as the descriptor's limit override (`requests_per_unit`, `unit`),
//!   so `period_seconds` must be a unit: 1, 60, 3600 or 86400. envoyproxy/ratelimit applies the override;
//!   Limitador ignores it and counts with its own limits file (which must then say the same). With
//!   `send_limit: false` the service's configuration alone sets the limit, and the policy's numbers are only
//!   reported (audit, `RateLimit-Policy`, fallback `Retry-After`).
//! * Exact: at most `limit` calls are admitted per fixed window of the service, across every Envoy (each
//!   call is one atomic increment in Redis, `hits_addend` 1). Approximate: over any sliding `period_seconds`
//!   up to `2 × limit` can pass (the end of one window and the start of the next), and the window starts
//!   when the service first saw the key, not on a clock the policy controls.
//! * `burst` has no meaning for a fixed window (whose burst is `limit`): refused on a remote rule unless
//!   `local_first` gives it a meaning (the local bucket's burst).

use core::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::authorization::Kind;
use crate::policy::{
    LimitKey, PolicyError, PolicySpec, PolicyWarning, RateLimitSpec, StoreErrorPolicy,
};
use crate::ratelimit::{LimitRule, LimitState, StoreError};
use crate::rls_wire::{self, Code, Descriptor, RateLimitRequest, Unit};

/// The rate limit service of remote rules (Envoy: the filter calls it with `dispatch_grpc_call`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitServiceSpec {
    /// The Envoy cluster of the service (HTTP/2, i.e. `typed_extension_protocol_options` with
    /// `explicit_http_config.http2_protocol_options`). In Istio: the service's `outbound|PORT||HOST` cluster.
    pub cluster: String,
    /// The rate limit domain: envoyproxy/ratelimit's configuration `domain`, Limitador's `namespace`.
    pub domain: String,
    /// How long a call waits for the service; past it the rule's `on_store_error` decides (1 to 10000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u32,
    /// Send each rule's `limit` and `period_seconds` as the descriptor's limit override (envoyproxy/ratelimit
    /// applies it; Limitador ignores it). `false`: the service's configuration alone sets the limits.
    #[serde(default = "default_true")]
    pub send_limit: bool,
}

fn default_timeout_ms() -> u32 {
    100
}

fn default_true() -> bool {
    true
}

/// A descriptor entry taken from the verified request. The entry's name is the descriptor key sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryName {
    /// The tool name, exact (only in a `tools` rule).
    Tool,
    /// The prompt name, exact (only in a `prompts` rule).
    Prompt,
    /// The resource rule's URI pattern, not the URI: one bounded budget per rule, like its local bucket
    /// (only in a `resources` rule).
    Resource,
    /// The acting agent (SPIFFE ID).
    Agent,
    /// The token's subject (the user).
    Sub,
}

impl EntryName {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tool => "tool",
            Self::Prompt => "prompt",
            Self::Resource => "resource",
            Self::Agent => "agent",
            Self::Sub => "sub",
        }
    }

    /// The entry carrying the name of what a rule of `kind` governs.
    pub fn of_kind(kind: Kind) -> Self {
        match kind {
            Kind::Tool => Self::Tool,
            Kind::Prompt => Self::Prompt,
            Kind::Resource => Self::Resource,
        }
    }

    fn kind(self) -> Option<Kind> {
        match self {
            Self::Tool => Some(Kind::Tool),
            Self::Prompt => Some(Kind::Prompt),
            Self::Resource => Some(Kind::Resource),
            Self::Agent | Self::Sub => None,
        }
    }
}

/// `rate_limit.remote`: this rule's bucket is counted by the `rate_limit_service`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoteLimitSpec {
    /// The descriptor's entries, in order, each `(name, value from the verified request)`. Default: the
    /// rule's own kind (`tool`, `prompt` or `resource`, by section), then the rule's `key` (`agent` or `sub`;
    /// nothing more for `tool`). Must include the rule's key; the name entry must be the section's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<EntryName>>,
    /// Count the call in this Envoy's shared data first, with the rule's `limit`, `period_seconds` and
    /// `burst`: a call the local bucket refuses gets its 429 without reaching the service (a flooding agent
    /// costs the service nothing); one it admits is then counted by the service.
    #[serde(default)]
    pub local_first: bool,
}

/// The compiled service section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitService {
    pub cluster: String,
    pub domain: String,
    pub timeout_ms: u32,
    pub send_limit: bool,
}

/// A rule's compiled remote limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteLimit {
    pub entries: Vec<EntryName>,
    pub local_first: bool,
}

/// The gRPC method the host calls.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// The longest accepted `timeout_ms`.
pub const MAX_TIMEOUT_MS: u32 = 10_000;

/// Checks a rule's `rate_limit.remote` (at `at`, the pointer of a rule of `kind`) and compiles it.
pub fn compile_rule(
    kind: Kind,
    at: &str,
    spec: &RateLimitSpec,
) -> Result<Option<RemoteLimit>, PolicyError> {
    let Some(remote) = &spec.remote else {
        return Ok(None);
    };
    let own = EntryName::of_kind(kind);
    let entries = match &remote.entries {
        Some(entries) => entries.clone(),
        None => default_entries(own, spec.key),
    };
    if entries.is_empty() {
        return Err(PolicyError::invalid(
            format!("{at}/rate_limit/remote/entries"),
            "must name at least one entry",
        ));
    }
    for (i, e) in entries.iter().enumerate() {
        if entries.iter().take(i).any(|x| x == e) {
            return Err(PolicyError::invalid(
                format!("{at}/rate_limit/remote/entries/{i}"),
                format!("{:?} is listed twice", e.name()),
            ));
        }
        if e.kind().is_some_and(|k| k != kind) {
            return Err(PolicyError::invalid(
                format!("{at}/rate_limit/remote/entries/{i}"),
                format!(
                    "{:?} is the name of a {}, but this rule governs a {}: use {:?}",
                    e.name(),
                    e.name(),
                    kind.noun(),
                    own.name()
                ),
            ));
        }
    }
    // `key: tool` counts the rule as a whole: the tool or prompt name, the resource rule's pattern.
    let key_entry = match spec.key {
        LimitKey::Agent => EntryName::Agent,
        LimitKey::Sub => EntryName::Sub,
        LimitKey::Tool => own,
    };
    if !entries.contains(&key_entry) {
        return Err(PolicyError::invalid(
            format!("{at}/rate_limit/remote/entries"),
            format!(
                "must include the rule's key {:?}, or the service would count another bucket than the one the rule names",
                key_entry.name()
            ),
        ));
    }
    if !remote.local_first && spec.burst.is_some_and(|b| b != spec.limit) {
        return Err(PolicyError::invalid(
            format!("{at}/rate_limit/burst"),
            "a remote limit is counted in fixed windows, which know no burst (a window admits `limit` back to back): leave burst unset, or set remote.local_first so it applies to the local bucket",
        ));
    }
    Ok(Some(RemoteLimit {
        entries,
        local_first: remote.local_first,
    }))
}

fn default_entries(own: EntryName, key: LimitKey) -> Vec<EntryName> {
    match key {
        LimitKey::Agent => vec![own, EntryName::Agent],
        LimitKey::Sub => vec![own, EntryName::Sub],
        LimitKey::Tool => vec![own],
    }
}

/// Remote rules of a policy document, in `tools`, `prompts` and `resources`: `(pointer, spec)`.
fn remote_rules(spec: &PolicySpec) -> impl Iterator<Item = (String, &RateLimitSpec)> {
    let tools = spec
        .tools
        .iter()
        .map(|(name, rule)| ("tools", name, rule.rate_limit.as_ref()));
    let prompts = spec
        .prompts
        .iter()
        .flatten()
        .map(|(name, rule)| ("prompts", name, rule.rate_limit.as_ref()));
    let resources = spec
        .resources
        .iter()
        .flatten()
        .map(|(key, rule)| ("resources", key, rule.rate_limit.as_ref()));
    tools
        .chain(prompts)
        .chain(resources)
        .filter_map(|(section, name, rl)| {
            let rl = rl?;
            rl.remote.as_ref()?;
            Some((format!("/{section}/{}", escape(name)), rl))
        })
}

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Checks the `rate_limit_service` section against the rules that use it.
pub fn compile_service(spec: &PolicySpec) -> Result<Option<RateLimitService>, PolicyError> {
    let first_remote = remote_rules(spec).next().map(|(at, _)| at);
    let Some(service) = &spec.rate_limit_service else {
        return match first_remote {
            Some(at) => Err(PolicyError::invalid(
                "/rate_limit_service",
                format!("is required by the remote limit at {at}/rate_limit/remote"),
            )),
            None => Ok(None),
        };
    };
    if service.cluster.trim().is_empty() {
        return Err(PolicyError::invalid(
            "/rate_limit_service/cluster",
            "must not be empty",
        ));
    }
    if service.domain.trim().is_empty() {
        return Err(PolicyError::invalid(
            "/rate_limit_service/domain",
            "must not be empty",
        ));
    }
    if service.timeout_ms == 0 || service.timeout_ms > MAX_TIMEOUT_MS {
        return Err(PolicyError::invalid(
            "/rate_limit_service/timeout_ms",
            format!("must be between 1 and {MAX_TIMEOUT_MS}"),
        ));
    }
    if service.send_limit {
        for (at, rl) in remote_rules(spec) {
            if Unit::from_seconds(u64::from(rl.period_seconds)).is_none() {
                return Err(PolicyError::invalid(
                    format!("{at}/rate_limit/period_seconds"),
                    "a remote limit is sent per second, minute, hour or day: must be 1, 60, 3600 or 86400 (or set rate_limit_service.send_limit to false and configure the window in the service)",
                ));
            }
        }
    }
    Ok(Some(RateLimitService {
        cluster: service.cluster.clone(),
        domain: service.domain.clone(),
        timeout_ms: service.timeout_ms,
        send_limit: service.send_limit,
    }))
}

/// What `txngate policy validate` warns about (the policy is valid; these are the approximations an
/// operator must accept knowingly). Part of [`crate::policy::Policy::warnings`].
pub fn warnings(spec: &PolicySpec) -> Vec<PolicyWarning> {
    let mut out = Vec::new();
    let mut any = false;
    for (at, rl) in remote_rules(spec) {
        any = true;
        out.push(PolicyWarning {
            path: format!("{at}/rate_limit"),
            message: format!(
                "counted in the service's fixed windows of {} s: at most {} calls per window across all Envoys, but up to {} within {} s spanning two windows",
                rl.period_seconds,
                rl.limit,
                u64::from(rl.limit) * 2,
                rl.period_seconds
            ),
        });
        if rl.on_store_error == StoreErrorPolicy::Allow {
            out.push(PolicyWarning {
                path: format!("{at}/rate_limit/on_store_error"),
                message: "allow: while the rate limit service is slow or unreachable every call passes uncounted (counted only in txngate.ratelimit.remote_*)".to_string(),
            });
        }
    }
    match &spec.rate_limit_service {
        Some(s) if !any => out.push(PolicyWarning {
            path: "/rate_limit_service".to_string(),
            message: format!(
                "no rule has rate_limit.remote; the service {:?} is never called",
                s.cluster
            ),
        }),
        Some(s) if !s.send_limit => out.push(PolicyWarning {
            path: "/rate_limit_service/send_limit".to_string(),
            message: "false: the service's own configuration sets every remote limit; the policy's limit and period_seconds are only reported".to_string(),
        }),
        _ => {}
    }
    out
}

/// The verified identity a descriptor is built from.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// What the rule counts: the tool or prompt name, or the resource rule's pattern (the `tool`, `prompt`
    /// or `resource` entry; a compiled rule holds only the one of its own kind).
    pub name: &'a str,
    pub agent: &'a str,
    pub sub: &'a str,
}

impl RemoteLimit {
    /// The `ShouldRateLimit` request for one call: one descriptor, `hits_addend` 1.
    pub fn request(
        &self,
        service: &RateLimitService,
        rule: &LimitRule,
        who: Identity<'_>,
    ) -> RateLimitRequest {
        let entries = self
            .entries
            .iter()
            .map(|e| {
                let value = match e {
                    EntryName::Tool | EntryName::Prompt | EntryName::Resource => who.name,
                    EntryName::Agent => who.agent,
                    EntryName::Sub => who.sub,
                };
                (e.name().to_string(), value.to_string())
            })
            .collect();
        let limit = if service.send_limit {
            Unit::from_seconds(rule.period_seconds()).map(|unit| (rule.limit(), unit))
        } else {
            None
        };
        RateLimitRequest {
            domain: service.domain.clone(),
            descriptors: vec![Descriptor { entries, limit }],
            hits_addend: 1,
        }
    }
}

/// How a call to the service failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteFailure {
    /// No answer within `timeout_ms` (gRPC DEADLINE_EXCEEDED).
    Timeout,
    /// The call could not be made or the service could not be reached (gRPC UNAVAILABLE, an unknown
    /// cluster, no healthy host).
    Unreachable,
    /// The service answered with an error status, an UNKNOWN code or bytes that are not a response.
    Error,
}

impl RemoteFailure {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Timeout => "ratelimit.remote_timeout",
            Self::Unreachable => "ratelimit.remote_unreachable",
            Self::Error => "ratelimit.remote_error",
        }
    }
}

impl fmt::Display for RemoteFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Timeout => "timed out",
            Self::Unreachable => "is unreachable",
            Self::Error => "failed",
        })
    }
}

/// What came back from the host's gRPC call.
#[derive(Debug, Clone, Copy)]
pub enum Reply<'a> {
    /// gRPC status 0 and the response message.
    Message(&'a [u8]),
    /// A non-zero gRPC status (Envoy reports its own failures this way too: 4 on timeout, 14 when no
    /// connection could be made).
    Status { code: u32, message: &'a str },
    /// `dispatch_grpc_call` itself failed (for example an unknown cluster).
    DispatchFailed(&'a str),
}

/// gRPC status codes that matter here.
pub const GRPC_DEADLINE_EXCEEDED: u32 = 4;
pub const GRPC_UNAVAILABLE: u32 = 14;

fn failure(kind: RemoteFailure, detail: String) -> StoreError {
    StoreError::Remote { kind, detail }
}

/// The state of the rule's bucket after the service's answer, or why there is none.
pub fn interpret(rule: &LimitRule, reply: Reply<'_>) -> Result<LimitState, StoreError> {
    let bytes = match reply {
        Reply::Message(bytes) => bytes,
        Reply::Status { code, message } => {
            let kind = match code {
                GRPC_DEADLINE_EXCEEDED => RemoteFailure::Timeout,
                GRPC_UNAVAILABLE => RemoteFailure::Unreachable,
                _ => RemoteFailure::Error,
            };
            let message: String = message.chars().take(200).collect();
            return Err(failure(kind, format!("gRPC status {code}: {message}")));
        }
        Reply::DispatchFailed(why) => {
            return Err(failure(RemoteFailure::Unreachable, why.to_string()))
        }
    };
    let response = rls_wire::decode_response(bytes)
        .map_err(|e| failure(RemoteFailure::Error, format!("bad response: {e}")))?;
    let period_ms = rule.period_seconds().saturating_mul(1000);
    let base = LimitState {
        allowed: false,
        limit: rule.limit(),
        burst: rule.burst(),
        period_seconds: rule.period_seconds(),
        remaining: 0,
        retry_after_ms: 0,
        reset_ms: 0,
    };
    match response.overall_code {
        Code::Ok => {
            let limited = response
                .statuses
                .iter()
                .filter(|s| s.requests_per_unit.is_some());
            let remaining = limited.clone().map(|s| s.limit_remaining).min();
            let reset = limited.filter_map(|s| s.until_reset_ms).max();
            Ok(LimitState {
                allowed: true,
                remaining: remaining.unwrap_or(rule.limit().saturating_sub(1)),
                reset_ms: reset.unwrap_or(period_ms),
                ..base
            })
        }
        Code::OverLimit => {
            // The call passes again when every exhausted window has reset: the longest of theirs.
            let from_statuses = response
                .statuses
                .iter()
                .filter(|s| s.code == Some(Code::OverLimit))
                .filter_map(|s| s.until_reset_ms)
                .max();
            // Limitador reports its reset as a header.
            let from_headers = || {
                response
                    .headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("x-ratelimit-reset"))
                    .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                    .map(|s| s.saturating_mul(1000))
            };
            let wait = from_statuses
                .or_else(from_headers)
                .unwrap_or(period_ms)
                .min(period_ms.max(1000));
            Ok(LimitState {
                retry_after_ms: wait,
                reset_ms: wait,
                ..base
            })
        }
        Code::Unknown => Err(failure(
            RemoteFailure::Error,
            "the service answered UNKNOWN (no overall code)".to_string(),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::rls_wire::{encode_response, RateLimitResponse, Status};

    fn rule() -> LimitRule {
        LimitRule::new(5, 60, 5).unwrap()
    }

    fn answer(code: Code, statuses: Vec<Status>) -> Vec<u8> {
        encode_response(&RateLimitResponse {
            overall_code: code,
            statuses,
            headers: vec![],
        })
    }

    #[test]
    fn ok_reports_the_services_remaining() {
        let bytes = answer(
            Code::Ok,
            vec![Status {
                code: Some(Code::Ok),
                requests_per_unit: Some(5),
                limit_remaining: 2,
                until_reset_ms: Some(30_000),
            }],
        );
        let s = interpret(&rule(), Reply::Message(&bytes)).unwrap();
        assert!(s.allowed);
        assert_eq!((s.remaining, s.reset_ms), (2, 30_000));
    }

    #[test]
    fn over_limit_waits_for_the_reset() {
        let bytes = answer(
            Code::OverLimit,
            vec![Status {
                code: Some(Code::OverLimit),
                requests_per_unit: Some(5),
                limit_remaining: 0,
                until_reset_ms: Some(12_345),
            }],
        );
        let s = interpret(&rule(), Reply::Message(&bytes)).unwrap();
        assert!(!s.allowed);
        assert_eq!(s.retry_after_ms, 12_345);
        // No duration: the window's length bounds the wait.
        let bytes = answer(Code::OverLimit, vec![]);
        let s = interpret(&rule(), Reply::Message(&bytes)).unwrap();
        assert_eq!(s.retry_after_ms, 60_000);
        // A service claiming a longer wait than one window is capped at the window.
        let bytes = answer(
            Code::OverLimit,
            vec![Status {
                code: Some(Code::OverLimit),
                until_reset_ms: Some(10_000_000),
                ..Status::default()
            }],
        );
        let s = interpret(&rule(), Reply::Message(&bytes)).unwrap();
        assert_eq!(s.retry_after_ms, 60_000);
    }

    #[test]
    fn failures_name_their_kind() {
        let reason = |r: Reply<'_>| interpret(&rule(), r).unwrap_err().reason();
        assert_eq!(
            reason(Reply::Status {
                code: 4,
                message: "deadline"
            }),
            "ratelimit.remote_timeout"
        );
        assert_eq!(
            reason(Reply::Status {
                code: 14,
                message: "no healthy upstream"
            }),
            "ratelimit.remote_unreachable"
        );
        assert_eq!(
            reason(Reply::Status {
                code: 13,
                message: "internal"
            }),
            "ratelimit.remote_error"
        );
        assert_eq!(
            reason(Reply::DispatchFailed("BadArgument")),
            "ratelimit.remote_unreachable"
        );
        assert_eq!(reason(Reply::Message(&[0x0b])), "ratelimit.remote_error");
        let unknown = answer(Code::Unknown, vec![]);
        assert_eq!(reason(Reply::Message(&unknown)), "ratelimit.remote_error");
    }

    #[test]
    fn request_carries_the_identity_and_the_limit() {
        let service = RateLimitService {
            cluster: "rls".into(),
            domain: "txngate".into(),
            timeout_ms: 100,
            send_limit: true,
        };
        let remote = RemoteLimit {
            entries: vec![EntryName::Tool, EntryName::Sub, EntryName::Agent],
            local_first: false,
        };
        let who = Identity {
            name: "search_web",
            agent: "spiffe://a/agent",
            sub: "alice",
        };
        let req = remote.request(&service, &rule(), who);
        assert_eq!(req.domain, "txngate");
        assert_eq!(req.hits_addend, 1);
        assert_eq!(
            req.descriptors[0].entries,
            vec![
                ("tool".to_string(), "search_web".to_string()),
                ("sub".to_string(), "alice".to_string()),
                ("agent".to_string(), "spiffe://a/agent".to_string()),
            ]
        );
        assert_eq!(req.descriptors[0].limit, Some((5, Unit::Minute)));
        let quiet = RateLimitService {
            send_limit: false,
            ..service
        };
        assert_eq!(
            remote.request(&quiet, &rule(), who).descriptors[0].limit,
            None
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod policy_tests {
    use crate::policy::{Policy, PolicyError};
    use serde_json::{json, Value};

    fn policy(rate_limit: Value, service: Option<Value>) -> Value {
        let mut v = json!({
            "trust_domain": "trust.example",
            "issuers": [{"name": "tts", "jwks": {"keys": [{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"k1"}]}}],
            "tools": {"search_web": {"rate_limit": rate_limit}}
        });
        if let Some(s) = service {
            v["rate_limit_service"] = s;
        }
        v
    }

    fn load(v: &Value) -> Result<Policy, PolicyError> {
        Policy::from_json(&serde_json::to_vec(v).unwrap())
    }

    fn path_of(e: PolicyError) -> String {
        e.path().to_string()
    }

    fn service() -> Value {
        json!({"cluster": "ratelimit", "domain": "txngate"})
    }

    #[test]
    fn remote_rule_compiles_with_defaults() {
        let p = load(&policy(
            json!({"key": "sub", "limit": 5, "period_seconds": 60, "remote": {}}),
            Some(service()),
        ))
        .unwrap();
        let s = p.rate_limit_service.as_ref().unwrap();
        assert_eq!((s.timeout_ms, s.send_limit), (100, true));
        let remote = p.tool_rule("search_web").unwrap().limit.as_ref().unwrap();
        let remote = remote.remote.as_ref().unwrap();
        assert_eq!(
            remote.entries,
            vec![super::EntryName::Tool, super::EntryName::Sub]
        );
        assert!(!remote.local_first);
    }

    #[test]
    fn what_validate_refuses() {
        let remote = |extra: Value| {
            let mut rl = json!({"key": "agent", "limit": 5, "period_seconds": 60, "remote": {}});
            for (k, v) in extra.as_object().unwrap() {
                rl[k] = v.clone();
            }
            rl
        };
        let cases = [
            (policy(remote(json!({})), None), "/rate_limit_service"),
            (
                policy(remote(json!({"period_seconds": 10})), Some(service())),
                "/tools/search_web/rate_limit/period_seconds",
            ),
            (
                policy(remote(json!({"burst": 2})), Some(service())),
                "/tools/search_web/rate_limit/burst",
            ),
            (
                policy(
                    remote(json!({"remote": {"entries": ["tool", "sub"]}})),
                    Some(service()),
                ),
                "/tools/search_web/rate_limit/remote/entries",
            ),
            (
                policy(
                    remote(json!({"remote": {"entries": ["agent", "agent"]}})),
                    Some(service()),
                ),
                "/tools/search_web/rate_limit/remote/entries/1",
            ),
            (
                policy(
                    remote(json!({})),
                    Some(json!({"cluster": "", "domain": "d"})),
                ),
                "/rate_limit_service/cluster",
            ),
            (
                policy(
                    remote(json!({})),
                    Some(json!({"cluster": "c", "domain": "d", "timeout_ms": 0})),
                ),
                "/rate_limit_service/timeout_ms",
            ),
            (
                policy(
                    remote(json!({})),
                    Some(json!({"cluster": "c", "domain": "d", "extra": 1})),
                ),
                "/rate_limit_service/extra",
            ),
        ];
        for (doc, expected) in cases {
            assert_eq!(path_of(load(&doc).unwrap_err()), expected, "{doc}");
        }
        // Allowed: burst with local_first (it is the local bucket's), any period when the limit is not sent.
        load(&policy(
            remote(json!({"burst": 2, "remote": {"local_first": true}})),
            Some(service()),
        ))
        .unwrap();
        load(&policy(
            remote(json!({"period_seconds": 10})),
            Some(json!({"cluster": "c", "domain": "d", "send_limit": false})),
        ))
        .unwrap();
    }

    #[test]
    fn prompt_and_resource_rules_name_their_own_kind() {
        let doc = |entries: Option<Value>| {
            let mut remote = json!({});
            if let Some(e) = entries {
                remote["entries"] = e;
            }
            let mut v = policy(json!({"limit": 5, "period_seconds": 60}), Some(service()));
            let rl = json!({"key": "sub", "limit": 5, "period_seconds": 60, "remote": remote});
            v["prompts"] = json!({"code_review": {"rate_limit": rl.clone()}});
            v["resources"] = json!({"file:///docs/**": {"rate_limit": rl}});
            v
        };
        let p = load(&doc(None)).unwrap();
        let prompt = match p.prompts().unwrap().lookup("code_review") {
            crate::names::NameMatch::Rule(rule) => Some(rule),
            _ => None,
        }
        .unwrap();
        let remote = prompt.limit.as_ref().unwrap().remote.as_ref().unwrap();
        assert_eq!(
            remote.entries,
            vec![super::EntryName::Prompt, super::EntryName::Sub]
        );
        let resource = p.resources().unwrap().rules().next().unwrap();
        let remote = resource.limit.as_ref().unwrap().remote.as_ref().unwrap();
        assert_eq!(
            remote.entries,
            vec![super::EntryName::Resource, super::EntryName::Sub]
        );
        // Both sections are walked: warnings for each remote rule, and the service is needed by them.
        let w: Vec<String> = super::warnings(p.spec())
            .into_iter()
            .map(|w| w.path)
            .collect();
        assert!(
            w.contains(&"/prompts/code_review/rate_limit".to_string()),
            "{w:?}"
        );
        assert!(
            w.contains(&"/resources/file:~1~1~1docs~1**/rate_limit".to_string()),
            "{w:?}"
        );
        let mut no_service = doc(None);
        no_service
            .as_object_mut()
            .unwrap()
            .remove("rate_limit_service");
        assert!(load(&no_service)
            .unwrap_err()
            .to_string()
            .contains("/prompts/code_review/rate_limit/remote"));
        // A tool entry in a prompt rule is refused: the descriptor would carry the wrong key.
        let e = load(&doc(Some(json!(["tool", "sub"])))).unwrap_err();
        assert_eq!(e.path(), "/prompts/code_review/rate_limit/remote/entries/0");
        // key "tool" counts the rule as a whole: for a resource rule that is the `resource` entry.
        let mut whole = doc(None);
        whole["prompts"] = json!({});
        whole["resources"]["file:///docs/**"]["rate_limit"]["key"] = json!("tool");
        let p = load(&whole).unwrap();
        let resource = p.resources().unwrap().rules().next().unwrap();
        let remote = resource.limit.as_ref().unwrap().remote.as_ref().unwrap();
        assert_eq!(remote.entries, vec![super::EntryName::Resource]);
        whole["resources"]["file:///docs/**"]["rate_limit"]["remote"]["entries"] = json!(["sub"]);
        assert_eq!(
            load(&whole).unwrap_err().path(),
            "/resources/file:~1~1~1docs~1**/rate_limit/remote/entries"
        );
    }

    #[test]
    fn what_validate_warns_about() {
        let p = load(&policy(
            json!({"limit": 5, "period_seconds": 60, "on_store_error": "allow", "remote": {}}),
            Some(service()),
        ))
        .unwrap();
        let w = super::warnings(p.spec());
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].message.contains("up to 10 within 60 s"));
        assert_eq!(w[1].path, "/tools/search_web/rate_limit/on_store_error");
        let p = load(&policy(
            json!({"limit": 5, "period_seconds": 60}),
            Some(service()),
        ))
        .unwrap();
        assert!(super::warnings(p.spec())[0]
            .message
            .contains("never called"));
    }
}

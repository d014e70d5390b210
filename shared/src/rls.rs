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

use schemars::JsonSchema;
#[cfg(test)]
use serde::Deserialize;
use serde::Serialize;

use crate::mcp::Kind;
pub use crate::ratelimit::RemoteFailure;
use crate::ratelimit::{LimitRule, LimitState, StoreError};
use crate::rls_wire::{self, Code, Descriptor, RateLimitRequest, Unit};

/// The rate limit service of remote rules (Envoy: the filter calls it with `dispatch_grpc_call`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
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

pub(crate) fn default_timeout_ms() -> u32 {
    100
}

pub(crate) fn default_true() -> bool {
    true
}

/// A descriptor entry taken from the verified request. The entry's name is the descriptor key sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
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

    pub(crate) fn kind(self) -> Option<Kind> {
        match self {
            Self::Tool => Some(Kind::Tool),
            Self::Prompt => Some(Kind::Prompt),
            Self::Resource => Some(Kind::Resource),
            Self::Agent | Self::Sub => None,
        }
    }
}

/// `rate_limit.remote`: this rule's bucket is counted by the `rate_limit_service`.
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
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
/// What a host reports when it got an answer but could not read it (an error of the service's answer, not of
/// reaching it).
pub const GRPC_INTERNAL: u32 = 13;

/// The name of a gRPC status code, for the log line of a failed call (a host need not trust the status
/// message the service sent, which may be anything); `error` for a code without one here.
pub fn grpc_status_name(code: u32) -> &'static str {
    match code {
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        16 => "UNAUTHENTICATED",
        _ => "error",
    }
}

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

    #[test]
    fn an_unreadable_answer_is_an_error_of_the_service_and_codes_have_names() {
        let got = interpret(
            &rule(),
            Reply::Status {
                code: GRPC_INTERNAL,
                message: grpc_status_name(GRPC_INTERNAL),
            },
        );
        assert!(matches!(
            got,
            Err(StoreError::Remote { kind: RemoteFailure::Error, ref detail }) if detail == "gRPC status 13: INTERNAL"
        ));
        assert_eq!(
            grpc_status_name(GRPC_DEADLINE_EXCEEDED),
            "DEADLINE_EXCEEDED"
        );
        assert_eq!(grpc_status_name(GRPC_UNAVAILABLE), "UNAVAILABLE");
        assert_eq!(grpc_status_name(16), "UNAUTHENTICATED");
        assert_eq!(grpc_status_name(6), "error");
    }
}

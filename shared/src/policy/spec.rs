//! The policy's wire form: the types of the JSON document and the published JSON Schema.
//!
//! The document is read by hand (`super::read`), not through serde: the `#[serde(...)]` attributes are
//! here for the schema (schemars reads them: names, defaults, unknown fields refused) and for `Serialize`.
//! `Deserialize` is derived in tests only, where the reader is checked against it.

use std::collections::BTreeMap;

use schemars::JsonSchema;
#[cfg(test)]
use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;

use crate::keys::Algorithm;
use crate::rule::{Effect, LimitKey, Mode, StoreErrorPolicy};

/// txngate policy: how Transaction Tokens are validated and which agent may call which MCP tool.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// The trust domain: every accepted token's `aud` must be (or contain) this value.
    pub trust_domain: String,
    /// Who may sign Transaction Tokens. At least one.
    pub issuers: Vec<IssuerSpec>,
    /// Where the token is read from and the bounds it must respect.
    #[serde(default)]
    pub token: TokenSpec,
    /// Agents (SPIFFE IDs, `*` matches within one path segment, `**` across segments) and the most they may
    /// do. Every actor in a delegation chain must match an entry; an exact entry wins over a pattern.
    #[serde(default)]
    pub agents: BTreeMap<String, AgentSpec>,
    #[serde(default)]
    pub delegation: DelegationSpec,
    /// Whether the calling workload's proven identity must equal the acting agent: a mode (`"require"`,
    /// the mTLS peer as before) or `{"mode": ..., "source": "mtls" | "wimse" | "mtls_or_wimse"}`.
    #[serde(default)]
    pub peer_binding: PeerBindingField,
    /// WIMSE proofs of the calling workload (a Workload-Identity-Token and a Workload-Proof-Token per
    /// request): required when `peer_binding.source` is `wimse` or `mtls_or_wimse`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wimse: Option<crate::wimse::WimseSpec>,
    #[serde(default)]
    pub mcp: McpSpec,
    /// Rules per MCP tool name (`tools/call`), matched exactly and case-sensitively; `*` applies to tools
    /// without their own rule. A tool with no rule and no `*` is denied. A name outside the alphabet MCP
    /// recommends (`A-Z a-z 0-9 _ - .`) is refused unless a rule names it exactly, and a name that equals a
    /// rule only up to case or fullwidth forms is refused (never matched by `*`). `tools/list` results are
    /// filtered to the tools the caller may call.
    #[serde(default)]
    pub tools: BTreeMap<String, RuleSpec>,
    /// Rules per MCP prompt name (`prompts/get`), matched like `tools`; constraints point into the prompt's
    /// `arguments`. Absent: `prompts/get` passes for any caller whose token and delegation pass (audited, no
    /// per-name rule) and `prompts/list` is not filtered. Present (even `{}`): a prompt without a rule and
    /// without `*` is denied, and `prompts/list` results are filtered per caller. A `completion/complete`
    /// for a prompt (`ref/prompt`) needs the prompt's rule to allow the caller (effect and scopes; not
    /// constraints, nor the rate limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<BTreeMap<String, RuleSpec>>,
    /// Rules per MCP resource URI pattern (`resources/read`): a key without `*` is an exact URI; `*` matches
    /// any run of characters except `/`, `**` any run including `/`; the lone key `*` is the default rule.
    /// The exact rule wins, then the pattern with the most literal characters, ties broken by the pattern
    /// text. A URI with a `.` or `..` segment, a percent-encoded unreserved character, `/` or `\`, or an
    /// uppercase scheme or host matches only an exact rule (neither a pattern nor `*`). Absent:
    /// `resources/read` passes for any caller whose token and delegation pass and `resources/list` and
    /// `resources/templates/list` are not filtered. Present (even `{}`): a URI without a rule is denied and both lists are filtered per caller.
    /// The same rules decide `resources/subscribe`, `resources/unsubscribe`, each URI of a
    /// `subscriptions/listen` `resourceSubscriptions`, and a `completion/complete` for a resource
    /// (`ref/resource`; a URI template is matched as written) — by effect and scopes, without consuming the
    /// rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<BTreeMap<String, ResourceSpec>>,
    #[serde(default)]
    pub audit: AuditSpec,
    /// Bounds of the rate-limit store.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// The rate limit service (Envoy's RLS protocol) that counts rules with `rate_limit.remote` across a
    /// mesh. Required when a rule is remote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_service: Option<crate::rls::RateLimitServiceSpec>,
}

/// A Transaction Token Service whose signatures are trusted.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct IssuerSpec {
    /// A label for logs and metrics.
    pub name: String,
    /// The `iss` claim this issuer's tokens carry. RFC 8725 §3.8: a token with an `iss` is accepted only when
    /// the key that verified it belongs to an issuer entry declaring that same `iss`; an entry without `iss`
    /// verifies only tokens without an `iss` claim (401 `token.issuer` otherwise). `policy validate` warns
    /// about entries without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The public keys, inline as a JWK set. Exactly one of `jwks` and `jwks_uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<Value>,
    /// Where the host fetches the JWK set. Exactly one of `jwks` and `jwks_uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Envoy only: the cluster that serves `jwks_uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Seconds between periodic fetches of `jwks_uri`.
    #[serde(default = "defaults::refresh_seconds")]
    pub refresh_seconds: u32,
    /// How long the last good key set is used while fetches fail; past it, tokens are refused (503).
    #[serde(default = "defaults::max_stale_seconds")]
    pub max_stale_seconds: u32,
    /// At most one refetch per this many seconds when tokens name an unknown `kid`.
    #[serde(default = "defaults::min_refetch_seconds")]
    pub min_refetch_seconds: u32,
    /// The JWS algorithms this issuer may use. Each key is bound to one of them: its JWK `alg` when present
    /// (`EdDSA` or `Ed25519` for an Ed25519 key), else the one algorithm its type fits (an Ed25519 key without
    /// `alg` is bound to `EdDSA` when it is listed, else to `Ed25519`; an RSA key needs `alg` when both RS256
    /// and PS256 are listed). A token must name its key's algorithm exactly.
    #[serde(default = "defaults::algorithms")]
    pub algorithms: Vec<AlgorithmName>,
    /// The JOSE `typ` header values accepted from this issuer, compared case-insensitively and with or
    /// without the `application/` prefix (RFC 7515 §4.1.9). Default exactly `["txntoken+jwt"]` (the Transaction
    /// Tokens draft). List a legacy value such as `txn_token` only to accept a Transaction Token Service that
    /// still emits it; a refused value is 401 `token.typ`.
    #[serde(default = "defaults::typ")]
    pub typ: Vec<String>,
}

/// A supported JWS algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
pub enum AlgorithmName {
    /// Ed25519 under its polymorphic name (RFC 8037; deprecated by RFC 9864 in favour of `Ed25519`).
    EdDSA,
    /// Ed25519, fully specified (RFC 9864).
    Ed25519,
    /// ECDSA P-256 / SHA-256.
    ES256,
    /// ECDSA P-384 / SHA-384.
    ES384,
    RS256,
    PS256,
}

impl From<AlgorithmName> for Algorithm {
    fn from(a: AlgorithmName) -> Self {
        match a {
            AlgorithmName::EdDSA => Self::EdDSA,
            AlgorithmName::Ed25519 => Self::Ed25519,
            AlgorithmName::ES256 => Self::ES256,
            AlgorithmName::ES384 => Self::ES384,
            AlgorithmName::RS256 => Self::RS256,
            AlgorithmName::PS256 => Self::PS256,
        }
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// The request header carrying the token (exactly one occurrence).
    #[serde(default = "defaults::header")]
    pub header: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[serde(default = "defaults::leeway_seconds")]
    pub leeway_seconds: u32,
    /// Longest accepted `exp - iat`.
    #[serde(default = "defaults::max_lifetime_seconds")]
    pub max_lifetime_seconds: u32,
    /// Longest accepted token, checked before any decoding.
    #[serde(default = "defaults::max_bytes")]
    pub max_bytes: u32,
    /// Verified tokens kept so a transaction's later calls skip signature checks (0 disables).
    #[serde(default = "defaults::cache_entries")]
    pub cache_entries: u32,
}

impl Default for TokenSpec {
    fn default() -> Self {
        Self {
            header: defaults::header(),
            leeway_seconds: defaults::leeway_seconds(),
            max_lifetime_seconds: defaults::max_lifetime_seconds(),
            max_bytes: defaults::max_bytes(),
            cache_entries: defaults::cache_entries(),
        }
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// The most this agent may be granted, as scopes or `prefix*` patterns. A delegated call's scope is the
    /// token's scope narrowed by the `max_scopes` of every actor in the chain.
    pub max_scopes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct DelegationSpec {
    /// Deepest accepted `act` nesting (0 forbids delegation).
    #[serde(default = "defaults::max_depth")]
    pub max_depth: u32,
    /// What prior actors (the `act` entries inside the current actor's) mean for authorization.
    #[serde(default)]
    pub prior_actors: PriorActors,
}

impl Default for DelegationSpec {
    fn default() -> Self {
        Self {
            max_depth: defaults::max_depth(),
            prior_actors: PriorActors::default(),
        }
    }
}

/// `narrow`: every actor in the `act` chain must match an `agents` entry and the call gets the
/// token's scope narrowed by every actor's `max_scopes`: permissions only narrow along the chain, so no agent
/// can pass on more than it may do itself. Choose it when the chain is built by parties you trust to report it
/// (your own Transaction Token Service) and you want the chain-wide promise.
/// `informational` (the default, RFC 8693 §4.1: prior actors are informational only): only the current actor (the outermost
/// `act.sub`, or `req_wl` without `act`) must be a known agent and narrows the scope; prior actors are audited
/// and bound nothing. Choose it when tokens come from token services that follow RFC 8693 to the letter and
/// prior actors may be outside your policy (other trust domains, user agents you do not list). `max_depth`
/// applies in both. RFC 8693 §4.1 says a consumer "MUST only consider" the current actor: `narrow` departs from
/// it on the strict side only (it never allows what `informational` refuses); `informational` is that reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(rename_all = "snake_case")]
pub enum PriorActors {
    Narrow,
    #[default]
    Informational,
}

/// `off`: the peer identity is recorded only. `require`: the host must know the peer (mTLS SPIFFE ID) and it
/// must equal the acting agent. `when_present`: checked when the host knows the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(rename_all = "snake_case")]
pub enum PeerBinding {
    #[default]
    Off,
    Require,
    WhenPresent,
}

/// `peer_binding` as written: a mode alone (source: the mTLS peer), or the object form with a `source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum PeerBindingField {
    Mode(PeerBinding),
    Object(crate::wimse::PeerBindingSpec<PeerBinding>),
}

impl Default for PeerBindingField {
    fn default() -> Self {
        Self::Mode(PeerBinding::Off)
    }
}

impl PeerBindingField {
    pub fn mode(&self) -> PeerBinding {
        match self {
            Self::Mode(m) => *m,
            Self::Object(o) => o.mode,
        }
    }

    pub fn source(&self) -> crate::wimse::PeerSource {
        match self {
            Self::Mode(_) => crate::wimse::PeerSource::Mtls,
            Self::Object(o) => o.source,
        }
    }
}

// The serde form of the hand reader's `peer_binding` (super::read), kept for the tests that check the reader
// against serde. Read by hand so that a fault in the object form names its member (an untagged enum would
// only say that nothing matched).
#[cfg(test)]
impl<'de> Deserialize<'de> for PeerBindingField {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let value = Value::deserialize(deserializer)?;
        match value {
            Value::String(_) => PeerBinding::deserialize(value)
                .map(Self::Mode)
                .map_err(D::Error::custom),
            Value::Object(_) => serde_path_to_error::deserialize(value)
                .map(Self::Object)
                .map_err(|e| {
                    let at = e.path().to_string();
                    D::Error::custom(format!("at {at}: {}", e.into_inner()))
                }),
            _ => Err(D::Error::custom(
                "expected \"off\", \"require\", \"when_present\" or {\"mode\": ..., \"source\": \"mtls\" | \"wimse\" | \"mtls_or_wimse\"}",
            )),
        }
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct McpSpec {
    /// Requests whose path is this prefix (or below it) are MCP JSON-RPC requests.
    #[serde(default = "defaults::path_prefix")]
    pub path_prefix: String,
    /// Largest MCP request body; larger gets 413.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: u32,
    /// Deepest JSON nesting accepted in an MCP body.
    #[serde(default = "defaults::max_json_depth")]
    pub max_json_depth: u32,
    /// Protected-resource metadata URL (RFC 9728), advertised in 401 `WWW-Authenticate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_metadata: Option<String>,
}

impl Default for McpSpec {
    fn default() -> Self {
        Self {
            path_prefix: defaults::path_prefix(),
            max_body_bytes: defaults::max_body_bytes(),
            max_json_depth: defaults::max_json_depth(),
            resource_metadata: None,
        }
    }
}

/// A tool or prompt rule.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default)]
    pub effect: Effect,
    /// Scopes the caller's effective scope must include (each matched by a granted scope or pattern).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Argument checks: each argument (JSON pointer into `params.arguments` of the tool call or prompt
    /// request) must equal the claim (JSON pointer into the token claims), or be a member of it when the claim
    /// is an array.
    #[serde(default)]
    pub constraints: Vec<ConstraintSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// `dry_run` evaluates and audits the rule but lets the call through.
    #[serde(default)]
    pub mode: Mode,
}

/// A resource rule: a tool rule without constraints (`resources/read` has no arguments).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    #[serde(default)]
    pub effect: Effect,
    /// Scopes the caller's effective scope must include (each matched by a granted scope or pattern).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Rate-limit buckets count per rule pattern, not per URI (a bounded number of buckets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// `dry_run` evaluates and audits the rule but lets the call through.
    #[serde(default)]
    pub mode: Mode,
    /// Never valid: read only so that loading can refuse it with its path and a reason.
    #[serde(default, skip_serializing)]
    #[schemars(skip)]
    pub constraints: Option<Value>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct ConstraintSpec {
    /// JSON pointer into the tool call's `arguments`, e.g. `/to`.
    pub argument: String,
    /// JSON pointer into the token's claims, e.g. `/tctx/recipient`.
    pub claim: String,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// What one bucket counts: per acting agent, per token subject (user), or the tool (prompt, resource rule)
    /// as a whole.
    #[serde(default)]
    pub key: LimitKey,
    /// Calls allowed per `period_seconds` on average.
    pub limit: u32,
    pub period_seconds: u32,
    /// Calls allowed back to back from a full bucket (default: `limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// What happens when the limit store fails: `deny` (fail closed, 503) or `allow`. For a remote limit
    /// also a timeout, an error or an unreachable rate limit service.
    #[serde(default)]
    pub on_store_error: StoreErrorPolicy,
    /// Counted by the policy's `rate_limit_service` (one budget across every Envoy of a mesh) instead of
    /// this Envoy's shared data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<crate::rls::RemoteLimitSpec>,
}

#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct AuditSpec {
    /// How tool arguments appear in audit records.
    #[serde(default)]
    pub arguments: ArgumentsAudit,
}

/// `hash`: SHA-256 of the canonical JSON (keys sorted, no whitespace). `full`: the arguments themselves.
/// `none`: nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(rename_all = "snake_case")]
pub enum ArgumentsAudit {
    #[default]
    Hash,
    Full,
    None,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Most rate-limit buckets kept at once by a host with a bounded store (Envoy shared data). When all are
    /// live, new buckets are refused (fail closed) until old ones drain.
    #[serde(default = "defaults::max_keys")]
    pub max_keys: u32,
    /// When a rate-limited call carries the `RateLimit-Policy` and `RateLimit` response fields
    /// (draft-ietf-httpapi-ratelimit-headers): `always` (the default), or only on `refusals` (a 429, which
    /// also carries `Retry-After`), so that an allowed call's response is not touched (Envoy: no response
    /// header writes).
    #[serde(default)]
    pub headers: RateLimitHeaders,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        Self {
            max_keys: defaults::max_keys(),
            headers: RateLimitHeaders::default(),
        }
    }
}

/// See [`LimitsSpec::headers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(rename_all = "snake_case")]
pub enum RateLimitHeaders {
    #[default]
    Always,
    Refusals,
}

/// The defaults of optional fields: the reader's (super::read) and the schema's.
pub(super) mod defaults {
    use super::AlgorithmName;
    pub fn refresh_seconds() -> u32 {
        crate::keys::DEFAULT_REFRESH_SECONDS
    }
    pub fn max_stale_seconds() -> u32 {
        crate::keys::DEFAULT_MAX_STALE_SECONDS
    }
    pub fn min_refetch_seconds() -> u32 {
        crate::keys::DEFAULT_MIN_REFETCH_SECONDS
    }
    pub fn algorithms() -> Vec<AlgorithmName> {
        vec![
            AlgorithmName::EdDSA,
            AlgorithmName::Ed25519,
            AlgorithmName::ES256,
            AlgorithmName::ES384,
            AlgorithmName::RS256,
            AlgorithmName::PS256,
        ]
    }
    pub fn typ() -> Vec<String> {
        vec![crate::keys::TXN_TOKEN_TYP.to_string()]
    }
    pub fn header() -> String {
        "txn-token".into()
    }
    pub fn leeway_seconds() -> u32 {
        30
    }
    pub fn max_lifetime_seconds() -> u32 {
        300
    }
    pub fn max_bytes() -> u32 {
        8192
    }
    pub fn cache_entries() -> u32 {
        1024
    }
    pub fn max_depth() -> u32 {
        4
    }
    pub fn path_prefix() -> String {
        "/mcp".into()
    }
    pub fn max_body_bytes() -> u32 {
        65536
    }
    pub fn max_json_depth() -> u32 {
        32
    }
    pub fn max_keys() -> u32 {
        65536
    }
}

/// The policy's JSON Schema (draft 2020-12), generated from `PolicySpec`.
pub fn json_schema() -> Value {
    let schema = schemars::schema_for!(PolicySpec);
    schema.to_value()
}

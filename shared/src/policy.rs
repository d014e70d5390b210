//! The policy: one JSON document used verbatim by every host (Envoy plugin configuration, Worker variable,
//! CLI `--policy`). `PolicySpec` is its wire form and the source of the published JSON Schema; `Policy` is the
//! compiled form the request path reads. Every fault is reported at load with the JSON pointer of the bad
//! field, so a bad policy never reaches traffic.

use core::fmt;
use std::collections::{BTreeMap, HashMap};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::authorization::Kind;
use crate::delegation::AgentPattern;
use crate::json::{escape_pointer_token, parse_strict, JsonError};
use crate::keys::{Algorithm, KeyError, KeyRing, KeySet, KeySource, Strictness};
use crate::names::{self, NameMatch, NamedRules};
use crate::ratelimit::LimitRule;
use crate::resource::ResourceRules;
use crate::scope::{ScopePattern, ScopeSet};

/// A policy that cannot be loaded; `path` is the JSON pointer of the offending field ("" for the document).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyError {
    /// Not JSON, a duplicate key, or nested too deep.
    Json(JsonError),
    /// A field with the wrong type, an unknown field or an unknown enum value.
    Shape { path: String, message: String },
    /// A well-typed value that is not acceptable.
    Invalid { path: String, message: String },
    /// A key in an inline JWKS is weak or malformed.
    Key { path: String, source: KeyError },
}

impl PolicyError {
    /// The JSON pointer of the fault.
    pub fn path(&self) -> &str {
        match self {
            Self::Json(JsonError::DuplicateKey { path, .. }) => path,
            Self::Json(_) => "",
            Self::Shape { path, .. } | Self::Invalid { path, .. } | Self::Key { path, .. } => path,
        }
    }

    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = |p: &str| {
            if p.is_empty() {
                "/".to_string()
            } else {
                p.to_string()
            }
        };
        match self {
            Self::Json(e) => write!(f, "policy: {e}"),
            Self::Shape { path, message } | Self::Invalid { path, message } => {
                write!(f, "policy: at {}: {message}", at(path))
            }
            Self::Key { path, source } => write!(f, "policy: at {}: {source}", at(path)),
        }
    }
}

impl std::error::Error for PolicyError {}

/// Something a policy may say but probably should not: the policy loads, and `txngate policy validate` prints
/// the warning (exit 0). `path` is the JSON pointer of the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyWarning {
    pub path: String,
    pub message: String,
}

impl fmt::Display for PolicyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "policy: at {path}: {}", self.message)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Wire form
// ---------------------------------------------------------------------------------------------------------

/// txngate policy: how Transaction Tokens are validated and which agent may call which MCP tool.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
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
    /// Whether the calling workload's mTLS identity must equal the acting agent.
    #[serde(default)]
    pub peer_binding: PeerBinding,
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
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
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

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// The most this agent may be granted, as scopes or `prefix*` patterns. A delegated call's scope is the
    /// token's scope narrowed by the `max_scopes` of every actor in the chain.
    pub max_scopes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PriorActors {
    Narrow,
    #[default]
    Informational,
}

/// `off`: the peer identity is recorded only. `require`: the host must know the peer (mTLS SPIFFE ID) and it
/// must equal the acting agent. `when_present`: checked when the host knows the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PeerBinding {
    #[default]
    Off,
    Require,
    WhenPresent,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    DryRun,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConstraintSpec {
    /// JSON pointer into the tool call's `arguments`, e.g. `/to`.
    pub argument: String,
    /// JSON pointer into the token's claims, e.g. `/tctx/recipient`.
    pub claim: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitKey {
    #[default]
    Agent,
    Sub,
    Tool,
}

impl LimitKey {
    pub fn name(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Sub => "sub",
            Self::Tool => "tool",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StoreErrorPolicy {
    #[default]
    Deny,
    Allow,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditSpec {
    /// How tool arguments appear in audit records.
    #[serde(default)]
    pub arguments: ArgumentsAudit,
}

/// `hash`: SHA-256 of the canonical JSON (keys sorted, no whitespace). `full`: the arguments themselves.
/// `none`: nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ArgumentsAudit {
    #[default]
    Hash,
    Full,
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Most rate-limit buckets kept at once by a host with a bounded store (Envoy shared data). When all are
    /// live, new buckets are refused (fail closed) until old ones drain.
    #[serde(default = "defaults::max_keys")]
    pub max_keys: u32,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        Self {
            max_keys: defaults::max_keys(),
        }
    }
}

mod defaults {
    use super::AlgorithmName;
    pub fn refresh_seconds() -> u32 {
        300
    }
    pub fn max_stale_seconds() -> u32 {
        3600
    }
    pub fn min_refetch_seconds() -> u32 {
        30
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

// ---------------------------------------------------------------------------------------------------------
// Compiled form
// ---------------------------------------------------------------------------------------------------------

/// An argument check of a tool or prompt rule.
#[derive(Debug, Clone)]
pub struct Constraint {
    pub argument: String,
    pub claim: String,
}

/// A rate limit attached to a rule.
#[derive(Debug, Clone)]
pub struct RuleLimit {
    pub key: LimitKey,
    pub rule: LimitRule,
    pub on_store_error: StoreErrorPolicy,
    /// Counted by the rate limit service ([`crate::rls`]).
    pub remote: Option<crate::rls::RemoteLimit>,
}

/// One compiled tool, prompt or resource rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule's key in the policy (`send_email`, `file:///docs/**`, or `*`).
    pub name: String,
    pub effect: Effect,
    pub scopes: Vec<String>,
    /// Always empty for resource rules.
    pub constraints: Vec<Constraint>,
    pub limit: Option<RuleLimit>,
    pub mode: Mode,
}

#[cfg(test)]
impl Rule {
    /// A plain allowing rule under `name`, for the unit tests of the rule tables.
    pub(crate) fn allowing(name: &str) -> Self {
        Self {
            name: name.into(),
            effect: Effect::Allow,
            scopes: Vec::new(),
            constraints: Vec::new(),
            limit: None,
            mode: Mode::Enforce,
        }
    }
}

/// Agent ceilings: exact IDs in a map, patterns in specificity order.
#[derive(Debug, Clone, Default)]
pub struct Agents {
    exact: HashMap<String, ScopeSet>,
    patterns: Vec<(AgentPattern, ScopeSet)>,
    /// Pattern positions (ascending) by their literal lead cut after its last `/`: an ID can only match
    /// patterns filed under one of its own `/`-ended prefixes (or ""), so a lookup costs the number of
    /// segments in the ID, not the number of patterns in the policy.
    by_lead: HashMap<String, Vec<usize>>,
}

/// Up to this many patterns a scan is cheaper than hashing each prefix of the ID.
const PATTERN_SCAN_MAX: usize = 8;

impl Agents {
    /// The ceiling for `agent`: its exact entry, else the most specific matching pattern.
    pub fn ceiling(&self, agent: &str) -> Option<&ScopeSet> {
        if let Some(set) = self.exact.get(agent) {
            return Some(set);
        }
        if self.patterns.len() <= PATTERN_SCAN_MAX {
            return self
                .patterns
                .iter()
                .find(|(p, _)| p.matches(agent))
                .map(|(_, s)| s);
        }
        // The first matching pattern in specificity order, among the candidates of every prefix.
        let mut best: Option<usize> = None;
        let ends = std::iter::once(0).chain(agent.match_indices('/').map(|(i, _)| i + 1));
        for end in ends {
            let Some(candidates) = agent.get(..end).and_then(|lead| self.by_lead.get(lead)) else {
                continue;
            };
            let found = candidates
                .iter()
                .take_while(|i| best.is_none_or(|b| **i < b))
                .find(|i| {
                    self.patterns
                        .get(**i)
                        .is_some_and(|(p, _)| p.matches(agent))
                });
            if let Some(i) = found {
                best = Some(*i);
            }
        }
        best.and_then(|i| self.patterns.get(i)).map(|(_, s)| s)
    }

    /// Files every pattern under its literal lead cut after the last `/` (call after sorting).
    fn index(&mut self) {
        self.by_lead.clear();
        for (i, (pattern, _)) in self.patterns.iter().enumerate() {
            let lead = pattern.literal_lead();
            let key = lead.rfind('/').and_then(|at| lead.get(..=at)).unwrap_or("");
            self.by_lead.entry(key.to_string()).or_default().push(i);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.patterns.is_empty()
    }
}

/// Token bounds in the units the request path uses.
#[derive(Debug, Clone)]
pub struct TokenRules {
    pub header: String,
    pub leeway_ms: i128,
    pub max_lifetime_s: i128,
    pub max_bytes: usize,
    pub cache_entries: usize,
}

/// MCP settings in the units the request path uses.
#[derive(Debug, Clone)]
pub struct McpRules {
    pub path_prefix: String,
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub resource_metadata: Option<String>,
}

/// The compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub trust_domain: String,
    pub token: TokenRules,
    pub agents: Agents,
    pub max_delegation_depth: usize,
    pub peer_binding: PeerBinding,
    pub mcp: McpRules,
    tools: NamedRules,
    /// None when the policy has no `prompts` section (prompts/get is not authorized per name).
    prompts: Option<NamedRules>,
    /// None when the policy has no `resources` section (resources/read is not authorized per URI).
    resources: Option<ResourceRules>,
    pub arguments_audit: ArgumentsAudit,
    pub max_limit_keys: u32,
    /// Issuers with their inline keys; the Gate's key ring starts from this.
    pub key_ring: KeyRing,
    /// Where remote rules are counted ([`crate::rls`]).
    pub rate_limit_service: Option<crate::rls::RateLimitService>,
    spec: PolicySpec,
}

impl Policy {
    /// Reads and compiles a policy document.
    pub fn from_json(bytes: &[u8]) -> Result<Self, PolicyError> {
        let doc = parse_strict(bytes, 64).map_err(PolicyError::Json)?;
        let spec: PolicySpec = serde_path_to_error::deserialize(&doc).map_err(|err| {
            let path = pointer_from_path(err.path());
            PolicyError::Shape {
                path,
                message: err.into_inner().to_string(),
            }
        })?;
        Self::compile(spec)
    }

    /// The tool rules.
    pub fn tools(&self) -> &NamedRules {
        &self.tools
    }

    /// The prompt rules, if the policy has a `prompts` section.
    pub fn prompts(&self) -> Option<&NamedRules> {
        self.prompts.as_ref()
    }

    /// The resource rules, if the policy has a `resources` section.
    pub fn resources(&self) -> Option<&ResourceRules> {
        self.resources.as_ref()
    }

    /// The rule a tool call falls under: its exact rule, else `*` (unless the name is a variant of a rule
    /// or outside the recommended alphabet), else none (denied).
    pub fn tool_rule(&self, tool: &str) -> Option<&Rule> {
        match self.tools.lookup(tool) {
            NameMatch::Rule(rule) => Some(rule),
            NameMatch::Variant { .. } | NameMatch::Alphabet | NameMatch::NoRule => None,
        }
    }

    /// Whether any rule has a rate limit (hosts with a remote limiter only call it for these).
    pub fn has_rate_limits(&self) -> bool {
        let named = |rules: &NamedRules| rules.rules().any(|r| r.limit.is_some());
        named(&self.tools)
            || self.prompts.as_ref().is_some_and(named)
            || self
                .resources
                .as_ref()
                .is_some_and(|r| r.rules().any(|r| r.limit.is_some()))
    }

    /// The document this policy was compiled from.
    pub fn spec(&self) -> &PolicySpec {
        &self.spec
    }

    pub fn compile(spec: PolicySpec) -> Result<Self, PolicyError> {
        if spec.trust_domain.trim().is_empty() {
            return Err(PolicyError::invalid("/trust_domain", "must not be empty"));
        }
        let key_ring = compile_issuers(&spec.issuers)?;
        let token = compile_token(&spec.token)?;
        let agents = compile_agents(&spec.agents)?;
        let mcp = compile_mcp(&spec.mcp)?;
        let tools = compile_named(Kind::Tool, &spec.tools)?;
        let prompts = spec
            .prompts
            .as_ref()
            .map(|p| compile_named(Kind::Prompt, p))
            .transpose()?;
        let resources = spec.resources.as_ref().map(compile_resources).transpose()?;
        if spec.limits.max_keys == 0 {
            return Err(PolicyError::invalid(
                "/limits/max_keys",
                "must be at least 1",
            ));
        }
        let rate_limit_service = crate::rls::compile_service(&spec)?;
        Ok(Self {
            trust_domain: spec.trust_domain.clone(),
            token,
            agents,
            max_delegation_depth: usize::try_from(spec.delegation.max_depth).unwrap_or(usize::MAX),
            peer_binding: spec.peer_binding,
            mcp,
            tools,
            prompts,
            resources,
            arguments_audit: spec.audit.arguments,
            max_limit_keys: spec.limits.max_keys,
            key_ring,
            rate_limit_service,
            spec,
        })
    }
}

fn pointer_from_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => {
                out.push('/');
                out.push_str(&index.to_string());
            }
            Segment::Map { key } => {
                out.push('/');
                out.push_str(&escape_pointer_token(key));
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    out
}

fn to_usize(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn compile_issuers(issuers: &[IssuerSpec]) -> Result<KeyRing, PolicyError> {
    if issuers.is_empty() {
        return Err(PolicyError::invalid(
            "/issuers",
            "at least one issuer is required",
        ));
    }
    let mut ring = KeyRing::new();
    for (i, issuer) in issuers.iter().enumerate() {
        let at = |field: &str| format!("/issuers/{i}/{field}");
        if issuer.name.trim().is_empty() {
            return Err(PolicyError::invalid(at("name"), "must not be empty"));
        }
        if issuers
            .iter()
            .take(i)
            .any(|other| other.name == issuer.name)
        {
            return Err(PolicyError::invalid(
                at("name"),
                format!("issuer name {:?} is used twice", issuer.name),
            ));
        }
        if issuer.algorithms.is_empty() {
            return Err(PolicyError::invalid(
                at("algorithms"),
                "at least one algorithm is required",
            ));
        }
        let algorithms: Vec<Algorithm> = issuer
            .algorithms
            .iter()
            .map(|a| Algorithm::from(*a))
            .collect();
        if issuer.typ.is_empty() {
            return Err(PolicyError::invalid(
                at("typ"),
                "at least one typ is required (default [\"txntoken+jwt\"])",
            ));
        }
        for (j, typ) in issuer.typ.iter().enumerate() {
            let bare = typ
                .get(..12)
                .filter(|p| p.eq_ignore_ascii_case("application/"))
                .map_or(typ.as_str(), |_| typ.get(12..).unwrap_or(""));
            if bare.is_empty() || !bare.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
                return Err(PolicyError::invalid(
                    format!("/issuers/{i}/typ/{j}"),
                    "must be a media type name such as txntoken+jwt (printable ASCII, no spaces or parameters)",
                ));
            }
        }
        let (source, inline) = match (&issuer.jwks, &issuer.jwks_uri) {
            (Some(jwks), None) => {
                let (set, _) = KeySet::from_value(jwks, &algorithms, Strictness::Inline).map_err(
                    |source| {
                        let path = match &source {
                            KeyError::NotAKeySet
                            | KeyError::Json(_)
                            | KeyError::EmptySet
                            | KeyError::DuplicateKid { .. } => at("jwks"),
                            KeyError::NotAnObject { index }
                            | KeyError::MissingMember { index, .. }
                            | KeyError::WrongType { index, .. }
                            | KeyError::BadBase64 { index, .. }
                            | KeyError::UnsupportedKeyType { index, .. }
                            | KeyError::UnsupportedAlgorithm { index, .. }
                            | KeyError::AlgorithmNotAllowed { index, .. }
                            | KeyError::AmbiguousAlgorithm { index }
                            | KeyError::NotForSignatures { index }
                            | KeyError::PrivateMaterial { index, .. }
                            | KeyError::WeakRsa { index, .. }
                            | KeyError::RsaTooLarge { index, .. }
                            | KeyError::BadRsaExponent { index }
                            | KeyError::InvalidPoint { index }
                            | KeyError::SmallOrder { index }
                            | KeyError::MissingKid { index } => {
                                format!("/issuers/{i}/jwks/keys/{index}")
                            }
                        };
                        PolicyError::Key { path, source }
                    },
                )?;
                if set.is_empty() {
                    return Err(PolicyError::invalid(
                        at("jwks/keys"),
                        "at least one key is required",
                    ));
                }
                (KeySource::Inline, Some(set))
            }
            (None, Some(uri)) => {
                if !(uri.starts_with("https://") || uri.starts_with("http://")) {
                    return Err(PolicyError::invalid(
                        at("jwks_uri"),
                        "must be an http(s) URL",
                    ));
                }
                if issuer.refresh_seconds == 0 {
                    return Err(PolicyError::invalid(
                        at("refresh_seconds"),
                        "must be at least 1",
                    ));
                }
                if issuer.max_stale_seconds < issuer.refresh_seconds {
                    return Err(PolicyError::invalid(
                        at("max_stale_seconds"),
                        "must be at least refresh_seconds",
                    ));
                }
                let source = KeySource::Remote {
                    uri: uri.clone(),
                    cluster: issuer.cluster.clone(),
                    refresh_ms: u64::from(issuer.refresh_seconds) * 1000,
                    max_stale_ms: u64::from(issuer.max_stale_seconds) * 1000,
                    min_refetch_ms: u64::from(issuer.min_refetch_seconds) * 1000,
                };
                (source, None)
            }
            (Some(_), Some(_)) => {
                return Err(PolicyError::invalid(
                    at("jwks_uri"),
                    "give either jwks or jwks_uri, not both",
                ))
            }
            (None, None) => {
                return Err(PolicyError::invalid(
                    format!("/issuers/{i}"),
                    "one of jwks or jwks_uri is required",
                ))
            }
        };
        if issuer.iss.as_deref().is_some_and(|iss| iss.is_empty()) {
            return Err(PolicyError::invalid(at("iss"), "must not be empty"));
        }
        ring.add_issuer_with_types(
            issuer.name.clone(),
            issuer.iss.clone(),
            algorithms,
            issuer.typ.clone(),
            source,
            inline,
        );
    }
    // A kid must select one key across all inline sets.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, issuer) in ring.issuers().iter().enumerate() {
        for key in issuer.key_set().map(|s| s.keys()).unwrap_or_default() {
            if let Some(kid) = key.kid() {
                if let Some(first) = seen.insert(kid.to_string(), i) {
                    let other = ring.issuer(first).map_or("", |x| x.name.as_str());
                    return Err(PolicyError::invalid(
                        format!("/issuers/{i}/jwks"),
                        format!("kid {kid:?} is also used by issuer {other:?}"),
                    ));
                }
            }
        }
    }
    Ok(ring)
}

impl Policy {
    /// Warnings about the document this policy was compiled from (see [`PolicyWarning`]).
    pub fn warnings(&self) -> Vec<PolicyWarning> {
        let mut out = issuer_warnings(&self.spec.issuers);
        if self.spec.mcp.resource_metadata.is_some() {
            out.push(PolicyWarning {
                path: "/mcp/resource_metadata".into(),
                message: "no longer advertised: Txn-Token refusals use the Txn-Token challenge \
                          (a Bearer resource_metadata challenge would start OAuth discovery for a token \
                          txngate never reads); remove the field"
                    .into(),
            });
        }
        out.extend(crate::rls::warnings(&self.spec));
        out
    }
}

fn issuer_warnings(issuers: &[IssuerSpec]) -> Vec<PolicyWarning> {
    let mut out = Vec::new();
    for (i, issuer) in issuers.iter().enumerate() {
        if issuer.iss.is_none() {
            out.push(PolicyWarning {
                path: format!("/issuers/{i}"),
                message: format!(
                    "issuer {:?} has no iss: its keys verify only tokens without an iss claim, and a \
                     token with one is refused (RFC 8725 section 3.8); set iss to the value its tokens carry",
                    issuer.name
                ),
            });
        }
        for (j, typ) in issuer.typ.iter().enumerate() {
            if !crate::keys::same_media_type(typ, crate::keys::TXN_TOKEN_TYP) {
                out.push(PolicyWarning {
                    path: format!("/issuers/{i}/typ/{j}"),
                    message: format!(
                        "issuer {:?} accepts typ {typ:?} besides txntoken+jwt: keep it only while its \
                         Transaction Token Service still emits it (RFC 8725 section 3.11)",
                        issuer.name
                    ),
                });
            }
        }
    }
    out
}

fn compile_token(spec: &TokenSpec) -> Result<TokenRules, PolicyError> {
    let header = spec.header.to_ascii_lowercase();
    if header.is_empty()
        || !header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(PolicyError::invalid(
            "/token/header",
            "must be an HTTP header name",
        ));
    }
    if header == "authorization" {
        return Err(PolicyError::invalid(
            "/token/header",
            "a Transaction Token is never carried in Authorization",
        ));
    }
    if spec.max_lifetime_seconds == 0 {
        return Err(PolicyError::invalid(
            "/token/max_lifetime_seconds",
            "must be at least 1",
        ));
    }
    if spec.max_bytes < 64 {
        return Err(PolicyError::invalid(
            "/token/max_bytes",
            "must be at least 64",
        ));
    }
    Ok(TokenRules {
        header,
        leeway_ms: i128::from(spec.leeway_seconds) * 1000,
        max_lifetime_s: i128::from(spec.max_lifetime_seconds),
        max_bytes: to_usize(spec.max_bytes),
        cache_entries: to_usize(spec.cache_entries),
    })
}

fn compile_agents(agents: &BTreeMap<String, AgentSpec>) -> Result<Agents, PolicyError> {
    let mut out = Agents::default();
    for (id, spec) in agents {
        let at = format!("/agents/{}", escape_pointer_token(id));
        let mut patterns = Vec::with_capacity(spec.max_scopes.len());
        for (j, scope) in spec.max_scopes.iter().enumerate() {
            let p = ScopePattern::parse(scope)
                .map_err(|e| PolicyError::invalid(format!("{at}/max_scopes/{j}"), e.to_string()))?;
            patterns.push(p);
        }
        let ceiling = ScopeSet::from_patterns(patterns);
        if id.contains('*') {
            let pattern =
                AgentPattern::parse(id).map_err(|m| PolicyError::invalid(at.clone(), m))?;
            out.patterns.push((pattern, ceiling));
        } else {
            if id.is_empty() {
                return Err(PolicyError::invalid(at, "agent ID must not be empty"));
            }
            out.exact.insert(id.clone(), ceiling);
        }
    }
    out.patterns.sort_by(|(a, _), (b, _)| {
        b.specificity()
            .cmp(&a.specificity())
            .then_with(|| a.source().cmp(b.source()))
    });
    out.index();
    Ok(out)
}

fn compile_mcp(spec: &McpSpec) -> Result<McpRules, PolicyError> {
    if !spec.path_prefix.starts_with('/') {
        return Err(PolicyError::invalid(
            "/mcp/path_prefix",
            "must start with '/'",
        ));
    }
    if spec.max_body_bytes == 0 {
        return Err(PolicyError::invalid(
            "/mcp/max_body_bytes",
            "must be at least 1",
        ));
    }
    if !(2..=128).contains(&spec.max_json_depth) {
        return Err(PolicyError::invalid(
            "/mcp/max_json_depth",
            "must be between 2 and 128",
        ));
    }
    if let Some(url) = &spec.resource_metadata {
        if url.contains('"') || url.contains('\\') || !url.starts_with("http") {
            return Err(PolicyError::invalid(
                "/mcp/resource_metadata",
                "must be an http(s) URL without quotes",
            ));
        }
    }
    let prefix = spec.path_prefix.trim_end_matches('/');
    Ok(McpRules {
        path_prefix: if prefix.is_empty() {
            "/".into()
        } else {
            prefix.to_string()
        },
        max_body_bytes: to_usize(spec.max_body_bytes),
        max_json_depth: to_usize(spec.max_json_depth),
        resource_metadata: spec.resource_metadata.clone(),
    })
}

/// Compiles a `tools` or `prompts` section.
fn compile_named(
    kind: Kind,
    rules: &BTreeMap<String, RuleSpec>,
) -> Result<NamedRules, PolicyError> {
    let mut out = NamedRules::default();
    for (name, spec) in rules {
        // The section is the kind's plural: `tools`, `prompts`.
        let at = format!("/{}s/{}", kind.noun(), escape_pointer_token(name));
        if name != "*" {
            names::check_rule_key(name).map_err(|m| PolicyError::invalid(at.clone(), m))?;
        }
        let limit = compile_limit(kind, spec.rate_limit.as_ref(), &at)?;
        let rule = compile_rule(
            name,
            spec.effect,
            &spec.scopes,
            &spec.constraints,
            limit,
            spec.mode,
            &at,
        )?;
        out.insert(rule).map_err(|other| {
            PolicyError::invalid(
                at,
                format!("differs from the rule {other:?} only by case or fullwidth forms"),
            )
        })?;
    }
    Ok(out)
}

fn compile_resources(rules: &BTreeMap<String, ResourceSpec>) -> Result<ResourceRules, PolicyError> {
    let mut out = ResourceRules::default();
    for (key, spec) in rules {
        let at = format!("/resources/{}", escape_pointer_token(key));
        if spec.constraints.is_some() {
            return Err(PolicyError::invalid(
                format!("{at}/constraints"),
                "resource rules take no constraints: resources/read has no arguments",
            ));
        }
        let limit = compile_limit(Kind::Resource, spec.rate_limit.as_ref(), &at)?;
        let rule = compile_rule(key, spec.effect, &spec.scopes, &[], limit, spec.mode, &at)?;
        out.insert(rule)
            .map_err(|e| PolicyError::invalid(at, e.to_string()))?;
    }
    Ok(out)
}

fn compile_limit(
    kind: Kind,
    spec: Option<&RateLimitSpec>,
    at: &str,
) -> Result<Option<RuleLimit>, PolicyError> {
    let Some(rl) = spec else {
        return Ok(None);
    };
    let burst = rl.burst.unwrap_or(rl.limit);
    let rule = LimitRule::new(rl.limit, rl.period_seconds, burst)
        .map_err(|(field, m)| PolicyError::invalid(format!("{at}/rate_limit/{field}"), m))?;
    Ok(Some(RuleLimit {
        key: rl.key,
        rule,
        on_store_error: rl.on_store_error,
        remote: crate::rls::compile_rule(kind, at, rl)?,
    }))
}

fn compile_rule(
    name: &str,
    effect: Effect,
    scopes: &[String],
    constraints: &[ConstraintSpec],
    limit: Option<RuleLimit>,
    mode: Mode,
    at: &str,
) -> Result<Rule, PolicyError> {
    for (j, scope) in scopes.iter().enumerate() {
        match ScopePattern::parse(scope) {
            Ok(ScopePattern::Exact(_)) => {}
            Ok(ScopePattern::Prefix(_)) => {
                return Err(PolicyError::invalid(
                    format!("{at}/scopes/{j}"),
                    "required scopes are exact names, not patterns",
                ))
            }
            Err(e) => {
                return Err(PolicyError::invalid(
                    format!("{at}/scopes/{j}"),
                    e.to_string(),
                ))
            }
        }
    }
    let mut compiled = Vec::with_capacity(constraints.len());
    for (j, c) in constraints.iter().enumerate() {
        for (field, pointer) in [("argument", &c.argument), ("claim", &c.claim)] {
            if !is_json_pointer(pointer) || pointer.is_empty() {
                return Err(PolicyError::invalid(
                    format!("{at}/constraints/{j}/{field}"),
                    "must be a non-empty JSON pointer such as /to (RFC 6901)",
                ));
            }
        }
        compiled.push(Constraint {
            argument: c.argument.clone(),
            claim: c.claim.clone(),
        });
    }
    Ok(Rule {
        name: name.to_string(),
        effect,
        scopes: scopes.to_vec(),
        constraints: compiled,
        limit,
        mode,
    })
}

fn is_json_pointer(p: &str) -> bool {
    if p.is_empty() {
        return true;
    }
    if !p.starts_with('/') {
        return false;
    }
    let bytes = p.as_bytes();
    bytes
        .iter()
        .enumerate()
        .all(|(i, b)| *b != b'~' || matches!(bytes.get(i + 1), Some(b'0' | b'1')))
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;
    use serde_json::json;

    pub(crate) fn example() -> Value {
        json!({
            "trust_domain": "trust.example",
            "issuers": [{"name": "tts", "jwks": {"keys": [{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"k1"}]}, "algorithms": ["EdDSA", "ES256", "RS256"]}],
            "token": {"header": "txn-token", "leeway_seconds": 30, "max_lifetime_seconds": 300, "max_bytes": 8192},
            "agents": {"spiffe://trust.example/agent/*": {"max_scopes": ["calendar:*", "email:send"]}},
            "delegation": {"max_depth": 4},
            "peer_binding": "off",
            "mcp": {"path_prefix": "/mcp", "max_body_bytes": 65536},
            "tools": {
                "send_email": {"scopes": ["email:send"],
                               "constraints": [{"argument": "/to", "claim": "/tctx/recipient"}],
                               "rate_limit": {"key": "agent", "limit": 10, "period_seconds": 60, "burst": 3}},
                "*": {"effect": "deny"}
            },
            "audit": {"arguments": "hash"}
        })
    }

    fn load(v: &Value) -> Result<Policy, PolicyError> {
        Policy::from_json(&serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn example_from_the_brief_compiles() {
        let p = load(&example()).unwrap();
        assert_eq!(p.tool_rule("send_email").unwrap().name, "send_email");
        assert!(
            p.tool_rule("SEND_EMAIL").is_none(),
            "a case variant is refused, not sent to *"
        );
        assert_eq!(p.tool_rule("other").unwrap().effect, Effect::Deny);
        assert!(p.agents.ceiling("spiffe://trust.example/agent/a").is_some());
        assert!(p
            .agents
            .ceiling("spiffe://trust.example/agent/a/b")
            .is_none());
    }

    /// The prefix index must pick exactly what a scan in specificity order picks, whatever the patterns.
    #[test]
    fn indexed_agent_patterns_pick_what_a_scan_picks() {
        let sources = [
            "spiffe://trust.example/agent/*",
            "spiffe://trust.example/agent/mail*",
            "spiffe://trust.example/agent/**",
            "spiffe://trust.example/*/mailer",
            "spiffe://trust.example/**",
            "spiffe://*/agent/mailer",
            "spiffe://trust.example/team-*/bot",
            "**",
            "*://trust.example/agent/mailer",
            "spiffe://trust.example/agent/mailer/*",
            "spiffe://other.example/agent/*",
        ];
        let ids = [
            "spiffe://trust.example/agent/mailer",
            "spiffe://trust.example/agent/mailer/x",
            "spiffe://trust.example/agent/other",
            "spiffe://trust.example/team-7/bot",
            "spiffe://trust.example/x",
            "spiffe://other.example/agent/mailer",
            "spiffe://other.example/agent/a/b",
            "https://trust.example/agent/mailer",
            "nothing-like-it",
            "",
        ];
        // Every subset of one in three patterns, plus filler teams so the index (not the scan) is used.
        for skip in 0..3 {
            let mut agents = serde_json::Map::new();
            for (i, src) in sources.iter().enumerate() {
                if i % 3 != skip {
                    agents.insert((*src).to_string(), json!({"max_scopes": [format!("s{i}")]}));
                }
            }
            for t in 0..20 {
                agents.insert(
                    format!("spiffe://trust.example/filler-{t}/*"),
                    json!({"max_scopes": ["filler"]}),
                );
            }
            let mut v = example();
            v["agents"] = Value::Object(agents);
            let p = load(&v).unwrap();
            assert!(p.agents.patterns.len() > PATTERN_SCAN_MAX);
            for id in ids {
                let scanned = p
                    .agents
                    .patterns
                    .iter()
                    .find(|(pat, _)| pat.matches(id))
                    .map(|(_, s)| s.to_claim());
                let indexed = p.agents.ceiling(id).map(|s| s.to_claim());
                assert_eq!(indexed, scanned, "{id} with skip {skip}");
            }
        }
    }

    #[test]
    fn errors_carry_the_json_pointer() {
        let mut v = example();
        v["issuers"][0]["algorithms"][1] = json!("HS256");
        let e = load(&v).unwrap_err();
        assert_eq!(e.path(), "/issuers/0/algorithms/1");
        assert!(e.to_string().contains("HS256"), "{e}");

        let mut v = example();
        v["tools"]["send_email"]["rate_limit"]["limit"] = json!("ten");
        assert_eq!(
            load(&v).unwrap_err().path(),
            "/tools/send_email/rate_limit/limit"
        );

        let mut v = example();
        v["tools"]["send_email"]["rate_limit"]["period_seconds"] = json!(0);
        assert_eq!(
            load(&v).unwrap_err().path(),
            "/tools/send_email/rate_limit/period_seconds"
        );

        let mut v = example();
        v["tools"]["send_email"]["constraints"][0]["claim"] = json!("tctx.recipient");
        assert_eq!(
            load(&v).unwrap_err().path(),
            "/tools/send_email/constraints/0/claim"
        );

        let mut v = example();
        v["mcp"]["extra"] = json!(1);
        let e = load(&v).unwrap_err();
        assert_eq!(e.path(), "/mcp/extra");
        assert!(e.to_string().contains("unknown field `extra`"), "{e}");

        let mut v = example();
        v["agents"]["spiffe://x/*"] = json!({"max_scopes": ["a*b"]});
        assert_eq!(
            load(&v).unwrap_err().path(),
            "/agents/spiffe:~1~1x~1*/max_scopes/0"
        );
    }

    #[test]
    fn weak_inline_keys_are_refused_with_their_path() {
        let mut v = example();
        v["issuers"][0]["jwks"]["keys"][0]["x"] =
            json!("AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        let e = load(&v).unwrap_err();
        assert_eq!(e.path(), "/issuers/0/jwks/keys/0");
        assert!(e.to_string().contains("small order"), "{e}");
    }

    #[test]
    fn duplicate_keys_in_the_document_are_refused() {
        let e = Policy::from_json(br#"{"trust_domain":"a","trust_domain":"b","issuers":[]}"#)
            .unwrap_err();
        assert!(matches!(
            e,
            PolicyError::Json(JsonError::DuplicateKey { .. })
        ));
    }

    #[test]
    fn jwks_and_jwks_uri_are_exclusive() {
        let mut v = example();
        v["issuers"][0]["jwks_uri"] = json!("https://tts/jwks");
        assert_eq!(load(&v).unwrap_err().path(), "/issuers/0/jwks_uri");
        let mut v = example();
        v["issuers"][0].as_object_mut().unwrap().remove("jwks");
        assert_eq!(load(&v).unwrap_err().path(), "/issuers/0");
        v["issuers"][0]["jwks_uri"] = json!("https://tts/jwks");
        assert!(load(&v).is_ok());
    }

    #[test]
    fn token_in_authorization_is_refused() {
        let mut v = example();
        v["token"]["header"] = json!("Authorization");
        assert_eq!(load(&v).unwrap_err().path(), "/token/header");
    }

    #[test]
    fn tool_rules_differing_by_case_are_refused() {
        let mut v = example();
        v["tools"]["Send_Email"] = json!({});
        assert!(load(&v).unwrap_err().path().starts_with("/tools/"));
    }

    #[test]
    fn prompts_and_resources_sections() {
        let p = load(&example()).unwrap();
        assert!(p.prompts().is_none() && p.resources().is_none());
        let mut v = example();
        v["prompts"] = json!({"code_review": {"scopes": ["prompts:review"],
            "constraints": [{"argument": "/repo", "claim": "/tctx/repo"}]}, "*": {"effect": "deny"}});
        v["resources"] = json!({
            "file:///docs/**": {"scopes": ["docs:read"], "rate_limit": {"limit": 5, "period_seconds": 60}},
            "file:///docs/public.txt": {},
            "*": {"effect": "deny"}});
        let p = load(&v).unwrap();
        let prompts = p.prompts().unwrap();
        assert_eq!(
            prompts
                .lookup("code_review")
                .rule()
                .unwrap()
                .constraints
                .len(),
            1
        );
        assert_eq!(prompts.lookup("other").rule().unwrap().name, "*");
        let resources = p.resources().unwrap();
        assert_eq!(
            resources.lookup("file:///docs/a/b").unwrap().name,
            "file:///docs/**"
        );
        assert_eq!(
            resources.lookup("file:///docs/public.txt").unwrap().name,
            "file:///docs/public.txt"
        );
        assert_eq!(resources.lookup("https://x").unwrap().name, "*");
        assert!(p.has_rate_limits());
        // Present but empty: default deny.
        let mut v = example();
        v["prompts"] = json!({});
        v["resources"] = json!({});
        let p = load(&v).unwrap();
        assert!(p.prompts().unwrap().lookup("x").rule().is_none());
        assert!(p.resources().unwrap().lookup("file:///x").is_none());
    }

    #[test]
    fn prompt_and_resource_faults_carry_their_path() {
        let cases = [
            (
                json!({"prompts": {"a": {"scopes": ["x*"]}}}),
                "/prompts/a/scopes/0",
            ),
            (
                json!({"prompts": {"a": {"constraints": [{"argument": "to", "claim": "/c"}]}}}),
                "/prompts/a/constraints/0/argument",
            ),
            (
                json!({"prompts": {"a": {"rate_limit": {"limit": 0, "period_seconds": 1}}}}),
                "/prompts/a/rate_limit/limit",
            ),
            (
                json!({"prompts": {"Review": {}, "review": {}}}),
                "/prompts/review",
            ),
            (json!({"prompts": {"a\u{1}": {}}}), "/prompts/a\u{1}"),
            (json!({"prompts": {"": {}}}), "/prompts/"),
            (json!({"prompts": {"a": {"extra": 1}}}), "/prompts/a/extra"),
            (
                json!({"resources": {"file:///a/*": {"constraints": []}}}),
                "/resources/file:~1~1~1a~1*/constraints",
            ),
            (
                json!({"resources": {"file:///a/***": {}}}),
                "/resources/file:~1~1~1a~1***",
            ),
            (
                json!({"resources": {"x": {"scopes": [""]}}}),
                "/resources/x/scopes/0",
            ),
            (
                json!({"resources": {"x": {"rate_limit": {"limit": 1, "period_seconds": 0}}}}),
                "/resources/x/rate_limit/period_seconds",
            ),
            (
                json!({"resources": {"x": {"effect": "maybe"}}}),
                "/resources/x/effect",
            ),
            (
                json!({"tools": {"Send": {}, "ｓｅｎｄ": {}}}),
                "/tools/ｓｅｎｄ",
            ),
        ];
        for (patch, path) in cases {
            let mut v = example();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            let e = load(&v).unwrap_err();
            assert_eq!(e.path(), path, "{patch}: {e}");
        }
        let mut v = example();
        v["resources"] = json!({"file:///a": {"constraints": [{"argument": "/a", "claim": "/b"}]}});
        let e = load(&v).unwrap_err();
        assert!(e.to_string().contains("no arguments"), "{e}");
    }

    #[test]
    fn any_name_without_control_characters_may_be_a_rule() {
        let mut v = example();
        v["tools"]["a b/ü:c"] = json!({});
        v["prompts"] = json!({"Weird Prompt!": {}});
        let p = load(&v).unwrap();
        assert!(p.tool_rule("a b/ü:c").is_some());
        assert!(p
            .prompts()
            .unwrap()
            .lookup("Weird Prompt!")
            .rule()
            .is_some());
        v["tools"] = json!({"x".repeat(129): {}});
        assert!(load(&v).is_err());
    }

    #[test]
    fn issuer_typ_and_algorithms() {
        let p = load(&example()).unwrap();
        let issuer = p.key_ring.issuer(0).unwrap();
        assert_eq!(issuer.typ, vec!["txntoken+jwt".to_string()]);
        assert!(issuer.accepts_typ("application/TXNTOKEN+jwt"));
        assert!(!issuer.accepts_typ("txn_token"));

        let mut v = example();
        v["issuers"][0]["typ"] = json!(["txntoken+jwt", "txn_token"]);
        let p = load(&v).unwrap();
        assert!(p.key_ring.issuer(0).unwrap().accepts_typ("txn_token"));
        let warned: Vec<String> = p.warnings().into_iter().map(|w| w.path).collect();
        assert!(
            warned.contains(&"/issuers/0/typ/1".to_string()),
            "{warned:?}"
        );

        for (bad, path) in [
            (json!([]), "/issuers/0/typ"),
            (json!(["txntoken+jwt", ""]), "/issuers/0/typ/1"),
            (json!(["txntoken+jwt; v=1"]), "/issuers/0/typ/0"),
            (json!(["application/"]), "/issuers/0/typ/0"),
            (json!("txntoken+jwt"), "/issuers/0/typ"),
        ] {
            let mut v = example();
            v["issuers"][0]["typ"] = bad.clone();
            assert_eq!(load(&v).unwrap_err().path(), path, "{bad}");
        }

        let mut v = example();
        v["issuers"][0]["algorithms"] = json!(["Ed25519", "ES384"]);
        let p = load(&v).unwrap();
        let key = &p.key_ring.issuer(0).unwrap().key_set().unwrap().keys()[0];
        assert_eq!(key.algorithm(), Algorithm::Ed25519);
        let defaults = Policy::from_json(
            br#"{"trust_domain":"t","issuers":[{"name":"i","jwks_uri":"https://i/jwks"}]}"#,
        )
        .unwrap();
        assert_eq!(
            defaults.key_ring.issuer(0).unwrap().algorithms,
            Algorithm::ALL.to_vec()
        );
    }

    #[test]
    fn warnings_name_issuers_without_iss_and_resource_metadata() {
        let p = load(&example()).unwrap();
        let w = p.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].path, "/issuers/0");
        assert!(w[0].to_string().contains("8725"), "{}", w[0]);

        let mut v = example();
        v["issuers"][0]["iss"] = json!("https://tts.trust.example");
        assert!(load(&v).unwrap().warnings().is_empty());
        v["mcp"]["resource_metadata"] =
            json!("https://gw.example/.well-known/oauth-protected-resource");
        let w = load(&v).unwrap().warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].path, "/mcp/resource_metadata");
        assert!(w[0].message.contains("no longer advertised"));
        v["issuers"][0]["iss"] = json!("");
        assert_eq!(load(&v).unwrap_err().path(), "/issuers/0/iss");
    }

    #[test]
    fn prior_actors_defaults_to_informational() {
        let p = load(&example()).unwrap();
        assert_eq!(p.spec().delegation.prior_actors, PriorActors::Informational);
        let mut v = example();
        v["delegation"]["prior_actors"] = json!("narrow");
        assert_eq!(
            load(&v).unwrap().spec().delegation.prior_actors,
            PriorActors::Narrow
        );
        v["delegation"]["prior_actors"] = json!("ignore");
        assert_eq!(load(&v).unwrap_err().path(), "/delegation/prior_actors");
    }

    #[test]
    fn minimal_policy_takes_defaults() {
        let p = Policy::from_json(
            br#"{"trust_domain":"t","issuers":[{"name":"i","jwks_uri":"https://i/jwks"}]}"#,
        )
        .unwrap();
        assert_eq!(p.token.header, "txn-token");
        assert_eq!(p.mcp.path_prefix, "/mcp");
        assert!(p.tool_rule("anything").is_none());
    }
}

//! The policy: one JSON document used verbatim by every host (Envoy plugin configuration, Worker variable,
//! CLI `--policy`). `PolicySpec` is its wire form and the source of the published JSON Schema; `Policy` is the
//! compiled form the request path reads. Every fault is reported at load with the JSON pointer of the bad
//! field, so a bad policy never reaches traffic.

use core::fmt;
use std::collections::{BTreeMap, HashMap};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::delegation::AgentPattern;
use crate::json::{escape_pointer_token, parse_strict, JsonError};
use crate::keys::{Algorithm, KeyError, KeyRing, KeySet, KeySource, Strictness};
use crate::ratelimit::LimitRule;
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
    /// Rules per MCP tool name (matched case-insensitively); `*` applies to tools without their own rule.
    /// A tool with no rule and no `*` is denied.
    #[serde(default)]
    pub tools: BTreeMap<String, ToolSpec>,
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
    /// When set, the token's `iss` claim must equal it.
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
    /// The JWS algorithms this issuer may use. Each key is bound to one of them.
    #[serde(default = "defaults::algorithms")]
    pub algorithms: Vec<AlgorithmName>,
}

/// A supported JWS algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AlgorithmName {
    EdDSA,
    ES256,
    RS256,
    PS256,
}

impl From<AlgorithmName> for Algorithm {
    fn from(a: AlgorithmName) -> Self {
        match a {
            AlgorithmName::EdDSA => Self::EdDSA,
            AlgorithmName::ES256 => Self::ES256,
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
}

impl Default for DelegationSpec {
    fn default() -> Self {
        Self {
            max_depth: defaults::max_depth(),
        }
    }
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

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolSpec {
    #[serde(default)]
    pub effect: Effect,
    /// Scopes the caller's effective scope must include (each matched by a granted scope or pattern).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Argument checks: each argument (JSON pointer into `params.arguments`) must equal the claim (JSON pointer
    /// into the token claims), or be a member of it when the claim is an array.
    #[serde(default)]
    pub constraints: Vec<ConstraintSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// `dry_run` evaluates and audits the rule but lets the call through.
    #[serde(default)]
    pub mode: Mode,
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
    /// What one bucket counts: per acting agent, per token subject (user), or the tool as a whole.
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
            AlgorithmName::ES256,
            AlgorithmName::RS256,
            AlgorithmName::PS256,
        ]
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

/// A tool call argument check.
#[derive(Debug, Clone)]
pub struct Constraint {
    pub argument: String,
    pub claim: String,
}

/// A rate limit attached to a tool rule.
#[derive(Debug, Clone)]
pub struct ToolLimit {
    pub key: LimitKey,
    pub rule: LimitRule,
    pub on_store_error: StoreErrorPolicy,
    /// Counted by the rate limit service ([`crate::rls`]).
    pub remote: Option<crate::rls::RemoteLimit>,
}

/// One compiled tool rule.
#[derive(Debug, Clone)]
pub struct ToolRule {
    /// The rule's name in the policy (`send_email`, or `*`).
    pub name: String,
    pub effect: Effect,
    pub scopes: Vec<String>,
    pub constraints: Vec<Constraint>,
    pub limit: Option<ToolLimit>,
    pub mode: Mode,
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
    tools: HashMap<String, ToolRule>,
    default_tool: Option<ToolRule>,
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

    /// The rule for a tool: its own (case-insensitive), else `*`, else none (denied).
    pub fn tool_rule(&self, tool: &str) -> Option<&ToolRule> {
        let found = if tool.bytes().any(|b| b.is_ascii_uppercase()) {
            self.tools.get(&tool.to_ascii_lowercase())
        } else {
            self.tools.get(tool)
        };
        found.or(self.default_tool.as_ref())
    }

    /// Tools with a rate limit (hosts with a remote limiter only call it for these).
    pub fn has_rate_limits(&self) -> bool {
        self.tools
            .values()
            .chain(self.default_tool.iter())
            .any(|r| r.limit.is_some())
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
        let (tools, default_tool) = compile_tools(&spec.tools)?;
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
            default_tool,
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
        ring.add_issuer(
            issuer.name.clone(),
            issuer.iss.clone(),
            algorithms,
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

fn compile_tools(
    tools: &BTreeMap<String, ToolSpec>,
) -> Result<(HashMap<String, ToolRule>, Option<ToolRule>), PolicyError> {
    let mut map: HashMap<String, ToolRule> = HashMap::new();
    let mut default = None;
    for (name, spec) in tools {
        let at = format!("/tools/{}", escape_pointer_token(name));
        if name != "*" && !crate::mcp::is_valid_tool_name(name) {
            return Err(PolicyError::invalid(
                at,
                "tool names are 1-128 characters of A-Z a-z 0-9 _ - . /",
            ));
        }
        let rule = compile_tool(name, spec, &at)?;
        if name == "*" {
            default = Some(rule);
        } else if map.insert(name.to_ascii_lowercase(), rule).is_some() {
            return Err(PolicyError::invalid(
                at,
                "another tool rule differs from this one only by case",
            ));
        }
    }
    Ok((map, default))
}

fn compile_tool(name: &str, spec: &ToolSpec, at: &str) -> Result<ToolRule, PolicyError> {
    for (j, scope) in spec.scopes.iter().enumerate() {
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
    let mut constraints = Vec::with_capacity(spec.constraints.len());
    for (j, c) in spec.constraints.iter().enumerate() {
        for (field, pointer) in [("argument", &c.argument), ("claim", &c.claim)] {
            if !is_json_pointer(pointer) || pointer.is_empty() {
                return Err(PolicyError::invalid(
                    format!("{at}/constraints/{j}/{field}"),
                    "must be a non-empty JSON pointer such as /to (RFC 6901)",
                ));
            }
        }
        constraints.push(Constraint {
            argument: c.argument.clone(),
            claim: c.claim.clone(),
        });
    }
    let limit = match &spec.rate_limit {
        None => None,
        Some(rl) => {
            let burst = rl.burst.unwrap_or(rl.limit);
            let rule =
                LimitRule::new(rl.limit, rl.period_seconds, burst).map_err(|(field, m)| {
                    PolicyError::invalid(format!("{at}/rate_limit/{field}"), m)
                })?;
            Some(ToolLimit {
                key: rl.key,
                rule,
                on_store_error: rl.on_store_error,
                remote: crate::rls::compile_rule(at, rl)?,
            })
        }
    };
    Ok(ToolRule {
        name: name.to_string(),
        effect: spec.effect,
        scopes: spec.scopes.clone(),
        constraints,
        limit,
        mode: spec.mode,
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
        assert_eq!(p.tool_rule("SEND_EMAIL").unwrap().name, "send_email");
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

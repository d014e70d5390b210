//! Compiling a `PolicySpec` into a `Policy`: every check, with the JSON pointer of a bad field.

use core::fmt;
use std::collections::{BTreeMap, HashMap};

use crate::agents::AgentPattern;
use crate::json::{escape_pointer_token, JsonError};
use crate::keys::{Algorithm, KeyError, KeyRing, KeySet, KeySource, RemoteSpec, Strictness};
use crate::mcp::Kind;
use crate::names::{self, NamedRules};
use crate::ratelimit::LimitRule;
use crate::resource::ResourceRules;
use crate::scope::{ScopePattern, ScopeSet};

use super::*;

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

impl Policy {
    pub fn compile(spec: PolicySpec) -> Result<Self, PolicyError> {
        if spec.trust_domain.trim().is_empty() {
            return Err(PolicyError::invalid("/trust_domain", "must not be empty"));
        }
        let mut key_ring = compile_issuers(&spec.issuers)?;
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
        let rate_limit_service = remote::compile_service(&spec)?;
        let wimse = compile_wimse(&spec, &mut key_ring)?;
        Ok(Self {
            trust_domain: spec.trust_domain.clone(),
            token,
            agents,
            max_delegation_depth: usize::try_from(spec.delegation.max_depth).unwrap_or(usize::MAX),
            peer_binding: spec.peer_binding.mode(),
            peer_source: spec.peer_binding.source(),
            wimse,
            mcp,
            tools,
            prompts,
            resources,
            arguments_audit: spec.audit.arguments,
            max_limit_keys: spec.limits.max_keys,
            rate_limit_headers: spec.limits.headers,
            key_ring,
            rate_limit_service,
            spec,
        })
    }
}

/// The `wimse` section, required when the peer binding takes the caller from a WIMSE proof.
/// Its trust domains' keys join the key ring (role `TrustDomain`), so hosts fetch remote ones like issuers'.
fn compile_wimse(
    spec: &PolicySpec,
    ring: &mut KeyRing,
) -> Result<Option<crate::wimse::WimseRules>, PolicyError> {
    use crate::wimse::PeerSource;
    let needs = spec.peer_binding.mode() != PeerBinding::Off
        && spec.peer_binding.source() != PeerSource::Mtls;
    match &spec.wimse {
        None if needs => Err(PolicyError::invalid(
            "/wimse",
            "required when peer_binding.source is wimse or mtls_or_wimse (the trust domains and audiences proofs are checked against)",
        )),
        None => Ok(None),
        Some(section) => crate::wimse::compile(section, ring).map(Some).map_err(|e| {
            let path = format!("/wimse{}", e.path);
            match e.key {
                Some(source) => PolicyError::Key { path, source },
                None => PolicyError::invalid(path, e.message),
            }
        }),
    }
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
                            | KeyError::NotBuiltIn { index, .. }
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
                let source = KeySource::remote(RemoteSpec {
                    uri,
                    cluster: issuer.cluster.as_deref(),
                    refresh_seconds: issuer.refresh_seconds,
                    max_stale_seconds: issuer.max_stale_seconds,
                    min_refetch_seconds: issuer.min_refetch_seconds,
                })
                .map_err(|(field, message)| PolicyError::invalid(at(field), message))?;
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
        out.extend(remote::warnings(&self.spec));
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
    let mut exact = HashMap::new();
    let mut by_pattern = Vec::new();
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
            by_pattern.push((pattern, ceiling));
        } else {
            if id.is_empty() {
                return Err(PolicyError::invalid(at, "agent ID must not be empty"));
            }
            exact.insert(id.clone(), ceiling);
        }
    }
    Ok(Agents::new(exact, by_pattern))
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
        remote: remote::compile_rule(kind, at, rl)?,
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

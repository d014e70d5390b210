//! The policy's `wimse` section (wire form and compiled form) and the `source` of `peer_binding`. Kept here so
//! the policy module only names these types: nothing in this module depends on the policy.

use std::collections::BTreeMap;

use schemars::JsonSchema;
#[cfg(test)]
use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;

use crate::keys::{Algorithm, KeyError, KeyRing, KeySet, KeySource, RemoteSpec, Strictness};

/// Where the caller's proven identity comes from when `peer_binding` checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(rename_all = "snake_case")]
pub enum PeerSource {
    /// The host's verified mTLS peer (Envoy: the client certificate's SPIFFE URI SAN). Hosts without mTLS
    /// (the Cloudflare Worker) never know one.
    #[default]
    Mtls,
    /// A WIMSE proof on the request: a Workload-Identity-Token from a trust domain of the `wimse` section and
    /// a Workload-Proof-Token signed with its key, covering this request and its Txn-Token. Every host.
    Wimse,
    /// The WIMSE proof when the request carries one, else the mTLS peer; when both are there they must name
    /// the same workload. One policy for Envoy with mTLS and for edges without it.
    MtlsOrWimse,
}

/// `peer_binding` in its object form: the mode and where the caller's identity comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct PeerBindingSpec<M> {
    pub mode: M,
    #[serde(default)]
    pub source: PeerSource,
}

/// The `wimse` section: which trust domains may vouch for calling workloads, and how proofs are bounded.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct WimseSpec {
    /// Trust domains whose Identity Server keys sign Workload Identity Tokens, by trust domain name (the
    /// authority of a Workload Identifier: `spiffe://trust.example/...` is in `trust.example`). A WIT is
    /// accepted only when its `sub` is in the trust domain whose key verified it. Key ids are unique across
    /// all trust domains.
    pub trust_domains: BTreeMap<String, TrustDomainSpec>,
    /// This gate's origins (`https://mcp.example.com`, no path): a WPT's `aud` must be one of them followed by
    /// the request's path (its target URI without query or fragment, draft-ietf-wimse-wpt §2). Never taken
    /// from the request's `Host` (the draft forbids it).
    pub audiences: Vec<String>,
    /// Longest accepted WPT validity from now (`exp - now`); proofs are meant to live seconds to minutes.
    #[serde(default = "defaults::max_proof_lifetime_seconds")]
    pub max_proof_lifetime_seconds: u32,
    /// `jti`s remembered per host instance (the replay window is each proof's own validity). When every entry
    /// is still live a new proof is refused (503 `wimse.replay_cache_full`) rather than one forgotten.
    #[serde(default = "defaults::replay_cache_entries")]
    pub replay_cache_entries: u32,
    /// Clock skew tolerated on WIT and WPT times.
    #[serde(default = "defaults::leeway_seconds")]
    pub leeway_seconds: u32,
    /// Largest accepted WIT or WPT, checked before any parsing.
    #[serde(default = "defaults::max_token_bytes")]
    pub max_token_bytes: u32,
    /// The algorithms a WIT's `cnf.jwk.alg` (and so its WPTs) may use.
    #[serde(default = "defaults::algorithms")]
    pub proof_algorithms: Vec<String>,
}

/// One trust domain's Identity Server keys: inline, or fetched from `jwks_uri` exactly like a Txn-Token
/// issuer's (same refresher, back-off, unknown-`kid` refetch and staleness bound).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct TrustDomainSpec {
    /// The public keys, inline as a JWK set, checked like a Txn-Token issuer's (no private members, curve
    /// points, RSA sizes, one algorithm per key, unique `kid`s). Exactly one of `jwks` and `jwks_uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<Value>,
    /// Where the host fetches the trust domain's JWK set (its Identity Server's keys). Exactly one of `jwks`
    /// and `jwks_uri`. A fetched set may publish keys of other algorithms (skipped), never weak or private
    /// ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Envoy only: the cluster that serves `jwks_uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Seconds between periodic fetches of `jwks_uri`.
    #[serde(default = "defaults::refresh_seconds")]
    pub refresh_seconds: u32,
    /// How long the last good key set is used while fetches fail; past it, WIMSE proofs are refused (503
    /// `keys.unavailable`).
    #[serde(default = "defaults::max_stale_seconds")]
    pub max_stale_seconds: u32,
    /// At most one refetch per this many seconds when WITs name an unknown `kid`.
    #[serde(default = "defaults::min_refetch_seconds")]
    pub min_refetch_seconds: u32,
    /// The algorithms these keys may sign WITs with.
    #[serde(default = "defaults::algorithms")]
    pub algorithms: Vec<String>,
    /// The `iss` its WITs carry, if any. A WIT with an `iss` is accepted only when it equals this (RFC 8725
    /// §3.8); without it, a WIT carrying an `iss` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

/// The optional fields' defaults; no trust domains or audiences (which `compile` refuses).
impl Default for WimseSpec {
    fn default() -> Self {
        Self {
            trust_domains: BTreeMap::new(),
            audiences: Vec::new(),
            max_proof_lifetime_seconds: defaults::max_proof_lifetime_seconds(),
            replay_cache_entries: defaults::replay_cache_entries(),
            leeway_seconds: defaults::leeway_seconds(),
            max_token_bytes: defaults::max_token_bytes(),
            proof_algorithms: defaults::algorithms(),
        }
    }
}

/// The optional fields' defaults; no keys (which `compile` refuses).
impl Default for TrustDomainSpec {
    fn default() -> Self {
        Self {
            jwks: None,
            jwks_uri: None,
            cluster: None,
            refresh_seconds: defaults::refresh_seconds(),
            max_stale_seconds: defaults::max_stale_seconds(),
            min_refetch_seconds: defaults::min_refetch_seconds(),
            algorithms: defaults::algorithms(),
            iss: None,
        }
    }
}

mod defaults {
    pub fn refresh_seconds() -> u32 {
        crate::keys::DEFAULT_REFRESH_SECONDS
    }
    pub fn max_stale_seconds() -> u32 {
        crate::keys::DEFAULT_MAX_STALE_SECONDS
    }
    pub fn min_refetch_seconds() -> u32 {
        crate::keys::DEFAULT_MIN_REFETCH_SECONDS
    }
    pub fn max_proof_lifetime_seconds() -> u32 {
        60
    }
    pub fn replay_cache_entries() -> u32 {
        4096
    }
    pub fn leeway_seconds() -> u32 {
        5
    }
    pub fn max_token_bytes() -> u32 {
        8192
    }
    pub fn algorithms() -> Vec<String> {
        ["EdDSA", "Ed25519", "ES256", "ES384", "RS256", "PS256"]
            .into_iter()
            .map(str::to_string)
            .collect()
    }
}

/// A trust domain, compiled. Its keys live in the gate's key ring (entry `ring`, role
/// [`crate::keys::KeyRole::TrustDomain`]), so the host fetches and refreshes remote ones like an issuer's.
#[derive(Debug, Clone)]
pub struct TrustDomain {
    pub name: String,
    /// The trust domain's entry in the key ring.
    pub ring: usize,
    pub iss: Option<String>,
}

/// The key ring entry name of trust domain `name` (logs, metrics, the host's fetch bookkeeping).
pub fn ring_name(name: &str) -> String {
    format!("trust_domain:{name}")
}

/// The compiled `wimse` section.
#[derive(Debug, Clone)]
pub struct WimseRules {
    pub trust_domains: Vec<TrustDomain>,
    pub audiences: Vec<String>,
    pub max_proof_lifetime_s: u64,
    pub replay_cache_entries: usize,
    pub leeway_s: i64,
    pub max_token_bytes: usize,
    pub proof_algorithms: Vec<Algorithm>,
}

/// A fault in the `wimse` section: the JSON pointer below `/wimse` and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub path: String,
    pub message: String,
    pub key: Option<KeyError>,
}

fn fault(path: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        path: path.into(),
        message: message.into(),
        key: None,
    }
}

fn algorithms(names: &[String], at: &str) -> Result<Vec<Algorithm>, SpecError> {
    if names.is_empty() {
        return Err(fault(at, "at least one algorithm is required"));
    }
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            Algorithm::from_name(name).ok_or_else(|| {
                fault(
                    format!("{at}/{i}"),
                    format!("unsupported algorithm {name:?} (EdDSA, Ed25519, ES256, ES384, RS256, PS256)"),
                )
            })
        })
        .collect()
}

/// Compiles the section, registering each trust domain's keys in `ring`; paths in errors are relative to
/// `/wimse`.
pub fn compile(spec: &WimseSpec, ring: &mut KeyRing) -> Result<WimseRules, SpecError> {
    use crate::json::escape_pointer_token;
    if spec.trust_domains.is_empty() {
        return Err(fault(
            "/trust_domains",
            "at least one trust domain is required",
        ));
    }
    let mut trust_domains: Vec<TrustDomain> = Vec::with_capacity(spec.trust_domains.len());
    let mut inline_sets: Vec<KeySet> = Vec::new();
    for (name, td) in &spec.trust_domains {
        let at = format!("/trust_domains/{}", escape_pointer_token(name));
        if !is_authority(name) {
            return Err(fault(
                at,
                "a trust domain is a URI authority such as trust.example (lower case, no scheme, path or port)",
            ));
        }
        let allowed = algorithms(&td.algorithms, &format!("{at}/algorithms"))?;
        let (source, inline) = match (&td.jwks, &td.jwks_uri) {
            (Some(jwks), None) => {
                let keys = inline_keys(jwks, &allowed, &at, &inline_sets)?;
                (KeySource::Inline, Some(keys))
            }
            (None, Some(uri)) => {
                let source = KeySource::remote(RemoteSpec {
                    uri,
                    cluster: td.cluster.as_deref(),
                    refresh_seconds: td.refresh_seconds,
                    max_stale_seconds: td.max_stale_seconds,
                    min_refetch_seconds: td.min_refetch_seconds,
                })
                .map_err(|(field, message)| fault(format!("{at}/{field}"), message))?;
                (source, None)
            }
            (Some(_), Some(_)) => {
                return Err(fault(
                    format!("{at}/jwks_uri"),
                    "give either jwks or jwks_uri, not both",
                ))
            }
            (None, None) => return Err(fault(at, "one of jwks or jwks_uri is required")),
        };
        if td.jwks_uri.is_none() && td.cluster.is_some() {
            return Err(fault(
                format!("{at}/cluster"),
                "only with jwks_uri (the cluster that serves it)",
            ));
        }
        if td.iss.as_deref().is_some_and(|i| i.trim().is_empty()) {
            return Err(fault(format!("{at}/iss"), "must not be empty"));
        }
        if let Some(keys) = &inline {
            inline_sets.push(keys.clone());
        }
        let index = ring.add_trust_domain(ring_name(name), allowed, source, inline);
        trust_domains.push(TrustDomain {
            name: name.clone(),
            ring: index,
            iss: td.iss.clone(),
        });
    }
    // Without kids, a key is chosen only when there is exactly one in all (a fetched set must then carry
    // kids: the ring refuses a kid-less lookup among several keys).
    let total: usize = inline_sets.iter().map(KeySet::len).sum();
    let remote = spec.trust_domains.values().any(|t| t.jwks_uri.is_some());
    if (total > 1 || (remote && total > 0))
        && inline_sets
            .iter()
            .any(|set| set.keys().iter().any(|k| k.kid().is_none()))
    {
        return Err(fault(
            "/trust_domains",
            "with more than one key in all, every key needs a kid",
        ));
    }
    if spec.audiences.is_empty() {
        return Err(fault(
            "/audiences",
            "at least one audience (this gate's origin) is required",
        ));
    }
    for (i, aud) in spec.audiences.iter().enumerate() {
        if !is_origin(aud) {
            return Err(fault(
                format!("/audiences/{i}"),
                "an origin: http:// or https:// and a host, without path, query or fragment (the request path is appended)",
            ));
        }
    }
    if spec.max_proof_lifetime_seconds == 0 || spec.max_proof_lifetime_seconds > 3600 {
        return Err(fault(
            "/max_proof_lifetime_seconds",
            "between 1 and 3600 (a proof lives seconds to minutes)",
        ));
    }
    if spec.replay_cache_entries == 0 {
        return Err(fault("/replay_cache_entries", "must be at least 1"));
    }
    if spec.leeway_seconds > 300 {
        return Err(fault("/leeway_seconds", "at most 300"));
    }
    if spec.max_token_bytes < 256 {
        return Err(fault("/max_token_bytes", "at least 256"));
    }
    let proof_algorithms = algorithms(&spec.proof_algorithms, "/proof_algorithms")?;
    Ok(WimseRules {
        trust_domains,
        audiences: spec
            .audiences
            .iter()
            .map(|a| a.trim_end_matches('/').to_string())
            .collect(),
        max_proof_lifetime_s: u64::from(spec.max_proof_lifetime_seconds),
        replay_cache_entries: usize::try_from(spec.replay_cache_entries).unwrap_or(usize::MAX),
        leeway_s: i64::from(spec.leeway_seconds),
        max_token_bytes: usize::try_from(spec.max_token_bytes).unwrap_or(usize::MAX),
        proof_algorithms,
    })
}

/// An inline trust-domain set: checked like a configured issuer set, non-empty, its kids unique across the
/// inline sets so far.
fn inline_keys(
    jwks: &Value,
    allowed: &[Algorithm],
    at: &str,
    sets: &[KeySet],
) -> Result<KeySet, SpecError> {
    let (keys, _) =
        KeySet::from_value(jwks, allowed, Strictness::Inline).map_err(|e| SpecError {
            path: format!("{at}/jwks"),
            message: e.to_string(),
            key: Some(e),
        })?;
    if keys.is_empty() {
        return Err(fault(format!("{at}/jwks"), "at least one key is required"));
    }
    for key in keys.keys() {
        let clash = key
            .kid()
            .filter(|kid| sets.iter().any(|other| other.by_kid(kid).is_some()));
        if let Some(kid) = clash {
            return Err(fault(
                format!("{at}/jwks"),
                format!("kid {kid:?} is used by another trust domain (a kid selects one key)"),
            ));
        }
    }
    Ok(keys)
}

/// A lower-case host name (no port, scheme, path or user info).
fn is_authority(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && !s.starts_with('.')
        && !s.ends_with('.')
}

fn is_origin(s: &str) -> bool {
    let s = s.strip_suffix('/').unwrap_or(s);
    let Some(rest) = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    else {
        return false;
    };
    !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' '])
        && !rest.chars().any(char::is_control)
}

impl WimseRules {
    /// The trust domain of a Workload Identifier (`scheme://authority/path`), when it is a URI with one.
    pub fn trust_domain_of(identifier: &str) -> Option<&str> {
        let (scheme, rest) = identifier.split_once("://")?;
        if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_lowercase()) {
            return None;
        }
        let authority = rest.split(['/', '?', '#']).next()?;
        (!authority.is_empty()).then_some(authority)
    }
}

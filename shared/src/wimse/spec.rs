//! The policy's `wimse` section (wire form and compiled form) and the `source` of `peer_binding`. Kept here so
//! the policy module only names these types: nothing in this module depends on the policy.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::keys::{Algorithm, KeyError, KeySet, Strictness};

/// Where the caller's proven identity comes from when `peer_binding` checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeerBindingSpec<M> {
    pub mode: M,
    #[serde(default)]
    pub source: PeerSource,
}

/// The `wimse` section: which trust domains may vouch for calling workloads, and how proofs are bounded.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
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

/// One trust domain's Identity Server keys.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustDomainSpec {
    /// The public keys, inline as a JWK set, checked like a Txn-Token issuer's (no private members, curve
    /// points, RSA sizes, one algorithm per key, unique `kid`s).
    pub jwks: Value,
    /// The algorithms these keys may sign WITs with.
    #[serde(default = "defaults::algorithms")]
    pub algorithms: Vec<String>,
    /// The `iss` its WITs carry, if any. A WIT with an `iss` is accepted only when it equals this (RFC 8725
    /// §3.8); without it, a WIT carrying an `iss` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

mod defaults {
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

/// A trust domain, compiled.
#[derive(Debug, Clone)]
pub struct TrustDomain {
    pub name: String,
    pub keys: KeySet,
    pub iss: Option<String>,
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

/// Compiles the section; paths in errors are relative to `/wimse`.
pub fn compile(spec: &WimseSpec) -> Result<WimseRules, SpecError> {
    use crate::json::escape_pointer_token;
    if spec.trust_domains.is_empty() {
        return Err(fault(
            "/trust_domains",
            "at least one trust domain is required",
        ));
    }
    let mut trust_domains: Vec<TrustDomain> = Vec::with_capacity(spec.trust_domains.len());
    for (name, td) in &spec.trust_domains {
        let at = format!("/trust_domains/{}", escape_pointer_token(name));
        if !is_authority(name) {
            return Err(fault(
                at,
                "a trust domain is a URI authority such as trust.example (lower case, no scheme, path or port)",
            ));
        }
        let allowed = algorithms(&td.algorithms, &format!("{at}/algorithms"))?;
        let (keys, _) =
            KeySet::from_value(&td.jwks, &allowed, Strictness::Inline).map_err(|e| SpecError {
                path: format!("{at}/jwks"),
                message: e.to_string(),
                key: Some(e),
            })?;
        if keys.is_empty() {
            return Err(fault(format!("{at}/jwks"), "at least one key is required"));
        }
        for key in keys.keys() {
            let clash = key.kid().filter(|kid| {
                trust_domains
                    .iter()
                    .any(|other| other.keys.by_kid(kid).is_some())
            });
            if let Some(kid) = clash {
                return Err(fault(
                    format!("{at}/jwks"),
                    format!("kid {kid:?} is used by another trust domain (a kid selects one key)"),
                ));
            }
        }
        if td.iss.as_deref().is_some_and(|i| i.trim().is_empty()) {
            return Err(fault(format!("{at}/iss"), "must not be empty"));
        }
        trust_domains.push(TrustDomain {
            name: name.clone(),
            keys,
            iss: td.iss.clone(),
        });
    }
    // Without kids, a key is chosen only when there is exactly one in all.
    let total: usize = trust_domains.iter().map(|t| t.keys.len()).sum();
    if total > 1
        && trust_domains
            .iter()
            .any(|t| t.keys.keys().iter().any(|k| k.kid().is_none()))
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

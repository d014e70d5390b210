//! The Workload Identity Token (draft-ietf-wimse-workload-creds-03 §4.1): a JWT signed by the trust domain's
//! Identity Server that names one workload (`sub`) and binds it to a public key (`cnf.jwk`, with `alg`).

use serde_json::{Map, Value};

use super::spec::WimseRules;
use super::{token_hash, SignedJwt, WimseError, WIT_TYP};
use crate::json::parse_strict;
use crate::keys::{parse_jwk, Algorithm, KeyLookup, KeyRing, KeyRole, PublicKey};
use crate::token::{TokenError, UntrustedToken};

/// A WIT whose shape, header and key passed, waiting for its signature.
#[derive(Debug, Clone)]
pub struct WitCheck {
    jwt: SignedJwt,
    trust_domain: usize,
}

/// A verified WIT.
#[derive(Debug, Clone)]
pub struct Wit {
    /// The Workload Identifier: the caller's proven identity.
    pub sub: String,
    pub trust_domain: String,
    pub exp: i64,
    /// The confirmation key, bound to `cnf.jwk.alg`: every WPT must be signed with it.
    pub cnf: PublicKey,
    /// base64url(SHA-256(WIT)): what a WPT's `wth` must be.
    pub hash: String,
}

fn invalid(detail: impl Into<String>) -> WimseError {
    WimseError::WitInvalid {
        detail: detail.into(),
    }
}

/// The JOSE header rules (shared with the Txn-Token: no `none`, no JWE, no embedded keys, no `crit`, a
/// supported `alg`, a string `typ`) as a WIMSE error.
pub(super) fn header_error(e: &TokenError) -> String {
    e.to_string()
}

impl WitCheck {
    /// Parses a WIT and selects the trust-domain key its `kid` names in the key ring (never a key the token
    /// brings; remote sets only while within their staleness bound at `now_ms`).
    pub fn start(
        rules: &WimseRules,
        ring: &KeyRing,
        raw: &str,
        now_ms: u64,
    ) -> Result<Self, WimseError> {
        let untrusted = UntrustedToken::parse(raw, rules.max_token_bytes)
            .map_err(|e| invalid(header_error(&e)))?;
        untrusted
            .check_type(&[WIT_TYP.to_string()])
            .map_err(|_| invalid(format!("typ {:?} is not wit+jwt", untrusted.typ())))?;
        let (trust_domain, key) = select_key(rules, ring, untrusted.kid(), now_ms)?;
        if untrusted.algorithm() != key.algorithm() {
            return Err(invalid(format!(
                "alg {} is not the algorithm of the trust-domain key ({})",
                untrusted.algorithm(),
                key.algorithm()
            )));
        }
        Ok(Self {
            jwt: SignedJwt::new(raw, &untrusted, key.clone()),
            trust_domain,
        })
    }

    /// The signature the host must check.
    pub fn jwt(&self) -> &SignedJwt {
        &self.jwt
    }

    /// After the signature verified: the claims.
    pub fn finish(self, rules: &WimseRules, now_ms: u64) -> Result<Wit, WimseError> {
        let td = rules
            .trust_domains
            .get(self.trust_domain)
            .ok_or_else(|| invalid("the trust domain is gone"))?;
        let claims = claims(&self.jwt, rules.max_token_bytes).map_err(invalid)?;
        let sub = string_claim(&claims, "sub").map_err(invalid)?;
        match WimseRules::trust_domain_of(&sub) {
            Some(domain) if domain == td.name => {}
            Some(domain) => {
                return Err(WimseError::WitUntrusted {
                    detail: format!(
                        "sub {sub:?} is in trust domain {domain:?}, but a key of {:?} signed it",
                        td.name
                    ),
                })
            }
            None => {
                return Err(invalid(
                    "sub is not a Workload Identifier URI (scheme://trust-domain/path)",
                ))
            }
        }
        match (claims.get("iss"), &td.iss) {
            (None, _) => {}
            (Some(Value::String(found)), Some(expected)) if found == expected => {}
            (Some(found), expected) => {
                return Err(WimseError::WitUntrusted {
                    detail: format!(
                        "iss {found} is not the one trust domain {:?} declares ({expected:?})",
                        td.name
                    ),
                })
            }
        }
        let now_s = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        let exp = numeric(&claims, "exp")
            .map_err(invalid)?
            .ok_or_else(|| invalid("exp is missing"))?;
        if now_s > exp.saturating_add(rules.leeway_s) {
            return Err(WimseError::WitExpired { exp });
        }
        for claim in ["nbf", "iat"] {
            if let Some(t) = numeric(&claims, claim).map_err(invalid)? {
                if t > now_s.saturating_add(rules.leeway_s) {
                    return Err(invalid(format!("{claim} is in the future")));
                }
            }
        }
        let cnf = confirmation_key(&claims, &rules.proof_algorithms)?;
        Ok(Wit {
            sub,
            trust_domain: td.name.clone(),
            exp,
            cnf,
            hash: token_hash(&self.jwt.raw),
        })
    }
}

/// The key a WIT's `kid` selects among the trust domains' ring entries; without `kid`, the one key there is.
fn select_key<'r>(
    rules: &WimseRules,
    ring: &'r KeyRing,
    kid: Option<&str>,
    now_ms: u64,
) -> Result<(usize, &'r PublicKey), WimseError> {
    let domain_of = |entry: usize| rules.trust_domains.iter().position(|t| t.ring == entry);
    match ring.lookup_for(KeyRole::TrustDomain, kid, now_ms) {
        KeyLookup::Found { issuer, key } => {
            domain_of(issuer)
                .map(|td| (td, key))
                .ok_or_else(|| WimseError::WitUntrusted {
                    detail: "the key is of no trust domain of this policy".into(),
                })
        }
        KeyLookup::UnknownKid { refetch } => Err(WimseError::UnknownKid {
            kid: kid.unwrap_or_default().to_string(),
            refetch,
        }),
        KeyLookup::KidRequired => Err(invalid("kid is required (more than one trust-domain key)")),
        KeyLookup::AmbiguousKid => Err(WimseError::WitUntrusted {
            detail: format!(
                "kid {:?} is published by more than one trust domain",
                kid.unwrap_or_default()
            ),
        }),
        KeyLookup::Unavailable { issuer } => Err(WimseError::KeysUnavailable {
            trust_domain: domain_of(issuer)
                .and_then(|td| rules.trust_domains.get(td))
                .map(|t| t.name.clone())
                .unwrap_or_default(),
            entry: issuer,
        }),
    }
}

/// `cnf.jwk`: a public JWK with `alg` (required by the draft; the WPT must use exactly it), checked like any
/// configured key and bound to that algorithm.
fn confirmation_key(
    claims: &Map<String, Value>,
    allowed: &[Algorithm],
) -> Result<PublicKey, WimseError> {
    let jwk = claims
        .get("cnf")
        .and_then(Value::as_object)
        .and_then(|cnf| cnf.get("jwk"))
        .ok_or_else(|| invalid("cnf.jwk is missing"))?;
    match jwk.get("alg") {
        Some(Value::String(alg)) if Algorithm::from_name(alg).is_some() => {}
        Some(Value::String(alg)) => {
            return Err(invalid(format!("cnf.jwk.alg {alg:?} is not supported")))
        }
        _ => return Err(invalid("cnf.jwk.alg is missing (the proof's algorithm)")),
    }
    parse_jwk(0, jwk, allowed).map_err(|e| invalid(format!("cnf.jwk: {e}")))
}

/// The payload of a verified JWS as a JSON object.
pub(super) fn claims(jwt: &SignedJwt, max: usize) -> Result<Map<String, Value>, String> {
    let untrusted = UntrustedToken::parse(&jwt.raw, max).map_err(|e| e.to_string())?;
    let payload = untrusted.payload().map_err(|e| e.to_string())?;
    match parse_strict(&payload, 16) {
        Ok(Value::Object(claims)) => Ok(claims),
        Ok(_) => Err("the payload is not a JSON object".into()),
        Err(e) => Err(format!("payload: {e}")),
    }
}

/// A required string claim without control characters, at most 1024 bytes.
pub(super) fn string_claim(claims: &Map<String, Value>, claim: &str) -> Result<String, String> {
    match claims.get(claim) {
        Some(Value::String(s))
            if !s.is_empty() && s.len() <= 1024 && !s.chars().any(char::is_control) =>
        {
            Ok(s.clone())
        }
        Some(_) => Err(format!(
            "{claim} must be a non-empty string without control characters"
        )),
        None => Err(format!("{claim} is missing")),
    }
}

/// A NumericDate claim (whole seconds; fractions floored; strings refused).
pub(super) fn numeric(claims: &Map<String, Value>, claim: &str) -> Result<Option<i64>, String> {
    crate::token::numeric_date_claim(claims, claim)
        .map_err(|()| format!("{claim} must be a NumericDate"))
}

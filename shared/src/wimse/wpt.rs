//! The Workload Proof Token (draft-ietf-wimse-wpt-02 §2): a short-lived JWT signed with the WIT's
//! confirmation key, bound to the request (`aud`), to the WIT (`wth`) and to the tokens it carries (`tth` for
//! the Txn-Token, `ath` for an access token, `oth` for others), unique per request (`jti`).

use serde_json::{Map, Value};

use super::replay::ReplayCache;
use super::spec::WimseRules;
use super::wit::{claims, header_error, numeric, string_claim, Wit};
use super::{single, token_hash, SignedJwt, WimseError, WPT_TYP};
use crate::token::UntrustedToken;

/// What of the request a WPT must cover.
#[derive(Debug, Clone, Copy)]
pub struct RequestBinding<'a> {
    /// The request path as received (its query and fragment are ignored).
    pub path: &'a str,
    /// The Txn-Token as presented (the `tth` input).
    pub txn_token: &'a str,
    /// Every request header (for `ath` and `oth`).
    pub headers: &'a [(String, String)],
}

/// A WPT whose shape and header passed, waiting for the signature by the WIT's key.
#[derive(Debug, Clone)]
pub struct WptCheck {
    jwt: SignedJwt,
}

/// A verified WPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wpt {
    pub jti: String,
    pub exp: i64,
}

fn invalid(detail: impl Into<String>) -> WimseError {
    WimseError::WptInvalid {
        detail: detail.into(),
    }
}

impl WptCheck {
    /// Parses a WPT; its `alg` must be exactly the WIT's `cnf.jwk.alg`, and only the WIT's key verifies it.
    pub fn start(rules: &WimseRules, wit: &Wit, raw: &str) -> Result<Self, WimseError> {
        let untrusted = UntrustedToken::parse(raw, rules.max_token_bytes)
            .map_err(|e| invalid(header_error(&e)))?;
        untrusted
            .check_type(&[WPT_TYP.to_string()])
            .map_err(|_| invalid(format!("typ {:?} is not wpt+jwt", untrusted.typ())))?;
        if untrusted.algorithm() != wit.cnf.algorithm() {
            return Err(invalid(format!(
                "alg {} is not the WIT's cnf.jwk.alg {}",
                untrusted.algorithm(),
                wit.cnf.algorithm()
            )));
        }
        Ok(Self {
            jwt: SignedJwt::new(raw, &untrusted, wit.cnf.clone()),
        })
    }

    pub fn jwt(&self) -> &SignedJwt {
        &self.jwt
    }

    /// After the signature verified: audience, time, the hashes, then the `jti` (last, so only a proof that
    /// passed everything takes a replay-cache entry). `remember` false: the `jti` is checked, not taken.
    pub fn finish(
        self,
        rules: &WimseRules,
        wit: &Wit,
        request: &RequestBinding<'_>,
        replay: &mut ReplayCache,
        remember: bool,
        now_ms: u64,
    ) -> Result<Wpt, WimseError> {
        let claims = claims(&self.jwt, rules.max_token_bytes).map_err(invalid)?;
        check_audience(rules, &claims, request.path)?;
        let now_s = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        let exp = numeric(&claims, "exp")
            .map_err(invalid)?
            .ok_or_else(|| invalid("exp is missing"))?;
        if now_s > exp.saturating_add(rules.leeway_s) {
            return Err(WimseError::WptExpired { exp });
        }
        let ahead = exp.saturating_sub(now_s);
        let max = rules.max_proof_lifetime_s;
        if ahead
            > i64::try_from(max)
                .unwrap_or(i64::MAX)
                .saturating_add(rules.leeway_s)
        {
            return Err(WimseError::WptLifetime {
                seconds: ahead,
                max,
            });
        }
        if let Some(iat) = numeric(&claims, "iat").map_err(invalid)? {
            if iat > now_s.saturating_add(rules.leeway_s) {
                return Err(invalid("iat is in the future"));
            }
        }
        let jti = string_claim(&claims, "jti").map_err(invalid)?;
        match claims.get("wth") {
            Some(Value::String(wth)) if *wth == wit.hash => {}
            Some(Value::String(_)) => return Err(WimseError::WitHash),
            Some(_) => return Err(invalid("wth must be a string")),
            None => return Err(invalid("wth is missing")),
        }
        match claims.get("tth") {
            Some(Value::String(tth)) if *tth == token_hash(request.txn_token) => {}
            Some(Value::String(_)) => {
                return Err(WimseError::TxnTokenHash {
                    detail: "tth is the hash of another token",
                })
            }
            Some(_) => return Err(invalid("tth must be a string")),
            None => {
                return Err(WimseError::TxnTokenHash {
                    detail: "the WPT has no tth (mandatory when a Txn-Token is presented)",
                })
            }
        }
        check_access_token(&claims, request.headers)?;
        check_other_tokens(&claims, request.headers)?;
        let valid_until_ms = u64::try_from(exp.saturating_add(rules.leeway_s))
            .unwrap_or(0)
            .saturating_mul(1000);
        if remember {
            replay.check_and_remember(&wit.sub, &jti, valid_until_ms, now_ms)?;
        } else {
            replay.check(&wit.sub, &jti, now_ms)?;
        }
        Ok(Wpt { jti, exp })
    }
}

/// `aud`: a configured origin followed by the request path, query and fragment dropped (a string, or an
/// array of which one member matches).
fn check_audience(
    rules: &WimseRules,
    claims: &Map<String, Value>,
    path: &str,
) -> Result<(), WimseError> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let path = if path.is_empty() { "/" } else { path };
    let accepted = |aud: &str| {
        rules.audiences.iter().any(|origin| {
            aud.strip_prefix(origin.as_str())
                .is_some_and(|rest| rest == path)
        })
    };
    let expected = || {
        rules
            .audiences
            .first()
            .map(|o| format!("{o}{path}"))
            .unwrap_or_default()
    };
    match claims.get("aud") {
        Some(Value::String(aud)) if accepted(aud) => Ok(()),
        Some(Value::String(aud)) => Err(WimseError::WptAudience {
            found: aud.clone(),
            expected: expected(),
        }),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            if items.iter().filter_map(Value::as_str).any(accepted) {
                Ok(())
            } else {
                Err(WimseError::WptAudience {
                    found: Value::Array(items.clone()).to_string(),
                    expected: expected(),
                })
            }
        }
        Some(_) => Err(invalid("aud must be a string or an array of strings")),
        None => Err(invalid("aud is missing")),
    }
}

/// `ath`: when present, the request's one `Authorization` access token must hash to it.
fn check_access_token(
    claims: &Map<String, Value>,
    headers: &[(String, String)],
) -> Result<(), WimseError> {
    let Some(ath) = claims.get("ath") else {
        return Ok(());
    };
    let ath = ath
        .as_str()
        .ok_or_else(|| invalid("ath must be a string"))?;
    let value = single(headers, "authorization")
        .map_err(|_| other("the Authorization header is repeated"))?
        .ok_or_else(|| other("ath is set but the request has no Authorization header"))?;
    let token = value
        .split_once(' ')
        .filter(|(scheme, _)| {
            scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("dpop")
        })
        .map(|(_, t)| t.trim_matches([' ', '\t']))
        .ok_or_else(|| other("ath is set but Authorization carries no Bearer or DPoP token"))?;
    if token_hash(token) != ath {
        return Err(other("ath is the hash of another access token"));
    }
    Ok(())
}

/// `oth`: every entry names a request header (lower case) present exactly once whose trimmed value hashes to
/// it; an entry that cannot be checked refuses the proof (the draft: not understood means rejected).
fn check_other_tokens(
    claims: &Map<String, Value>,
    headers: &[(String, String)],
) -> Result<(), WimseError> {
    let Some(oth) = claims.get("oth") else {
        return Ok(());
    };
    let entries = oth
        .as_object()
        .ok_or_else(|| invalid("oth must be an object"))?;
    for (name, hash) in entries {
        let hash = hash
            .as_str()
            .ok_or_else(|| invalid(format!("oth.{name} must be a string")))?;
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(other(format!(
                "oth key {name:?} is not a lower-case header name"
            )));
        }
        let mut found = headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name));
        let value = match (found.next(), found.next()) {
            (Some((_, v)), None) => v.trim_matches(' '),
            (None, _) => {
                return Err(other(format!(
                    "oth names {name:?}, which the request lacks"
                )))
            }
            (Some(_), Some(_)) => {
                return Err(other(format!("oth names {name:?}, which is repeated")))
            }
        };
        if token_hash(value) != hash {
            return Err(other(format!("oth.{name} is the hash of another value")));
        }
    }
    Ok(())
}

fn other(detail: impl Into<String>) -> WimseError {
    WimseError::OtherHash {
        detail: detail.into(),
    }
}

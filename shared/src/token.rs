//! Transaction Tokens, untrusted → verified (the typestate of jwt-compact's `UntrustedToken` → `Token`).
//! `UntrustedToken::parse` checks everything that needs no key (size first, before any decoding; strict
//! base64url; header rules of RFC 8725 and the draft's `typ`); the gate selects the key from its own
//! configuration and has the signature checked; only then, with the [`SignatureChecked`] proof that only the
//! gate can make, `UntrustedToken::into_verified` reads the claims. A `VerifiedToken` has private fields and
//! no public constructor: outside this crate one can only be obtained from verification, and only a
//! `VerifiedToken` carries identity onward.

use core::fmt;

use serde_json::{Map, Value};

use crate::encoding::{decode_b64url, sha256};
use crate::json::parse_strict;
use crate::keys::Algorithm;
use crate::scope::ScopeSet;

/// Why a token was refused. Each variant has a stable reason code.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    Missing {
        header: String,
    },
    Multiple {
        header: String,
    },
    TooLarge {
        bytes: usize,
        max: usize,
    },
    /// Not three dot-separated segments, or an empty one.
    Malformed {
        detail: &'static str,
    },
    /// Five segments: a JWE. Only signed tokens are accepted.
    Encrypted,
    Base64 {
        segment: &'static str,
    },
    Header {
        detail: String,
    },
    /// `typ` missing, not a string, or not in the verifying issuer's `typ` list (default `txntoken+jwt`): an
    /// access or ID token must never pass as a Transaction Token.
    Type {
        found: Option<String>,
        /// The accepted values (empty when refused before an issuer was known: `typ` missing or not a string).
        allowed: Vec<String>,
    },
    AlgNone,
    /// `alg` not supported or not allowed for the key's issuer.
    Algorithm {
        found: String,
    },
    /// `alg` names an algorithm other than the one the selected key is bound to.
    AlgorithmMismatch {
        token: String,
        key: Algorithm,
    },
    Critical {
        names: Vec<String>,
    },
    /// `jku`, `jwk`, `x5u` or `x5c`: keys are never taken from the token.
    EmbeddedKey {
        member: String,
    },
    /// `cty` (nested JWT) or `b64` (unencoded payload).
    Nested {
        member: String,
    },
    KidRequired,
    UnknownKid {
        kid: String,
    },
    AmbiguousKid {
        kid: String,
    },
    /// The issuer's keys are not available (never fetched, or stale past the bound): fail closed.
    KeysUnavailable {
        issuer: String,
    },
    Signature,
    /// Host-verified mode: the host's verifier (Envoy `jwt_authn`) did not attest this very token for this request.
    HostUnverified {
        detail: &'static str,
    },
    Claims {
        detail: String,
    },
    ClaimType {
        claim: &'static str,
        expected: &'static str,
    },
    MissingClaim {
        claim: &'static str,
    },
    /// RFC 8725 §3.8: the token's `iss` is not the one the verifying key's issuer declares (`expected`), or
    /// the token has an `iss` and that issuer declares none (`expected` None).
    Issuer {
        found: Option<String>,
        expected: Option<String>,
    },
    Audience {
        trust_domain: String,
    },
    Expired {
        exp: i64,
        now: i64,
    },
    NotYetValid {
        nbf: i64,
        now: i64,
    },
    IssuedInFuture {
        iat: i64,
        now: i64,
    },
    Lifetime {
        seconds: i128,
        max: i128,
    },
}

impl TokenError {
    /// The stable reason code (audit records, metrics, response bodies).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing { .. } => "token.missing",
            Self::Multiple { .. } => "token.multiple",
            Self::TooLarge { .. } => "token.too_large",
            Self::Malformed { .. } => "token.malformed",
            Self::Encrypted => "token.encrypted",
            Self::Base64 { .. } => "token.base64",
            Self::Header { .. } => "token.header",
            Self::Type { .. } => "token.typ",
            Self::AlgNone => "token.alg_none",
            Self::Algorithm { .. } => "token.alg",
            Self::AlgorithmMismatch { .. } => "token.alg_mismatch",
            Self::Critical { .. } => "token.crit",
            Self::EmbeddedKey { .. } => "token.embedded_key",
            Self::Nested { .. } => "token.nested",
            Self::KidRequired => "token.kid_required",
            Self::UnknownKid { .. } => "token.kid_unknown",
            Self::AmbiguousKid { .. } => "token.kid_ambiguous",
            Self::KeysUnavailable { .. } => "keys.unavailable",
            Self::Signature => "token.signature",
            Self::HostUnverified { .. } => "token.host_unverified",
            Self::Claims { .. } => "token.claims",
            Self::ClaimType { .. } => "token.claim_type",
            Self::MissingClaim { .. } => "token.claim_missing",
            Self::Issuer { .. } => "token.issuer",
            Self::Audience { .. } => "token.audience",
            Self::Expired { .. } => "token.expired",
            Self::NotYetValid { .. } => "token.not_yet_valid",
            Self::IssuedInFuture { .. } => "token.issued_in_future",
            Self::Lifetime { .. } => "token.lifetime",
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { header } => {
                write!(f, "no {header} header: a Transaction Token is required")
            }
            Self::Multiple { header } => {
                write!(f, "more than one {header} header: send exactly one token")
            }
            Self::TooLarge { bytes, max } => {
                write!(f, "token is {bytes} bytes, at most {max} accepted")
            }
            Self::Malformed { detail } => write!(f, "token is not a compact JWS: {detail}"),
            Self::Encrypted => {
                f.write_str("token is a JWE; Transaction Tokens must be signed (JWS) tokens")
            }
            Self::Base64 { segment } => {
                write!(f, "token {segment} is not canonical unpadded base64url")
            }
            Self::Header { detail } => write!(f, "token header: {detail}"),
            Self::Type { found, allowed } => {
                let quoted: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
                let expected = match quoted.as_slice() {
                    [] => "\"txntoken+jwt\"".to_string(),
                    [one] => one.clone(),
                    more => format!("one of {}", more.join(", ")),
                };
                match found {
                    Some(t) => write!(f, "token typ is {t:?}, expected {expected}"),
                    None => write!(f, "token has no typ, expected {expected}"),
                }
            }
            Self::AlgNone => f.write_str("unsigned tokens (alg none) are never accepted"),
            Self::Algorithm { found } => {
                write!(f, "algorithm {found:?} is not accepted for this issuer")
            }
            Self::AlgorithmMismatch { token, key } => {
                write!(f, "token says alg {token:?} but its key is bound to {key}")
            }
            Self::Critical { names } => write!(
                f,
                "unsupported critical header parameters: {}",
                names.join(", ")
            ),
            Self::EmbeddedKey { member } => write!(
                f,
                "header {member:?} is refused: keys come only from configuration"
            ),
            Self::Nested { member } => write!(
                f,
                "header {member:?} is refused: nested or unencoded tokens are not accepted"
            ),
            Self::KidRequired => f.write_str("token has no kid and several keys are configured"),
            Self::UnknownKid { kid } => write!(f, "no configured key has kid {kid:?}"),
            Self::AmbiguousKid { kid } => write!(f, "kid {kid:?} is used by more than one issuer"),
            Self::KeysUnavailable { issuer } => write!(
                f,
                "keys of issuer {issuer:?} are unavailable (not fetched or stale)"
            ),
            Self::Signature => f.write_str("signature does not verify"),
            Self::HostUnverified { detail } => {
                write!(
                    f,
                    "the host did not verify this token's signature: {detail}"
                )
            }
            Self::Claims { detail } => write!(f, "token claims: {detail}"),
            Self::ClaimType { claim, expected } => write!(f, "claim {claim:?} must be {expected}"),
            Self::MissingClaim { claim } => write!(f, "required claim {claim:?} is missing"),
            Self::Issuer {
                found,
                expected: Some(expected),
            } => {
                write!(f, "iss is {found:?}, expected {expected:?}")
            }
            Self::Issuer {
                found,
                expected: None,
            } => write!(
                f,
                "iss is {found:?} but the issuer whose key verified it declares no iss (RFC 8725 section 3.8)"
            ),
            Self::Audience { trust_domain } => {
                write!(f, "aud does not name this trust domain ({trust_domain:?})")
            }
            Self::Expired { exp, now } => write!(f, "token expired at {exp} (now {now})"),
            Self::NotYetValid { nbf, now } => write!(f, "token not valid before {nbf} (now {now})"),
            Self::IssuedInFuture { iat, now } => {
                write!(f, "token issued in the future at {iat} (now {now})")
            }
            Self::Lifetime { seconds, max } => write!(
                f,
                "token lifetime exp - iat is {seconds} s, at most {max} s accepted"
            ),
        }
    }
}

impl std::error::Error for TokenError {}

/// Deepest nesting of a token's claims (and of a host verifier's copy of them).
pub const MAX_CLAIMS_DEPTH: usize = 64;

/// Header parameters txngate understands; anything else is ignored unless listed in `crit`.
const EMBEDDED_KEY_MEMBERS: [&str; 4] = ["jku", "jwk", "x5u", "x5c"];

/// A token whose shape and header passed, not yet its signature.
#[derive(Debug)]
pub struct UntrustedToken<'a> {
    raw: &'a str,
    signing_input: &'a str,
    payload_b64: &'a str,
    signature: Vec<u8>,
    alg: Algorithm,
    kid: Option<String>,
    typ: String,
}

impl<'a> UntrustedToken<'a> {
    pub fn parse(raw: &'a str, max_bytes: usize) -> Result<Self, TokenError> {
        if raw.len() > max_bytes {
            return Err(TokenError::TooLarge {
                bytes: raw.len(),
                max: max_bytes,
            });
        }
        let dots = raw.bytes().filter(|b| *b == b'.').count();
        match dots {
            2 => {}
            4 => return Err(TokenError::Encrypted),
            _ => {
                return Err(TokenError::Malformed {
                    detail: "expected three dot-separated segments",
                })
            }
        }
        let mut parts = raw.splitn(3, '.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed {
                detail: "expected three dot-separated segments",
            });
        };
        if header_b64.is_empty() || payload_b64.is_empty() {
            return Err(TokenError::Malformed {
                detail: "empty header or payload",
            });
        }
        if signature_b64.is_empty() {
            return Err(TokenError::AlgNone);
        }
        let header_bytes =
            decode_b64url(header_b64).ok_or(TokenError::Base64 { segment: "header" })?;
        let signature = decode_b64url(signature_b64).ok_or(TokenError::Base64 {
            segment: "signature",
        })?;
        // The payload is decoded only after the signature verifies; its alphabet is checked now.
        if !payload_b64
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(TokenError::Base64 { segment: "payload" });
        }
        let header = parse_strict(&header_bytes, 8).map_err(|e| TokenError::Header {
            detail: e.to_string(),
        })?;
        let Value::Object(header) = header else {
            return Err(TokenError::Header {
                detail: "not a JSON object".into(),
            });
        };
        let (alg, kid, typ) = check_header(&header)?;
        let signing_input = raw
            .get(..header_b64.len() + 1 + payload_b64.len())
            .unwrap_or_default();
        Ok(Self {
            raw,
            signing_input,
            payload_b64,
            signature,
            alg,
            kid,
            typ,
        })
    }

    /// The header's `typ`, to be checked against the selected key's issuer ([`UntrustedToken::check_type`]).
    pub fn typ(&self) -> &str {
        &self.typ
    }

    /// The issuer-specific part of the header rules: `typ` must be one of `allowed` (media types, see
    /// [`crate::keys::same_media_type`]). Checked once the `kid` selected a key, before its signature.
    pub fn check_type(&self, allowed: &[String]) -> Result<(), TokenError> {
        if allowed
            .iter()
            .any(|a| crate::keys::same_media_type(a, &self.typ))
        {
            return Ok(());
        }
        Err(TokenError::Type {
            found: Some(self.typ.clone()),
            allowed: allowed.to_vec(),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// `BASE64URL(header) || '.' || BASE64URL(payload)`: exactly the bytes that were signed.
    pub fn signing_input(&self) -> &'a str {
        self.signing_input
    }

    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// The payload bytes: to be read only once the signature has verified.
    pub fn payload(&self) -> Result<Vec<u8>, TokenError> {
        decode_b64url(self.payload_b64).ok_or(TokenError::Base64 { segment: "payload" })
    }
}

/// The header rules that need no key: `alg`, `typ` present as a string (its value is checked per issuer),
/// no JWE, no embedded keys, no nesting, no `crit`.
fn check_header(
    header: &Map<String, Value>,
) -> Result<(Algorithm, Option<String>, String), TokenError> {
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg,
        Some(_) => {
            return Err(TokenError::Header {
                detail: "alg must be a string".into(),
            })
        }
        None => {
            return Err(TokenError::Header {
                detail: "alg is missing".into(),
            })
        }
    };
    if alg.eq_ignore_ascii_case("none") {
        return Err(TokenError::AlgNone);
    }
    if header.contains_key("enc") {
        return Err(TokenError::Encrypted);
    }
    let typ = match header.get("typ") {
        Some(Value::String(typ)) => typ.clone(),
        Some(_) => {
            return Err(TokenError::Type {
                found: Some("(not a string)".into()),
                allowed: Vec::new(),
            })
        }
        None => {
            return Err(TokenError::Type {
                found: None,
                allowed: Vec::new(),
            })
        }
    };
    if let Some(member) = EMBEDDED_KEY_MEMBERS
        .into_iter()
        .find(|m| header.contains_key(*m))
    {
        return Err(TokenError::EmbeddedKey {
            member: member.to_string(),
        });
    }
    if let Some(member) = ["cty", "b64"].into_iter().find(|m| header.contains_key(*m)) {
        return Err(TokenError::Nested {
            member: member.to_string(),
        });
    }
    if let Some(crit) = header.get("crit") {
        // txngate implements no extension, so any critical parameter is one it does not understand.
        let names = match crit {
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().unwrap_or("(not a string)").to_string())
                .collect(),
            _ => vec!["(crit is not an array)".to_string()],
        };
        return Err(TokenError::Critical { names });
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => {
            return Err(TokenError::Header {
                detail: "kid must be a string".into(),
            })
        }
    };
    let alg =
        Algorithm::from_name(alg).ok_or_else(|| TokenError::Algorithm { found: alg.clone() })?;
    Ok((alg, kid, typ))
}

/// Claims of a token whose signature verified and whose claims are well-formed. Time is checked separately
/// ([`VerifiedToken::check_time`]) because a cached token is re-checked on every use. Made only by
/// [`UntrustedToken::into_verified`]; read through its getters. Outside the crate, none can be made:
///
/// ```compile_fail
/// use txngate_core::token::VerifiedToken;
/// let forged = VerifiedToken { sub: "admin".into(), ..todo!() };
/// ```
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    claims: Map<String, Value>,
    sub: String,
    txn: String,
    scope: ScopeSet,
    req_wl: String,
    iss: Option<String>,
    iat: i64,
    exp: i64,
    nbf: Option<i64>,
    /// `act.sub` values, outermost (current actor) first.
    act_chain: Vec<String>,
    /// Index of the issuer whose key verified it.
    issuer: usize,
    kid: Option<String>,
    sha256: [u8; 32],
}

/// Proof that one token's signature was checked against the key its `kid` selected: by the core's own
/// crypto, by the host's crypto answering the core's pending signature, or by the host's own verifier (an
/// attestation covering this exact token). Crate-private: only the gate, having had the check, makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignatureChecked {
    /// The signature of the pending check verified (natively or with host crypto).
    Signature,
    /// The host's verifier attested this exact token ([`HostVerified::covers`]).
    HostVerifier,
}

/// Token bounds in the units the request path uses (compiled from the policy's `token` section).
#[derive(Debug, Clone)]
pub struct TokenRules {
    pub header: String,
    pub leeway_ms: i128,
    pub max_lifetime_s: i128,
    pub max_bytes: usize,
    pub cache_entries: usize,
}

/// What a claim check needs to know about the verifying issuer.
#[derive(Debug, Clone, Copy)]
pub struct IssuerContext<'a> {
    pub index: usize,
    pub expected_iss: Option<&'a str>,
}

impl UntrustedToken<'_> {
    /// Reads and checks the claims of this token once its signature was checked (`_checked`, which only the
    /// gate can make). `now_ms` is checked as well.
    pub(crate) fn into_verified(
        self,
        _checked: SignatureChecked,
        issuer: IssuerContext<'_>,
        trust_domain: &str,
        rules: &TokenRules,
        now_ms: u64,
    ) -> Result<VerifiedToken, TokenError> {
        let payload = self.payload()?;
        let claims = match parse_strict(&payload, MAX_CLAIMS_DEPTH) {
            Ok(Value::Object(map)) => map,
            Ok(_) => {
                return Err(TokenError::Claims {
                    detail: "not a JSON object".into(),
                })
            }
            Err(e) => {
                return Err(TokenError::Claims {
                    detail: e.to_string(),
                })
            }
        };
        let iat = numeric_date(&claims, "iat")?.ok_or(TokenError::MissingClaim { claim: "iat" })?;
        let exp = numeric_date(&claims, "exp")?.ok_or(TokenError::MissingClaim { claim: "exp" })?;
        let nbf = numeric_date(&claims, "nbf")?;
        let sub = required_string(&claims, "sub")?;
        let txn = required_string(&claims, "txn")?;
        let req_wl = required_string(&claims, "req_wl")?;
        let scope_text = match claims.get("scope") {
            Some(Value::String(s)) => s,
            Some(_) => {
                return Err(TokenError::ClaimType {
                    claim: "scope",
                    expected: "a space-delimited string",
                })
            }
            None => return Err(TokenError::MissingClaim { claim: "scope" }),
        };
        let scope = ScopeSet::parse_claim(scope_text).map_err(|_| TokenError::ClaimType {
            claim: "scope",
            expected: "a space-delimited string of scopes",
        })?;
        let iss = match claims.get("iss") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(TokenError::ClaimType {
                    claim: "iss",
                    expected: "a string",
                })
            }
        };
        // RFC 8725 §3.8: a token naming an issuer must be verified by that issuer's key. An issuer entry
        // without `iss` vouches for no named issuer, so it accepts only tokens without `iss`.
        if iss.as_deref() != issuer.expected_iss {
            return Err(TokenError::Issuer {
                found: iss,
                expected: issuer.expected_iss.map(str::to_string),
            });
        }
        check_audience(&claims, trust_domain)?;
        // `agentic_ctx`: draft-araut-oauth-transaction-tokens-for-agents (a JSON object when present).
        for claim in ["tctx", "rctx", "agentic_ctx"] {
            if claims.get(claim).is_some_and(|v| !v.is_object()) {
                return Err(TokenError::ClaimType {
                    claim,
                    expected: "an object",
                });
            }
        }
        let act_chain = read_act_chain(&claims)?;
        let lifetime = i128::from(exp) - i128::from(iat);
        if lifetime < 0 || lifetime > rules.max_lifetime_s {
            return Err(TokenError::Lifetime {
                seconds: lifetime,
                max: rules.max_lifetime_s,
            });
        }
        let verified = VerifiedToken {
            claims,
            sub,
            txn,
            scope,
            req_wl,
            iss,
            iat,
            exp,
            nbf,
            act_chain,
            issuer: issuer.index,
            kid: self.kid,
            sha256: sha256(self.raw.as_bytes()),
        };
        verified.check_time(rules, now_ms)?;
        Ok(verified)
    }
}

impl VerifiedToken {
    /// Every claim of the payload.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    pub fn sub(&self) -> &str {
        &self.sub
    }

    pub fn txn(&self) -> &str {
        &self.txn
    }

    pub fn scope(&self) -> &ScopeSet {
        &self.scope
    }

    pub fn req_wl(&self) -> &str {
        &self.req_wl
    }

    pub fn iss(&self) -> Option<&str> {
        self.iss.as_deref()
    }

    pub fn iat(&self) -> i64 {
        self.iat
    }

    pub fn exp(&self) -> i64 {
        self.exp
    }

    pub fn nbf(&self) -> Option<i64> {
        self.nbf
    }

    /// `act.sub` values, outermost (current actor) first.
    pub fn act_chain(&self) -> &[String] {
        &self.act_chain
    }

    /// Index of the issuer whose key verified it.
    pub fn issuer(&self) -> usize {
        self.issuer
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// SHA-256 of the raw token (the cache's key).
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    /// `exp`, `nbf` and `iat` against `now` with the policy's leeway.
    pub fn check_time(&self, rules: &TokenRules, now_ms: u64) -> Result<(), TokenError> {
        let now = i128::from(now_ms);
        let now_s = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        if now >= i128::from(self.exp) * 1000 + rules.leeway_ms {
            return Err(TokenError::Expired {
                exp: self.exp,
                now: now_s,
            });
        }
        if let Some(nbf) = self.nbf {
            if now + rules.leeway_ms < i128::from(nbf) * 1000 {
                return Err(TokenError::NotYetValid { nbf, now: now_s });
            }
        }
        if now + rules.leeway_ms < i128::from(self.iat) * 1000 {
            return Err(TokenError::IssuedInFuture {
                iat: self.iat,
                now: now_s,
            });
        }
        Ok(())
    }

    /// `exp` in milliseconds plus leeway: when a cached copy must be dropped.
    pub fn valid_until_ms(&self, rules: &TokenRules) -> i128 {
        i128::from(self.exp) * 1000 + rules.leeway_ms
    }

    pub fn sha256_hex(&self) -> String {
        crate::encoding::hex_lower(&self.sha256)
    }
}

/// NumericDate (RFC 7519 §2): a JSON number of seconds; fractions are floored. Strings are refused.
fn numeric_date(
    claims: &Map<String, Value>,
    claim: &'static str,
) -> Result<Option<i64>, TokenError> {
    numeric_date_claim(claims, claim).map_err(|()| TokenError::ClaimType {
        claim,
        expected: "a number of seconds since the epoch (NumericDate)",
    })
}

/// A NumericDate claim, absent or read as whole seconds (fractions floored); `Err` when it is not a
/// number in range. Shared by the Txn-Token and the WIMSE readers, which word the error their own way.
pub(crate) fn numeric_date_claim(
    claims: &Map<String, Value>,
    claim: &str,
) -> Result<Option<i64>, ()> {
    match claims.get(claim) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                return Ok(Some(i));
            }
            match n.as_f64() {
                Some(f) if f.is_finite() && (-9.2e18..=9.2e18).contains(&f) => {
                    #[allow(clippy::cast_possible_truncation)]
                    let floored = f.floor() as i64;
                    Ok(Some(floored))
                }
                _ => Err(()),
            }
        }
        Some(_) => Err(()),
    }
}

fn required_string(claims: &Map<String, Value>, claim: &'static str) -> Result<String, TokenError> {
    match claims.get(claim) {
        Some(Value::String(s)) if is_identity(s) => Ok(s.clone()),
        Some(Value::String(_)) => Err(TokenError::ClaimType {
            claim,
            expected: "a non-empty string without control characters",
        }),
        Some(_) => Err(TokenError::ClaimType {
            claim,
            expected: "a string",
        }),
        None => Err(TokenError::MissingClaim { claim }),
    }
}

fn check_audience(claims: &Map<String, Value>, trust_domain: &str) -> Result<(), TokenError> {
    let refused = || TokenError::Audience {
        trust_domain: trust_domain.to_string(),
    };
    match claims.get("aud") {
        None => Err(TokenError::MissingClaim { claim: "aud" }),
        Some(Value::String(aud)) => (aud == trust_domain).then_some(()).ok_or_else(refused),
        Some(Value::Array(items)) => {
            if items.iter().any(|i| !i.is_string()) {
                return Err(TokenError::ClaimType {
                    claim: "aud",
                    expected: "a string or an array of strings",
                });
            }
            items
                .iter()
                .any(|i| i.as_str() == Some(trust_domain))
                .then_some(())
                .ok_or_else(refused)
        }
        Some(_) => Err(TokenError::ClaimType {
            claim: "aud",
            expected: "a string or an array of strings",
        }),
    }
}

/// Identity claims end up in upstream headers and logs: no empty values, no control characters (CR/LF
/// would split a header), bounded length.
fn is_identity(s: &str) -> bool {
    !s.is_empty() && s.len() <= 1024 && !s.chars().any(char::is_control)
}

/// `act` nests outermost-first: `{"sub": current, "act": {"sub": previous, ...}}` (RFC 8693 §4.1).
fn read_act_chain(claims: &Map<String, Value>) -> Result<Vec<String>, TokenError> {
    let mut chain = Vec::new();
    let mut next = claims.get("act");
    while let Some(act) = next {
        let Value::Object(act) = act else {
            return Err(TokenError::ClaimType {
                claim: "act",
                expected: "an object with a string sub",
            });
        };
        match act.get("sub") {
            Some(Value::String(sub)) if is_identity(sub) => chain.push(sub.clone()),
            _ => {
                return Err(TokenError::ClaimType {
                    claim: "act.sub",
                    expected: "a non-empty string without control characters",
                })
            }
        }
        next = act.get("act");
    }
    Ok(chain)
}

/// A host's attestation that its own verifier checked the signature of one exact token (host-verified mode: Envoy's
/// `jwt_authn` verifies, txngate applies every other rule). It can only be made by comparing the claims the
/// host's verifier published for this request with the token's own payload, so a host that did not verify
/// (filter missing, rule not matching, token read from another header) can never produce one: the gate then
/// fails closed. It binds to the token by hash, so it cannot be reused for another token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVerified {
    token_sha256: [u8; 32],
}

impl HostVerified {
    /// Attests `raw` (the token header value as the gate will read it) if `verified_claims` (the payload the
    /// host's verifier published, numbers as JSON numbers in any form) equals its payload claim for claim:
    /// same members, same strings, same numbers (compared as f64, as protobuf `Struct` carries them), same
    /// nesting. `None` (the verifier published nothing) and any difference fail.
    pub fn attest(
        raw: &str,
        max_bytes: usize,
        verified_claims: Option<&Value>,
    ) -> Result<Self, TokenError> {
        let Some(verified) = verified_claims else {
            return Err(TokenError::HostUnverified {
                detail: "no verified payload for this request (did jwt_authn run and accept it?)",
            });
        };
        let raw = raw.trim_matches([' ', '\t']);
        let untrusted = UntrustedToken::parse(raw, max_bytes)?;
        let payload = untrusted.payload()?;
        let claims = parse_strict(&payload, MAX_CLAIMS_DEPTH).map_err(|e| TokenError::Claims {
            detail: e.to_string(),
        })?;
        if !same_claims(&claims, verified) {
            return Err(TokenError::HostUnverified {
                detail: "the verified payload is not this token's payload",
            });
        }
        Ok(Self {
            token_sha256: sha256(raw.as_bytes()),
        })
    }

    /// Whether this attestation is for the token whose SHA-256 is `token_sha256`.
    pub fn covers(&self, token_sha256: &[u8; 32]) -> bool {
        self.token_sha256 == *token_sha256
    }
}

/// JSON equality with numbers compared as f64 (what a protobuf `Struct` keeps of them).
fn same_claims(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x.to_bits() == y.to_bits() || x == y,
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_claims(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_claims(v, w)))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::encode_b64url;
    use proptest::prelude::*;
    use serde_json::json;

    fn token_with_header(header: &Value) -> String {
        format!(
            "{}.{}.{}",
            encode_b64url(&serde_json::to_vec(header).unwrap()),
            encode_b64url(b"{}"),
            encode_b64url(&[7u8; 64])
        )
    }

    fn parse_header(header: Value) -> Result<(), TokenError> {
        let t = token_with_header(&header);
        UntrustedToken::parse(&t, 8192).map(|_| ())
    }

    #[test]
    fn size_is_checked_before_anything() {
        let huge = ".".repeat(1_000_000);
        assert_eq!(
            UntrustedToken::parse(&huge, 8192).unwrap_err(),
            TokenError::TooLarge {
                bytes: 1_000_000,
                max: 8192
            }
        );
    }

    #[test]
    fn segments() {
        assert_eq!(
            UntrustedToken::parse("a.b", 100).unwrap_err().reason(),
            "token.malformed"
        );
        assert_eq!(
            UntrustedToken::parse("a.b.c.d.e", 100).unwrap_err(),
            TokenError::Encrypted
        );
        assert_eq!(
            UntrustedToken::parse("..", 100).unwrap_err().reason(),
            "token.malformed"
        );
        let t = token_with_header(&json!({"alg":"EdDSA","typ":"txntoken+jwt"}));
        let unsigned = format!("{}.", t.rsplit_once('.').unwrap().0);
        assert_eq!(
            UntrustedToken::parse(&unsigned, 8192).unwrap_err(),
            TokenError::AlgNone
        );
        let padded = format!("{t}==");
        assert_eq!(
            UntrustedToken::parse(&padded, 8192).unwrap_err().reason(),
            "token.base64"
        );
        let spaced = t.replacen('.', " .", 1);
        assert_eq!(
            UntrustedToken::parse(&spaced, 8192).unwrap_err().reason(),
            "token.base64"
        );
    }

    #[test]
    fn header_rules() {
        let ok = json!({"alg":"EdDSA","typ":"txntoken+jwt","kid":"k"});
        assert!(parse_header(ok).is_ok());
        assert!(parse_header(json!({"alg":"EdDSA","typ":"application/TxnToken+JWT"})).is_ok());
        for (header, reason) in [
            (json!({"alg":"none","typ":"txntoken+jwt"}), "token.alg_none"),
            (json!({"alg":"NoNe","typ":"txntoken+jwt"}), "token.alg_none"),
            (json!({"alg":"HS256","typ":"txntoken+jwt"}), "token.alg"),
            (json!({"alg":"es256","typ":"txntoken+jwt"}), "token.alg"),
            (json!({"typ":"txntoken+jwt"}), "token.header"),
            (json!({"alg":"EdDSA"}), "token.typ"),
            (json!({"alg":"EdDSA","typ":7}), "token.typ"),
            (
                json!({"alg":"EdDSA","typ":"txntoken+jwt","crit":["exp"]}),
                "token.crit",
            ),
            (
                json!({"alg":"EdDSA","typ":"txntoken+jwt","jku":"https://evil"}),
                "token.embedded_key",
            ),
            (
                json!({"alg":"EdDSA","typ":"txntoken+jwt","jwk":{}}),
                "token.embedded_key",
            ),
            (
                json!({"alg":"EdDSA","typ":"txntoken+jwt","x5u":"https://evil"}),
                "token.embedded_key",
            ),
            (
                json!({"alg":"EdDSA","typ":"txntoken+jwt","x5c":["AA"]}),
                "token.embedded_key",
            ),
            (
                json!({"alg":"EdDSA","typ":"txntoken+jwt","cty":"JWT"}),
                "token.nested",
            ),
            (
                json!({"alg":"EdDSA","typ":"txntoken+jwt","enc":"A256GCM"}),
                "token.encrypted",
            ),
            (
                json!({"alg":"EdDSA","typ":"txntoken+jwt","kid":7}),
                "token.header",
            ),
            (json!(["alg"]), "token.header"),
        ] {
            assert_eq!(
                parse_header(header.clone()).unwrap_err().reason(),
                reason,
                "{header}"
            );
        }
    }

    /// The `typ` value is checked against the selected key's issuer: the default list is exactly
    /// `txntoken+jwt`; an issuer may accept a legacy value deliberately, and nothing else.
    #[test]
    fn typ_is_checked_per_issuer() {
        let default = vec!["txntoken+jwt".to_string()];
        let legacy = vec!["txntoken+jwt".to_string(), "txn_token".to_string()];
        let typed = |typ: &str| token_with_header(&json!({"alg":"EdDSA","typ":typ}));
        for (typ, allowed, ok) in [
            ("txntoken+jwt", &default, true),
            ("application/TxnToken+JWT", &default, true),
            ("JWT", &default, false),
            ("at+jwt", &default, false),
            ("txn_token", &default, false),
            ("txn_token", &legacy, true),
            ("application/TXN_TOKEN", &legacy, true),
            ("txn_token ", &legacy, false),
            ("", &legacy, false),
        ] {
            let raw = typed(typ);
            let token = UntrustedToken::parse(&raw, 8192).unwrap();
            assert_eq!(token.typ(), typ);
            let result = token.check_type(allowed);
            assert_eq!(result.is_ok(), ok, "{typ:?} against {allowed:?}");
            if let Err(e) = result {
                assert_eq!(e.reason(), "token.typ");
                assert!(e.to_string().contains("txntoken+jwt"), "{e}");
            }
        }
    }

    #[test]
    fn duplicate_header_members_are_refused() {
        let header = br#"{"alg":"EdDSA","typ":"txntoken+jwt","alg":"none"}"#;
        let t = format!(
            "{}.{}.{}",
            encode_b64url(header),
            encode_b64url(b"{}"),
            encode_b64url(&[1; 64])
        );
        assert_eq!(
            UntrustedToken::parse(&t, 8192).unwrap_err().reason(),
            "token.header"
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(raw in "[A-Za-z0-9_.=+/ -]{0,200}") {
            let _ = UntrustedToken::parse(&raw, 8192);
        }

        #[test]
        fn parse_never_panics_on_any_header(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let t = format!("{}.e30.{}", encode_b64url(&bytes), encode_b64url(&[0; 64]));
            let _ = UntrustedToken::parse(&t, 8192);
        }
    }
}

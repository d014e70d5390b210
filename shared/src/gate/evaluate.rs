//! Evaluating the token: gathering the request, reading and verifying the token, resuming a signature.

use std::sync::Arc;

use crate::audit::AuditRecord;
use crate::keys::KeyLookup;
use crate::mcp::{self, McpError};
use crate::token::{HostVerified, IssuerContext, SignatureChecked, TokenError, UntrustedToken};
use crate::wimse::SignedJwt;

use super::pending::Signed;
use super::*;

impl Gate {
    /// `None` when the attestation covers the token hashed `hash`, else why not.
    pub(super) fn attestation_error(
        attestation: &Result<HostVerified, TokenError>,
        hash: &[u8; 32],
    ) -> Option<TokenError> {
        match attestation {
            Ok(a) if a.covers(hash) => None,
            Ok(_) => Some(TokenError::HostUnverified {
                detail: "the attestation is for another token",
            }),
            Err(e) => Some(e.clone()),
        }
    }

    pub(super) fn evaluate_token(
        &mut self,
        mut ev: Evaluation,
        request: &Request<'_>,
        now_ms: u64,
        verification: Verification<'_>,
    ) -> Step {
        let host = match verification {
            Verification::Core => None,
            Verification::Host(attestation) => Some(attestation),
        };
        let raw = match self.token_header(request) {
            Ok(raw) => raw,
            Err(e) => return self.deny_token(ev, &e),
        };
        let within_cap = raw.len() <= self.policy.token.max_bytes;
        // The cache first, keyed by the raw token (its SHA-256 comes with the entry): only tokens that parsed
        // (and verified) are in it, and parsing is a pure function of the raw bytes, so a hit skips re-parsing
        // its header with the same outcome.
        if within_cap {
            if let Some((token, hex)) = self.cache.get(raw, now_ms, self.keys.generation()) {
                // A cached token is only as good as its issuer's keys: stale keys fail closed for it too.
                if self.keys.is_usable(token.issuer(), now_ms) {
                    ev.audit.token_sha256 = Some(hex);
                    // Host-verified: the host's verifier must have run for this request too, cached or not.
                    if let Some(e) = host.and_then(|a| Self::attestation_error(a, token.sha256())) {
                        return self.deny_token(ev, &e);
                    }
                    ev.audit.cached = true;
                    return self.authorize(ev, token);
                }
            }
        }
        // Hashed as soon as it is within the size cap, so refused tokens can be correlated too (never logged).
        let hash = within_cap.then(|| {
            let (hash, hex) = self.hashes.sha256(raw);
            ev.audit.token_sha256 = Some(hex);
            hash
        });
        let untrusted = match UntrustedToken::parse(raw, self.policy.token.max_bytes) {
            Ok(t) => t,
            Err(e) => return self.deny_token(ev, &e),
        };
        let Some(hash) = hash else {
            return self.deny_token(
                ev,
                &TokenError::TooLarge {
                    bytes: raw.len(),
                    max: self.policy.token.max_bytes,
                },
            );
        };
        let (issuer, key) = match self.keys.lookup(untrusted.kid(), now_ms) {
            KeyLookup::Found { issuer, key } => (issuer, key.clone()),
            KeyLookup::UnknownKid { refetch } => {
                ev.refetch = refetch
                    .into_iter()
                    .find(|i| self.keys.claim_refetch(*i, now_ms));
                let kid = untrusted.kid().unwrap_or_default().to_string();
                return self.deny_token(ev, &TokenError::UnknownKid { kid });
            }
            KeyLookup::KidRequired => return self.deny_token(ev, &TokenError::KidRequired),
            KeyLookup::AmbiguousKid => {
                let kid = untrusted.kid().unwrap_or_default().to_string();
                return self.deny_token(ev, &TokenError::AmbiguousKid { kid });
            }
            KeyLookup::Unavailable { issuer } => {
                if self.keys.claim_refetch(issuer, now_ms) {
                    ev.refetch = Some(issuer);
                }
                let name = self
                    .keys
                    .issuer(issuer)
                    .map(|i| i.name.clone())
                    .unwrap_or_default();
                return self.deny_token(ev, &TokenError::KeysUnavailable { issuer: name });
            }
        };
        if untrusted.algorithm() != key.algorithm() {
            let e = TokenError::AlgorithmMismatch {
                token: untrusted.algorithm().name().into(),
                key: key.algorithm(),
            };
            return self.deny_token(ev, &e);
        }
        // The `typ` allow-list is the selected key's issuer's (default exactly `txntoken+jwt`).
        let allowed_typ = self
            .keys
            .issuer(issuer)
            .map_or(&[][..], |i| i.typ.as_slice());
        if let Err(e) = untrusted.check_type(allowed_typ) {
            return self.deny_token(ev, &e);
        }
        ev.audit.issuer = self.keys.issuer(issuer).map(|i| i.name.clone());
        match host {
            None => Step::VerifySignature(Box::new(PendingSignature {
                ev,
                jwt: SignedJwt::new(raw, &untrusted, key),
                signed: Signed::TxnToken { issuer },
            })),
            Some(attestation) => match Self::attestation_error(attestation, &hash) {
                None => self.verified_token(ev, untrusted, issuer, SignatureChecked::HostVerifier),
                Some(e) => self.deny_token(ev, &e),
            },
        }
    }

    /// Continues after the host checked a signature (`valid`: it verified with the pending key).
    pub fn resume_signature(&mut self, pending: PendingSignature, valid: bool) -> Step {
        if pending.is_workload_proof() {
            return self.resume_proof(pending, valid);
        }
        let PendingSignature { ev, jwt, signed } = pending;
        if !valid {
            return self.deny_token(ev, &TokenError::Signature);
        }
        match signed {
            Signed::TxnToken { issuer } => {
                match UntrustedToken::parse(jwt.raw(), self.policy.token.max_bytes) {
                    Ok(untrusted) => {
                        self.verified_token(ev, untrusted, issuer, SignatureChecked::Signature)
                    }
                    Err(e) => self.deny_token(ev, &e),
                }
            }
            // Resumed by `resume_proof` above; never here.
            Signed::WorkloadProof => Step::Done(Box::new(self.internal_error(ev))),
        }
    }

    /// A Txn-Token whose signature was checked: its claims read and checked, the token cached, the call
    /// authorized.
    fn verified_token(
        &mut self,
        ev: Evaluation,
        untrusted: UntrustedToken<'_>,
        issuer: usize,
        checked: SignatureChecked,
    ) -> Step {
        let raw = untrusted.raw();
        let expected_iss = self.keys.issuer(issuer).and_then(|i| i.iss.as_deref());
        let issuer_ctx = IssuerContext {
            index: issuer,
            expected_iss,
        };
        let verified = untrusted.into_verified(
            checked,
            issuer_ctx,
            &self.policy.trust_domain,
            &self.policy.token,
            ev.now_ms,
        );
        match verified {
            Ok(token) => {
                let token = Arc::new(token);
                let until = token.valid_until_ms(&self.policy.token);
                self.cache
                    .insert(raw, Arc::clone(&token), until, self.keys.generation());
                self.authorize(ev, token)
            }
            Err(e) => self.deny_token(ev, &e),
        }
    }

    pub(super) fn gather(&self, request: &Request<'_>, now_ms: u64) -> Evaluation {
        let path = request.path.split(['?', '#']).next().unwrap_or("");
        let mut audit = AuditRecord::new(now_ms, request.method, path);
        audit.peer = request.peer.map(str::to_string);
        let is_mcp = self.is_mcp_path(request.path);
        // The header stage reads no body: what it would be checked against comes in the full decision.
        let held = request.body == Body::Held;
        let message = if self.needs_body(request.method, request.path) && !held {
            let max = self.policy.mcp.max_body_bytes;
            Some(match request.body {
                Body::Absent | Body::Held => Err(McpError::BodyMissing.into()),
                Body::TooLarge => Err(McpError::TooLarge { max }.into()),
                Body::Complete([]) => Err(McpError::BodyMissing.into()),
                Body::Complete(bytes) => {
                    mcp::parse_request(bytes, max, self.policy.mcp.max_json_depth)
                }
            })
        } else {
            None
        };
        // The id is kept even when the body's content was refused: the error answers it.
        let rpc_id = match &message {
            Some(Ok(m)) => m.id.clone(),
            Some(Err(refusal)) => refusal.id.clone(),
            None => None,
        };
        let message = message.map(|m| m.map_err(|refusal| refusal.error));
        // What was attempted is audited even when the token or the body is refused.
        audit.rpc_id = rpc_id.clone();
        if let Some(Ok(m)) = &message {
            audit.rpc_method = m.method.clone();
        }
        let routing = if is_mcp {
            mcp::RoutingHeaders::from_pairs(
                request
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
        } else {
            mcp::RoutingHeaders::default()
        };
        Evaluation {
            now_ms,
            peer: request.peer.map(str::to_string),
            is_mcp,
            rpc_id,
            routing,
            message,
            audit,
            refetch: None,
            rpc_code: None,
            wimse: self.gather_proof(request),
        }
    }

    pub(super) fn token_header<'r>(&self, request: &Request<'r>) -> Result<&'r str, TokenError> {
        let name = self.policy.token.header.as_str();
        let mut found = request
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name));
        let first = found.next().ok_or_else(|| TokenError::Missing {
            header: name.to_string(),
        })?;
        // A JWS never contains a comma: one means two values joined by an intermediary (as fetch does).
        if found.next().is_some() || first.1.contains(',') {
            return Err(TokenError::Multiple {
                header: name.to_string(),
            });
        }
        Ok(first.1.trim_matches([' ', '\t']))
    }
}

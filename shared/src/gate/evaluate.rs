//! Evaluating the token: gathering the request, reading and verifying the token, resuming a signature.

use std::sync::Arc;

use crate::audit::AuditRecord;
use crate::keys::KeyLookup;
use crate::mcp::{self, McpError};
use crate::token::{HostVerified, IssuerContext, TokenError, UntrustedToken, VerifiedToken};

use super::*;

impl Gate {
    /// The header stage of a request whose body the host holds back until it has all of it, for hosts that
    /// must let the request headers go on before the body arrives (Envoy without
    /// `allow_on_headers_stop_iteration`, e.g. under Istio's `WasmPlugin`). Checks what needs no body —
    /// the token (signature with the core's crypto, or `attestation` in hybrid mode), its delegation chain
    /// and the peer binding — exactly as [`Gate::decide`] would, and nothing else: no tool is authorized and
    /// no rate limit is consumed.
    ///
    /// Denied: the refusal to send. Allowed: the verified identity headers (`upstream_headers`) the host may
    /// set on the headers it lets go; this is NOT a decision about the request, and the host must still call
    /// [`Gate::decide`] (or [`Gate::decide_host_verified`]) with the whole body before releasing any of it.
    pub fn verify_identity(
        &mut self,
        request: &Request<'_>,
        now_ms: u64,
        attestation: Option<&Result<HostVerified, TokenError>>,
    ) -> Outcome {
        let mut ctx = self.gather(request, now_ms);
        // What the body would be checked against comes later, in the full decision.
        ctx.message = None;
        ctx.rpc_id = None;
        let mut step = self.evaluate_token(ctx, request, now_ms, attestation);
        loop {
            step = match step {
                Step::Done(outcome) => return *outcome,
                Step::VerifySignature(pending) => {
                    // In hybrid mode the host's verifier must have covered the token: never checked here.
                    let valid = attestation.is_none() && pending.verify_native();
                    self.resume_signature(*pending, valid)
                }
                // Not produced without a message; if it were, nothing may pass on it.
                Step::ConsultLimiter(pending) => {
                    return self.deny(
                        pending.ctx,
                        500,
                        "gate.internal",
                        "the header stage asked for a rate limit",
                        Vec::new(),
                    )
                }
            }
        }
    }

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
        mut ctx: Context,
        request: &Request<'_>,
        now_ms: u64,
        host: Option<&Result<HostVerified, TokenError>>,
    ) -> Step {
        let raw = match self.token_header(request) {
            Ok(raw) => raw,
            Err(e) => return self.deny_token(ctx, &e),
        };
        // Hashed as soon as it is within the size cap, so refused tokens can be correlated too (never logged).
        let hash = (raw.len() <= self.policy.token.max_bytes).then(|| {
            let (hash, hex) = self.hashes.sha256(raw);
            ctx.audit.token_sha256 = Some(hex);
            hash
        });
        // The cache first: only tokens that parsed (and verified) are in it, and parsing is a pure function
        // of the raw bytes, so a hit skips re-parsing its header with the same outcome.
        if let Some(hash) = &hash {
            if let Some(token) = self.cache.get(hash, now_ms, self.keys.generation()) {
                // A cached token is only as good as its issuer's keys: stale keys fail closed for it too.
                if self.keys.is_usable(token.issuer, now_ms) {
                    // Hybrid: the host's verifier must have run for this request too, cached or not.
                    if let Some(e) = host.and_then(|a| Self::attestation_error(a, hash)) {
                        return self.deny_token(ctx, &e);
                    }
                    ctx.audit.cached = true;
                    return self.authorize(ctx, token);
                }
            }
        }
        let untrusted = match UntrustedToken::parse(raw, self.policy.token.max_bytes) {
            Ok(t) => t,
            Err(e) => return self.deny_token(ctx, &e),
        };
        let Some(hash) = hash else {
            return self.deny_token(
                ctx,
                &TokenError::TooLarge {
                    bytes: raw.len(),
                    max: self.policy.token.max_bytes,
                },
            );
        };
        let (issuer, key) = match self.keys.lookup(untrusted.kid(), now_ms) {
            KeyLookup::Found { issuer, key } => (issuer, key.clone()),
            KeyLookup::UnknownKid { refetch } => {
                ctx.refetch = refetch
                    .into_iter()
                    .find(|i| self.keys.claim_refetch(*i, now_ms));
                let kid = untrusted.kid().unwrap_or_default().to_string();
                return self.deny_token(ctx, &TokenError::UnknownKid { kid });
            }
            KeyLookup::KidRequired => return self.deny_token(ctx, &TokenError::KidRequired),
            KeyLookup::AmbiguousKid => {
                let kid = untrusted.kid().unwrap_or_default().to_string();
                return self.deny_token(ctx, &TokenError::AmbiguousKid { kid });
            }
            KeyLookup::Unavailable { issuer } => {
                if self.keys.claim_refetch(issuer, now_ms) {
                    ctx.refetch = Some(issuer);
                }
                let name = self
                    .keys
                    .issuer(issuer)
                    .map(|i| i.name.clone())
                    .unwrap_or_default();
                return self.deny_token(ctx, &TokenError::KeysUnavailable { issuer: name });
            }
        };
        if untrusted.algorithm() != key.algorithm() {
            let e = TokenError::AlgorithmMismatch {
                token: untrusted.algorithm().name().into(),
                key: key.algorithm(),
            };
            return self.deny_token(ctx, &e);
        }
        // The `typ` allow-list is the selected key's issuer's (default exactly `txntoken+jwt`).
        let allowed_typ = self
            .keys
            .issuer(issuer)
            .map_or(&[][..], |i| i.typ.as_slice());
        if let Err(e) = untrusted.check_type(allowed_typ) {
            return self.deny_token(ctx, &e);
        }
        ctx.audit.issuer = self.keys.issuer(issuer).map(|i| i.name.clone());
        let pending = PendingSignature {
            ctx,
            raw: raw.to_string(),
            signing_input_len: untrusted.signing_input().len(),
            signature: untrusted.signature().to_vec(),
            issuer,
            key,
        };
        match host {
            None => Step::VerifySignature(Box::new(pending)),
            Some(attestation) => match Self::attestation_error(attestation, &hash) {
                None => self.resume_signature(pending, true),
                Some(e) => self.deny_token(pending.ctx, &e),
            },
        }
    }

    /// Continues after the host checked a signature.
    pub fn resume_signature(&mut self, pending: PendingSignature, valid: bool) -> Step {
        let PendingSignature {
            ctx, raw, issuer, ..
        } = pending;
        if !valid {
            return self.deny_token(ctx, &TokenError::Signature);
        }
        let max = self.policy.token.max_bytes;
        let verified = UntrustedToken::parse(&raw, max).and_then(|untrusted| {
            let payload = untrusted.payload()?;
            let expected_iss = self.keys.issuer(issuer).and_then(|i| i.iss.as_deref());
            let issuer_ctx = IssuerContext {
                index: issuer,
                expected_iss,
            };
            VerifiedToken::from_payload(
                &payload,
                &untrusted,
                issuer_ctx,
                &self.policy.trust_domain,
                &self.policy.token,
                ctx.now_ms,
            )
        });
        match verified {
            Ok(token) => {
                let token = Arc::new(token);
                let until = token.valid_until_ms(&self.policy.token);
                self.cache
                    .insert(Arc::clone(&token), until, self.keys.generation());
                self.authorize(ctx, token)
            }
            Err(e) => self.deny_token(ctx, &e),
        }
    }

    pub(super) fn gather(&self, request: &Request<'_>, now_ms: u64) -> Context {
        let path = request.path.split(['?', '#']).next().unwrap_or("");
        let mut audit = AuditRecord::new(now_ms, request.method, path);
        audit.peer = request.peer.map(str::to_string);
        let is_mcp = self.is_mcp_path(request.path);
        let message = if self.needs_body(request.method, request.path) {
            let max = self.policy.mcp.max_body_bytes;
            Some(match request.body {
                Body::Absent => Err(McpError::BodyMissing.into()),
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
        Context {
            now_ms,
            peer: request.peer.map(str::to_string),
            is_mcp,
            rpc_id,
            routing,
            message,
            audit,
            refetch: None,
            rpc_code: None,
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

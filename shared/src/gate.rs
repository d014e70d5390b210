//! The gate: one request in, one `Decision` and one `AuditRecord` out. Sans-IO: where a host must act (check
//! a signature with its own crypto, consult a global limiter), `evaluate` returns a step holding everything
//! needed, and the host resumes the gate with the result. Hosts with synchronous means use [`Gate::decide`].

use std::sync::Arc;

use serde_json::{json, Value};

use crate::audit::{AuditRecord, LimitAudit};
use crate::authorization::{self, ToolError};
use crate::cache::{HashMemo, TokenCache};
use crate::delegation::{self, Delegation, DelegationError};
use crate::encoding::sha256_hex;
use crate::json::canonical;
use crate::keys::{Algorithm, KeyError, KeyLookup, KeyRing, PublicKey, SkippedKey};
use crate::mcp::{self, McpError, McpMessage};
use crate::policy::{ArgumentsAudit, Mode, Policy, PolicyError, StoreErrorPolicy, ToolLimit};
use crate::ratelimit::{self, LimitRule, LimitState, RateLimitStore, SlotTable, StoreError};
use crate::scope::ScopeSet;
use crate::token::{HostVerified, IssuerContext, TokenError, UntrustedToken, VerifiedToken};

/// The request as the host saw it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// Path and query as received.
    pub path: &'a str,
    /// All request headers; names compared case-insensitively, repeated names kept.
    pub headers: &'a [(String, String)],
    pub body: Body<'a>,
    /// The peer's verified identity (mTLS SPIFFE ID), if the host knows it.
    pub peer: Option<&'a str>,
}

/// The request body as far as the host read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body<'a> {
    Absent,
    Complete(&'a [u8]),
    /// Longer than the policy's `mcp.max_body_bytes`; the host stopped reading.
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

/// What the host must do.
#[derive(Debug, Clone)]
pub struct Decision {
    pub verdict: Verdict,
    /// The status of the local reply when denied (200 when allowed).
    pub status: u16,
    /// Stable reason code: `allow`, `allow.dry_run`, `token.expired`, `tool.scope`, ...
    pub reason: &'static str,
    /// Denied: headers of the local reply. Allowed: headers to add to the upstream's response.
    pub response_headers: Vec<(String, String)>,
    /// Denied: the local reply body (a JSON-RPC error for MCP requests).
    pub body: Option<String>,
    /// Allowed: verified identity headers to set on the upstream request (after stripping every client-sent
    /// header that starts with [`IDENTITY_HEADER_PREFIX`]).
    pub upstream_headers: Vec<(String, String)>,
    /// Allowed `tools/list`: filter the response with this.
    pub tools_list: Option<ToolsListFilter>,
}

/// Identity headers txngate sets; clients may never send their own.
pub const IDENTITY_HEADER_PREFIX: &str = "x-txngate-";

impl Decision {
    pub fn is_allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }
}

/// True for request headers a host must remove before forwarding.
pub fn is_identity_header(name: &str) -> bool {
    name.get(..IDENTITY_HEADER_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(IDENTITY_HEADER_PREFIX))
}

/// Filters a `tools/list` response down to what the caller may call.
#[derive(Debug, Clone)]
pub struct ToolsListFilter {
    policy: Arc<Policy>,
    effective: ScopeSet,
}

impl ToolsListFilter {
    pub fn is_visible(&self, tool: &str) -> bool {
        authorization::is_visible(&self.policy, &self.effective, tool)
    }

    /// Filters a complete response body (`application/json` or `text/event-stream`).
    pub fn apply(&self, content_type: &str, body: &[u8]) -> Result<Vec<u8>, McpError> {
        mcp::filter_tools_list(content_type, body, &|name| self.is_visible(name))
    }
}

/// The result of one decision.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub decision: Decision,
    pub audit: AuditRecord,
    /// An issuer whose JWKS the host should refetch now (unknown `kid`; already debounced).
    pub refetch_issuer: Option<usize>,
}

/// Where the evaluation stands.
#[derive(Debug)]
pub enum Step {
    Done(Box<Outcome>),
    /// Check this signature (natively or with host crypto), then call [`Gate::resume_signature`].
    VerifySignature(Box<PendingSignature>),
    /// Run this limit against the host's store, then call [`Gate::resume_limit`].
    ConsultLimiter(Box<PendingLimit>),
}

/// A signature the host must check.
#[derive(Debug)]
pub struct PendingSignature {
    ctx: Context,
    raw: String,
    signing_input_len: usize,
    signature: Vec<u8>,
    issuer: usize,
    key: PublicKey,
}

impl PendingSignature {
    pub fn algorithm(&self) -> Algorithm {
        self.key.algorithm()
    }

    /// The exact signed bytes.
    pub fn signing_input(&self) -> &[u8] {
        self.raw
            .as_bytes()
            .get(..self.signing_input_len)
            .unwrap_or_default()
    }

    /// The signature as JWS carries it (raw r‖s for ES256, which is also WebCrypto's format).
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    /// The configured key the token's `kid` selected (never a key from the token).
    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    /// Verifies with the core's own implementation (jwt-compact).
    pub fn verify_native(&self) -> bool {
        self.key.verify(self.signing_input(), &self.signature)
    }
}

/// A rate limit the host must consult.
#[derive(Debug)]
pub struct PendingLimit {
    ctx: Context,
    token: Arc<VerifiedToken>,
    delegation: Delegation,
    key: String,
    limit: ToolLimit,
    tool: String,
    visible_filter: bool,
}

impl PendingLimit {
    /// The bucket's store key.
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn rule(&self) -> &LimitRule {
        &self.limit.rule
    }

    pub fn tool(&self) -> &str {
        &self.tool
    }

    pub fn now_ms(&self) -> u64 {
        self.ctx.now_ms
    }

    /// The rule's remote limit, when the rate limit service counts it ([`crate::rls`]).
    pub fn remote(&self) -> Option<&crate::rls::RemoteLimit> {
        self.limit.remote.as_ref()
    }

    /// The `ShouldRateLimit` request for this call (None for a local limit).
    pub fn remote_request(
        &self,
        service: &crate::rls::RateLimitService,
    ) -> Option<crate::rls_wire::RateLimitRequest> {
        let who = crate::rls::Identity {
            tool: &self.tool,
            agent: &self.delegation.agent,
            sub: &self.token.sub,
        };
        Some(self.remote()?.request(service, &self.limit.rule, who))
    }
}

/// A synchronous limiter backend.
pub trait Limiter {
    fn consume(
        &mut self,
        key: &str,
        rule: &LimitRule,
        now_ms: u64,
    ) -> Result<LimitState, StoreError>;
}

impl<S: RateLimitStore> Limiter for S {
    fn consume(
        &mut self,
        key: &str,
        rule: &LimitRule,
        now_ms: u64,
    ) -> Result<LimitState, StoreError> {
        ratelimit::consume(self, key, rule, now_ms)
    }
}

impl<S: RateLimitStore + ?Sized> Limiter for SlotTable<'_, S> {
    fn consume(
        &mut self,
        key: &str,
        rule: &LimitRule,
        now_ms: u64,
    ) -> Result<LimitState, StoreError> {
        SlotTable::consume(self, key, rule, now_ms)
    }
}

/// What was gathered before the token was trusted; owned so a step can outlive the host's request borrow.
#[derive(Debug)]
struct Context {
    now_ms: u64,
    peer: Option<String>,
    /// None outside the MCP endpoint or for methods without a body.
    message: Option<Result<McpMessage, McpError>>,
    is_mcp: bool,
    rpc_id: Option<Value>,
    mcp_method_header: Option<String>,
    mcp_name_header: Option<String>,
    audit: AuditRecord,
    refetch: Option<usize>,
    /// The JSON-RPC error code of an MCP refusal, when it is not the status's default.
    rpc_code: Option<i64>,
}

/// The compiled policy, the key ring and the verified-token cache of one host instance (one Envoy VM, one
/// Worker isolate, one CLI run).
#[derive(Debug)]
pub struct Gate {
    policy: Arc<Policy>,
    keys: KeyRing,
    cache: TokenCache,
    /// SHA-256 of recently seen raw tokens (exact-bytes match).
    hashes: HashMemo,
    /// `policy.mcp.path_prefix` normalised once (every request compares against it).
    mcp_prefix: String,
}

impl Gate {
    pub fn new(policy: Policy) -> Self {
        let keys = policy.key_ring.clone();
        let cache = TokenCache::new(policy.token.cache_entries);
        let mcp_prefix = mcp::normalize_path(&policy.mcp.path_prefix);
        Self {
            policy: Arc::new(policy),
            keys,
            cache,
            hashes: HashMemo::default(),
            mcp_prefix,
        }
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, PolicyError> {
        Policy::from_json(bytes).map(Self::new)
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// Installs a fetched JWKS for issuer `index` (see [`KeyRing::install`]); tokens cached under the old
    /// set are verified again.
    pub fn install_jwks(
        &mut self,
        issuer: usize,
        jwks: &[u8],
        now_ms: u64,
    ) -> Result<Vec<SkippedKey>, KeyError> {
        let skipped = self.keys.install(issuer, jwks, now_ms)?;
        self.cache.clear();
        Ok(skipped)
    }

    /// A fetch that returned the same content: the set stays fresh.
    pub fn touch_jwks(&mut self, issuer: usize, now_ms: u64) {
        self.keys.touch(issuer, now_ms);
    }

    /// Remote issuers due for a periodic fetch.
    pub fn refresh_due(&self, now_ms: u64) -> Vec<usize> {
        self.keys.refresh_due(now_ms)
    }

    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Whether `path` is under the MCP endpoint.
    pub fn is_mcp_path(&self, path: &str) -> bool {
        // Both normalised: a spelling the MCP server routes to its endpoint must not skip tool authorization.
        // Most paths are already normal: compared as they are, without the allocations of normalising.
        let raw = path.split(['?', '#']).next().unwrap_or("");
        let normalized;
        let path = if mcp::is_normalized(raw) {
            raw
        } else {
            normalized = mcp::normalize_path(path);
            normalized.as_str()
        };
        let prefix = self.mcp_prefix.as_str();
        prefix == "/"
            || path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// Whether the host must read the body before deciding: POSTs to the MCP endpoint.
    pub fn needs_body(&self, method: &str, path: &str) -> bool {
        method.eq_ignore_ascii_case("POST") && self.is_mcp_path(path)
    }

    pub fn max_body_bytes(&self) -> usize {
        self.policy.mcp.max_body_bytes
    }

    /// Decides synchronously: signatures with the core's crypto, limits on `limiter`.
    pub fn decide(
        &mut self,
        request: &Request<'_>,
        now_ms: u64,
        limiter: &mut dyn Limiter,
    ) -> Outcome {
        let mut step = self.evaluate(request, now_ms);
        loop {
            step = match step {
                Step::Done(outcome) => return *outcome,
                Step::VerifySignature(pending) => {
                    let valid = pending.verify_native();
                    self.resume_signature(*pending, valid)
                }
                Step::ConsultLimiter(pending) => {
                    let result = limiter.consume(pending.key(), pending.rule(), pending.now_ms());
                    return self.resume_limit(*pending, result);
                }
            }
        }
    }

    /// Like [`Gate::decide`] (or [`Gate::decide_host_verified`] with `attestation`), except that a remote
    /// limit ([`crate::rls`]) is not consulted: its pending limit comes back for the host to ask the rate
    /// limit service (and, with `local_first`, its own store first), then to finish with
    /// [`Gate::resume_limit`]. Local limits run on `limiter` as in `decide`.
    pub fn decide_or_remote(
        &mut self,
        request: &Request<'_>,
        now_ms: u64,
        attestation: Option<&Result<HostVerified, TokenError>>,
        limiter: &mut dyn Limiter,
    ) -> Result<Outcome, Box<PendingLimit>> {
        let ctx = self.gather(request, now_ms);
        let mut step = self.evaluate_token(ctx, request, now_ms, attestation);
        loop {
            step = match step {
                Step::Done(outcome) => return Ok(*outcome),
                Step::VerifySignature(pending) => {
                    // Host-verified mode never asks; if it did, nothing verified the signature: refuse.
                    let valid = attestation.is_none() && pending.verify_native();
                    self.resume_signature(*pending, valid)
                }
                Step::ConsultLimiter(pending) if pending.remote().is_some() => return Err(pending),
                Step::ConsultLimiter(pending) => {
                    let result = limiter.consume(pending.key(), pending.rule(), pending.now_ms());
                    return Ok(self.resume_limit(*pending, result));
                }
            }
        }
    }

    /// Starts a decision.
    pub fn evaluate(&mut self, request: &Request<'_>, now_ms: u64) -> Step {
        let ctx = self.gather(request, now_ms);
        self.evaluate_token(ctx, request, now_ms, None)
    }

    /// Hybrid mode: like [`Gate::decide`], but the signature was checked by the host's own verifier (Envoy's
    /// `jwt_authn`) and `attestation` says so for this request's token. Every other rule applies as usual.
    /// Where the gate would check the signature, and for a cached token too, it requires an attestation
    /// covering this exact token: a missing or mismatched one denies (401 `token.host_unverified`).
    pub fn decide_host_verified(
        &mut self,
        request: &Request<'_>,
        now_ms: u64,
        attestation: &Result<HostVerified, TokenError>,
        limiter: &mut dyn Limiter,
    ) -> Outcome {
        let ctx = self.gather(request, now_ms);
        let mut step = self.evaluate_token(ctx, request, now_ms, Some(attestation));
        loop {
            step = match step {
                Step::Done(outcome) => return *outcome,
                // Not produced in host-verified mode; if it were, nothing verified it: refuse.
                Step::VerifySignature(pending) => self.resume_signature(*pending, false),
                Step::ConsultLimiter(pending) => {
                    let result = limiter.consume(pending.key(), pending.rule(), pending.now_ms());
                    return self.resume_limit(*pending, result);
                }
            }
        }
    }

    /// `None` when the attestation covers the token hashed `hash`, else why not.
    fn attestation_error(
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

    fn evaluate_token(
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

    /// Finishes after the host consulted its limiter.
    pub fn resume_limit(
        &mut self,
        pending: PendingLimit,
        result: Result<LimitState, StoreError>,
    ) -> Outcome {
        let PendingLimit {
            mut ctx,
            token,
            delegation,
            limit,
            tool,
            visible_filter,
            ..
        } = pending;
        let audit_limit = |state: &LimitState| LimitAudit {
            key: limit.key.name(),
            limit: state.limit,
            period_seconds: state.period_seconds,
            burst: state.burst,
            remaining: state.remaining,
            retry_after_seconds: (!state.allowed)
                .then(|| state.retry_after_ms.div_ceil(1000).max(1)),
        };
        match result {
            Ok(state) => {
                ctx.audit.limit = Some(audit_limit(&state));
                let headers = rate_limit_headers(&tool, &state);
                if state.allowed
                    || ctx.audit.dry_run_reason.is_some()
                    || self.rule_is_dry_run(&tool)
                {
                    if !state.allowed {
                        ctx.audit.dry_run_reason =
                            ctx.audit.dry_run_reason.or(Some("ratelimit.exceeded"));
                    }
                    return self.allow(ctx, &token, &delegation, headers, visible_filter);
                }
                let message = format!(
                    "rate limit for tool {tool:?} exceeded; retry in {} s",
                    state.retry_after_ms.div_ceil(1000).max(1)
                );
                self.deny(ctx, 429, "ratelimit.exceeded", &message, headers)
            }
            Err(e) => {
                ctx.audit.detail = Some(e.to_string());
                if limit.on_store_error == StoreErrorPolicy::Allow {
                    return self.allow(ctx, &token, &delegation, Vec::new(), visible_filter);
                }
                let message = format!("rate limit for tool {tool:?} cannot be checked: {e}");
                self.deny(
                    ctx,
                    503,
                    e.reason(),
                    &message,
                    vec![("retry-after".into(), "1".into())],
                )
            }
        }
    }

    fn rule_is_dry_run(&self, tool: &str) -> bool {
        self.policy
            .tool_rule(tool)
            .is_some_and(|r| r.mode == Mode::DryRun)
    }

    fn gather(&self, request: &Request<'_>, now_ms: u64) -> Context {
        let path = request.path.split(['?', '#']).next().unwrap_or("");
        let mut audit = AuditRecord::new(now_ms, request.method, path);
        audit.peer = request.peer.map(str::to_string);
        let is_mcp = self.is_mcp_path(request.path);
        let message = if self.needs_body(request.method, request.path) {
            let max = self.policy.mcp.max_body_bytes;
            Some(match request.body {
                Body::Absent => Err(McpError::BodyMissing),
                Body::TooLarge => Err(McpError::TooLarge { max }),
                Body::Complete([]) => Err(McpError::BodyMissing),
                Body::Complete(bytes) => {
                    mcp::parse_message(bytes, max, self.policy.mcp.max_json_depth)
                }
            })
        } else {
            None
        };
        let rpc_id = message
            .as_ref()
            .and_then(|m| m.as_ref().ok())
            .and_then(|m| m.id.clone());
        // What was attempted is audited even when the token is refused.
        if let Some(Ok(m)) = &message {
            audit.rpc_method = m.method.clone();
            audit.rpc_id = m.id.clone();
        }
        // Repeated headers are read as one comma-joined value (RFC 9110 §5.3), as every host would see them.
        let header = |name: &str| {
            let values: Vec<&str> = request
                .headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
                .collect();
            (!values.is_empty()).then(|| values.join(", "))
        };
        Context {
            now_ms,
            peer: request.peer.map(str::to_string),
            is_mcp,
            rpc_id,
            mcp_method_header: header("mcp-method"),
            mcp_name_header: header("mcp-name"),
            message,
            audit,
            refetch: None,
            rpc_code: None,
        }
    }

    fn token_header<'r>(&self, request: &Request<'r>) -> Result<&'r str, TokenError> {
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

    fn authorize(&mut self, mut ctx: Context, token: Arc<VerifiedToken>) -> Step {
        ctx.audit.txn = Some(token.txn.clone());
        ctx.audit.sub = Some(token.sub.clone());
        ctx.audit.req_wl = Some(token.req_wl.clone());
        if ctx.audit.issuer.is_none() {
            ctx.audit.issuer = self.keys.issuer(token.issuer).map(|i| i.name.clone());
        }
        let delegation = match delegation::evaluate(
            &self.policy,
            &token.scope,
            &token.act_chain,
            &token.req_wl,
            ctx.peer.as_deref(),
        ) {
            Ok(d) => d,
            Err(e) => return Step::Done(Box::new(self.deny_delegation(ctx, &e))),
        };
        ctx.audit.agent = Some(delegation.agent.clone());
        ctx.audit.actors = delegation.actors.clone();
        ctx.audit.scope = Some(delegation.effective_scope.to_claim());

        let message = match ctx.message.take() {
            None => {
                return Step::Done(Box::new(self.allow(
                    ctx,
                    &token,
                    &delegation,
                    Vec::new(),
                    false,
                )))
            }
            Some(Err(e)) => return Step::Done(Box::new(self.deny_mcp(ctx, &e))),
            Some(Ok(m)) => m,
        };
        ctx.audit.rpc_method = message.method.clone();
        ctx.audit.rpc_id = message.id.clone();
        if let Err(e) = mcp::check_headers(
            &message,
            ctx.mcp_method_header.as_deref(),
            ctx.mcp_name_header.as_deref(),
        ) {
            return Step::Done(Box::new(self.deny_mcp(ctx, &e)));
        }
        let Some(call) = message.tool_call else {
            let filter = message.is_tools_list();
            return Step::Done(Box::new(self.allow(
                ctx,
                &token,
                &delegation,
                Vec::new(),
                filter,
            )));
        };
        ctx.audit.tool = Some(call.name.clone());
        match self.policy.arguments_audit {
            ArgumentsAudit::Hash => {
                ctx.audit.arguments_sha256 = Some(sha256_hex(&canonical(&call.arguments)))
            }
            ArgumentsAudit::Full => ctx.audit.arguments = Some(call.arguments.clone()),
            ArgumentsAudit::None => {}
        }
        // Borrowed through a second handle on the policy, not cloned: a rule's scopes and constraints are
        // read-only here.
        let policy = Arc::clone(&self.policy);
        let Some(rule) = policy.tool_rule(&call.name) else {
            let e = ToolError::NoRule {
                tool: call.name.clone(),
            };
            return Step::Done(Box::new(self.deny_tool(ctx, &e)));
        };
        ctx.audit.rule = Some(rule.name.clone());
        if let Err(e) =
            authorization::authorize(rule, &call, &delegation.effective_scope, &token.claims)
        {
            if rule.mode == Mode::DryRun {
                ctx.audit.dry_run_reason = Some(e.reason());
                ctx.audit.detail = Some(e.to_string());
            } else {
                return Step::Done(Box::new(self.deny_tool(ctx, &e)));
            }
        }
        let Some(limit) = rule.limit.clone() else {
            return Step::Done(Box::new(self.allow(
                ctx,
                &token,
                &delegation,
                Vec::new(),
                false,
            )));
        };
        let tool = call.name.to_ascii_lowercase();
        let id = match limit.key {
            crate::policy::LimitKey::Agent => delegation.agent.as_str(),
            crate::policy::LimitKey::Sub => token.sub.as_str(),
            crate::policy::LimitKey::Tool => "",
        };
        let key = ratelimit::bucket_key(&tool, limit.key.name(), id, &limit.rule);
        Step::ConsultLimiter(Box::new(PendingLimit {
            ctx,
            token,
            delegation,
            key,
            limit,
            tool,
            visible_filter: false,
        }))
    }

    fn allow(
        &self,
        mut ctx: Context,
        token: &VerifiedToken,
        delegation: &Delegation,
        response_headers: Vec<(String, String)>,
        tools_list: bool,
    ) -> Outcome {
        let reason = if ctx.audit.dry_run_reason.is_some() {
            "allow.dry_run"
        } else {
            "allow"
        };
        ctx.audit.verdict = "allow";
        ctx.audit.reason = reason;
        ctx.audit.status = 200;
        let upstream_headers = vec![
            ("x-txngate-agent".to_string(), delegation.agent.clone()),
            ("x-txngate-sub".to_string(), token.sub.clone()),
            ("x-txngate-txn".to_string(), token.txn.clone()),
        ];
        let tools_list = tools_list.then(|| ToolsListFilter {
            policy: Arc::clone(&self.policy),
            effective: delegation.effective_scope.clone(),
        });
        Outcome {
            decision: Decision {
                verdict: Verdict::Allow,
                status: 200,
                reason,
                response_headers,
                body: None,
                upstream_headers,
                tools_list,
            },
            audit: ctx.audit,
            refetch_issuer: ctx.refetch,
        }
    }

    fn deny_token(&self, ctx: Context, e: &TokenError) -> Step {
        let status = match e {
            TokenError::Multiple { .. } => 400,
            TokenError::KeysUnavailable { .. } => 503,
            _ => 401,
        };
        let mut headers = Vec::new();
        if status == 401 {
            let mut challenge = format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                e.reason()
            );
            if let Some(url) = &self.policy.mcp.resource_metadata {
                challenge.push_str(&format!(", resource_metadata=\"{url}\""));
            }
            headers.push(("www-authenticate".to_string(), challenge));
        } else if status == 503 {
            headers.push(("retry-after".to_string(), "5".to_string()));
        }
        Step::Done(Box::new(self.deny(
            ctx,
            status,
            e.reason(),
            &e.to_string(),
            headers,
        )))
    }

    fn deny_delegation(&self, ctx: Context, e: &DelegationError) -> Outcome {
        self.deny(ctx, 403, e.reason(), &e.to_string(), Vec::new())
    }

    fn deny_mcp(&self, ctx: Context, e: &McpError) -> Outcome {
        let status = if matches!(e, McpError::TooLarge { .. }) {
            413
        } else {
            400
        };
        let mut ctx = ctx;
        ctx.rpc_code = Some(e.rpc_code());
        self.deny(ctx, status, e.reason(), &e.to_string(), Vec::new())
    }

    fn deny_tool(&self, ctx: Context, e: &ToolError) -> Outcome {
        let mut headers = Vec::new();
        if let ToolError::Scope { missing, .. } = e {
            headers.push((
                "www-authenticate".to_string(),
                format!(
                    "Bearer error=\"insufficient_scope\", scope=\"{}\"",
                    missing.join(" ")
                ),
            ));
        }
        self.deny(ctx, 403, e.reason(), &e.to_string(), headers)
    }

    fn deny(
        &self,
        mut ctx: Context,
        status: u16,
        reason: &'static str,
        message: &str,
        mut headers: Vec<(String, String)>,
    ) -> Outcome {
        let message = truncate(message, 512);
        ctx.audit.verdict = "deny";
        ctx.audit.reason = reason;
        ctx.audit.status = status;
        ctx.audit.detail = Some(message.clone());
        headers.push(("content-type".to_string(), "application/json".to_string()));
        headers.push(("cache-control".to_string(), "no-store".to_string()));
        let body = if ctx.is_mcp {
            let code = ctx.rpc_code.unwrap_or(match status {
                400 | 413 => -32600,
                401 => -32001,
                403 => -32003,
                429 => -32029,
                _ => -32603,
            });
            let id = ctx.rpc_id.as_ref();
            mcp::error_body(
                id,
                code,
                &format!("txngate: {message}"),
                json!({"reason": reason, "status": status}),
            )
        } else {
            let error = match status {
                401 => "invalid_token",
                403 => "insufficient_scope",
                400 | 413 => "invalid_request",
                429 => "rate_limited",
                _ => "temporarily_unavailable",
            };
            json!({"error": error, "error_description": message, "reason": reason}).to_string()
        };
        Outcome {
            decision: Decision {
                verdict: Verdict::Deny,
                status,
                reason,
                response_headers: headers,
                body: Some(body),
                upstream_headers: Vec::new(),
                tools_list: None,
            },
            audit: ctx.audit,
            refetch_issuer: ctx.refetch,
        }
    }
}

/// IETF `RateLimit-Policy` / `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers) plus `Retry-After`.
fn rate_limit_headers(tool: &str, state: &LimitState) -> Vec<(String, String)> {
    let mut headers = vec![
        (
            "ratelimit-policy".to_string(),
            format!("\"{tool}\";q={};w={}", state.limit, state.period_seconds),
        ),
        (
            "ratelimit".to_string(),
            format!(
                "\"{tool}\";r={};t={}",
                state.remaining,
                state.reset_ms.div_ceil(1000)
            ),
        ),
    ];
    if !state.allowed {
        headers.push((
            "retry-after".to_string(),
            state.retry_after_ms.div_ceil(1000).max(1).to_string(),
        ));
    }
    headers
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", text.get(..end).unwrap_or_default())
}

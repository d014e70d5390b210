//! The gate: one request in, one `Decision` and one `AuditRecord` out. Sans-IO: where a host must act (check
//! a signature with its own crypto, consult a global limiter), `evaluate` returns a step holding everything
//! needed, and the host resumes the gate with the result. Hosts with synchronous means use [`Gate::decide`].

use std::sync::Arc;

use serde_json::{json, Value};

use crate::audit::{AuditRecord, LimitAudit};
use crate::authorization::{self, AuthzError, Kind};
use crate::cache::{HashMemo, TokenCache};
use crate::delegation::{self, Delegation, DelegationError};
use crate::encoding::sha256_hex;
use crate::json::canonical;
use crate::keys::{Algorithm, KeyError, KeyLookup, KeyRing, PublicKey, SkippedKey};
use crate::listing::{self, ListError, ListKind};
use crate::mcp::{self, CompletionRef, McpError, McpMessage, Reference, Target};
use crate::policy::{
    ArgumentsAudit, LimitKey, Mode, Policy, PolicyError, Rule, RuleLimit, StoreErrorPolicy,
};
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
    /// Allowed list request whose results are filtered per caller (`tools/list` always; `prompts/list`,
    /// `resources/list` and `resources/templates/list` when the policy has their section): filter any 2xx
    /// response with this (`response_headers` then carry `Cache-Control: private`).
    pub list_filter: Option<ListFilter>,
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

/// Filters a list response down to what the caller may use.
#[derive(Debug, Clone)]
pub struct ListFilter {
    kind: ListKind,
    policy: Arc<Policy>,
    effective: ScopeSet,
}

/// The name the filter had before prompts and resources were filtered too.
pub type ToolsListFilter = ListFilter;

impl ListFilter {
    pub fn kind(&self) -> ListKind {
        self.kind
    }

    /// Whether the caller may see the entry named `name` (a tool or prompt name, a resource URI, a resource
    /// template).
    pub fn is_visible(&self, name: &str) -> bool {
        let (policy, effective) = (&self.policy, &self.effective);
        match self.kind {
            ListKind::Tools => authorization::is_visible(policy, effective, name),
            ListKind::Prompts => authorization::is_prompt_visible(policy, effective, name),
            ListKind::Resources => authorization::is_resource_visible(policy, effective, name),
            ListKind::ResourceTemplates => {
                authorization::is_template_visible(policy, effective, name)
            }
        }
    }

    /// Filters a complete response body (`application/json` or `text/event-stream`) and marks the result
    /// `"cacheScope": "private"`.
    pub fn apply(&self, content_type: &str, body: &[u8]) -> Result<Vec<u8>, ListError> {
        listing::filter_list(self.kind, content_type, body, &|name| self.is_visible(name))
    }
}

/// Whether a list status is filtered: every 2xx (both adapters apply this one rule).
pub fn is_filtered_status(status: u16) -> bool {
    (200..300).contains(&status)
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
    limit: RuleLimit,
    kind: Kind,
    /// The tool or prompt name, or the resource URI.
    name: String,
    /// What the bucket counts: the tool or prompt name, the resource rule's pattern (also the remote
    /// descriptor's `tool` / `prompt` / `resource` entry).
    subject: String,
    /// The `RateLimit-Policy` name: the tool or prompt name, the resource rule's pattern.
    policy_name: String,
    dry_run: bool,
}

impl PendingLimit {
    /// The bucket's store key.
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn rule(&self) -> &LimitRule {
        &self.limit.rule
    }

    /// The tool or prompt name, or the resource URI, of the limited call.
    pub fn tool(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> Kind {
        self.kind
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
            name: &self.subject,
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
    /// `Mcp-Method`, `Mcp-Name`, `MCP-Protocol-Version`, every entry kept (a repetition is refused).
    routing: mcp::RoutingHeaders,
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
            kind,
            name,
            policy_name,
            dry_run,
            ..
        } = pending;
        let noun = kind.noun();
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
                let mut headers = rate_limit_headers(&policy_name, &state);
                headers.extend(authorized_read_headers(kind));
                if state.allowed || ctx.audit.dry_run_reason.is_some() || dry_run {
                    if !state.allowed {
                        ctx.audit.dry_run_reason =
                            ctx.audit.dry_run_reason.or(Some("ratelimit.exceeded"));
                    }
                    return self.allow(ctx, &token, &delegation, headers, None);
                }
                let message = format!(
                    "rate limit for {noun} {name:?} exceeded; retry in {} s",
                    state.retry_after_ms.div_ceil(1000).max(1)
                );
                self.deny(ctx, 429, "ratelimit.exceeded", &message, headers)
            }
            Err(e) => {
                ctx.audit.detail = Some(e.to_string());
                if limit.on_store_error == StoreErrorPolicy::Allow {
                    return self.allow(
                        ctx,
                        &token,
                        &delegation,
                        authorized_read_headers(kind),
                        None,
                    );
                }
                let message = format!("rate limit for {noun} {name:?} cannot be checked: {e}");
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

    fn gather(&self, request: &Request<'_>, now_ms: u64) -> Context {
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
        ctx.audit.agentic_ctx = crate::audit::AgenticAudit::from_claims(&token.claims);
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
                    None,
                )))
            }
            Some(Err(e)) => return Step::Done(Box::new(self.deny_mcp(ctx, &e))),
            Some(Ok(m)) => m,
        };
        ctx.audit.rpc_method = message.method.clone();
        ctx.audit.rpc_id = message.id.clone();
        if let Err(e) = mcp::routing::check(&message, &ctx.routing) {
            return Step::Done(Box::new(self.deny_mcp(ctx, &e)));
        }
        let list = message.list_kind();
        if let Some(reference) = message.reference {
            return self.authorize_reference(ctx, token, delegation, reference);
        }
        let Some(target) = message.target else {
            let filter = list.filter(|kind| self.filters(*kind));
            return Step::Done(Box::new(self.allow(
                ctx,
                &token,
                &delegation,
                Vec::new(),
                filter,
            )));
        };
        let (kind, name, arguments) = match target {
            Target::Tool(call) => (Kind::Tool, call.name, Some(call.arguments)),
            Target::Prompt(get) => (Kind::Prompt, get.name, Some(get.arguments)),
            Target::Resource(read) => (Kind::Resource, read.uri, None),
        };
        self.authorize_target(ctx, token, delegation, kind, name, arguments)
    }

    /// Whether responses to a list of `kind` are filtered: tools always, prompts and resources when the
    /// policy has their section.
    fn filters(&self, kind: ListKind) -> bool {
        match kind {
            ListKind::Tools => true,
            ListKind::Prompts => self.policy.prompts().is_some(),
            ListKind::Resources | ListKind::ResourceTemplates => self.policy.resources().is_some(),
        }
    }

    /// Authorizes a method that refers to a prompt or resources without acting on them: a completion needs
    /// the caller to be allowed the prompt or resource it completes, a subscription each resource it
    /// subscribes to (effect and scopes of the rule; constraints bind `prompts/get` arguments and are not
    /// applied). Without the section for the kind, today's behaviour: it passes. No rate limit is consumed:
    /// only the real call (`prompts/get`, `resources/read`) counts against its rule's limit.
    fn authorize_reference(
        &mut self,
        mut ctx: Context,
        token: Arc<VerifiedToken>,
        delegation: Delegation,
        reference: Reference,
    ) -> Step {
        let names: Vec<(Kind, String)> = match reference {
            Reference::Completion(CompletionRef::Prompt { name }) => {
                ctx.audit.prompt = Some(name.clone());
                vec![(Kind::Prompt, name)]
            }
            Reference::Completion(CompletionRef::Resource { uri })
            | Reference::ResourceSubscription { uri, .. } => {
                ctx.audit.resource = Some(uri.clone());
                vec![(Kind::Resource, uri)]
            }
            Reference::Listen { uris } => {
                ctx.audit.resources = uris.clone();
                uris.into_iter().map(|uri| (Kind::Resource, uri)).collect()
            }
        };
        let policy = Arc::clone(&self.policy);
        for (kind, name) in names {
            let found: Option<Result<&Rule, AuthzError>> = match kind {
                Kind::Prompt => policy
                    .prompts()
                    .map(|rules| authorization::named_rule(rules, kind, &name)),
                // A URI template (`ref/resource`) is matched as written: the rule its own text falls under
                // decides (`file:///docs/{name}` under `file:///docs/*`), a conservative approximation.
                Kind::Resource => policy.resources().map(|rules| {
                    rules.lookup(&name).ok_or_else(|| AuthzError::NoRule {
                        kind,
                        name: name.clone(),
                    })
                }),
                Kind::Tool => None,
            };
            let refused = |mut ctx: Context| {
                if kind == Kind::Resource {
                    ctx.audit.resource = Some(name.clone());
                }
                ctx
            };
            let rule = match found {
                None => continue,
                Some(Err(e)) => {
                    return Step::Done(Box::new(self.deny_authz(refused(ctx), &e)));
                }
                Some(Ok(rule)) => rule,
            };
            ctx.audit.rule = Some(rule.name.clone());
            if let Err(e) =
                authorization::authorize_reference(rule, kind, &name, &delegation.effective_scope)
            {
                if rule.mode == Mode::DryRun {
                    ctx.audit.dry_run_reason = Some(e.reason());
                    ctx.audit.detail = Some(e.to_string());
                } else {
                    return Step::Done(Box::new(self.deny_authz(refused(ctx), &e)));
                }
            }
        }
        Step::Done(Box::new(self.allow(
            ctx,
            &token,
            &delegation,
            Vec::new(),
            None,
        )))
    }

    /// Authorizes a name-bearing call: its rule, scopes, constraints, then its rate limit.
    fn authorize_target(
        &mut self,
        mut ctx: Context,
        token: Arc<VerifiedToken>,
        delegation: Delegation,
        kind: Kind,
        name: String,
        arguments: Option<Value>,
    ) -> Step {
        match kind {
            Kind::Tool => ctx.audit.tool = Some(name.clone()),
            Kind::Prompt => ctx.audit.prompt = Some(name.clone()),
            Kind::Resource => ctx.audit.resource = Some(name.clone()),
        }
        if let Some(arguments) = &arguments {
            match self.policy.arguments_audit {
                ArgumentsAudit::Hash => {
                    ctx.audit.arguments_sha256 = Some(sha256_hex(&canonical(arguments)))
                }
                ArgumentsAudit::Full => ctx.audit.arguments = Some(arguments.clone()),
                ArgumentsAudit::None => {}
            }
        }
        // Borrowed through a second handle on the policy, not cloned: a rule's scopes and constraints are
        // read-only here.
        let policy = Arc::clone(&self.policy);
        let found: Option<Result<&Rule, AuthzError>> = match kind {
            Kind::Tool => Some(authorization::named_rule(policy.tools(), kind, &name)),
            Kind::Prompt => policy
                .prompts()
                .map(|rules| authorization::named_rule(rules, kind, &name)),
            Kind::Resource => policy.resources().map(|rules| {
                rules.lookup(&name).ok_or_else(|| AuthzError::NoRule {
                    kind,
                    name: name.clone(),
                })
            }),
        };
        let rule = match found {
            // No section for this kind: today's behaviour, the call passes on its token and delegation.
            None => {
                return Step::Done(Box::new(self.allow(
                    ctx,
                    &token,
                    &delegation,
                    Vec::new(),
                    None,
                )))
            }
            Some(Err(e)) => return Step::Done(Box::new(self.deny_authz(ctx, &e))),
            Some(Ok(rule)) => rule,
        };
        ctx.audit.rule = Some(rule.name.clone());
        if let Err(e) = authorization::authorize(
            rule,
            kind,
            &name,
            arguments.as_ref(),
            &delegation.effective_scope,
            &token.claims,
        ) {
            if rule.mode == Mode::DryRun {
                ctx.audit.dry_run_reason = Some(e.reason());
                ctx.audit.detail = Some(e.to_string());
            } else {
                return Step::Done(Box::new(self.deny_authz(ctx, &e)));
            }
        }
        let Some(limit) = rule.limit.clone() else {
            return Step::Done(Box::new(self.allow(
                ctx,
                &token,
                &delegation,
                authorized_read_headers(kind),
                None,
            )));
        };
        let id = match limit.key {
            LimitKey::Agent => delegation.agent.as_str(),
            LimitKey::Sub => token.sub.as_str(),
            LimitKey::Tool => "",
        };
        let (subject, policy_name) = match kind {
            Kind::Tool => (name.clone(), name.clone()),
            Kind::Prompt => (name.clone(), format!("prompt:{name}")),
            // Per rule pattern, not per URI: a bounded number of buckets.
            Kind::Resource => (rule.name.clone(), format!("resource:{}", rule.name)),
        };
        let key = ratelimit::bucket_key(
            &bucket_segment(&subject),
            &bucket_dimension(kind, limit.key),
            id,
            &limit.rule,
        );
        let dry_run = rule.mode == Mode::DryRun;
        Step::ConsultLimiter(Box::new(PendingLimit {
            ctx,
            token,
            delegation,
            key,
            limit,
            kind,
            name,
            subject,
            policy_name,
            dry_run,
        }))
    }

    fn allow(
        &self,
        mut ctx: Context,
        token: &VerifiedToken,
        delegation: &Delegation,
        mut response_headers: Vec<(String, String)>,
        list: Option<ListKind>,
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
        let list_filter = list.map(|kind| ListFilter {
            kind,
            policy: Arc::clone(&self.policy),
            effective: delegation.effective_scope.clone(),
        });
        if list_filter.is_some() {
            // One caller's view of a list: no shared cache may serve it to another.
            response_headers.push(("cache-control".to_string(), "private".to_string()));
        }
        Outcome {
            decision: Decision {
                verdict: Verdict::Allow,
                status: 200,
                reason,
                response_headers,
                body: None,
                upstream_headers,
                list_filter,
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
            // The Txn-Token scheme, never `Bearer` nor `resource_metadata`: an MCP client seeing those starts
            // OAuth discovery for an access token txngate never reads. (`mcp.resource_metadata` in the
            // policy is still accepted but no longer advertised.)
            let challenge = format!(
                "Txn-Token error=\"invalid_token\", error_description=\"{}\"",
                e.reason()
            );
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
        let mut ctx = ctx;
        ctx.rpc_code = Some(e.rpc_code());
        self.deny(ctx, e.status(), e.reason(), &e.to_string(), Vec::new())
    }

    fn deny_authz(&self, ctx: Context, e: &AuthzError) -> Outcome {
        let mut headers = Vec::new();
        if let AuthzError::Scope { missing, .. } = e {
            headers.push((
                "www-authenticate".to_string(),
                format!(
                    "Txn-Token error=\"insufficient_scope\", scope=\"{}\"",
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
        // MCP endpoint: a JSON-RPC error answering the request's id (omitted when it had none), with the
        // body error's own code or txngate's code for the status (`mcp::status_rpc_code`).
        let body = if ctx.is_mcp {
            let code = ctx.rpc_code.unwrap_or_else(|| mcp::status_rpc_code(status));
            mcp::error_body(
                ctx.rpc_id.as_ref(),
                code,
                &format!("txngate: {message}"),
                json!({"reason": reason, "status": status}),
            )
        } else {
            let error = mcp::status_error_name(status);
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
                list_filter: None,
            },
            audit: ctx.audit,
            refetch_issuer: ctx.refetch,
        }
    }
}

/// Response headers of a call authorized by a rule: a `resources/read` result (cacheable in MCP) was served
/// to this caller's authorization, so no shared HTTP cache may serve it to a caller txngate never saw.
fn authorized_read_headers(kind: Kind) -> Vec<(String, String)> {
    match kind {
        Kind::Resource => vec![("cache-control".to_string(), "private".to_string())],
        Kind::Tool | Kind::Prompt => Vec::new(),
    }
}

/// The name part of a bucket key: `%` and `:` percent-encoded, so that a name (any string a rule may name)
/// can never reach into the key's other segments.
fn bucket_segment(name: &str) -> String {
    if !name.contains([':', '%']) {
        return name.to_string();
    }
    name.replace('%', "%25").replace(':', "%3A")
}

/// The dimension segment of a bucket key: tools keep today's (`agent`, `sub`, `tool`); prompts and
/// resources get their own, so their buckets never share a key with a tool's.
fn bucket_dimension(kind: Kind, key: LimitKey) -> String {
    match kind {
        Kind::Tool => key.name().to_string(),
        Kind::Prompt | Kind::Resource => format!("{}-{}", kind.noun(), key.name()),
    }
}

/// A structured-field string (RFC 9651 §3.3.3): printable ASCII with `"` and `\` escaped; other bytes
/// percent-encoded (names may be any string).
fn sf_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for b in text.bytes() {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out.push('"');
    out
}

/// IETF `RateLimit-Policy` / `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers) plus `Retry-After`.
fn rate_limit_headers(policy_name: &str, state: &LimitState) -> Vec<(String, String)> {
    let name = sf_string(policy_name);
    let mut headers = vec![
        (
            "ratelimit-policy".to_string(),
            format!("{name};q={};w={}", state.limit, state.period_seconds),
        ),
        (
            "ratelimit".to_string(),
            format!(
                "{name};r={};t={}",
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

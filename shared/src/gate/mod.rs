//! The gate: one request in, one `Decision` and one `AuditRecord` out. Sans-IO: where a host must act (check
//! a signature with its own crypto, consult a global limiter), `evaluate` returns a step holding everything
//! needed, and the host resumes the gate with the result. Hosts with synchronous means use [`Gate::decide`].

mod authorize;
mod deny;
mod evaluate;
mod keys;
mod pending;
mod request;

pub use pending::{Limiter, PendingLimit, PendingSignature};
pub use request::{
    is_filtered_status, is_identity_header, Body, Decision, ListFilter, Outcome, Request, Step,
    ToolsListFilter, Verdict, IDENTITY_HEADER_PREFIX,
};

use std::sync::Arc;

use serde_json::Value;

use crate::audit::AuditRecord;
use crate::cache::{HashMemo, TokenCache};
use crate::keys::KeyRing;
use crate::mcp::{self, McpError, McpMessage};
use crate::policy::{Policy, PolicyError};
use crate::token::{HostVerified, TokenError};

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
}

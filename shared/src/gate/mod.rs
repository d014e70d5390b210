//! The gate: one request in, one `Decision` and one `AuditRecord` out. Sans-IO: where a host must act (check
//! a signature with its own crypto, consult a global limiter), `evaluate` returns a step holding everything
//! needed, and the host resumes the gate with the result. Hosts with synchronous means use [`Gate::decide`].

mod authorize;
mod deny;
mod evaluate;
mod keys;
mod pending;
mod request;
mod wimse;

/// Where the list-filter status rule lives now (kept importable from here).
pub use crate::reply::is_filtered_status;
pub use pending::{Limiter, PendingLimit, PendingSignature};
pub use request::{
    is_identity_header, Allowed, Body, Decision, Denied, ListFilter, Outcome, Request, Step,
    ToolsListFilter, Verification, BODY_WAIT_MS, IDENTITY_HEADER_PREFIX,
};

use std::sync::Arc;

use serde_json::Value;

use crate::audit::AuditRecord;
use crate::cache::{HashMemo, TokenCache};
use crate::keys::KeyRing;
use crate::mcp::{self, McpError, McpMessage};
use crate::policy::{Policy, PolicyError};

/// Where a synchronous driver sends a remote limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Remote {
    /// Counted on the driver's limiter like a local one.
    OnLimiter,
    /// Handed back to the host, which asks the rate limit service.
    ToHost,
}

/// One evaluation in progress: what was gathered before the token was trusted, and the audit record being
/// written; owned so a step can outlive the host's request borrow.
#[derive(Debug)]
struct Evaluation {
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
    /// The WIMSE proof still to check, when the policy takes the caller from one ([`wimse`]).
    wimse: Option<Box<wimse::ProofState>>,
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
    /// WPT `jti`s seen within their validity (WIMSE replay window).
    replay: crate::wimse::ReplayCache,
}

impl Gate {
    pub fn new(policy: Policy) -> Self {
        let keys = policy.key_ring.clone();
        let cache = TokenCache::new(policy.token.cache_entries);
        let mcp_prefix = mcp::normalize_path(&policy.mcp.path_prefix);
        let replay = crate::wimse::ReplayCache::new(
            policy.wimse.as_ref().map_or(1, |w| w.replay_cache_entries),
        );
        Self {
            policy: Arc::new(policy),
            keys,
            cache,
            hashes: HashMemo::default(),
            mcp_prefix,
            replay,
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

    /// Starts a decision: the one entry. `verification` says who checks the token's signature: the core
    /// (a [`Step::VerifySignature`] comes back, to be checked natively or with host crypto) or the host's own
    /// verifier (Envoy's `jwt_authn`), whose attestation must cover this exact token, cached or not (a
    /// missing or mismatched one denies: 401 `token.host_unverified`). Every other rule applies as usual.
    ///
    /// With [`Body::Held`] (the body-holding header stage) only what needs no body is checked.
    pub fn evaluate(
        &mut self,
        request: &Request<'_>,
        now_ms: u64,
        verification: Verification<'_>,
    ) -> Step {
        let ev = self.gather(request, now_ms);
        self.evaluate_token(ev, request, now_ms, verification)
    }

    /// Decides synchronously, the one driver: signatures per `verification` (the core's crypto, or the
    /// host's attestation), every limit — a remote one too, there being no rate limit service here — on
    /// `limiter`.
    pub fn decide(
        &mut self,
        request: &Request<'_>,
        now_ms: u64,
        verification: Verification<'_>,
        limiter: &mut dyn Limiter,
    ) -> Outcome {
        let step = self.evaluate(request, now_ms, verification);
        match self.run(step, verification, limiter, Remote::OnLimiter) {
            Step::Done(outcome) => *outcome,
            // `run` finishes every step when remote limits go to the limiter; if one were left, nothing
            // may pass on it.
            Step::VerifySignature(pending) => self.internal_error(pending.ev),
            Step::ConsultLimiter(pending) => self.internal_error(pending.ev),
        }
    }

    /// Like [`Gate::decide`] from a step the host has (from [`Gate::evaluate`] or a `resume_*`), except
    /// that a remote limit ([`crate::rls`]) is not consulted: it comes back as [`Step::ConsultLimiter`] for
    /// the host to ask the rate limit service (and, with `local_first`, its own store first), then to resume
    /// with [`Gate::resume_limit`] and drive on. Returns [`Step::Done`] otherwise.
    pub fn drive(
        &mut self,
        step: Step,
        verification: Verification<'_>,
        limiter: &mut dyn Limiter,
    ) -> Step {
        self.run(step, verification, limiter, Remote::ToHost)
    }

    /// The one loop behind [`Gate::decide`] and [`Gate::drive`].
    fn run(
        &mut self,
        mut step: Step,
        verification: Verification<'_>,
        limiter: &mut dyn Limiter,
        remote: Remote,
    ) -> Step {
        loop {
            step = match step {
                Step::Done(_) => return step,
                Step::VerifySignature(pending) => {
                    // With the host's verifier the gate never asks for the token's signature (the
                    // attestation covers it); if it did, nothing verified it: refused. A WIMSE proof's
                    // signatures (WIT, WPT) are always the core's to check.
                    let valid = match verification {
                        Verification::Core => pending.verify_native(),
                        Verification::Host(_) => {
                            pending.is_workload_proof() && pending.verify_native()
                        }
                    };
                    self.resume_signature(*pending, valid)
                }
                Step::ConsultLimiter(pending)
                    if remote == Remote::ToHost && pending.remote().is_some() =>
                {
                    return Step::ConsultLimiter(pending)
                }
                Step::ConsultLimiter(pending) => {
                    let result =
                        limiter.consume(pending.bucket_key(), pending.rule(), pending.now_ms());
                    self.resume_limit(*pending, result)
                }
            }
        }
    }
}

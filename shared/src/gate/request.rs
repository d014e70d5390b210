//! What a host hands the gate and what it gets back: the request, the decision, the step.

use std::sync::Arc;

use crate::audit::AuditRecord;
use crate::authorization::{self};
use crate::listing::{self, ListError, ListKind};
use crate::policy::Policy;
use crate::scope::ScopeSet;

use super::*;

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
    pub(super) kind: ListKind,
    pub(super) policy: Arc<Policy>,
    pub(super) effective: ScopeSet,
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

//! What a host hands the gate and what it gets back: the request, the decision, the step.

use std::sync::Arc;

use crate::audit::AuditRecord;
use crate::authorization::{self};
use crate::listing::{self, ListError, ListKind};
use crate::policy::Policy;
use crate::reply::{Reply, ReplyTo};
use crate::scope::ScopeSet;
use crate::token::{HostVerified, TokenError};

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
    /// The header stage of a request whose body the host holds back until it has all of it (hosts that
    /// must let the request headers go on first: Envoy without `allow_on_headers_stop_iteration`, e.g.
    /// under Istio's `WasmPlugin`). Only what needs no body is checked — the token, its delegation chain,
    /// the peer binding — exactly as the full decision checks it; no call is authorized, no limit consumed.
    /// Allowed then means only that the identity headers (`upstream_headers`) may go on with the headers:
    /// it is NOT a decision about the request, which the host must still decide with the whole body before
    /// releasing any of it.
    Held,
}

/// How long a host that paused a request for its body waits for the first of it; then the request is
/// decided without one (refused: a paused request never passes without its body).
pub const BODY_WAIT_MS: u64 = 3000;

/// Who checks the token's signature.
#[derive(Debug, Clone, Copy)]
pub enum Verification<'a> {
    /// The core: a [`Step::VerifySignature`] to check natively or with the host's crypto.
    Core,
    /// The host's own verifier (Envoy's `jwt_authn`), attested for this request's token; the core never
    /// checks the signature then, and refuses a token the attestation does not cover.
    Host(&'a Result<HostVerified, TokenError>),
}

/// What the host must do.
#[derive(Debug, Clone)]
pub enum Decision {
    Allowed(Allowed),
    Denied(Denied),
}

/// An allowed request: forward it, with these headers.
#[derive(Debug, Clone)]
pub struct Allowed {
    /// `allow` or `allow.dry_run`.
    pub reason: &'static str,
    /// Verified identity headers to set on the upstream request (after stripping every client-sent header
    /// that starts with [`IDENTITY_HEADER_PREFIX`]).
    pub upstream_headers: Vec<(String, String)>,
    /// Headers to add to the upstream's response.
    pub response_headers: Vec<(String, String)>,
    /// A list request whose results are filtered per caller (`tools/list` always; `prompts/list`,
    /// `resources/list` and `resources/templates/list` when the policy has their section): filter every
    /// response [`crate::reply::is_filtered_status`] accepts with this, up to
    /// [`crate::reply::MAX_LIST_BYTES`] (`response_headers` then carry `Cache-Control: private`).
    pub list_filter: Option<ListFilter>,
}

/// A denied request: send this reply instead of forwarding.
#[derive(Debug, Clone)]
pub struct Denied {
    /// Stable reason code: `token.expired`, `tool.scope`, ...
    pub reason: &'static str,
    pub reply: Reply,
}

/// Identity headers txngate sets; clients may never send their own.
pub const IDENTITY_HEADER_PREFIX: &str = "x-txngate-";

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allowed(_))
    }

    /// Stable reason code: `allow`, `allow.dry_run`, `token.expired`, `tool.scope`, ...
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Allowed(a) => a.reason,
            Self::Denied(d) => d.reason,
        }
    }

    /// 200 when allowed, the reply's status when denied.
    pub fn status(&self) -> u16 {
        match self {
            Self::Allowed(_) => 200,
            Self::Denied(d) => d.reply.status,
        }
    }

    /// The refusal to send, when denied.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Self::Allowed(_) => None,
            Self::Denied(d) => Some(&d.reply),
        }
    }

    /// The refusal's body, when denied.
    pub fn body(&self) -> Option<&str> {
        self.reply().map(|r| r.body.as_str())
    }

    /// The headers txngate puts on what the client gets: the refusal's when denied, those added to the
    /// upstream's response when allowed.
    pub fn response_headers(&self) -> &[(String, String)] {
        match self {
            Self::Allowed(a) => &a.response_headers,
            Self::Denied(d) => &d.reply.headers,
        }
    }

    /// The verified identity headers for the upstream request (none when denied).
    pub fn upstream_headers(&self) -> &[(String, String)] {
        match self {
            Self::Allowed(a) => &a.upstream_headers,
            Self::Denied(_) => &[],
        }
    }

    /// The list filter of an allowed list request.
    pub fn list_filter(&self) -> Option<&ListFilter> {
        match self {
            Self::Allowed(a) => a.list_filter.as_ref(),
            Self::Denied(_) => None,
        }
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

/// The result of one decision.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub decision: Decision,
    pub audit: AuditRecord,
    /// An issuer whose JWKS the host should refetch now (unknown `kid`; already debounced).
    pub refetch_issuer: Option<usize>,
    /// Whom an adapter-side error about this request answers ([`ReplyTo::failure`]): the request's shape
    /// and the JSON-RPC id the gate read.
    pub reply_to: ReplyTo,
}

/// Where the evaluation stands.
#[derive(Debug)]
pub enum Step {
    Done(Box<Outcome>),
    /// Check this signature (natively or with host crypto), then call [`Gate::resume_signature`].
    VerifySignature(Box<PendingSignature>),
    /// Run this limit against the host's store (or ask the rate limit service, for a remote one), then
    /// call [`Gate::resume_limit`].
    ConsultLimiter(Box<PendingLimit>),
}

//! txngate's authorization core: everything that decides whether an agent's request passes, written once and
//! used unchanged by the Envoy/Istio filter, the Cloudflare Worker, the wasmtime harness and the CLI.
//!
//! Host-free by construction: no clock (every call takes `now`), no I/O (keys arrive as bytes, limits go through
//! [`ratelimit::RateLimitStore`] or come back as a [`gate::Step`]), no host crate. Hosts feed a
//! [`gate::Request`] to a [`gate::Gate`] and copy the [`gate::Decision`] it returns onto their host (a refusal's
//! [`reply::Reply`] as rendered by the core, like every adapter-side error).

pub mod agents;
pub mod audit;
pub mod authorization;
pub mod cache;
pub mod delegation;
pub mod encoding;
pub mod gate;
pub mod host;
pub mod json;
pub mod keys;
pub mod listing;
pub mod mcp;
pub mod names;
pub mod policy;
pub mod ratelimit;
pub mod reply;
pub mod resource;
pub mod rls;
pub mod rls_wire;
pub mod rule;
pub mod scope;
pub mod token;
pub mod wimse;

pub use audit::AuditRecord;
pub use gate::{
    is_identity_header, Allowed, Body, Decision, Denied, Gate, Limiter, ListFilter, Outcome,
    PendingLimit, PendingSignature, Request, Step, ToolsListFilter, Verification,
};
/// Remote key sets: when to fetch, back-off, staleness (lives under `keys`, whose sets it refreshes).
pub use keys::refresh;
pub use keys::Algorithm;
pub use policy::{Policy, PolicyError};
pub use reply::{Failure, Reply, ReplyTo};

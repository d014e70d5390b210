//! txngate's authorization core: everything that decides whether an agent's request passes, written once and
//! used unchanged by the Envoy/Istio filter, the Cloudflare Worker, the wasmtime harness and the CLI.
//!
//! Host-free by construction: no clock (every call takes `now`), no I/O (keys arrive as bytes, limits go through
//! [`ratelimit::RateLimitStore`] or come back as a [`gate::Step`]), no host crate. Hosts feed a
//! [`gate::Request`] to a [`gate::Gate`] and render the [`gate::Decision`] it returns.

pub mod agents;
pub mod audit;
pub mod authorization;
pub mod cache;
pub mod delegation;
pub mod encoding;
pub mod gate;
pub mod json;
pub mod keys;
pub mod listing;
pub mod mcp;
pub mod names;
pub mod policy;
pub mod ratelimit;
pub mod resource;
pub mod rls;
pub mod rls_wire;
pub mod rule;
pub mod scope;
pub mod token;

pub use audit::AuditRecord;
pub use gate::{
    is_identity_header, Body, Decision, Gate, Limiter, ListFilter, Outcome, PendingLimit,
    PendingSignature, Request, Step, ToolsListFilter, Verdict,
};
pub use keys::Algorithm;
pub use policy::{Policy, PolicyError};

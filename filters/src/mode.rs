//! How the filter waits for the body of a request it must read (MCP POSTs): an adapter key of the plugin
//! configuration, removed before the policy is compiled (like [`crate::sink`]'s and [`crate::hybrid`]'s), so
//! the policy, its schema and the Worker are unaffected.
//!
//! ```json
//! { "pause_at_headers": true, "trust_domain": "...", ... }
//! ```
//!
//! * absent or `false` — **hold the body** (the default; works with a stock Istio `WasmPlugin`, where
//!   Envoy's `allow_on_headers_stop_iteration` cannot be set): the token, its delegation chain and the peer
//!   binding are verified at the request headers; a refusal is a local reply before anything reaches the
//!   upstream. Accepted, the verified identity headers are set and the headers go on to the upstream, while
//!   the filter holds every byte of the body (Envoy's `StopIterationAndBuffer`) until it has all of it, up to
//!   the policy's `mcp.max_body_bytes` (beyond: 413). Then the core decides on the whole request, as in every
//!   other mode: a refusal is a local reply and the upstream, which has the headers only, sees its request
//!   reset; an allowed body is released unchanged.
//! * `true` — **pause at the headers** (the stricter mode): nothing reaches the upstream before the whole
//!   decision. Needs `allow_on_headers_stop_iteration: true` in the Wasm filter configuration (an Envoy
//!   `EnvoyFilter` under Istio). Without it Envoy never hands the body to the filter, and the filter refuses
//!   the request after [`crate::BODY_WAIT_MS`] (`mcp.body_missing`) — closed, never open.
//!
//! Anything else refuses the configuration: a typo must not select a mode silently.

use serde_json::Value;

/// The adapter key of the plugin configuration.
pub const CONFIG_KEY: &str = "pause_at_headers";

/// Where the filter waits for a body it must read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BodyMode {
    /// Verify the token at the headers, let them go on, hold the body until the decision.
    #[default]
    HoldBody,
    /// Pause the headers until the body is complete and decided (`allow_on_headers_stop_iteration`).
    PauseAtHeaders,
}

/// Why the `pause_at_headers` configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModeError {
    Value { found: String },
}

impl core::fmt::Display for ModeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Value { found } => write!(f, "{CONFIG_KEY} must be true or false, not {found}"),
        }
    }
}

/// Reads the value of the `pause_at_headers` key (see [`crate::plugin`]).
pub fn from_value(value: Value) -> Result<BodyMode, ModeError> {
    match value {
        Value::Bool(true) => Ok(BodyMode::PauseAtHeaders),
        Value::Bool(false) => Ok(BodyMode::HoldBody),
        other => Err(ModeError::Value {
            found: other.to_string(),
        }),
    }
}

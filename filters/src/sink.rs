//! Where the filter writes each decision's audit record: an adapter key of the plugin configuration, removed
//! before the policy is compiled (like [`crate::host_verified`]'s), so the policy and the Worker are unaffected.
//!
//! ```json
//! { "audit_sink": "filter_state", "trust_domain": "...", ... }
//! ```
//!
//! * `"log"` (the default): one JSON line at info level through Envoy's logger, plus five filter-state values
//!   for access logs (`wasm.txngate_verdict`, `_reason`, `_agent`, `_tool`, `_txn`). Envoy's logger writes
//!   synchronously on the worker thread, so this is the filter's most expensive per-request step.
//! * `"filter_state"`: the same JSON record as ONE filter-state value, `wasm.txngate_audit`, and nothing
//!   logged: Envoy's access log (buffered, off the request path) writes it with
//!   `%FILTER_STATE(wasm.txngate_audit:PLAIN)%`. The five per-field values are not set in this mode.
//!
//! Anything else refuses the configuration (fail closed: an audit trail never silently goes missing).
//!
//! `"access_log_fields": false` ([`FIELDS_KEY`], default `true`) leaves out the five per-field filter-state
//! values of the `"log"` sink: five host calls (`set_property`) fewer per decision, for deployments whose access
//! log does not read them (the audit line carries the same fields). Anything but a boolean refuses the
//! configuration.

use serde_json::Value;

/// The adapter key of the plugin configuration.
pub const CONFIG_KEY: &str = "audit_sink";
/// The filter-state name of the whole record in `filter_state` mode (`wasm.` is Envoy's prefix).
pub const AUDIT_STATE: &str = "txngate_audit";
/// The adapter key that turns the per-field filter-state values of the `"log"` sink off.
pub const FIELDS_KEY: &str = "access_log_fields";

/// Where audit records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AuditSink {
    #[default]
    Log,
    FilterState,
}

/// Why the `audit_sink` configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SinkError {
    Value { found: String },
    Fields { found: String },
}

impl core::fmt::Display for SinkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Value { found } => write!(
                f,
                "{CONFIG_KEY} must be \"log\" or \"filter_state\", not {found}"
            ),
            Self::Fields { found } => write!(f, "{FIELDS_KEY} must be true or false, not {found}"),
        }
    }
}

/// Reads the value of the `audit_sink` key (see [`crate::plugin`]).
pub fn from_value(value: Value) -> Result<AuditSink, SinkError> {
    match value.as_str() {
        Some("log") => Ok(AuditSink::Log),
        Some("filter_state") => Ok(AuditSink::FilterState),
        _ => Err(SinkError::Value {
            found: value.to_string(),
        }),
    }
}

/// Reads the value of the `access_log_fields` key: whether the `"log"` sink sets the per-field values.
pub fn fields_from_value(value: Value) -> Result<bool, SinkError> {
    value.as_bool().ok_or_else(|| SinkError::Fields {
        found: value.to_string(),
    })
}

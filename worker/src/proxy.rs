//! Replies the Worker renders itself besides the core's denials: a configuration that did not load, and
//! failures of the Worker or the origin. Which status, headers and body they get is the core's
//! (`txngate_core::reply`); the detail goes to the log, never to the client. The shell copies the [`Reply`]
//! onto a Response.

use serde_json::json;
use txngate_core::{Failure, Reply, ReplyTo};

/// The configuration did not load: 500 for every request, never forwarded; the precise message goes to the
/// log (one line per refused request), the client learns only that the gateway is misconfigured.
pub fn config_failure(method: &str, path_and_query: &str, message: &str) -> Reply {
    let path = path_and_query.split('?').next().unwrap_or("/");
    worker::console_log!(
        "{}",
        json!({"time": txngate_core::audit::rfc3339(crate::now_ms()), "verdict": "deny", "reason": Failure::PolicyInvalid.reason(), "status": Failure::PolicyInvalid.status(), "method": method, "path": path, "detail": message})
    );
    // No policy, so no MCP endpoint to place the request on: the OAuth-style object.
    ReplyTo::plain().failure(Failure::PolicyInvalid)
}

/// A failure of the Worker itself or of the origin, rendered by the core for `to`: no internal detail to the
/// client, the detail goes to the log.
pub fn failure(failure: Failure, detail: &str, to: &ReplyTo) -> Reply {
    worker::console_error!(
        "{}",
        json!({"txngate": failure.reason(), "status": failure.status(), "detail": detail})
    );
    to.failure(failure)
}

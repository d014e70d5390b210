//! Every reply a host sends itself: the refusal of a denied request and every adapter-side error (the
//! adapter's own failure, an upstream it cannot reach, a list response it cannot filter). Rendered once here
//! — status, headers, body — so the Envoy filter and the Worker answer alike; an adapter only copies a
//! [`Reply`] onto its host. Also the two rules of list filtering every host applies: which statuses are
//! filtered and how large a list response may be.
//!
//! The body's shape follows the request, never the host: on the MCP endpoint a JSON-RPC error (answering the
//! request's id when one was read, without an `id` member otherwise), elsewhere the OAuth-style object
//! `{"error", "error_description", "reason"}` (README, "JSON-RPC error codes").

use serde_json::{json, Value};

use crate::mcp;

/// The largest list response (`tools/list`, ...) a host buffers to filter; a larger one is refused with
/// [`Failure::ListTooLarge`], never passed on unfiltered. One value for every host.
pub const MAX_LIST_BYTES: usize = 4 * 1024 * 1024;

/// Whether a list response with this status is filtered: every 2xx (anything else carries no list).
pub fn is_filtered_status(status: u16) -> bool {
    (200..300).contains(&status)
}

/// A reply the host sends instead of forwarding (or instead of the upstream's response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// Whom a reply answers: what decides the body's shape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplyTo {
    mcp: bool,
    rpc_id: Option<Value>,
}

impl ReplyTo {
    /// A request outside the MCP endpoint (or one no policy could place): the OAuth-style object.
    pub fn plain() -> Self {
        Self::default()
    }

    /// A request to the MCP endpoint: a JSON-RPC error, answering `rpc_id` when the body had one.
    pub fn mcp(rpc_id: Option<Value>) -> Self {
        Self { mcp: true, rpc_id }
    }

    pub fn is_mcp(&self) -> bool {
        self.mcp
    }

    pub fn rpc_id(&self) -> Option<&Value> {
        self.rpc_id.as_ref()
    }

    /// The reply to an adapter-side error. Its detail is for the host's log, never for the client.
    pub fn failure(&self, failure: Failure) -> Reply {
        let message = failure.message();
        self.render(
            failure.status(),
            failure.reason(),
            (message, message),
            None,
            Vec::new(),
        )
    }

    /// The reply to a refusal of the core (`message` already bounded), with its own headers first.
    pub(crate) fn refusal(
        &self,
        status: u16,
        reason: &'static str,
        message: &str,
        rpc_code: Option<i64>,
        headers: Vec<(String, String)>,
    ) -> Reply {
        // The JSON-RPC message says who refused (the client may see it as a tool error); the OAuth-style
        // description is the message as is.
        self.render(
            status,
            reason,
            (&format!("txngate: {message}"), message),
            rpc_code,
            headers,
        )
    }

    /// `messages`: (the JSON-RPC error's message, the OAuth-style `error_description`).
    fn render(
        &self,
        status: u16,
        reason: &str,
        (rpc_message, description): (&str, &str),
        rpc_code: Option<i64>,
        mut headers: Vec<(String, String)>,
    ) -> Reply {
        headers.push(("content-type".to_string(), "application/json".to_string()));
        headers.push(("cache-control".to_string(), "no-store".to_string()));
        let body = if self.mcp {
            // The body error's own code, else txngate's code for the status (`mcp::status_rpc_code`).
            let code = rpc_code.unwrap_or_else(|| mcp::status_rpc_code(status));
            mcp::error_body(
                self.rpc_id.as_ref(),
                code,
                rpc_message,
                json!({"reason": reason, "status": status}),
            )
        } else {
            json!({
                "error": mcp::status_error_name(status),
                "error_description": description,
                "reason": reason,
            })
            .to_string()
        };
        Reply {
            status,
            headers,
            body,
        }
    }
}

/// An error on the adapter's side of a request: never a policy decision, always a refusal. Each has one
/// status, reason code and client message; the detail goes to the host's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// No policy is loaded (yet): 503 `filter.unconfigured`.
    Unconfigured,
    /// The configured policy does not load: 500 `config.invalid`.
    PolicyInvalid,
    /// The adapter itself failed (a host call, lost state); `reason` names the step (`filter.headers`,
    /// `request.read`, ...): 500.
    Internal { reason: &'static str },
    /// A request paused for its body that never got it: 500 `filter.body_missing`.
    BodyMissing,
    /// The upstream could not be reached or gave no usable response; `reason` names the step
    /// (`origin.fetch`, ...): 502.
    UpstreamUnreachable { reason: &'static str },
    /// The upstream sent no response headers in time: 504 `origin.timeout`.
    UpstreamTimeout,
    /// A list response over [`MAX_LIST_BYTES`]: 502 `tools_list.too_large`.
    ListTooLarge,
    /// A list response that cannot be read, filtered or replaced: 502 `tools_list.filter`.
    ListUnfilterable,
}

impl Failure {
    pub fn status(self) -> u16 {
        match self {
            Self::Unconfigured => 503,
            Self::PolicyInvalid | Self::Internal { .. } | Self::BodyMissing => 500,
            Self::UpstreamUnreachable { .. } | Self::ListTooLarge | Self::ListUnfilterable => 502,
            Self::UpstreamTimeout => 504,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Self::Unconfigured => "filter.unconfigured",
            Self::PolicyInvalid => "config.invalid",
            Self::Internal { reason } | Self::UpstreamUnreachable { reason } => reason,
            Self::BodyMissing => "filter.body_missing",
            Self::UpstreamTimeout => "origin.timeout",
            Self::ListTooLarge => "tools_list.too_large",
            Self::ListUnfilterable => "tools_list.filter",
        }
    }

    /// What the client reads: no internal detail.
    pub fn message(self) -> &'static str {
        match self {
            Self::Unconfigured => "txngate: no policy is loaded",
            Self::PolicyInvalid => "txngate is misconfigured; see the Worker's logs",
            Self::Internal { .. } => "txngate: internal error",
            Self::BodyMissing => "txngate: the request body never reached the filter",
            Self::UpstreamUnreachable { .. } => "txngate: the upstream server could not be reached",
            Self::UpstreamTimeout => "txngate: the upstream server did not answer in time",
            Self::ListTooLarge => "txngate: the list response is too large to filter",
            Self::ListUnfilterable => "txngate: the list response could not be filtered",
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn body(reply: &Reply) -> Value {
        serde_json::from_str(&reply.body).unwrap()
    }

    #[test]
    fn mcp_failures_are_json_rpc_errors_with_the_id_when_one_was_read() {
        let with_id = ReplyTo::mcp(Some(json!(7))).failure(Failure::ListUnfilterable);
        assert_eq!(with_id.status, 502);
        assert_eq!(
            body(&with_id),
            json!({"jsonrpc": "2.0", "id": 7, "error": {"code": -31502,
                "message": "txngate: the list response could not be filtered",
                "data": {"reason": "tools_list.filter", "status": 502}}})
        );
        let without = body(&ReplyTo::mcp(None).failure(Failure::Internal {
            reason: "filter.headers",
        }));
        assert!(without.get("id").is_none());
        assert_eq!(without["error"]["code"], -32603);
        assert_eq!(without["error"]["data"]["reason"], "filter.headers");
    }

    #[test]
    fn plain_failures_are_oauth_style_objects() {
        let reply = ReplyTo::plain().failure(Failure::UpstreamTimeout);
        assert_eq!(reply.status, 504);
        assert_eq!(
            body(&reply),
            json!({"error": "gateway_timeout", "error_description":
                "txngate: the upstream server did not answer in time", "reason": "origin.timeout"})
        );
        assert!(reply
            .headers
            .contains(&("cache-control".to_string(), "no-store".to_string())));
        assert!(reply
            .headers
            .contains(&("content-type".to_string(), "application/json".to_string())));
    }

    #[test]
    fn every_failure_refuses() {
        for failure in [
            Failure::Unconfigured,
            Failure::PolicyInvalid,
            Failure::Internal { reason: "x.y" },
            Failure::BodyMissing,
            Failure::UpstreamUnreachable {
                reason: "origin.fetch",
            },
            Failure::UpstreamTimeout,
            Failure::ListTooLarge,
            Failure::ListUnfilterable,
        ] {
            assert!(failure.status() >= 500, "{failure:?}");
            assert!(failure.message().starts_with("txngate"), "{failure:?}");
            assert!(failure.reason().contains('.'), "{failure:?}");
        }
    }

    #[test]
    fn every_2xx_list_response_is_filtered() {
        assert!(is_filtered_status(200) && is_filtered_status(203) && is_filtered_status(299));
        assert!(!is_filtered_status(199) && !is_filtered_status(304) && !is_filtered_status(404));
    }
}

//! Refusals: the status, reason and headers of a denied request (its body is rendered by [`crate::reply`]).

use crate::authorization::AuthzError;
use crate::delegation::DelegationError;
use crate::mcp::McpError;
use crate::reply::ReplyTo;
use crate::token::TokenError;

use super::*;

impl Gate {
    pub(super) fn deny_token(&self, ev: Evaluation, e: &TokenError) -> Step {
        let status = match e {
            TokenError::Multiple { .. } => 400,
            TokenError::KeysUnavailable { .. } => 503,
            _ => 401,
        };
        let mut headers = Vec::new();
        if status == 401 {
            // The Txn-Token scheme, never `Bearer` nor `resource_metadata`: an MCP client seeing those starts
            // OAuth discovery for an access token txngate never reads. (`mcp.resource_metadata` in the
            // policy is still accepted but no longer advertised.)
            let challenge = format!(
                "Txn-Token error=\"invalid_token\", error_description=\"{}\"",
                e.reason()
            );
            headers.push(("www-authenticate".to_string(), challenge));
        } else if status == 503 {
            headers.push(("retry-after".to_string(), "5".to_string()));
        }
        Step::Done(Box::new(self.deny(
            ev,
            status,
            e.reason(),
            &e.to_string(),
            headers,
        )))
    }

    pub(super) fn deny_delegation(&self, ev: Evaluation, e: &DelegationError) -> Outcome {
        self.deny(ev, 403, e.reason(), &e.to_string(), Vec::new())
    }

    pub(super) fn deny_mcp(&self, ev: Evaluation, e: &McpError) -> Outcome {
        let mut ev = ev;
        ev.rpc_code = Some(e.rpc_code());
        self.deny(ev, e.status(), e.reason(), &e.to_string(), Vec::new())
    }

    pub(super) fn deny_authz(&self, ev: Evaluation, e: &AuthzError) -> Outcome {
        let mut headers = Vec::new();
        if let AuthzError::Scope { missing, .. } = e {
            headers.push((
                "www-authenticate".to_string(),
                format!(
                    "Txn-Token error=\"insufficient_scope\", scope=\"{}\"",
                    missing.join(" ")
                ),
            ));
        }
        self.deny(ev, 403, e.reason(), &e.to_string(), headers)
    }

    pub(super) fn deny(
        &self,
        mut ev: Evaluation,
        status: u16,
        reason: &'static str,
        message: &str,
        headers: Vec<(String, String)>,
    ) -> Outcome {
        let message = truncate(message, 512);
        ev.audit.verdict = "deny";
        ev.audit.reason = reason;
        ev.audit.status = status;
        ev.audit.detail = Some(message.clone());
        let reply_to = ev.reply_to();
        // MCP endpoint: a JSON-RPC error answering the request's id (omitted when it had none), with the
        // body error's own code or txngate's code for the status.
        let reply = reply_to.refusal(status, reason, &message, ev.rpc_code, headers);
        Outcome {
            decision: Decision::Denied(Denied { reason, reply }),
            audit: ev.audit,
            refetch_issuer: ev.refetch,
            reply_to,
        }
    }

    /// A step the driver should never be left with: refused, never passed.
    pub(super) fn internal_error(&self, ev: Evaluation) -> Outcome {
        self.deny(
            ev,
            500,
            "gate.internal",
            "the evaluation stopped at a step its driver cannot take",
            Vec::new(),
        )
    }
}

impl Evaluation {
    /// Whom a reply about this request answers.
    pub(super) fn reply_to(&self) -> ReplyTo {
        if self.is_mcp {
            ReplyTo::mcp(self.rpc_id.clone())
        } else {
            ReplyTo::plain()
        }
    }
}

pub(super) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", text.get(..end).unwrap_or_default())
}

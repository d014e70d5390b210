//! Refusals: the status, reason and body of a denied request.

use serde_json::json;

use crate::authorization::AuthzError;
use crate::delegation::DelegationError;
use crate::mcp::{self, McpError};
use crate::token::TokenError;

use super::*;

impl Gate {
    pub(super) fn deny_token(&self, ctx: Context, e: &TokenError) -> Step {
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
            ctx,
            status,
            e.reason(),
            &e.to_string(),
            headers,
        )))
    }

    pub(super) fn deny_delegation(&self, ctx: Context, e: &DelegationError) -> Outcome {
        self.deny(ctx, 403, e.reason(), &e.to_string(), Vec::new())
    }

    pub(super) fn deny_mcp(&self, ctx: Context, e: &McpError) -> Outcome {
        let mut ctx = ctx;
        ctx.rpc_code = Some(e.rpc_code());
        self.deny(ctx, e.status(), e.reason(), &e.to_string(), Vec::new())
    }

    pub(super) fn deny_authz(&self, ctx: Context, e: &AuthzError) -> Outcome {
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
        self.deny(ctx, 403, e.reason(), &e.to_string(), headers)
    }

    pub(super) fn deny(
        &self,
        mut ctx: Context,
        status: u16,
        reason: &'static str,
        message: &str,
        mut headers: Vec<(String, String)>,
    ) -> Outcome {
        let message = truncate(message, 512);
        ctx.audit.verdict = "deny";
        ctx.audit.reason = reason;
        ctx.audit.status = status;
        ctx.audit.detail = Some(message.clone());
        headers.push(("content-type".to_string(), "application/json".to_string()));
        headers.push(("cache-control".to_string(), "no-store".to_string()));
        // MCP endpoint: a JSON-RPC error answering the request's id (omitted when it had none), with the
        // body error's own code or txngate's code for the status (`mcp::status_rpc_code`).
        let body = if ctx.is_mcp {
            let code = ctx.rpc_code.unwrap_or_else(|| mcp::status_rpc_code(status));
            mcp::error_body(
                ctx.rpc_id.as_ref(),
                code,
                &format!("txngate: {message}"),
                json!({"reason": reason, "status": status}),
            )
        } else {
            let error = mcp::status_error_name(status);
            json!({"error": error, "error_description": message, "reason": reason}).to_string()
        };
        Outcome {
            decision: Decision {
                verdict: Verdict::Deny,
                status,
                reason,
                response_headers: headers,
                body: Some(body),
                upstream_headers: Vec::new(),
                list_filter: None,
            },
            audit: ctx.audit,
            refetch_issuer: ctx.refetch,
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

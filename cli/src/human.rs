//! One line per decision for a person at a terminal: verdict, status, reason and what explains it. Scripts
//! get the decision and audit record as JSON instead (`--json`, or any output that is not a terminal), so
//! this line may change wording freely.

use serde_json::Value;

/// Whether `txngate check` prints JSON: asked for, or written to a pipe or a file (scripts parse it).
pub fn wants_json(asked: bool, stdout_is_terminal: bool) -> bool {
    asked || !stdout_is_terminal
}

/// The human line for one `check` result (`{"decision": {...}, "audit": {...}}`, as printed with `--json`):
/// `deny 403 tool.constraint — tool "send_email": argument /to does not match claim /tctx/recipient`,
/// `allow 200 allow — agent spiffe://… for user:alice, tools/call send_email, 9 of 10 left`.
pub fn line(out: &Value) -> String {
    let decision = out.get("decision").unwrap_or(&Value::Null);
    let audit = out.get("audit").unwrap_or(&Value::Null);
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(printable);
    let verdict = text(decision, "verdict").unwrap_or_else(|| "?".into());
    let status = decision
        .get("status")
        .and_then(Value::as_u64)
        .map_or_else(|| "?".into(), |s| s.to_string());
    let reason = text(decision, "reason").unwrap_or_else(|| "?".into());

    let mut parts: Vec<String> = Vec::new();
    if let Some(would_be) = text(audit, "dry_run_reason") {
        parts.push(format!("dry run, would be refused: {would_be}"));
    }
    if let Some(detail) = text(audit, "detail") {
        parts.push(detail);
    }
    if verdict == "allow" {
        parts.extend(who(audit));
        parts.extend(what(audit));
        if let Some(limit) = audit.get("limit") {
            let field = |k: &str| limit.get(k).and_then(Value::as_u64);
            if let (Some(remaining), Some(burst)) = (field("remaining"), field("burst")) {
                parts.push(format!("{remaining} of {burst} left"));
            }
        }
    }
    let head = format!("{verdict} {status} {reason}");
    if parts.is_empty() {
        head
    } else {
        format!("{head} — {}", parts.join(", "))
    }
}

/// `agent A for SUB`: the acting agent and the user it acts for.
fn who(audit: &Value) -> Option<String> {
    let field = |k: &str| audit.get(k).and_then(Value::as_str).map(printable);
    match (field("agent"), field("sub")) {
        (Some(agent), Some(sub)) => Some(format!("agent {agent} for {sub}")),
        (Some(agent), None) => Some(format!("agent {agent}")),
        (None, Some(sub)) => Some(format!("for {sub}")),
        (None, None) => None,
    }
}

/// `tools/call send_email`: the MCP method and what it names, else the HTTP method and path.
fn what(audit: &Value) -> Option<String> {
    let field = |k: &str| audit.get(k).and_then(Value::as_str).map(printable);
    let named = field("tool")
        .or_else(|| field("prompt"))
        .or_else(|| field("resource"));
    match (field("rpc_method"), named) {
        (Some(method), Some(name)) => Some(format!("{method} {name}")),
        (Some(method), None) => Some(method),
        (None, _) => match (field("method"), field("path")) {
            (Some(method), Some(path)) => Some(format!("{method} {path}")),
            _ => None,
        },
    }
}

/// Request-controlled text (tool names, details quoting them) without control characters, so a name cannot
/// move the cursor or rewrite the terminal line it is shown on.
fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_refusal_says_verdict_status_reason_and_detail() {
        let out = json!({
            "decision": {"verdict": "deny", "status": 403, "reason": "tool.constraint", "body": {}},
            "audit": {"verdict": "deny", "reason": "tool.constraint", "status": 403,
                      "detail": "tool \"send_email\": argument /to does not match claim /tctx/recipient",
                      "agent": "spiffe://trust.example/agent/mailer", "sub": "user:alice",
                      "rpc_method": "tools/call", "tool": "send_email", "method": "POST", "path": "/mcp"},
        });
        assert_eq!(
            line(&out),
            "deny 403 tool.constraint — tool \"send_email\": argument /to does not match claim /tctx/recipient"
        );
    }

    #[test]
    fn an_allowed_call_says_who_did_what_and_the_budget_left() {
        let out = json!({
            "decision": {"verdict": "allow", "status": 200, "reason": "allow"},
            "audit": {"agent": "spiffe://trust.example/agent/mailer", "sub": "user:alice",
                      "rpc_method": "tools/call", "tool": "send_email", "method": "POST", "path": "/mcp",
                      "limit": {"key": "agent", "limit": 10, "period_seconds": 60, "burst": 10, "remaining": 9}},
        });
        assert_eq!(
            line(&out),
            "allow 200 allow — agent spiffe://trust.example/agent/mailer for user:alice, tools/call send_email, 9 of 10 left"
        );
    }

    #[test]
    fn a_dry_run_says_what_it_would_have_refused() {
        let out = json!({
            "decision": {"verdict": "allow", "status": 200, "reason": "allow.dry_run"},
            "audit": {"dry_run_reason": "tool.scope", "detail": "tool \"x\" needs scope a",
                      "agent": "spiffe://a", "rpc_method": "tools/call", "tool": "x"},
        });
        assert_eq!(
            line(&out),
            "allow 200 allow.dry_run — dry run, would be refused: tool.scope, tool \"x\" needs scope a, agent spiffe://a, tools/call x"
        );
    }

    #[test]
    fn a_request_outside_mcp_names_its_method_and_path() {
        let out = json!({
            "decision": {"verdict": "allow", "status": 200, "reason": "allow"},
            "audit": {"sub": "user:bob", "method": "GET", "path": "/health"},
        });
        assert_eq!(line(&out), "allow 200 allow — for user:bob, GET /health");
    }

    #[test]
    fn a_token_refusal_without_identity_has_only_its_detail() {
        let out = json!({
            "decision": {"verdict": "deny", "status": 401, "reason": "token.missing"},
            "audit": {"detail": "no Txn-Token header", "method": "POST", "path": "/mcp"},
        });
        assert_eq!(line(&out), "deny 401 token.missing — no Txn-Token header");
    }

    #[test]
    fn control_characters_from_the_request_are_escaped() {
        let out = json!({
            "decision": {"verdict": "deny", "status": 403, "reason": "tool.no_rule"},
            "audit": {"detail": "no rule for tool \"a\u{1b}[2Kb\r\""},
        });
        let shown = line(&out);
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert!(
            shown.ends_with(r#"no rule for tool "a\u{1b}[2Kb\r""#),
            "{shown}"
        );
    }

    #[test]
    fn an_unexpected_shape_still_gives_a_line() {
        assert_eq!(line(&json!({})), "? ? ?");
    }

    #[test]
    fn json_when_asked_or_not_on_a_terminal() {
        assert!(wants_json(true, true));
        assert!(wants_json(false, false));
        assert!(wants_json(true, false));
        assert!(!wants_json(false, true));
    }
}

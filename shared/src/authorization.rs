//! Tool authorization: the rule for a tool call (its own, else `*`), its required scopes against the caller's
//! effective scope, and its argument constraints against the token's claims.

use core::fmt;

use serde_json::{Map, Value};

use crate::mcp::ToolCall;
use crate::policy::{Effect, Policy, ToolRule};
use crate::scope::ScopeSet;

/// Why a tool call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ToolError {
    /// No rule for the tool and no `*` rule.
    NoRule { tool: String },
    /// The rule's effect is `deny`.
    Denied { tool: String, rule: String },
    /// The effective scope lacks these required scopes.
    Scope { tool: String, missing: Vec<String> },
    /// An argument does not match its claim.
    Constraint {
        tool: String,
        argument: String,
        claim: String,
        problem: &'static str,
    },
}

impl ToolError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoRule { .. } => "tool.no_rule",
            Self::Denied { .. } => "tool.denied",
            Self::Scope { .. } => "tool.scope",
            Self::Constraint { .. } => "tool.constraint",
        }
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRule { tool } => write!(f, "no rule allows tool {tool:?}"),
            Self::Denied { tool, rule } => write!(f, "tool {tool:?} is denied by rule {rule:?}"),
            Self::Scope { tool, missing } => {
                write!(f, "tool {tool:?} needs scope {}", missing.join(" "))
            }
            Self::Constraint {
                tool,
                argument,
                claim,
                problem,
            } => {
                write!(
                    f,
                    "tool {tool:?}: argument {argument} {problem} claim {claim}"
                )
            }
        }
    }
}

impl std::error::Error for ToolError {}

/// Checks a call against its rule. `claims` are the verified token's claims.
pub fn authorize(
    rule: &ToolRule,
    call: &ToolCall,
    effective: &ScopeSet,
    claims: &Map<String, Value>,
) -> Result<(), ToolError> {
    if rule.effect == Effect::Deny {
        return Err(ToolError::Denied {
            tool: call.name.clone(),
            rule: rule.name.clone(),
        });
    }
    let missing: Vec<String> = rule
        .scopes
        .iter()
        .filter(|s| !effective.allows(s))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(ToolError::Scope {
            tool: call.name.clone(),
            missing,
        });
    }
    let claims = Value::Object(claims.clone());
    for c in &rule.constraints {
        let fail = |problem| ToolError::Constraint {
            tool: call.name.clone(),
            argument: c.argument.clone(),
            claim: c.claim.clone(),
            problem,
        };
        let argument = call
            .arguments
            .pointer(&c.argument)
            .ok_or_else(|| fail("is missing; required by"))?;
        let claim = claims
            .pointer(&c.claim)
            .ok_or_else(|| fail("cannot be checked: token has no"))?;
        let ok = match claim {
            Value::Array(items) => items.contains(argument),
            other => other == argument,
        };
        if !ok {
            return Err(fail("does not match"));
        }
    }
    Ok(())
}

/// Whether a caller with `effective` scope may see `tool` in `tools/list`: a rule that allows it and whose
/// scopes are granted (argument constraints depend on the call, so they do not hide a tool). Dry-run rules
/// never hide anything.
pub fn is_visible(policy: &Policy, effective: &ScopeSet, tool: &str) -> bool {
    match policy.tool_rule(tool) {
        None => false,
        Some(rule) if rule.mode == crate::policy::Mode::DryRun => true,
        Some(rule) => {
            rule.effect == Effect::Allow && rule.scopes.iter().all(|s| effective.allows(s))
        }
    }
}

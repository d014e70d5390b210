//! Authorization of name-bearing MCP calls (`tools/call`, `prompts/get`, `resources/read`, and the methods
//! that refer to a prompt or resource: `completion/complete`, resource subscriptions): the rule the
//! name or URI falls under, its required scopes against the caller's effective scope, and its argument
//! constraints against the token's claims; and which list entries a caller may see.

use core::fmt;
use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::mcp::Arguments;
use crate::names::{NameMatch, NamedRules};
use crate::policy::Policy;
use crate::rule::{Effect, Mode, Rule};
use crate::scope::ScopeSet;

pub use crate::mcp::Kind;

/// Why a call was refused. `name` is the tool or prompt name, or the resource URI.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthzError {
    /// No rule for the name and no `*` rule.
    NoRule { kind: Kind, name: String },
    /// The rule's effect is `deny`.
    Denied {
        kind: Kind,
        name: String,
        rule: String,
    },
    /// The effective scope lacks these required scopes.
    Scope {
        kind: Kind,
        name: String,
        missing: Vec<String>,
    },
    /// An argument does not match its claim.
    Constraint {
        kind: Kind,
        name: String,
        argument: String,
        claim: String,
        problem: &'static str,
    },
    /// The name equals a rule only up to case or fullwidth forms.
    NameVariant {
        kind: Kind,
        name: String,
        rule: String,
    },
    /// The name is outside MCP's recommended alphabet and no rule names it exactly.
    NameAlphabet { kind: Kind, name: String },
}

impl AuthzError {
    pub fn kind(&self) -> Kind {
        match self {
            Self::NoRule { kind, .. }
            | Self::Denied { kind, .. }
            | Self::Scope { kind, .. }
            | Self::Constraint { kind, .. }
            | Self::NameVariant { kind, .. }
            | Self::NameAlphabet { kind, .. } => *kind,
        }
    }

    pub fn reason(&self) -> &'static str {
        use Kind::{Prompt, Resource, Tool};
        match (self, self.kind()) {
            (Self::NoRule { .. }, Tool) => "tool.no_rule",
            (Self::NoRule { .. }, Prompt) => "prompt.no_rule",
            (Self::NoRule { .. }, Resource) => "resource.no_rule",
            (Self::Denied { .. }, Tool) => "tool.denied",
            (Self::Denied { .. }, Prompt) => "prompt.denied",
            (Self::Denied { .. }, Resource) => "resource.denied",
            (Self::Scope { .. }, Tool) => "tool.scope",
            (Self::Scope { .. }, Prompt) => "prompt.scope",
            (Self::Scope { .. }, Resource) => "resource.scope",
            // Resource rules have no constraints and resource URIs no name checks: those pairs never occur.
            (Self::Constraint { .. }, Tool) => "tool.constraint",
            (Self::Constraint { .. }, Prompt | Resource) => "prompt.constraint",
            (Self::NameVariant { .. }, Tool) => "tool.name_variant",
            (Self::NameVariant { .. }, Prompt | Resource) => "prompt.name_variant",
            (Self::NameAlphabet { .. }, Tool) => "tool.name_alphabet",
            (Self::NameAlphabet { .. }, Prompt | Resource) => "prompt.name_alphabet",
        }
    }
}

impl fmt::Display for AuthzError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let noun = self.kind().noun();
        match self {
            Self::NoRule { name, .. } => write!(f, "no rule allows {noun} {name:?}"),
            Self::Denied { name, rule, .. } => {
                write!(f, "{noun} {name:?} is denied by rule {rule:?}")
            }
            Self::Scope { name, missing, .. } => {
                write!(f, "{noun} {name:?} needs scope {}", missing.join(" "))
            }
            Self::Constraint {
                name,
                argument,
                claim,
                problem,
                ..
            } => write!(
                f,
                "{noun} {name:?}: argument {argument} {problem} claim {claim}"
            ),
            Self::NameVariant { name, rule, .. } => write!(
                f,
                "{noun} {name:?} differs from the rule {rule:?} only by case or fullwidth forms \
                 ({noun} names are case-sensitive)"
            ),
            Self::NameAlphabet { name, .. } => write!(
                f,
                "{noun} {name:?} is outside A-Z a-z 0-9 _ - . (1-128) and no rule names it exactly"
            ),
        }
    }
}

impl std::error::Error for AuthzError {}

/// The rule a tool or prompt name falls under.
pub fn named_rule<'p>(
    rules: &'p NamedRules,
    kind: Kind,
    name: &str,
) -> Result<&'p Rule, AuthzError> {
    match rules.lookup(name) {
        NameMatch::Rule(rule) => Ok(rule),
        NameMatch::Variant { rule } => Err(AuthzError::NameVariant {
            kind,
            name: name.to_string(),
            rule: rule.to_string(),
        }),
        NameMatch::Alphabet => Err(AuthzError::NameAlphabet {
            kind,
            name: name.to_string(),
        }),
        NameMatch::NoRule => Err(AuthzError::NoRule {
            kind,
            name: name.to_string(),
        }),
    }
}

/// Checks a call against its rule. `arguments` are the call's `params.arguments` (None for resources);
/// `claims` are the verified token's claims.
pub fn authorize(
    rule: &Rule,
    kind: Kind,
    name: &str,
    arguments: Option<&Arguments>,
    effective: &ScopeSet,
    claims: &Map<String, Value>,
) -> Result<(), AuthzError> {
    authorize_reference(rule, kind, name, effective)?;
    if rule.constraints.is_empty() {
        return Ok(());
    }
    let empty = Arguments::from(Value::Object(Map::new()));
    let arguments = arguments.unwrap_or(&empty);
    for c in &rule.constraints {
        let fail = |problem| AuthzError::Constraint {
            kind,
            name: name.to_string(),
            argument: c.argument.clone(),
            claim: c.claim.clone(),
            problem,
        };
        // Only the constrained argument becomes a tree (big arguments are kept as bytes).
        let argument = arguments
            .pointer(&c.argument)
            .ok_or_else(|| fail("is missing; required by"))?;
        let claim =
            claim_at(claims, &c.claim).ok_or_else(|| fail("cannot be checked: token has no"))?;
        let ok = match claim.as_ref() {
            Value::Array(items) => items.contains(&argument),
            other => *other == argument,
        };
        if !ok {
            return Err(fail("does not match"));
        }
    }
    Ok(())
}

/// `Value::pointer` on the claims without copying them into a `Value` first.
fn claim_at<'a>(claims: &'a Map<String, Value>, pointer: &str) -> Option<Cow<'a, Value>> {
    let Some(rest) = pointer.strip_prefix('/') else {
        return Value::Object(claims.clone())
            .pointer(pointer)
            .cloned()
            .map(Cow::Owned);
    };
    let (first, rest) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let first = crate::json::unescape_pointer_token(first);
    crate::json::pointer(claims.get(first.as_ref())?, rest).map(Cow::Borrowed)
}

/// Checks a method that only refers to a prompt or resource against that prompt's or resource's rule:
/// `completion/complete`, `resources/subscribe`/`unsubscribe`, `subscriptions/listen`. The rule's effect and
/// scopes apply; its argument constraints do not (they bind the arguments of a `prompts/get`, which such a
/// method does not run: the `prompts/get` itself is still checked with them).
pub fn authorize_reference(
    rule: &Rule,
    kind: Kind,
    name: &str,
    effective: &ScopeSet,
) -> Result<(), AuthzError> {
    if rule.effect == Effect::Deny {
        return Err(AuthzError::Denied {
            kind,
            name: name.to_string(),
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
        return Err(AuthzError::Scope {
            kind,
            name: name.to_string(),
            missing,
        });
    }
    Ok(())
}

/// Whether a rule lets a caller with `effective` scope see its entries in a list: it allows and its scopes
/// are granted (argument constraints depend on the call, so they hide nothing). Dry-run rules hide nothing.
pub fn rule_is_visible(rule: &Rule, effective: &ScopeSet) -> bool {
    rule.mode == Mode::DryRun
        || (rule.effect == Effect::Allow && rule.scopes.iter().all(|s| effective.allows(s)))
}

/// Whether a caller with `effective` scope may see `tool` in `tools/list`.
pub fn is_visible(policy: &Policy, effective: &ScopeSet, tool: &str) -> bool {
    policy
        .tools()
        .lookup(tool)
        .rule()
        .is_some_and(|r| rule_is_visible(r, effective))
}

/// Whether a caller may see `prompt` in `prompts/list` (every prompt when the policy has no `prompts`).
pub fn is_prompt_visible(policy: &Policy, effective: &ScopeSet, prompt: &str) -> bool {
    policy.prompts().is_none_or(|rules| {
        rules
            .lookup(prompt)
            .rule()
            .is_some_and(|r| rule_is_visible(r, effective))
    })
}

/// Whether a caller may see the resource `uri` in `resources/list` (every one without `resources`).
pub fn is_resource_visible(policy: &Policy, effective: &ScopeSet, uri: &str) -> bool {
    policy.resources().is_none_or(|rules| {
        rules
            .lookup(uri)
            .is_some_and(|r| rule_is_visible(r, effective))
    })
}

/// Whether a caller may see a resource template in `resources/templates/list`: the template's text before
/// its first `{` could begin a URI that a rule visible to the caller matches. An approximation (it ignores
/// which rule would win for a given URI); reads are still authorized per URI.
pub fn is_template_visible(policy: &Policy, effective: &ScopeSet, template: &str) -> bool {
    policy.resources().is_none_or(|rules| {
        let prefix = template.split('{').next().unwrap_or("");
        rules.could_begin(prefix, &|r| rule_is_visible(r, effective))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A completion or subscription is checked by the rule's effect and scopes; the constraints that bind
    /// `prompts/get` arguments are not applied (nothing is run), while `authorize` applies them.
    #[test]
    fn references_skip_constraints_but_not_scopes() {
        let rule = Rule {
            name: "code_review".into(),
            effect: Effect::Allow,
            scopes: vec!["prompts:review".into()],
            constraints: vec![crate::rule::Constraint {
                argument: "/repo".into(),
                claim: "/tctx/repo".into(),
            }],
            limit: None,
            mode: Mode::Enforce,
        };
        let granted = ScopeSet::parse_claim("prompts:review").unwrap();
        let none = ScopeSet::parse_claim("other").unwrap();
        assert!(authorize_reference(&rule, Kind::Prompt, "code_review", &granted).is_ok());
        assert!(authorize(
            &rule,
            Kind::Prompt,
            "code_review",
            None,
            &granted,
            &Map::new()
        )
        .is_err());
        let e = authorize_reference(&rule, Kind::Prompt, "code_review", &none).unwrap_err();
        assert_eq!(e.reason(), "prompt.scope");
        let denied = Rule {
            effect: Effect::Deny,
            ..rule
        };
        let e = authorize_reference(&denied, Kind::Prompt, "code_review", &granted).unwrap_err();
        assert_eq!(e.reason(), "prompt.denied");
    }

    #[test]
    fn every_reason_names_its_kind() {
        for kind in [Kind::Tool, Kind::Prompt, Kind::Resource] {
            let name = String::from("x");
            let errors = [
                AuthzError::NoRule {
                    kind,
                    name: name.clone(),
                },
                AuthzError::Denied {
                    kind,
                    name: name.clone(),
                    rule: "*".into(),
                },
                AuthzError::Scope {
                    kind,
                    name: name.clone(),
                    missing: vec!["a".into()],
                },
            ];
            for e in errors {
                assert_eq!(e.reason().split('.').next(), Some(kind.noun()), "{e:?}");
                assert!(e.to_string().contains(kind.noun()), "{e}");
            }
        }
    }
}

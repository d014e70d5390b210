//! A compiled tool, prompt or resource rule: what the rule tables ([`crate::names`], [`crate::resource`]) hold
//! and authorization reads, with the policy's choices it carries (effect, mode, rate limit key, store-error
//! policy).

use schemars::JsonSchema;
#[cfg(test)]
use serde::Deserialize;
use serde::Serialize;

use crate::ratelimit::LimitRule;
use crate::rls::RemoteLimit;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    DryRun,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(rename_all = "snake_case")]
pub enum LimitKey {
    #[default]
    Agent,
    Sub,
    Tool,
}

impl LimitKey {
    pub fn name(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Sub => "sub",
            Self::Tool => "tool",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(rename_all = "snake_case")]
pub enum StoreErrorPolicy {
    #[default]
    Deny,
    Allow,
}

/// An argument check of a tool or prompt rule.
#[derive(Debug, Clone)]
pub struct Constraint {
    pub argument: String,
    pub claim: String,
}

/// A rate limit attached to a rule.
#[derive(Debug, Clone)]
pub struct RuleLimit {
    pub key: LimitKey,
    pub rule: LimitRule,
    pub on_store_error: StoreErrorPolicy,
    /// Counted by the rate limit service ([`crate::rls`]).
    pub remote: Option<RemoteLimit>,
}

/// One compiled tool, prompt or resource rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule's key in the policy (`send_email`, `file:///docs/**`, or `*`).
    pub name: String,
    pub effect: Effect,
    pub scopes: Vec<String>,
    /// Always empty for resource rules.
    pub constraints: Vec<Constraint>,
    pub limit: Option<RuleLimit>,
    pub mode: Mode,
}

#[cfg(test)]
impl Rule {
    /// A plain allowing rule under `name`, for the unit tests of the rule tables.
    pub(crate) fn allowing(name: &str) -> Self {
        Self {
            name: name.into(),
            effect: Effect::Allow,
            scopes: Vec::new(),
            constraints: Vec::new(),
            limit: None,
            mode: Mode::Enforce,
        }
    }
}

//! Tool and prompt names as rules see them. MCP names are case-sensitive, so a rule matches its name exactly.
//! A name that equals a rule only up to ASCII case or fullwidth forms (`ＳＥＮＤ_email`) is a spelling an MCP
//! server might still route to the rule's tool, so it is refused outright, never left to the `*` rule. Names
//! outside the alphabet MCP recommends are refused unless a rule names them exactly.

use std::collections::HashMap;

use crate::mcp::is_recommended_name as is_recommended;
use crate::rule::Rule;

/// Longest rule key of a `tools` or `prompts` section: no longer name is ever accepted on the wire.
pub const MAX_RULE_KEY_BYTES: usize = crate::mcp::MAX_NAME_BYTES;

/// The rules of a `tools` or `prompts` section.
#[derive(Debug, Clone, Default)]
pub struct NamedRules {
    exact: HashMap<String, Rule>,
    /// [`fold`] of each exact key → that key.
    folded: HashMap<String, String>,
    default: Option<Rule>,
}

/// What a name falls under.
#[derive(Debug, Clone, Copy)]
pub enum NameMatch<'a> {
    /// Its own rule, or the `*` rule.
    Rule(&'a Rule),
    /// Equal to the rule with this key only up to case or fullwidth forms: refused.
    Variant { rule: &'a str },
    /// Outside the recommended alphabet and named by no rule: refused.
    Alphabet,
    /// No rule and no `*` rule: refused.
    NoRule,
}

impl NameMatch<'_> {
    pub fn rule(&self) -> Option<&Rule> {
        match self {
            Self::Rule(rule) => Some(rule),
            Self::Variant { .. } | Self::Alphabet | Self::NoRule => None,
        }
    }
}

impl NamedRules {
    /// Adds a rule (`*` is the default). Err: the key of an existing rule with the same [`fold`].
    pub(crate) fn insert(&mut self, rule: Rule) -> Result<(), String> {
        if rule.name == "*" {
            self.default = Some(rule);
            return Ok(());
        }
        let folded = fold(&rule.name);
        if let Some(other) = self.folded.get(&folded) {
            return Err(other.clone());
        }
        self.folded.insert(folded, rule.name.clone());
        self.exact.insert(rule.name.clone(), rule);
        Ok(())
    }

    /// The rule for `name`: its exact rule; else a refusal when it is a variant of a rule or outside the
    /// recommended alphabet; else `*`.
    pub fn lookup(&self, name: &str) -> NameMatch<'_> {
        if let Some(rule) = self.exact.get(name) {
            return NameMatch::Rule(rule);
        }
        if !self.folded.is_empty() {
            if let Some(rule) = self.folded.get(&fold(name)) {
                return NameMatch::Variant { rule };
            }
        }
        if !is_recommended(name) {
            return NameMatch::Alphabet;
        }
        self.default
            .as_ref()
            .map_or(NameMatch::NoRule, NameMatch::Rule)
    }

    /// Every rule, `*` included.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.exact.values().chain(self.default.iter())
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.default.is_none()
    }
}

/// A rule key other than `*`: any non-empty name of at most [`MAX_RULE_KEY_BYTES`] bytes without control
/// characters (a rule may name a tool outside the recommended alphabet exactly).
pub(crate) fn check_rule_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("a rule name must not be empty");
    }
    if key.len() > MAX_RULE_KEY_BYTES {
        return Err("a rule name is at most 128 bytes (longer names are refused on the wire)");
    }
    if key.chars().any(char::is_control) {
        return Err("a rule name must not contain control characters");
    }
    Ok(())
}

/// The name with fullwidth forms (U+FF01..U+FF5E) replaced by their ASCII counterparts and ASCII letters
/// lowercased: two names with the same fold are variants of each other.
pub fn fold(name: &str) -> String {
    name.chars()
        .map(|c| match u32::from(c) {
            0xFF01..=0xFF5E => char::from_u32(u32::from(c) - 0xFEE0).unwrap_or(c),
            _ => c,
        })
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;
    use proptest::prelude::*;

    fn rule(name: &str) -> Rule {
        Rule::allowing(name)
    }

    fn rules(keys: &[&str]) -> NamedRules {
        let mut out = NamedRules::default();
        for k in keys {
            out.insert(rule(k)).unwrap();
        }
        out
    }

    fn matched(m: NameMatch<'_>) -> String {
        match m {
            NameMatch::Rule(r) => format!("rule {}", r.name),
            NameMatch::Variant { rule } => format!("variant {rule}"),
            NameMatch::Alphabet => "alphabet".into(),
            NameMatch::NoRule => "none".into(),
        }
    }

    #[test]
    fn exact_then_variant_then_alphabet_then_default() {
        let r = rules(&["send_email", "weird name/ü", "*"]);
        assert_eq!(matched(r.lookup("send_email")), "rule send_email");
        assert_eq!(matched(r.lookup("weird name/ü")), "rule weird name/ü");
        assert_eq!(matched(r.lookup("Send_Email")), "variant send_email");
        assert_eq!(
            matched(r.lookup("ＳＥＮＤ＿ＥＭＡＩＬ")),
            "variant send_email"
        );
        assert_eq!(matched(r.lookup("ｓend_email")), "variant send_email");
        assert_eq!(matched(r.lookup("WEIRD NAME/ü")), "variant weird name/ü");
        assert_eq!(matched(r.lookup("other")), "rule *");
        assert_eq!(matched(r.lookup("other name")), "alphabet");
        assert_eq!(matched(r.lookup("a/b")), "alphabet");
        assert_eq!(matched(r.lookup("*")), "alphabet");
        assert_eq!(matched(r.lookup("")), "alphabet");
        assert_eq!(matched(r.lookup(&"a".repeat(129))), "alphabet");
        let no_default = rules(&["a"]);
        assert_eq!(matched(no_default.lookup("b")), "none");
        // Not a fold: Cyrillic look-alikes are simply outside the alphabet.
        assert_eq!(matched(r.lookup("sеnd_email")), "alphabet");
    }

    #[test]
    fn keys_with_one_fold_are_refused() {
        let mut r = rules(&["send_email"]);
        assert_eq!(r.insert(rule("SEND_email")).unwrap_err(), "send_email");
        assert_eq!(r.insert(rule("ｓｅｎｄ_email")).unwrap_err(), "send_email");
        assert!(r.insert(rule("*")).is_ok());
    }

    #[test]
    fn rule_keys() {
        assert!(check_rule_key("a b/ü").is_ok());
        assert!(check_rule_key("").is_err());
        assert!(check_rule_key("a\u{0}").is_err());
        assert!(check_rule_key("a\u{85}").is_err());
        assert!(check_rule_key(&"a".repeat(129)).is_err());
    }

    proptest! {
        /// A name is authorized only under its own rule or `*`, and never under `*` when it folds to a rule.
        #[test]
        fn a_rule_is_never_reached_by_another_spelling(name in "[a-zA-Zａ-ｚＡ-Ｚ_.\\- ]{1,12}") {
            let r = rules(&["send_email", "Deploy", "*"]);
            match r.lookup(&name) {
                NameMatch::Rule(rule) if rule.name == "*" => {
                    prop_assert!(fold(&name) != "send_email" && fold(&name) != "deploy");
                    prop_assert!(is_recommended(&name));
                }
                NameMatch::Rule(rule) => prop_assert_eq!(&rule.name, &name),
                NameMatch::Variant { rule } => {
                    prop_assert_eq!(fold(rule), fold(&name));
                    prop_assert!(rule != name);
                }
                NameMatch::Alphabet => prop_assert!(!is_recommended(&name)),
                NameMatch::NoRule => prop_assert!(false, "there is a * rule"),
            }
        }
    }
}

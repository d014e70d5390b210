//! OAuth scopes with trailing-wildcard patterns (`calendar:*`), and the intersection that makes delegation
//! narrow: a scope survives a chain only if the token grants it and every actor's ceiling allows it.
//!
//! Patterns exist only in the policy (agent ceilings). A token's scope values are opaque strings (RFC 6749
//! §3.3, RFC 8693 §4.2): a token scope `a*` or `a*b` is that exact scope, never a wildcard.

use core::fmt;

/// One scope or scope pattern: `email:send` matches itself; `calendar:*` matches every scope starting with
/// `calendar:`; `*` matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopePattern {
    Exact(String),
    Prefix(String),
}

impl ScopePattern {
    /// Reads one space-free scope token. A `*` is only meaningful as the last character.
    pub fn parse(text: &str) -> Result<Self, ScopeSyntaxError> {
        if text.is_empty() {
            return Err(ScopeSyntaxError {
                scope: text.to_string(),
                problem: "empty scope",
            });
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ScopeSyntaxError {
                scope: text.to_string(),
                problem: "whitespace or control character",
            });
        }
        match text.strip_suffix('*') {
            Some(prefix) if prefix.contains('*') => Err(ScopeSyntaxError {
                scope: text.to_string(),
                problem: "'*' is only allowed at the end",
            }),
            Some(prefix) => Ok(Self::Prefix(prefix.to_string())),
            None if text.contains('*') => Err(ScopeSyntaxError {
                scope: text.to_string(),
                problem: "'*' is only allowed at the end",
            }),
            None => Ok(Self::Exact(text.to_string())),
        }
    }

    /// A token's scope value, taken as the opaque string it is (`*` has no meaning in it). Only empty values,
    /// whitespace and control characters are refused.
    pub fn opaque(text: &str) -> Result<Self, ScopeSyntaxError> {
        if text.is_empty() {
            return Err(ScopeSyntaxError {
                scope: text.to_string(),
                problem: "empty scope",
            });
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ScopeSyntaxError {
                scope: text.to_string(),
                problem: "whitespace or control character",
            });
        }
        Ok(Self::Exact(text.to_string()))
    }

    /// The bytes of its written form (`Display`), without writing it.
    fn written(&self) -> impl Iterator<Item = u8> + '_ {
        let (text, star) = match self {
            Self::Exact(s) => (s, None),
            Self::Prefix(p) => (p, Some(b'*')),
        };
        text.bytes().chain(star)
    }

    pub fn matches(&self, scope: &str) -> bool {
        match self {
            Self::Exact(s) => s == scope,
            Self::Prefix(p) => scope.starts_with(p.as_str()),
        }
    }

    /// The pattern matching exactly the scopes both match, if any.
    pub fn intersect(&self, other: &Self) -> Option<Self> {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b)) => (a == b).then(|| self.clone()),
            (Self::Exact(a), Self::Prefix(p)) | (Self::Prefix(p), Self::Exact(a)) => {
                a.starts_with(p.as_str()).then(|| Self::Exact(a.clone()))
            }
            (Self::Prefix(a), Self::Prefix(b)) => {
                if a.starts_with(b.as_str()) {
                    Some(self.clone())
                } else if b.starts_with(a.as_str()) {
                    Some(other.clone())
                } else {
                    None
                }
            }
        }
    }

    /// True when every scope this pattern matches, `other` matches too.
    fn covered_by(&self, other: &Self) -> bool {
        match (self, other) {
            (_, Self::Prefix(p)) => match self {
                Self::Exact(a) | Self::Prefix(a) => a.starts_with(p.as_str()),
            },
            (Self::Exact(a), Self::Exact(b)) => a == b,
            (Self::Prefix(_), Self::Exact(_)) => false,
        }
    }
}

impl fmt::Display for ScopePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(s) => f.write_str(s),
            Self::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// A scope string that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeSyntaxError {
    pub scope: String,
    pub problem: &'static str,
}

impl fmt::Display for ScopeSyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "scope {:?}: {}", self.scope, self.problem)
    }
}

/// A set of scope patterns, kept minimal (no pattern covered by another) and sorted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScopeSet {
    patterns: Vec<ScopePattern>,
}

impl ScopeSet {
    /// Reads a token's OAuth `scope` claim: space-delimited (RFC 6749 §3.3) opaque values. A `*` in a token
    /// scope is an ordinary character: the token grants that exact scope and nothing it might look like.
    pub fn parse_claim(text: &str) -> Result<Self, ScopeSyntaxError> {
        let scopes = text
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(ScopePattern::opaque);
        Ok(Self::from_patterns(scopes.collect::<Result<Vec<_>, _>>()?))
    }

    /// Reads space-delimited policy patterns (`calendar:*`), as agent ceilings are written.
    pub fn parse_patterns(text: &str) -> Result<Self, ScopeSyntaxError> {
        let patterns = text
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(ScopePattern::parse);
        Ok(Self::from_patterns(
            patterns.collect::<Result<Vec<_>, _>>()?,
        ))
    }

    pub fn from_patterns(patterns: Vec<ScopePattern>) -> Self {
        let mut set = Self { patterns };
        set.normalize();
        set
    }

    /// Everything: the identity for intersection.
    pub fn everything() -> Self {
        Self {
            patterns: vec![ScopePattern::Prefix(String::new())],
        }
    }

    fn normalize(&mut self) {
        if self.patterns.len() < 2 {
            return;
        }
        // Ordered by their written form (`calendar:*` as those bytes), stably: no string per pattern.
        self.patterns.sort_by(|a, b| a.written().cmp(b.written()));
        self.patterns.dedup();
        let mut i = 0;
        while i < self.patterns.len() {
            let covered = self
                .patterns
                .get(i)
                .is_some_and(|p| self.patterns.iter().any(|q| q != p && p.covered_by(q)));
            if covered {
                self.patterns.remove(i);
            } else {
                i += 1;
            }
        }
    }

    pub fn allows(&self, scope: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(scope))
    }

    pub fn intersect(&self, other: &Self) -> Self {
        let mut patterns = Vec::new();
        for a in &self.patterns {
            for b in &other.patterns {
                if let Some(c) = a.intersect(b) {
                    patterns.push(c);
                }
            }
        }
        Self::from_patterns(patterns)
    }

    pub fn patterns(&self) -> &[ScopePattern] {
        &self.patterns
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The space-delimited form, as a `scope` claim would carry it.
    pub fn to_claim(&self) -> String {
        let mut out = String::new();
        for (i, pattern) in self.patterns.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            match pattern {
                ScopePattern::Exact(s) => out.push_str(s),
                ScopePattern::Prefix(p) => {
                    out.push_str(p);
                    out.push('*');
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(text: &str) -> ScopeSet {
        ScopeSet::parse_patterns(text).unwrap()
    }

    /// A token scope is opaque: `a*` grants the scope `a*` only, `a*b` is not a syntax error, and neither
    /// widens anything, whatever the ceiling.
    #[test]
    fn token_scopes_are_opaque() {
        let token = ScopeSet::parse_claim("a* a*b * email:*").unwrap();
        for literal in ["a*", "a*b", "*", "email:*"] {
            assert!(token.allows(literal), "{literal}");
        }
        for widened in ["a", "ab", "a:read", "anything", "email:send", ""] {
            assert!(!token.allows(widened), "{widened}");
        }
        // Narrowed by a ceiling, it stays the literal scope it was.
        let eff = token.intersect(&set("a* email:send"));
        assert_eq!(eff.to_claim(), "a* a*b");
        assert!(!eff.allows("a:read"));
        assert!(!token
            .intersect(&ScopeSet::everything())
            .allows("email:send"));
        assert!(ScopeSet::parse_claim("a\tb").is_err());
    }

    #[test]
    fn patterns_match_by_prefix() {
        let s = set("calendar:* email:send");
        assert!(s.allows("calendar:read"));
        assert!(s.allows("email:send"));
        assert!(!s.allows("email:read"));
        assert!(!s.allows("calendar"));
    }

    #[test]
    fn intersection_narrows() {
        let token = set("calendar:* email:send email:read");
        let ceiling = set("calendar:read email:*");
        let eff = token.intersect(&ceiling);
        assert_eq!(eff.to_claim(), "calendar:read email:read email:send");
        assert!(token.intersect(&ScopeSet::everything()) == token);
    }

    #[test]
    fn refuses_inner_wildcards_and_controls() {
        assert!(ScopePattern::parse("a*b").is_err());
        assert!(ScopePattern::parse("a**").is_err());
        assert!(ScopePattern::parse("a\tb").is_err());
        assert!(ScopeSet::parse_claim("a  b").is_ok());
    }

    #[test]
    fn normalization_drops_covered_patterns() {
        assert_eq!(set("a:b a:* a:c x").to_claim(), "a:* x");
    }

    fn arb_pattern() -> impl Strategy<Value = ScopePattern> {
        prop_oneof![
            "[ab:]{0,4}"
                .prop_filter("non-empty", |s| !s.is_empty())
                .prop_map(ScopePattern::Exact),
            "[ab:]{0,3}".prop_map(ScopePattern::Prefix),
        ]
    }

    /// Patterns and token scopes (opaque: `a*` written like the pattern `a*`).
    fn arb_opaque_or_pattern() -> impl Strategy<Value = ScopePattern> {
        prop_oneof![arb_pattern(), "[a*]{1,3}".prop_map(ScopePattern::Exact),]
    }

    fn arb_set() -> impl Strategy<Value = ScopeSet> {
        prop::collection::vec(arb_pattern(), 0..5).prop_map(ScopeSet::from_patterns)
    }

    proptest! {
        /// A scope is in A ∩ B exactly when both A and B allow it: delegation never widens.
        #[test]
        fn intersection_is_exact(a in arb_set(), b in arb_set(), scope in "[ab:]{1,5}") {
            let both = a.intersect(&b);
            prop_assert_eq!(both.allows(&scope), a.allows(&scope) && b.allows(&scope));
        }

        #[test]
        fn intersection_is_commutative_and_idempotent(a in arb_set(), b in arb_set()) {
            prop_assert_eq!(a.intersect(&b), b.intersect(&a));
            prop_assert_eq!(a.intersect(&a), a);
        }

        #[test]
        fn normalization_keeps_meaning(ps in prop::collection::vec(arb_pattern(), 0..6), scope in "[ab:]{1,5}") {
            let raw = ps.iter().any(|p| p.matches(&scope));
            prop_assert_eq!(ScopeSet::from_patterns(ps).allows(&scope), raw);
        }

        /// The same set, in the same order, as the first normalisation wrote it (sorted by each pattern's
        /// string, stably; covered patterns dropped against the whole sorted list): `to_claim` is audited.
        #[test]
        fn normalization_is_the_string_sorted_one(ps in prop::collection::vec(arb_opaque_or_pattern(), 0..7)) {
            let mut reference = ps.clone();
            reference.sort_by_cached_key(ToString::to_string);
            reference.dedup();
            let all = reference.clone();
            reference.retain(|p| !all.iter().any(|q| q != p && p.covered_by(q)));
            let set = ScopeSet::from_patterns(ps);
            prop_assert_eq!(set.patterns(), &reference[..]);
            let written: Vec<String> = reference.iter().map(ToString::to_string).collect();
            prop_assert_eq!(set.to_claim(), written.join(" "));
        }

        #[test]
        fn claim_round_trips(a in arb_set()) {
            prop_assume!(!a.is_empty());
            prop_assert_eq!(ScopeSet::parse_patterns(&a.to_claim()).unwrap(), a);
        }
    }
}

//! Resource rules: URI patterns of the policy's `resources` section and how a `resources/read` URI finds its
//! rule.
//!
//! A key without `*` is an exact URI. In a pattern, `*` matches any run of characters except `/` and `**` any
//! run including `/`; the lone key `*` is the default rule. Matching is byte for byte (case-sensitive, no
//! percent-decoding). Precedence: the exact rule, then the pattern with the most literal characters, ties
//! broken by the pattern text (lexicographic), then `*`. A pattern never matches a URI that has a `.` or
//! `..` segment (also percent-encoded, or split by `\`): `file:///docs/**` must not reach
//! `file:///docs/../secrets` through a server that resolves dot-segments. Such URIs only match an exact rule
//! (not `*` either: an allowing default must not reach what a stricter pattern guards). The same holds for a
//! URI that percent-encodes an unreserved character, `/` or `\` (`%73` is `s` to a server that decodes), and
//! for one with an uppercase scheme or host (URL parsers lowercase them).

use core::fmt;
use std::collections::HashMap;

use crate::rule::Rule;

/// Longest resource rule key: no longer URI is ever accepted on the wire.
pub const MAX_PATTERN_BYTES: usize = crate::mcp::MAX_URI_BYTES;

/// Why a resource rule key is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PatternError {
    Empty,
    TooLong {
        max: usize,
    },
    Control,
    /// Three or more `*` in a row: neither `*` nor `**`.
    StarRun,
    /// Two keys spell the same exact URI or pattern (cannot happen with a JSON object, kept for callers).
    Duplicate,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("a resource URI or pattern must not be empty"),
            Self::TooLong { max } => write!(f, "a resource URI or pattern is at most {max} bytes"),
            Self::Control => {
                f.write_str("a resource URI or pattern must not contain control characters")
            }
            Self::StarRun => {
                f.write_str("use * (within a segment) or ** (across segments), not ***")
            }
            Self::Duplicate => f.write_str("this URI or pattern has a rule already"),
        }
    }
}

impl std::error::Error for PatternError {}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    /// `*`: any run without `/`.
    Star,
    /// `**`: any run.
    DoubleStar,
}

/// A compiled URI pattern (at least one `*`).
#[derive(Debug, Clone)]
pub struct UriPattern {
    source: String,
    tokens: Vec<Token>,
    literal_chars: usize,
}

impl UriPattern {
    /// Parses a key that contains `*` (and is not the lone `*`).
    pub fn parse(source: &str) -> Result<Self, PatternError> {
        check_key(source)?;
        let mut tokens = Vec::new();
        let mut literal = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '*' {
                literal.push(c);
                continue;
            }
            if !literal.is_empty() {
                tokens.push(Token::Literal(core::mem::take(&mut literal)));
            }
            if chars.peek() == Some(&'*') {
                chars.next();
                if chars.peek() == Some(&'*') {
                    return Err(PatternError::StarRun);
                }
                tokens.push(Token::DoubleStar);
            } else {
                tokens.push(Token::Star);
            }
        }
        if !literal.is_empty() {
            tokens.push(Token::Literal(literal));
        }
        let literal_chars = tokens
            .iter()
            .map(|t| match t {
                Token::Literal(l) => l.chars().count(),
                Token::Star | Token::DoubleStar => 0,
            })
            .sum();
        Ok(Self {
            source: source.to_string(),
            tokens,
            literal_chars,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// How many characters of the pattern are literal (its specificity).
    pub fn literal_chars(&self) -> usize {
        self.literal_chars
    }

    /// Whether the whole `uri` matches (dot-segments aside: see [`ResourceRules::lookup`]).
    pub fn matches(&self, uri: &str) -> bool {
        // Cheap rejections first: a literal lead or tail that the URI lacks.
        if let Some(Token::Literal(lead)) = self.tokens.first() {
            if !uri.starts_with(lead.as_str()) {
                return false;
            }
        }
        if let Some(Token::Literal(tail)) = self.tokens.last() {
            if !uri.ends_with(tail.as_str()) {
                return false;
            }
        }
        let mut reach = self.start(uri);
        for token in &self.tokens {
            reach = step(token, uri.as_bytes(), &reach);
        }
        reach.last().copied().unwrap_or(false)
    }

    /// Whether some URI that starts with `prefix` matches: `prefix` consumed up to some point of the
    /// pattern, the rest of the pattern can always be completed.
    pub fn could_begin(&self, prefix: &str) -> bool {
        let bytes = prefix.as_bytes();
        let end = bytes.len();
        let mut reach = self.start(prefix);
        for token in &self.tokens {
            if reach.get(end).copied().unwrap_or(false) {
                return true;
            }
            if let Token::Literal(lit) = token {
                // The prefix ends inside this literal.
                let partial = reach.iter().enumerate().any(|(j, r)| {
                    *r && bytes
                        .get(j..)
                        .is_some_and(|rest| lit.as_bytes().starts_with(rest))
                });
                if partial {
                    return true;
                }
            }
            reach = step(token, bytes, &reach);
        }
        reach.get(end).copied().unwrap_or(false)
    }

    fn start(&self, text: &str) -> Vec<bool> {
        let mut reach = vec![false; text.len() + 1];
        if let Some(first) = reach.first_mut() {
            *first = true;
        }
        reach
    }
}

/// One token of the pattern over `text`: `reach[j]` says the pattern so far can end at byte `j`.
fn step(token: &Token, text: &[u8], reach: &[bool]) -> Vec<bool> {
    let mut next = vec![false; reach.len()];
    match token {
        Token::Literal(lit) => {
            let lit = lit.as_bytes();
            for (j, r) in reach.iter().enumerate() {
                if *r && text.get(j..).is_some_and(|rest| rest.starts_with(lit)) {
                    if let Some(n) = next.get_mut(j + lit.len()) {
                        *n = true;
                    }
                }
            }
        }
        Token::Star => {
            // next[k]: some reachable j <= k with no `/` in text[j..k].
            let mut active = false;
            for (k, n) in next.iter_mut().enumerate() {
                if k > 0 && text.get(k - 1) == Some(&b'/') {
                    active = false;
                }
                active |= reach.get(k).copied().unwrap_or(false);
                *n = active;
            }
        }
        Token::DoubleStar => {
            let mut active = false;
            for (k, n) in next.iter_mut().enumerate() {
                active |= reach.get(k).copied().unwrap_or(false);
                *n = active;
            }
        }
    }
    next
}

/// Whether `uri` has a `.` or `..` segment once `%2e`, `%2f` and `%5c` are decoded and `\` is read as `/`.
pub fn has_dot_segment(uri: &str) -> bool {
    let lower = uri.to_ascii_lowercase();
    let decoded = lower
        .replace("%2e", ".")
        .replace("%2f", "/")
        .replace("%5c", "/")
        .replace('\\', "/");
    decoded.split('/').any(|s| s == "." || s == "..")
}

/// Whether `uri` percent-encodes a character a server may decode before use: an unreserved one (RFC 3986
/// §6.2.2.2: `%73` is `s`), `/` or `\`. Byte-for-byte matching would read such a URI as another resource
/// than the server does (`file:///secret%73/key` beside a `file:///secrets/**` rule).
pub fn has_decodable_escape(uri: &str) -> bool {
    let bytes = uri.as_bytes();
    bytes.iter().enumerate().any(|(i, b)| {
        if *b != b'%' {
            return false;
        }
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| core::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        hex.is_some_and(|c| c.is_ascii_alphanumeric() || b"-._~/\\".contains(&c))
    })
}

/// Whether the scheme, or the authority after `//`, has an ASCII uppercase letter. URL parsers lowercase
/// both (RFC 3986 §6.2.2.1; the WHATWG parser and the `url` crate for special schemes), so a server may read
/// `FILE:///secrets/key` as `file:///secrets/key`.
pub fn has_uppercase_scheme_or_host(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return false;
    };
    if scheme.bytes().any(|b| b.is_ascii_uppercase()) {
        return true;
    }
    rest.strip_prefix("//").is_some_and(|after| {
        after
            .split(['/', '?', '#'])
            .next()
            .is_some_and(|authority| authority.bytes().any(|b| b.is_ascii_uppercase()))
    })
}

fn check_key(key: &str) -> Result<(), PatternError> {
    if key.is_empty() {
        return Err(PatternError::Empty);
    }
    if key.len() > MAX_PATTERN_BYTES {
        return Err(PatternError::TooLong {
            max: MAX_PATTERN_BYTES,
        });
    }
    if key.chars().any(char::is_control) {
        return Err(PatternError::Control);
    }
    Ok(())
}

/// The rules of a `resources` section.
#[derive(Debug, Clone, Default)]
pub struct ResourceRules {
    exact: HashMap<String, Rule>,
    /// In precedence order: most literal characters first, then by pattern text.
    patterns: Vec<(UriPattern, Rule)>,
    default: Option<Rule>,
}

impl ResourceRules {
    /// Adds a rule under its key (`rule.name`).
    pub(crate) fn insert(&mut self, rule: Rule) -> Result<(), PatternError> {
        let key = rule.name.as_str();
        if key == "*" {
            self.default = Some(rule);
            return Ok(());
        }
        if !key.contains('*') {
            check_key(key)?;
            if self.exact.contains_key(key) {
                return Err(PatternError::Duplicate);
            }
            self.exact.insert(key.to_string(), rule);
            return Ok(());
        }
        let pattern = UriPattern::parse(key)?;
        let at = self.patterns.partition_point(|(p, _)| {
            p.literal_chars > pattern.literal_chars
                || (p.literal_chars == pattern.literal_chars && p.source < pattern.source)
        });
        if self
            .patterns
            .get(at)
            .is_some_and(|(p, _)| p.source == pattern.source)
        {
            return Err(PatternError::Duplicate);
        }
        self.patterns.insert(at, (pattern, rule));
        Ok(())
    }

    /// The rule for `uri`: exact, else the first matching pattern in precedence order, else `*`. A URI with
    /// a dot-segment, an escape a server may decode ([`has_decodable_escape`]) or an uppercase scheme or host
    /// ([`has_uppercase_scheme_or_host`]) matches only an exact rule:
    /// neither a pattern nor `*` (an allowing `*` would otherwise let `file:///public/../secrets/key` or
    /// `file:///secret%73/key` past a stricter `file:///secrets/**`).
    pub fn lookup(&self, uri: &str) -> Option<&Rule> {
        if let Some(rule) = self.exact.get(uri) {
            return Some(rule);
        }
        if has_dot_segment(uri) || has_decodable_escape(uri) || has_uppercase_scheme_or_host(uri) {
            return None;
        }
        if let Some((_, rule)) = self.patterns.iter().find(|(p, _)| p.matches(uri)) {
            return Some(rule);
        }
        self.default.as_ref()
    }

    /// Whether a URI beginning with `prefix` could fall under a rule `visible` accepts (resource templates:
    /// an approximation that ignores precedence; reads are still authorized per URI).
    pub fn could_begin(&self, prefix: &str, visible: &dyn Fn(&Rule) -> bool) -> bool {
        self.default.as_ref().is_some_and(visible)
            || self
                .exact
                .iter()
                .any(|(uri, rule)| uri.starts_with(prefix) && visible(rule))
            || self
                .patterns
                .iter()
                .any(|(p, rule)| visible(rule) && p.could_begin(prefix))
    }

    /// Every rule, `*` included.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.exact
            .values()
            .chain(self.patterns.iter().map(|(_, r)| r))
            .chain(self.default.iter())
    }
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

    fn rules(keys: &[&str]) -> ResourceRules {
        let mut out = ResourceRules::default();
        for k in keys {
            out.insert(rule(k)).unwrap();
        }
        out
    }

    fn m(p: &str, uri: &str) -> bool {
        UriPattern::parse(p).unwrap().matches(uri)
    }

    #[test]
    fn star_stays_in_a_segment_double_star_crosses() {
        assert!(m("file:///docs/*", "file:///docs/a.txt"));
        assert!(m("file:///docs/*", "file:///docs/"));
        assert!(!m("file:///docs/*", "file:///docs/a/b.txt"));
        assert!(m("file:///docs/**", "file:///docs/a/b.txt"));
        assert!(m("file:///docs/**", "file:///docs/"));
        assert!(!m("file:///docs/**", "file:///doc"));
        assert!(m("file:///*/readme.md", "file:///x/readme.md"));
        assert!(!m("file:///*/readme.md", "file:///x/y/readme.md"));
        assert!(m("file:///**/readme.md", "file:///x/y/readme.md"));
        assert!(m("db://*/users/*", "db://main/users/42"));
        assert!(!m("db://*/users/*", "db://main/users/42/x"));
        assert!(m("*.txt", "a.txt"));
        assert!(!m("*.txt", "a/b.txt"));
        assert!(m("**", ""));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "aXbYbZc"));
        assert!(!m("a*b*c", "aXbYbZ"));
        assert!(m("ü*", "üx"), "literals are whole characters");
    }

    #[test]
    fn bad_keys_are_refused() {
        assert_eq!(
            UriPattern::parse("a***").unwrap_err(),
            PatternError::StarRun
        );
        assert_eq!(UriPattern::parse("").unwrap_err(), PatternError::Empty);
        assert_eq!(
            UriPattern::parse("a\n*").unwrap_err(),
            PatternError::Control
        );
        let long = format!("{}*", "a".repeat(MAX_PATTERN_BYTES));
        assert!(matches!(
            UriPattern::parse(&long).unwrap_err(),
            PatternError::TooLong { .. }
        ));
    }

    #[test]
    fn precedence_exact_then_most_literal_then_text_then_default() {
        let r = rules(&[
            "file:///docs/**",
            "file:///docs/*.txt",
            "file:///docs/public.txt",
            "file:///*/public.txt",
            "file:///b*",
            "file:///a*",
            "*",
        ]);
        let name = |uri: &str| r.lookup(uri).map(|r| r.name.clone()).unwrap();
        assert_eq!(name("file:///docs/public.txt"), "file:///docs/public.txt");
        assert_eq!(name("file:///docs/other.txt"), "file:///docs/*.txt");
        assert_eq!(name("file:///docs/a/other.txt"), "file:///docs/**");
        assert_eq!(name("file:///x/public.txt"), "file:///*/public.txt");
        // Same literal count: the lexicographically smaller text wins.
        let r2 = rules(&["x*y", "x*z*"]);
        assert_eq!(r2.lookup("xAy").unwrap().name, "x*y");
        let r3 = rules(&["ab*", "a*b"]);
        assert_eq!(r3.lookup("abb").unwrap().name, "a*b");
        assert_eq!(name("http://other"), "*");
        assert!(rules(&["a*"]).lookup("b").is_none());
    }

    #[test]
    fn dot_segments_never_match_a_pattern() {
        let r = rules(&["file:///docs/**", "file:///docs/../x"]);
        for uri in [
            "file:///docs/../secrets",
            "file:///docs/./a",
            "file:///docs/%2e%2e/secrets",
            "file:///docs/%2E./secrets",
            "file:///docs/a%2f..%2fb",
            "file:///docs/a\\..\\b",
            "file:///docs/..",
        ] {
            assert!(r.lookup(uri).is_none(), "{uri}");
        }
        assert_eq!(
            r.lookup("file:///docs/../x").unwrap().name,
            "file:///docs/../x"
        );
        assert!(r.lookup("file:///docs/a..b/.c").is_some());
    }

    /// With an allowing `*`, a dot-segment URI must not slip past a stricter pattern through the default:
    /// `file:///public/../secrets/key` is `file:///secrets/key` to a server that resolves dot-segments.
    #[test]
    fn dot_segments_never_fall_to_the_default() {
        let r = rules(&["file:///secrets/**", "*"]);
        assert_eq!(r.lookup("file:///public/a").unwrap().name, "*");
        for uri in [
            "file:///public/../secrets/key",
            "file:///public/%2e%2e/secrets/key",
            "file:///./secrets/key",
        ] {
            assert!(r.lookup(uri).is_none(), "{uri}");
        }
    }

    /// URL parsers (WHATWG, the `url` crate behind pydantic's `AnyUrl`) lowercase the scheme and a special
    /// scheme's host: `FILE:///secrets/key` is `file:///secrets/key` to them, so it must not reach `*` either.
    #[test]
    fn uppercase_scheme_or_host_never_falls_to_the_default() {
        let r = rules(&["file:///secrets/**", "https://api.example/admin/**", "*"]);
        for uri in [
            "FILE:///secrets/key",
            "File:///secrets/key",
            "https://API.example/admin/x",
            "HTTPS://api.example/admin/x",
        ] {
            assert!(r.lookup(uri).is_none(), "{uri}");
        }
        assert_eq!(
            r.lookup("https://api.example/Admin/x").unwrap().name,
            "*",
            "paths keep their case"
        );
        assert_eq!(r.lookup("file:///Secrets/key").unwrap().name, "*");
    }

    /// `%73` is `s` to any server that percent-decodes (RFC 3986 §6.2.2.2): `file:///secret%73/key` must not
    /// reach `file:///secrets/key` through an allowing `*` either.
    #[test]
    fn encoded_unreserved_characters_never_fall_to_the_default() {
        let r = rules(&["file:///secrets/**", "file:///docs/a%7e.txt", "*"]);
        for uri in [
            "file:///secret%73/key",
            "file:///%73ecrets/key",
            "file:///secrets%2Fkey",
            "file:///secrets/%6Bey",
        ] {
            assert!(r.lookup(uri).is_none_or(|rule| rule.name != "*"), "{uri}");
        }
        assert_eq!(
            r.lookup("file:///a%20b").unwrap().name,
            "*",
            "reserved and other escapes stay"
        );
        assert_eq!(
            r.lookup("file:///docs/a%7e.txt").unwrap().name,
            "file:///docs/a%7e.txt"
        );
    }

    #[test]
    fn templates_could_begin() {
        let p = UriPattern::parse("file:///docs/**").unwrap();
        assert!(p.could_begin("file:///"));
        assert!(p.could_begin("file:///docs/"));
        assert!(p.could_begin("file:///docs/a/b"));
        assert!(!p.could_begin("file:///etc/"));
        assert!(!p.could_begin("db://"));
        let p = UriPattern::parse("db://*/users/*").unwrap();
        assert!(p.could_begin("db://"));
        assert!(p.could_begin("db://main/us"));
        assert!(!p.could_begin("db://main/x/users/"));
        assert!(!p.could_begin("db://main/users/1/"));
        let r = rules(&["file:///docs/public.txt", "db://*/users/*"]);
        let all = |_: &Rule| true;
        assert!(r.could_begin("file:///docs/", &all));
        assert!(!r.could_begin("file:///etc/", &all));
        assert!(r.could_begin("db://x/", &all));
        assert!(!r.could_begin("file:///docs/", &|_: &Rule| false));
    }

    /// A reference matcher by backtracking over characters, for the proptests.
    fn reference(p: &[char], s: &[char]) -> bool {
        match p {
            [] => s.is_empty(),
            ['*', '*', rest @ ..] => (0..=s.len()).any(|i| reference(rest, &s[i..])),
            ['*', rest @ ..] => (0..=s.len())
                .take_while(|i| !s[..*i].contains(&'/'))
                .any(|i| reference(rest, &s[i..])),
            [c, rest @ ..] => s.first() == Some(c) && reference(rest, &s[1..]),
        }
    }

    proptest! {
        #[test]
        fn matches_like_the_reference(p in "[ab/*]{1,8}", s in "[ab/]{0,10}") {
            prop_assume!(p.contains('*') && !p.contains("***"));
            let pc: Vec<char> = p.chars().collect();
            let sc: Vec<char> = s.chars().collect();
            prop_assert_eq!(UriPattern::parse(&p).unwrap().matches(&s), reference(&pc, &sc));
        }

        /// could_begin(prefix) holds exactly when some completion of the prefix matches (checked over short
        /// completions).
        #[test]
        fn could_begin_agrees_with_matching(p in "[ab/*]{1,6}", prefix in "[ab/]{0,5}") {
            prop_assume!(p.contains('*') && !p.contains("***"));
            let pattern = UriPattern::parse(&p).unwrap();
            let mut completions = vec![String::new()];
            for _ in 0..6 {
                let longer: Vec<String> = completions.iter()
                    .flat_map(|c| ["a", "b", "/"].map(|x| format!("{c}{x}")))
                    .collect();
                completions.extend(longer.into_iter().filter(|c| c.len() <= 6));
                completions.sort();
                completions.dedup();
            }
            let some = completions.iter().any(|c| pattern.matches(&format!("{prefix}{c}")));
            if some {
                prop_assert!(pattern.could_begin(&prefix));
            }
            if pattern.could_begin(&prefix) {
                // Completing needs at most the pattern's literal characters.
                prop_assert!(some, "{} could begin {}", p, prefix);
            }
        }

        #[test]
        fn lookup_never_panics(uri in "\\PC{0,40}") {
            let r = rules(&["file:///**", "*://*/x*", "a"]);
            let _ = r.lookup(&uri);
            let _ = r.could_begin(&uri, &|_: &Rule| true);
        }
    }
}

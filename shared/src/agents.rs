//! Agents: the SPIFFE ID patterns of the policy's `agents` section and the table of their scope ceilings,
//! shared by the policy (which compiles them) and delegation (which looks actors up).

use std::collections::HashMap;

use crate::scope::ScopeSet;

/// A SPIFFE ID pattern: `*` matches within one path segment, `**` across segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPattern {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Segment,
    Any,
}

impl AgentPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("agent pattern must not be empty".into());
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '*' {
                literal.push(c);
                continue;
            }
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            if chars.peek() == Some(&'*') {
                chars.next();
                if chars.peek() == Some(&'*') {
                    return Err("'***' is not a valid pattern; use '*' or '**'".into());
                }
                parts.push(Part::Any);
            } else {
                parts.push(Part::Segment);
            }
            if matches!(
                parts.as_slice(),
                [.., Part::Segment | Part::Any, Part::Segment | Part::Any]
            ) {
                return Err("two wildcards in a row".into());
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self {
            source: text.to_string(),
            parts,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Literal characters: more means more specific.
    pub fn specificity(&self) -> usize {
        self.parts
            .iter()
            .map(|p| if let Part::Literal(l) = p { l.len() } else { 0 })
            .sum()
    }

    pub fn matches(&self, id: &str) -> bool {
        match_parts(&self.parts, id)
    }

    /// The literal every matching ID starts with (empty when the pattern starts with a wildcard).
    pub fn literal_lead(&self) -> &str {
        match self.parts.first() {
            Some(Part::Literal(l)) => l,
            _ => "",
        }
    }
}

fn match_parts(parts: &[Part], input: &str) -> bool {
    match parts.split_first() {
        None => input.is_empty(),
        Some((Part::Literal(l), rest)) => input
            .strip_prefix(l.as_str())
            .is_some_and(|tail| match_parts(rest, tail)),
        Some((wild, rest)) => {
            // Patterns come from the policy and have few wildcards; inputs are bounded by the token size cap.
            // A wildcard stands for at least one character.
            let stop_at_slash = matches!(wild, Part::Segment);
            let mut end = 0;
            loop {
                let Some(c) = input.get(end..).and_then(|t| t.chars().next()) else {
                    return false;
                };
                if stop_at_slash && c == '/' {
                    return false;
                }
                end += c.len_utf8();
                if input.get(end..).is_some_and(|tail| match_parts(rest, tail)) {
                    return true;
                }
            }
        }
    }
}

/// Agent ceilings: exact IDs in a map, patterns in specificity order.
#[derive(Debug, Clone, Default)]
pub struct Agents {
    exact: HashMap<String, ScopeSet>,
    patterns: Vec<(AgentPattern, ScopeSet)>,
    /// Pattern positions (ascending) by their literal lead cut after its last `/`: an ID can only match
    /// patterns filed under one of its own `/`-ended prefixes (or ""), so a lookup costs the number of
    /// segments in the ID, not the number of patterns in the policy.
    by_lead: HashMap<String, Vec<usize>>,
}

/// Up to this many patterns a scan is cheaper than hashing each prefix of the ID.
pub(crate) const PATTERN_SCAN_MAX: usize = 8;

impl Agents {
    /// The table of exact IDs and patterns; the patterns are put in specificity order (most specific first,
    /// ties by their source text) and indexed.
    pub(crate) fn new(
        exact: HashMap<String, ScopeSet>,
        mut patterns: Vec<(AgentPattern, ScopeSet)>,
    ) -> Self {
        patterns.sort_by(|(a, _), (b, _)| {
            b.specificity()
                .cmp(&a.specificity())
                .then_with(|| a.source().cmp(b.source()))
        });
        let mut out = Self {
            exact,
            patterns,
            by_lead: HashMap::new(),
        };
        out.index();
        out
    }

    /// The ceiling for `agent`: its exact entry, else the most specific matching pattern.
    pub fn ceiling(&self, agent: &str) -> Option<&ScopeSet> {
        if let Some(set) = self.exact.get(agent) {
            return Some(set);
        }
        if self.patterns.len() <= PATTERN_SCAN_MAX {
            return self
                .patterns
                .iter()
                .find(|(p, _)| p.matches(agent))
                .map(|(_, s)| s);
        }
        // The first matching pattern in specificity order, among the candidates of every prefix.
        let mut best: Option<usize> = None;
        let ends = std::iter::once(0).chain(agent.match_indices('/').map(|(i, _)| i + 1));
        for end in ends {
            let Some(candidates) = agent.get(..end).and_then(|lead| self.by_lead.get(lead)) else {
                continue;
            };
            let found = candidates
                .iter()
                .take_while(|i| best.is_none_or(|b| **i < b))
                .find(|i| {
                    self.patterns
                        .get(**i)
                        .is_some_and(|(p, _)| p.matches(agent))
                });
            if let Some(i) = found {
                best = Some(*i);
            }
        }
        best.and_then(|i| self.patterns.get(i)).map(|(_, s)| s)
    }

    /// Files every pattern under its literal lead cut after the last `/` (call after sorting).
    fn index(&mut self) {
        self.by_lead.clear();
        for (i, (pattern, _)) in self.patterns.iter().enumerate() {
            let lead = pattern.literal_lead();
            let key = lead.rfind('/').and_then(|at| lead.get(..=at)).unwrap_or("");
            self.by_lead.entry(key.to_string()).or_default().push(i);
        }
    }

    /// The patterns in specificity order, for the tests that compare the index with a plain scan.
    #[cfg(test)]
    pub(crate) fn patterns(&self) -> &[(AgentPattern, ScopeSet)] {
        &self.patterns
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.patterns.is_empty()
    }
}

//! Delegation: who is acting. The `act` claim (RFC 8693) nests actors outermost-first; the outermost `act.sub`
//! is the agent making this call (the current actor), the inner ones delegated to it (prior actors).
//!
//! Two policies for prior actors (`delegation.prior_actors`):
//! - `narrow` (default): every actor must be a known agent, and the call may do only what the token grants
//!   and every actor's ceiling allows: permissions only narrow along the chain.
//! - `informational` (RFC 8693 §4.1: "only the top-level claims and the current actor are to be considered
//!   in evaluating access control decisions"): only the current actor must be a known agent and narrows the
//!   token's scope; prior actors are recorded in the audit record and bound nothing. `max_depth` applies in
//!   both.

use core::fmt;

use crate::policy::{PeerBinding, Policy, PriorActors};
use crate::scope::ScopeSet;

pub use crate::agents::AgentPattern;

/// Why a delegation chain was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DelegationError {
    TooDeep {
        depth: usize,
        max: usize,
    },
    /// An actor that matches no `agents` entry.
    UnknownAgent {
        agent: String,
    },
    /// `peer_binding: require` and the host knows no peer identity (no mTLS).
    PeerMissing,
    /// The mTLS peer is not the acting agent: one workload presenting another's token.
    PeerMismatch {
        peer: String,
        agent: String,
    },
}

impl DelegationError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooDeep { .. } => "delegation.depth",
            Self::UnknownAgent { .. } => "delegation.unknown_agent",
            Self::PeerMissing => "delegation.peer_missing",
            Self::PeerMismatch { .. } => "delegation.peer_mismatch",
        }
    }
}

impl fmt::Display for DelegationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooDeep { depth, max } => write!(
                f,
                "delegation chain has {depth} actors, at most {max} allowed"
            ),
            Self::UnknownAgent { agent } => {
                write!(f, "actor {agent:?} matches no agent in the policy")
            }
            Self::PeerMissing => f.write_str(
                "peer binding is required but the connection has no verified peer identity (mTLS)",
            ),
            Self::PeerMismatch { peer, agent } => {
                write!(f, "peer {peer:?} is not the acting agent {agent:?}")
            }
        }
    }
}

impl std::error::Error for DelegationError {}

/// Who acts, on whose behalf, with what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegation {
    /// The agent making this call: the outermost `act.sub`, else `req_wl`.
    pub agent: String,
    /// Every actor, outermost (current) first; `[req_wl]` when there is no `act`.
    pub actors: Vec<String>,
    /// `act` nesting depth (0 without delegation).
    pub depth: usize,
    /// Token scope narrowed by every actor's ceiling.
    pub effective_scope: ScopeSet,
}

/// Evaluates a verified token's chain against the policy and the host's view of the peer.
pub fn evaluate(
    policy: &Policy,
    token_scope: &ScopeSet,
    act_chain: &[String],
    req_wl: &str,
    peer: Option<&str>,
) -> Result<Delegation, DelegationError> {
    let depth = act_chain.len();
    if depth > policy.max_delegation_depth {
        return Err(DelegationError::TooDeep {
            depth,
            max: policy.max_delegation_depth,
        });
    }
    let actors: Vec<String> = if act_chain.is_empty() {
        vec![req_wl.to_string()]
    } else {
        act_chain.to_vec()
    };
    let mut effective = token_scope.clone();
    // Which actors narrow: all of them, or (RFC 8693 §4.1) only the current one.
    let deciding = match policy.spec().delegation.prior_actors {
        PriorActors::Narrow => actors.len(),
        PriorActors::Informational => 1,
    };
    for actor in actors.iter().take(deciding) {
        let ceiling =
            policy
                .agents
                .ceiling(actor)
                .ok_or_else(|| DelegationError::UnknownAgent {
                    agent: actor.clone(),
                })?;
        effective = effective.intersect(ceiling);
    }
    let agent = actors.first().cloned().unwrap_or_default();
    match (policy.peer_binding, peer) {
        (PeerBinding::Off, _) | (PeerBinding::WhenPresent, None) => {}
        (PeerBinding::Require, None) => return Err(DelegationError::PeerMissing),
        (PeerBinding::Require | PeerBinding::WhenPresent, Some(peer)) => {
            if peer != agent {
                return Err(DelegationError::PeerMismatch {
                    peer: peer.to_string(),
                    agent,
                });
            }
        }
    }
    Ok(Delegation {
        agent,
        actors,
        depth,
        effective_scope: effective,
    })
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
    use serde_json::json;

    fn policy(binding: &str) -> Policy {
        policy_with(binding, "narrow")
    }

    fn policy_with(binding: &str, prior_actors: &str) -> Policy {
        let v = json!({
            "trust_domain": "t",
            "issuers": [{"name": "i", "jwks_uri": "https://i/jwks"}],
            "agents": {
                "spiffe://t/orchestrator": {"max_scopes": ["*"]},
                "spiffe://t/agent/*": {"max_scopes": ["calendar:*", "email:send"]},
                "spiffe://t/agent/mailer": {"max_scopes": ["email:*"]},
                "spiffe://t/gw": {"max_scopes": ["*"]}
            },
            "delegation": {"max_depth": 2, "prior_actors": prior_actors},
            "peer_binding": binding
        });
        Policy::from_json(&serde_json::to_vec(&v).unwrap()).unwrap()
    }

    fn scopes(s: &str) -> ScopeSet {
        ScopeSet::parse_claim(s).unwrap()
    }

    #[test]
    fn glob_segments() {
        let p = AgentPattern::parse("spiffe://t/agent/*").unwrap();
        assert!(p.matches("spiffe://t/agent/a"));
        assert!(!p.matches("spiffe://t/agent/a/b"));
        assert!(!p.matches("spiffe://t/agent/"));
        let p = AgentPattern::parse("spiffe://t/**").unwrap();
        assert!(p.matches("spiffe://t/agent/a/b"));
        let p = AgentPattern::parse("spiffe://*/agent/*-bot").unwrap();
        assert!(p.matches("spiffe://x/agent/mail-bot"));
        assert!(!p.matches("spiffe://x/agent/mail"));
        assert!(AgentPattern::parse("a***").is_err());
    }

    #[test]
    fn without_act_the_requesting_workload_acts() {
        let d = evaluate(
            &policy("off"),
            &scopes("email:send"),
            &[],
            "spiffe://t/gw",
            None,
        )
        .unwrap();
        assert_eq!(d.agent, "spiffe://t/gw");
        assert_eq!(d.depth, 0);
    }

    #[test]
    fn chain_narrows_to_every_actor() {
        let chain = vec![
            "spiffe://t/agent/research".to_string(),
            "spiffe://t/orchestrator".to_string(),
        ];
        let d = evaluate(
            &policy("off"),
            &scopes("calendar:read email:send email:read admin"),
            &chain,
            "spiffe://t/gw",
            None,
        )
        .unwrap();
        assert_eq!(d.agent, "spiffe://t/agent/research");
        assert_eq!(d.effective_scope.to_claim(), "calendar:read email:send");
    }

    #[test]
    fn exact_agent_entry_wins_over_pattern() {
        let chain = vec!["spiffe://t/agent/mailer".to_string()];
        let d = evaluate(
            &policy("off"),
            &scopes("email:read"),
            &chain,
            "spiffe://t/gw",
            None,
        )
        .unwrap();
        assert!(d.effective_scope.allows("email:read"));
    }

    #[test]
    fn unknown_actor_anywhere_in_chain_is_refused() {
        let chain = vec![
            "spiffe://t/agent/a".to_string(),
            "spiffe://evil/x".to_string(),
        ];
        let e = evaluate(&policy("off"), &scopes("a"), &chain, "spiffe://t/gw", None).unwrap_err();
        assert_eq!(
            e,
            DelegationError::UnknownAgent {
                agent: "spiffe://evil/x".into()
            }
        );
    }

    /// RFC 8693 §4.1: with `informational`, prior actors neither need to be known nor narrow; the current
    /// actor still must be known and still narrows, and the depth bound still holds.
    #[test]
    fn informational_prior_actors_only_the_current_actor_decides() {
        let p = policy_with("off", "informational");
        let chain = vec![
            "spiffe://t/agent/research".to_string(),
            "spiffe://elsewhere/unknown".to_string(),
        ];
        let d = evaluate(
            &p,
            &scopes("calendar:read email:send admin"),
            &chain,
            "spiffe://t/gw",
            None,
        )
        .unwrap();
        assert_eq!(d.agent, "spiffe://t/agent/research");
        assert_eq!(d.actors, chain);
        assert_eq!(d.effective_scope.to_claim(), "calendar:read email:send");
        // The same chain under `narrow`: the unknown prior actor refuses it.
        assert_eq!(
            evaluate(&policy("off"), &scopes("a"), &chain, "spiffe://t/gw", None)
                .unwrap_err()
                .reason(),
            "delegation.unknown_agent"
        );
        // A narrow prior actor does not narrow under `informational`.
        let chain = vec![
            "spiffe://t/orchestrator".to_string(),
            "spiffe://t/agent/mailer".to_string(),
        ];
        let d = evaluate(
            &p,
            &scopes("admin email:read"),
            &chain,
            "spiffe://t/gw",
            None,
        )
        .unwrap();
        assert_eq!(d.effective_scope.to_claim(), "admin email:read");
        let d = evaluate(
            &policy("off"),
            &scopes("admin email:read"),
            &chain,
            "spiffe://t/gw",
            None,
        )
        .unwrap();
        assert_eq!(d.effective_scope.to_claim(), "email:read");
        // The current actor must still be known.
        let chain = vec![
            "spiffe://evil/x".to_string(),
            "spiffe://t/orchestrator".to_string(),
        ];
        assert_eq!(
            evaluate(&p, &scopes("a"), &chain, "spiffe://t/gw", None).unwrap_err(),
            DelegationError::UnknownAgent {
                agent: "spiffe://evil/x".into()
            }
        );
        let chain: Vec<String> = (0..3).map(|i| format!("spiffe://t/agent/{i}")).collect();
        assert_eq!(
            evaluate(&p, &scopes("a"), &chain, "spiffe://t/gw", None)
                .unwrap_err()
                .reason(),
            "delegation.depth"
        );
    }

    #[test]
    fn depth_is_bounded() {
        let chain: Vec<String> = (0..3).map(|i| format!("spiffe://t/agent/{i}")).collect();
        let e = evaluate(&policy("off"), &scopes("a"), &chain, "spiffe://t/gw", None).unwrap_err();
        assert_eq!(e.reason(), "delegation.depth");
    }

    #[test]
    fn peer_binding() {
        let chain = vec!["spiffe://t/agent/a".to_string()];
        let p = policy("require");
        assert_eq!(
            evaluate(&p, &scopes("a"), &chain, "spiffe://t/gw", None).unwrap_err(),
            DelegationError::PeerMissing
        );
        assert_eq!(
            evaluate(
                &p,
                &scopes("a"),
                &chain,
                "spiffe://t/gw",
                Some("spiffe://t/agent/b")
            )
            .unwrap_err()
            .reason(),
            "delegation.peer_mismatch"
        );
        assert!(evaluate(
            &p,
            &scopes("a"),
            &chain,
            "spiffe://t/gw",
            Some("spiffe://t/agent/a")
        )
        .is_ok());
        let p = policy("when_present");
        assert!(evaluate(&p, &scopes("a"), &chain, "spiffe://t/gw", None).is_ok());
        assert!(evaluate(
            &p,
            &scopes("a"),
            &chain,
            "spiffe://t/gw",
            Some("spiffe://t/x")
        )
        .is_err());
    }

    proptest! {
        /// Adding an actor to a chain never widens what the call may do.
        #[test]
        fn adding_an_actor_only_narrows(scope in "(calendar:read|email:send|email:read|admin)( (calendar:read|email:send|email:read|admin)){0,3}",
                                        extra in prop::sample::select(vec!["spiffe://t/agent/x", "spiffe://t/agent/mailer", "spiffe://t/orchestrator"])) {
            let p = policy("off");
            let base = vec!["spiffe://t/orchestrator".to_string()];
            let mut longer = vec![extra.to_string()];
            longer.extend(base.clone());
            let a = evaluate(&p, &scopes(&scope), &base, "spiffe://t/gw", None).unwrap();
            let b = evaluate(&p, &scopes(&scope), &longer, "spiffe://t/gw", None).unwrap();
            for s in ["calendar:read", "email:send", "email:read", "admin"] {
                prop_assert!(!b.effective_scope.allows(s) || a.effective_scope.allows(s));
            }
        }

        /// `narrow` departs from RFC 8693 §4.1 on the strict side only: whatever it allows, `informational`
        /// allows too, with at least the same scope.
        #[test]
        fn narrow_never_allows_what_informational_refuses(
            scope in "(calendar:read|email:send|email:read|admin)( (calendar:read|email:send|email:read|admin)){0,3}",
            chain in prop::collection::vec(prop::sample::select(vec![
                "spiffe://t/agent/x", "spiffe://t/agent/mailer", "spiffe://t/orchestrator", "spiffe://evil/x",
            ]), 0..4)) {
            let chain: Vec<String> = chain.into_iter().map(str::to_string).collect();
            let narrow = evaluate(&policy("off"), &scopes(&scope), &chain, "spiffe://t/gw", None);
            let informational =
                evaluate(&policy_with("off", "informational"), &scopes(&scope), &chain, "spiffe://t/gw", None);
            if let Ok(n) = narrow {
                let i = informational.unwrap();
                for s in ["calendar:read", "email:send", "email:read", "admin"] {
                    prop_assert!(!n.effective_scope.allows(s) || i.effective_scope.allows(s));
                }
            }
        }

        #[test]
        fn glob_matching_never_panics(pattern in "[a*/]{1,8}", id in "[a/é]{0,12}") {
            if let Ok(p) = AgentPattern::parse(&pattern) {
                let _ = p.matches(&id);
            }
        }
    }
}

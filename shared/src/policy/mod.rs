//! The policy: one JSON document used verbatim by every host (Envoy plugin configuration, Worker variable,
//! CLI `--policy`). `PolicySpec` is its wire form and the source of the published JSON Schema; `Policy` is the
//! compiled form the request path reads. Every fault is reported at load with the JSON pointer of the bad
//! field, so a bad policy never reaches traffic.

mod compile;
mod read;
mod remote;
mod spec;

pub use crate::agents::Agents;
pub use compile::{PolicyError, PolicyWarning};
pub use spec::*;

pub use crate::rule::{Constraint, Effect, LimitKey, Mode, Rule, RuleLimit, StoreErrorPolicy};

use crate::json::parse_strict;
use crate::keys::KeyRing;
use crate::names::{NameMatch, NamedRules};
use crate::resource::ResourceRules;

// ---------------------------------------------------------------------------------------------------------
// Compiled form
// ---------------------------------------------------------------------------------------------------------

/// Token bounds (compiled from the policy's `token` section; declared with the token, which reads them).
pub use crate::token::TokenRules;

/// MCP settings in the units the request path uses.
#[derive(Debug, Clone)]
pub struct McpRules {
    pub path_prefix: String,
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub resource_metadata: Option<String>,
}

/// The compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub trust_domain: String,
    pub token: TokenRules,
    pub agents: Agents,
    pub max_delegation_depth: usize,
    pub peer_binding: PeerBinding,
    /// Where the caller's identity comes from when `peer_binding` checks it.
    pub peer_source: crate::wimse::PeerSource,
    /// The compiled `wimse` section (trust domains, audiences, proof bounds).
    pub wimse: Option<crate::wimse::WimseRules>,
    pub mcp: McpRules,
    tools: NamedRules,
    /// None when the policy has no `prompts` section (prompts/get is not authorized per name).
    prompts: Option<NamedRules>,
    /// None when the policy has no `resources` section (resources/read is not authorized per URI).
    resources: Option<ResourceRules>,
    pub arguments_audit: ArgumentsAudit,
    pub max_limit_keys: u32,
    /// Whether allowed rate-limited calls carry the RateLimit response fields (`limits.headers`).
    pub rate_limit_headers: RateLimitHeaders,
    /// Issuers with their inline keys; the Gate's key ring starts from this.
    pub key_ring: KeyRing,
    /// Where remote rules are counted ([`crate::rls`]).
    pub rate_limit_service: Option<crate::rls::RateLimitService>,
    spec: PolicySpec,
}

impl Policy {
    /// Reads and compiles a policy document.
    pub fn from_json(bytes: &[u8]) -> Result<Self, PolicyError> {
        let doc = parse_strict(bytes, 64).map_err(PolicyError::Json)?;
        let spec = read::policy(&read::Cur::root(&doc))?;
        Self::compile(spec)
    }

    /// The tool rules.
    pub fn tools(&self) -> &NamedRules {
        &self.tools
    }

    /// The prompt rules, if the policy has a `prompts` section.
    pub fn prompts(&self) -> Option<&NamedRules> {
        self.prompts.as_ref()
    }

    /// The resource rules, if the policy has a `resources` section.
    pub fn resources(&self) -> Option<&ResourceRules> {
        self.resources.as_ref()
    }

    /// The rule a tool call falls under: its exact rule, else `*` (unless the name is a variant of a rule
    /// or outside the recommended alphabet), else none (denied).
    pub fn tool_rule(&self, tool: &str) -> Option<&Rule> {
        match self.tools.lookup(tool) {
            NameMatch::Rule(rule) => Some(rule),
            NameMatch::Variant { .. } | NameMatch::Alphabet | NameMatch::NoRule => None,
        }
    }

    /// Whether any rule has a rate limit (hosts with a remote limiter only call it for these).
    pub fn has_rate_limits(&self) -> bool {
        let named = |rules: &NamedRules| rules.rules().any(|r| r.limit.is_some());
        named(&self.tools)
            || self.prompts.as_ref().is_some_and(named)
            || self
                .resources
                .as_ref()
                .is_some_and(|r| r.rules().any(|r| r.limit.is_some()))
    }

    /// The document this policy was compiled from.
    pub fn spec(&self) -> &PolicySpec {
        &self.spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::PATTERN_SCAN_MAX;
    use crate::json::JsonError;
    use crate::keys::Algorithm;
    use serde_json::{json, Value};

    pub(crate) fn example() -> Value {
        json!({
            "trust_domain": "trust.example",
            "issuers": [{"name": "tts", "jwks": {"keys": [{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"k1"}]}, "algorithms": ["EdDSA", "ES256", "RS256"]}],
            "token": {"header": "txn-token", "leeway_seconds": 30, "max_lifetime_seconds": 300, "max_bytes": 8192},
            "agents": {"spiffe://trust.example/agent/*": {"max_scopes": ["calendar:*", "email:send"]}},
            "delegation": {"max_depth": 4},
            "peer_binding": "off",
            "mcp": {"path_prefix": "/mcp", "max_body_bytes": 65536},
            "tools": {
                "send_email": {"scopes": ["email:send"],
                               "constraints": [{"argument": "/to", "claim": "/tctx/recipient"}],
                               "rate_limit": {"key": "agent", "limit": 10, "period_seconds": 60, "burst": 3}},
                "*": {"effect": "deny"}
            },
            "audit": {"arguments": "hash"}
        })
    }

    fn load(v: &Value) -> Result<Policy, PolicyError> {
        Policy::from_json(&serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn example_from_the_brief_compiles() {
        let p = load(&example()).unwrap();
        assert_eq!(p.tool_rule("send_email").unwrap().name, "send_email");
        assert!(
            p.tool_rule("SEND_EMAIL").is_none(),
            "a case variant is refused, not sent to *"
        );
        assert_eq!(p.tool_rule("other").unwrap().effect, Effect::Deny);
        assert!(p.agents.ceiling("spiffe://trust.example/agent/a").is_some());
        assert!(p
            .agents
            .ceiling("spiffe://trust.example/agent/a/b")
            .is_none());
    }

    /// The prefix index must pick exactly what a scan in specificity order picks, whatever the patterns.
    #[test]
    fn indexed_agent_patterns_pick_what_a_scan_picks() {
        let sources = [
            "spiffe://trust.example/agent/*",
            "spiffe://trust.example/agent/mail*",
            "spiffe://trust.example/agent/**",
            "spiffe://trust.example/*/mailer",
            "spiffe://trust.example/**",
            "spiffe://*/agent/mailer",
            "spiffe://trust.example/team-*/bot",
            "**",
            "*://trust.example/agent/mailer",
            "spiffe://trust.example/agent/mailer/*",
            "spiffe://other.example/agent/*",
        ];
        let ids = [
            "spiffe://trust.example/agent/mailer",
            "spiffe://trust.example/agent/mailer/x",
            "spiffe://trust.example/agent/other",
            "spiffe://trust.example/team-7/bot",
            "spiffe://trust.example/x",
            "spiffe://other.example/agent/mailer",
            "spiffe://other.example/agent/a/b",
            "https://trust.example/agent/mailer",
            "nothing-like-it",
            "",
        ];
        // Every subset of one in three patterns, plus filler teams so the index (not the scan) is used.
        for skip in 0..3 {
            let mut agents = serde_json::Map::new();
            for (i, src) in sources.iter().enumerate() {
                if i % 3 != skip {
                    agents.insert((*src).to_string(), json!({"max_scopes": [format!("s{i}")]}));
                }
            }
            for t in 0..20 {
                agents.insert(
                    format!("spiffe://trust.example/filler-{t}/*"),
                    json!({"max_scopes": ["filler"]}),
                );
            }
            let mut v = example();
            v["agents"] = Value::Object(agents);
            let p = load(&v).unwrap();
            assert!(p.agents.patterns().len() > PATTERN_SCAN_MAX);
            for id in ids {
                let scanned = p
                    .agents
                    .patterns()
                    .iter()
                    .find(|(pat, _)| pat.matches(id))
                    .map(|(_, s)| s.to_claim());
                let indexed = p.agents.ceiling(id).map(|s| s.to_claim());
                assert_eq!(indexed, scanned, "{id} with skip {skip}");
            }
        }
    }

    #[test]
    fn errors_carry_the_json_pointer() {
        let mut v = example();
        v["issuers"][0]["algorithms"][1] = json!("HS256");
        let e = load(&v).unwrap_err();
        assert_eq!(e.path(), "/issuers/0/algorithms/1");
        assert!(e.to_string().contains("HS256"), "{e}");

        let mut v = example();
        v["tools"]["send_email"]["rate_limit"]["limit"] = json!("ten");
        assert_eq!(
            load(&v).unwrap_err().path(),
            "/tools/send_email/rate_limit/limit"
        );

        let mut v = example();
        v["tools"]["send_email"]["rate_limit"]["period_seconds"] = json!(0);
        assert_eq!(
            load(&v).unwrap_err().path(),
            "/tools/send_email/rate_limit/period_seconds"
        );

        let mut v = example();
        v["tools"]["send_email"]["constraints"][0]["claim"] = json!("tctx.recipient");
        assert_eq!(
            load(&v).unwrap_err().path(),
            "/tools/send_email/constraints/0/claim"
        );

        let mut v = example();
        v["mcp"]["extra"] = json!(1);
        let e = load(&v).unwrap_err();
        assert_eq!(e.path(), "/mcp/extra");
        assert!(e.to_string().contains("unknown field `extra`"), "{e}");

        let mut v = example();
        v["agents"]["spiffe://x/*"] = json!({"max_scopes": ["a*b"]});
        assert_eq!(
            load(&v).unwrap_err().path(),
            "/agents/spiffe:~1~1x~1*/max_scopes/0"
        );
    }

    #[test]
    fn weak_inline_keys_are_refused_with_their_path() {
        let mut v = example();
        v["issuers"][0]["jwks"]["keys"][0]["x"] =
            json!("AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        let e = load(&v).unwrap_err();
        assert_eq!(e.path(), "/issuers/0/jwks/keys/0");
        assert!(e.to_string().contains("small order"), "{e}");
    }

    #[test]
    fn duplicate_keys_in_the_document_are_refused() {
        let e = Policy::from_json(br#"{"trust_domain":"a","trust_domain":"b","issuers":[]}"#)
            .unwrap_err();
        assert!(matches!(
            e,
            PolicyError::Json(JsonError::DuplicateKey { .. })
        ));
    }

    #[test]
    fn jwks_and_jwks_uri_are_exclusive() {
        let mut v = example();
        v["issuers"][0]["jwks_uri"] = json!("https://tts/jwks");
        assert_eq!(load(&v).unwrap_err().path(), "/issuers/0/jwks_uri");
        let mut v = example();
        v["issuers"][0].as_object_mut().unwrap().remove("jwks");
        assert_eq!(load(&v).unwrap_err().path(), "/issuers/0");
        v["issuers"][0]["jwks_uri"] = json!("https://tts/jwks");
        assert!(load(&v).is_ok());
    }

    #[test]
    fn token_in_authorization_is_refused() {
        let mut v = example();
        v["token"]["header"] = json!("Authorization");
        assert_eq!(load(&v).unwrap_err().path(), "/token/header");
    }

    #[test]
    fn tool_rules_differing_by_case_are_refused() {
        let mut v = example();
        v["tools"]["Send_Email"] = json!({});
        assert!(load(&v).unwrap_err().path().starts_with("/tools/"));
    }

    #[test]
    fn prompts_and_resources_sections() {
        let p = load(&example()).unwrap();
        assert!(p.prompts().is_none() && p.resources().is_none());
        let mut v = example();
        v["prompts"] = json!({"code_review": {"scopes": ["prompts:review"],
            "constraints": [{"argument": "/repo", "claim": "/tctx/repo"}]}, "*": {"effect": "deny"}});
        v["resources"] = json!({
            "file:///docs/**": {"scopes": ["docs:read"], "rate_limit": {"limit": 5, "period_seconds": 60}},
            "file:///docs/public.txt": {},
            "*": {"effect": "deny"}});
        let p = load(&v).unwrap();
        let prompts = p.prompts().unwrap();
        assert_eq!(
            prompts
                .lookup("code_review")
                .rule()
                .unwrap()
                .constraints
                .len(),
            1
        );
        assert_eq!(prompts.lookup("other").rule().unwrap().name, "*");
        let resources = p.resources().unwrap();
        assert_eq!(
            resources.lookup("file:///docs/a/b").unwrap().name,
            "file:///docs/**"
        );
        assert_eq!(
            resources.lookup("file:///docs/public.txt").unwrap().name,
            "file:///docs/public.txt"
        );
        assert_eq!(resources.lookup("https://x").unwrap().name, "*");
        assert!(p.has_rate_limits());
        // Present but empty: default deny.
        let mut v = example();
        v["prompts"] = json!({});
        v["resources"] = json!({});
        let p = load(&v).unwrap();
        assert!(p.prompts().unwrap().lookup("x").rule().is_none());
        assert!(p.resources().unwrap().lookup("file:///x").is_none());
    }

    #[test]
    fn prompt_and_resource_faults_carry_their_path() {
        let cases = [
            (
                json!({"prompts": {"a": {"scopes": ["x*"]}}}),
                "/prompts/a/scopes/0",
            ),
            (
                json!({"prompts": {"a": {"constraints": [{"argument": "to", "claim": "/c"}]}}}),
                "/prompts/a/constraints/0/argument",
            ),
            (
                json!({"prompts": {"a": {"rate_limit": {"limit": 0, "period_seconds": 1}}}}),
                "/prompts/a/rate_limit/limit",
            ),
            (
                json!({"prompts": {"Review": {}, "review": {}}}),
                "/prompts/review",
            ),
            (json!({"prompts": {"a\u{1}": {}}}), "/prompts/a\u{1}"),
            (json!({"prompts": {"": {}}}), "/prompts/"),
            (json!({"prompts": {"a": {"extra": 1}}}), "/prompts/a/extra"),
            (
                json!({"resources": {"file:///a/*": {"constraints": []}}}),
                "/resources/file:~1~1~1a~1*/constraints",
            ),
            (
                json!({"resources": {"file:///a/***": {}}}),
                "/resources/file:~1~1~1a~1***",
            ),
            (
                json!({"resources": {"x": {"scopes": [""]}}}),
                "/resources/x/scopes/0",
            ),
            (
                json!({"resources": {"x": {"rate_limit": {"limit": 1, "period_seconds": 0}}}}),
                "/resources/x/rate_limit/period_seconds",
            ),
            (
                json!({"resources": {"x": {"effect": "maybe"}}}),
                "/resources/x/effect",
            ),
            (
                json!({"tools": {"Send": {}, "ｓｅｎｄ": {}}}),
                "/tools/ｓｅｎｄ",
            ),
        ];
        for (patch, path) in cases {
            let mut v = example();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            let e = load(&v).unwrap_err();
            assert_eq!(e.path(), path, "{patch}: {e}");
        }
        let mut v = example();
        v["resources"] = json!({"file:///a": {"constraints": [{"argument": "/a", "claim": "/b"}]}});
        let e = load(&v).unwrap_err();
        assert!(e.to_string().contains("no arguments"), "{e}");
    }

    #[test]
    fn any_name_without_control_characters_may_be_a_rule() {
        let mut v = example();
        v["tools"]["a b/ü:c"] = json!({});
        v["prompts"] = json!({"Weird Prompt!": {}});
        let p = load(&v).unwrap();
        assert!(p.tool_rule("a b/ü:c").is_some());
        assert!(p
            .prompts()
            .unwrap()
            .lookup("Weird Prompt!")
            .rule()
            .is_some());
        v["tools"] = json!({"x".repeat(129): {}});
        assert!(load(&v).is_err());
    }

    #[test]
    fn issuer_typ_and_algorithms() {
        let p = load(&example()).unwrap();
        let issuer = p.key_ring.issuer(0).unwrap();
        assert_eq!(issuer.typ, vec!["txntoken+jwt".to_string()]);
        assert!(issuer.accepts_typ("application/TXNTOKEN+jwt"));
        assert!(!issuer.accepts_typ("txn_token"));

        let mut v = example();
        v["issuers"][0]["typ"] = json!(["txntoken+jwt", "txn_token"]);
        let p = load(&v).unwrap();
        assert!(p.key_ring.issuer(0).unwrap().accepts_typ("txn_token"));
        let warned: Vec<String> = p.warnings().into_iter().map(|w| w.path).collect();
        assert!(
            warned.contains(&"/issuers/0/typ/1".to_string()),
            "{warned:?}"
        );

        for (bad, path) in [
            (json!([]), "/issuers/0/typ"),
            (json!(["txntoken+jwt", ""]), "/issuers/0/typ/1"),
            (json!(["txntoken+jwt; v=1"]), "/issuers/0/typ/0"),
            (json!(["application/"]), "/issuers/0/typ/0"),
            (json!("txntoken+jwt"), "/issuers/0/typ"),
        ] {
            let mut v = example();
            v["issuers"][0]["typ"] = bad.clone();
            assert_eq!(load(&v).unwrap_err().path(), path, "{bad}");
        }

        let mut v = example();
        v["issuers"][0]["algorithms"] = json!(["Ed25519", "ES384"]);
        let p = load(&v).unwrap();
        let key = &p.key_ring.issuer(0).unwrap().key_set().unwrap().keys()[0];
        assert_eq!(key.algorithm(), Algorithm::Ed25519);
        let defaults = Policy::from_json(
            br#"{"trust_domain":"t","issuers":[{"name":"i","jwks_uri":"https://i/jwks"}]}"#,
        )
        .unwrap();
        assert_eq!(
            defaults.key_ring.issuer(0).unwrap().algorithms,
            Algorithm::ALL.to_vec()
        );
    }

    #[test]
    fn warnings_name_issuers_without_iss_and_resource_metadata() {
        let p = load(&example()).unwrap();
        let w = p.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].path, "/issuers/0");
        assert!(w[0].to_string().contains("8725"), "{}", w[0]);

        let mut v = example();
        v["issuers"][0]["iss"] = json!("https://tts.trust.example");
        assert!(load(&v).unwrap().warnings().is_empty());
        v["mcp"]["resource_metadata"] =
            json!("https://gw.example/.well-known/oauth-protected-resource");
        let w = load(&v).unwrap().warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].path, "/mcp/resource_metadata");
        assert!(w[0].message.contains("no longer advertised"));
        v["issuers"][0]["iss"] = json!("");
        assert_eq!(load(&v).unwrap_err().path(), "/issuers/0/iss");
    }

    #[test]
    fn prior_actors_defaults_to_informational() {
        let p = load(&example()).unwrap();
        assert_eq!(p.spec().delegation.prior_actors, PriorActors::Informational);
        let mut v = example();
        v["delegation"]["prior_actors"] = json!("narrow");
        assert_eq!(
            load(&v).unwrap().spec().delegation.prior_actors,
            PriorActors::Narrow
        );
        v["delegation"]["prior_actors"] = json!("ignore");
        assert_eq!(load(&v).unwrap_err().path(), "/delegation/prior_actors");
    }

    #[test]
    fn minimal_policy_takes_defaults() {
        let p = Policy::from_json(
            br#"{"trust_domain":"t","issuers":[{"name":"i","jwks_uri":"https://i/jwks"}]}"#,
        )
        .unwrap();
        assert_eq!(p.token.header, "txn-token");
        assert_eq!(p.mcp.path_prefix, "/mcp");
        assert!(p.tool_rule("anything").is_none());
    }
}

//! Compiling the remote rate limits: each rule's `rate_limit.remote` and the `rate_limit_service` section
//! they need, with the warnings about them.

use crate::mcp::Kind;
use crate::rls::{EntryName, RateLimitService, RemoteLimit, MAX_TIMEOUT_MS};
use crate::rls_wire::Unit;

use super::*;

/// Checks a rule's `rate_limit.remote` (at `at`, the pointer of a rule of `kind`) and compiles it.
pub(super) fn compile_rule(
    kind: Kind,
    at: &str,
    spec: &RateLimitSpec,
) -> Result<Option<RemoteLimit>, PolicyError> {
    let Some(remote) = &spec.remote else {
        return Ok(None);
    };
    let own = EntryName::of_kind(kind);
    let entries = match &remote.entries {
        Some(entries) => entries.clone(),
        None => default_entries(own, spec.key),
    };
    if entries.is_empty() {
        return Err(PolicyError::invalid(
            format!("{at}/rate_limit/remote/entries"),
            "must name at least one entry",
        ));
    }
    for (i, e) in entries.iter().enumerate() {
        if entries.iter().take(i).any(|x| x == e) {
            return Err(PolicyError::invalid(
                format!("{at}/rate_limit/remote/entries/{i}"),
                format!("{:?} is listed twice", e.name()),
            ));
        }
        if e.kind().is_some_and(|k| k != kind) {
            return Err(PolicyError::invalid(
                format!("{at}/rate_limit/remote/entries/{i}"),
                format!(
                    "{:?} is the name of a {}, but this rule governs a {}: use {:?}",
                    e.name(),
                    e.name(),
                    kind.noun(),
                    own.name()
                ),
            ));
        }
    }
    // `key: tool` counts the rule as a whole: the tool or prompt name, the resource rule's pattern.
    let key_entry = match spec.key {
        LimitKey::Agent => EntryName::Agent,
        LimitKey::Sub => EntryName::Sub,
        LimitKey::Tool => own,
    };
    if !entries.contains(&key_entry) {
        return Err(PolicyError::invalid(
            format!("{at}/rate_limit/remote/entries"),
            format!(
                "must include the rule's key {:?}, or the service would count another bucket than the one the rule names",
                key_entry.name()
            ),
        ));
    }
    if !remote.local_first && spec.burst.is_some_and(|b| b != spec.limit) {
        return Err(PolicyError::invalid(
            format!("{at}/rate_limit/burst"),
            "a remote limit is counted in fixed windows, which know no burst (a window admits `limit` back to back): leave burst unset, or set remote.local_first so it applies to the local bucket",
        ));
    }
    Ok(Some(RemoteLimit {
        entries,
        local_first: remote.local_first,
    }))
}

fn default_entries(own: EntryName, key: LimitKey) -> Vec<EntryName> {
    match key {
        LimitKey::Agent => vec![own, EntryName::Agent],
        LimitKey::Sub => vec![own, EntryName::Sub],
        LimitKey::Tool => vec![own],
    }
}

/// Remote rules of a policy document, in `tools`, `prompts` and `resources`: `(pointer, spec)`.
fn remote_rules(spec: &PolicySpec) -> impl Iterator<Item = (String, &RateLimitSpec)> {
    let tools = spec
        .tools
        .iter()
        .map(|(name, rule)| ("tools", name, rule.rate_limit.as_ref()));
    let prompts = spec
        .prompts
        .iter()
        .flatten()
        .map(|(name, rule)| ("prompts", name, rule.rate_limit.as_ref()));
    let resources = spec
        .resources
        .iter()
        .flatten()
        .map(|(key, rule)| ("resources", key, rule.rate_limit.as_ref()));
    tools
        .chain(prompts)
        .chain(resources)
        .filter_map(|(section, name, rl)| {
            let rl = rl?;
            rl.remote.as_ref()?;
            Some((format!("/{section}/{}", escape(name)), rl))
        })
}

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Checks the `rate_limit_service` section against the rules that use it.
pub(super) fn compile_service(spec: &PolicySpec) -> Result<Option<RateLimitService>, PolicyError> {
    let first_remote = remote_rules(spec).next().map(|(at, _)| at);
    let Some(service) = &spec.rate_limit_service else {
        return match first_remote {
            Some(at) => Err(PolicyError::invalid(
                "/rate_limit_service",
                format!("is required by the remote limit at {at}/rate_limit/remote"),
            )),
            None => Ok(None),
        };
    };
    if service.cluster.trim().is_empty() {
        return Err(PolicyError::invalid(
            "/rate_limit_service/cluster",
            "must not be empty",
        ));
    }
    if service.domain.trim().is_empty() {
        return Err(PolicyError::invalid(
            "/rate_limit_service/domain",
            "must not be empty",
        ));
    }
    if service.timeout_ms == 0 || service.timeout_ms > MAX_TIMEOUT_MS {
        return Err(PolicyError::invalid(
            "/rate_limit_service/timeout_ms",
            format!("must be between 1 and {MAX_TIMEOUT_MS}"),
        ));
    }
    if service.send_limit {
        for (at, rl) in remote_rules(spec) {
            if Unit::from_seconds(u64::from(rl.period_seconds)).is_none() {
                return Err(PolicyError::invalid(
                    format!("{at}/rate_limit/period_seconds"),
                    "a remote limit is sent per second, minute, hour or day: must be 1, 60, 3600 or 86400 (or set rate_limit_service.send_limit to false and configure the window in the service)",
                ));
            }
        }
    }
    Ok(Some(RateLimitService {
        cluster: service.cluster.clone(),
        domain: service.domain.clone(),
        timeout_ms: service.timeout_ms,
        send_limit: service.send_limit,
    }))
}

/// What `txngate policy validate` warns about (the policy is valid; these are the approximations an
/// operator must accept knowingly). Part of [`crate::policy::Policy::warnings`].
pub(super) fn warnings(spec: &PolicySpec) -> Vec<PolicyWarning> {
    let mut out = Vec::new();
    let mut any = false;
    for (at, rl) in remote_rules(spec) {
        any = true;
        out.push(PolicyWarning {
            path: format!("{at}/rate_limit"),
            message: format!(
                "counted in the service's fixed windows of {} s: at most {} calls per window across all Envoys, but up to {} within {} s spanning two windows",
                rl.period_seconds,
                rl.limit,
                u64::from(rl.limit) * 2,
                rl.period_seconds
            ),
        });
        if rl.on_store_error == StoreErrorPolicy::Allow {
            out.push(PolicyWarning {
                path: format!("{at}/rate_limit/on_store_error"),
                message: "allow: while the rate limit service is slow or unreachable every call passes uncounted (counted only in txngate.ratelimit.remote_*)".to_string(),
            });
        }
    }
    match &spec.rate_limit_service {
        Some(s) if !any => out.push(PolicyWarning {
            path: "/rate_limit_service".to_string(),
            message: format!(
                "no rule has rate_limit.remote; the service {:?} is never called",
                s.cluster
            ),
        }),
        Some(s) if !s.send_limit => out.push(PolicyWarning {
            path: "/rate_limit_service/send_limit".to_string(),
            message: "false: the service's own configuration sets every remote limit; the policy's limit and period_seconds are only reported".to_string(),
        }),
        _ => {}
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use crate::policy::{Policy, PolicyError};
    use serde_json::{json, Value};

    fn policy(rate_limit: Value, service: Option<Value>) -> Value {
        let mut v = json!({
            "trust_domain": "trust.example",
            "issuers": [{"name": "tts", "jwks": {"keys": [{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"k1"}]}}],
            "tools": {"search_web": {"rate_limit": rate_limit}}
        });
        if let Some(s) = service {
            v["rate_limit_service"] = s;
        }
        v
    }

    fn load(v: &Value) -> Result<Policy, PolicyError> {
        Policy::from_json(&serde_json::to_vec(v).unwrap())
    }

    fn path_of(e: PolicyError) -> String {
        e.path().to_string()
    }

    fn service() -> Value {
        json!({"cluster": "ratelimit", "domain": "txngate"})
    }

    #[test]
    fn remote_rule_compiles_with_defaults() {
        let p = load(&policy(
            json!({"key": "sub", "limit": 5, "period_seconds": 60, "remote": {}}),
            Some(service()),
        ))
        .unwrap();
        let s = p.rate_limit_service.as_ref().unwrap();
        assert_eq!((s.timeout_ms, s.send_limit), (100, true));
        let remote = p.tool_rule("search_web").unwrap().limit.as_ref().unwrap();
        let remote = remote.remote.as_ref().unwrap();
        assert_eq!(
            remote.entries,
            vec![super::EntryName::Tool, super::EntryName::Sub]
        );
        assert!(!remote.local_first);
    }

    #[test]
    fn what_validate_refuses() {
        let remote = |extra: Value| {
            let mut rl = json!({"key": "agent", "limit": 5, "period_seconds": 60, "remote": {}});
            for (k, v) in extra.as_object().unwrap() {
                rl[k] = v.clone();
            }
            rl
        };
        let cases = [
            (policy(remote(json!({})), None), "/rate_limit_service"),
            (
                policy(remote(json!({"period_seconds": 10})), Some(service())),
                "/tools/search_web/rate_limit/period_seconds",
            ),
            (
                policy(remote(json!({"burst": 2})), Some(service())),
                "/tools/search_web/rate_limit/burst",
            ),
            (
                policy(
                    remote(json!({"remote": {"entries": ["tool", "sub"]}})),
                    Some(service()),
                ),
                "/tools/search_web/rate_limit/remote/entries",
            ),
            (
                policy(
                    remote(json!({"remote": {"entries": ["agent", "agent"]}})),
                    Some(service()),
                ),
                "/tools/search_web/rate_limit/remote/entries/1",
            ),
            (
                policy(
                    remote(json!({})),
                    Some(json!({"cluster": "", "domain": "d"})),
                ),
                "/rate_limit_service/cluster",
            ),
            (
                policy(
                    remote(json!({})),
                    Some(json!({"cluster": "c", "domain": "d", "timeout_ms": 0})),
                ),
                "/rate_limit_service/timeout_ms",
            ),
            (
                policy(
                    remote(json!({})),
                    Some(json!({"cluster": "c", "domain": "d", "extra": 1})),
                ),
                "/rate_limit_service/extra",
            ),
        ];
        for (doc, expected) in cases {
            assert_eq!(path_of(load(&doc).unwrap_err()), expected, "{doc}");
        }
        // Allowed: burst with local_first (it is the local bucket's), any period when the limit is not sent.
        load(&policy(
            remote(json!({"burst": 2, "remote": {"local_first": true}})),
            Some(service()),
        ))
        .unwrap();
        load(&policy(
            remote(json!({"period_seconds": 10})),
            Some(json!({"cluster": "c", "domain": "d", "send_limit": false})),
        ))
        .unwrap();
    }

    #[test]
    fn prompt_and_resource_rules_name_their_own_kind() {
        let doc = |entries: Option<Value>| {
            let mut remote = json!({});
            if let Some(e) = entries {
                remote["entries"] = e;
            }
            let mut v = policy(json!({"limit": 5, "period_seconds": 60}), Some(service()));
            let rl = json!({"key": "sub", "limit": 5, "period_seconds": 60, "remote": remote});
            v["prompts"] = json!({"code_review": {"rate_limit": rl.clone()}});
            v["resources"] = json!({"file:///docs/**": {"rate_limit": rl}});
            v
        };
        let p = load(&doc(None)).unwrap();
        let prompt = match p.prompts().unwrap().lookup("code_review") {
            crate::names::NameMatch::Rule(rule) => Some(rule),
            _ => None,
        }
        .unwrap();
        let remote = prompt.limit.as_ref().unwrap().remote.as_ref().unwrap();
        assert_eq!(
            remote.entries,
            vec![super::EntryName::Prompt, super::EntryName::Sub]
        );
        let resource = p.resources().unwrap().rules().next().unwrap();
        let remote = resource.limit.as_ref().unwrap().remote.as_ref().unwrap();
        assert_eq!(
            remote.entries,
            vec![super::EntryName::Resource, super::EntryName::Sub]
        );
        // Both sections are walked: warnings for each remote rule, and the service is needed by them.
        let w: Vec<String> = super::warnings(p.spec())
            .into_iter()
            .map(|w| w.path)
            .collect();
        assert!(
            w.contains(&"/prompts/code_review/rate_limit".to_string()),
            "{w:?}"
        );
        assert!(
            w.contains(&"/resources/file:~1~1~1docs~1**/rate_limit".to_string()),
            "{w:?}"
        );
        let mut no_service = doc(None);
        no_service
            .as_object_mut()
            .unwrap()
            .remove("rate_limit_service");
        assert!(load(&no_service)
            .unwrap_err()
            .to_string()
            .contains("/prompts/code_review/rate_limit/remote"));
        // A tool entry in a prompt rule is refused: the descriptor would carry the wrong key.
        let e = load(&doc(Some(json!(["tool", "sub"])))).unwrap_err();
        assert_eq!(e.path(), "/prompts/code_review/rate_limit/remote/entries/0");
        // key "tool" counts the rule as a whole: for a resource rule that is the `resource` entry.
        let mut whole = doc(None);
        whole["prompts"] = json!({});
        whole["resources"]["file:///docs/**"]["rate_limit"]["key"] = json!("tool");
        let p = load(&whole).unwrap();
        let resource = p.resources().unwrap().rules().next().unwrap();
        let remote = resource.limit.as_ref().unwrap().remote.as_ref().unwrap();
        assert_eq!(remote.entries, vec![super::EntryName::Resource]);
        whole["resources"]["file:///docs/**"]["rate_limit"]["remote"]["entries"] = json!(["sub"]);
        assert_eq!(
            load(&whole).unwrap_err().path(),
            "/resources/file:~1~1~1docs~1**/rate_limit/remote/entries"
        );
    }

    #[test]
    fn what_validate_warns_about() {
        let p = load(&policy(
            json!({"limit": 5, "period_seconds": 60, "on_store_error": "allow", "remote": {}}),
            Some(service()),
        ))
        .unwrap();
        let w = super::warnings(p.spec());
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].message.contains("up to 10 within 60 s"));
        assert_eq!(w[1].path, "/tools/search_web/rate_limit/on_store_error");
        let p = load(&policy(
            json!({"limit": 5, "period_seconds": 60}),
            Some(service()),
        ))
        .unwrap();
        assert!(super::warnings(p.spec())[0]
            .message
            .contains("never called"));
    }
}

//! Authorization of the verified call and its rate limits.

use std::sync::Arc;

use crate::audit::LimitAudit;
use crate::authorization::{self, AuthzError, Kind};
use crate::delegation::{self, Delegation};
use crate::encoding::hex_lower;
use crate::json::JsonError;
use crate::listing::ListKind;
use crate::mcp::{self, CompletionRef, Reference, Target};
use crate::policy::{ArgumentsAudit, LimitKey, Mode, Rule, StoreErrorPolicy};
use crate::ratelimit::{self, LimitState, StoreError};
use crate::token::VerifiedToken;

use super::*;

/// Arguments kept as bytes were checked when read, so this does not happen; if it did, the call is refused
/// as an unreadable body rather than authorized on arguments nobody looked at.
fn arguments_error(e: JsonError) -> mcp::McpError {
    match e {
        JsonError::DuplicateKey { path, key } => mcp::McpError::DuplicateKey {
            path: format!("/params/arguments{path}"),
            key,
        },
        JsonError::TooDeep { max_depth } => mcp::McpError::TooDeep { max: max_depth },
        other => mcp::McpError::Json {
            detail: other.to_string(),
        },
    }
}

impl Gate {
    /// Continues after the host consulted its limiter (or the rate limit service).
    pub fn resume_limit(
        &mut self,
        pending: PendingLimit,
        result: Result<LimitState, StoreError>,
    ) -> Step {
        Step::Done(Box::new(self.finish_limit(pending, result)))
    }

    fn finish_limit(
        &mut self,
        pending: PendingLimit,
        result: Result<LimitState, StoreError>,
    ) -> Outcome {
        let PendingLimit {
            mut ev,
            token,
            delegation,
            limit,
            kind,
            name,
            policy_name,
            dry_run,
            ..
        } = pending;
        let noun = kind.noun();
        let audit_limit = |state: &LimitState| LimitAudit {
            key: limit.key.name(),
            limit: state.limit,
            period_seconds: state.period_seconds,
            burst: state.burst,
            remaining: state.remaining,
            retry_after_seconds: (!state.allowed)
                .then(|| state.retry_after_ms.div_ceil(1000).max(1)),
        };
        match result {
            Ok(state) => {
                ev.audit.limit = Some(audit_limit(&state));
                let passes = state.allowed || ev.audit.dry_run_reason.is_some() || dry_run;
                // `limits.headers: refusals`: an allowed call's response is left alone.
                let mut headers = if passes
                    && self.policy.rate_limit_headers == crate::policy::RateLimitHeaders::Refusals
                {
                    Vec::new()
                } else {
                    rate_limit_headers(&policy_name, &state)
                };
                headers.extend(authorized_read_headers(kind));
                if passes {
                    if !state.allowed {
                        ev.audit.dry_run_reason =
                            ev.audit.dry_run_reason.or(Some("ratelimit.exceeded"));
                    }
                    return self.allow(ev, &token, &delegation, headers, None);
                }
                let message = format!(
                    "rate limit for {noun} {name:?} exceeded; retry in {} s",
                    state.retry_after_ms.div_ceil(1000).max(1)
                );
                self.deny(ev, 429, "ratelimit.exceeded", &message, headers)
            }
            Err(e) => {
                ev.audit.detail = Some(e.to_string());
                if limit.on_store_error == StoreErrorPolicy::Allow {
                    return self.allow(
                        ev,
                        &token,
                        &delegation,
                        authorized_read_headers(kind),
                        None,
                    );
                }
                let message = format!("rate limit for {noun} {name:?} cannot be checked: {e}");
                self.deny(
                    ev,
                    503,
                    e.reason(),
                    &message,
                    vec![("retry-after".into(), "1".into())],
                )
            }
        }
    }

    pub(super) fn authorize(&mut self, mut ev: Evaluation, token: Arc<VerifiedToken>) -> Step {
        ev.audit.txn = Some(token.txn().to_string());
        ev.audit.sub = Some(token.sub().to_string());
        ev.audit.req_wl = Some(token.req_wl().to_string());
        ev.audit.agentic_ctx = crate::audit::AgenticAudit::from_claims(token.claims());
        if ev.audit.issuer.is_none() {
            ev.audit.issuer = self.keys.issuer(token.issuer()).map(|i| i.name.clone());
        }
        // The caller the delegation rules bind (mTLS peer or WIMSE proof), proven first.
        let mut ev = match self.prove_caller(ev, &token) {
            Ok(ev) => ev,
            Err(step) => return *step,
        };
        let delegation = match delegation::evaluate(
            &self.policy,
            token.scope(),
            token.act_chain(),
            token.req_wl(),
            ev.peer.as_deref(),
        ) {
            Ok(d) => d,
            Err(e) => return Step::Done(Box::new(self.deny_delegation(ev, &e))),
        };
        ev.audit.agent = Some(delegation.agent.clone());
        ev.audit.actors = delegation.actors.clone();
        ev.audit.scope = Some(delegation.effective_scope.to_claim());

        let message = match ev.message.take() {
            None => {
                return Step::Done(Box::new(self.allow(
                    ev,
                    &token,
                    &delegation,
                    Vec::new(),
                    None,
                )))
            }
            Some(Err(e)) => return Step::Done(Box::new(self.deny_mcp(ev, &e))),
            Some(Ok(m)) => m,
        };
        ev.audit.rpc_method = message.method.clone();
        ev.audit.rpc_id = message.id.clone();
        if let Err(e) = mcp::routing::check(&message, &ev.routing) {
            return Step::Done(Box::new(self.deny_mcp(ev, &e)));
        }
        let list = message.list_kind();
        if let Some(reference) = message.reference {
            return self.authorize_reference(ev, token, delegation, reference);
        }
        let Some(target) = message.target else {
            let filter = list.filter(|kind| self.filters(*kind));
            return Step::Done(Box::new(self.allow(
                ev,
                &token,
                &delegation,
                Vec::new(),
                filter,
            )));
        };
        let (kind, name, arguments) = match target {
            Target::Tool(call) => (Kind::Tool, call.name, Some(call.arguments)),
            Target::Prompt(get) => (Kind::Prompt, get.name, Some(get.arguments.into())),
            Target::Resource(read) => (Kind::Resource, read.uri, None),
        };
        self.authorize_target(ev, token, delegation, kind, name, arguments)
    }

    /// Whether responses to a list of `kind` are filtered: tools always, prompts and resources when the
    /// policy has their section.
    pub(super) fn filters(&self, kind: ListKind) -> bool {
        match kind {
            ListKind::Tools => true,
            ListKind::Prompts => self.policy.prompts().is_some(),
            ListKind::Resources | ListKind::ResourceTemplates => self.policy.resources().is_some(),
        }
    }

    /// Authorizes a method that refers to a prompt or resources without acting on them: a completion needs
    /// the caller to be allowed the prompt or resource it completes, a subscription each resource it
    /// subscribes to (effect and scopes of the rule; constraints bind `prompts/get` arguments and are not
    /// applied). Without the section for the kind, today's behaviour: it passes. No rate limit is consumed:
    /// only the real call (`prompts/get`, `resources/read`) counts against its rule's limit.
    pub(super) fn authorize_reference(
        &mut self,
        mut ev: Evaluation,
        token: Arc<VerifiedToken>,
        delegation: Delegation,
        reference: Reference,
    ) -> Step {
        let names: Vec<(Kind, String)> = match reference {
            Reference::Completion(CompletionRef::Prompt { name }) => {
                ev.audit.prompt = Some(name.clone());
                vec![(Kind::Prompt, name)]
            }
            Reference::Completion(CompletionRef::Resource { uri })
            | Reference::ResourceSubscription { uri, .. } => {
                ev.audit.resource = Some(uri.clone());
                vec![(Kind::Resource, uri)]
            }
            Reference::Listen { uris } => {
                ev.audit.resources = uris.clone();
                uris.into_iter().map(|uri| (Kind::Resource, uri)).collect()
            }
        };
        let policy = Arc::clone(&self.policy);
        for (kind, name) in names {
            let found: Option<Result<&Rule, AuthzError>> = match kind {
                Kind::Prompt => policy
                    .prompts()
                    .map(|rules| authorization::named_rule(rules, kind, &name)),
                // A URI template (`ref/resource`) is matched as written: the rule its own text falls under
                // decides (`file:///docs/{name}` under `file:///docs/*`), a conservative approximation.
                Kind::Resource => policy.resources().map(|rules| {
                    rules.lookup(&name).ok_or_else(|| AuthzError::NoRule {
                        kind,
                        name: name.clone(),
                    })
                }),
                Kind::Tool => None,
            };
            let refused = |mut ev: Evaluation| {
                if kind == Kind::Resource {
                    ev.audit.resource = Some(name.clone());
                }
                ev
            };
            let rule = match found {
                None => continue,
                Some(Err(e)) => {
                    return Step::Done(Box::new(self.deny_authz(refused(ev), &e)));
                }
                Some(Ok(rule)) => rule,
            };
            ev.audit.rule = Some(rule.name.clone());
            if let Err(e) =
                authorization::authorize_reference(rule, kind, &name, &delegation.effective_scope)
            {
                if rule.mode == Mode::DryRun {
                    ev.audit.dry_run_reason = Some(e.reason());
                    ev.audit.detail = Some(e.to_string());
                } else {
                    return Step::Done(Box::new(self.deny_authz(refused(ev), &e)));
                }
            }
        }
        Step::Done(Box::new(self.allow(
            ev,
            &token,
            &delegation,
            Vec::new(),
            None,
        )))
    }

    /// Authorizes a name-bearing call: its rule, scopes, constraints, then its rate limit.
    pub(super) fn authorize_target(
        &mut self,
        mut ev: Evaluation,
        token: Arc<VerifiedToken>,
        delegation: Delegation,
        kind: Kind,
        name: String,
        arguments: Option<mcp::Arguments>,
    ) -> Step {
        match kind {
            Kind::Tool => ev.audit.tool = Some(name.clone()),
            Kind::Prompt => ev.audit.prompt = Some(name.clone()),
            Kind::Resource => ev.audit.resource = Some(name.clone()),
        }
        if let Some(arguments) = &arguments {
            match self.policy.arguments_audit {
                ArgumentsAudit::Hash => {
                    ev.audit.arguments_sha256 = Some(hex_lower(&arguments.canonical_sha256()))
                }
                ArgumentsAudit::Full => match arguments.to_value() {
                    Ok(tree) => ev.audit.arguments = Some(tree),
                    Err(e) => return Step::Done(Box::new(self.deny_mcp(ev, &arguments_error(e)))),
                },
                ArgumentsAudit::None => {}
            }
        }
        // Borrowed through a second handle on the policy, not cloned: a rule's scopes and constraints are
        // read-only here.
        let policy = Arc::clone(&self.policy);
        let found: Option<Result<&Rule, AuthzError>> = match kind {
            Kind::Tool => Some(authorization::named_rule(policy.tools(), kind, &name)),
            Kind::Prompt => policy
                .prompts()
                .map(|rules| authorization::named_rule(rules, kind, &name)),
            Kind::Resource => policy.resources().map(|rules| {
                rules.lookup(&name).ok_or_else(|| AuthzError::NoRule {
                    kind,
                    name: name.clone(),
                })
            }),
        };
        let rule = match found {
            // No section for this kind: today's behaviour, the call passes on its token and delegation.
            None => {
                return Step::Done(Box::new(self.allow(
                    ev,
                    &token,
                    &delegation,
                    Vec::new(),
                    None,
                )))
            }
            Some(Err(e)) => return Step::Done(Box::new(self.deny_authz(ev, &e))),
            Some(Ok(rule)) => rule,
        };
        ev.audit.rule = Some(rule.name.clone());
        if let Err(e) = authorization::authorize(
            rule,
            kind,
            &name,
            arguments.as_ref(),
            &delegation.effective_scope,
            token.claims(),
        ) {
            if rule.mode == Mode::DryRun {
                ev.audit.dry_run_reason = Some(e.reason());
                ev.audit.detail = Some(e.to_string());
            } else {
                return Step::Done(Box::new(self.deny_authz(ev, &e)));
            }
        }
        let Some(limit) = rule.limit.clone() else {
            return Step::Done(Box::new(self.allow(
                ev,
                &token,
                &delegation,
                authorized_read_headers(kind),
                None,
            )));
        };
        let id = match limit.key {
            LimitKey::Agent => delegation.agent.as_str(),
            LimitKey::Sub => token.sub(),
            LimitKey::Tool => "",
        };
        let (subject, policy_name) = match kind {
            Kind::Tool => (name.clone(), name.clone()),
            Kind::Prompt => (name.clone(), format!("prompt:{name}")),
            // Per rule pattern, not per URI: a bounded number of buckets.
            Kind::Resource => (rule.name.clone(), format!("resource:{}", rule.name)),
        };
        let bucket_key = ratelimit::bucket_key(
            &bucket_segment(&subject),
            &bucket_dimension(kind, limit.key),
            id,
            &limit.rule,
        );
        let dry_run = rule.mode == Mode::DryRun;
        Step::ConsultLimiter(Box::new(PendingLimit {
            ev,
            token,
            delegation,
            bucket_key,
            limit,
            kind,
            name,
            subject,
            policy_name,
            dry_run,
        }))
    }

    pub(super) fn allow(
        &self,
        mut ev: Evaluation,
        token: &VerifiedToken,
        delegation: &Delegation,
        mut response_headers: Vec<(String, String)>,
        list: Option<ListKind>,
    ) -> Outcome {
        let reason = if ev.audit.dry_run_reason.is_some() {
            "allow.dry_run"
        } else {
            "allow"
        };
        ev.audit.verdict = "allow";
        ev.audit.reason = reason;
        ev.audit.status = 200;
        let upstream_headers = vec![
            ("x-txngate-agent".to_string(), delegation.agent.clone()),
            ("x-txngate-sub".to_string(), token.sub().to_string()),
            ("x-txngate-txn".to_string(), token.txn().to_string()),
        ];
        let list_filter = list.map(|kind| ListFilter {
            kind,
            policy: Arc::clone(&self.policy),
            effective: delegation.effective_scope.clone(),
        });
        if list_filter.is_some() {
            // One caller's view of a list: no shared cache may serve it to another.
            response_headers.push(("cache-control".to_string(), "private".to_string()));
        }
        Outcome {
            decision: Decision::Allowed(Allowed {
                reason,
                upstream_headers,
                response_headers,
                list_filter,
            }),
            reply_to: ev.reply_to(),
            audit: ev.audit,
            refetch_issuer: ev.refetch,
        }
    }
}

/// Response headers of a call authorized by a rule: a `resources/read` result (cacheable in MCP) was served
/// to this caller's authorization, so no shared HTTP cache may serve it to a caller txngate never saw.
pub(super) fn authorized_read_headers(kind: Kind) -> Vec<(String, String)> {
    match kind {
        Kind::Resource => vec![("cache-control".to_string(), "private".to_string())],
        Kind::Tool | Kind::Prompt => Vec::new(),
    }
}

/// The name part of a bucket key: `%` and `:` percent-encoded, so that a name (any string a rule may name)
/// can never reach into the key's other segments.
pub(super) fn bucket_segment(name: &str) -> String {
    if !name.contains([':', '%']) {
        return name.to_string();
    }
    name.replace('%', "%25").replace(':', "%3A")
}

/// The dimension segment of a bucket key: tools keep today's (`agent`, `sub`, `tool`); prompts and
/// resources get their own, so their buckets never share a key with a tool's.
pub(super) fn bucket_dimension(kind: Kind, key: LimitKey) -> String {
    match kind {
        Kind::Tool => key.name().to_string(),
        Kind::Prompt | Kind::Resource => format!("{}-{}", kind.noun(), key.name()),
    }
}

/// A structured-field string (RFC 9651 §3.3.3): printable ASCII with `"` and `\` escaped; other bytes
/// percent-encoded (names may be any string).
fn sf_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for b in text.bytes() {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out.push('"');
    out
}

/// IETF `RateLimit-Policy` / `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers) plus `Retry-After`.
pub(super) fn rate_limit_headers(policy_name: &str, state: &LimitState) -> Vec<(String, String)> {
    use crate::encoding::push_decimal;
    let name = sf_string(policy_name);
    // `{name};q={limit};w={period}` and `{name};r={remaining};t={reset}`, written without `format!`.
    let field = |a: &str, x: u64, b: &str, y: u64| {
        let mut out = String::with_capacity(name.len() + 32);
        out.push_str(&name);
        out.push_str(a);
        push_decimal(&mut out, x);
        out.push_str(b);
        push_decimal(&mut out, y);
        out
    };
    let mut headers = vec![
        (
            "ratelimit-policy".to_string(),
            field(";q=", u64::from(state.limit), ";w=", state.period_seconds),
        ),
        (
            "ratelimit".to_string(),
            field(
                ";r=",
                u64::from(state.remaining),
                ";t=",
                state.reset_ms.div_ceil(1000),
            ),
        ),
    ];
    if !state.allowed {
        headers.push((
            "retry-after".to_string(),
            state.retry_after_ms.div_ceil(1000).max(1).to_string(),
        ));
    }
    headers
}

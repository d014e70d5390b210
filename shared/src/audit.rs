//! One audit record per decision: who delegated, which agent, which tool, what, and the verdict. The token
//! itself never appears, only its SHA-256; arguments appear hashed, in full or not at all, per policy.

use serde::Serialize;
use serde_json::{Map, Value};

/// The agent fields of a token's `agentic_ctx` claim (draft-araut-oauth-transaction-tokens-for-agents-02
/// §3.6.1, its normative fields, under the draft's names). Only these are kept: deployment-specific members
/// (posture, provenance, identity details) may be sensitive and are unbounded, so they stay in the token. A
/// member of the wrong JSON type, longer than 1024 bytes or with control characters is left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgenticAudit {
    /// The agent currently executing the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_actor: Option<String>,
    /// The agent that started the transaction chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub originator: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_metadata: Option<ChainMetadataAudit>,
}

/// `agentic_ctx.chain_metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainMetadataAudit {
    /// Agent transitions in the chain (1 at first issuance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hop_count: Option<u64>,
    /// The lowest assurance level of any agent in the chain (deployment-defined values).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_assurance_level: Option<String>,
}

impl AgenticAudit {
    /// The agent fields of `claims["agentic_ctx"]`, or None when the claim is absent or carries none.
    pub fn from_claims(claims: &Map<String, Value>) -> Option<Self> {
        let ctx = claims.get("agentic_ctx")?.as_object()?;
        let text = |v: Option<&Value>| {
            v.and_then(Value::as_str)
                .filter(|s| !s.is_empty() && s.len() <= 1024 && !s.chars().any(char::is_control))
                .map(str::to_string)
        };
        let chain_metadata = ctx
            .get("chain_metadata")
            .and_then(Value::as_object)
            .map(|m| ChainMetadataAudit {
                hop_count: m.get("hop_count").and_then(Value::as_u64),
                min_assurance_level: text(m.get("min_assurance_level")),
            })
            .filter(|m| m.hop_count.is_some() || m.min_assurance_level.is_some());
        let audit = Self {
            current_actor: text(ctx.get("current_actor")),
            originator: text(ctx.get("originator")),
            chain_metadata,
        };
        (audit.current_actor.is_some()
            || audit.originator.is_some()
            || audit.chain_metadata.is_some())
        .then_some(audit)
    }
}

/// The rate-limit part of an audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitAudit {
    /// `agent`, `sub` or `tool`.
    pub key: &'static str,
    pub limit: u32,
    pub period_seconds: u64,
    pub burst: u32,
    pub remaining: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
}

/// One decision, as logged by every host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub verdict: &'static str,
    pub reason: &'static str,
    pub status: u16,
    /// A dry-run rule would have refused this call with this reason; the call went through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run_reason: Option<&'static str>,
    /// Human-readable detail of a refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub txn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The actor chain, current actor first, ending with whoever delegated first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub actors: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub req_wl: Option<String>,
    /// The agent fields of the token's `agentic_ctx` claim, when it has any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agentic_ctx: Option<AgenticAudit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The caller the peer binding checked, and how it was proven (`caller_proof`: `mtls`, `wimse`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_proof: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    pub method: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc_method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc_id: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The prompt of a `prompts/get`, or of a `completion/complete` for a prompt (`ref/prompt`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The URI of a `resources/read`, `resources/subscribe`/`unsubscribe` or `completion/complete` for a
    /// resource (`ref/resource`); for `subscriptions/listen`, the URI refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Every resource URI of a `subscriptions/listen` (`resourceSubscriptions`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Value>,
    /// The effective scope after delegation narrowing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<LimitAudit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    /// Whether the signature check was skipped because a verified copy was cached.
    pub cached: bool,
}

impl AuditRecord {
    pub(crate) fn new(now_ms: u64, method: &str, path: &str) -> Self {
        Self {
            time: rfc3339(now_ms),
            verdict: "deny",
            reason: "",
            status: 0,
            dry_run_reason: None,
            detail: None,
            rule: None,
            txn: None,
            sub: None,
            agent: None,
            actors: Vec::new(),
            req_wl: None,
            agentic_ctx: None,
            peer: None,
            caller: None,
            caller_proof: None,
            issuer: None,
            method: method.to_string(),
            path: path.to_string(),
            rpc_method: None,
            rpc_id: None,
            tool: None,
            prompt: None,
            resource: None,
            resources: Vec::new(),
            arguments_sha256: None,
            arguments: None,
            scope: None,
            limit: None,
            token_sha256: None,
            cached: false,
        }
    }

    /// One line of JSON: byte for byte what `serde_json::to_string` makes of the record (its `Serialize`:
    /// fields in order, absent ones left out), written field by field (one per decision in every host;
    /// serde's generic path cost more than the rest of a cached decision's bookkeeping).
    pub fn to_json(&self) -> String {
        let mut out = Line(Vec::with_capacity(1024));
        out.raw(b"{\"time\":");
        out.string(&self.time);
        out.field("verdict", Some(self.verdict));
        out.field("reason", Some(self.reason));
        out.number("status", Some(u64::from(self.status)));
        out.field("dry_run_reason", self.dry_run_reason);
        out.field("detail", self.detail.as_deref());
        out.field("rule", self.rule.as_deref());
        out.field("txn", self.txn.as_deref());
        out.field("sub", self.sub.as_deref());
        out.field("agent", self.agent.as_deref());
        out.list("actors", &self.actors);
        out.field("req_wl", self.req_wl.as_deref());
        if let Some(ctx) = &self.agentic_ctx {
            out.raw(b",\"agentic_ctx\":{");
            let mut first = true;
            for (name, value) in [
                ("current_actor", ctx.current_actor.as_deref()),
                ("originator", ctx.originator.as_deref()),
            ] {
                if let Some(value) = value {
                    out.member(&mut first, name);
                    out.string(value);
                }
            }
            if let Some(chain) = &ctx.chain_metadata {
                out.member(&mut first, "chain_metadata");
                out.raw(b"{");
                let mut first = true;
                if let Some(hops) = chain.hop_count {
                    out.member(&mut first, "hop_count");
                    out.decimal(hops);
                }
                if let Some(level) = &chain.min_assurance_level {
                    out.member(&mut first, "min_assurance_level");
                    out.string(level);
                }
                out.raw(b"}");
            }
            out.raw(b"}");
        }
        out.field("peer", self.peer.as_deref());
        out.field("caller", self.caller.as_deref());
        out.field("caller_proof", self.caller_proof);
        out.field("issuer", self.issuer.as_deref());
        out.field("method", Some(&self.method));
        out.field("path", Some(&self.path));
        out.field("rpc_method", self.rpc_method.as_deref());
        out.value("rpc_id", self.rpc_id.as_ref());
        out.field("tool", self.tool.as_deref());
        out.field("prompt", self.prompt.as_deref());
        out.field("resource", self.resource.as_deref());
        out.list("resources", &self.resources);
        out.field("arguments_sha256", self.arguments_sha256.as_deref());
        out.value("arguments", self.arguments.as_ref());
        out.field("scope", self.scope.as_deref());
        if let Some(limit) = &self.limit {
            out.raw(b",\"limit\":{\"key\":");
            out.string(limit.key);
            out.number("limit", Some(u64::from(limit.limit)));
            out.number("period_seconds", Some(limit.period_seconds));
            out.number("burst", Some(u64::from(limit.burst)));
            out.number("remaining", Some(u64::from(limit.remaining)));
            out.number("retry_after_seconds", limit.retry_after_seconds);
            out.raw(b"}");
        }
        out.field("token_sha256", self.token_sha256.as_deref());
        out.raw(if self.cached {
            b",\"cached\":true}"
        } else {
            b",\"cached\":false}"
        });
        String::from_utf8(out.0).unwrap_or_else(|_| {
            String::from("{\"verdict\":\"deny\",\"reason\":\"audit.serialize\"}")
        })
    }
}

/// The audit line being written (see [`AuditRecord::to_json`]).
struct Line(Vec<u8>);

impl Line {
    fn raw(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    fn string(&mut self, text: &str) {
        crate::json::push_string(&mut self.0, text);
    }

    fn decimal(&mut self, n: u64) {
        let mut buffer = [0u8; 20];
        self.0
            .extend_from_slice(crate::encoding::decimal_digits(n, &mut buffer));
    }

    /// `,"name":` (field names are plain ASCII, written as they are).
    fn key(&mut self, name: &str) {
        self.raw(b",\"");
        self.raw(name.as_bytes());
        self.raw(b"\":");
    }

    /// A member of a nested object: `"name":`, after a comma unless it is the first.
    fn member(&mut self, first: &mut bool, name: &str) {
        if !*first {
            self.raw(b",");
        }
        *first = false;
        self.raw(b"\"");
        self.raw(name.as_bytes());
        self.raw(b"\":");
    }

    fn field(&mut self, name: &str, value: Option<&str>) {
        if let Some(value) = value {
            self.key(name);
            self.string(value);
        }
    }

    fn number(&mut self, name: &str, value: Option<u64>) {
        if let Some(value) = value {
            self.key(name);
            self.decimal(value);
        }
    }

    fn list(&mut self, name: &str, items: &[String]) {
        if items.is_empty() {
            return;
        }
        self.key(name);
        self.raw(b"[");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.raw(b",");
            }
            self.string(item);
        }
        self.raw(b"]");
    }

    fn value(&mut self, name: &str, value: Option<&Value>) {
        if let Some(value) = value {
            self.key(name);
            // Writing into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut self.0, value);
        }
    }
}

/// Milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (civil-from-days, no clock library).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let year = u64::try_from(year).unwrap_or(0);
    if year > 9999 {
        // Beyond four digits (never in practice): `format!`'s `{:04}` prints them all.
        return format!(
            "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
            ms % 1000
        );
    }
    // Written digit by digit, not with `format!`: one of these per decision.
    let mut out = String::with_capacity(24);
    let fields = [
        (year, 4, '-'),
        (u64::try_from(month).unwrap_or(0), 2, '-'),
        (u64::try_from(day).unwrap_or(0), 2, 'T'),
        (h, 2, ':'),
        (m, 2, ':'),
        (s, 2, '.'),
        (ms % 1000, 3, 'Z'),
    ];
    for (value, width, separator) in fields {
        for place in (0..width).rev() {
            let digit = (value / 10u64.pow(place)) % 10;
            out.push(char::from(b'0' + u8::try_from(digit).unwrap_or(0)));
        }
        out.push(separator);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Text with what JSON must escape (quotes, backslashes, every kind of control character), non-ASCII
    /// and plain runs.
    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                4 => "[a-z0-9:/._-]{1,8}",
                1 => Just("\"".to_string()),
                1 => Just("\\".to_string()),
                1 => (0u32..0x20).prop_map(|c| char::from_u32(c).unwrap_or('x').to_string()),
                1 => Just("\u{7f}é😀\u{2028}".to_string()),
            ],
            0..5,
        )
        .prop_map(|parts| parts.concat())
    }

    fn some_text() -> impl Strategy<Value = Option<String>> {
        prop::option::of(text())
    }

    fn reason() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["allow", "tool.scope", "ratelimit.exceeded", ""])
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e300f64..1e300).prop_map(Value::from),
            text().prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(text(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    prop_compose! {
        fn record()(
            time in text(), verdict in reason(), reason in reason(), status in any::<u16>(),
            dry_run_reason in prop::option::of(reason()),
            (detail, rule, txn, sub, agent) in (some_text(), some_text(), some_text(), some_text(), some_text()),
            actors in prop::collection::vec(text(), 0..3),
            (req_wl, peer, caller, issuer) in (some_text(), some_text(), some_text(), some_text()),
            agentic in prop::option::of((some_text(), some_text(), prop::option::of((prop::option::of(any::<u64>()), some_text())))),
            caller_proof in prop::option::of(prop::sample::select(vec!["mtls", "wimse"])),
            (method, path, rpc_method) in (text(), text(), some_text()),
            rpc_id in prop::option::of(value()),
            (tool, prompt, resource) in (some_text(), some_text(), some_text()),
            resources in prop::collection::vec(text(), 0..3),
            (arguments_sha256, arguments, scope) in (some_text(), prop::option::of(value()), some_text()),
            limit in prop::option::of((any::<u32>(), any::<u64>(), any::<u32>(), any::<u32>(), prop::option::of(any::<u64>()))),
            token_sha256 in some_text(), cached in any::<bool>(),
        ) -> AuditRecord {
            AuditRecord {
                time, verdict, reason, status, dry_run_reason, detail, rule, txn, sub, agent, actors, req_wl,
                agentic_ctx: agentic.map(|(current_actor, originator, chain)| AgenticAudit {
                    current_actor,
                    originator,
                    chain_metadata: chain.map(|(hop_count, min_assurance_level)| ChainMetadataAudit {
                        hop_count,
                        min_assurance_level,
                    }),
                }),
                peer, caller, caller_proof, issuer, method, path, rpc_method, rpc_id, tool, prompt, resource,
                resources, arguments_sha256, arguments, scope,
                limit: limit.map(|(limit, period_seconds, burst, remaining, retry_after_seconds)| LimitAudit {
                    key: "agent", limit, period_seconds, burst, remaining, retry_after_seconds,
                }),
                token_sha256, cached,
            }
        }
    }

    proptest! {
        /// The hand-written line is serde_json's, byte for byte.
        #[test]
        fn to_json_is_serde_jsons(record in record()) {
            prop_assert_eq!(record.to_json(), serde_json::to_string(&record).unwrap());
        }
    }

    #[test]
    fn agentic_ctx_keeps_the_drafts_agent_fields_only() {
        let claims = serde_json::json!({"agentic_ctx": {
            "current_actor": "spiffe://t/agent/billing",
            "originator": "3p-assistant",
            "chain_metadata": {"hop_count": 2, "min_assurance_level": "low", "extra": 1},
            "posture": {"tee": "nitro"}
        }});
        let audit = AgenticAudit::from_claims(claims.as_object().unwrap()).unwrap();
        assert_eq!(
            serde_json::to_value(&audit).unwrap(),
            serde_json::json!({"current_actor": "spiffe://t/agent/billing", "originator": "3p-assistant",
                               "chain_metadata": {"hop_count": 2, "min_assurance_level": "low"}})
        );
        let odd = serde_json::json!({"agentic_ctx": {"current_actor": 7, "originator": "a\nb",
                                                     "chain_metadata": {"hop_count": -1}}});
        assert_eq!(AgenticAudit::from_claims(odd.as_object().unwrap()), None);
        assert_eq!(AgenticAudit::from_claims(&Map::new()), None);
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_796_083_200_000), "2026-12-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_764_460_799_999), "2025-11-29T23:59:59.999Z");
        assert_eq!(rfc3339(253_402_300_800_000), "10000-01-01T00:00:00.000Z");
    }
}

//! Reading the policy document (a parsed JSON value) into its wire types ([`PolicySpec`] and the sections
//! it holds), by hand: one small cursor with typed accessors instead of a serde-derived `Deserialize` impl
//! per type. The derived impls were about 104 KB of the filter (twiggy, before wasm-opt) and, in the Worker,
//! the first policy load paid for compiling all of them lazily; this reader is about 45 KB (mostly the
//! per-section functions and one `BTreeMap` insert per map type).
//!
//! It refuses what the derived impls refused, at the same JSON pointer and with the same words (serde's):
//! an unknown field (`unknown field `x`, expected one of ...`, at the field), a missing one (`missing field
//! `x``, at its object), a wrong type (`invalid type: string "ten", expected u32`), a number out of range
//! (`invalid value: integer `-1`, expected u32`), an unknown enum value (`unknown variant ...`). `null` for
//! an optional field means absent, as it did. Two forms serde's generic machinery accepted and the format
//! never had are refused: an object written as an array of its fields in declaration order (`"token":
//! ["txn-token", 30]`), and an enum value written as a single-key object (`"effect": {"deny": null}`).
//! When a document has several faults, the first one reported may differ (fields are read in declaration
//! order, after the unknown-field check).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::spec::defaults;
use super::*;
use crate::json::escape_pointer_token;
use crate::rls::{EntryName, RateLimitServiceSpec, RemoteLimitSpec};
use crate::wimse::{PeerBindingSpec, PeerSource, TrustDomainSpec, WimseSpec};

type Result<T> = core::result::Result<T, PolicyError>;

/// Reads one value. A plain function, not a closure: the generic accessors below are instantiated once
/// per type read, not once per field.
pub(crate) type Reader<T> = for<'v, 'p, 'c> fn(&'c Cur<'v, 'p>) -> Result<T>;

#[derive(Clone, Copy)]
enum Step<'v> {
    Key(&'v str),
    Index(usize),
}

/// A value of the document and the way to it from the root (a chain of steps on the stack: the pointer is
/// only written out for an error).
#[derive(Clone, Copy)]
pub(crate) struct Cur<'v, 'p> {
    value: &'v Value,
    up: Option<(Step<'v>, &'p Cur<'v, 'p>)>,
}

impl<'v, 'p> Cur<'v, 'p> {
    pub(crate) fn root(value: &'v Value) -> Self {
        Self { value, up: None }
    }

    fn child<'q>(&'q self, step: Step<'v>, value: &'v Value) -> Cur<'v, 'q> {
        Cur {
            value,
            up: Some((step, self)),
        }
    }

    /// The JSON pointer (RFC 6901) of this value.
    pub(crate) fn pointer(&self) -> String {
        let mut steps = Vec::new();
        let mut at = self;
        while let Some((step, parent)) = &at.up {
            steps.push(*step);
            at = parent;
        }
        let mut out = String::new();
        for step in steps.iter().rev() {
            out.push('/');
            match step {
                Step::Key(key) => out.push_str(&escape_pointer_token(key)),
                Step::Index(i) => {
                    let _ = write!(out, "{i}");
                }
            }
        }
        out
    }

    #[cold]
    #[inline(never)]
    fn missing(&self, field: &str) -> PolicyError {
        self.fault(format!("missing field `{field}`"))
    }

    #[cold]
    #[inline(never)]
    fn fault(&self, message: String) -> PolicyError {
        PolicyError::Shape {
            path: self.pointer(),
            message,
        }
    }

    #[cold]
    #[inline(never)]
    fn invalid_type(&self, expected: &str) -> PolicyError {
        self.fault(format!(
            "invalid type: {}, expected {expected}",
            unexpected(self.value)
        ))
    }

    #[cold]
    #[inline(never)]
    fn unknown(&self, what: &str, name: &str, expected: &[&str]) -> PolicyError {
        let mut message = format!("unknown {what} `{name}`, expected ");
        match expected {
            [one] => {
                let _ = write!(message, "`{one}`");
            }
            [a, b] => {
                let _ = write!(message, "`{a}` or `{b}`");
            }
            _ => {
                message.push_str("one of ");
                for (i, name) in expected.iter().enumerate() {
                    if i > 0 {
                        message.push_str(", ");
                    }
                    let _ = write!(message, "`{name}`");
                }
            }
        }
        self.fault(message)
    }

    pub(crate) fn value(&self) -> &'v Value {
        self.value
    }

    pub(crate) fn string(&self) -> Result<String> {
        match self.value {
            Value::String(s) => Ok(s.clone()),
            _ => Err(self.invalid_type("a string")),
        }
    }

    pub(crate) fn boolean(&self) -> Result<bool> {
        self.value
            .as_bool()
            .ok_or_else(|| self.invalid_type("a boolean"))
    }

    /// A non-negative integer that fits `u32`.
    pub(crate) fn u32(&self) -> Result<u32> {
        let Value::Number(n) = self.value else {
            return Err(self.invalid_type("u32"));
        };
        let out_of_range = |n: &dyn core::fmt::Display| {
            self.fault(format!("invalid value: integer `{n}`, expected u32"))
        };
        match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u32::try_from(u).map_err(|_| out_of_range(&u)),
            (None, Some(i)) => Err(out_of_range(&i)),
            (None, None) => Err(self.invalid_type("u32")),
        }
    }

    /// One of the names of an enum's values (written as a string).
    pub(crate) fn one_of<T: Copy>(&self, values: &[(&'static str, T)]) -> Result<T> {
        let Value::String(name) = self.value else {
            return Err(self.invalid_type("a string"));
        };
        match values.iter().find(|(n, _)| n == name) {
            Some((_, v)) => Ok(*v),
            None => {
                let names: Vec<&str> = values.iter().map(|(n, _)| *n).collect();
                Err(self.unknown("variant", name, &names))
            }
        }
    }

    /// An array, each item read by `item`.
    pub(crate) fn items<T>(&self, item: Reader<T>) -> Result<Vec<T>> {
        let Value::Array(items) = self.value else {
            return Err(self.invalid_type("a sequence"));
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, v) in items.iter().enumerate() {
            out.push(item(&self.child(Step::Index(i), v))?);
        }
        Ok(out)
    }

    pub(crate) fn strings(&self) -> Result<Vec<String>> {
        self.items(|c| c.string())
    }

    /// An object used as a map (any keys), each value read by `value`.
    pub(crate) fn entries<T>(&self, value: Reader<T>) -> Result<BTreeMap<String, T>> {
        let Value::Object(map) = self.value else {
            return Err(self.invalid_type("a map"));
        };
        let mut out = BTreeMap::new();
        for (k, v) in map {
            out.insert(k.clone(), value(&self.child(Step::Key(k), v))?);
        }
        Ok(out)
    }

    /// An object with these fields only (`what`: "struct TokenSpec", for a wrong type).
    pub(crate) fn object(&self, what: &str, fields: &[&str]) -> Result<Obj<'v, '_>> {
        let Value::Object(map) = self.value else {
            return Err(self.invalid_type(what));
        };
        if let Some((key, v)) = map.iter().find(|(k, _)| !fields.contains(&k.as_str())) {
            return Err(self.child(Step::Key(key), v).unknown("field", key, fields));
        }
        Ok(Obj { at: self, map })
    }
}

/// An object whose field names were checked. Its fields are read into a value built with the defaults
/// (`set`, `set_opt`) or that must be given (`set_req`), so that an error drops one value, whichever field
/// it is at (a struct literal of `?` expressions needs drop code for every prefix of its fields).
pub(crate) struct Obj<'v, 'c> {
    at: &'c Cur<'v, 'c>,
    map: &'v Map<String, Value>,
}

impl<'v, 'c> Obj<'v, 'c> {
    fn get(&self, field: &'static str) -> Option<Cur<'v, '_>> {
        let (key, v) = self.map.get_key_value(field)?;
        Some(self.at.child(Step::Key(key), v))
    }

    /// A field that must be there.
    pub(crate) fn set_req<T>(
        &self,
        field: &'static str,
        slot: &mut T,
        read: Reader<T>,
    ) -> Result<()> {
        match self.get(field) {
            Some(c) => *slot = read(&c)?,
            None => return Err(self.at.missing(field)),
        }
        Ok(())
    }

    /// A field whose default `slot` holds when absent (`null` is read like any value, and refused by most).
    pub(crate) fn set<T>(&self, field: &'static str, slot: &mut T, read: Reader<T>) -> Result<()> {
        if let Some(c) = self.get(field) {
            *slot = read(&c)?;
        }
        Ok(())
    }

    /// An optional field: absent or `null` is `None`.
    pub(crate) fn set_opt<T>(
        &self,
        field: &'static str,
        slot: &mut Option<T>,
        read: Reader<T>,
    ) -> Result<()> {
        match self.get(field) {
            Some(c) if !c.value.is_null() => *slot = Some(read(&c)?),
            _ => {}
        }
        Ok(())
    }
}

/// What a value is, in serde_json's words (`invalid type: <this>, expected ...`).
fn unexpected(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n) if n.is_f64() => format!("floating point `{n}`"),
        Value::Number(n) => format!("integer `{n}`"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "sequence".into(),
        Value::Object(_) => "map".into(),
    }
}

// ---------------------------------------------------------------------------------------------------------
// The policy's types, in declaration order (the field lists are also the unknown-field message).
// ---------------------------------------------------------------------------------------------------------

pub(crate) const ALGORITHMS: &[(&str, AlgorithmName)] = &[
    ("EdDSA", AlgorithmName::EdDSA),
    ("Ed25519", AlgorithmName::Ed25519),
    ("ES256", AlgorithmName::ES256),
    ("ES384", AlgorithmName::ES384),
    ("RS256", AlgorithmName::RS256),
    ("PS256", AlgorithmName::PS256),
];
pub(crate) const EFFECTS: &[(&str, Effect)] = &[("allow", Effect::Allow), ("deny", Effect::Deny)];
pub(crate) const MODES: &[(&str, Mode)] = &[("enforce", Mode::Enforce), ("dry_run", Mode::DryRun)];
pub(crate) const LIMIT_KEYS: &[(&str, LimitKey)] = &[
    ("agent", LimitKey::Agent),
    ("sub", LimitKey::Sub),
    ("tool", LimitKey::Tool),
];
pub(crate) const STORE_ERROR_POLICIES: &[(&str, StoreErrorPolicy)] = &[
    ("deny", StoreErrorPolicy::Deny),
    ("allow", StoreErrorPolicy::Allow),
];
pub(crate) const PRIOR_ACTORS: &[(&str, PriorActors)] = &[
    ("narrow", PriorActors::Narrow),
    ("informational", PriorActors::Informational),
];
pub(crate) const PEER_BINDINGS: &[(&str, PeerBinding)] = &[
    ("off", PeerBinding::Off),
    ("require", PeerBinding::Require),
    ("when_present", PeerBinding::WhenPresent),
];
pub(crate) const PEER_SOURCES: &[(&str, PeerSource)] = &[
    ("mtls", PeerSource::Mtls),
    ("wimse", PeerSource::Wimse),
    ("mtls_or_wimse", PeerSource::MtlsOrWimse),
];
pub(crate) const ARGUMENTS_AUDITS: &[(&str, ArgumentsAudit)] = &[
    ("hash", ArgumentsAudit::Hash),
    ("full", ArgumentsAudit::Full),
    ("none", ArgumentsAudit::None),
];
pub(crate) const RATE_LIMIT_HEADERS: &[(&str, RateLimitHeaders)] = &[
    ("always", RateLimitHeaders::Always),
    ("refusals", RateLimitHeaders::Refusals),
];
pub(crate) const ENTRY_NAMES: &[(&str, EntryName)] = &[
    ("tool", EntryName::Tool),
    ("prompt", EntryName::Prompt),
    ("resource", EntryName::Resource),
    ("agent", EntryName::Agent),
    ("sub", EntryName::Sub),
];

// Plain functions (not closures) for the accessors, so each is one `Reader` whatever field it reads.
fn string(c: &Cur<'_, '_>) -> Result<String> {
    c.string()
}

fn strings(c: &Cur<'_, '_>) -> Result<Vec<String>> {
    c.strings()
}

fn uint(c: &Cur<'_, '_>) -> Result<u32> {
    c.u32()
}

fn boolean(c: &Cur<'_, '_>) -> Result<bool> {
    c.boolean()
}

fn rules(c: &Cur<'_, '_>) -> Result<BTreeMap<String, RuleSpec>> {
    c.entries(rule)
}

fn effect(c: &Cur<'_, '_>) -> Result<Effect> {
    c.one_of(EFFECTS)
}

fn mode(c: &Cur<'_, '_>) -> Result<Mode> {
    c.one_of(MODES)
}

/// Any JSON (an inline JWK set, checked when compiled).
fn json(c: &Cur<'_, '_>) -> Result<Value> {
    Ok(c.value().clone())
}

pub(crate) fn policy(c: &Cur<'_, '_>) -> Result<PolicySpec> {
    let o = c.object(
        "struct PolicySpec",
        &[
            "trust_domain",
            "issuers",
            "token",
            "agents",
            "delegation",
            "peer_binding",
            "wimse",
            "mcp",
            "tools",
            "prompts",
            "resources",
            "audit",
            "limits",
            "rate_limit_service",
        ],
    )?;
    let mut p = PolicySpec {
        trust_domain: String::new(),
        issuers: Vec::new(),
        token: TokenSpec::default(),
        agents: BTreeMap::new(),
        delegation: DelegationSpec::default(),
        peer_binding: PeerBindingField::default(),
        wimse: None,
        mcp: McpSpec::default(),
        tools: BTreeMap::new(),
        prompts: None,
        resources: None,
        audit: AuditSpec::default(),
        limits: LimitsSpec::default(),
        rate_limit_service: None,
    };
    o.set_req("trust_domain", &mut p.trust_domain, string)?;
    o.set_req("issuers", &mut p.issuers, |c| c.items(issuer))?;
    o.set("token", &mut p.token, token)?;
    o.set("agents", &mut p.agents, |c| c.entries(agent))?;
    o.set("delegation", &mut p.delegation, delegation)?;
    o.set("peer_binding", &mut p.peer_binding, peer_binding)?;
    o.set_opt("wimse", &mut p.wimse, wimse)?;
    o.set("mcp", &mut p.mcp, mcp)?;
    o.set("tools", &mut p.tools, rules)?;
    o.set_opt("prompts", &mut p.prompts, rules)?;
    o.set_opt("resources", &mut p.resources, |c| c.entries(resource))?;
    o.set("audit", &mut p.audit, audit)?;
    o.set("limits", &mut p.limits, limits)?;
    o.set_opt(
        "rate_limit_service",
        &mut p.rate_limit_service,
        rate_limit_service,
    )?;
    Ok(p)
}

fn issuer(c: &Cur<'_, '_>) -> Result<IssuerSpec> {
    let o = c.object(
        "struct IssuerSpec",
        &[
            "name",
            "iss",
            "jwks",
            "jwks_uri",
            "cluster",
            "refresh_seconds",
            "max_stale_seconds",
            "min_refetch_seconds",
            "algorithms",
            "typ",
        ],
    )?;
    let mut i = IssuerSpec {
        name: String::new(),
        iss: None,
        jwks: None,
        jwks_uri: None,
        cluster: None,
        refresh_seconds: defaults::refresh_seconds(),
        max_stale_seconds: defaults::max_stale_seconds(),
        min_refetch_seconds: defaults::min_refetch_seconds(),
        algorithms: defaults::algorithms(),
        typ: defaults::typ(),
    };
    o.set_req("name", &mut i.name, string)?;
    o.set_opt("iss", &mut i.iss, string)?;
    o.set_opt("jwks", &mut i.jwks, json)?;
    o.set_opt("jwks_uri", &mut i.jwks_uri, string)?;
    o.set_opt("cluster", &mut i.cluster, string)?;
    o.set("refresh_seconds", &mut i.refresh_seconds, uint)?;
    o.set("max_stale_seconds", &mut i.max_stale_seconds, uint)?;
    o.set("min_refetch_seconds", &mut i.min_refetch_seconds, uint)?;
    o.set("algorithms", &mut i.algorithms, |c| {
        c.items(|c| c.one_of(ALGORITHMS))
    })?;
    o.set("typ", &mut i.typ, strings)?;
    Ok(i)
}

fn token(c: &Cur<'_, '_>) -> Result<TokenSpec> {
    let o = c.object(
        "struct TokenSpec",
        &[
            "header",
            "leeway_seconds",
            "max_lifetime_seconds",
            "max_bytes",
            "cache_entries",
        ],
    )?;
    let mut t = TokenSpec::default();
    o.set("header", &mut t.header, string)?;
    o.set("leeway_seconds", &mut t.leeway_seconds, uint)?;
    o.set("max_lifetime_seconds", &mut t.max_lifetime_seconds, uint)?;
    o.set("max_bytes", &mut t.max_bytes, uint)?;
    o.set("cache_entries", &mut t.cache_entries, uint)?;
    Ok(t)
}

fn agent(c: &Cur<'_, '_>) -> Result<AgentSpec> {
    let o = c.object("struct AgentSpec", &["max_scopes"])?;
    let mut a = AgentSpec {
        max_scopes: Vec::new(),
    };
    o.set_req("max_scopes", &mut a.max_scopes, strings)?;
    Ok(a)
}

fn delegation(c: &Cur<'_, '_>) -> Result<DelegationSpec> {
    let o = c.object("struct DelegationSpec", &["max_depth", "prior_actors"])?;
    let mut d = DelegationSpec::default();
    o.set("max_depth", &mut d.max_depth, uint)?;
    o.set("prior_actors", &mut d.prior_actors, |c| {
        c.one_of(PRIOR_ACTORS)
    })?;
    Ok(d)
}

/// `peer_binding`: a mode, or the object form, whose faults are reported at `/peer_binding` with the path
/// inside it in the message (`at source: unknown variant ...`), as they always were.
fn peer_binding(c: &Cur<'_, '_>) -> Result<PeerBindingField> {
    match c.value() {
        Value::String(_) => c.one_of(PEER_BINDINGS).map(PeerBindingField::Mode),
        Value::Object(_) => {
            let inner = Cur::root(c.value());
            let read = || -> Result<PeerBindingSpec<PeerBinding>> {
                let o = inner.object("struct PeerBindingSpec", &["mode", "source"])?;
                let mut b = PeerBindingSpec {
                    mode: PeerBinding::default(),
                    source: PeerSource::default(),
                };
                o.set_req("mode", &mut b.mode, |c| c.one_of(PEER_BINDINGS))?;
                o.set("source", &mut b.source, |c| c.one_of(PEER_SOURCES))?;
                Ok(b)
            };
            read().map(PeerBindingField::Object).map_err(|e| {
                let inside = match e.path() {
                    "" => ".".to_string(),
                    path => path
                        .trim_start_matches('/')
                        .split('/')
                        .map(|t| t.replace("~1", "/").replace("~0", "~"))
                        .collect::<Vec<_>>()
                        .join("."),
                };
                let message = match e {
                    PolicyError::Shape { message, .. } => message,
                    other => other.to_string(),
                };
                c.fault(format!("at {inside}: {message}"))
            })
        }
        _ => Err(c.fault(
            "expected \"off\", \"require\", \"when_present\" or {\"mode\": ..., \"source\": \"mtls\" | \"wimse\" | \"mtls_or_wimse\"}"
                .into(),
        )),
    }
}

fn wimse(c: &Cur<'_, '_>) -> Result<WimseSpec> {
    let o = c.object(
        "struct WimseSpec",
        &[
            "trust_domains",
            "audiences",
            "max_proof_lifetime_seconds",
            "replay_cache_entries",
            "leeway_seconds",
            "max_token_bytes",
            "proof_algorithms",
        ],
    )?;
    let mut w = WimseSpec::default();
    o.set_req("trust_domains", &mut w.trust_domains, |c| {
        c.entries(trust_domain)
    })?;
    o.set_req("audiences", &mut w.audiences, strings)?;
    o.set(
        "max_proof_lifetime_seconds",
        &mut w.max_proof_lifetime_seconds,
        uint,
    )?;
    o.set("replay_cache_entries", &mut w.replay_cache_entries, uint)?;
    o.set("leeway_seconds", &mut w.leeway_seconds, uint)?;
    o.set("max_token_bytes", &mut w.max_token_bytes, uint)?;
    o.set("proof_algorithms", &mut w.proof_algorithms, strings)?;
    Ok(w)
}

fn trust_domain(c: &Cur<'_, '_>) -> Result<TrustDomainSpec> {
    let o = c.object(
        "struct TrustDomainSpec",
        &[
            "jwks",
            "jwks_uri",
            "cluster",
            "refresh_seconds",
            "max_stale_seconds",
            "min_refetch_seconds",
            "algorithms",
            "iss",
        ],
    )?;
    let mut t = TrustDomainSpec::default();
    o.set_opt("jwks", &mut t.jwks, json)?;
    o.set_opt("jwks_uri", &mut t.jwks_uri, string)?;
    o.set_opt("cluster", &mut t.cluster, string)?;
    o.set("refresh_seconds", &mut t.refresh_seconds, uint)?;
    o.set("max_stale_seconds", &mut t.max_stale_seconds, uint)?;
    o.set("min_refetch_seconds", &mut t.min_refetch_seconds, uint)?;
    o.set("algorithms", &mut t.algorithms, strings)?;
    o.set_opt("iss", &mut t.iss, string)?;
    Ok(t)
}

fn mcp(c: &Cur<'_, '_>) -> Result<McpSpec> {
    let o = c.object(
        "struct McpSpec",
        &[
            "path_prefix",
            "max_body_bytes",
            "max_json_depth",
            "resource_metadata",
        ],
    )?;
    let mut m = McpSpec::default();
    o.set("path_prefix", &mut m.path_prefix, string)?;
    o.set("max_body_bytes", &mut m.max_body_bytes, uint)?;
    o.set("max_json_depth", &mut m.max_json_depth, uint)?;
    o.set_opt("resource_metadata", &mut m.resource_metadata, string)?;
    Ok(m)
}

fn rule(c: &Cur<'_, '_>) -> Result<RuleSpec> {
    let o = c.object(
        "struct RuleSpec",
        &["effect", "scopes", "constraints", "rate_limit", "mode"],
    )?;
    let mut r = RuleSpec {
        effect: Effect::default(),
        scopes: Vec::new(),
        constraints: Vec::new(),
        rate_limit: None,
        mode: Mode::default(),
    };
    o.set("effect", &mut r.effect, effect)?;
    o.set("scopes", &mut r.scopes, strings)?;
    o.set("constraints", &mut r.constraints, |c| c.items(constraint))?;
    o.set_opt("rate_limit", &mut r.rate_limit, rate_limit)?;
    o.set("mode", &mut r.mode, mode)?;
    Ok(r)
}

fn resource(c: &Cur<'_, '_>) -> Result<ResourceSpec> {
    let o = c.object(
        "struct ResourceSpec",
        &["effect", "scopes", "rate_limit", "mode", "constraints"],
    )?;
    let mut r = ResourceSpec {
        effect: Effect::default(),
        scopes: Vec::new(),
        rate_limit: None,
        mode: Mode::default(),
        constraints: None,
    };
    o.set("effect", &mut r.effect, effect)?;
    o.set("scopes", &mut r.scopes, strings)?;
    o.set_opt("rate_limit", &mut r.rate_limit, rate_limit)?;
    o.set("mode", &mut r.mode, mode)?;
    o.set_opt("constraints", &mut r.constraints, json)?;
    Ok(r)
}

fn constraint(c: &Cur<'_, '_>) -> Result<ConstraintSpec> {
    let o = c.object("struct ConstraintSpec", &["argument", "claim"])?;
    let mut k = ConstraintSpec {
        argument: String::new(),
        claim: String::new(),
    };
    o.set_req("argument", &mut k.argument, string)?;
    o.set_req("claim", &mut k.claim, string)?;
    Ok(k)
}

fn rate_limit(c: &Cur<'_, '_>) -> Result<RateLimitSpec> {
    let o = c.object(
        "struct RateLimitSpec",
        &[
            "key",
            "limit",
            "period_seconds",
            "burst",
            "on_store_error",
            "remote",
        ],
    )?;
    let mut r = RateLimitSpec {
        key: LimitKey::default(),
        limit: 0,
        period_seconds: 0,
        burst: None,
        on_store_error: StoreErrorPolicy::default(),
        remote: None,
    };
    o.set("key", &mut r.key, |c| c.one_of(LIMIT_KEYS))?;
    o.set_req("limit", &mut r.limit, uint)?;
    o.set_req("period_seconds", &mut r.period_seconds, uint)?;
    o.set_opt("burst", &mut r.burst, uint)?;
    o.set("on_store_error", &mut r.on_store_error, |c| {
        c.one_of(STORE_ERROR_POLICIES)
    })?;
    o.set_opt("remote", &mut r.remote, remote_limit)?;
    Ok(r)
}

fn remote_limit(c: &Cur<'_, '_>) -> Result<RemoteLimitSpec> {
    let o = c.object("struct RemoteLimitSpec", &["entries", "local_first"])?;
    let mut r = RemoteLimitSpec::default();
    o.set_opt("entries", &mut r.entries, |c| {
        c.items(|c| c.one_of(ENTRY_NAMES))
    })?;
    o.set("local_first", &mut r.local_first, boolean)?;
    Ok(r)
}

fn audit(c: &Cur<'_, '_>) -> Result<AuditSpec> {
    let o = c.object("struct AuditSpec", &["arguments"])?;
    let mut a = AuditSpec::default();
    o.set("arguments", &mut a.arguments, |c| {
        c.one_of(ARGUMENTS_AUDITS)
    })?;
    Ok(a)
}

fn limits(c: &Cur<'_, '_>) -> Result<LimitsSpec> {
    let o = c.object("struct LimitsSpec", &["max_keys", "headers"])?;
    let mut l = LimitsSpec::default();
    o.set("max_keys", &mut l.max_keys, uint)?;
    o.set("headers", &mut l.headers, |c| c.one_of(RATE_LIMIT_HEADERS))?;
    Ok(l)
}

fn rate_limit_service(c: &Cur<'_, '_>) -> Result<RateLimitServiceSpec> {
    let o = c.object(
        "struct RateLimitServiceSpec",
        &["cluster", "domain", "timeout_ms", "send_limit"],
    )?;
    let mut r = RateLimitServiceSpec {
        cluster: String::new(),
        domain: String::new(),
        timeout_ms: crate::rls::default_timeout_ms(),
        send_limit: crate::rls::default_true(),
    };
    o.set_req("cluster", &mut r.cluster, string)?;
    o.set_req("domain", &mut r.domain, string)?;
    o.set("timeout_ms", &mut r.timeout_ms, uint)?;
    o.set("send_limit", &mut r.send_limit, boolean)?;
    Ok(r)
}

#[cfg(test)]
mod tests;

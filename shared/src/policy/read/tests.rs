//! The hand reader against the serde-derived reading it replaced (derived in tests only): every policy the
//! project ships or tests with, and every single-fault variant of them (each value replaced by values of
//! every JSON type, each member removed, an unknown member added to each object), reads to the same spec
//! or fails at the same JSON pointer with the same message — except the two forms the reader refuses on
//! purpose (see the module documentation), which are checked to be exactly those.

use proptest::prelude::*;
use serde::Serialize;
use serde_json::{json, Value};

use super::*;
use crate::json::parse_strict;

/// The reading this module replaced: `serde_path_to_error` over the derived `Deserialize` impls.
fn by_serde(doc: &Value) -> Result<PolicySpec> {
    serde_path_to_error::deserialize(doc).map_err(|err| PolicyError::Shape {
        path: pointer_from_path(err.path()),
        message: err.into_inner().to_string(),
    })
}

fn pointer_from_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => {
                out.push('/');
                out.push_str(&index.to_string());
            }
            Segment::Map { key } => {
                out.push('/');
                out.push_str(&escape_pointer_token(key));
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    out
}

fn by_hand(doc: &Value) -> Result<PolicySpec> {
    policy(&Cur::root(doc))
}

/// Same result, or one of the two refusals that are new on purpose. Returns which.
fn same(doc: &Value) -> core::result::Result<&'static str, String> {
    let old = by_serde(doc).map(|s| format!("{s:?}"));
    let new = by_hand(doc).map(|s| format!("{s:?}"));
    match (&old, &new) {
        (Ok(a), Ok(b)) if a == b => return Ok("same spec"),
        (Err(a), Err(b)) if a == b => return Ok("same error"),
        _ => {}
    }
    if let Err(PolicyError::Shape { message, .. }) = &new {
        // A struct written as the array of its fields: serde's Value deserializer took it.
        if message.contains("invalid type: sequence, expected struct ") {
            return Ok("array for an object");
        }
        // An enum value written as a single-key object (`{"deny": null}`): serde took it.
        if message.contains("invalid type: map, expected a string") {
            return Ok("object for an enum value");
        }
        // An enum value of another type: serde said "string or map".
        if let Err(PolicyError::Shape { path, message: was }) = &old {
            let now = message.replace("expected a string", "expected string or map");
            if new.as_ref().err().map(PolicyError::path) == Some(path.as_str()) && now == *was {
                return Ok("enum value of another type");
            }
        }
    }
    Err(format!(
        "{doc}\n  serde: {old:?}\n  hand:  {new:?}",
        old = old.map(|_| "Ok").map_err(|e| e.to_string()),
        new = new.map(|_| "Ok").map_err(|e| e.to_string())
    ))
}

/// For documents with several faults, where the first one reported may differ (serde reported the first in
/// key order, the reader reports unknown fields first, then the fields in declaration order): the same
/// document is accepted (as the same spec) or refused.
fn agree(doc: &Value) -> core::result::Result<(), String> {
    if same(doc).is_ok() {
        return Ok(());
    }
    match (by_serde(doc), by_hand(doc)) {
        (Err(_), Err(_)) => Ok(()),
        (old, new) => Err(format!(
            "{doc}\n  serde: {old:?}\n  hand:  {new:?}",
            old = old.map(|_| "Ok").map_err(|e| e.to_string()),
            new = new.map(|_| "Ok").map_err(|e| e.to_string())
        )),
    }
}

fn file(path: &str) -> String {
    let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// Every field of the format at least once.
fn everything() -> Value {
    json!({
        "trust_domain": "trust.example",
        "issuers": [
            {"name": "tts", "iss": "https://tts", "jwks": {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "k1"}]},
             "refresh_seconds": 60, "max_stale_seconds": 600, "min_refetch_seconds": 10,
             "algorithms": ["EdDSA", "ES256"], "typ": ["txntoken+jwt", "txn_token"]},
            {"name": "remote", "jwks_uri": "https://tts/jwks", "cluster": "tts", "iss": null}
        ],
        "token": {"header": "txn-token", "leeway_seconds": 5, "max_lifetime_seconds": 60, "max_bytes": 4096, "cache_entries": 0},
        "agents": {"spiffe://trust.example/agent/*": {"max_scopes": ["calendar:*"]}, "spiffe://trust.example/a": {"max_scopes": []}},
        "delegation": {"max_depth": 2, "prior_actors": "narrow"},
        "peer_binding": {"mode": "when_present", "source": "mtls_or_wimse"},
        "wimse": {
            "trust_domains": {
                "trust.example": {"jwks_uri": "https://id/jwks", "cluster": "id", "refresh_seconds": 30, "max_stale_seconds": 60,
                                  "min_refetch_seconds": 5, "algorithms": ["ES256"], "iss": "https://id"},
                "other.example": {"jwks": {"keys": []}, "iss": null}
            },
            "audiences": ["https://mcp.example"],
            "max_proof_lifetime_seconds": 30, "replay_cache_entries": 10, "leeway_seconds": 1, "max_token_bytes": 1024,
            "proof_algorithms": ["EdDSA"]
        },
        "mcp": {"path_prefix": "/mcp", "max_body_bytes": 1024, "max_json_depth": 8, "resource_metadata": "https://x/.well-known/y"},
        "tools": {
            "send_email": {"effect": "allow", "scopes": ["email:send"], "mode": "dry_run",
                           "constraints": [{"argument": "/to", "claim": "/tctx/recipient"}],
                           "rate_limit": {"key": "sub", "limit": 10, "period_seconds": 60, "burst": 3, "on_store_error": "allow",
                                          "remote": {"entries": ["tool", "sub"], "local_first": true}}},
            "*": {"effect": "deny"}
        },
        "prompts": {"review": {"rate_limit": {"key": "tool", "limit": 1, "period_seconds": 1, "burst": null, "remote": null}}},
        "resources": {"file:///docs/**": {"effect": "allow", "scopes": [], "mode": "enforce", "constraints": null,
                                          "rate_limit": {"limit": 5, "period_seconds": 60, "remote": {}}}},
        "audit": {"arguments": "full"},
        "limits": {"max_keys": 100, "headers": "refusals"},
        "rate_limit_service": {"cluster": "rls", "domain": "txngate", "timeout_ms": 50, "send_limit": false}
    })
}

/// Every policy document the project ships or tests with (that is JSON and reads).
fn corpus() -> Vec<(String, Value)> {
    let mut docs = vec![
        ("everything".to_string(), everything()),
        (
            "policy::tests::example".to_string(),
            super::super::tests::example(),
        ),
        (
            "minimal".to_string(),
            json!({"trust_domain": "t", "issuers": [{"name": "i", "jwks_uri": "https://i/jwks"}]}),
        ),
    ];
    let mut paths = vec![
        "examples/policy.json".to_string(),
        "examples/envoy/policy.json".to_string(),
    ];
    for dir in ["tests/vectors/policies", "fuzz/corpus/policy"] {
        let full = format!("{}/../{dir}", env!("CARGO_MANIFEST_DIR"));
        let mut names: Vec<String> = std::fs::read_dir(&full)
            .unwrap_or_else(|e| panic!("{full}: {e}"))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        paths.extend(names.into_iter().map(|n| format!("{dir}/{n}")));
    }
    for path in paths {
        // The fuzz corpus holds a document with a duplicate key, refused before any reading.
        if let Ok(doc) = parse_strict(file(&path).as_bytes(), 64) {
            docs.push((path, doc));
        }
    }
    let wrangler = file("wrangler.toml");
    let policy = wrangler
        .split("TXNGATE_POLICY = '''")
        .nth(1)
        .and_then(|rest| rest.split("'''").next())
        .expect("wrangler.toml carries a policy");
    docs.push((
        "wrangler.toml".into(),
        parse_strict(policy.as_bytes(), 64).unwrap(),
    ));
    docs
}

#[test]
fn every_shipped_policy_reads_as_serde_read_it() {
    let docs = corpus();
    assert!(docs.len() >= 15, "{}", docs.len());
    for (name, doc) in &docs {
        assert!(by_serde(doc).is_ok(), "{name}: {:?}", by_serde(doc).err());
        assert_eq!(same(doc), Ok("same spec"), "{name}");
    }
}

/// Replacement values: every JSON type, numbers at and past the `u32` bounds, enum names valid somewhere,
/// the map form of an enum value, the array form of an object; `peer_binding` objects with one fault each.
fn replacements() -> Vec<Value> {
    vec![
        json!(null),
        json!(true),
        json!(false),
        json!(0),
        json!(1),
        json!(-1),
        json!(4_294_967_295_u64),
        json!(4_294_967_296_u64),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1.5),
        json!(1e3),
        json!(-0.0),
        json!(""),
        json!("x"),
        json!("a/b~c"),
        json!("allow"),
        json!("deny"),
        json!("dry_run"),
        json!("tool"),
        json!("agent"),
        json!("require"),
        json!("wimse"),
        json!("EdDSA"),
        json!("HS256"),
        json!([]),
        json!(["x"]),
        json!([1]),
        json!(["txn-token", 30]),
        json!({}),
        json!({"x": 1}),
        json!({"deny": null}),
        json!({"mode": "require"}),
        json!({"mode": 1}),
        json!({"source": "wimse"}),
    ]
}

/// Objects that are one fault at `peer_binding` but two in other objects.
fn peer_binding_objects() -> Vec<Value> {
    vec![
        json!({"mode": "require", "source": "carrier-pigeon"}),
        json!({"mode": "require", "source": 1}),
        json!({"mode": "off", "a/b": 1}),
        json!({"mode": "off", "source": "wimse", "x": 1}),
    ]
}

/// The JSON pointer of every value in `v`.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                pointers(child, format!("{at}/{}", escape_pointer_token(k)), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// Every single-fault variant of `doc`, and (second) those with more than one fault.
fn variants(doc: &Value) -> (Vec<Value>, Vec<Value>) {
    let mut at = Vec::new();
    pointers(doc, String::new(), &mut at);
    let mut out = Vec::new();
    let mut several = Vec::new();
    for p in &at {
        for r in replacements() {
            let mut d = doc.clone();
            if let Some(slot) = d.pointer_mut(p) {
                *slot = r;
                out.push(d);
            }
        }
        for r in peer_binding_objects() {
            let mut d = doc.clone();
            if let Some(slot) = d.pointer_mut(p) {
                *slot = r;
                if p == "/peer_binding" {
                    out.push(d);
                } else {
                    several.push(d);
                }
            }
        }
        let mut d = doc.clone();
        if let Some(Value::Object(map)) = d.pointer_mut(p) {
            map.insert("zz_extra".into(), json!(1));
            map.insert("a".into(), json!(1));
            out.push(d);
        }
        if let Some((parent, last)) = p.rsplit_once('/') {
            let mut d = doc.clone();
            let key = last.replace("~1", "/").replace("~0", "~");
            if let Some(Value::Object(map)) = d.pointer_mut(parent) {
                map.remove(&key);
                out.push(d);
            }
        }
    }
    (out, several)
}

/// (Every document here reads; each variant below has exactly one fault, unless said otherwise.)
#[test]
fn every_single_fault_is_refused_at_the_same_pointer_with_the_same_message() {
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    let mut failures = Vec::new();
    for (name, doc) in corpus() {
        let (single, several) = variants(&doc);
        for variant in single {
            match same(&variant) {
                Ok(kind) => *seen.entry(kind).or_default() += 1,
                Err(e) => failures.push(format!("{name}: {e}")),
            }
        }
        for variant in several {
            if let Err(e) = agree(&variant) {
                failures.push(format!("{name} (several faults): {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} differ, the first:\n{}",
        failures.len(),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Each kind of outcome was reached, so the comparison above compared something.
    for kind in [
        "same spec",
        "same error",
        "array for an object",
        "object for an enum value",
        "enum value of another type",
    ] {
        assert!(seen.get(kind).copied().unwrap_or(0) > 0, "{kind}: {seen:?}");
    }
}

/// Arbitrary JSON (small, nested) at an arbitrary place of a document that reads.
fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e20f64..1e20).prop_map(|f| json!(f)),
        "[a-z_/~*]{0,8}".prop_map(Value::String),
        prop::sample::select(vec![
            "allow",
            "deny",
            "enforce",
            "dry_run",
            "agent",
            "sub",
            "tool",
            "prompt",
            "off",
            "require",
            "when_present",
            "mtls",
            "wimse",
            "narrow",
            "hash",
            "full",
            "none",
            "always",
            "refusals",
            "ES384",
            "PS256",
        ])
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "mode",
                    "source",
                    "limit",
                    "period_seconds",
                    "key",
                    "effect",
                    "entries",
                    "local_first",
                    "max_scopes",
                    "argument",
                    "claim",
                    "x",
                ])
                .prop_map(str::to_string),
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn arbitrary_values_anywhere_read_as_serde_read_them(
        doc in prop::sample::select(vec![0usize, 1, 2]),
        place in any::<prop::sample::Index>(),
        value in arbitrary_json(),
    ) {
        let doc = [everything(), super::super::tests::example(), json!({"trust_domain": "t", "issuers": []})]
            [doc].clone();
        let mut at = Vec::new();
        pointers(&doc, String::new(), &mut at);
        let mut d = doc;
        let p = place.get(&at).clone();
        if let Some(slot) = d.pointer_mut(&p) {
            *slot = value;
        }
        prop_assert!(agree(&d).is_ok(), "{}", agree(&d).unwrap_err());
    }
}

#[test]
fn the_enum_names_are_the_serialized_names() {
    fn check<T: Serialize + Copy + PartialEq + core::fmt::Debug>(table: &[(&str, T)]) {
        for (name, v) in table {
            assert_eq!(serde_json::to_value(v).unwrap(), json!(name), "{v:?}");
        }
    }
    check(ALGORITHMS);
    check(EFFECTS);
    check(MODES);
    check(LIMIT_KEYS);
    check(STORE_ERROR_POLICIES);
    check(PRIOR_ACTORS);
    check(PEER_BINDINGS);
    check(PEER_SOURCES);
    check(ARGUMENTS_AUDITS);
    check(RATE_LIMIT_HEADERS);
    check(ENTRY_NAMES);
}

#[test]
fn faults_name_their_pointer() {
    let cases = [
        (json!({"trust_domain": 1}), "/trust_domain", "invalid type: integer `1`, expected a string"),
        (json!({"issuers": [{"name": "i", "refresh_seconds": -1}]}), "/issuers/0/refresh_seconds", "invalid value: integer `-1`, expected u32"),
        (json!({"issuers": [{"name": "i", "refresh_seconds": 4_294_967_296_u64}]}), "/issuers/0/refresh_seconds", "invalid value: integer `4294967296`, expected u32"),
        (json!({"issuers": [{"name": "i", "refresh_seconds": 1.0}]}), "/issuers/0/refresh_seconds", "invalid type: floating point `1.0`, expected u32"),
        (json!({"issuers": [{"name": "i", "algorithms": ["HS256"]}]}), "/issuers/0/algorithms/0", "unknown variant `HS256`, expected one of `EdDSA`, `Ed25519`, `ES256`, `ES384`, `RS256`, `PS256`"),
        (json!({"issuers": [{}]}), "/issuers/0", "missing field `name`"),
        (json!({"tools": {"a/b": {"effect": {"deny": null}}}}), "/tools/a~1b/effect", "invalid type: map, expected a string"),
        (json!({"token": ["txn-token"]}), "/token", "invalid type: sequence, expected struct TokenSpec"),
        (json!({"trust_domian": "x"}), "/trust_domian", "unknown field `trust_domian`, expected one of `trust_domain`, "),
        (json!({"agents": {"a": {"max_scope": []}}}), "/agents/a/max_scope", "unknown field `max_scope`, expected `max_scopes`"),
        (json!({"peer_binding": {"mode": "require", "source": "x"}}), "/peer_binding", "at source: unknown variant `x`, expected one of `mtls`, `wimse`, `mtls_or_wimse`"),
        (json!({"peer_binding": {"source": "wimse"}}), "/peer_binding", "at .: missing field `mode`"),
        (json!({"peer_binding": 1}), "/peer_binding", "expected \"off\", \"require\""),
        (json!({"wimse": {"trust_domains": {"t": {"jwks_uri": 1}}, "audiences": []}}), "/wimse/trust_domains/t/jwks_uri", "expected a string"),
        (json!({"rate_limit_service": {"cluster": "c"}}), "/rate_limit_service", "missing field `domain`"),
    ];
    for (patch, path, message) in cases {
        let mut doc = json!({"trust_domain": "t", "issuers": []});
        for (k, v) in patch.as_object().unwrap() {
            doc[k] = v.clone();
        }
        let e = by_hand(&doc).unwrap_err();
        assert_eq!(e.path(), path, "{patch}: {e}");
        assert!(e.to_string().contains(message), "{patch}: {e}");
    }
}

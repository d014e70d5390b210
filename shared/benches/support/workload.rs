//! The core benchmark workloads, shared word for word by the native criterion bench (`shared/benches/core.rs`)
//! and the wasm32-wasip1 bench module run under wasmtime (`tests/bench-wasm`), so the native/wasm ratio of a
//! case compares the same inputs doing the same work.
//!
//! Every case is built from deterministic keys (fixed seeds, no RNG from the host), checked once for the
//! verdict it must give (a bench that silently measured a denial would be worthless), then run repeatedly.
//! Each run advances the fake clock by 1 ms, so rate limits (1000 per second) never run dry and tokens (valid
//! for a day) never expire however long the measurement takes.

use ed25519_compact::{KeyPair, Seed};
use jwt_compact::alg::{Ed25519, Es256, Rsa};
use jwt_compact::{Algorithm as _, AlgorithmSignature as _};
use serde_json::{json, Value};
use txngate_core::encoding::{self, encode_b64url};
use txngate_core::json::{self, parse_strict};
use txngate_core::ratelimit::{self, bucket_key, LimitRule, MemoryStore, SlotTable};
use txngate_core::token::UntrustedToken;
use txngate_core::{mcp, Body, Gate, Request};

/// The fake clock's start (ms since the epoch).
pub const NOW_MS: u64 = 1_800_000_000_000;
const NOW_S: u64 = NOW_MS / 1000;
const TD: &str = "trust.example";
const AGENT: &str = "spiffe://trust.example/agent/mailer";
/// Rate-limit slots of the bounded (Envoy shared data) store: the largest curve point must fit.
const SLOTS: u32 = 262_144;

/// Every case, in report order. Curves end in their parameter.
pub const CASES: &[&str] = &[
    "token/EdDSA/fresh",
    "token/EdDSA/cached",
    "token/ES256/fresh",
    "token/ES256/cached",
    "token/RS256/fresh",
    "token/RS256/cached",
    "token/PS256/fresh",
    "token/PS256/cached",
    "mcp/parse/small",
    "mcp/parse/8KiB",
    "mcp/parse/64KiB",
    "mcp/scan/8KiB",
    "mcp/scan/8KiB_unsorted",
    "decision/allow/cached",
    "decision/allow/cached_8KiB",
    "decision/allow/cached_64KiB",
    "decision/allow/cached_noaudit",
    "decision/allow/cached_8KiB_noaudit",
    "decision/allow/fresh_EdDSA",
    "decision/allow/fresh_ES256",
    "parts/token_sha256",
    "parts/token_split",
    "parts/claims_decode",
    "parts/arguments_hash",
    "parts/arguments_hash_8KiB",
    "parts/arguments_hash_8KiB_unsorted",
    "parts/audit_json",
    "gcra/step",
    "gcra/MemoryStore",
    "gcra/SlotTable",
    "curve/limit_keys/10",
    "curve/limit_keys/1000",
    "curve/limit_keys/100000",
    "curve/tools/1",
    "curve/tools/10",
    "curve/tools/100",
    "curve/agents/1",
    "curve/agents/10",
    "curve/agents/100",
    "curve/ring_keys/1",
    "curve/ring_keys/10",
    "curve/ring_keys/100",
];

/// The signing keys behind the policies' JWKS. Test keys from fixed seeds; they never leave the process.
struct Signers {
    ed: Vec<KeyPair>,
    ec: p256::ecdsa::SigningKey,
    rsa: Option<rsa::RsaPrivateKey>,
}

impl Signers {
    fn new(ed_keys: usize, with_rsa: bool) -> Result<Self, String> {
        let ed = (0..ed_keys.max(1))
            .map(|i| {
                let mut seed = [7u8; 32];
                seed[0] = (i % 256) as u8;
                seed[1] = (i / 256) as u8;
                KeyPair::from_seed(Seed::new(seed))
            })
            .collect();
        let ec = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).map_err(|e| e.to_string())?;
        let rsa = if with_rsa { Some(rsa_key()?) } else { None };
        Ok(Self { ed, ec, rsa })
    }

    fn jwks(&self) -> Result<Value, String> {
        let mut keys: Vec<Value> = self
            .ed
            .iter()
            .enumerate()
            .map(|(i, k)| json!({"kty":"OKP","crv":"Ed25519","x": encode_b64url(k.pk.as_ref()),"kid": format!("ed-{i}")}))
            .collect();
        let point = self.ec.verifying_key().to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err("P-256 point has no coordinates".into());
        };
        keys.push(json!({"kty":"EC","crv":"P-256","x": encode_b64url(x),"y": encode_b64url(y),"kid":"ec"}));
        if let Some(rsa) = &self.rsa {
            use rsa::traits::PublicKeyParts as _;
            let public = rsa.to_public_key();
            let n = encode_b64url(&public.n().to_bytes_be());
            let e = encode_b64url(&public.e().to_bytes_be());
            keys.push(json!({"kty":"RSA","n": n,"e": e,"kid":"rs","alg":"RS256"}));
            keys.push(json!({"kty":"RSA","n": n,"e": e,"kid":"ps","alg":"PS256"}));
        }
        Ok(json!({ "keys": keys }))
    }

    /// A compact JWS over `claims` with the key `kid` names.
    fn sign(&self, kid: &str, claims: &Value) -> Result<String, String> {
        let alg = match kid {
            "ec" => "ES256",
            "rs" => "RS256",
            "ps" => "PS256",
            _ => "EdDSA",
        };
        let header = json!({"alg": alg, "typ": "txntoken+jwt", "kid": kid});
        let input = format!(
            "{}.{}",
            encode_b64url(header.to_string().as_bytes()),
            encode_b64url(claims.to_string().as_bytes())
        );
        let sig: Vec<u8> = match kid {
            "ec" => Es256
                .sign(&self.ec, input.as_bytes())
                .as_bytes()
                .into_owned(),
            "rs" | "ps" => {
                let key = self.rsa.as_ref().ok_or("no RSA key")?;
                let rsa = if kid == "rs" {
                    Rsa::rs256()
                } else {
                    Rsa::ps256()
                };
                rsa.sign(key, input.as_bytes()).as_bytes().into_owned()
            }
            _ => {
                let index: usize = kid
                    .strip_prefix("ed-")
                    .and_then(|i| i.parse().ok())
                    .unwrap_or(0);
                let key = self.ed.get(index).ok_or("no such Ed25519 key")?;
                Ed25519
                    .sign(&key.sk, input.as_bytes())
                    .as_bytes()
                    .into_owned()
            }
        };
        Ok(format!("{input}.{}", encode_b64url(&sig)))
    }
}

/// A 2048-bit RSA key from a fixed-seed ChaCha stream: reproducible, and no host randomness in wasm.
/// Generated once per process (it takes a while, much longer in wasm).
fn rsa_key() -> Result<rsa::RsaPrivateKey, String> {
    static KEY: std::sync::OnceLock<Result<rsa::RsaPrivateKey, String>> =
        std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        use rand_chacha::rand_core::SeedableRng as _;
        let mut rng = rand_chacha::ChaCha8Rng::from_seed([3u8; 32]);
        rsa::RsaPrivateKey::new(&mut rng, 2048).map_err(|e| e.to_string())
    })
    .clone()
}

/// A delegated call: the mailer agent acting for the orchestrator, for user alice.
fn claims() -> Value {
    json!({
        "iat": NOW_S - 10, "exp": NOW_S + 86_400, "aud": TD, "txn": "txn-bench-1", "sub": "user:alice",
        "scope": "email:send calendar:read calendar:write", "req_wl": "spiffe://trust.example/gw",
        "tctx": {"recipient": ["bob@example.com", "carol@example.com"]},
        "act": {"sub": AGENT, "act": {"sub": "spiffe://trust.example/orchestrator"}}
    })
}

struct Shape {
    tools: usize,
    cache: bool,
    /// Agent patterns besides the three every policy has (more specific than the mailer's, so matched first).
    agent_patterns: usize,
    /// The policy's `audit.arguments`.
    audit: &'static str,
}

fn policy(jwks: Value, shape: &Shape) -> Value {
    let mut tools = serde_json::Map::new();
    tools.insert(
        "send_email".into(),
        json!({"scopes": ["email:send"], "constraints": [{"argument": "/to", "claim": "/tctx/recipient"}],
               "rate_limit": {"key": "agent", "limit": 1000, "period_seconds": 1}}),
    );
    for i in 1..shape.tools.max(1) {
        tools.insert(
            format!("tool_{i:03}"),
            json!({"scopes": ["calendar:read"], "rate_limit": {"key": "agent", "limit": 10, "period_seconds": 60}}),
        );
    }
    let mut agents = serde_json::Map::new();
    agents.insert(
        "spiffe://trust.example/gw".into(),
        json!({"max_scopes": ["*"]}),
    );
    agents.insert(
        "spiffe://trust.example/orchestrator".into(),
        json!({"max_scopes": ["calendar:*", "email:*"]}),
    );
    agents.insert(
        "spiffe://trust.example/agent/*".into(),
        json!({"max_scopes": ["calendar:read", "email:send"]}),
    );
    for i in 1..shape.agent_patterns {
        agents.insert(
            format!("spiffe://trust.example/team-{i:03}/*"),
            json!({"max_scopes": ["calendar:read"]}),
        );
    }
    json!({
        "trust_domain": TD,
        "issuers": [{"name": "tts", "jwks": jwks, "algorithms": ["EdDSA", "ES256", "RS256", "PS256"]}],
        "token": {"max_lifetime_seconds": 172_800, "cache_entries": if shape.cache { 1024 } else { 0 }},
        "agents": agents,
        "delegation": {"max_depth": 2},
        "audit": {"arguments": shape.audit},
        // Room for the 64 KiB-argument case (the default is 64 KiB for the whole body).
        "mcp": {"max_body_bytes": 131_072},
        "tools": tools,
        "limits": {"max_keys": SLOTS}
    })
}

/// A `tools/call` of `send_email`; `pad` adds a list of messages to reach about that many bytes of arguments.
fn tools_call(pad: usize) -> Vec<u8> {
    let message = |i: usize| json!({"id": i, "from": "carol@example.com", "subject": "re: quarterly numbers", "tags": ["finance", "q3"], "read": false, "size": 2048});
    let count = if pad == 0 {
        0
    } else {
        pad / message(0).to_string().len() + 1
    };
    let thread: Vec<Value> = (0..count).map(message).collect();
    let args = if thread.is_empty() {
        json!({"to": "bob@example.com", "subject": "quarterly numbers", "body": "see attached"})
    } else {
        json!({"to": "bob@example.com", "subject": "quarterly numbers", "body": "see attached", "thread": thread})
    };
    json!({"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"send_email","arguments":args}})
        .to_string()
        .into_bytes()
}

/// [`tools_call`] as a client that keeps its own key order and spacing sends it: the same value, its keys
/// out of order and a space after each `:` and `,` (so neither the sorted-key check nor the one-span hash
/// applies).
fn tools_call_unsorted(pad: usize) -> Vec<u8> {
    let count = pad / 110 + 1;
    let thread: Vec<String> = (0..count)
        .map(|i| {
            format!(
                r#"{{"id": {i}, "subject": "re: quarterly numbers", "from": "carol@example.com", "tags": ["finance", "q3"], "size": 2048, "read": false}}"#
            )
        })
        .collect();
    format!(
        r#"{{"jsonrpc": "2.0", "id": 42, "method": "tools/call", "params": {{"name": "send_email", "arguments": {{"to": "bob@example.com", "subject": "quarterly numbers", "body": "see attached", "thread": [{}]}}}}}}"#,
        thread.join(", ")
    )
    .into_bytes()
}

/// The arguments of [`tools_call`] as the gate gets them (kept as bytes by the typed reader).
fn arguments(pad: usize) -> Result<mcp::Arguments, String> {
    arguments_of(&tools_call(pad))
}

fn arguments_of(body: &[u8]) -> Result<mcp::Arguments, String> {
    let message = mcp::parse_message(body, 131_072, 32).map_err(|e| e.to_string())?;
    message
        .tool_call()
        .map(|call| call.arguments.clone())
        .ok_or_else(|| "not a tools/call".to_string())
}

#[derive(Clone, Copy)]
enum PartKind {
    TokenSha256,
    TokenSplit,
    ClaimsDecode,
    ArgumentsHash,
}

enum Work {
    Decide {
        gate: Box<Gate>,
        mcp: bool,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        store: MemoryStore,
    },
    Parse {
        body: Vec<u8>,
    },
    /// The strict scan alone (no tree), of a whole body.
    Scan {
        body: Vec<u8>,
    },
    /// A piece of the cached path, to see where a decision's time goes.
    Part {
        which: PartKind,
        token: String,
        arguments: mcp::Arguments,
    },
    /// The audit line of an allowed cached `tools/call`, as every host writes one per decision.
    AuditJson {
        record: Box<txngate_core::AuditRecord>,
    },
    GcraStep {
        rule: LimitRule,
        tat: u128,
    },
    GcraStore {
        rule: LimitRule,
        store: MemoryStore,
        key: String,
        slots: bool,
    },
}

/// One built case: call [`Case::run`] in the timed loop.
pub struct Case {
    now_ms: u64,
    work: Work,
}

impl Case {
    /// Builds `name` (one of [`CASES`]) and checks it gives its expected result once.
    pub fn build(name: &str) -> Result<Self, String> {
        let parts: Vec<&str> = name.split('/').collect();
        let mut case = match parts.as_slice() {
            ["token", alg, mode] => {
                let kid = match *alg {
                    "EdDSA" => "ed-0",
                    "ES256" => "ec",
                    "RS256" => "rs",
                    "PS256" => "ps",
                    _ => return Err(format!("unknown algorithm in {name}")),
                };
                let shape = Shape {
                    tools: 1,
                    cache: *mode == "cached",
                    agent_patterns: 0,
                    audit: "hash",
                };
                decide_case(
                    1,
                    kid.starts_with('r') || kid == "ps",
                    kid,
                    &shape,
                    false,
                    0,
                    0,
                )?
            }
            ["mcp", "scan", "8KiB"] => Self {
                now_ms: NOW_MS,
                work: Work::Scan {
                    body: tools_call(8192),
                },
            },
            ["mcp", "scan", "8KiB_unsorted"] => Self {
                now_ms: NOW_MS,
                work: Work::Scan {
                    body: tools_call_unsorted(8192),
                },
            },
            ["mcp", "parse", size] => Self {
                now_ms: NOW_MS,
                work: Work::Parse {
                    body: tools_call(match *size {
                        "8KiB" => 8192,
                        "64KiB" => 65536,
                        _ => 0,
                    }),
                },
            },
            ["decision", "allow", which] => {
                let (kid, cache, pad) = match *which {
                    "cached" => ("ed-0", true, 0),
                    "cached_8KiB" => ("ed-0", true, 8192),
                    "cached_64KiB" => ("ed-0", true, 65536),
                    "cached_noaudit" => ("ed-0", true, 0),
                    "cached_8KiB_noaudit" => ("ed-0", true, 8192),
                    "fresh_EdDSA" => ("ed-0", false, 0),
                    "fresh_ES256" => ("ec", false, 0),
                    _ => return Err(format!("unknown case {name}")),
                };
                let shape = Shape {
                    tools: 1,
                    cache,
                    agent_patterns: 0,
                    audit: if which.ends_with("noaudit") {
                        "none"
                    } else {
                        "hash"
                    },
                };
                decide_case(1, false, kid, &shape, true, pad, 0)?
            }
            ["parts", "audit_json"] => {
                let shape = Shape {
                    tools: 1,
                    cache: true,
                    agent_patterns: 0,
                    audit: "hash",
                };
                let mut case = decide_case(1, false, "ed-0", &shape, true, 0, 0)?;
                let Work::Decide {
                    gate,
                    headers,
                    body,
                    store,
                    ..
                } = &mut case.work
                else {
                    return Err("not a decision".into());
                };
                let request = Request {
                    method: "POST",
                    path: "/mcp",
                    headers,
                    body: Body::Complete(body),
                    peer: None,
                };
                let mut limiter = SlotTable::new(store, SLOTS);
                let outcome = gate.decide(
                    &request,
                    NOW_MS,
                    txngate_core::Verification::Core,
                    &mut limiter,
                );
                Self {
                    now_ms: NOW_MS,
                    work: Work::AuditJson {
                        record: Box::new(outcome.audit),
                    },
                }
            }
            ["parts", which] => {
                let which = match *which {
                    "token_sha256" => PartKind::TokenSha256,
                    "token_split" => PartKind::TokenSplit,
                    "claims_decode" => PartKind::ClaimsDecode,
                    "arguments_hash" | "arguments_hash_8KiB" | "arguments_hash_8KiB_unsorted" => {
                        PartKind::ArgumentsHash
                    }
                    _ => return Err(format!("unknown case {name}")),
                };
                let token = Signers::new(1, false)?.sign("ed-0", &claims())?;
                Self {
                    now_ms: NOW_MS,
                    work: Work::Part {
                        which,
                        token,
                        arguments: if name.ends_with("unsorted") {
                            arguments_of(&tools_call_unsorted(8192))?
                        } else {
                            arguments(if name.ends_with("8KiB") { 8192 } else { 0 })?
                        },
                    },
                }
            }
            ["gcra", which] => {
                let rule = LimitRule::new(1000, 1, 1000).map_err(|(f, e)| format!("{f}: {e}"))?;
                let work = match *which {
                    "step" => Work::GcraStep { rule, tat: 0 },
                    "MemoryStore" | "SlotTable" => Work::GcraStore {
                        rule,
                        store: MemoryStore::new(),
                        key: bucket_key("send_email", "agent", AGENT, &rule),
                        slots: *which == "SlotTable",
                    },
                    _ => return Err(format!("unknown case {name}")),
                };
                Self {
                    now_ms: NOW_MS,
                    work,
                }
            }
            ["curve", what, n] => {
                let n: usize = n
                    .parse()
                    .map_err(|_| format!("bad curve point in {name}"))?;
                match *what {
                    "limit_keys" => {
                        let shape = Shape {
                            tools: 1,
                            cache: true,
                            agent_patterns: 0,
                            audit: "hash",
                        };
                        decide_case(1, false, "ed-0", &shape, true, 0, n)?
                    }
                    "tools" => {
                        let shape = Shape {
                            tools: n,
                            cache: true,
                            agent_patterns: 0,
                            audit: "hash",
                        };
                        decide_case(1, false, "ed-0", &shape, true, 0, 0)?
                    }
                    "agents" => {
                        let shape = Shape {
                            tools: 1,
                            cache: true,
                            agent_patterns: n,
                            audit: "hash",
                        };
                        decide_case(1, false, "ed-0", &shape, true, 0, 0)?
                    }
                    "ring_keys" => {
                        let shape = Shape {
                            tools: 1,
                            cache: false,
                            agent_patterns: 0,
                            audit: "hash",
                        };
                        // The last Ed25519 key: a linear kid scan would show here.
                        let kid = format!("ed-{}", n.max(1) - 1);
                        decide_case(n, false, &kid, &shape, true, 0, 0)?
                    }
                    _ => return Err(format!("unknown curve {name}")),
                }
            }
            _ => return Err(format!("unknown case {name}")),
        };
        if !case.run() {
            return Err(format!(
                "{name}: the first run did not give the expected result"
            ));
        }
        Ok(case)
    }

    /// One operation; true when it gave the expected result (an allow, a parsed call, an allowed step).
    pub fn run(&mut self) -> bool {
        self.now_ms += 1;
        let now_ms = self.now_ms;
        match &mut self.work {
            Work::Decide {
                gate,
                mcp,
                headers,
                body,
                store,
            } => {
                let request = Request {
                    method: if *mcp { "POST" } else { "GET" },
                    path: if *mcp { "/mcp" } else { "/api/profile" },
                    headers,
                    body: if *mcp {
                        Body::Complete(body)
                    } else {
                        Body::Absent
                    },
                    peer: None,
                };
                let mut limiter = SlotTable::new(store, SLOTS);
                let outcome = gate.decide(
                    &request,
                    now_ms,
                    txngate_core::Verification::Core,
                    &mut limiter,
                );
                outcome.decision.reason() == "allow"
            }
            Work::Scan { body } => json::scan(body, 32).is_some(),
            Work::Parse { body } => mcp::parse_message(body, 131_072, 32)
                .is_ok_and(|m| m.tool_call().is_some_and(|c| c.name == "send_email")),
            Work::Part {
                which,
                token,
                arguments,
            } => match which {
                PartKind::TokenSha256 => encoding::sha256(token.as_bytes()).first() != Some(&0xff),
                PartKind::TokenSplit => UntrustedToken::parse(token, 8192).is_ok(),
                PartKind::ClaimsDecode => UntrustedToken::parse(token, 8192)
                    .and_then(|t| t.payload())
                    .is_ok_and(|p| parse_strict(&p, 32).is_ok()),
                PartKind::ArgumentsHash => arguments.canonical_sha256().first() != Some(&0xff),
            },
            // A cheap check (a substring search would cost as much as the line): its length, fixed here.
            Work::AuditJson { record } => record.to_json().len() > 600,
            Work::GcraStep { rule, tat } => {
                let (next, state) = ratelimit::gcra(rule, Some(*tat), now_ms);
                if let Some(next) = next {
                    *tat = next;
                }
                state.allowed
            }
            Work::GcraStore {
                rule,
                store,
                key,
                slots,
            } => {
                let result = if *slots {
                    SlotTable::new(store, SLOTS).consume(key, rule, now_ms)
                } else {
                    ratelimit::consume(store, key, rule, now_ms)
                };
                result.is_ok_and(|s| s.allowed)
            }
        }
    }
}

/// A `Gate::decide` case. `live_buckets` other agents' buckets are filled first, at a time a day ahead so
/// they stay live (undrained) for the whole measurement.
fn decide_case(
    ed_keys: usize,
    with_rsa: bool,
    kid: &str,
    shape: &Shape,
    mcp: bool,
    pad: usize,
    live_buckets: usize,
) -> Result<Case, String> {
    let signers = Signers::new(ed_keys, with_rsa)?;
    let policy = policy(signers.jwks()?, shape);
    let bytes = serde_json::to_vec(&policy).map_err(|e| e.to_string())?;
    let gate = Gate::from_json(&bytes).map_err(|e| e.to_string())?;
    let token = signers.sign(kid, &claims())?;
    let mut store = MemoryStore::new();
    if live_buckets > 0 {
        let rule = LimitRule::new(1000, 1, 1000).map_err(|(f, e)| format!("{f}: {e}"))?;
        let mut table = SlotTable::new(&mut store, SLOTS);
        let later = NOW_MS + 86_400_000;
        for i in 0..live_buckets {
            let id = format!("spiffe://trust.example/agent/other-{i}");
            // A full table would refuse some; the point is the occupancy, not each insert.
            let _ = table.consume(&bucket_key("send_email", "agent", &id, &rule), &rule, later);
        }
    }
    Ok(Case {
        now_ms: NOW_MS,
        work: Work::Decide {
            gate: Box::new(gate),
            mcp,
            headers: vec![
                ("txn-token".into(), token),
                ("content-type".into(), "application/json".into()),
                (
                    "accept".into(),
                    "application/json, text/event-stream".into(),
                ),
            ],
            body: tools_call(pad),
            store,
        },
    })
}

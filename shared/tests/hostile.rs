//! The known JWT attack catalogue against the gate: one test per attack class, each named after the RFC
//! section or CVE it comes from, each asserting the exact status and reason code. Almost everything goes end
//! to end through [`Gate::decide`] (policy JSON in, `Outcome` out); load-time checks go through
//! [`Policy::from_json`] and assert the JSON pointer of the refused key; unit-level checks are added where they
//! say more (`UntrustedToken::parse`, `PublicKey::verify`, `parse_jwk`, `json::parse_strict`).
//!
//! Every verdict is documented in the doc comment of the test that asserts it (the "why" lives there):
//!
//! | attack | verdict | test |
//! |---|---|---|
//! | `alg` none / None / NONE / nOnE, with or without signature (RFC 7518 §3.6) | 401 `token.alg_none` | `rfc7518_3_6_alg_none_in_any_case_is_refused` |
//! | empty signature segment, any `alg` (RFC 8725 §3.1) | 401 `token.alg_none` | `rfc8725_3_1_empty_signature_segment_is_refused` |
//! | HS256/384/512 keyed with the public key as PEM, SPKI DER, JWK, raw point (CVE-2015-9235) | 401 `token.alg` | `cve_2015_9235_hmac_keyed_with_the_public_key_is_refused` |
//! | ES256 on an Ed25519 kid and vice versa, PS256 on an RS256-bound key (RFC 8725 §3.1) | 401 `token.alg_mismatch` | `rfc8725_3_1_alg_must_match_the_keys_one_algorithm` |
//! | `es256`, `Ed25519`, `ES384`, ... / missing or non-string `alg` | 401 `token.alg` / `token.header` | same test |
//! | ES256 signature in ASN.1 DER (RFC 7518 §3.4) | 401 `token.signature` | `rfc7518_3_4_der_encoded_ecdsa_signature_is_refused` |
//! | r, s ∈ {0, 1, n-1, n, 2^256-1}, r = s = 0 (CVE-2022-21449) | 401 `token.signature` | `cve_2022_21449_psychic_and_out_of_range_ecdsa_signatures_are_refused` |
//! | high-S ECDSA (s' = n - s) | ACCEPTED, 200 `allow` | `ecdsa_high_s_signatures_are_accepted_like_every_host` |
//! | small-order Ed25519 public keys (8 points, sign bit, non-canonical) | policy refused at `/issuers/0/jwks/keys/1` | `rfc8032_small_order_ed25519_keys_are_refused_at_load` |
//! | Ed25519 small-order R, S >= L (RFC 8032 §5.1.7) | 401 `token.signature` | `rfc8032_ed25519_small_order_r_and_non_canonical_s_are_refused` |
//! | RSA < 2048 bits, e = 0, 1, 2 (RFC 7518 §3.3) | policy refused at `/issuers/0/jwks/keys/2` | `rfc7518_3_3_weak_rsa_keys_are_refused_at_load_with_their_path` |
//! | `kid` traversal, SQL/LDAP injection, wildcards, NUL, case, look-alikes (RFC 8725 §3.10) | 401 `token.kid_unknown` | `rfc7515_4_1_4_kid_injection_strings_only_ever_miss` |
//! | 64 KiB `kid` / same with `max_bytes` raised | 401 `token.too_large` / `token.kid_unknown` | `rfc7515_4_1_4_64_kib_kid_is_too_large_then_only_unknown` |
//! | embedded `jwk` (CVE-2018-0114), `jku`, `x5u`, `x5c` | 401 `token.embedded_key` | `cve_2018_0114_embedded_keys_and_key_urls_are_refused` |
//! | any `crit` (RFC 7515 §4.1.11) | 401 `token.crit` | `rfc7515_4_1_11_crit_is_refused` |
//! | `typ` missing, `JWT`, `at+jwt`, `application/jwt`, ... (RFC 8725 §3.11) | 401 `token.typ` | `rfc8725_3_11_typ_must_be_txntoken` |
//! | JWE (five segments, `enc`) / nested (`cty`) | 401 `token.encrypted` / `token.nested` | `rfc7516_9_jwe_and_nested_tokens_are_refused` |
//! | claims of the wrong JSON type (CVE-2026-25537 class) / `aud` = [] | 401 `token.claim_type` / `token.audience` | `cve_2026_25537_claims_of_the_wrong_json_type_are_refused` |
//! | `exp`/`iat`/`nbf` at i64::MAX, i64::MIN, ±1e308, u64::MAX, negative | 401 `token.lifetime`, `.expired`, `.issued_in_future`, `.not_yet_valid`, `.claim_type` | `rfc7519_extreme_numeric_dates_get_specific_reasons_without_overflow` |
//! | duplicate members in header / claims, `tctx`, `act` (RFC 7515 §4, RFC 7519 §4) | 401 `token.header` / `token.claims` | `rfc7515_4_duplicate_members_in_header_and_claims_are_refused` |
//! | duplicate `method`, `params.name`, arguments, `id`, `params` in the MCP body | 400 `mcp.duplicate_key` (-32700) | `rfc8259_4_duplicate_members_in_mcp_bodies_are_refused` |
//! | padding, trailing bits, `+` `/`, whitespace, NUL, bad length (RFC 7515 §2, RFC 4648 §3.5) | 401 `token.base64` | `rfc7515_2_non_canonical_base64url_is_refused` |
//! | BOM before the header / claims JSON (RFC 8259 §8.1) | 401 `token.header` / `token.claims` | `rfc8259_8_1_bom_before_the_json_is_refused` |
//! | 1 MB tokens, one million dots (size cap before decoding) | 401 `token.too_large`, nothing decoded, < 5 ms | `rfc8725_checklist_oversized_tokens_are_refused_before_any_decoding` |
//! | 10 000 nested `[`/`{` in header, claims, MCP body, policy, JWKS (RFC 8259 §9) | `token.header`, `token.claims`, 400 `mcp.depth`, JSON `TooDeep` | `rfc8259_9_deep_nesting_is_refused_without_stack_overflow` |
//! | tool names differing by case: same rule, same bucket (11th call is 429) | 429 `ratelimit.exceeded`, 403 `tool.denied` | `mcp_tool_names_differing_by_case_share_rule_and_bucket` |
//! | confusables (Cyrillic е), spaces, NUL, zero-width, full-width tool names | 400 `mcp.tool_name` (-32602) | `mcp_confusable_tool_names_are_refused_never_allowed` |
//! | routing-header smuggling: `Mcp-Name` in another spelling, base64 variants (URL-safe, whitespace, lower-case markers, trailing NUL), joined or repeated headers (MCP 2026-07-28 Server Validation) | 400 `mcp.header_mismatch` / `mcp.header_invalid` / `mcp.header_repeated` (-32020, the request's id) | `mcp_2026_routing_header_smuggling_is_refused` |
//! | token, payload or signature segment in audit, body or headers | never | `decide_with` (every decision here), `transaction_tokens_the_token_is_never_logged` |
//! | quadratic JSON pointer bookkeeping on a 64 KiB pre-auth body (fixed in `json.rs`) | linear | `regression_json_pointer_bookkeeping_is_linear` |
//! | `POST /MCP`, `/mcp;x`, `//mcp`, `/%6dcp` skipping tool rules (fixed in `mcp.rs`/`gate.rs`) | 403 `tool.denied` | `regression_spellings_of_the_mcp_path_get_tool_authorization` |
//!
//! Every unmodified token is shown to pass first (`baseline_valid_tokens_are_allowed`), so each refusal is
//! caused by its one mutation. Tokens are signed with the same fixed keys as `tests/gate.rs` (jwt-compact and
//! ed25519-compact); the RSA key is Wycheproof's RS256 test key (public only: RSA tokens here are refused
//! before their signature is checked).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use jwt_compact::{Algorithm as _, AlgorithmSignature as _};
use serde_json::{json, Value};
use txngate_core::encoding::encode_b64url;
use txngate_core::keys::{parse_jwk, KeyError};
use txngate_core::ratelimit::MemoryStore;
use txngate_core::token::{TokenError, UntrustedToken};
use txngate_core::{Algorithm, Body, Gate, Outcome, Policy, PolicyError, Request};

const NOW: u64 = 1_800_000_000;
const TD: &str = "trust.example";

// ---------------------------------------------------------------------------------------------------------
// Fixtures: one issuer with an Ed25519, a P-256 and an RSA-2048 key; a `*` rule that allows any other tool,
// so a spelling that escaped its own rule would show up as an allow.
// ---------------------------------------------------------------------------------------------------------

fn ed_pair() -> ed25519_compact::KeyPair {
    ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7u8; 32]))
}

fn p256_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap()
}

fn wycheproof_group(file: &str) -> Value {
    let path = format!(
        "{}/tests/vectors/wycheproof/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["testGroups"][0].clone()
}

/// The RSA-2048 public key of Wycheproof's RS256 vectors (no private key needed: RSA tokens here are refused
/// before their signature is checked).
fn rsa_group() -> Value {
    wycheproof_group("rsa_signature_2048_sha256_test.json")
}

fn ed_jwk() -> Value {
    json!({"kty":"OKP","crv":"Ed25519","x": encode_b64url(ed_pair().pk.as_ref()),"kid":"ed"})
}

fn ec_point() -> (Vec<u8>, Vec<u8>) {
    let point = p256_key().verifying_key().to_encoded_point(false);
    (point.x().unwrap().to_vec(), point.y().unwrap().to_vec())
}

fn ec_jwk() -> Value {
    let (x, y) = ec_point();
    json!({"kty":"EC","crv":"P-256","x": encode_b64url(&x),"y": encode_b64url(&y),"kid":"ec"})
}

fn rsa_jwk() -> Value {
    let k = rsa_group()["keyJwk"].clone();
    json!({"kty":"RSA","n": k["n"],"e": k["e"],"kid":"rsa","alg":"RS256"})
}

fn policy() -> Value {
    json!({
        "trust_domain": TD,
        "issuers": [{"name": "tts", "jwks": {"keys": [ed_jwk(), ec_jwk(), rsa_jwk()]},
                     "algorithms": ["EdDSA", "ES256", "RS256", "PS256"]}],
        "agents": {
            "spiffe://trust.example/gw": {"max_scopes": ["*"]},
            "spiffe://trust.example/orchestrator": {"max_scopes": ["calendar:*", "email:*"]},
            "spiffe://trust.example/agent/*": {"max_scopes": ["calendar:read", "email:send"]}
        },
        "delegation": {"max_depth": 2},
        "tools": {
            "send_email": {"scopes": ["email:send"], "constraints": [{"argument": "/to", "claim": "/tctx/recipient"}],
                           "rate_limit": {"key": "agent", "limit": 10, "period_seconds": 60}},
            "calendar_read": {"scopes": ["calendar:read"]},
            "delete_repo": {"effect": "deny"},
            "*": {}
        }
    })
}

fn gate_with(p: &Value) -> Gate {
    Gate::from_json(&serde_json::to_vec(p).unwrap()).unwrap()
}

fn gate() -> Gate {
    gate_with(&policy())
}

fn claims() -> Value {
    json!({
        "iat": NOW, "exp": NOW + 60, "aud": TD, "txn": "txn-1", "sub": "user:alice",
        "scope": "email:send calendar:read calendar:write", "req_wl": "spiffe://trust.example/gw",
        "tctx": {"recipient": ["bob@example.com", "carol@example.com"]},
        "act": {"sub": "spiffe://trust.example/agent/mailer", "act": {"sub": "spiffe://trust.example/orchestrator"}}
    })
}

/// `claims()` with members replaced (`null` removes one).
fn claims_with(patch: Value) -> Value {
    let mut v = claims();
    for (k, val) in patch.as_object().unwrap() {
        if val.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = val.clone();
        }
    }
    v
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn header(alg: &str, kid: &str) -> Vec<u8> {
    bytes(&json!({"alg": alg, "typ": "txntoken+jwt", "kid": kid}))
}

fn signing_input(header: &[u8], payload: &[u8]) -> String {
    format!("{}.{}", encode_b64url(header), encode_b64url(payload))
}

fn ed_sign(input: &str) -> Vec<u8> {
    ed_pair().sk.sign(input.as_bytes(), None).to_vec()
}

fn ec_sign(input: &str) -> Vec<u8> {
    jwt_compact::alg::Es256
        .sign(&p256_key(), input.as_bytes())
        .as_bytes()
        .into_owned()
}

/// A compact JWS of exactly these header and payload bytes, with this signature.
fn with_signature(header: &[u8], payload: &[u8], signature: &[u8]) -> String {
    format!(
        "{}.{}",
        signing_input(header, payload),
        encode_b64url(signature)
    )
}

/// Signed with the Ed25519 key ("ed").
fn ed_token(header: &[u8], payload: &[u8]) -> String {
    let input = signing_input(header, payload);
    format!("{input}.{}", encode_b64url(&ed_sign(&input)))
}

/// Signed with the P-256 key ("ec").
fn ec_token(header: &[u8], payload: &[u8]) -> String {
    let input = signing_input(header, payload);
    format!("{input}.{}", encode_b64url(&ec_sign(&input)))
}

/// A valid token: EdDSA, kid "ed", `claims()`.
fn good() -> String {
    ed_token(&header("EdDSA", "ed"), &bytes(&claims()))
}

fn good_claims(claims: &Value) -> String {
    ed_token(&header("EdDSA", "ed"), &bytes(claims))
}

fn call(tool: &str, args: Value) -> Vec<u8> {
    bytes(
        &json!({"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":tool,"arguments":args}}),
    )
}

fn send_email() -> Vec<u8> {
    call("send_email", json!({"to":"bob@example.com","subject":"hi"}))
}

fn token_headers(token: &str) -> Vec<(String, String)> {
    vec![("Txn-Token".to_string(), token.to_string())]
}

/// Asserts that neither the token nor its payload or signature segment is in the audit line, the response
/// body or any response or upstream header. (Segments shorter than 16 characters could occur by chance.)
fn assert_not_logged(token: &str, o: &Outcome) {
    let token = token.trim_matches([' ', '\t']);
    let mut needles = vec![token];
    needles.extend(token.split('.').skip(1));
    let audit = o.audit.to_json();
    let body = o.decision.body().unwrap_or("");
    for needle in needles.into_iter().filter(|n| n.len() >= 16) {
        let shown = &needle[..needle.len().min(40)];
        assert!(!audit.contains(needle), "audit line contains {shown}…");
        assert!(!body.contains(needle), "response body contains {shown}…");
        for (name, value) in o
            .decision
            .response_headers()
            .iter()
            .chain(o.decision.upstream_headers())
        {
            assert!(!value.contains(needle), "header {name} contains {shown}…");
        }
    }
}

/// Every decision of this file: POST /mcp with these headers and body, then the never-logged check for each
/// token header sent.
fn decide_with(
    gate: &mut Gate,
    headers: &[(String, String)],
    body: &[u8],
    store: &mut MemoryStore,
    now_ms: u64,
) -> Outcome {
    let request = Request {
        method: "POST",
        path: "/mcp",
        headers,
        body: Body::Complete(body),
        peer: None,
    };
    let o = gate.decide(&request, now_ms, txngate_core::Verification::Core, store);
    for (_, token) in headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("txn-token"))
    {
        assert_not_logged(token, &o);
    }
    o
}

fn decide(gate: &mut Gate, token: &str, body: &[u8]) -> Outcome {
    decide_with(
        gate,
        &token_headers(token),
        body,
        &mut MemoryStore::new(),
        NOW * 1000,
    )
}

fn verdict(gate: &mut Gate, token: &str, body: &[u8]) -> (u16, &'static str) {
    let o = decide(gate, token, body);
    (o.decision.status(), o.decision.reason())
}

/// Asserts `(status, reason)` for each token, naming the case on failure.
fn expect_all(gate: &mut Gate, cases: &[(&str, String)], expected: (u16, &str)) {
    for (name, token) in cases {
        assert_eq!(
            verdict(gate, token, &send_email()),
            expected,
            "case {name}: {}",
            &token[..token.len().min(120)]
        );
    }
}

fn policy_error(p: &Value) -> PolicyError {
    Policy::from_json(&bytes(p)).unwrap_err()
}

// ---------------------------------------------------------------------------------------------------------
// Baseline: the unmodified tokens pass, so every refusal below is caused by its one mutation.
// ---------------------------------------------------------------------------------------------------------

#[test]
fn baseline_valid_tokens_are_allowed() {
    let mut gate = gate();
    assert_eq!(verdict(&mut gate, &good(), &send_email()), (200, "allow"));
    let ec = ec_token(&header("ES256", "ec"), &bytes(&claims()));
    assert_eq!(verdict(&mut gate, &ec, &send_email()), (200, "allow"));
    // `typ` is a media type: case-insensitive, optional "application/" prefix (RFC 7515 §4.1.9).
    for typ in ["TxnToken+JWT", "application/txntoken+jwt"] {
        let h = bytes(&json!({"alg":"EdDSA","typ":typ,"kid":"ed"}));
        assert_eq!(
            verdict(&mut gate, &ed_token(&h, &bytes(&claims())), &send_email()),
            (200, "allow"),
            "{typ}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// alg "none"
// ---------------------------------------------------------------------------------------------------------

/// RFC 7518 §3.6 / RFC 8725 §3.1: unsecured JWS is never accepted, whatever the case of "none", whether or not
/// a signature segment is attached; an empty signature segment is refused the same way for any `alg`.
#[test]
fn rfc7518_3_6_alg_none_in_any_case_is_refused() {
    let mut gate = gate();
    let payload = bytes(&claims());
    let mut cases = Vec::new();
    for alg in ["none", "None", "NONE", "nOnE"] {
        for kid in [None, Some("ed")] {
            let h = match kid {
                Some(kid) => bytes(&json!({"alg": alg, "typ": "txntoken+jwt", "kid": kid})),
                None => bytes(&json!({"alg": alg, "typ": "txntoken+jwt"})),
            };
            cases.push((alg, format!("{}.", signing_input(&h, &payload))));
            cases.push((alg, ed_token(&h, &payload)));
            cases.push((alg, with_signature(&h, &payload, &[0u8; 64])));
        }
    }
    expect_all(&mut gate, &cases, (401, "token.alg_none"));
}

/// RFC 7515 §7.1 / RFC 8725 §3.1: a token whose signature segment is empty is unsigned, whatever `alg` says.
#[test]
fn rfc8725_3_1_empty_signature_segment_is_refused() {
    let mut gate = gate();
    let payload = bytes(&claims());
    let cases: Vec<(&str, String)> = [("EdDSA", "ed"), ("ES256", "ec"), ("RS256", "rsa")]
        .into_iter()
        .map(|(alg, kid)| {
            (
                alg,
                format!("{}.", signing_input(&header(alg, kid), &payload)),
            )
        })
        .collect();
    expect_all(&mut gate, &cases, (401, "token.alg_none"));
    let err = UntrustedToken::parse(&cases[0].1, 8192).unwrap_err();
    assert_eq!(err, TokenError::AlgNone);
}

// ---------------------------------------------------------------------------------------------------------
// HMAC / public-key confusion
// ---------------------------------------------------------------------------------------------------------

const P256_SPKI_PREFIX: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200";
const ED25519_SPKI_PREFIX: &str = "302a300506032b6570032100";

fn spki(prefix_hex: &str, key: &[u8]) -> Vec<u8> {
    let mut der = hex::decode(prefix_hex).unwrap();
    der.extend_from_slice(key);
    der
}

fn pem(der: &[u8]) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str("-----END PUBLIC KEY-----\n");
    out
}

fn hmac_tag(alg: &str, key: &[u8], input: &str) -> Vec<u8> {
    match alg {
        "HS256" => {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
            mac.update(input.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        "HS384" => {
            let mut mac = Hmac::<sha2::Sha384>::new_from_slice(key).unwrap();
            mac.update(input.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        _ => {
            let mut mac = Hmac::<sha2::Sha512>::new_from_slice(key).unwrap();
            mac.update(input.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
    }
}

/// Every encoding of the configured public keys an attacker could use as an HMAC secret, by kid.
fn public_key_encodings() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let loaded = |jwk: &Value| {
        serde_json::to_vec(parse_jwk(0, jwk, &Algorithm::ALL).unwrap().jwk()).unwrap()
    };

    let (x, y) = ec_point();
    let mut sec1 = vec![0x04];
    sec1.extend_from_slice(&x);
    sec1.extend_from_slice(&y);
    let der = spki(P256_SPKI_PREFIX, &sec1);
    out.push(("ec", "P-256 PEM".to_string(), pem(&der).into_bytes()));
    out.push((
        "ec",
        "P-256 PEM without newline".to_string(),
        pem(&der).trim_end().as_bytes().to_vec(),
    ));
    out.push(("ec", "P-256 SPKI DER".to_string(), der));
    out.push(("ec", "P-256 SEC1 point".to_string(), sec1));
    out.push((
        "ec",
        "P-256 JWK as configured".to_string(),
        bytes(&ec_jwk()),
    ));
    out.push(("ec", "P-256 JWK as loaded".to_string(), loaded(&ec_jwk())));

    let ed = ed_pair().pk.as_ref().to_vec();
    let der = spki(ED25519_SPKI_PREFIX, &ed);
    out.push(("ed", "Ed25519 PEM".to_string(), pem(&der).into_bytes()));
    out.push(("ed", "Ed25519 SPKI DER".to_string(), der));
    out.push(("ed", "Ed25519 raw".to_string(), ed));
    out.push(("ed", "Ed25519 JWK".to_string(), bytes(&ed_jwk())));

    let group = rsa_group();
    out.push((
        "rsa",
        "RSA PEM".to_string(),
        group["publicKeyPem"].as_str().unwrap().as_bytes().to_vec(),
    ));
    out.push((
        "rsa",
        "RSA SPKI DER".to_string(),
        hex::decode(group["publicKeyDer"].as_str().unwrap()).unwrap(),
    ));
    out.push(("rsa", "RSA JWK".to_string(), bytes(&rsa_jwk())));
    out.push(("rsa", "RSA JWK as loaded".to_string(), loaded(&rsa_jwk())));
    out
}

/// The hand-built SPKI encodings above are the real ones (checked against Wycheproof's DER and PEM).
#[test]
fn spki_encodings_used_as_hmac_keys_are_the_real_ones() {
    let g = wycheproof_group("ecdsa_secp256r1_sha256_p1363_test.json");
    let point = hex::decode(g["publicKey"]["uncompressed"].as_str().unwrap()).unwrap();
    let der = spki(P256_SPKI_PREFIX, &point);
    assert_eq!(hex::encode(&der), g["publicKeyDer"].as_str().unwrap());
    assert_eq!(pem(&der), g["publicKeyPem"].as_str().unwrap());
    let g = wycheproof_group("ed25519_test.json");
    let pk = hex::decode(g["publicKey"]["pk"].as_str().unwrap()).unwrap();
    let der = spki(ED25519_SPKI_PREFIX, &pk);
    assert_eq!(hex::encode(&der), g["publicKeyDer"].as_str().unwrap());
    assert_eq!(pem(&der), g["publicKeyPem"].as_str().unwrap());
}

/// CVE-2015-9235 (and RFC 8725 §2.1, §3.1): a verifier that lets the token pick the algorithm would check an
/// HS256 token with the "key" it has, the public key, as the HMAC secret, which every attacker knows. txngate
/// does not implement HMAC at all: every such token is refused by name (`token.alg`) before any key is
/// looked up, and no configured key verifies a MAC even if it were asked to.
#[test]
fn cve_2015_9235_hmac_keyed_with_the_public_key_is_refused() {
    let mut gate = gate();
    let payload = bytes(&claims());
    let mut cases = Vec::new();
    for (kid, what, secret) in public_key_encodings() {
        for alg in ["HS256", "HS384", "HS512"] {
            let h = header(alg, kid);
            let input = signing_input(&h, &payload);
            let tag = hmac_tag(alg, &secret, &input);
            cases.push((alg, with_signature(&h, &payload, &tag)));
            // Unit level: the key the kid names never takes the MAC for a signature.
            let key = parse_jwk(
                0,
                &match kid {
                    "ec" => ec_jwk(),
                    "ed" => ed_jwk(),
                    _ => rsa_jwk(),
                },
                &Algorithm::ALL,
            )
            .unwrap();
            assert!(
                !key.verify(input.as_bytes(), &tag),
                "{what} as {alg} secret"
            );
        }
    }
    assert!(cases.len() >= 40);
    expect_all(&mut gate, &cases, (401, "token.alg"));
}

// ---------------------------------------------------------------------------------------------------------
// alg / key-type mismatch
// ---------------------------------------------------------------------------------------------------------

/// RFC 8725 §3.1 ("use each key with exactly one algorithm"): the kid selects the key, the key's bound
/// algorithm is the only one checked; a token naming another is refused before its signature is looked at,
/// even when the issuer allows that other algorithm (PS256 here) and the signature is valid for the key.
#[test]
fn rfc8725_3_1_alg_must_match_the_keys_one_algorithm() {
    let mut gate = gate();
    let payload = bytes(&claims());
    let cases = vec![
        (
            "ES256 on Ed25519 key",
            ed_token(&header("ES256", "ed"), &payload),
        ),
        (
            "EdDSA on P-256 key",
            ec_token(&header("EdDSA", "ec"), &payload),
        ),
        (
            "ES256 signed by ec, kid ed",
            ec_token(&header("ES256", "ed"), &payload),
        ),
        (
            "EdDSA signed by ed, kid ec",
            ed_token(&header("EdDSA", "ec"), &payload),
        ),
        (
            "RS256 on P-256 key",
            ec_token(&header("RS256", "ec"), &payload),
        ),
        (
            "PS256 on RS256 key",
            with_signature(&header("PS256", "rsa"), &payload, &[1u8; 256]),
        ),
        (
            "ES256 on RSA key",
            ec_token(&header("ES256", "rsa"), &payload),
        ),
        (
            "EdDSA on RSA key",
            ed_token(&header("EdDSA", "rsa"), &payload),
        ),
        // RFC 9864: Ed25519 is the same signature as EdDSA, but a key is bound to one name.
        (
            "Ed25519 on a key bound to EdDSA",
            ed_token(&header("Ed25519", "ed"), &payload),
        ),
        (
            "ES384 on P-256 key",
            ec_token(&header("ES384", "ec"), &payload),
        ),
    ];
    expect_all(&mut gate, &cases, (401, "token.alg_mismatch"));

    // `alg` values are case-sensitive (RFC 7515 §4.1.1); unknown and near-miss names are refused by name.
    let cases: Vec<(&str, String)> = [
        "es256",
        "Es256",
        "eddsa",
        "EDDSA",
        "ed25519",
        "ED25519",
        "Ed448",
        "ES256K",
        "es384",
        "ES512",
        "RS384",
        "PS512",
        "ES256 ",
        " ES256",
        "ES256\u{0}",
        "ＥＳ256",
        "dir",
        "RSA-OAEP",
    ]
    .into_iter()
    .map(|alg| (alg, ec_token(&header(alg, "ec"), &payload)))
    .collect();
    expect_all(&mut gate, &cases, (401, "token.alg"));

    let cases: Vec<(&str, String)> = [
        ("missing", json!({"typ":"txntoken+jwt","kid":"ec"})),
        ("null", json!({"alg":null,"typ":"txntoken+jwt","kid":"ec"})),
        ("number", json!({"alg":256,"typ":"txntoken+jwt","kid":"ec"})),
        (
            "array",
            json!({"alg":["ES256"],"typ":"txntoken+jwt","kid":"ec"}),
        ),
        (
            "object",
            json!({"alg":{"name":"ES256"},"typ":"txntoken+jwt","kid":"ec"}),
        ),
    ]
    .into_iter()
    .map(|(name, h)| (name, ec_token(&bytes(&h), &payload)))
    .collect();
    expect_all(&mut gate, &cases, (401, "token.header"));
}

// ---------------------------------------------------------------------------------------------------------
// ECDSA
// ---------------------------------------------------------------------------------------------------------

/// The P-256 group order n, big-endian.
const P256_N: &str = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";

fn be32(hex_text: &str) -> [u8; 32] {
    hex::decode(hex_text).unwrap().try_into().unwrap()
}

fn be_from_u8(v: u8) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[31] = v;
    out
}

/// a / 2 for a 256-bit big-endian number.
fn be_shr1(a: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u8;
    for i in 0..32 {
        out[i] = (a[i] >> 1) | carry;
        carry = (a[i] & 1) << 7;
    }
    out
}

/// a - b for 256-bit big-endian numbers, a >= b.
fn be_sub(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = i16::from(a[i]) - i16::from(b[i]) - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        out[i] = d as u8;
    }
    assert_eq!(borrow, 0);
    out
}

fn der_integer(x: &[u8]) -> Vec<u8> {
    let first = x.iter().position(|b| *b != 0).unwrap_or(x.len() - 1);
    let mut v = x[first..].to_vec();
    if v[0] & 0x80 != 0 {
        v.insert(0, 0);
    }
    let mut out = vec![0x02, v.len() as u8];
    out.extend(v);
    out
}

/// ASN.1 DER `SEQUENCE { r INTEGER, s INTEGER }`, as X.509 and most ECDSA libraries emit it.
fn der_signature(raw: &[u8]) -> Vec<u8> {
    let mut body = der_integer(&raw[..32]);
    body.extend(der_integer(&raw[32..]));
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

/// RFC 7518 §3.4: an ES256 signature is the 64-byte concatenation r ‖ s. The ASN.1 DER form (70-72 bytes)
/// that a generic ECDSA library produces is not a JWS signature and never verifies, also not after being
/// padded or cut to 64 bytes.
#[test]
fn rfc7518_3_4_der_encoded_ecdsa_signature_is_refused() {
    let mut gate = gate();
    let h = header("ES256", "ec");
    let payload = bytes(&claims());
    let input = signing_input(&h, &payload);
    let raw = ec_sign(&input);
    let der = der_signature(&raw);
    assert!((68..=72).contains(&der.len()), "{}", der.len());
    let mut cut = der.clone();
    cut.truncate(64);
    let cases = vec![
        ("DER", with_signature(&h, &payload, &der)),
        ("DER cut to 64 bytes", with_signature(&h, &payload, &cut)),
        (
            "DER zero-padded to 128 bytes",
            with_signature(
                &h,
                &payload,
                &[der.clone(), vec![0; 128 - der.len()]].concat(),
            ),
        ),
    ];
    expect_all(&mut gate, &cases, (401, "token.signature"));
    assert_eq!(
        verdict(
            &mut gate,
            &with_signature(&h, &payload, &raw),
            &send_email()
        ),
        (200, "allow")
    );
}

/// CVE-2022-21449 ("psychic signatures", Java 15-18): ECDSA verification that does not check 0 < r, s < n
/// accepts r = s = 0 for every message and key. Every r, s in {0, 1, n-1, n, 2^256-1} is refused here:
/// out-of-range values at signature decoding, in-range ones by the verification equation.
#[test]
fn cve_2022_21449_psychic_and_out_of_range_ecdsa_signatures_are_refused() {
    let mut gate = gate();
    let h = header("ES256", "ec");
    let payload = bytes(&claims());
    let n = be32(P256_N);
    let values = [
        ("0", [0u8; 32]),
        ("1", be_from_u8(1)),
        ("n-1", be_sub(&n, &be_from_u8(1))),
        ("n", n),
        ("2^256-1", [0xffu8; 32]),
    ];
    let mut cases = Vec::new();
    for (rn, r) in &values {
        for (sn, s) in &values {
            let sig = [r.as_slice(), s.as_slice()].concat();
            cases.push((
                format!("r = {rn}, s = {sn}"),
                with_signature(&h, &payload, &sig),
            ));
        }
    }
    assert_eq!(cases.len(), 25);
    let cases: Vec<(&str, String)> = cases.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    expect_all(&mut gate, &cases, (401, "token.signature"));
    // r = s = 0 at the unit level too, on the exact signing input.
    let key = parse_jwk(0, &ec_jwk(), &Algorithm::ALL).unwrap();
    assert!(!key.verify(signing_input(&h, &payload).as_bytes(), &[0u8; 64]));
}

/// High-S ECDSA signatures: VERDICT: ACCEPTED (`allow`).
///
/// For a valid signature (r, s), (r, n - s) is valid too (ECDSA malleability). RFC 7518 §3.4 defines ES256 as
/// plain ECDSA P-256 with SHA-256 and does not require low-S (that is a Bitcoin/secp256k1 convention,
/// BIP 62/146); Wycheproof marks high-S P-256 signatures `valid`, and our Wycheproof test requires every valid
/// case to verify. The Worker host verifies ES256 with WebCrypto, which accepts high-S as well: refusing them
/// in the core would make hosts disagree on the same token. Malleability gives nothing here: the mauled token
/// carries exactly the same claims and only someone already holding the valid token can produce it; txngate
/// never uses the token's bytes as a replay or uniqueness key (the cache is keyed by the token hash, so a
/// mauled copy is simply verified once more; rate limits count per agent/sub/tool, not per token).
#[test]
fn ecdsa_high_s_signatures_are_accepted_like_every_host() {
    let mut gate = gate();
    let h = header("ES256", "ec");
    let payload = bytes(&claims());
    let input = signing_input(&h, &payload);
    let sig = ec_sign(&input);
    let n = be32(P256_N);
    let s: [u8; 32] = sig[32..].try_into().unwrap();
    let flipped = be_sub(&n, &s);
    let half = be_shr1(&n);
    let (low, high) = if flipped > s {
        (s, flipped)
    } else {
        (flipped, s)
    };
    assert!(low <= half && high > half, "one of s and n - s is high");
    for s in [low, high] {
        let token = with_signature(&h, &payload, &[&sig[..32], &s[..]].concat());
        assert_eq!(verdict(&mut gate, &token, &send_email()), (200, "allow"));
    }
}

// ---------------------------------------------------------------------------------------------------------
// Ed25519
// ---------------------------------------------------------------------------------------------------------

/// The eight points of small order on edwards25519 (orders 1, 2, 4, 4, 8, 8, 8, 8), canonically encoded,
/// then the non-canonical encodings y = p, p + 1 of two of them.
const SMALL_ORDER: [&str; 10] = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
];

/// RFC 8032 §5.1.7, "Taming the many EdDSAs" (Chalkias et al.) and the reference digest ("no small-order
/// Ed25519 keys"): a small-order public key verifies forged signatures for many messages. Every one is refused
/// when the policy loads, with the JSON pointer of the key (here the second key of the first issuer): the
/// eight canonical encodings as `SmallOrder`, the non-canonical ones (y >= p, and x = 0 with the sign bit set)
/// as `InvalidPoint` (RFC 8032 §5.1.3 decoding fails).
#[test]
fn rfc8032_small_order_ed25519_keys_are_refused_at_load() {
    let mut encodings: Vec<String> = SMALL_ORDER.iter().map(|s| (*s).to_string()).collect();
    // The sign bit set on the x = 0 points (y = 1, y = -1) and on the non-canonical ones.
    for s in [
        SMALL_ORDER[0],
        SMALL_ORDER[1],
        SMALL_ORDER[8],
        SMALL_ORDER[9],
    ] {
        let mut b = hex::decode(s).unwrap();
        b[31] |= 0x80;
        encodings.push(hex::encode(b));
    }
    for (i, enc) in encodings.iter().enumerate() {
        let weak = json!({"kty":"OKP","crv":"Ed25519","x": encode_b64url(&hex::decode(enc).unwrap()),"kid":"weak"});
        let mut p = policy();
        p["issuers"][0]["jwks"]["keys"] = json!([ed_jwk(), weak]);
        let e = policy_error(&p);
        assert_eq!(e.path(), "/issuers/0/jwks/keys/1", "{enc}: {e}");
        let PolicyError::Key { source, .. } = e else {
            panic!("{enc}: {e:?}")
        };
        if i < 8 {
            assert_eq!(source, KeyError::SmallOrder { index: 1 }, "{enc}");
        } else {
            assert_eq!(source, KeyError::InvalidPoint { index: 1 }, "{enc}");
        }
        // The same key in a fetched JWKS is refused too (weak keys are never skipped silently).
        let set = bytes(&json!({"keys": [ed_jwk(), weak]}));
        assert!(txngate_core::keys::KeySet::parse(
            &set,
            &Algorithm::ALL,
            txngate_core::keys::Strictness::Fetched
        )
        .is_err());
    }
}

/// The Ed25519 group order L, little-endian.
const ED25519_L: &str = "edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010";

fn le_add(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(a[i]) + u16::from(b[i]) + carry;
        out[i] = (sum & 0xff) as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    out
}

/// RFC 8032 §5.1.7: S must be < L (else signatures are malleable: S + L verifies the same equation) and R must
/// not be a small-order point. Both are refused: `token.signature`.
#[test]
fn rfc8032_ed25519_small_order_r_and_non_canonical_s_are_refused() {
    let mut gate = gate();
    let h = header("EdDSA", "ed");
    let payload = bytes(&claims());
    let input = signing_input(&h, &payload);
    let sig = ed_sign(&input);
    assert_eq!(
        verdict(
            &mut gate,
            &with_signature(&h, &payload, &sig),
            &send_email()
        ),
        (200, "allow")
    );
    let l = hex::decode(ED25519_L).unwrap();
    let mut cases = Vec::new();
    // S + L: the same S modulo L, non-canonical.
    cases.push((
        "S + L".to_string(),
        with_signature(
            &h,
            &payload,
            &[&sig[..32], &le_add(&sig[32..], &l)[..]].concat(),
        ),
    ));
    // S = L exactly, and S with its top bits set.
    cases.push((
        "S = L".to_string(),
        with_signature(&h, &payload, &[&sig[..32], &l[..]].concat()),
    ));
    let mut high = sig.clone();
    high[63] |= 0xe0;
    cases.push((
        "S | 0xe0..".to_string(),
        with_signature(&h, &payload, &high),
    ));
    // Small-order R with S = 0 (the forgery for a small-order key) and with the valid S.
    for r in SMALL_ORDER {
        let r = hex::decode(r).unwrap();
        cases.push((
            format!("R = {} S = 0", hex::encode(&r[..4])),
            with_signature(&h, &payload, &[&r[..], &[0u8; 32]].concat()),
        ));
        cases.push((
            format!("R = {} S valid", hex::encode(&r[..4])),
            with_signature(&h, &payload, &[&r[..], &sig[32..]].concat()),
        ));
    }
    let cases: Vec<(&str, String)> = cases.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    expect_all(&mut gate, &cases, (401, "token.signature"));
}

// ---------------------------------------------------------------------------------------------------------
// RSA keys at load
// ---------------------------------------------------------------------------------------------------------

/// RFC 7518 §3.3 ("a key of size 2048 bits or larger MUST be used") and RFC 8725 §3.2: weak moduli and
/// degenerate exponents are refused when the policy loads, with the JSON pointer of the key (the third one).
#[test]
fn rfc7518_3_3_weak_rsa_keys_are_refused_at_load_with_their_path() {
    let n = rsa_jwk()["n"].as_str().unwrap().to_string();
    let mut n2047 = vec![0xffu8; 256];
    n2047[0] = 0x7f;
    let cases = [
        (
            "1024-bit modulus",
            json!({"kty":"RSA","n": encode_b64url(&[0xffu8; 128]),"e":"AQAB","alg":"RS256","kid":"weak"}),
            KeyError::WeakRsa {
                index: 2,
                bits: 1024,
            },
        ),
        (
            "2047-bit modulus",
            json!({"kty":"RSA","n": encode_b64url(&n2047),"e":"AQAB","alg":"RS256","kid":"weak"}),
            KeyError::WeakRsa {
                index: 2,
                bits: 2047,
            },
        ),
        (
            "e = 1",
            json!({"kty":"RSA","n": n,"e":"AQ","alg":"RS256","kid":"weak"}),
            KeyError::BadRsaExponent { index: 2 },
        ),
        (
            "e = 1 with leading zeros",
            json!({"kty":"RSA","n": n,"e":"AAAB","alg":"RS256","kid":"weak"}),
            KeyError::BadRsaExponent { index: 2 },
        ),
        (
            "e = 2",
            json!({"kty":"RSA","n": n,"e":"Ag","alg":"RS256","kid":"weak"}),
            KeyError::BadRsaExponent { index: 2 },
        ),
        (
            "e = 0",
            json!({"kty":"RSA","n": n,"e":"AA","alg":"RS256","kid":"weak"}),
            KeyError::BadRsaExponent { index: 2 },
        ),
    ];
    for (name, weak, expected) in cases {
        let mut p = policy();
        p["issuers"][0]["jwks"]["keys"] = json!([ed_jwk(), ec_jwk(), weak]);
        let e = policy_error(&p);
        assert_eq!(e.path(), "/issuers/0/jwks/keys/2", "{name}: {e}");
        match e {
            PolicyError::Key { source, .. } => assert_eq!(source, expected, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// kid
// ---------------------------------------------------------------------------------------------------------

/// RFC 7515 §4.1.4 / RFC 8725 §3.10: `kid` is an untrusted string that only selects among configured keys, by
/// exact match: no path, query, pattern or normalisation ever applies (the OWASP/PortSwigger `kid` attacks
/// assume a file read, an SQL or LDAP query behind it). Each of these is signed by the real "ed" key, so the
/// only fault is the kid.
#[test]
fn rfc7515_4_1_4_kid_injection_strings_only_ever_miss() {
    let mut gate = gate();
    let payload = bytes(&claims());
    let kids = [
        "../../etc/passwd",
        "../../../../../../dev/null",
        "..\\..\\windows\\win.ini",
        "/etc/passwd",
        "file:///etc/passwd",
        "https://evil.example/jwks.json",
        "' OR '1'='1",
        "ed' --",
        "ed\" OR \"1\"=\"1",
        "x' UNION SELECT 'AAAA' --",
        "*)(uid=*))(|(uid=*",
        "*",
        "e*",
        "ed*",
        ".*",
        "ed\u{0}",
        "\u{0}",
        "ed\u{0}evil",
        "ED",
        "Ed",
        "ed ",
        " ed",
        "ed\n",
        "\u{0435}d",
        "ｅｄ",
        "",
    ];
    let cases: Vec<(&str, String)> = kids
        .iter()
        .map(|kid| (*kid, ed_token(&header("EdDSA", kid), &payload)))
        .collect();
    expect_all(&mut gate, &cases, (401, "token.kid_unknown"));
    // A kid that is not a string never reaches the lookup.
    for kid in [json!(7), json!(null), json!(["ed"]), json!({"ed": true})] {
        let h = bytes(&json!({"alg":"EdDSA","typ":"txntoken+jwt","kid":kid}));
        assert_eq!(
            verdict(&mut gate, &ed_token(&h, &payload), &send_email()),
            (401, "token.header"),
            "{kid}"
        );
    }
}

/// RFC 7515 §4.1.4 and the size cap: a 64 KiB kid makes the token larger than `max_bytes` (8192 by default):
/// `token.too_large`. With `max_bytes` raised past it, the kid is looked up by exact comparison only
/// (`token.kid_unknown`, also for a kid that starts with a real kid), and the refusal does not echo it back in
/// full: body and audit line stay bounded.
#[test]
fn rfc7515_4_1_4_64_kib_kid_is_too_large_then_only_unknown() {
    let payload = bytes(&claims());
    let long = "k".repeat(64 * 1024);
    let prefixed = format!("ed{}", "k".repeat(64 * 1024));
    let mut gate = gate();
    for kid in [&long, &prefixed] {
        let token = ed_token(&header("EdDSA", kid), &payload);
        assert_eq!(
            verdict(&mut gate, &token, &send_email()),
            (401, "token.too_large")
        );
    }
    let mut p = policy();
    p["token"] = json!({"max_bytes": 1_000_000});
    let mut gate = gate_with(&p);
    for kid in [&long, &prefixed] {
        let token = ed_token(&header("EdDSA", kid), &payload);
        let o = decide(&mut gate, &token, &send_email());
        assert_eq!(
            (o.decision.status(), o.decision.reason()),
            (401, "token.kid_unknown")
        );
        assert!(o.decision.body().unwrap().len() < 2048);
        assert!(o.audit.to_json().len() < 4096);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Header members: embedded keys, crit, typ, JWE
// ---------------------------------------------------------------------------------------------------------

/// RFC 8725 §3.10 and CVE-2018-0114 (node-jose trusted an embedded `jwk`): keys never come from the token.
/// An embedded key is refused even when it is the configured key itself and the signature is valid.
#[test]
fn cve_2018_0114_embedded_keys_and_key_urls_are_refused() {
    let mut gate = gate();
    let payload = bytes(&claims());
    let members = [
        ("jwk", ed_jwk()),
        ("jwk", json!({"kty":"oct","k":"c2VjcmV0"})),
        ("jku", json!("https://evil.example/jwks.json")),
        ("x5u", json!("https://evil.example/cert.pem")),
        ("x5c", json!(["MIIBszCCAVmgAwIBAgIUAA=="])),
        ("jku", json!(null)),
    ];
    let cases: Vec<(&str, String)> = members
        .iter()
        .map(|(member, value)| {
            let mut h = json!({"alg":"EdDSA","typ":"txntoken+jwt","kid":"ed"});
            h[*member] = value.clone();
            (*member, ed_token(&bytes(&h), &payload))
        })
        .collect();
    expect_all(&mut gate, &cases, (401, "token.embedded_key"));
}

/// RFC 7515 §4.1.11: a recipient MUST reject a token listing a `crit` parameter it does not understand, and
/// `crit` must not be empty or name a registered parameter. txngate implements no extension: any `crit` is
/// refused.
#[test]
fn rfc7515_4_1_11_crit_is_refused() {
    let mut gate = gate();
    let payload = bytes(&claims());
    let crits = [
        json!(["exp"]),
        json!(["x-custom"]),
        json!(["b64"]),
        json!([]),
        json!("exp"),
        json!([7]),
        json!(null),
    ];
    let cases: Vec<(String, String)> = crits
        .iter()
        .map(|crit| {
            let h = json!({"alg":"EdDSA","typ":"txntoken+jwt","kid":"ed","crit":crit,"x-custom":1});
            (crit.to_string(), ed_token(&bytes(&h), &payload))
        })
        .collect();
    let cases: Vec<(&str, String)> = cases.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    expect_all(&mut gate, &cases, (401, "token.crit"));
}

/// RFC 8725 §3.11 (explicit typing) and the Transaction Tokens draft: `typ` MUST be `txntoken+jwt`; an access
/// token, ID token or plain JWT from the same issuer, signed with the same key, never passes.
#[test]
fn rfc8725_3_11_typ_must_be_txntoken() {
    let mut gate = gate();
    let payload = bytes(&claims());
    let typs = [
        None,
        Some(json!("JWT")),
        Some(json!("jwt")),
        Some(json!("at+jwt")),
        Some(json!("application/at+jwt")),
        Some(json!("application/jwt")),
        Some(json!("JOSE")),
        Some(json!("secevent+jwt")),
        Some(json!("txntoken")),
        Some(json!("txntoken+jwt ")),
        Some(json!(" txntoken+jwt")),
        Some(json!("txntoken+jwt\u{0}")),
        Some(json!("application/txntoken+jwt; q=1")),
        Some(json!("application/application/txntoken+jwt")),
        Some(json!("")),
        Some(json!(7)),
        Some(json!(null)),
        Some(json!(["txntoken+jwt"])),
    ];
    let cases: Vec<(String, String)> = typs
        .iter()
        .map(|typ| {
            let mut h = json!({"alg":"EdDSA","kid":"ed"});
            if let Some(typ) = typ {
                h["typ"] = typ.clone();
            }
            (format!("{typ:?}"), ed_token(&bytes(&h), &payload))
        })
        .collect();
    let cases: Vec<(&str, String)> = cases.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    expect_all(&mut gate, &cases, (401, "token.typ"));
}

/// RFC 7516 §9 (telling JWE from JWS), RFC 7519 §5.2 (`cty`) and the reference digest ("reject JWE and nested
/// JWTs"): only signed tokens; a JWE (five segments or an `enc` header) and a
/// nested JWT (`cty`) are refused.
#[test]
fn rfc7516_9_jwe_and_nested_tokens_are_refused() {
    let mut gate = gate();
    let payload = bytes(&claims());
    let h = bytes(&json!({"alg":"EdDSA","typ":"txntoken+jwt","kid":"ed","enc":"A256GCM"}));
    let jwe = format!("{}..{}.{}.{}", encode_b64url(&h), "AAAA", "AAAA", "AAAA");
    expect_all(
        &mut gate,
        &[
            ("enc header", ed_token(&h, &payload)),
            ("five segments", jwe),
        ],
        (401, "token.encrypted"),
    );
    let h = bytes(&json!({"alg":"EdDSA","typ":"txntoken+jwt","kid":"ed","cty":"JWT"}));
    assert_eq!(
        verdict(&mut gate, &ed_token(&h, &payload), &send_email()),
        (401, "token.nested")
    );
}

// ---------------------------------------------------------------------------------------------------------
// Claims
// ---------------------------------------------------------------------------------------------------------

/// CVE-2026-25537 class (claims of the wrong JSON type accepted or coerced) and RFC 7519 §4.1: each registered
/// and draft claim must have its JSON type; a string `exp` is not a NumericDate, a number is not an audience.
/// The tokens are validly signed, so the type check itself refuses them: `token.claim_type`.
#[test]
fn cve_2026_25537_claims_of_the_wrong_json_type_are_refused() {
    let mut gate = gate();
    let patches = [
        json!({"exp": (NOW + 60).to_string()}),
        json!({"exp": true}),
        json!({"exp": [NOW + 60]}),
        json!({"exp": {"$date": NOW + 60}}),
        json!({"iat": NOW.to_string()}),
        json!({"nbf": false}),
        json!({"nbf": "0"}),
        json!({"aud": 5}),
        json!({"aud": {"0": TD}}),
        json!({"aud": [TD, 5]}),
        json!({"aud": [[TD]]}),
        json!({"aud": true}),
        json!({"sub": 7}),
        json!({"sub": ["user:alice"]}),
        json!({"sub": ""}),
        json!({"txn": 1}),
        json!({"req_wl": ["spiffe://trust.example/gw"]}),
        json!({"scope": ["email:send"]}),
        json!({"scope": 1}),
        json!({"scope": {"email:send": true}}),
        json!({"iss": 1}),
        json!({"act": "spiffe://trust.example/agent/mailer"}),
        json!({"act": ["spiffe://trust.example/agent/mailer"]}),
        json!({"act": {"sub": 7}}),
        json!({"act": {"sub": "spiffe://trust.example/agent/mailer", "act": "x"}}),
        json!({"tctx": "flat"}),
        json!({"tctx": [1]}),
        json!({"rctx": 1}),
    ];
    let cases: Vec<(String, String)> = patches
        .iter()
        .map(|p| (p.to_string(), good_claims(&claims_with(p.clone()))))
        .collect();
    let cases: Vec<(&str, String)> = cases.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    expect_all(&mut gate, &cases, (401, "token.claim_type"));
    // An empty audience array names no trust domain: not a type error, an audience refusal.
    assert_eq!(
        verdict(
            &mut gate,
            &good_claims(&claims_with(json!({"aud": []}))),
            &send_email()
        ),
        (401, "token.audience")
    );
}

/// RFC 7519 §2 NumericDate at the extremes: every value gets a specific reason, computed in i128 without
/// overflow or saturation tricks (a wrapped `exp` would turn "expired" into "valid").
#[test]
fn rfc7519_extreme_numeric_dates_get_specific_reasons_without_overflow() {
    let mut gate = gate();
    let cases = [
        (json!({"exp": i64::MAX}), "token.lifetime"),
        (
            json!({"exp": i64::MAX, "iat": i64::MAX}),
            "token.issued_in_future",
        ),
        (json!({"exp": i64::MIN, "iat": i64::MIN}), "token.expired"),
        (json!({"exp": i64::MAX, "iat": i64::MIN}), "token.lifetime"),
        (json!({"exp": -1}), "token.lifetime"),
        (json!({"exp": -1, "iat": -61}), "token.expired"),
        (json!({"exp": 9.2e18}), "token.lifetime"),
        (json!({"exp": 1e308}), "token.claim_type"),
        (json!({"exp": -1e308}), "token.claim_type"),
        (json!({"exp": u64::MAX}), "token.claim_type"),
        (json!({"iat": 1e308}), "token.claim_type"),
        (json!({"nbf": i64::MAX}), "token.not_yet_valid"),
        (json!({"nbf": 1e308}), "token.claim_type"),
    ];
    for (patch, reason) in cases {
        let token = good_claims(&claims_with(patch.clone()));
        assert_eq!(
            verdict(&mut gate, &token, &send_email()),
            (401, reason),
            "{patch}"
        );
    }
    // The smallest NumericDates are harmless where they are allowed to be.
    let token = good_claims(&claims_with(json!({"nbf": i64::MIN})));
    assert_eq!(verdict(&mut gate, &token, &send_email()), (200, "allow"));
}

// ---------------------------------------------------------------------------------------------------------
// Duplicate members
// ---------------------------------------------------------------------------------------------------------

/// RFC 7515 §4 and RFC 7519 §4 (duplicate header or claim names: reject, or use only the last), RFC 8259 §4: txngate rejects duplicates everywhere, so no two parsers can read two different tokens from
/// one. A duplicate spelled with a JSON escape (`"\u0061lg"`) is the same name and is caught too.
#[test]
fn rfc7515_4_duplicate_members_in_header_and_claims_are_refused() {
    let mut gate = gate();
    let payload = bytes(&claims());
    let headers = [
        r#"{"alg":"EdDSA","typ":"txntoken+jwt","kid":"ed","alg":"none"}"#,
        r#"{"alg":"EdDSA","typ":"txntoken+jwt","kid":"ed","kid":"ec"}"#,
        r#"{"alg":"EdDSA","typ":"JWT","kid":"ed","typ":"txntoken+jwt"}"#,
        r#"{"alg":"EdDSA","typ":"txntoken+jwt","kid":"ed","\u0061lg":"ES256"}"#,
    ];
    let cases: Vec<(&str, String)> = headers
        .iter()
        .map(|h| (*h, ed_token(h.as_bytes(), &payload)))
        .collect();
    expect_all(&mut gate, &cases, (401, "token.header"));

    let base = serde_json::to_string(&claims()).unwrap();
    let inner = |member: &str, extra: &str| {
        // Appends `extra` inside the object `member` (a top-level claim).
        let v = claims();
        let text = serde_json::to_string(&v[member]).unwrap();
        let patched = format!("{},{extra}}}", &text[..text.len() - 1]);
        base.replacen(
            &format!("\"{member}\":{text}"),
            &format!("\"{member}\":{patched}"),
            1,
        )
    };
    let payloads = [
        (
            "sub twice",
            format!("{},\"sub\":\"user:mallory\"}}", &base[..base.len() - 1]),
        ),
        (
            "scope twice",
            format!("{},\"scope\":\"admin\"}}", &base[..base.len() - 1]),
        ),
        (
            "aud twice",
            format!("{},\"aud\":\"other.example\"}}", &base[..base.len() - 1]),
        ),
        (
            "escaped sub",
            format!(
                "{},\"s\\u0075b\":\"user:mallory\"}}",
                &base[..base.len() - 1]
            ),
        ),
        (
            "tctx.recipient twice",
            inner("tctx", r#""recipient":["eve@example.com"]"#),
        ),
        (
            "act.sub twice",
            inner("act", r#""sub":"spiffe://trust.example/gw""#),
        ),
    ];
    for (name, payload) in &payloads {
        assert_ne!(payload, &base, "{name}: patch did not apply");
    }
    let cases: Vec<(&str, String)> = payloads
        .iter()
        .map(|(name, p)| (*name, ed_token(&header("EdDSA", "ed"), p.as_bytes())))
        .collect();
    expect_all(&mut gate, &cases, (401, "token.claims"));
}

/// JSON-RPC bodies with duplicate `method`, `params.name` or argument names (RFC 8259 §4; the MCP server may
/// read the other copy than the gate): `mcp.duplicate_key`, 400 with JSON-RPC parse error -32700, only after
/// the token verified (an unauthenticated caller learns nothing about body parsing).
#[test]
fn rfc8259_4_duplicate_members_in_mcp_bodies_are_refused() {
    let mut gate = gate();
    let token = good();
    let bodies = [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"delete_repo"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"tools/list"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"calendar_read","name":"delete_repo"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"calendar_read","n\u0061me":"delete_repo"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send_email","arguments":{"to":"bob@example.com","to":"eve@example.com"}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send_email","arguments":{"to":"bob@example.com","opts":{"a":1,"a":2}}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/call","params":{"name":"send_email"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send_email"},"params":{"name":"delete_repo"}}"#,
    ];
    for body in bodies {
        let o = decide(&mut gate, &token, body.as_bytes());
        assert_eq!(
            (o.decision.status(), o.decision.reason()),
            (400, "mcp.duplicate_key"),
            "{body}"
        );
        let reply: Value = serde_json::from_str(o.decision.body().unwrap()).unwrap();
        assert_eq!(reply["error"]["code"], -32700, "{body}");
    }
    // Without a valid token the token's refusal wins.
    let o = decide(&mut gate, "a.b.c", bodies[0].as_bytes());
    assert_eq!(o.decision.reason(), "token.base64");
}

// ---------------------------------------------------------------------------------------------------------
// base64url
// ---------------------------------------------------------------------------------------------------------

/// Sets the unused low bits of the last character of an unpadded base64url segment.
fn with_trailing_bits(segment: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let unused = match segment.len() % 4 {
        2 => 0b1111,
        3 => 0b11,
        _ => panic!("segment of length {} has no unused bits", segment.len()),
    };
    let last = *segment.as_bytes().last().unwrap();
    let value = ALPHABET.iter().position(|c| *c == last).unwrap();
    let bumped = ALPHABET[value | unused] as char;
    assert_ne!(bumped as u8, last);
    format!("{}{bumped}", &segment[..segment.len() - 1])
}

/// The segment made one character longer than any base64 encoding can be (length 1 modulo 4).
fn impossible_length(segment: &str) -> String {
    let add = match segment.len() % 4 {
        0 => 1,
        1 => 4,
        n => 5 - n,
    };
    let out = format!("{segment}{}", &"AAAA"[..add]);
    assert_eq!(out.len() % 4, 1);
    out
}

/// A header JSON whose encoding has unused bits (length not a multiple of 3), padded with JSON whitespace.
fn header_with_unused_bits() -> Vec<u8> {
    let mut h = header("EdDSA", "ed");
    while h.len().is_multiple_of(3) {
        h.insert(1, b' ');
    }
    h
}

/// RFC 7515 §2 (base64url without padding, no other characters) and RFC 4648 §3.5 (canonical encoding): one
/// token has exactly one spelling. Padding, set trailing bits, the standard alphabet and whitespace are
/// refused: `token.base64`. The header and signature are checked before any key lookup; the payload's
/// alphabet too, its canonical form once the signature verified (it is decoded only then).
#[test]
fn rfc7515_2_non_canonical_base64url_is_refused() {
    let mut gate = gate();
    let h = header_with_unused_bits();
    let payload = bytes(&claims());
    let token = ed_token(&h, &payload);
    assert_eq!(verdict(&mut gate, &token, &send_email()), (200, "allow"));
    let parts: Vec<&str> = token.split('.').collect();
    let (hb, pb, sb) = (parts[0], parts[1], parts[2]);
    assert_eq!(sb.len() % 4, 2, "a 64-byte signature has 4 unused bits");

    // Standard-alphabet encodings of a header that contains bytes encoded as '+' and '/'.
    let std_header =
        bytes(&json!({"alg":"EdDSA","typ":"txntoken+jwt","kid":"ed","x":"\u{3ff}~~~>>>???"}));
    let std_b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&std_header);
    assert!(std_b64.contains('+') || std_b64.contains('/'), "{std_b64}");
    let std_sig = base64::engine::general_purpose::STANDARD_NO_PAD
        .encode(ed_sign(&format!("{std_b64}.{pb}")));

    let mut cases: Vec<(&str, String)> = vec![
        ("header padded", format!("{hb}=.{pb}.{sb}")),
        ("header padded twice", format!("{hb}==.{pb}.{sb}")),
        ("payload padded", format!("{hb}.{pb}=.{sb}")),
        ("signature padded", format!("{hb}.{pb}.{sb}==")),
        (
            "header trailing bits",
            format!("{}.{pb}.{sb}", with_trailing_bits(hb)),
        ),
        (
            "signature trailing bits",
            format!("{hb}.{pb}.{}", with_trailing_bits(sb)),
        ),
        (
            "standard alphabet header",
            format!("{std_b64}.{pb}.{std_sig}"),
        ),
        (
            "'+' in signature",
            format!(
                "{hb}.{pb}.{}",
                sb.replacen(|c: char| c.is_ascii_alphabetic(), "+", 1)
            ),
        ),
        (
            "'/' in payload",
            format!(
                "{hb}.{}.{sb}",
                pb.replacen(|c: char| c.is_ascii_alphabetic(), "/", 1)
            ),
        ),
        (
            "space in header",
            format!("{} {}.{pb}.{sb}", &hb[..8], &hb[8..]),
        ),
        (
            "newline in payload",
            format!("{hb}.{}\n{}.{sb}", &pb[..8], &pb[8..]),
        ),
        (
            "CRLF in signature",
            format!("{hb}.{pb}.{}\r\n{}", &sb[..8], &sb[8..]),
        ),
        ("tab before a dot", format!("{hb}\t.{pb}.{sb}")),
        (
            "NUL in header",
            format!("{}\u{0}{}.{pb}.{sb}", &hb[..8], &hb[8..]),
        ),
        (
            "non-ASCII in payload",
            format!("{hb}.{}é{}.{sb}", &pb[..8], &pb[8..]),
        ),
        (
            "impossible length header",
            format!("{}.{pb}.{sb}", impossible_length(hb)),
        ),
    ];
    // The payload is covered by the signature, so a non-canonical payload needs a signature over it: it
    // verifies, then fails to decode.
    let payload_b64 = encode_b64url(&payload);
    let mut odd_payload = payload.clone();
    while odd_payload.len().is_multiple_of(3) {
        odd_payload.insert(1, b' ');
    }
    let odd_b64 = encode_b64url(&odd_payload);
    let non_canonical = with_trailing_bits(&odd_b64);
    let input = format!("{}.{non_canonical}", encode_b64url(&header("EdDSA", "ed")));
    let signed_non_canonical = format!("{input}.{}", encode_b64url(&ed_sign(&input)));
    cases.push(("signed payload with trailing bits", signed_non_canonical));
    let input = format!(
        "{}.{}",
        encode_b64url(&header("EdDSA", "ed")),
        impossible_length(&payload_b64)
    );
    cases.push((
        "signed payload of impossible length",
        format!("{input}.{}", encode_b64url(&ed_sign(&input))),
    ));
    expect_all(&mut gate, &cases, (401, "token.base64"));

    // Unit level: the same refusals come from `UntrustedToken::parse`, which decodes nothing else.
    for (name, token) in cases.iter().take(7) {
        assert_eq!(
            UntrustedToken::parse(token, 8192).unwrap_err().reason(),
            "token.base64",
            "{name}"
        );
    }
}

/// A UTF-8 byte order mark before the JSON (RFC 8259 §8.1: MUST NOT be added; parsers MAY ignore it): the
/// gate's JSON reader does not skip it, so the header is not JSON (`token.header`), nor are the claims
/// (`token.claims`).
#[test]
fn rfc8259_8_1_bom_before_the_json_is_refused() {
    let mut gate = gate();
    let bom = [0xef, 0xbb, 0xbf];
    let h = [&bom[..], &header("EdDSA", "ed")].concat();
    let payload = bytes(&claims());
    assert_eq!(
        verdict(&mut gate, &ed_token(&h, &payload), &send_email()),
        (401, "token.header")
    );
    let p = [&bom[..], &payload].concat();
    assert_eq!(
        verdict(
            &mut gate,
            &ed_token(&header("EdDSA", "ed"), &p),
            &send_email()
        ),
        (401, "token.claims")
    );
}

// ---------------------------------------------------------------------------------------------------------
// Size
// ---------------------------------------------------------------------------------------------------------

fn fastest(runs: usize, mut f: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap()
}

/// Our reference digest (RFC 8725 checklist: "a size cap on the token before any JSON parsing"): tokens over
/// `max_bytes` are refused as `token.too_large` before anything else is done with them. Proven structurally:
/// each input would be refused with another reason by any earlier step (one million dots: segment count; a
/// million '!': base64; a base64url header of 750 000 '[': JSON nesting; a 1 MB signed payload: signature or
/// claims), no token hash appears in the audit (the token was not even hashed), and the fastest of five
/// decisions takes well under 5 ms (the minimum of several runs does not flake under load).
#[test]
fn rfc8725_checklist_oversized_tokens_are_refused_before_any_decoding() {
    let mut gate = gate();
    let body = send_email();
    let dots = ".".repeat(1_000_000);
    let bangs = format!(
        "{}.{}.{}",
        "!".repeat(500_000),
        "!".repeat(250_000),
        "!".repeat(250_000)
    );
    let deep = format!(
        "{}.{}.{}",
        encode_b64url("[".repeat(750_000).as_bytes()),
        encode_b64url(b"{}"),
        encode_b64url(&[0u8; 64])
    );
    let huge_claims = claims_with(json!({"tctx": {"blob": "A".repeat(1_000_000)}}));
    let signed = good_claims(&huge_claims);
    for (name, token) in [
        ("dots", &dots),
        ("bangs", &bangs),
        ("deep header", &deep),
        ("1 MB signed", &signed),
    ] {
        assert!(token.len() >= 1_000_000, "{name}");
        let o = decide(&mut gate, token, &body);
        assert_eq!(
            (o.decision.status(), o.decision.reason()),
            (401, "token.too_large"),
            "{name}"
        );
        assert!(
            o.audit.token_sha256.is_none(),
            "{name}: an oversized token is not even hashed"
        );
        assert_eq!(
            UntrustedToken::parse(token, 8192).unwrap_err(),
            TokenError::TooLarge {
                bytes: token.len(),
                max: 8192
            }
        );
        let headers = token_headers(token);
        let request = Request {
            method: "POST",
            path: "/mcp",
            headers: &headers,
            body: Body::Complete(&body),
            peer: None,
        };
        let took = fastest(5, || {
            let o = gate.decide(
                &request,
                NOW * 1000,
                txngate_core::Verification::Core,
                &mut MemoryStore::new(),
            );
            assert_eq!(o.decision.reason(), "token.too_large");
        });
        assert!(took < Duration::from_millis(5), "{name}: {took:?}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Deep nesting
// ---------------------------------------------------------------------------------------------------------

fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(512 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// RFC 8259 §9 (implementations may limit nesting): 10 000 nested arrays or objects in the
/// header, the claims, the MCP body, the policy or a JWKS are refused with the reader's depth error, never a
/// stack overflow: the whole test runs on a 512 KiB stack, where unbounded recursion over 10 000 levels could
/// not fit.
#[test]
fn rfc8259_9_deep_nesting_is_refused_without_stack_overflow() {
    on_small_stack(|| {
        let mut gate = gate();
        let arrays = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let objects = |n: usize| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
        for nested in [arrays(10_000), objects(10_000), "[".repeat(10_000)] {
            // Header: nesting inside a member.
            let h = format!(r#"{{"alg":"EdDSA","typ":"txntoken+jwt","kid":"ed","x":{nested}}}"#);
            let mut p = policy();
            p["token"] = json!({"max_bytes": 1_000_000});
            let mut big = gate_with(&p);
            assert_eq!(
                verdict(
                    &mut big,
                    &ed_token(h.as_bytes(), &bytes(&claims())),
                    &send_email()
                ),
                (401, "token.header")
            );
            // Claims: signed, so the claims reader meets it.
            let base = serde_json::to_string(&claims()).unwrap();
            let c = format!("{},\"deep\":{nested}}}", &base[..base.len() - 1]);
            assert_eq!(
                verdict(
                    &mut big,
                    &ed_token(&header("EdDSA", "ed"), c.as_bytes()),
                    &send_email()
                ),
                (401, "token.claims")
            );
            // MCP body, as arguments and as the whole body.
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"send_email","arguments":{{"to":"bob@example.com","x":{nested}}}}}}}"#
            );
            let o = decide(&mut gate, &good(), body.as_bytes());
            assert_eq!(
                (o.decision.status(), o.decision.reason()),
                (400, "mcp.depth")
            );
            let o = decide(&mut gate, &good(), nested.as_bytes());
            assert_eq!(
                (o.decision.status(), o.decision.reason()),
                (400, "mcp.depth")
            );
            // Policy and JWKS documents.
            let doc = format!(r#"{{"trust_domain":"t","issuers":{nested}}}"#);
            assert!(matches!(
                Policy::from_json(doc.as_bytes()),
                Err(PolicyError::Json(
                    txngate_core::json::JsonError::TooDeep { .. }
                ))
            ));
            let jwks = format!(r#"{{"keys":{nested}}}"#);
            assert!(matches!(
                txngate_core::keys::KeySet::parse(
                    jwks.as_bytes(),
                    &Algorithm::ALL,
                    txngate_core::keys::Strictness::Fetched
                ),
                Err(KeyError::Json(
                    txngate_core::json::JsonError::TooDeep { .. }
                ))
            ));
        }
    });
}

// ---------------------------------------------------------------------------------------------------------
// MCP tool names
// ---------------------------------------------------------------------------------------------------------

/// MCP tool names are case-sensitive (issue #12): a spelling that equals a rule only up to ASCII case (or
/// fullwidth forms) is refused with `tool.name_variant`, never authorized under that rule nor under `*`, and
/// uses up nothing of the rule's rate-limit bucket: ten exact calls still pass, the 11th gets 429.
#[test]
fn mcp_tool_names_differing_by_case_are_refused_and_spare_the_bucket() {
    let mut gate = gate();
    let token = good();
    let headers = token_headers(&token);
    let variants = [
        "SEND_EMAIL",
        "Send_Email",
        "sEnD_eMaIl",
        "send_EMAIL",
        "ｓｅｎｄ_email",
    ];
    let mut store = MemoryStore::new();
    for (i, name) in variants.iter().enumerate() {
        let body = call(name, json!({"to":"bob@example.com"}));
        let o = decide_with(
            &mut gate,
            &headers,
            &body,
            &mut store,
            NOW * 1000 + i as u64,
        );
        assert_eq!(
            (o.decision.status(), o.decision.reason()),
            (403, "tool.name_variant"),
            "{name}"
        );
        assert!(o.audit.limit.is_none());
    }
    for i in 0..10u64 {
        let body = call("send_email", json!({"to":"bob@example.com"}));
        let o = decide_with(&mut gate, &headers, &body, &mut store, NOW * 1000 + 10 + i);
        assert_eq!(o.decision.reason(), "allow", "call {i}");
        assert_eq!(o.audit.rule.as_deref(), Some("send_email"));
        assert_eq!(o.audit.limit.as_ref().unwrap().remaining, 9 - i as u32);
    }
    let body = call("send_email", json!({"to":"bob@example.com"}));
    let o = decide_with(&mut gate, &headers, &body, &mut store, NOW * 1000 + 20);
    assert_eq!(
        (o.decision.status(), o.decision.reason()),
        (429, "ratelimit.exceeded")
    );
    for name in ["DELETE_REPO", "Delete_Repo", "dElEtE_rEpO"] {
        assert_eq!(
            verdict(&mut gate, &token, &call(name, json!({}))),
            (403, "tool.name_variant"),
            "{name}"
        );
    }
    assert_eq!(
        verdict(&mut gate, &token, &call("delete_repo", json!({}))),
        (403, "tool.denied")
    );
}

/// A spelling outside MCP's recommended alphabet (`A-Z a-z 0-9 _ - .`) that a person (or a normalising
/// server) would read as a real tool: Cyrillic look-alikes, full-width letters, zero-width characters,
/// surrounding or trailing spaces, NUL, a newline, is never matched loosely, so under a deny rule it is never
/// an allow, although the policy's `*` rule allows every tool without a rule of its own. Structural faults
/// (empty, control characters) are 400 `mcp.tool_name` (-32602); a full-width spelling of a rule is 403
/// `tool.name_variant`; any other is 403 `tool.name_alphabet` (no rule names it exactly).
#[test]
fn mcp_confusable_tool_names_are_refused_never_allowed() {
    let mut gate = gate();
    let token = good();
    let names = [
        "delete_rep\u{043e}",
        "d\u{0435}lete_repo",
        "\u{ff44}elete_repo",
        "delete\u{200b}_repo",
        "delete_repo\u{200d}",
        "\u{feff}delete_repo",
        "delete_repo ",
        " delete_repo",
        "delete_repo\t",
        "delete_repo\u{0}",
        "delete_repo\n",
        "delete_repo\u{a0}",
        "delete_re\u{0301}po",
        "DELETE_REPO\u{2028}",
        "send_\u{0435}mail",
        "send_email ",
        "",
    ];
    for name in names {
        let o = decide(&mut gate, &token, &call(name, json!({})));
        let expected = if name.is_empty() || name.chars().any(char::is_control) {
            (400, "mcp.tool_name")
        } else if name.starts_with('\u{ff44}') {
            (403, "tool.name_variant")
        } else {
            (403, "tool.name_alphabet")
        };
        assert_eq!(
            (o.decision.status(), o.decision.reason()),
            expected,
            "{name:?}"
        );
        if expected.0 == 400 {
            let reply: Value = serde_json::from_str(o.decision.body().unwrap()).unwrap();
            assert_eq!(reply["error"]["code"], -32602);
        }
    }
    let long = "a".repeat(129);
    assert_eq!(
        verdict(&mut gate, &token, &call(&long, json!({}))),
        (400, "mcp.tool_name")
    );
    // An Mcp-Name header that differs from the body only by case is a mismatch, not an alias.
    let mut headers = token_headers(&token);
    headers.push(("Mcp-Name".into(), "delete_repo".into()));
    let o = decide_with(
        &mut gate,
        &headers,
        &call("DELETE_REPO", json!({})),
        &mut MemoryStore::new(),
        NOW * 1000,
    );
    assert_eq!(
        (o.decision.status(), o.decision.reason()),
        (400, "mcp.header_mismatch")
    );
}

/// MCP 2026-07-28 "Server Validation": a router or policy in front of the server may act on `Mcp-Name` while
/// the server executes `params.name` / `params.uri`, so every spelling that could make the two disagree is
/// refused with 400 and -32020, answering the request's id: the name in another encoding (percent-encoding,
/// case, base64 of another value, base64 with a trailing NUL), base64 that lenient decoders accept
/// (URL-safe alphabet, embedded whitespace, missing padding), markers in another case (then a plain value,
/// which differs), and repetition in either form a host presents it (two entries, or joined by `,`).
#[test]
fn mcp_2026_routing_header_smuggling_is_refused() {
    let mut gate = gate();
    let token = good();
    let read = bytes(
        &json!({"jsonrpc":"2.0","id":"r","method":"resources/read","params":{"uri":"file:///docs/a"}}),
    );
    let tool = bytes(
        &json!({"jsonrpc":"2.0","id":"r","method":"tools/call","params":{"name":"calendar_read"}}),
    );
    let b64 = |s: &[u8]| {
        format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    };
    /// A body, the routing headers sent with it, the expected reason.
    type Smuggle<'a> = (&'a Vec<u8>, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Smuggle> = vec![
        (
            &read,
            vec![("Mcp-Name", "file:///docs/%61".into())],
            "mcp.header_mismatch",
        ),
        (
            &read,
            vec![("Mcp-Name", "FILE:///docs/a".into())],
            "mcp.header_mismatch",
        ),
        (
            &read,
            vec![("Mcp-Name", b64(b"file:///docs/a\0"))],
            "mcp.header_mismatch",
        ),
        (
            &read,
            vec![("Mcp-Name", b64(b"file:///docs/b"))],
            "mcp.header_mismatch",
        ),
        (
            &tool,
            vec![("Mcp-Name", "=?BASE64?Y2FsZW5kYXJfcmVhZA==?=".into())],
            "mcp.header_mismatch",
        ),
        (
            &tool,
            vec![("Mcp-Name", "=?base64?Y2FsZW5k YXJfcmVhZA==?=".into())],
            "mcp.header_invalid",
        ),
        (
            &tool,
            vec![("Mcp-Name", "=?base64?Y2FsZW5kYXJfcmVhZA?=".into())],
            "mcp.header_invalid",
        ),
        (
            &tool,
            vec![("Mcp-Name", "=?base64?Y2FsZW5kYXJfcmVhZA-_?=".into())],
            "mcp.header_invalid",
        ),
        (
            &tool,
            vec![("Mcp-Name", "calendar_read\u{7f}".into())],
            "mcp.header_invalid",
        ),
        (
            &tool,
            vec![("Mcp-Name", "calendar_read,delete_repo".into())],
            "mcp.header_repeated",
        ),
        (
            &tool,
            vec![
                ("Mcp-Name", "delete_repo".into()),
                ("mcp-name", "calendar_read".into()),
            ],
            "mcp.header_repeated",
        ),
        (
            &tool,
            vec![
                ("Mcp-Method", "tools/call".into()),
                ("MCP-METHOD", "tools/list".into()),
            ],
            "mcp.header_repeated",
        ),
        (
            &tool,
            vec![("Mcp-Method", "tools/call ,tools/call".into())],
            "mcp.header_repeated",
        ),
    ];
    for (body, extra, reason) in cases {
        let mut headers = token_headers(&token);
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let o = decide_with(
            &mut gate,
            &headers,
            body,
            &mut MemoryStore::new(),
            NOW * 1000,
        );
        assert_eq!(
            (o.decision.status(), o.decision.reason()),
            (400, reason),
            "{extra:?}"
        );
        let reply: Value = serde_json::from_str(o.decision.body().unwrap()).unwrap();
        assert_eq!(reply["error"]["code"], -32020, "{extra:?}");
        assert_eq!(reply["id"], "r", "{extra:?}");
    }
    // The same requests with headers that agree pass (the base64 form of a plain name too).
    for (body, name) in [
        (&read, "file:///docs/a".to_string()),
        (&read, b64(b"file:///docs/a")),
        (&tool, b64(b"calendar_read")),
    ] {
        let mut headers = token_headers(&token);
        headers.push(("Mcp-Name".into(), name.clone()));
        let o = decide_with(
            &mut gate,
            &headers,
            body,
            &mut MemoryStore::new(),
            NOW * 1000,
        );
        assert_eq!(o.decision.reason(), "allow", "{name}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Never logged
// ---------------------------------------------------------------------------------------------------------

/// Transaction Tokens draft: "never log a token verbatim". Every decision in this file already checks it
/// (`decide_with`); this test adds the outcomes that carry the most detail (a `full` arguments audit, an
/// allow with identity headers, a refused signature, a cache hit, a rate-limit refusal, a refusal under a
/// policy with `resource_metadata`) and checks the SHA-256 is there instead. The deprecated
/// `mcp.resource_metadata` is not advertised: the challenge is `Txn-Token`, never OAuth discovery.
#[test]
fn transaction_tokens_the_token_is_never_logged() {
    let mut p = policy();
    p["audit"] = json!({"arguments": "full"});
    p["mcp"] = json!({"resource_metadata": "https://gw.trust.example/.well-known/oauth-protected-resource"});
    let mut gate = gate_with(&p);
    let token = good();
    let mut tampered = token.clone();
    tampered.replace_range(tampered.len() - 3.., "AAA");
    let headers = token_headers(&token);
    let mut store = MemoryStore::new();
    let mut outcomes = Vec::new();
    for i in 0..12 {
        outcomes.push(decide_with(
            &mut gate,
            &headers,
            &send_email(),
            &mut store,
            NOW * 1000 + i,
        ));
    }
    assert!(outcomes[1].audit.cached);
    assert_eq!(outcomes[11].decision.reason(), "ratelimit.exceeded");
    outcomes.push(decide(&mut gate, &tampered, &send_email()));
    assert_eq!(
        outcomes.last().unwrap().decision.reason(),
        "token.signature"
    );
    let challenge = outcomes
        .last()
        .unwrap()
        .decision
        .response_headers()
        .iter()
        .find(|(k, _)| k == "www-authenticate")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert_eq!(
        challenge,
        "Txn-Token error=\"invalid_token\", error_description=\"token.signature\""
    );
    let hash = txngate_core::encoding::sha256_hex(token.as_bytes());
    for o in &outcomes {
        assert_not_logged(&token, o);
        assert_not_logged(&tampered, o);
    }
    assert!(outcomes[0].audit.to_json().contains(&hash));
    assert!(outcomes[0].audit.arguments.is_some());
}

// ---------------------------------------------------------------------------------------------------------
// Regression: JSON pointer bookkeeping was quadratic (found while writing this file)
// ---------------------------------------------------------------------------------------------------------

/// `json::parse_strict` used to build the JSON pointer of every value it read, by copying its parent's
/// pointer: a long key above a long array cost key length × array length bytes of copying. A 64 KiB MCP body
/// (a 32 KiB key over 16 000 array elements, 512 MB of copying) is parsed before the token is even looked at,
/// so any client could buy tens of milliseconds of gate CPU per request, more in Wasm. The pointer is now
/// built only when a duplicate key is reported. Checked on a 512 KiB document (32 GB of copying before the
/// fix, seconds; linear now, well under the bound even unoptimised) and end to end on the MCP body.
#[test]
fn regression_json_pointer_bookkeeping_is_linear() {
    let doc = format!(
        r#"{{"{}":[{}0]}}"#,
        "k".repeat(256 * 1024),
        "0,".repeat(128 * 1024 - 1)
    );
    assert!(doc.len() > 512 * 1024);
    let took = fastest(3, || {
        let v = txngate_core::json::parse_strict(doc.as_bytes(), 8).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 1);
    });
    assert!(took < Duration::from_secs(1), "{took:?}");
    // Duplicate keys are still reported with the pointer of their object.
    let dup = r#"{"a/b":[{},{"x~":{"k":1,"k":2}}]}"#;
    assert_eq!(
        txngate_core::json::parse_strict(dup.as_bytes(), 8).unwrap_err(),
        txngate_core::json::JsonError::DuplicateKey {
            path: "/a~1b/1/x~0".into(),
            key: "k".into()
        }
    );

    let mut gate = gate();
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"send_email","arguments":{{"to":"bob@example.com","{}":[{}0]}}}}}}"#,
        "k".repeat(32 * 1024),
        "0,".repeat(16 * 1024 - 100)
    );
    assert!(body.len() <= 65536);
    let token = good();
    assert_eq!(verdict(&mut gate, &token, body.as_bytes()), (200, "allow"));
    let headers = token_headers("not.a.token");
    let request = Request {
        method: "POST",
        path: "/mcp",
        headers: &headers,
        body: Body::Complete(body.as_bytes()),
        peer: None,
    };
    let took = fastest(3, || {
        let o = gate.decide(
            &request,
            NOW * 1000,
            txngate_core::Verification::Core,
            &mut MemoryStore::new(),
        );
        assert_eq!(o.decision.reason(), "token.base64");
    });
    assert!(took < Duration::from_millis(500), "{took:?}");
}

// ---------------------------------------------------------------------------------------------------------
// Regression: spellings of the MCP path skipped tool authorization (found while writing this file)
// ---------------------------------------------------------------------------------------------------------

/// A POST whose path is another spelling of the MCP endpoint used to be treated as a plain API call: only the
/// token was checked, never the tool rules. MCP servers route such spellings to the endpoint: Express (the
/// MCP TypeScript SDK's examples) matches routes case-insensitively and ignores a trailing slash by default,
/// servlet containers drop `;parameters`, many stacks merge slashes, resolve dot segments or decode percent
/// escapes. So `POST /MCP` with a `tools/call` of a denied tool was allowed. The gate now decides "is this the
/// MCP endpoint" on a normalised path (case, escapes, `;params`, empty, `.` and `..` segments, backslashes):
/// erring towards "yes" only puts more requests under tool authorization.
#[test]
fn regression_spellings_of_the_mcp_path_get_tool_authorization() {
    let mut gate = gate();
    let token = good();
    let headers = token_headers(&token);
    let body = call("delete_repo", json!({}));
    let paths = [
        "/mcp",
        "/mcp/",
        "/MCP",
        "/Mcp/",
        "/mcp;jsessionid=1",
        "/mcp/;x",
        "//mcp",
        "/./mcp",
        "/x/../mcp",
        "/%6dcp",
        "/%4D%43%50",
        "/mcp%2f",
        "\\mcp",
        "/mcp?x=1",
        "/MCP#frag",
        "/mcp/sub/path",
    ];
    for path in paths {
        let request = Request {
            method: "POST",
            path,
            headers: &headers,
            body: Body::Complete(&body),
            peer: None,
        };
        assert!(gate.needs_body("POST", path), "{path}");
        let o = gate.decide(
            &request,
            NOW * 1000,
            txngate_core::Verification::Core,
            &mut MemoryStore::new(),
        );
        assert_eq!(
            (o.decision.status(), o.decision.reason()),
            (403, "tool.denied"),
            "{path}"
        );
        assert_not_logged(&token, &o);
    }
    // Other paths stay plain API calls.
    for path in ["/mcpx", "/api/mcp", "/mcp-docs", "/", "/m%63p2"] {
        assert!(!gate.needs_body("POST", path), "{path}");
    }
}

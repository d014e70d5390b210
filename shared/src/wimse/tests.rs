#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use p256::ecdsa::signature::Signer as _;
use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::encoding::encode_b64url;

const NOW_S: u64 = 1_800_000_000;
const NOW_MS: u64 = NOW_S * 1000;
const ORIGIN: &str = "https://mcp.example";
const CALLER: &str = "spiffe://trust.example/agent/mailer";
const TXN: &str = "eyJhbGciOiJFZERTQSJ9.eyJ0eG4iOiIxIn0.c2ln";

fn identity_server() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&[3u8; 32]).unwrap()
}

fn other_server() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&[4u8; 32]).unwrap()
}

fn workload(seed: u8) -> ed25519_compact::KeyPair {
    ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([seed; 32]))
}

fn ec_jwk(key: &p256::ecdsa::SigningKey, kid: &str) -> Value {
    let point = key.verifying_key().to_encoded_point(false);
    json!({"kty": "EC", "crv": "P-256", "kid": kid,
           "x": encode_b64url(point.x().unwrap()), "y": encode_b64url(point.y().unwrap())})
}

fn ed_jwk(pair: &ed25519_compact::KeyPair) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "x": encode_b64url(pair.pk.as_ref())})
}

/// The compiled section with the key ring its trust domains live in.
struct Rules {
    rules: WimseRules,
    ring: crate::keys::KeyRing,
}

impl std::ops::Deref for Rules {
    type Target = WimseRules;
    fn deref(&self) -> &WimseRules {
        &self.rules
    }
}

fn rules() -> Rules {
    let spec: WimseSpec = serde_json::from_value(json!({
        "trust_domains": {
            "trust.example": {"jwks": {"keys": [ec_jwk(&identity_server(), "td-1")]}, "algorithms": ["ES256"]},
            "other.example": {"jwks": {"keys": [ec_jwk(&other_server(), "other-1")]}, "algorithms": ["ES256"]}
        },
        "audiences": [ORIGIN],
        "replay_cache_entries": 4
    }))
    .unwrap();
    let mut ring = crate::keys::KeyRing::new();
    let rules = compile(&spec, &mut ring).unwrap();
    Rules { rules, ring }
}

fn encode(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        encode_b64url(&serde_json::to_vec(header).unwrap()),
        encode_b64url(&serde_json::to_vec(claims).unwrap())
    )
}

fn sign_ec(key: &p256::ecdsa::SigningKey, header: &Value, claims: &Value) -> String {
    let input = encode(header, claims);
    let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
    format!("{input}.{}", encode_b64url(&sig.to_bytes()))
}

fn sign_ed(pair: &ed25519_compact::KeyPair, header: &Value, claims: &Value) -> String {
    let input = encode(header, claims);
    let sig = pair.sk.sign(input.as_bytes(), None);
    format!("{input}.{}", encode_b64url(sig.as_ref()))
}

fn wit_claims(sub: &str, pair: &ed25519_compact::KeyPair) -> Value {
    json!({"sub": sub, "exp": NOW_S + 3600, "iat": NOW_S - 10, "cnf": {"jwk": ed_jwk(pair)}})
}

fn wit_header() -> Value {
    json!({"alg": "ES256", "typ": "wit+jwt", "kid": "td-1"})
}

fn wit() -> String {
    sign_ec(
        &identity_server(),
        &wit_header(),
        &wit_claims(CALLER, &workload(1)),
    )
}

fn wpt_claims(wit: &str, jti: &str) -> Value {
    json!({"aud": format!("{ORIGIN}/mcp"), "exp": NOW_S + 30, "jti": jti,
           "wth": token_hash(wit), "tth": token_hash(TXN)})
}

fn wpt_header() -> Value {
    json!({"alg": "EdDSA", "typ": "wpt+jwt"})
}

fn wpt(wit: &str, jti: &str) -> String {
    sign_ed(&workload(1), &wpt_header(), &wpt_claims(wit, jti))
}

fn headers() -> Vec<(String, String)> {
    vec![("txn-token".into(), TXN.into())]
}

/// The whole check as the gate runs it, with the core's own verifier.
fn check(
    rules: &Rules,
    replay: &mut ReplayCache,
    wit: &str,
    wpt: &str,
    path: &str,
    now_ms: u64,
) -> Result<(Wit, Wpt), WimseError> {
    let w = WitCheck::start(rules, &rules.ring, wit, now_ms)?;
    if !w.jwt().verify_native() {
        return Err(WimseError::WitSignature);
    }
    let w = w.finish(rules, now_ms)?;
    let p = WptCheck::start(rules, &w, wpt)?;
    if !p.jwt().verify_native() {
        return Err(WimseError::WptSignature);
    }
    let h = headers();
    let binding = RequestBinding {
        path,
        txn_token: TXN,
        headers: &h,
    };
    let p = p.finish(rules, &w, &binding, replay, true, now_ms)?;
    Ok((w, p))
}

/// [`check`] of a first use (an empty replay cache), on `/mcp`, now.
fn check_once(rules: &Rules, wit: &str, wpt: &str) -> Result<(Wit, Wpt), WimseError> {
    check(rules, &mut ReplayCache::new(4), wit, wpt, "/mcp", NOW_MS)
}

/// The reason for a WIT of `CALLER` with this header, signed by `server`, and its own WPT.
fn wit_reason(rules: &Rules, server: &p256::ecdsa::SigningKey, header: &Value) -> &'static str {
    let w = sign_ec(server, header, &wit_claims(CALLER, &workload(1)));
    reason(check_once(rules, &w, &wpt(&w, "j1")))
}

fn reason(r: Result<(Wit, Wpt), WimseError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.reason(),
    }
}

#[test]
fn a_bound_call_passes_and_names_the_caller() {
    let rules = rules();
    let mut replay = ReplayCache::new(4);
    let w = wit();
    let (wit, wpt) = check(&rules, &mut replay, &w, &wpt(&w, "j1"), "/mcp?x=1", NOW_MS).unwrap();
    assert_eq!(wit.sub, CALLER);
    assert_eq!(wit.trust_domain, "trust.example");
    assert_eq!(wpt.jti, "j1");
}

#[test]
fn a_proof_by_another_key_is_refused() {
    let rules = rules();
    let w = wit();
    let forged = sign_ed(&workload(2), &wpt_header(), &wpt_claims(&w, "j1"));
    let r = check_once(&rules, &w, &forged);
    assert_eq!(reason(r), "wimse.wpt_signature");
}

#[test]
fn a_wit_signed_by_another_trust_domain_for_this_one_is_refused() {
    let rules = rules();
    // other.example's Identity Server vouching for a workload of trust.example.
    let header = json!({"alg": "ES256", "typ": "wit+jwt", "kid": "other-1"});
    assert_eq!(
        wit_reason(&rules, &other_server(), &header),
        "wimse.wit_untrusted"
    );
    // A key that claims trust.example's kid but is not its key.
    assert_eq!(
        wit_reason(&rules, &other_server(), &wit_header()),
        "wimse.wit_signature"
    );
    // An unknown kid.
    let header = json!({"alg": "ES256", "typ": "wit+jwt", "kid": "nobody"});
    assert_eq!(
        wit_reason(&rules, &identity_server(), &header),
        "wimse.wit_untrusted"
    );
}

#[test]
fn the_txn_token_hash_must_be_this_tokens() {
    let rules = rules();
    let w = wit();
    let mut claims = wpt_claims(&w, "j1");
    claims["tth"] = json!(token_hash("another.txn.token"));
    let p = sign_ed(&workload(1), &wpt_header(), &claims);
    assert_eq!(reason(check_once(&rules, &w, &p)), "wimse.txn_token_hash");
    claims.as_object_mut().unwrap().remove("tth");
    let p = sign_ed(&workload(1), &wpt_header(), &claims);
    assert_eq!(reason(check_once(&rules, &w, &p)), "wimse.txn_token_hash");
}

#[test]
fn the_wit_hash_must_be_the_presented_wits() {
    let rules = rules();
    let w = wit();
    let other_wit = sign_ec(
        &identity_server(),
        &wit_header(),
        &json!({"sub": CALLER, "exp": NOW_S + 60, "cnf": {"jwk": ed_jwk(&workload(1))}}),
    );
    let p = sign_ed(&workload(1), &wpt_header(), &wpt_claims(&other_wit, "j1"));
    assert_eq!(reason(check_once(&rules, &w, &p)), "wimse.wit_hash");
}

#[test]
fn a_replayed_jti_is_refused_until_the_proof_expires() {
    let rules = rules();
    let mut replay = ReplayCache::new(4);
    let w = wit();
    let p = wpt(&w, "j1");
    assert_eq!(
        reason(check(&rules, &mut replay, &w, &p, "/mcp", NOW_MS)),
        "ok"
    );
    assert_eq!(
        reason(check(&rules, &mut replay, &w, &p, "/mcp", NOW_MS + 1000)),
        "wimse.replay"
    );
    // Another workload's jti of the same value is its own.
    replay
        .check_and_remember("spiffe://trust.example/other", "j1", NOW_MS + 5000, NOW_MS)
        .unwrap();
}

#[test]
fn a_full_replay_cache_refuses_rather_than_forgets() {
    let mut replay = ReplayCache::new(2);
    replay
        .check_and_remember("a", "1", NOW_MS + 10, NOW_MS)
        .unwrap();
    replay
        .check_and_remember("a", "2", NOW_MS + 10, NOW_MS)
        .unwrap();
    assert_eq!(
        replay.check_and_remember("a", "3", NOW_MS + 10, NOW_MS),
        Err(WimseError::ReplayCacheFull { entries: 2 })
    );
    // Once the first proofs expired, their entries make room.
    replay
        .check_and_remember("a", "3", NOW_MS + 100, NOW_MS + 20)
        .unwrap();
    assert!(replay.len() <= 2);
}

#[test]
fn the_audience_is_this_origin_and_this_path() {
    let rules = rules();
    let w = wit();
    for aud in [
        json!("https://mcp.example/admin"),
        json!("https://evil.example/mcp"),
        json!("https://mcp.example/mcp/extra"),
        json!("http://mcp.example/mcp"),
        json!(["https://other.example/mcp"]),
    ] {
        let mut claims = wpt_claims(&w, "j1");
        claims["aud"] = aud.clone();
        let p = sign_ed(&workload(1), &wpt_header(), &claims);
        let r = check_once(&rules, &w, &p);
        assert_eq!(reason(r), "wimse.wpt_audience", "{aud}");
    }
    // A proof made for /mcp is not one for /admin (swapped audiences).
    let p = wpt(&w, "j1");
    let r = check(&rules, &mut ReplayCache::new(4), &w, &p, "/admin", NOW_MS);
    assert_eq!(reason(r), "wimse.wpt_audience");
    let mut claims = wpt_claims(&w, "j2");
    claims["aud"] = json!(["https://x.example/y", format!("{ORIGIN}/mcp")]);
    let p = sign_ed(&workload(1), &wpt_header(), &claims);
    assert_eq!(reason(check_once(&rules, &w, &p)), "ok");
}

#[test]
fn expired_and_long_lived_proofs_are_refused() {
    let rules = rules();
    let w = wit();
    // The WIT expired (past the 5 s leeway).
    let late = NOW_MS + 3600 * 1000 + 6000;
    let r = check(
        &rules,
        &mut ReplayCache::new(4),
        &w,
        &wpt(&w, "j1"),
        "/mcp",
        late,
    );
    assert_eq!(reason(r), "wimse.wit_expired");
    // The WPT expired.
    let r = check(
        &rules,
        &mut ReplayCache::new(4),
        &w,
        &wpt(&w, "j1"),
        "/mcp",
        NOW_MS + 36_000,
    );
    assert_eq!(reason(r), "wimse.wpt_expired");
    // A WPT valid for an hour.
    let mut claims = wpt_claims(&w, "j1");
    claims["exp"] = json!(NOW_S + 3600);
    let p = sign_ed(&workload(1), &wpt_header(), &claims);
    let r = check_once(&rules, &w, &p);
    assert_eq!(reason(r), "wimse.wpt_lifetime");
    // No exp at all.
    claims.as_object_mut().unwrap().remove("exp");
    let p = sign_ed(&workload(1), &wpt_header(), &claims);
    let r = check_once(&rules, &w, &p);
    assert_eq!(reason(r), "wimse.wpt_invalid");
}

#[test]
fn alg_and_typ_confusion_is_refused() {
    let rules = rules();
    let w = wit();
    // The WIT presented as its own proof (typ wit+jwt in the proof header).
    let r = check_once(&rules, &w, &w);
    assert_eq!(reason(r), "wimse.wpt_invalid");
    // A WIT typed as a WPT, a Txn-Token, or untyped.
    for typ in [
        json!("wpt+jwt"),
        json!("txntoken+jwt"),
        json!("JWT"),
        Value::Null,
    ] {
        let mut header = wit_header();
        header["typ"] = typ.clone();
        if typ.is_null() {
            header.as_object_mut().unwrap().remove("typ");
        }
        assert_eq!(
            wit_reason(&rules, &identity_server(), &header),
            "wimse.wit_invalid",
            "{typ}"
        );
    }
    // application/wpt+jwt is the same media type.
    let p = sign_ed(
        &workload(1),
        &json!({"alg": "EdDSA", "typ": "application/wpt+jwt"}),
        &wpt_claims(&w, "j1"),
    );
    assert_eq!(reason(check_once(&rules, &w, &p)), "ok");
    // The proof names another algorithm than cnf.jwk.alg.
    let p = sign_ed(
        &workload(1),
        &json!({"alg": "Ed25519", "typ": "wpt+jwt"}),
        &wpt_claims(&w, "j1"),
    );
    assert_eq!(reason(check_once(&rules, &w, &p)), "wimse.wpt_invalid");
    // alg none, and an embedded key in the proof header.
    for header in [
        json!({"alg": "none", "typ": "wpt+jwt"}),
        json!({"alg": "EdDSA", "typ": "wpt+jwt", "jwk": ed_jwk(&workload(2))}),
        json!({"alg": "HS256", "typ": "wpt+jwt"}),
    ] {
        let p = sign_ed(&workload(1), &header, &wpt_claims(&w, "j1"));
        let r = check_once(&rules, &w, &p);
        assert_eq!(reason(r), "wimse.wpt_invalid", "{header}");
    }
    // The WIT's alg is not its key's.
    let mut header = wit_header();
    header["alg"] = json!("ES384");
    assert_eq!(
        wit_reason(&rules, &identity_server(), &header),
        "wimse.wit_invalid"
    );
}

#[test]
fn the_confirmation_key_must_be_complete_and_sound() {
    let rules = rules();
    for cnf in [
        json!(null),
        json!({}),
        json!({"jwk": {"kty": "OKP", "crv": "Ed25519", "x": encode_b64url(workload(1).pk.as_ref())}}),
        json!({"jwk": {"kty": "OKP", "crv": "Ed25519", "alg": "none", "x": encode_b64url(workload(1).pk.as_ref())}}),
        json!({"jwk": {"kty": "oct", "alg": "HS256", "k": "c2VjcmV0"}}),
        json!({"jwk": {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "x": encode_b64url(workload(1).pk.as_ref()),
                       "d": encode_b64url(&[1u8; 32])}}),
        json!({"jwk": {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "x": encode_b64url(&[0u8; 32])}}),
    ] {
        let claims = json!({"sub": CALLER, "exp": NOW_S + 60, "cnf": cnf});
        let w = sign_ec(&identity_server(), &wit_header(), &claims);
        let r = check_once(&rules, &w, &wpt(&w, "j1"));
        assert_eq!(reason(r), "wimse.wit_invalid", "{cnf}");
    }
}

#[test]
fn the_subject_must_be_a_workload_identifier_of_the_domain() {
    let rules = rules();
    for sub in [
        "user:alice",
        "spiffe://other.example/agent",
        "spiffe://",
        "",
    ] {
        let w = sign_ec(
            &identity_server(),
            &wit_header(),
            &wit_claims(sub, &workload(1)),
        );
        let r = check_once(&rules, &w, &wpt(&w, "j1"));
        assert_ne!(reason(r), "ok", "{sub}");
    }
}

#[test]
fn other_token_hashes_are_checked() {
    let rules = rules();
    let w = wit();
    let mut claims = wpt_claims(&w, "j1");
    claims["oth"] = json!({"x-session": token_hash("abc")});
    let p = sign_ed(&workload(1), &wpt_header(), &claims);
    // The request lacks the header.
    assert_eq!(reason(check_once(&rules, &w, &p)), "wimse.other_hash");
    claims["oth"] = json!({});
    claims["ath"] = json!(token_hash("access"));
    let p = sign_ed(&workload(1), &wpt_header(), &claims);
    assert_eq!(reason(check_once(&rules, &w, &p)), "wimse.other_hash");
}

#[test]
fn both_headers_or_neither() {
    let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    };
    assert_eq!(presented(&h(&[])), Ok(Presented::Absent));
    assert_eq!(
        presented(&h(&[("Workload-Identity-Token", "a.b.c")]))
            .unwrap_err()
            .reason(),
        "wimse.proof_missing"
    );
    assert_eq!(
        presented(&h(&[("workload-proof-token", "a.b.c")]))
            .unwrap_err()
            .reason(),
        "wimse.proof_missing"
    );
    assert_eq!(
        presented(&h(&[
            ("workload-identity-token", "a.b.c"),
            ("workload-identity-token", "a.b.c"),
            ("workload-proof-token", "a.b.c")
        ]))
        .unwrap_err()
        .reason(),
        "wimse.wit_invalid"
    );
    assert_eq!(
        presented(&h(&[
            ("workload-identity-token", "a.b.c"),
            ("workload-proof-token", "a.b.c, d.e.f")
        ]))
        .unwrap_err()
        .reason(),
        "wimse.wpt_invalid"
    );
}

#[test]
fn the_section_is_checked_at_load() {
    let bad = |patch: Value| {
        let mut spec = json!({
            "trust_domains": {"trust.example": {"jwks": {"keys": [ec_jwk(&identity_server(), "a")]}}},
            "audiences": [ORIGIN]
        });
        for (k, v) in patch.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let spec: WimseSpec = serde_json::from_value(spec).unwrap();
        compile(&spec, &mut crate::keys::KeyRing::new())
            .map(|_| ())
            .unwrap_err()
            .path
    };
    assert_eq!(bad(json!({"audiences": []})), "/audiences");
    assert_eq!(
        bad(json!({"audiences": ["https://mcp.example/mcp"]})),
        "/audiences/0"
    );
    assert_eq!(bad(json!({"trust_domains": {}})), "/trust_domains");
    assert_eq!(
        bad(json!({"trust_domains": {"Trust.Example": {"jwks": {"keys": []}}}})),
        "/trust_domains/Trust.Example"
    );
    assert_eq!(
        bad(
            json!({"trust_domains": {"t.example": {"jwks": {"keys": [{"kty": "oct", "k": "AA"}]}}}})
        ),
        "/trust_domains/t.example/jwks"
    );
    assert_eq!(
        bad(json!({"max_proof_lifetime_seconds": 0})),
        "/max_proof_lifetime_seconds"
    );
    assert_eq!(
        bad(json!({"proof_algorithms": ["HS256"]})),
        "/proof_algorithms/0"
    );
    assert_eq!(
        bad(json!({"replay_cache_entries": 0})),
        "/replay_cache_entries"
    );
}

proptest! {
    #[test]
    fn parsing_never_panics(raw in "[A-Za-z0-9_.=-]{0,300}") {
        let rules = rules();
        let _ = WitCheck::start(&rules, &rules.ring, &raw, NOW_MS);
        let w = WitCheck::start(&rules, &rules.ring, &wit(), NOW_MS)
            .unwrap()
            .finish(&rules, NOW_MS)
            .unwrap();
        let _ = WptCheck::start(&rules, &w, &raw);
    }

    #[test]
    fn the_replay_cache_stays_bounded(ops in prop::collection::vec((0u8..8, 0u64..50), 0..200)) {
        let mut replay = ReplayCache::new(4);
        let mut now = NOW_MS;
        for (jti, step) in ops {
            now += step;
            let _ = replay.check_and_remember("w", &jti.to_string(), now + 20, now);
            prop_assert!(replay.len() <= 4);
        }
    }

    #[test]
    fn any_change_to_a_bound_proof_is_refused(index in 0usize..200, flip in 1u8..=255) {
        let rules = rules();
        let w = wit();
        let mut p = wpt(&w, "j1").into_bytes();
        let i = index % p.len();
        p[i] ^= flip;
        let Ok(p) = String::from_utf8(p) else { return Ok(()); };
        let r = check_once(&rules, &w, &p);
        // A changed byte either breaks the JWS or its signature; base64url padding bits aside, never passes
        // with other claims.
        if let Ok((_, wpt)) = r {
            prop_assert_eq!(wpt.jti, "j1");
        }
    }
}

/// A remote trust domain's keys come from the key ring's refresher (the test's clock): unusable until
/// fetched, selected once installed, an unknown `kid` names the entry to refetch, stale keys fail closed.
#[test]
fn a_remote_trust_domain_is_served_by_the_ring() {
    use crate::keys::refresh::FetchResult;
    let spec: WimseSpec = serde_json::from_value(json!({
        "trust_domains": {"trust.example": {"jwks_uri": "https://id.trust.example/keys",
            "algorithms": ["ES256"], "refresh_seconds": 10, "max_stale_seconds": 20}},
        "audiences": [ORIGIN]
    }))
    .unwrap();
    let mut ring = crate::keys::KeyRing::new();
    let rules = compile(&spec, &mut ring).unwrap();
    let entry = rules.trust_domains[0].ring;
    let unavailable = WitCheck::start(&rules, &ring, &wit(), NOW_MS).unwrap_err();
    assert_eq!(
        unavailable,
        WimseError::KeysUnavailable {
            trust_domain: "trust.example".into(),
            entry
        }
    );
    assert_eq!(
        (unavailable.status(), unavailable.reason()),
        (503, "keys.unavailable")
    );
    let fetch = ring.poll(NOW_MS).pop().unwrap();
    assert_eq!(
        (fetch.issuer, fetch.uri.as_str()),
        (entry, "https://id.trust.example/keys")
    );
    let body = serde_json::to_vec(&json!({"keys": [ec_jwk(&identity_server(), "td-1")]})).unwrap();
    let result = FetchResult::Response {
        status: 200,
        body: &body,
        length: body.len(),
    };
    ring.on_response(entry, result, NOW_MS);
    let rules = Rules { rules, ring };
    let (w, _) = check_once(&rules, &wit(), &wpt(&wit(), "j1")).unwrap();
    assert_eq!(w.trust_domain, "trust.example");
    let other = sign_ec(
        &other_server(),
        &json!({"alg": "ES256", "typ": "wit+jwt", "kid": "td-2"}),
        &wit_claims(CALLER, &workload(1)),
    );
    assert_eq!(
        WitCheck::start(&rules, &rules.ring, &other, NOW_MS).unwrap_err(),
        WimseError::UnknownKid {
            kid: "td-2".into(),
            refetch: vec![entry]
        }
    );
    // Past max_stale_seconds without a new fetch: the last set is not used.
    assert!(matches!(
        WitCheck::start(&rules, &rules.ring, &wit(), NOW_MS + 20_001),
        Err(WimseError::KeysUnavailable { .. })
    ));
}

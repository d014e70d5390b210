//! The `txngate` binary end to end: keygen → mint → check allows a valid MCP tool call and denies each broken
//! token with its specific reason; policy validate points at the bad field.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

const NOW: i64 = 1_800_000_000;

fn txngate(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_txngate"));
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(alg: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let o = txngate(
            &[
                "keygen",
                "--alg",
                alg,
                "--kid",
                "k1",
                "--out",
                keys.to_str().unwrap(),
            ],
            None,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let jwks: Value =
            serde_json::from_str(&std::fs::read_to_string(keys.join("jwks.json")).unwrap())
                .unwrap();
        assert!(
            jwks["keys"][0].get("d").is_none(),
            "jwks.json must hold no private material"
        );
        let policy = json!({
            "trust_domain": "trust.example",
            "issuers": [{"name": "dev", "jwks": jwks, "algorithms": [alg]}],
            "agents": {"spiffe://trust.example/agent/*": {"max_scopes": ["email:send", "calendar:*"]},
                       "spiffe://trust.example/gw": {"max_scopes": ["*"]}},
            "tools": {"send_email": {"scopes": ["email:send"], "rate_limit": {"key": "agent", "limit": 2, "period_seconds": 60}},
                      "*": {"effect": "deny"}}
        });
        std::fs::write(dir.path().join("policy.json"), policy.to_string()).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    fn mint(&self, claims: &Value, extra: &[&str]) -> String {
        let key = self.path("keys/private.jwk");
        let now = NOW.to_string();
        let mut args = vec!["mint", "--key", &key, "--claims", "-", "--now", &now];
        args.extend_from_slice(extra);
        let o = txngate(&args, Some(&claims.to_string()));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stderr).contains("development issuer"));
        stdout(&o).trim().to_string()
    }

    fn check(&self, token: &str, body: &str, extra: &[&str]) -> (i32, Value) {
        let policy = self.path("policy.json");
        let now = NOW.to_string();
        let mut args = vec![
            "check", "--policy", &policy, "--token", token, "--body", body,
        ];
        if !extra.contains(&"--now") {
            args.extend_from_slice(&["--now", &now]);
        }
        args.extend_from_slice(extra);
        let o = txngate(&args, None);
        let last = stdout(&o).lines().last().unwrap_or("{}").to_string();
        (
            o.status.code().unwrap(),
            serde_json::from_str(&last).unwrap(),
        )
    }
}

fn flip_char(s: &str, at: usize) -> String {
    let mut b = s.as_bytes().to_vec();
    b[at] = if b[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

fn claims() -> Value {
    json!({"aud": "trust.example", "sub": "user:alice", "scope": "email:send", "req_wl": "spiffe://trust.example/gw"})
}

const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send_email","arguments":{"to":"bob@example.com"}}}"#;

#[test]
fn keygen_mint_check_allows_each_algorithm() {
    for alg in ["EdDSA", "Ed25519", "ES256", "ES384", "RS256"] {
        let s = Setup::new(alg);
        let tok = s.mint(&claims(), &["--act", "spiffe://trust.example/agent/mailer"]);
        let (code, out) = s.check(&tok, CALL, &[]);
        assert_eq!(code, 0, "{alg}: {out}");
        assert_eq!(out["decision"]["reason"], "allow");
        assert_eq!(out["audit"]["agent"], "spiffe://trust.example/agent/mailer");
        assert_eq!(
            out["decision"]["upstream_headers"]["x-txngate-sub"],
            "user:alice"
        );
    }
}

#[test]
fn check_denies_each_broken_token_with_its_reason() {
    let s = Setup::new("EdDSA");
    let good = s.mint(&claims(), &[]);
    let cases: Vec<(String, &str)> = vec![
        (s.mint(&claims(), &["--header", r#"{"typ":"JWT"}"#]), "token.typ"),
        (s.mint(&claims(), &["--header", r#"{"kid":"other"}"#]), "token.kid_unknown"),
        (s.mint(&claims(), &["--header", r#"{"jku":"https://evil"}"#]), "token.embedded_key"),
        (s.mint(&claims(), &["--header", r#"{"alg":"ES256"}"#]), "token.alg_mismatch"),
        (s.mint(&json!({"aud": "elsewhere", "sub": "u", "scope": "email:send", "req_wl": "spiffe://trust.example/gw"}), &[]), "token.audience"),
        (s.mint(&claims(), &["--ttl=-100"]), "token.lifetime"),
        (s.mint(&claims(), &["--ttl", "3600"]), "token.lifetime"),
        (s.mint(&json!({"aud": "trust.example", "sub": "u", "scope": "email:send"}), &[]), "token.claim_missing"),
        (s.mint(&claims(), &["--act", "spiffe://evil.example/x"]), "delegation.unknown_agent"),
        (s.mint(&json!({"aud": "trust.example", "sub": "u", "scope": "calendar:read", "req_wl": "spiffe://trust.example/gw"}), &[]), "tool.scope"),
        (flip_char(&good, good.len() - 20), "token.signature"),
        ("not-a-token".to_string(), "token.malformed"),
    ];
    for (tok, reason) in cases {
        let (code, out) = s.check(&tok, CALL, &[]);
        assert_eq!(code, 3, "{reason}: {out}");
        assert_eq!(out["decision"]["reason"], reason, "{out}");
    }
    // Expired: the clock moves past exp + leeway.
    let (code, out) = s.check(&good, CALL, &["--now", &(NOW + 100).to_string()]);
    assert_eq!(
        (code, out["decision"]["reason"].as_str().unwrap()),
        (3, "token.expired")
    );
}

#[test]
fn repeat_runs_into_the_rate_limit() {
    let s = Setup::new("EdDSA");
    let tok = s.mint(&claims(), &[]);
    let (code, out) = s.check(&tok, CALL, &["--repeat", "3"]);
    assert_eq!(code, 3);
    assert_eq!(out["decision"]["status"], 429);
    assert_eq!(out["decision"]["response_headers"]["retry-after"], "30");
}

#[test]
fn inspect_shows_claims_untrusted_and_hash() {
    let s = Setup::new("EdDSA");
    let tok = s.mint(
        &claims(),
        &[
            "--act",
            "spiffe://trust.example/agent/a",
            "--act",
            "spiffe://trust.example/agent/b",
        ],
    );
    let o = txngate(&["inspect", &tok], None);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["header"]["typ"], "txntoken+jwt");
    assert_eq!(v["claims"]["act"]["sub"], "spiffe://trust.example/agent/a");
    assert_eq!(
        v["claims"]["act"]["act"]["sub"],
        "spiffe://trust.example/agent/b"
    );
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn policy_validate_points_at_the_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"trust_domain":"t","issuers":[{"name":"i","jwks_uri":"https://i/j","algorithms":["EdDSA","HS256"]}]}"#).unwrap();
    let o = txngate(&["policy", "validate", bad.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/issuers/0/algorithms/1"), "{err}");
    assert!(err.contains("HS256"), "{err}");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.json");
    let o = txngate(&["policy", "validate", example.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = txngate(
        &["check", "--policy", bad.to_str().unwrap(), "--token", "x"],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
}

/// The fully specified and the new algorithms sign tokens whose header names the key's one algorithm; a
/// token naming the other name of the same Ed25519 key is refused (one name per key).
#[test]
fn ed25519_and_es384_tokens() {
    let s = Setup::new("Ed25519");
    let tok = s.mint(&claims(), &[]);
    let header: Value = serde_json::from_slice(
        &txngate_core::encoding::decode_b64url(tok.split('.').next().unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "Ed25519");
    let renamed = s.mint(&claims(), &["--header", r#"{"alg":"EdDSA"}"#]);
    let (code, out) = s.check(&renamed, CALL, &[]);
    assert_eq!(
        (code, out["decision"]["reason"].as_str()),
        (3, Some("token.alg_mismatch"))
    );

    let s = Setup::new("ES384");
    let tok = s.mint(&claims(), &[]);
    let signature = tok.rsplit('.').next().unwrap();
    assert_eq!(
        txngate_core::encoding::decode_b64url(signature)
            .unwrap()
            .len(),
        96
    );
    let (code, _) = s.check(&flip_char(&tok, tok.len() - 5), CALL, &[]);
    assert_eq!(code, 3);
}

/// `policy validate` exits 0 on a policy that loads, and prints its warnings (issuer without `iss`,
/// `mcp.resource_metadata`).
#[test]
fn policy_validate_prints_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.json");
    std::fs::write(&file, r#"{"trust_domain":"t","issuers":[{"name":"i","jwks_uri":"https://i/j"}],"mcp":{"resource_metadata":"https://gw/.well-known/oauth-protected-resource"}}"#).unwrap();
    let o = txngate(&["policy", "validate", file.to_str().unwrap()], None);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("warning: policy: at /issuers/0:"), "{err}");
    assert!(
        err.contains("at /mcp/resource_metadata: no longer advertised"),
        "{err}"
    );
    assert!(stdout(&o).contains("ok (2 warnings)"), "{}", stdout(&o));
    std::fs::write(&file, r#"{"trust_domain":"t","issuers":[{"name":"i","iss":"https://i","jwks_uri":"https://i/j"}]}"#).unwrap();
    let o = txngate(&["policy", "validate", file.to_str().unwrap()], None);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).is_empty());
    assert!(stdout(&o).trim().ends_with(": ok"));
}

#[test]
fn schema_is_printed() {
    let o = txngate(&["policy", "schema"], None);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v["properties"]["trust_domain"].is_object());
}

/// `check` prints JSON for scripts: with `--json`, and without it whenever standard output is a pipe (as here).
/// On a terminal it prints one human line instead; a pseudo-terminal from util-linux `script` shows it when that
/// tool is installed.
#[test]
fn check_prints_json_to_scripts_and_one_line_to_a_terminal() {
    let s = Setup::new("EdDSA");
    let tok = s.mint(&claims(), &["--act", "spiffe://trust.example/agent/mailer"]);
    for extra in [&[][..], &["--json"][..]] {
        let (code, out) = s.check(&tok, CALL, extra);
        assert_eq!(code, 0, "{extra:?}: {out}");
        assert_eq!(out["decision"]["verdict"], "allow", "{extra:?}");
    }
    let help = stdout(&txngate(&["check", "--help"], None));
    assert!(
        help.contains("--json") && help.contains("not a terminal"),
        "{help}"
    );

    let script = Path::new("/usr/bin/script");
    if !script.exists() {
        eprintln!(
            "no /usr/bin/script: the terminal line is covered by the unit tests of cli/src/human.rs only"
        );
        return;
    }
    let body = s.path("call.json");
    std::fs::write(&body, CALL).unwrap();
    let command = format!(
        "{} check --policy {} --token {tok} --body-file {body} --now {NOW}",
        env!("CARGO_BIN_EXE_txngate"),
        s.path("policy.json"),
    );
    let o = Command::new(script)
        .args(["-qec", &command, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&o.stdout).replace('\r', "");
    assert_eq!(
        shown.trim_end(),
        "allow 200 allow — agent spiffe://trust.example/agent/mailer for user:alice, tools/call send_email, 1 of 2 left",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

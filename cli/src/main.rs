//! `txngate`: development keys and tokens, offline decisions with the same core every edge runs, and policy
//! validation.

mod human;
mod keyfile;

use std::fs;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Map, Value};
use txngate_core::encoding::{decode_b64url, encode_b64url, sha256_hex};
use txngate_core::ratelimit::MemoryStore;
use txngate_core::{Algorithm, Body, Gate, Policy, Request, Verdict};

#[derive(Parser)]
#[command(
    name = "txngate",
    version,
    about = "Transaction Tokens for AI agents at every edge"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a development signing key: DIR/private.jwk and DIR/jwks.json.
    Keygen {
        #[arg(long, value_enum)]
        alg: AlgArg,
        #[arg(long)]
        kid: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a Txn-Token with a development key (a development issuer: not a Transaction Token Service).
    Mint {
        #[arg(long)]
        key: PathBuf,
        /// Claims as a JSON file, or - for standard input.
        #[arg(long)]
        claims: String,
        /// An actor, outermost first: the first --act is the agent making the call, later ones delegated to it.
        #[arg(long = "act")]
        act: Vec<String>,
        /// Lifetime in seconds when the claims have no exp.
        #[arg(long, default_value_t = 60)]
        ttl: i64,
        /// Unix time to use instead of the clock.
        #[arg(long)]
        now: Option<i64>,
        /// JSON object merged into the JOSE header (tests of refusals: {"typ":"JWT"}; null removes a member).
        #[arg(long)]
        header: Option<String>,
    },
    /// Show a token's header and claims, untrusted, and its SHA-256.
    Inspect {
        /// The token, or - for standard input.
        token: String,
    },
    /// Decide one request offline with the same core every edge runs. Exit 0 allow, 3 deny, 1 error.
    ///
    /// Prints one line per decision. On a terminal: verdict, status, reason and what explains it (the
    /// refusal's detail, or the agent, the call and the budget left). With --json, or when standard output is
    /// not a terminal (a pipe, a file), one JSON object instead: the decision and the audit record.
    Check {
        /// Print JSON (the decision and the audit record) even on a terminal.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        policy: PathBuf,
        #[arg(long, conflicts_with = "token_file")]
        token: Option<String>,
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[arg(long, default_value = "POST")]
        method: String,
        #[arg(long, default_value = "/mcp")]
        path: String,
        #[arg(long, conflicts_with = "body")]
        body_file: Option<PathBuf>,
        /// The request body inline.
        #[arg(long)]
        body: Option<String>,
        /// Extra request header, `Name: value` (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// The peer's verified identity (mTLS SPIFFE ID).
        #[arg(long)]
        peer: Option<String>,
        /// Unix time in seconds (default: the clock).
        #[arg(long)]
        now: Option<u64>,
        /// Decide the same request N times against one in-memory rate-limit store; prints one line each.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Compile a policy; exit 1 with the JSON path of the first fault. Warnings (the policy loads but says
    /// something it probably should not) are printed on standard error, exit 0.
    Validate { file: PathBuf },
    /// Print the policy JSON Schema.
    Schema,
}

#[derive(Clone, Copy, ValueEnum)]
enum AlgArg {
    #[value(name = "EdDSA")]
    EdDsa,
    /// RFC 9864's fully specified name for Ed25519 signatures.
    #[value(name = "Ed25519")]
    Ed25519,
    #[value(name = "ES256")]
    Es256,
    #[value(name = "ES384")]
    Es384,
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "PS256")]
    Ps256,
}

impl From<AlgArg> for Algorithm {
    fn from(a: AlgArg) -> Self {
        match a {
            AlgArg::EdDsa => Self::EdDSA,
            AlgArg::Ed25519 => Self::Ed25519,
            AlgArg::Es256 => Self::ES256,
            AlgArg::Es384 => Self::ES384,
            AlgArg::Rs256 => Self::RS256,
            AlgArg::Ps256 => Self::PS256,
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("txngate: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Keygen { alg, kid, out } => keygen(alg.into(), &kid, &out),
        Command::Mint {
            key,
            claims,
            act,
            ttl,
            now,
            header,
        } => mint(&key, &claims, &act, ttl, now, header.as_deref()),
        Command::Inspect { token } => inspect(&token),
        Command::Check {
            policy,
            token,
            token_file,
            method,
            path,
            body_file,
            body,
            headers,
            peer,
            now,
            repeat,
            json,
        } => {
            let token = match (token, token_file) {
                (Some(t), _) => Some(t),
                (None, Some(f)) => Some(read_text(&f)?.trim().to_string()),
                (None, None) => None,
            };
            let body = match (body, body_file) {
                (Some(b), _) => Some(b.into_bytes()),
                (None, Some(f)) => {
                    Some(fs::read(&f).with_context(|| format!("reading {}", f.display()))?)
                }
                (None, None) => None,
            };
            let input = CheckInput {
                token,
                method,
                path,
                body,
                headers,
                peer,
                now,
                repeat,
                json: human::wants_json(json, std::io::stdout().is_terminal()),
            };
            check(&policy, &input)
        }
        Command::Policy {
            command: PolicyCommand::Validate { file },
        } => {
            let bytes = fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            match Policy::from_json(&bytes) {
                Ok(policy) => {
                    let warnings = policy.warnings();
                    for w in &warnings {
                        eprintln!("{}: warning: {w}", file.display());
                    }
                    match warnings.len() {
                        0 => println!("{}: ok", file.display()),
                        n => println!(
                            "{}: ok ({n} warning{})",
                            file.display(),
                            if n == 1 { "" } else { "s" }
                        ),
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Policy {
            command: PolicyCommand::Schema,
        } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&txngate_core::policy::json_schema())?
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn read_arg_or_stdin(arg: &str) -> Result<String> {
    if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        Ok(s)
    } else {
        read_text(Path::new(arg))
    }
}

fn unix_now() -> Result<u64> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| anyhow!("clock before 1970"))?
        .as_secs())
}

fn keygen(alg: Algorithm, kid: &str, out: &Path) -> Result<ExitCode> {
    let (private, jwks) = keyfile::generate(alg, kid)?;
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let private_path = out.join("private.jwk");
    write_private(&private_path, &serde_json::to_string_pretty(&private)?)?;
    record_secret("private_key", &serde_json::to_string(&private)?)?;
    fs::write(
        out.join("jwks.json"),
        serde_json::to_string_pretty(&jwks)? + "\n",
    )?;
    eprintln!(
        "wrote {} and {} ({alg}, kid {kid:?})",
        private_path.display(),
        out.join("jwks.json").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Test support: with `TXNGATE_SECRET_LEDGER` set, every minted token and generated private key is appended
/// (one JSON line each) to that file, so a test run can prove none of them ever reached a log
/// (tests/secrets/scan.py).
fn record_secret(kind: &str, value: &str) -> Result<()> {
    use std::io::Write;
    let Some(path) = std::env::var_os("TXNGATE_SECRET_LEDGER") else {
        return Ok(());
    };
    let line = serde_json::to_string(&serde_json::json!({ "kind": kind, "value": value }))?;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening the secret ledger {}", Path::new(&path).display()))?;
    f.write_all(format!("{line}\n").as_bytes())?;
    Ok(())
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> Result<()> {
    fs::write(path, format!("{text}\n"))?;
    Ok(())
}

fn mint(
    key: &Path,
    claims_arg: &str,
    act: &[String],
    ttl: i64,
    now: Option<i64>,
    header: Option<&str>,
) -> Result<ExitCode> {
    let key = keyfile::read_private(&read_text(key)?)?;
    let mut claims: Map<String, Value> = match serde_json::from_str(&read_arg_or_stdin(claims_arg)?)
        .context("claims are not JSON")?
    {
        Value::Object(m) => m,
        _ => bail!("claims must be a JSON object"),
    };
    let now = match now {
        Some(n) => n,
        None => i64::try_from(unix_now()?)?,
    };
    claims.entry("iat").or_insert_with(|| now.into());
    claims.entry("exp").or_insert_with(|| (now + ttl).into());
    claims.entry("txn").or_insert_with(|| random_txn().into());
    if !act.is_empty() {
        let mut nested: Option<Value> = None;
        for actor in act.iter().rev() {
            let mut a = Map::new();
            a.insert("sub".into(), actor.clone().into());
            if let Some(inner) = nested.take() {
                a.insert("act".into(), inner);
            }
            nested = Some(Value::Object(a));
        }
        if let Some(chain) = nested {
            claims.insert("act".into(), chain);
        }
    }
    let mut jose = Map::new();
    jose.insert("alg".into(), key.alg.name().into());
    jose.insert("typ".into(), "txntoken+jwt".into());
    if let Some(kid) = &key.kid {
        jose.insert("kid".into(), kid.clone().into());
    }
    if let Some(extra) = header {
        let Value::Object(extra) = serde_json::from_str(extra).context("--header is not JSON")?
        else {
            bail!("--header must be a JSON object");
        };
        for (k, v) in extra {
            if v.is_null() {
                jose.remove(&k);
            } else {
                jose.insert(k, v);
            }
        }
    }
    let signing_input = format!(
        "{}.{}",
        encode_b64url(&serde_json::to_vec(&Value::Object(jose))?),
        encode_b64url(&serde_json::to_vec(&Value::Object(claims))?)
    );
    let signature = key.sign(signing_input.as_bytes());
    let token = format!("{signing_input}.{}", encode_b64url(&signature));
    record_secret("token", &token)?;
    println!("{token}");
    eprintln!("txngate mint: development issuer; production tokens come from your Transaction Token Service");
    Ok(ExitCode::SUCCESS)
}

fn random_txn() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = |r: std::ops::Range<usize>| {
        b.get(r)
            .unwrap_or_default()
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    };
    format!(
        "{}-{}-{}-{}-{}",
        hex(0..4),
        hex(4..6),
        hex(6..8),
        hex(8..10),
        hex(10..16)
    )
}

fn inspect(arg: &str) -> Result<ExitCode> {
    let token = if arg == "-" {
        read_arg_or_stdin("-")?.trim().to_string()
    } else {
        arg.to_string()
    };
    let mut parts = token.split('.');
    let decode = |part: Option<&str>, what: &str| -> Result<Value> {
        let bytes = part
            .and_then(decode_b64url)
            .ok_or_else(|| anyhow!("{what} is not base64url"))?;
        serde_json::from_slice(&bytes).with_context(|| format!("{what} is not JSON"))
    };
    let header = decode(parts.next(), "header")?;
    let claims = decode(parts.next(), "payload")?;
    let out = json!({
        "untrusted": "signature NOT verified; use `txngate check` to decide",
        "header": header,
        "claims": claims,
        "sha256": sha256_hex(token.as_bytes()),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

struct CheckInput {
    token: Option<String>,
    method: String,
    path: String,
    body: Option<Vec<u8>>,
    headers: Vec<String>,
    peer: Option<String>,
    now: Option<u64>,
    repeat: u32,
    /// JSON lines for scripts rather than human lines.
    json: bool,
}

fn check(policy_path: &Path, input: &CheckInput) -> Result<ExitCode> {
    let bytes =
        fs::read(policy_path).with_context(|| format!("reading {}", policy_path.display()))?;
    let mut gate =
        Gate::from_json(&bytes).map_err(|e| anyhow!("{}: {e}", policy_path.display()))?;
    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(token) = &input.token {
        headers.push((gate.policy().token.header.clone(), token.clone()));
    }
    for h in &input.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("--header {h:?}: expected `Name: value`"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let now_ms = input.now.map_or_else(unix_now, Ok)? * 1000;
    let body = match &input.body {
        Some(b) if b.len() > gate.max_body_bytes() => Body::TooLarge,
        Some(b) => Body::Complete(b),
        None => Body::Absent,
    };
    let request = Request {
        method: &input.method,
        path: &input.path,
        headers: &headers,
        body,
        peer: input.peer.as_deref(),
    };
    let mut store = MemoryStore::new();
    let mut last = Verdict::Deny;
    for _ in 0..input.repeat.max(1) {
        let outcome = gate.decide(&request, now_ms, &mut store);
        let d = &outcome.decision;
        last = d.verdict;
        let headers_obj = |h: &[(String, String)]| {
            Value::Object(
                h.iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            )
        };
        let out = json!({
            "decision": {
                "verdict": if d.is_allowed() { "allow" } else { "deny" },
                "status": d.status,
                "reason": d.reason,
                "response_headers": headers_obj(&d.response_headers),
                "upstream_headers": headers_obj(&d.upstream_headers),
                "body": d.body.as_deref().map(|b| serde_json::from_str::<Value>(b).unwrap_or_else(|_| Value::String(b.to_string()))),
            },
            "audit": serde_json::to_value(&outcome.audit)?,
        });
        if input.json {
            println!("{out}");
        } else {
            println!("{}", human::line(&out));
        }
    }
    Ok(if last == Verdict::Allow {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

//! `txngate wimse`: DEVELOPMENT-ONLY Workload Identity Tokens and Workload Proof Tokens, so the demo and the
//! tests can show a bound call. A real WIT comes from your trust domain's Identity Server (SPIFFE/SPIRE, ...);
//! a real WPT is signed by the workload itself, per request, with a key that never leaves it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use rsa::traits::PublicKeyParts;
use serde_json::{Map, Value};
use txngate_core::encoding::encode_b64url;
use txngate_core::wimse::{token_hash, WIT_TYP, WPT_TYP};

use crate::keyfile::{self, PrivateJwk, SigningKey};

const WARNING: &str = "txngate wimse: DEVELOPMENT ONLY; real WITs come from your trust domain's Identity Server and real WPTs are signed by the workload per request";

#[derive(Subcommand)]
pub enum WimseCommand {
    /// Issue a development Workload Identity Token (WIT) binding a workload identifier to a workload's key.
    Wit {
        /// The development Identity Server's private JWK (`txngate keygen`); its public key goes in the
        /// policy's `wimse.trust_domains.<domain>.jwks`.
        #[arg(long)]
        key: PathBuf,
        /// The Workload Identifier (`spiffe://trust.example/agent/x`).
        #[arg(long)]
        sub: String,
        /// The workload's private JWK: its public part becomes `cnf.jwk` (with `alg`).
        #[arg(long)]
        workload_key: PathBuf,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
        #[arg(long)]
        iss: Option<String>,
        /// Unix time to use instead of the clock.
        #[arg(long)]
        now: Option<i64>,
        /// JSON object merged into the claims (null removes a claim).
        #[arg(long)]
        claims: Option<String>,
        /// JSON object merged into the JOSE header (null removes a member).
        #[arg(long)]
        header: Option<String>,
    },
    /// Sign a development Workload Proof Token (WPT) for one request with the workload's key.
    Wpt {
        /// The workload's private JWK (the key the WIT's `cnf.jwk` names).
        #[arg(long)]
        key: PathBuf,
        /// The WIT the proof accompanies (its hash is `wth`).
        #[arg(long)]
        wit: String,
        /// The request's target URI without query (`https://mcp.example.com/mcp`).
        #[arg(long)]
        aud: String,
        /// The request's Txn-Token (its hash is `tth`).
        #[arg(long)]
        txn_token: Option<String>,
        /// Unique per proof (default: 128 random bits).
        #[arg(long)]
        jti: Option<String>,
        /// Lifetime in seconds (proofs live seconds to minutes).
        #[arg(long, default_value_t = 30)]
        ttl: i64,
        #[arg(long)]
        now: Option<i64>,
        #[arg(long)]
        claims: Option<String>,
        #[arg(long)]
        header: Option<String>,
    },
}

pub fn run(command: WimseCommand) -> Result<ExitCode> {
    let token = match command {
        WimseCommand::Wit {
            key,
            sub,
            workload_key,
            ttl,
            iss,
            now,
            claims,
            header,
        } => {
            let issuer = read_key(&key)?;
            let workload = read_key(&workload_key)?;
            let now = now_or_clock(now)?;
            let mut c = Map::new();
            if let Some(iss) = iss {
                c.insert("iss".into(), iss.into());
            }
            c.insert("sub".into(), sub.into());
            c.insert("iat".into(), now.into());
            c.insert("exp".into(), (now + ttl).into());
            c.insert("jti".into(), random_id().into());
            let mut cnf = Map::new();
            cnf.insert("jwk".into(), public_jwk(&workload));
            c.insert("cnf".into(), Value::Object(cnf));
            sign(&issuer, WIT_TYP, c, claims.as_deref(), header.as_deref())?
        }
        WimseCommand::Wpt {
            key,
            wit,
            aud,
            txn_token,
            jti,
            ttl,
            now,
            claims,
            header,
        } => {
            let workload = read_key(&key)?;
            let now = now_or_clock(now)?;
            let mut c = Map::new();
            c.insert("aud".into(), aud.into());
            c.insert("iat".into(), now.into());
            c.insert("exp".into(), (now + ttl).into());
            c.insert("jti".into(), jti.unwrap_or_else(random_id).into());
            c.insert("wth".into(), token_hash(wit.trim()).into());
            if let Some(t) = txn_token {
                c.insert("tth".into(), token_hash(t.trim()).into());
            }
            sign(&workload, WPT_TYP, c, claims.as_deref(), header.as_deref())?
        }
    };
    println!("{token}");
    eprintln!("{WARNING}");
    Ok(ExitCode::SUCCESS)
}

fn read_key(path: &std::path::Path) -> Result<PrivateJwk> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    keyfile::read_private(&text)
}

fn now_or_clock(now: Option<i64>) -> Result<i64> {
    match now {
        Some(n) => Ok(n),
        None => Ok(i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("clock before 1970")?
                .as_secs(),
        )?),
    }
}

fn random_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    encode_b64url(&b)
}

fn merge(into: &mut Map<String, Value>, patch: Option<&str>, what: &str) -> Result<()> {
    let Some(patch) = patch else { return Ok(()) };
    let Value::Object(patch) =
        serde_json::from_str(patch).with_context(|| format!("{what} is not JSON"))?
    else {
        bail!("{what} must be a JSON object");
    };
    for (k, v) in patch {
        if v.is_null() {
            into.remove(&k);
        } else {
            into.insert(k, v);
        }
    }
    Ok(())
}

fn sign(
    key: &PrivateJwk,
    typ: &str,
    mut claims: Map<String, Value>,
    claims_patch: Option<&str>,
    header_patch: Option<&str>,
) -> Result<String> {
    merge(&mut claims, claims_patch, "--claims")?;
    let mut jose = Map::new();
    jose.insert("alg".into(), key.alg.name().into());
    jose.insert("typ".into(), typ.into());
    if let Some(kid) = &key.kid {
        jose.insert("kid".into(), kid.clone().into());
    }
    merge(&mut jose, header_patch, "--header")?;
    let input = format!(
        "{}.{}",
        encode_b64url(&serde_json::to_vec(&Value::Object(jose))?),
        encode_b64url(&serde_json::to_vec(&Value::Object(claims))?)
    );
    let signature = key.sign(input.as_bytes());
    Ok(format!("{input}.{}", encode_b64url(&signature)))
}

/// An EC public key's members (uncompressed point coordinates; an absent one as empty).
fn insert_ec(jwk: &mut Map<String, Value>, crv: &str, x: Option<&[u8]>, y: Option<&[u8]>) {
    jwk.insert("kty".into(), "EC".into());
    jwk.insert("crv".into(), crv.into());
    jwk.insert("x".into(), encode_b64url(x.unwrap_or_default()).into());
    jwk.insert("y".into(), encode_b64url(y.unwrap_or_default()).into());
}

/// The public JWK of a private key, with the `alg` the WIT's `cnf.jwk` must carry.
fn public_jwk(key: &PrivateJwk) -> Value {
    let mut jwk = Map::new();
    match &key.key {
        SigningKey::Ed25519(sk) => {
            jwk.insert("kty".into(), "OKP".into());
            jwk.insert("crv".into(), "Ed25519".into());
            jwk.insert("x".into(), encode_b64url(sk.public_key().as_ref()).into());
        }
        SigningKey::P256(sk) => {
            let point = sk.verifying_key().to_encoded_point(false);
            insert_ec(
                &mut jwk,
                "P-256",
                point.x().map(|x| &x[..]),
                point.y().map(|y| &y[..]),
            );
        }
        SigningKey::P384(sk) => {
            let point = sk.verifying_key().to_encoded_point(false);
            insert_ec(
                &mut jwk,
                "P-384",
                point.x().map(|x| &x[..]),
                point.y().map(|y| &y[..]),
            );
        }
        SigningKey::Rsa(sk, _) => {
            let public = sk.as_ref().as_ref().to_public_key();
            jwk.insert("kty".into(), "RSA".into());
            jwk.insert("n".into(), encode_b64url(&public.n().to_bytes_be()).into());
            jwk.insert("e".into(), encode_b64url(&public.e().to_bytes_be()).into());
        }
    }
    jwk.insert("alg".into(), key.alg.name().into());
    Value::Object(jwk)
}

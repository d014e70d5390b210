//! `txngate-harness replay`: runs JSONL requests through a proxy-wasm filter without Envoy.

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use txngate_harness::{
    CallReply, Host, HostOptions, HttpCallResponse, HttpOutcome, HttpRequest, LogLevel,
    UpstreamResponse, VmOptions,
};

#[derive(Parser, Debug)]
#[command(
    name = "txngate-harness",
    version,
    about = "Run a proxy-wasm filter in a wasmtime host that mimics Envoy"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Replay JSONL requests through the filter; prints one JSON outcome per input line.
    ///
    /// Line fields: method (default GET), path (default /), headers ({..} or [[k,v],..]),
    /// body (string, JSON value or null), peer (mTLS URI SAN), source ("ip:port"),
    /// vm (index, default round-robin), advance_ms (advance the clock first and run due
    /// ticks), chunk_size (split the body), upstream ({status, headers, body, chunk_size};
    /// default: 200 JSON echo), http_calls ({cluster: {status, headers, body}}: answers to
    /// dispatch_http_call; calls to other clusters stay pending).
    Replay {
        /// The filter (.wasm).
        #[arg(long)]
        wasm: PathBuf,
        /// Plugin configuration file (given to on_configure).
        #[arg(long)]
        policy: PathBuf,
        /// JSONL requests ("-" for stdin).
        #[arg(long)]
        requests: PathBuf,
        /// Number of VMs (Envoy worker threads) sharing shared data.
        #[arg(long, default_value_t = 1)]
        vms: usize,
        /// Clock at start, ms since the Unix epoch (default: now).
        #[arg(long)]
        now_ms: Option<u64>,
        /// VM configuration file (given to on_vm_start).
        #[arg(long)]
        vm_config: Option<PathBuf>,
        /// Envoy's allow_on_headers_stop_iteration.
        #[arg(long)]
        allow_on_headers_stop_iteration: bool,
        /// Envoy's failure_policy FAIL_OPEN.
        #[arg(long)]
        fail_open: bool,
    },
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct UpstreamLine {
    #[serde(default = "default_status")]
    status: u16,
    #[serde(default)]
    headers: Option<Value>,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    chunk_size: Option<usize>,
}

fn default_status() -> u16 {
    200
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RequestLine {
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    headers: Option<Value>,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    peer: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    vm: Option<usize>,
    #[serde(default)]
    advance_ms: Option<u64>,
    #[serde(default)]
    chunk_size: Option<usize>,
    #[serde(default)]
    upstream: Option<UpstreamLine>,
    #[serde(default)]
    http_calls: Option<BTreeMap<String, UpstreamLine>>,
}

fn parse_headers(v: &Option<Value>) -> Result<Vec<(String, String)>> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(map)) => Ok(map.iter().map(|(k, v)| (k.clone(), text(v))).collect()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item.as_array().map(Vec::as_slice) {
                Some([k, v]) => Ok((text(k), text(v))),
                _ => bail!("header entries must be [name, value] pairs, got {item}"),
            })
            .collect(),
        Some(other) => bail!("headers must be an object or a list of pairs, got {other}"),
    }
}

/// Body bytes and whether it is JSON (a non-string JSON value).
fn parse_body(v: &Option<Value>) -> (Option<Vec<u8>>, bool) {
    match v {
        None | Some(Value::Null) => (None, false),
        Some(Value::String(s)) => (Some(s.clone().into_bytes()), false),
        Some(other) => (Some(other.to_string().into_bytes()), true),
    }
}

fn has(headers: &[(String, String)], name: &str) -> bool {
    headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name))
}

fn upstream_response(u: &UpstreamLine) -> Result<UpstreamResponse> {
    let headers = parse_headers(&u.headers)?;
    let (body, is_json) = parse_body(&u.body);
    let mut r = UpstreamResponse::new(u.status);
    for (k, v) in &headers {
        r = r.header(k, v);
    }
    if is_json && !has(&headers, "content-type") {
        r = r.header("content-type", "application/json");
    }
    if let Some(body) = body {
        r = if has(&headers, "content-length") {
            r.body(body)
        } else {
            r.body_with_length(body)
        };
    }
    if let Some(size) = u.chunk_size {
        r = r.chunked(size);
    }
    Ok(r)
}

fn call_response(u: &UpstreamLine) -> Result<HttpCallResponse> {
    let mut r = HttpCallResponse::new(u.status);
    for (k, v) in parse_headers(&u.headers)? {
        r = r.header(&k, &v);
    }
    let (body, _) = parse_body(&u.body);
    Ok(r.body(body.unwrap_or_default()))
}

fn build_request(line: &RequestLine) -> Result<HttpRequest> {
    let method = line.method.clone().unwrap_or_else(|| "GET".to_string());
    let path = line.path.clone().unwrap_or_else(|| "/".to_string());
    let mut req = HttpRequest::new(&method, &path);
    let headers = parse_headers(&line.headers)?;
    for (k, v) in &headers {
        req = req.header(k, v);
    }
    let (body, is_json) = parse_body(&line.body);
    if let Some(body) = body {
        if is_json && !has(&headers, "content-type") {
            req = req.header("content-type", "application/json");
        }
        req = req.body(body);
    }
    if let Some(size) = line.chunk_size {
        req = req.chunked(size);
    }
    if let Some(peer) = &line.peer {
        req = req.peer(peer);
    }
    if let Some(source) = &line.source {
        req = req.source(source);
    }
    if let Some(u) = &line.upstream {
        req = req.upstream(upstream_response(u)?);
    }
    if let Some(calls) = &line.http_calls {
        let mut answers = BTreeMap::new();
        for (cluster, u) in calls {
            answers.insert(cluster.clone(), call_response(u)?);
        }
        req = req.responder(move |call| match answers.get(&call.cluster) {
            Some(r) => CallReply::Respond(r.clone()),
            None => CallReply::Pending,
        });
    }
    Ok(req)
}

fn outcome_json(line_no: usize, o: &HttpOutcome) -> Value {
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let logs: Vec<String> = o
        .logs
        .iter()
        .filter(|l| l.level >= LogLevel::Info)
        .map(ToString::to_string)
        .collect();
    json!({
        "line": line_no,
        "vm": o.vm,
        "status": o.status(),
        "local_reply": o.local_reply.as_ref().map(|r| json!({
            "status": r.status,
            "headers": r.headers,
            "body": lossy(&r.body),
        })),
        "forwarded": o.forwarded.as_ref().map(|f| json!({
            "headers": f.headers,
            "body": lossy(&f.body),
            "complete": f.complete,
        })),
        "response": o.response.as_ref().map(|r| json!({
            "headers": r.headers,
            "body": lossy(&r.body),
            "complete": r.complete,
        })),
        "logs": logs,
        "http_calls": o.http_calls.iter().map(|c| json!({
            "token": c.token,
            "cluster": c.cluster,
            "headers": c.headers,
            "body": c.body_str(),
            "state": c.state,
        })).collect::<Vec<_>>(),
        "properties_set": o.properties_set,
        "stalled": o.stalled,
        "stall_reason": o.stall_reason,
        "trapped": o.trapped,
        "vm_failed": o.vm_failed,
    })
}

#[allow(clippy::too_many_arguments)]
fn replay(
    wasm: PathBuf,
    policy: PathBuf,
    requests: PathBuf,
    vms: usize,
    now_ms: Option<u64>,
    vm_config: Option<PathBuf>,
    allow_stop: bool,
    fail_open: bool,
) -> Result<()> {
    if vms == 0 {
        bail!("--vms must be at least 1");
    }
    let policy_bytes =
        std::fs::read(&policy).with_context(|| format!("reading {}", policy.display()))?;
    let vm_config_bytes = match &vm_config {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        None => Vec::new(),
    };
    let options = HostOptions {
        start_time_ms: now_ms,
        ..HostOptions::default()
    };
    let host = Host::from_file_with(&wasm, options)?;
    let mut pool = Vec::with_capacity(vms);
    for i in 0..vms {
        let opts = VmOptions::new(policy_bytes.clone())
            .vm_config(vm_config_bytes.clone())
            .allow_on_headers_stop_iteration(allow_stop)
            .fail_open(fail_open);
        pool.push(
            host.vm_with(opts)
                .with_context(|| format!("starting VM {i}"))?,
        );
    }
    let input: Box<dyn std::io::Read> = if requests.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(&requests)
                .with_context(|| format!("opening {}", requests.display()))?,
        )
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut next = 0usize;
    for (i, line) in BufReader::new(input).lines().enumerate() {
        let line_no = i + 1;
        let line = line.with_context(|| format!("reading line {line_no}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: RequestLine = serde_json::from_str(&line)
            .with_context(|| format!("{}:{line_no}: invalid request line", requests.display()))?;
        if let Some(ms) = parsed.advance_ms {
            host.advance_ms(ms);
            for vm in pool.iter_mut() {
                vm.run_due_ticks();
            }
        }
        let index = match parsed.vm {
            Some(v) if v < vms => v,
            Some(v) => bail!("line {line_no}: vm {v} out of range (--vms {vms})"),
            None => {
                let v = next % vms;
                next += 1;
                v
            }
        };
        let req = build_request(&parsed).with_context(|| format!("line {line_no}"))?;
        let Some(vm) = pool.get_mut(index) else {
            bail!("line {line_no}: no VM {index}");
        };
        let outcome = vm.http(req);
        writeln!(out, "{}", outcome_json(line_no, &outcome))?;
    }
    out.flush()?;
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Replay {
            wasm,
            policy,
            requests,
            vms,
            now_ms,
            vm_config,
            allow_on_headers_stop_iteration,
            fail_open,
        } => replay(
            wasm,
            policy,
            requests,
            vms,
            now_ms,
            vm_config,
            allow_on_headers_stop_iteration,
            fail_open,
        ),
    }
}

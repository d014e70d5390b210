//! Shared pieces of the filter's harness tests (tests/tests/filter_*.rs): the built filter, a host over it,
//! the test policy, MCP request builders, and the pre-minted tokens of `tokens.rs`.
#![allow(dead_code)]

pub mod tokens;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{json, Value};
use txngate_harness::{
    cargo_build, Host, HostOptions, HttpOutcome, HttpRequest, LogLevel, Vm, VmOptions,
};

/// The harness clock at start: the second the tokens were issued.
pub const START_MS: u64 = tokens::ISSUED_AT_S * 1000;
pub const AGENT: &str = "spiffe://trust.example/agent/";

/// The release filter: `$TXNGATE_FILTER_WASM` when set, else built once per test binary (cargo makes later
/// builds no-ops) into its own target directory.
pub fn filter_wasm() -> &'static Path {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| {
        if let Some(path) = std::env::var_os("TXNGATE_FILTER_WASM") {
            return PathBuf::from(path);
        }
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../filters/Cargo.toml");
        let target = cargo_build::target_dir().join("txngate-filter");
        cargo_build::build_wasm_crate(&manifest, &target).expect("building the txngate filter")
    })
}

/// A host over the filter with its own world (clock at [`START_MS`], empty shared data); the compilation is
/// shared by the tests of one binary.
pub fn host() -> Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let options = HostOptions {
            vm_id: "txngate".into(),
            root_id: "txngate".into(),
            start_time_ms: Some(START_MS),
            ..HostOptions::default()
        };
        Host::from_file_with(filter_wasm(), options).expect("loading the txngate filter")
    })
    .with_fresh_state()
}

/// A VM (one Envoy worker) in the strict mode: `allow_on_headers_stop_iteration` and the filter's
/// `"pause_at_headers": true` (unless the policy sets that key itself). The body-holding mode's tests
/// (filter_hold.rs) use [`hold_vm`].
pub fn vm(host: &Host, policy: &Value) -> Vm {
    let mut config = policy.clone();
    if let Some(doc) = config.as_object_mut() {
        doc.entry("pause_at_headers").or_insert(Value::Bool(true));
    }
    host.vm_with(VmOptions::new(config.to_string()).allow_on_headers_stop_iteration(true))
        .unwrap_or_else(|e| panic!("the filter refused the policy: {e}"))
}

/// Asserts that the filter refuses `config` at `on_configure` with a plugin message starting with `prefix`.
pub fn assert_refused_at_configure(host: &Host, config: &Value, prefix: &str) {
    let err = host
        .vm(config.to_string())
        .unwrap_err()
        .downcast::<txngate_harness::StartError>()
        .unwrap();
    assert_eq!(err.stage, "on_configure", "{config}");
    assert!(
        err.plugin_messages().iter().any(|m| m.starts_with(prefix)),
        "{config}: {:?}",
        err.plugin_messages()
    );
}

/// A VM configured the way Istio's `WasmPlugin` configures Envoy: the policy as the plugin configuration and
/// nothing else, no `allow_on_headers_stop_iteration`.
pub fn hold_vm(host: &Host, policy: &Value) -> Vm {
    host.vm_with(VmOptions::new(policy.to_string()))
        .unwrap_or_else(|e| panic!("the filter refused the policy: {e}"))
}

pub fn inline_issuer() -> Value {
    json!({"name": "tts", "jwks": serde_json::from_str::<Value>(tokens::JWKS_K1).unwrap(), "algorithms": ["EdDSA"]})
}

/// The test policy (same shape as tests/e2e/test_envoy.py's).
pub fn policy() -> Value {
    json!({
        "trust_domain": "trust.example",
        "issuers": [inline_issuer()],
        "agents": {"spiffe://trust.example/agent/*": {"max_scopes": ["calendar:*", "email:send", "web:search"]}},
        "mcp": {"path_prefix": "/mcp", "max_body_bytes": 4096},
        "tools": {
            "send_email": {
                "scopes": ["email:send"],
                "constraints": [{"argument": "/to", "claim": "/tctx/recipient"}],
                "rate_limit": {"key": "agent", "limit": 10, "period_seconds": 60}
            },
            "calendar_read": {"scopes": ["calendar:read"]},
            "calendar_write": {"scopes": ["calendar:write"]},
            "search_web": {"scopes": ["web:search"], "rate_limit": {"key": "agent", "limit": 1, "period_seconds": 60}},
            "*": {"effect": "deny"}
        }
    })
}

pub fn tools_call(name: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": name, "arguments": arguments}})
}

pub fn email_args() -> Value {
    json!({"to": "bob@example.com", "subject": "hi", "body": "hello"})
}

/// A POST to the MCP endpoint carrying `token`.
pub fn mcp(token: &str, body: &Value) -> HttpRequest {
    HttpRequest::post("/mcp")
        .header("txn-token", token)
        .header("accept", "application/json, text/event-stream")
        .json(body)
}

/// The shared-data key of the rate-limit store's creation lock (filters/src/store.rs).
pub const LOCK_KEY: &str = "txngate:rl:create-lock";

/// A `tools/call` of `search_web`, the test policy's rate-limited tool.
pub fn search(vm: &mut Vm, token: &str) -> HttpOutcome {
    vm.http(mcp(token, &tools_call("search_web", json!({"query": "q"}))))
}

/// The audit records (JSON lines at info level) of a stream.
pub fn audit(outcome: &HttpOutcome) -> Vec<Value> {
    outcome
        .plugin_logs(LogLevel::Info)
        .into_iter()
        .filter(|m| m.starts_with('{'))
        .map(|m| serde_json::from_str(m).unwrap())
        .collect()
}

/// The JSON-RPC error of a refused stream.
pub fn rpc_error(outcome: &HttpOutcome) -> Value {
    let body = outcome
        .body_json()
        .unwrap_or_else(|| panic!("no JSON body: {:?}", outcome.body_str()));
    body["error"].clone()
}

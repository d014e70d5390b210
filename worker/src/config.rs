//! Per-isolate configuration: the policy compiled once (from the `TXNGATE_POLICY` var or secret), the
//! origin, the limiter mode. A configuration that does not load is kept as its error, so every request of
//! that isolate fails closed (500) with the precise message in the log and never reaches the origin.

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::Reflect;
use txngate_core::Gate;
use wasm_bindgen::{JsCast, JsValue};
use worker::Env;

pub const POLICY_VAR: &str = "TXNGATE_POLICY";
pub const ORIGIN_VAR: &str = "ORIGIN_URL";
pub const LIMITER_MODE_VAR: &str = "TXNGATE_LIMITER_MODE";
pub const LIMITER_TIMEOUT_VAR: &str = "TXNGATE_LIMITER_TIMEOUT_MS";
pub const ORIGIN_TIMEOUT_VAR: &str = "TXNGATE_ORIGIN_TIMEOUT_MS";

/// The core's defaults for the two timeouts (why these values: see there).
pub use txngate_core::host::{DEFAULT_LIMITER_TIMEOUT_MS, DEFAULT_ORIGIN_TIMEOUT_MS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimiterMode {
    /// One Durable Object per bucket: global and exact (default).
    Exact,
    /// The Workers Rate Limiting binding: per location, approximate, periods 10/60 s only.
    Approximate,
}

/// Everything one isolate keeps between requests.
pub struct Config {
    pub gate: RefCell<Gate>,
    /// Scheme, host, port and optional base path of the origin, without a trailing slash.
    pub origin: String,
    pub limiter: LimiterMode,
    /// Bound on one Durable Object exchange (request, answer, body), ms.
    pub limiter_timeout_ms: u32,
    /// Bound on the origin's response headers, ms.
    pub origin_timeout_ms: u32,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("origin", &self.origin)
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

thread_local! {
    static LOADED: RefCell<Option<Result<Rc<Config>, Rc<str>>>> = const { RefCell::new(None) };
}

/// The configuration, if it loaded.
pub fn loaded() -> Option<Rc<Config>> {
    LOADED.with(|l| l.borrow().clone()?.ok())
}

/// What [`load`] kept (the configuration or its error), or `None` before the first load.
pub fn current() -> Option<Result<Rc<Config>, Rc<str>>> {
    LOADED.with(|l| l.borrow().clone())
}

/// The isolate's configuration, loading it on first use.
pub fn load(env: &Env) -> Result<Rc<Config>, Rc<str>> {
    if let Some(loaded) = LOADED.with(|l| l.borrow().clone()) {
        return loaded;
    }
    let loaded = build(env).map(Rc::new).map_err(Rc::<str>::from);
    if let Err(message) = &loaded {
        worker::console_error!(
            "{}",
            serde_json::json!({"txngate": "config.invalid", "detail": &**message})
        );
    }
    LOADED.with(|l| *l.borrow_mut() = Some(loaded.clone()));
    loaded
}

fn build(env: &Env) -> Result<Config, String> {
    let policy = policy_text(env)?;
    let gate = Gate::from_json(policy.as_bytes()).map_err(|e| e.to_string())?;
    let origin = origin(env)?;
    let limiter = match string_var(env, LIMITER_MODE_VAR)?.as_deref().map(str::trim) {
        None | Some("" | "exact") => LimiterMode::Exact,
        Some("approximate") => LimiterMode::Approximate,
        Some(other) => {
            return Err(format!(
                "config: {LIMITER_MODE_VAR} is {other:?}; expected \"exact\" or \"approximate\""
            ))
        }
    };
    let limiter_timeout_ms = millis_var(env, LIMITER_TIMEOUT_VAR, DEFAULT_LIMITER_TIMEOUT_MS)?;
    let origin_timeout_ms = millis_var(env, ORIGIN_TIMEOUT_VAR, DEFAULT_ORIGIN_TIMEOUT_MS)?;
    Ok(Config {
        gate: RefCell::new(gate),
        origin,
        limiter,
        limiter_timeout_ms,
        origin_timeout_ms,
    })
}

fn binding(env: &Env, name: &str) -> Result<Option<JsValue>, String> {
    let value = Reflect::get(env, &JsValue::from_str(name))
        .map_err(|_| format!("config: cannot read binding {name}"))?;
    Ok((!value.is_undefined() && !value.is_null()).then_some(value))
}

fn string_var(env: &Env, name: &str) -> Result<Option<String>, String> {
    match binding(env, name)? {
        None => Ok(None),
        Some(v) => v
            .as_string()
            .map(Some)
            .ok_or_else(|| format!("config: {name} must be a string")),
    }
}

/// A timeout in milliseconds as the core reads one (`host::parse_timeout_ms`), or the default when unset.
/// Anything else is a configuration error (fail closed), not a silent fallback to the default.
fn millis_var(env: &Env, name: &str, default: u32) -> Result<u32, String> {
    let Some(raw) = string_var(env, name)? else {
        return Ok(default);
    };
    txngate_core::host::parse_timeout_ms(&raw).ok_or_else(|| {
        format!(
            "config: {name} is {raw:?}; expected milliseconds from 1 to {}",
            txngate_core::host::MAX_TIMEOUT_SETTING_MS
        )
    })
}

/// The policy JSON: a string var or secret, or (wrangler `[vars]` table) an object.
fn policy_text(env: &Env) -> Result<String, String> {
    let value = binding(env, POLICY_VAR)?.ok_or_else(|| {
        format!("config: {POLICY_VAR} is not set (a var or secret holding the policy JSON)")
    })?;
    if let Some(text) = value.as_string() {
        return Ok(text);
    }
    js_sys::JSON::stringify(&value)
        .ok()
        .and_then(|s| s.as_string())
        .ok_or_else(|| format!("config: {POLICY_VAR} is neither a JSON string nor an object"))
}

fn origin(env: &Env) -> Result<String, String> {
    let raw =
        string_var(env, ORIGIN_VAR)?.ok_or_else(|| format!("config: {ORIGIN_VAR} is not set"))?;
    // The runtime's WHATWG URL parser, not the `url` crate: same parse, and its IDNA tables stay out of the
    // bundle (≈ 10 KB gzipped).
    let url = web_sys::Url::new(raw.trim()).map_err(|e| {
        let reason = e
            .dyn_ref::<js_sys::Error>()
            .map(|e| String::from(e.message()))
            .unwrap_or_else(|| "invalid URL".to_string());
        format!("config: {ORIGIN_VAR} {raw:?} is not a URL: {reason}")
    })?;
    if !matches!(url.protocol().as_str(), "http:" | "https:") || url.hostname().is_empty() {
        return Err(format!(
            "config: {ORIGIN_VAR} {raw:?} must be an http(s) URL with a host"
        ));
    }
    // `search` and `hash` are empty for a bare "?" or "#" too; the serialised form keeps them.
    let href = url.href();
    if href.contains(['?', '#']) {
        return Err(format!(
            "config: {ORIGIN_VAR} {raw:?} must not have a query or fragment"
        ));
    }
    Ok(href.trim_end_matches('/').to_string())
}

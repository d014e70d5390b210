//! JWKS for `jwks_uri` issuers. The core's refresher (`txngate_core::refresh`, through the `Gate`) decides
//! what to fetch and when, the size cap, the timeout, the back-off and the staleness bound; this module only
//! moves bytes: from the Cache API (a warm copy for new isolates in the same location), from the issuer with
//! `fetch`, into the gate.
//!
//! - A request that finds an issuer without a servable set (new isolate, or past `max_stale_seconds`) waits
//!   for the cache or the fetch (`Fetch::blocking`); concurrent requests of the isolate wait for that one
//!   fetch. Meanwhile, and after failures (the core's back-off), the core answers 503 `keys.unavailable`.
//! - Other due fetches (periodic refresh) run in the background (`waitUntil`).
//! - An unknown `kid` (the core says which issuer, already debounced) fetches now, unless the back-off
//!   holds it; then the request is evaluated once more.

use std::rc::Rc;
use std::time::Duration;

use js_sys::Uint8Array;
use txngate_core::keys::KeySource;
use txngate_core::refresh::{Fetch, FetchResult, Refreshed};
use txngate_core::Gate;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Headers, RequestInit, ResponseInit};
use worker::Context;

use crate::body::{declared_length, read_capped, Capped};
use crate::config::Config;
use crate::error::js_error;
use crate::now_ms;

const FETCHED_AT_HEADER: &str = "x-txngate-fetched-at";

fn uri(config: &Config, issuer: usize) -> Option<String> {
    match &config.gate.borrow().keys().issuer(issuer)?.source {
        KeySource::Remote { uri, .. } => Some(uri.clone()),
        KeySource::Inline => None,
    }
}

thread_local! {
    /// Fetches [`needs_work`] took from the core (it polls every request, as the refresher expects) for
    /// [`ensure_fresh`] to run.
    static QUEUED: std::cell::RefCell<Vec<Fetch>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether the request must go through [`ensure_fresh`] before it is decided: an issuer without a servable
/// set is due, a fetch is due, or another request fetches an issuer that has none. Synchronous, so a request
/// with nothing to do about keys (nearly all) makes no await for them.
pub fn needs_work(config: &Config, now: u64) -> bool {
    if !config.gate.borrow().refresh_due(now).is_empty() {
        return true;
    }
    // Nothing is due, but the poll also gives up a fetch that never ended; what it hands out runs.
    let fetches = config.gate.borrow_mut().poll_keys(now);
    if !fetches.is_empty() {
        QUEUED.with(|q| q.borrow_mut().extend(fetches));
        return true;
    }
    let gate = config.gate.borrow();
    let keys = gate.keys();
    (0..keys.issuers().len())
        .any(|i| keys.refresher().is_in_flight(i, now) && !keys.is_usable(i, now))
}

/// Before deciding: issuers without a servable set first try the location's cached copy; then every fetch
/// the core hands out runs, blocking ones before the request goes on, the others in the background; and
/// the request waits for a blocking fetch another request of the isolate is running.
pub async fn ensure_fresh(config: &Rc<Config>, ctx: &Context) {
    let now = now_ms();
    let cold: Vec<usize> = {
        let gate = config.gate.borrow();
        gate.refresh_due(now)
            .into_iter()
            .filter(|issuer| !gate.keys().is_usable(*issuer, now))
            .collect()
    };
    for issuer in cold {
        from_cache(config, issuer).await;
    }
    let mut fetches = QUEUED.with(|q| std::mem::take(&mut *q.borrow_mut()));
    fetches.extend(config.gate.borrow_mut().poll_keys(now_ms()));
    for fetch in fetches {
        if fetch.blocking {
            run(config, fetch).await;
        } else {
            let owner = Rc::clone(config);
            ctx.wait_until(async move {
                run(&owner, fetch).await;
            });
        }
    }
    wait_for_others(config).await;
}

/// The shell's entry to [`ensure_fresh`] (when [`needs_work`] said so): resolves when the request may be
/// decided.
#[wasm_bindgen(js_name = txngateKeys)]
pub async fn keys(ctx: JsValue) {
    if let Some(config) = crate::config::loaded() {
        ensure_fresh(&config, &Context::new(ctx.unchecked_into())).await;
    }
}

/// The shell's entry to [`refetch`]: true if the request should be evaluated again.
#[wasm_bindgen(js_name = txngateRefetch)]
pub async fn refetch_issuer(issuer: usize) -> bool {
    match crate::config::loaded() {
        Some(config) => refetch(&config, issuer).await,
        None => false,
    }
}

/// After an unknown `kid` (or unavailable keys): runs what the core hands out now (the refetch, unless its
/// back-off holds it), or waits for the issuer's fetch another request is running. True if the request
/// should be evaluated again.
pub async fn refetch(config: &Rc<Config>, issuer: usize) -> bool {
    let fetches = config.gate.borrow_mut().poll_keys(now_ms());
    let mut changed = false;
    for fetch in fetches {
        changed |= run(config, fetch).await;
    }
    let waited = wait_while(config, |gate, now| {
        gate.keys().refresher().is_in_flight(issuer, now)
    })
    .await;
    changed || waited
}

/// Waits while another request of the isolate fetches keys of an issuer that has none servable.
async fn wait_for_others(config: &Config) {
    wait_while(config, |gate, now| {
        let keys = gate.keys();
        (0..keys.issuers().len())
            .any(|i| keys.refresher().is_in_flight(i, now) && !keys.is_usable(i, now))
    })
    .await;
}

/// Waits while `busy` holds (true if it did at first). It ends: the core gives up a fetch that never ends.
async fn wait_while(config: &Config, busy: impl Fn(&Gate, u64) -> bool) -> bool {
    let mut waited = false;
    while busy(&config.gate.borrow(), now_ms()) {
        waited = true;
        worker::Delay::from(Duration::from_millis(txngate_core::host::WAIT_STEP_MS)).await;
    }
    waited
}

/// Gives a fetch back to the core if its request is cancelled before the answer (nothing counts).
struct InFlight<'a> {
    config: &'a Config,
    issuer: usize,
    answered: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.answered {
            if let Ok(mut gate) = self.config.gate.try_borrow_mut() {
                gate.release_keys_fetch(self.issuer);
            }
        }
    }
}

/// Sends one fetch and hands the answer to the core; a new set is also put in the location's cache. True if
/// the issuer's set was installed or confirmed.
async fn run(config: &Config, fetch: Fetch) -> bool {
    let mut guard = InFlight {
        config,
        issuer: fetch.issuer,
        answered: false,
    };
    let answer = send(&fetch).await;
    guard.answered = true;
    let result = match &answer {
        Answer::Response { status, body } => FetchResult::Response {
            status: *status,
            body,
            length: body.len(),
        },
        Answer::TooLarge => FetchResult::TooLarge { bytes: None },
        Answer::NoResponse(detail) => FetchResult::NoResponse { detail },
    };
    let refreshed = config
        .gate
        .borrow_mut()
        .on_keys_response(fetch.issuer, result, now_ms());
    let body = match &answer {
        Answer::Response { body, .. } => body.as_slice(),
        Answer::TooLarge | Answer::NoResponse(_) => &[],
    };
    report(config, fetch.issuer, &fetch.uri, body, refreshed, "fetch").await
}

/// Adopts the location's cached copy of an issuer's set, if the core finds it newer and servable.
async fn from_cache(config: &Config, issuer: usize) {
    let Some(uri) = uri(config, issuer) else {
        return;
    };
    let Some((bytes, fetched_at)) = cache_get(&uri).await else {
        return;
    };
    let refreshed = config
        .gate
        .borrow_mut()
        .adopt_keys(issuer, &bytes, fetched_at, now_ms());
    report(config, issuer, &uri, &[], refreshed, "cache").await;
}

/// Logs what the core did with a set, and caches a newly fetched one. True if the set was installed or
/// confirmed.
async fn report(
    config: &Config,
    issuer: usize,
    uri: &str,
    fetched: &[u8],
    refreshed: Refreshed,
    from: &str,
) -> bool {
    match refreshed {
        Refreshed::Installed {
            skipped,
            fetched_ms,
            ..
        } => {
            let skipped: Vec<String> = skipped
                .iter()
                .map(|s| format!("{}: {}", s.kid.as_deref().unwrap_or("-"), s.reason))
                .collect();
            let detail =
                (!skipped.is_empty()).then(|| format!("skipped keys: {}", skipped.join("; ")));
            let event = if from == "cache" {
                "jwks.installed_from_cache"
            } else {
                "jwks.installed"
            };
            log(event, issuer, uri, detail.as_deref());
            if !fetched.is_empty() {
                cache_put(config, issuer, uri, fetched, fetched_ms).await;
            }
            true
        }
        Refreshed::Unchanged { fetched_ms } => {
            if !fetched.is_empty() {
                cache_put(config, issuer, uri, fetched, fetched_ms).await;
            }
            true
        }
        Refreshed::Failed {
            error, retry_at_ms, ..
        } => {
            let detail = format!("{error}; next attempt at {retry_at_ms} ms");
            log("jwks.fetch_failed", issuer, uri, Some(&detail));
            false
        }
        Refreshed::Rejected { error } => {
            log("jwks.rejected", issuer, uri, Some(&error.to_string()));
            false
        }
        _ => false,
    }
}

fn log(event: &str, issuer: usize, uri: &str, detail: Option<&str>) {
    worker::console_log!(
        "{}",
        serde_json::json!({"txngate": event, "issuer": issuer, "jwks_uri": uri, "detail": detail})
    );
}

/// What the issuer answered, owned.
enum Answer {
    Response { status: u16, body: Vec<u8> },
    TooLarge,
    NoResponse(String),
}

async fn send(fetch: &Fetch) -> Answer {
    match try_send(fetch).await {
        Ok(answer) => answer,
        Err(detail) => Answer::NoResponse(detail),
    }
}

async fn try_send(fetch: &Fetch) -> Result<Answer, String> {
    let init = RequestInit::new();
    init.set_method("GET");
    let headers = Headers::new().map_err(|_| "headers".to_string())?;
    headers
        .set("accept", "application/jwk-set+json, application/json")
        .map_err(|_| "headers".to_string())?;
    init.set_headers(&headers);
    let timeout = u32::try_from(fetch.timeout_ms).unwrap_or(u32::MAX);
    init.set_signal(Some(&web_sys::AbortSignal::timeout_with_u32(timeout)));
    let request = web_sys::Request::new_with_str_and_init(&fetch.uri, &init)
        .map_err(|e| format!("bad jwks_uri: {e:?}"))?;
    let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    let response: web_sys::Response = JsFuture::from(global.fetch_with_request(&request))
        .await
        .map_err(|e| format!("fetch failed: {}", js_error(&e)))?
        .dyn_into()
        .map_err(|_| "fetch returned no Response".to_string())?;
    let status = response.status();
    let body = read_capped(
        response.body(),
        declared_length(&response.headers()),
        fetch.max_bytes,
    )
    .await?;
    Ok(match body {
        Capped::Complete(body) => Answer::Response { status, body },
        Capped::TooLarge => Answer::TooLarge,
    })
}

/// The Cache API key of an issuer's JWKS: a synthetic URL, so the copy never shadows the real document.
fn cache_key(uri: &str) -> String {
    let digest = txngate_core::encoding::sha256_hex(uri.as_bytes());
    format!("https://txngate-jwks.internal/{digest}")
}

fn default_cache() -> Option<web_sys::Cache> {
    let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    let caches = global.caches().ok()?;
    js_sys::Reflect::get(&caches, &"default".into())
        .ok()?
        .dyn_into()
        .ok()
}

async fn cache_get(uri: &str) -> Option<(Vec<u8>, u64)> {
    let cache = default_cache()?;
    let found = JsFuture::from(cache.match_with_str(&cache_key(uri)))
        .await
        .ok()?;
    let response: web_sys::Response = found.dyn_into().ok()?;
    let fetched_at = response
        .headers()
        .get(FETCHED_AT_HEADER)
        .ok()??
        .parse::<u64>()
        .ok()?;
    let buffer = JsFuture::from(response.array_buffer().ok()?).await.ok()?;
    Some((Uint8Array::new(&buffer).to_vec(), fetched_at))
}

/// Caches a fetched set for as long as the core would serve it.
async fn cache_put(config: &Config, issuer: usize, uri: &str, bytes: &[u8], fetched_at: u64) {
    let Some(schedule) = config.gate.borrow().keys().refresher().schedule(issuer) else {
        return;
    };
    let Some(cache) = default_cache() else { return };
    let put = async {
        let headers = Headers::new().ok()?;
        headers.set("content-type", "application/json").ok()?;
        headers
            .set(
                "cache-control",
                &format!(
                    "max-age={}",
                    txngate_core::host::cache_max_age_s(schedule.max_stale_ms)
                ),
            )
            .ok()?;
        headers
            .set(FETCHED_AT_HEADER, &fetched_at.to_string())
            .ok()?;
        let init = ResponseInit::new();
        init.set_status(200);
        init.set_headers(&headers);
        let body = Uint8Array::from(bytes);
        let response = web_sys::Response::new_with_opt_buffer_source_and_init(
            Some(body.unchecked_ref()),
            &init,
        )
        .ok()?;
        JsFuture::from(cache.put_with_str(&cache_key(uri), &response))
            .await
            .ok()
    };
    if put.await.is_none() {
        log("jwks.cache_put_failed", issuer, uri, None);
    }
}

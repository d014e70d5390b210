//! JWKS for `jwks_uri` issuers. The core owns the key sets and all timing rules (refresh interval, staleness
//! bound, refetch debounce); this module only moves bytes: from the Cache API (a warm copy for new isolates
//! in the same location), from the issuer with `fetch`, into `Gate::install_jwks`.
//!
//! - A request that finds an issuer without usable keys (new isolate, or past `max_stale_seconds`) waits for
//!   the cache or a fetch; concurrent requests of the isolate wait for that one fetch. Failed fetches are
//!   retried at most once a second meanwhile, and the core answers 503 `keys.unavailable`: fail closed.
//! - A usable set that is due for its periodic refresh is refreshed in the background (`waitUntil`).
//! - An unknown `kid` (the core says which issuer, already debounced) forces a fetch from the issuer, then
//!   the request is evaluated once more.
//! - A fetch that fails or returns a bad set keeps the last good set (the core enforces staleness).

use std::rc::Rc;
use std::time::Duration;

use js_sys::Uint8Array;
use txngate_core::keys::KeySource;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Headers, RequestInit, ResponseInit};
use worker::Context;

use crate::body::{declared_length, read_capped, Capped};
use crate::config::Config;
use crate::error::js_error;
use crate::now_ms;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Fetch timeout.
const FETCH_TIMEOUT_MS: u32 = 5_000;
/// While an issuer has no usable keys, at most one failed fetch per this interval.
const UNUSABLE_RETRY_MS: u64 = 1_000;
const FETCHED_AT_HEADER: &str = "x-txngate-fetched-at";

struct Remote {
    uri: String,
    max_stale_ms: u64,
    min_refetch_ms: u64,
}

fn remote(config: &Config, issuer: usize) -> Option<Remote> {
    let gate = config.gate.borrow();
    match &gate.keys().issuer(issuer)?.source {
        KeySource::Remote {
            uri,
            max_stale_ms,
            min_refetch_ms,
            ..
        } => Some(Remote {
            uri: uri.clone(),
            max_stale_ms: *max_stale_ms,
            min_refetch_ms: *min_refetch_ms,
        }),
        KeySource::Inline => None,
    }
}

fn failed_recently(config: &Config, issuer: usize, now: u64, interval: u64) -> bool {
    config
        .jwks_failed_at
        .borrow()
        .get(&issuer)
        .is_some_and(|at| now.saturating_sub(*at) < interval)
}

/// Before deciding: make sure every remote issuer has usable keys if at all possible, and start background
/// refreshes of those due.
pub async fn ensure_fresh(config: &Rc<Config>, ctx: &Context) {
    let now = now_ms();
    let due = config.gate.borrow().refresh_due(now);
    for issuer in due {
        let Some(remote) = remote(config, issuer) else {
            continue;
        };
        if config.gate.borrow().keys().is_usable(issuer, now) {
            let retry = remote.min_refetch_ms.max(UNUSABLE_RETRY_MS);
            if !failed_recently(config, issuer, now, retry) {
                background(config, ctx, issuer);
            }
        } else if !failed_recently(config, issuer, now, UNUSABLE_RETRY_MS) {
            // Cache first (cheap, same location), then the issuer.
            let installed = refresh(config, issuer, true).await;
            if installed && config.gate.borrow().refresh_due(now_ms()).contains(&issuer) {
                background(config, ctx, issuer);
            }
        }
    }
}

/// After an unknown `kid` (or unavailable keys): fetch from the issuer now, never from the cache, unless a
/// fetch failed within the last second (this request already waited for that one). True if the request
/// should be evaluated again.
pub async fn refetch(config: &Rc<Config>, issuer: usize) -> bool {
    if failed_recently(config, issuer, now_ms(), UNUSABLE_RETRY_MS) {
        return false;
    }
    refresh(config, issuer, false).await
}

/// A refresh from the issuer after the response (`waitUntil`), unless one is already running.
fn background(config: &Rc<Config>, ctx: &Context, issuer: usize) {
    if config.refreshing.borrow().contains(&issuer) {
        return;
    }
    let owner = Rc::clone(config);
    ctx.wait_until(async move {
        refresh(&owner, issuer, false).await;
    });
}

/// Marks an issuer's fetch as running for as long as it lives, also if the request is cancelled mid-way.
struct InFlight<'a> {
    config: &'a Config,
    issuer: usize,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.config.refreshing.borrow_mut().remove(&self.issuer);
    }
}

/// Loads the issuer's keys now; if another request of this isolate is already fetching them, waits for that
/// one instead (polling the flag with timers: in Workers, one request must not await a promise created by
/// another). True if a set was installed (or the other fetch finished).
async fn refresh(config: &Config, issuer: usize, cache_first: bool) -> bool {
    if config.refreshing.borrow().contains(&issuer) {
        let deadline = now_ms() + u64::from(FETCH_TIMEOUT_MS) + 1_000;
        while config.refreshing.borrow().contains(&issuer) && now_ms() < deadline {
            worker::Delay::from(Duration::from_millis(20)).await;
        }
        return !config.refreshing.borrow().contains(&issuer);
    }
    config.refreshing.borrow_mut().insert(issuer);
    let _running = InFlight { config, issuer };
    load(config, issuer, cache_first).await
}

async fn load(config: &Config, issuer: usize, cache_first: bool) -> bool {
    let Some(remote) = remote(config, issuer) else {
        return false;
    };
    if cache_first {
        if let Some((bytes, fetched_at)) = cache_get(&remote.uri).await {
            if now_ms().saturating_sub(fetched_at) <= remote.max_stale_ms
                && install(config, issuer, &bytes, fetched_at, "cache")
            {
                return true;
            }
        }
    }
    match fetch(&remote.uri).await {
        Ok(bytes) => {
            let fetched_at = now_ms();
            if install(config, issuer, &bytes, fetched_at, "fetch") {
                cache_put(&remote.uri, &bytes, fetched_at, remote.max_stale_ms).await;
                true
            } else {
                config
                    .jwks_failed_at
                    .borrow_mut()
                    .insert(issuer, fetched_at);
                false
            }
        }
        Err(detail) => {
            config.jwks_failed_at.borrow_mut().insert(issuer, now_ms());
            log("jwks.fetch_failed", issuer, &remote.uri, Some(&detail));
            false
        }
    }
}

fn install(config: &Config, issuer: usize, bytes: &[u8], fetched_at: u64, from: &str) -> bool {
    let unchanged = config
        .jwks_installed
        .borrow()
        .get(&issuer)
        .is_some_and(|last| last.as_slice() == bytes);
    let uri = remote(config, issuer).map(|r| r.uri).unwrap_or_default();
    if unchanged {
        // Same document: the set stays, only its freshness moves (verified tokens stay cached).
        config.gate.borrow_mut().touch_jwks(issuer, fetched_at);
        config.jwks_failed_at.borrow_mut().remove(&issuer);
        return true;
    }
    let result = config
        .gate
        .borrow_mut()
        .install_jwks(issuer, bytes, fetched_at);
    match result {
        Ok(skipped) => {
            config
                .jwks_installed
                .borrow_mut()
                .insert(issuer, bytes.to_vec());
            config.jwks_failed_at.borrow_mut().remove(&issuer);
            let skipped: Vec<String> = skipped
                .iter()
                .map(|s| format!("{}: {}", s.kid.as_deref().unwrap_or("-"), s.reason))
                .collect();
            let detail = if skipped.is_empty() {
                None
            } else {
                Some(format!("skipped keys: {}", skipped.join("; ")))
            };
            log(
                if from == "cache" {
                    "jwks.installed_from_cache"
                } else {
                    "jwks.installed"
                },
                issuer,
                &uri,
                detail.as_deref(),
            );
            true
        }
        Err(e) => {
            log("jwks.rejected", issuer, &uri, Some(&e.to_string()));
            false
        }
    }
}

fn log(event: &str, issuer: usize, uri: &str, detail: Option<&str>) {
    worker::console_log!(
        "{}",
        serde_json::json!({"txngate": event, "issuer": issuer, "jwks_uri": uri, "detail": detail})
    );
}

async fn fetch(uri: &str) -> Result<Vec<u8>, String> {
    let init = RequestInit::new();
    init.set_method("GET");
    let headers = Headers::new().map_err(|_| "headers".to_string())?;
    headers
        .set("accept", "application/jwk-set+json, application/json")
        .map_err(|_| "headers".to_string())?;
    init.set_headers(&headers);
    init.set_signal(Some(&web_sys::AbortSignal::timeout_with_u32(
        FETCH_TIMEOUT_MS,
    )));
    let request = web_sys::Request::new_with_str_and_init(uri, &init)
        .map_err(|e| format!("bad jwks_uri: {e:?}"))?;
    let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    let response: web_sys::Response = JsFuture::from(global.fetch_with_request(&request))
        .await
        .map_err(|e| format!("fetch failed: {}", js_error(&e)))?
        .dyn_into()
        .map_err(|_| "fetch returned no Response".to_string())?;
    if response.status() != 200 {
        return Err(format!("HTTP {}", response.status()));
    }
    match read_capped(
        response.body(),
        declared_length(&response.headers()),
        MAX_JWKS_BYTES,
    )
    .await?
    {
        Capped::Complete(bytes) => Ok(bytes),
        Capped::TooLarge => Err(format!("JWKS larger than {MAX_JWKS_BYTES} bytes")),
    }
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

async fn cache_put(uri: &str, bytes: &[u8], fetched_at: u64, max_stale_ms: u64) {
    let Some(cache) = default_cache() else { return };
    let put = async {
        let headers = Headers::new().ok()?;
        headers.set("content-type", "application/json").ok()?;
        headers
            .set(
                "cache-control",
                &format!("max-age={}", (max_stale_ms / 1000).max(1)),
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
        log("jwks.cache_put_failed", 0, uri, None);
    }
}

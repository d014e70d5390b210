//! Rendering: copying the core's replies (denials and failures) onto Responses, and forwarding of allowed
//! requests to the origin. Which status, headers and body a refusal or a failure gets is the core's
//! (`txngate_core::reply`); so are the list rules (which statuses are filtered, how large a list may be).

use std::time::Duration;

use futures_util::future::{select, Either};
use js_sys::Uint8Array;
use serde_json::json;
use txngate_core::host::forwards_request_header;
use txngate_core::reply::{is_filtered_status, MAX_LIST_BYTES};
use txngate_core::{Allowed, Failure, Reply, ReplyTo};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Headers, ReadableStream, RequestInit, RequestRedirect, ResponseInit};

use crate::body::{declared_length, read_capped, Capped};
use crate::config::Config;
use crate::error::js_error;

/// The body to send upstream.
pub enum ForwardBody<'a> {
    /// Read for the core: send exactly these bytes.
    Bytes(&'a [u8]),
    /// Read for the core in one piece by the runtime: send that same buffer (no copy out of Wasm memory).
    Buffer(&'a js_sys::ArrayBuffer),
    /// Not read: stream it through (None: no body).
    Stream(Option<ReadableStream>),
}

/// A reply of the core (a denial or a failure), exactly as it rendered it.
pub fn local_reply(reply: &Reply) -> web_sys::Response {
    let init = ResponseInit::new();
    init.set_status(reply.status);
    if let Ok(h) = Headers::new() {
        for (name, value) in &reply.headers {
            let _ = h.append(name, value);
        }
        init.set_headers(&h);
    }
    web_sys::Response::new_with_opt_str_and_init(Some(&reply.body), &init)
        .or_else(|_| web_sys::Response::new())
        .unwrap_or_else(|_| web_sys::Response::error())
}

/// The configuration did not load: 500 for every request, never forwarded; the precise message goes to the
/// log (one line per refused request), the client learns only that the gateway is misconfigured.
pub fn config_failure(req: &web_sys::Request, message: &str) -> web_sys::Response {
    let path_and_query = crate::path_and_query(&req.url());
    let path = path_and_query.split('?').next().unwrap_or("/");
    worker::console_log!(
        "{}",
        json!({"time": txngate_core::audit::rfc3339(crate::now_ms()), "verdict": "deny", "reason": Failure::PolicyInvalid.reason(), "status": Failure::PolicyInvalid.status(), "method": req.method(), "path": path, "detail": message})
    );
    // No policy, so no MCP endpoint to place the request on: the OAuth-style object.
    local_reply(&ReplyTo::plain().failure(Failure::PolicyInvalid))
}

/// A failure of the Worker itself or of the origin, rendered by the core for `to`: no internal detail to the
/// client, the detail goes to the log.
pub fn failure(failure: Failure, detail: &str, to: &ReplyTo) -> web_sys::Response {
    worker::console_error!(
        "{}",
        json!({"txngate": failure.reason(), "status": failure.status(), "detail": detail})
    );
    local_reply(&to.failure(failure))
}

/// The origin could not be reached or gave no usable response (`reason`: which step failed).
fn unreachable(reason: &'static str, detail: &str, to: &ReplyTo) -> web_sys::Response {
    failure(Failure::UpstreamUnreachable { reason }, detail, to)
}

/// Forwards an allowed request to the origin and renders its answer; a failure answers `to`.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    config: &Config,
    method: &str,
    path: &str,
    headers: &Headers,
    names: &[(String, String)],
    body: ForwardBody<'_>,
    decision: &Allowed,
    to: &ReplyTo,
) -> web_sys::Response {
    // Aborted only if the headers do not come in time; once they have, the body streams unbounded (an
    // SSE stream may legitimately last long).
    let abort = web_sys::AbortController::new().ok();
    let signal = abort.as_ref().map(web_sys::AbortController::signal);
    let upstream =
        match upstream_request(config, method, path, headers, names, body, decision, signal) {
            Ok(r) => r,
            Err(e) => return unreachable("origin.request", &e, to),
        };
    let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    let fetched = std::pin::pin!(JsFuture::from(global.fetch_with_request(&upstream)));
    let timeout_ms = config.origin_timeout_ms;
    let timer = std::pin::pin!(worker::Delay::from(Duration::from_millis(u64::from(
        timeout_ms
    ))));
    let fetched = match select(fetched, timer).await {
        Either::Left((fetched, _)) => fetched,
        Either::Right(((), _)) => {
            if let Some(abort) = &abort {
                abort.abort();
            }
            return failure(
                Failure::UpstreamTimeout,
                &format!("no response headers within {timeout_ms} ms"),
                to,
            );
        }
    };
    let response: web_sys::Response = match fetched.map(JsCast::dyn_into) {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => return unreachable("origin.fetch", "fetch returned no Response", to),
        Err(e) => return unreachable("origin.fetch", &js_error(&e), to),
    };
    // A native copy of the origin's headers (one call, not one per header across the Wasm boundary).
    let out_headers = match Headers::new_with_headers(&response.headers()) {
        Ok(h) => h,
        Err(e) => return unreachable("origin.response", &js_error(&e), to),
    };
    for (name, value) in &decision.response_headers {
        let _ = out_headers.append(name, value);
    }
    let init = ResponseInit::new();
    init.set_status(response.status());
    init.set_status_text(&response.status_text());

    // The core's rule, the Envoy filter's too: every 2xx list response is filtered.
    let filter = decision
        .list_filter
        .as_ref()
        .filter(|_| is_filtered_status(response.status()));
    let Some(filter) = filter else {
        init.set_headers(&out_headers);
        return web_sys::Response::new_with_opt_readable_stream_and_init(
            response.body().as_ref(),
            &init,
        )
        .unwrap_or_else(|e| unreachable("origin.response", &js_error(&e), to));
    };
    // A list (tools/list, ...): buffer, filter to what this caller may use. A response we cannot filter is
    // not passed on (it would reveal entries the caller may not see).
    let content_type = response
        .headers()
        .get("content-type")
        .ok()
        .flatten()
        .unwrap_or_default();
    let bytes = match read_capped(
        response.body(),
        declared_length(&response.headers()),
        MAX_LIST_BYTES,
    )
    .await
    {
        Ok(Capped::Complete(bytes)) => bytes,
        Ok(Capped::TooLarge) => {
            return failure(Failure::ListTooLarge, "list response over the cap", to)
        }
        Err(e) => return failure(Failure::ListUnfilterable, &e, to),
    };
    let filtered = match filter.apply(&content_type, &bytes) {
        Ok(b) => b,
        Err(e) => {
            return failure(
                Failure::ListUnfilterable,
                &format!("cannot filter the list response: {e}"),
                to,
            )
        }
    };
    let _ = out_headers.delete("content-length");
    let _ = out_headers.delete("content-encoding");
    init.set_headers(&out_headers);
    let body = Uint8Array::from(filtered.as_slice());
    web_sys::Response::new_with_opt_buffer_source_and_init(Some(body.unchecked_ref()), &init)
        .unwrap_or_else(|e| unreachable("origin.response", &js_error(&e), to))
}

/// `headers` is the client's header object, `names` the same headers as gathered (their names decide
/// which ones are dropped).
#[allow(clippy::too_many_arguments)]
fn upstream_request(
    config: &Config,
    method: &str,
    path: &str,
    headers: &Headers,
    names: &[(String, String)],
    body: ForwardBody<'_>,
    decision: &Allowed,
    signal: Option<web_sys::AbortSignal>,
) -> Result<web_sys::Request, String> {
    let target = format!("{}{}", config.origin, path);
    // A native copy of the client's headers, then only the few that must not go upstream are deleted:
    // every client-sent identity header and the hop-by-hop ones.
    let out = Headers::new_with_headers(headers).map_err(|e| js_error(&e))?;
    for (name, _) in names {
        let lower = name.to_ascii_lowercase();
        if !forwards_request_header(&lower) {
            out.delete(name).map_err(|e| js_error(&e))?;
        }
    }
    for (name, value) in &decision.upstream_headers {
        out.set(name, value).map_err(|e| js_error(&e))?;
    }
    let init = RequestInit::new();
    init.set_method(method);
    init.set_headers(&out);
    init.set_redirect(RequestRedirect::Manual);
    init.set_signal(signal.as_ref());
    let bodiless = method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD");
    match body {
        _ if bodiless => {}
        ForwardBody::Bytes(bytes) => {
            let array = Uint8Array::from(bytes);
            init.set_body(&array);
        }
        ForwardBody::Buffer(buffer) => init.set_body(buffer),
        ForwardBody::Stream(Some(stream)) => init.set_body(&stream),
        ForwardBody::Stream(None) => {}
    }
    web_sys::Request::new_with_str_and_init(&target, &init).map_err(|e| js_error(&e))
}

/// All header (name, value) pairs; the runtime gives names in lower case.
pub fn header_pairs(headers: &Headers) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in headers.entries() {
        let Ok(pair) = entry else { continue };
        let pair = js_sys::Array::from(&pair);
        if let (Some(name), Some(value)) = (pair.get(0).as_string(), pair.get(1).as_string()) {
            out.push((name, value));
        }
    }
    out
}

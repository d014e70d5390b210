//! Cloudflare Worker adapter of txngate.
//!
//! Every decision is made by `txngate-core`; this crate only gathers the request (method, path, headers, a
//! capped body), performs the I/O the core asks for through its sans-IO steps (WebCrypto for signatures, a
//! Durable Object for global rate limits, `fetch` + the Cache API for JWKS), and renders the outcome: a local
//! reply when denied, the origin's response when allowed (identity headers stripped and re-set, the
//! Txn-Token forwarded unmodified, `tools/list` filtered). One audit JSON line per decision.

mod body;
mod config;
mod crypto;
mod error;
mod jwks;
mod limiter;
mod proxy;

use std::rc::Rc;

use txngate_core::{Body, Outcome, Request as CoreRequest, Step};
use worker::{event, Context, Env};

use crate::body::{read_body, Capped};
use crate::config::{Config, LimiterMode};

pub use limiter::TxngateRateLimiter;

/// Milliseconds since the epoch (in Workers, the time of the last I/O: it does not advance during CPU work).
pub(crate) fn now_ms() -> u64 {
    worker::Date::now().as_millis()
}

/// The runtime's `Request` as is: no conversion into workers-rs types (which would read `request.cf`, parse
/// the URL, ...) on the hot path.
#[event(fetch)]
pub async fn fetch(
    req: web_sys::Request,
    env: Env,
    ctx: Context,
) -> worker::Result<web_sys::Response> {
    Ok(handle(req, env, ctx).await)
}

/// The request as gathered for the core, owned so it can outlive awaits.
struct Gathered {
    method: String,
    path: String,
    /// As the core sees them (a comma-joined token header split back into its parts).
    core_headers: Vec<(String, String)>,
    /// As received, for forwarding: the runtime's own object, copied natively in one call rather than
    /// appended header by header across the Wasm boundary.
    headers: web_sys::Headers,
    body: GatheredBody,
    /// The body as the runtime read it (declared length, one `arrayBuffer()`): forwarded as is, without
    /// copying the bytes back out of Wasm memory.
    raw_body: Option<js_sys::ArrayBuffer>,
}

async fn handle(req: web_sys::Request, env: Env, ctx: Context) -> web_sys::Response {
    let config = match config::load(&env) {
        Ok(config) => config,
        Err(message) => return proxy::config_failure(&req, &message),
    };
    jwks::ensure_fresh(&config, &ctx).await;

    let gathered = match gather(&config, &req).await {
        Ok(g) => g,
        Err(detail) => return proxy::internal_error("request.read", &detail, None),
    };
    let body = match &gathered.body {
        GatheredBody::Read(Capped::Complete(bytes)) if bytes.is_empty() => Body::Absent,
        GatheredBody::Read(Capped::Complete(bytes)) => Body::Complete(bytes),
        GatheredBody::Read(Capped::TooLarge) => Body::TooLarge,
        GatheredBody::Unread => Body::Absent,
    };
    let request = CoreRequest {
        method: &gathered.method,
        path: &gathered.path,
        headers: &gathered.core_headers,
        body,
        peer: None,
    };

    let outcome = decide(&config, &env, &request).await;
    worker::console_log!("{}", outcome.audit.to_json());

    if !outcome.decision.is_allowed() {
        return proxy::local_reply(&outcome.decision);
    }
    let forward_body = match &gathered.body {
        GatheredBody::Read(Capped::Complete(bytes)) => match &gathered.raw_body {
            Some(buffer) => proxy::ForwardBody::Buffer(buffer),
            None => proxy::ForwardBody::Bytes(bytes),
        },
        // A too-large body never gets here (the core refuses it); stream whatever was not read.
        GatheredBody::Read(Capped::TooLarge) | GatheredBody::Unread => {
            proxy::ForwardBody::Stream(req.body())
        }
    };
    proxy::forward(
        &config,
        &gathered.method,
        &gathered.path,
        &gathered.headers,
        &gathered.core_headers,
        forward_body,
        &outcome,
    )
    .await
}

enum GatheredBody {
    /// Read for the core (POST to the MCP endpoint).
    Read(Capped),
    /// Left in the request, streamed to the origin if allowed.
    Unread,
}

async fn gather(config: &Config, req: &web_sys::Request) -> Result<Gathered, String> {
    let method = req.method();
    let path = path_and_query(&req.url());
    let js_headers = req.headers();
    let headers = proxy::header_pairs(&js_headers);
    let (token_header, needs_body, max_body) = {
        let gate = config.gate.borrow();
        (
            gate.policy().token.header.clone(),
            gate.needs_body(&method, &path),
            gate.max_body_bytes(),
        )
    };
    // The Fetch API joins repeated headers with ", ". A Txn-Token never contains a comma, so a comma in
    // its value means the client sent several: hand them to the core as the separate headers they were.
    let mut core_headers = Vec::with_capacity(headers.len() + 1);
    let mut declared = None;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("content-length") {
            declared = value.trim().parse::<u64>().ok();
        }
        if name.eq_ignore_ascii_case(&token_header) && value.contains(',') {
            core_headers.extend(
                value
                    .split(',')
                    .map(|part| (name.clone(), part.trim().to_string())),
            );
        } else {
            core_headers.push((name, value));
        }
    }
    let (body, raw_body) = if needs_body {
        let (capped, raw) = read_body(req, declared, max_body).await?;
        (GatheredBody::Read(capped), raw)
    } else {
        (GatheredBody::Unread, None)
    };
    Ok(Gathered {
        method,
        path,
        core_headers,
        headers: js_headers,
        body,
        raw_body,
    })
}

/// The path and query of an absolute request URL (the runtime hands Workers normalised absolute URLs).
pub(crate) fn path_and_query(url: &str) -> String {
    let after_scheme = url
        .find("://")
        .map_or(url, |i| url.get(i + 3..).unwrap_or(""));
    let rest = after_scheme
        .find('/')
        .and_then(|i| after_scheme.get(i..))
        .unwrap_or("/");
    rest.split('#').next().unwrap_or("/").to_string()
}

/// Runs the core to an outcome; after an unknown `kid` with a successful JWKS refetch, evaluates once more.
async fn decide(config: &Rc<Config>, env: &Env, request: &CoreRequest<'_>) -> Outcome {
    let outcome = run(config, env, request).await;
    match outcome.refetch_issuer {
        Some(issuer) if jwks::refetch(config, issuer).await => run(config, env, request).await,
        _ => outcome,
    }
}

async fn run(config: &Config, env: &Env, request: &CoreRequest<'_>) -> Outcome {
    // Each gate borrow ends before the next await: concurrent requests of the isolate interleave safely.
    let mut step = config.gate.borrow_mut().evaluate(request, now_ms());
    loop {
        step = match step {
            Step::Done(outcome) => return *outcome,
            Step::VerifySignature(pending) => {
                let (valid, _) = crypto::verify(&pending).await;
                config.gate.borrow_mut().resume_signature(*pending, valid)
            }
            Step::ConsultLimiter(pending) => {
                let result = match config.limiter {
                    LimiterMode::Exact => {
                        limiter::consume(env, &pending, config.limiter_timeout_ms).await
                    }
                    LimiterMode::Approximate => limiter::approximate(env, &pending).await,
                };
                return config.gate.borrow_mut().resume_limit(*pending, result);
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::path_and_query;

    #[test]
    fn path_and_query_of_absolute_urls() {
        assert_eq!(path_and_query("https://mcp.example.com/mcp"), "/mcp");
        assert_eq!(
            path_and_query("https://mcp.example.com/mcp/x?a=1&b=2"),
            "/mcp/x?a=1&b=2"
        );
        assert_eq!(path_and_query("http://127.0.0.1:8787"), "/");
        assert_eq!(path_and_query("http://h/p?q#frag"), "/p?q");
    }
}

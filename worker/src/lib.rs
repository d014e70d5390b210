//! Cloudflare Worker adapter of txngate.
//!
//! Every decision is made by `txngate-core`. The Worker's entry is a small hand-written JS module
//! (`worker/shell.js`, installed as `worker/build/index.js`): it does the I/O with the runtime's own objects
//! (the body, `fetch` to the origin, WebCrypto for signatures, the rate-limit Durable Object, `console.log`
//! of the audit line) and makes one synchronous call into this crate per step of a request ([`shell`]:
//! begin, evaluate, resume after a signature or a limit, a failure, a list to filter). No futures on the
//! request path; only key fetches (JWKS, through `fetch` and the Cache API, [`jwks`]) are async Rust, and
//! only when the core has one due. Replies, header rules, error texts and the audit line are rendered here.

mod body;
mod config;
mod error;
mod jwks;
mod limiter;
mod proxy;
mod shell;

/// Milliseconds since the epoch (in Workers, the time of the last I/O: it does not advance during CPU work).
pub(crate) fn now_ms() -> u64 {
    worker::Date::now().as_millis()
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

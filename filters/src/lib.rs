//! txngate as a proxy-wasm HTTP filter (Envoy, Istio): it gathers the request, asks `txngate-core` for a
//! decision and renders it. Nothing is decided here.
//!
//! * Root context (one per VM: Envoy's main thread and each worker): the plugin configuration is the policy
//!   JSON; a policy that does not load makes `on_configure` fail with the core's message (so
//!   `envoy --mode validate` refuses it). A tick (every [`TICK_MS`]) refreshes remote JWKS through
//!   `dispatch_http_call`, shares fetched sets with the other VMs through shared data ([`jwks`]) and answers
//!   requests whose body never reached the filter.
//! * HTTP context: method, path, headers, mTLS peer (`connection.uri_san_peer_certificate`) and, for MCP
//!   POSTs, the body, buffered up to the policy's `mcp.max_body_bytes` (a larger `Content-Length` or body is
//!   refused at once with `Body::TooLarge`). Denied: a local reply with the core's status, headers and
//!   body. Allowed: every client-sent `x-txngate-*` header removed, the verified identity headers set, the
//!   RateLimit headers added to the response, and an allowed `tools/list` response filtered (fail closed
//!   with 502 when it cannot be).
//! * Rate limits live in shared data behind the core's `SlotTable` (bounded key space); see [`store`] for
//!   the compare-and-swap protocol that makes "create only if absent" safe on Envoy. A rule with
//!   `rate_limit.remote` is counted by the policy's rate limit service instead (Envoy's RLS protocol, one
//!   budget across the mesh): the request pauses on a `dispatch_grpc_call` (`rls_client`) and resumes on its
//!   callback; a timeout, an error or an unreachable service goes to the rule's `on_store_error` and is counted
//!   as `txngate.ratelimit.remote_timeout` / `.remote_error` / `.remote_unreachable`.
//! * Bodies ([`mode`]): by default the filter verifies the token at the request headers, lets the headers
//!   go on with the verified identity, and holds every byte of the body until the core has decided on the
//!   whole request (works without `allow_on_headers_stop_iteration`, e.g. under Istio's `WasmPlugin`); a
//!   remote limit keeps the body held until the service answers. With `"pause_at_headers": true` it pauses
//!   the headers until the decision instead (the stricter mode, which needs
//!   `allow_on_headers_stop_iteration: true`; without it Envoy never delivers the body, and the filter
//!   refuses the request after [`BODY_WAIT_MS`] with `mcp.body_missing`, logging at critical level what to
//!   fix). A request waiting for its body never passes, in either mode.
//!
//! One audit line (JSON) per decision is logged at info level; the verdict, reason, agent, tool and
//! transaction are also set as filter state (`wasm.txngate_verdict`, ...) for access logs (five host calls;
//! `"access_log_fields": false` leaves them out, [`sink`]); counters are
//! defined under `txngate.`, with rate-limit store failures also counted on their own
//! (`txngate.ratelimit.store_error` / `.contention` / `.store_full`) so an operator sees them even when a
//! rule's `on_store_error: allow` lets the call through. With `"audit_sink": "filter_state"` ([`sink`]) the
//! record goes to one filter-state value for Envoy's access log instead (the cheaper sink). Failure behaviour
//! in Envoy (trap, JWKS faults and bounds): docs/hardening.md.

pub mod host_verified;
pub mod jwks;
pub mod mode;
pub mod plugin;
pub mod sink;
pub mod store;

/// The core's: a request paused for its body that got no body callback within this time is refused.
pub use txngate_core::gate::BODY_WAIT_MS;
/// The core's root-context tick period (ms): JWKS refresh checks and the body watchdog.
pub use txngate_core::host::TICK_MS;

#[cfg(target_arch = "wasm32")]
mod filter;
#[cfg(target_arch = "wasm32")]
mod rls_client;

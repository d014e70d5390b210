//! Body-holding mode ([`BodyMode::HoldBody`], the default): for a request whose body the core must read
//! (an MCP POST), the filter cannot pause at the headers without Envoy's `allow_on_headers_stop_iteration`,
//! which Istio's `WasmPlugin` does not set. So:
//!
//! 1. At the request headers the core checks what needs no body (`Body::Held`: token, delegation chain,
//!    peer binding). Refused: a local reply, and the upstream sees nothing at all.
//! 2. Accepted: the client's `x-txngate-*` headers are removed, the verified identity headers set,
//!    `accept-encoding` dropped (a `tools/list` answer must be readable to be filtered), and the headers go
//!    on: Envoy's router sends them to the upstream.
//! 3. Every body callback returns `Pause` (Envoy's `StopIterationAndBuffer`): no byte of the body moves past
//!    the filter. A body over `mcp.max_body_bytes` is decided at once as too large (413).
//! 4. At the end of the stream (or the trailers) the core decides on the whole request, exactly as in the
//!    pause-at-headers mode (token again — a cache hit —, tool rule, constraints, rate limit). Refused: a
//!    local reply to the client; Envoy resets the upstream request, which got headers and no body. Allowed:
//!    the buffered body is released unchanged. The identity set in step 2 must be the one the full decision
//!    gives, else the request is refused (500 `filter.identity_changed`).
//!
//! An allowed `tools/list` answer is filtered as in the other mode, except that its headers go on at once
//! (pausing them needs `allow_on_headers_stop_iteration` too): the body is buffered whole and replaced by the
//! filtered one, and a response that cannot be filtered resets the stream instead of becoming a 502 — the
//! client never gets the unfiltered list either way.
//!
//! A remote rate limit ([`txngate_core::rls`]) is consulted in step 4: the body stays held
//! (`Phase::AwaitingLimit`) while the filter waits for the rate limit service, and `on_grpc_call_response`
//! releases it (`resume_http_request`) or sends the refusal.
//!
//! A response that arrives while the body is held (the upstream answered without waiting for the body, or
//! Envoy answered itself, e.g. an upstream connect failure) passes to the client; the held body is then
//! never released, and the event is logged and counted (`txngate.hold.early_response`).

use super::*;

impl Http {
    /// Step 1 and 2: the header stage (rendered by `Http::render`, `Render::Stage`). `captured` has its
    /// attestation in host-verified mode.
    pub(super) fn hold_headers(&mut self, captured: Captured) -> Action {
        let render = Render::Stage {
            client_identity: client_identity(&captured),
        };
        let action = self.decide_with(&captured, Body::Held, render);
        if self.phase == Phase::Holding {
            self.pending = Some(captured);
        }
        action
    }

    /// Step 3: a body chunk. `body_size` is everything buffered so far.
    pub(super) fn hold_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if body_size > self.max_body {
            return self.decide_held(Body::TooLarge);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.finish_held(Some(body_size))
    }

    /// Step 4 with the whole body (end of stream, or the trailers: `size` unknown).
    pub(super) fn finish_held(&mut self, size: Option<usize>) -> Action {
        let body = super::http::buffered_body(BufferType::HttpRequestBody, size, self.max_body);
        if body.len() > self.max_body {
            return self.decide_held(Body::TooLarge);
        }
        self.decide_held(Body::Complete(&body))
    }

    /// Step 4: the whole decision. Returns what the body callback must return: `Continue` releases the
    /// buffered body unchanged; after a refusal `Pause` (the local reply ends the stream). A remote limit
    /// keeps the body held (`Phase::AwaitingLimit`) until the rate limit service answers; the gRPC callback
    /// then releases it (`resume_http_request`) or refuses.
    fn decide_held(&mut self, body: Body<'_>) -> Action {
        let Some(captured) = self.pending.take() else {
            let lost = Failure::Internal {
                reason: "filter.state",
            };
            return self.fail_closed(lost, "the held request lost its headers");
        };
        self.decide_with(&captured, body, Render::Held)
    }

    /// A response while the body is held: it passes, the held body never does.
    pub(super) fn early_response(&mut self) -> Action {
        self.phase = Phase::Refused;
        self.pending = None;
        // A call to the rate limit service in flight: its answer no longer matters.
        if let Some(call) = self.remote.take() {
            let _ = hostcalls::cancel_grpc_call(call.token);
        }
        log(
            LogLevel::Warn,
            "txngate: a response arrived before the held request body was decided; the body is not released",
        );
        self.vm
            .borrow_mut()
            .metrics
            .increment("txngate.hold.early_response");
        Action::Continue
    }
}

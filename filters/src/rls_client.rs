//! The filter's rate limit service client: one unary `ShouldRateLimit` call per remote limit
//! (`dispatch_grpc_call` to the policy's `rate_limit_service.cluster`), its answer read from the gRPC receive
//! buffer. The protocol (request encoding, response decoding, what an answer or a failure means) is the core's
//! ([`txngate_core::rls`], [`txngate_core::rls_wire`]); this file only moves bytes through the host.
//!
//! The HTTP context that made the call pauses; Envoy calls back on that context with the answer
//! (`proxy_on_grpc_receive`) or a failure (`proxy_on_grpc_close` with the gRPC status: 4 after `timeout_ms`,
//! 14 when no connection could be made), and the filter finishes with `Gate::resume_limit`.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::BufferType;
use txngate_core::ratelimit::{LimitState, StoreError};
use txngate_core::rls::{self, RateLimitService, Reply};
use txngate_core::PendingLimit;

/// Starts the call; `Err` says why the host refused to (the caller reports it as unreachable).
pub fn dispatch(service: &RateLimitService, pending: &PendingLimit) -> Result<u32, String> {
    let Some(request) = pending.remote_request(service) else {
        return Err("not a remote limit".to_string());
    };
    let message = request.encode();
    hostcalls::dispatch_grpc_call(
        &service.cluster,
        rls::SERVICE,
        rls::METHOD,
        Vec::new(),
        Some(&message),
        Duration::from_millis(u64::from(service.timeout_ms)),
    )
    .map_err(|status| {
        format!(
            "dispatch_grpc_call to cluster {:?} failed: {status:?}",
            service.cluster
        )
    })
}

/// The answer when the host refused the call.
pub fn refused(pending: &PendingLimit, why: &str) -> Result<LimitState, StoreError> {
    rls::interpret(pending.rule(), Reply::DispatchFailed(why))
}

/// Reads the answer of a finished call (`status_code` and `response_size` as the SDK reports them).
pub fn answer(
    pending: &PendingLimit,
    status_code: u32,
    response_size: usize,
) -> Result<LimitState, StoreError> {
    if status_code != 0 {
        // Not `get_grpc_status`: the SDK unwraps its message as UTF-8, and a service may send anything.
        return rls::interpret(
            pending.rule(),
            Reply::Status {
                code: status_code,
                message: rls::grpc_status_name(status_code),
            },
        );
    }
    // Larger than the decoder accepts: read one byte more so it refuses it.
    let size = response_size.min(txngate_core::rls_wire::MAX_RESPONSE_BYTES + 1);
    let bytes = match hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size) {
        Ok(bytes) => bytes.unwrap_or_default(),
        Err(status) => {
            return rls::interpret(
                pending.rule(),
                Reply::Status {
                    code: rls::GRPC_INTERNAL,
                    message: &format!("reading the response failed: {status:?}"),
                },
            )
        }
    };
    rls::interpret(pending.rule(), Reply::Message(&bytes))
}

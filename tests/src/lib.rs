//! `txngate-harness`: a wasmtime host for proxy-wasm (ABI 0.2.1) HTTP filters that mimics
//! Envoy closely enough to test the txngate filter without Envoy.
//!
//! * [`Host`] compiles a `.wasm` once and owns the world its VMs share (clock, shared data
//!   with Envoy's CAS rules, shared queues, metrics).
//! * [`Vm`] is one instance with its own root context, like one Envoy worker thread. Several
//!   VMs over one host behave like several workers.
//! * [`Vm::http`] drives one stream and returns an [`HttpOutcome`]: the local reply, what
//!   reached the upstream, what the client got, logs, metrics, properties set, http calls,
//!   and whether the stream stalled or trapped.
//!
//! # Stream model (Envoy's filter manager around one Wasm filter followed by the router)
//! * Request headers (end of stream if there is no body), then the body chunks as given.
//!   `Pause` from a headers callback is StopIteration when `allow_on_headers_stop_iteration`
//!   is set, else StopAllIteration (body held back, not delivered until resumed).
//!   `Pause` from a body callback buffers: the next callback sees everything buffered.
//! * Request maps follow Envoy's availability: request headers can be read/changed only until
//!   `on_http_request_headers` returns Continue or the plugin calls `continue_stream`;
//!   afterwards map calls return BadArgument (the SDK panics: a harness diagnostic explains).
//! * `dispatch_http_call`s are answered right after the callback that made them returns, by
//!   the scripted responder (per request, else per VM); without an answer they stay pending.
//!   Resumes requested in a callback take effect after it returns.
//! * When the request end of stream reaches the upstream, the upstream ([`Upstream`]) answers
//!   and the response goes through the response callbacks the same way.
//! * `send_local_response` ends the request side; like in Envoy the local reply then goes
//!   through the same filter's response callbacks. Sent after the response started, it
//!   replaces the response if its headers were not sent yet, else resets the stream.
//! * A trap marks the VM failed: the client gets Envoy's 503 (or, with `fail_open`, the
//!   stream continues without the filter); later streams on that VM get the same treatment.
//! * `dispatch_grpc_call`s (unary) are recorded as [`HttpCall`]s with [`HttpCall::grpc`] set and
//!   answered the same way: [`CallReply::Grpc`] (initial metadata, message, trailing metadata
//!   callbacks; the message readable as the `GrpcReceive` buffer), [`CallReply::GrpcStatus`]
//!   (`proxy_on_grpc_close`), `Fail` (close with 14 UNAVAILABLE); expired ones close with 4.
//! * A stream that cannot progress is reported `stalled` and kept open: answer its calls with
//!   [`Vm::respond_http_call`] or end it with [`Vm::timeout_stream`].
//! * Finished streams get `on_log`, `on_done`, `on_delete`.

mod abi;
pub mod cargo_build;
mod host;
mod hostcalls;
mod state;
mod types;
mod vm;
mod wasi;
mod world;

pub use abi::LogLevel;
pub use host::{Host, HostOptions};
pub use types::{
    header, property_key, CallReply, CallResponder, CallState, ClientResponse, Forwarded,
    GrpcResponse, GrpcTarget, Headers, HttpCall, HttpCallResponse, HttpOutcome, HttpRequest,
    LocalReply, LogEntry, LogSource, MetricKind, MetricValue, Metrics, PropertySet, RootOutcome,
    Upstream, UpstreamResponse,
};
pub use vm::{StartError, Vm, VmOptions};

//! Public request, response and outcome types.

use crate::abi::LogLevel;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Header list as seen on the wire: lowercase names, in order, duplicates allowed.
pub type Headers = Vec<(String, String)>;

/// First value of header `name` (case-insensitive).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn split_chunks(body: Vec<u8>, size: usize) -> Vec<Vec<u8>> {
    if body.is_empty() {
        return Vec::new();
    }
    let size = size.max(1);
    body.chunks(size).map(<[u8]>::to_vec).collect()
}

/// Joins property path segments the way the SDK serializes them (NUL-separated).
pub fn property_key(path: &[&str]) -> String {
    path.join("\0")
}

/// Who produced a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogSource {
    /// `proxy_log` from the plugin.
    Plugin,
    /// A line the module wrote to WASI stdout.
    Stdout,
    /// A line the module wrote to WASI stderr.
    Stderr,
    /// A diagnostic from the harness (e.g. a host call Envoy would reject).
    Host,
}

/// One log line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogEntry {
    pub level: LogLevel,
    pub message: String,
    /// Context that was current when the line was emitted (root context id, or the stream's).
    pub context_id: u32,
    pub source: LogSource,
    /// Index of the VM that emitted it.
    pub vm: usize,
}

impl fmt::Display for LogEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source {
            LogSource::Plugin => write!(f, "[{}] {}", self.level, self.message),
            LogSource::Stdout => write!(f, "[stdout] {}", self.message),
            LogSource::Stderr => write!(f, "[stderr] {}", self.message),
            LogSource::Host => write!(f, "[harness {}] {}", self.level, self.message),
        }
    }
}

/// Metric kinds of the ABI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Value of one metric (shared by all VMs, like Envoy stats).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MetricValue {
    pub kind: MetricKind,
    /// Counter or gauge value; for histograms the number of samples.
    pub value: i64,
    /// Histogram samples in recording order (empty for counters and gauges).
    pub samples: Vec<u64>,
}

/// Snapshot of all metrics by name.
pub type Metrics = BTreeMap<String, MetricValue>;

/// How an upstream answers a forwarded request.
#[derive(Clone, Default)]
pub enum Upstream {
    /// `200` with a JSON echo of the forwarded request (`method`, `path`, `headers`, `body`).
    #[default]
    Echo,
    /// A fixed response.
    Fixed(UpstreamResponse),
    /// Computed from what reached the upstream.
    Func(Arc<dyn Fn(&Forwarded) -> UpstreamResponse + Send + Sync>),
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Echo => f.write_str("Echo"),
            Upstream::Fixed(r) => f.debug_tuple("Fixed").field(r).finish(),
            Upstream::Func(_) => f.write_str("Func(..)"),
        }
    }
}

impl Upstream {
    pub(crate) fn respond(&self, fwd: &Forwarded) -> UpstreamResponse {
        match self {
            Upstream::Echo => {
                let headers: serde_json::Map<String, serde_json::Value> = fwd
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect();
                let echo = serde_json::json!({
                    "method": header(&fwd.headers, ":method"),
                    "path": header(&fwd.headers, ":path"),
                    "headers": headers,
                    "body": String::from_utf8_lossy(&fwd.body),
                });
                UpstreamResponse::json(200, &echo)
            }
            Upstream::Fixed(r) => r.clone(),
            Upstream::Func(f) => f(fwd),
        }
    }
}

/// A response produced by the upstream (the test's backend).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamResponse {
    pub status: u16,
    /// Headers without `:status` (added by the harness).
    pub headers: Headers,
    /// Body chunks as they arrive at Envoy (each becomes one `on_http_response_body` call).
    pub chunks: Vec<Vec<u8>>,
}

impl UpstreamResponse {
    /// Empty response with `status`.
    pub fn new(status: u16) -> Self {
        UpstreamResponse {
            status,
            headers: Vec::new(),
            chunks: Vec::new(),
        }
    }

    /// JSON body with `content-type` and `content-length`.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        UpstreamResponse::new(status)
            .header("content-type", "application/json")
            .body_with_length(value.to_string())
    }

    /// `text/plain` body with `content-length`.
    pub fn text(status: u16, text: impl Into<String>) -> Self {
        UpstreamResponse::new(status)
            .header("content-type", "text/plain")
            .body_with_length(text.into())
    }

    /// `200 text/event-stream`, one chunk per event (`data: EVENT\n\n`), no `content-length`.
    pub fn sse<S: AsRef<str>>(events: &[S]) -> Self {
        let mut r = UpstreamResponse::new(200).header("content-type", "text/event-stream");
        r.chunks = events
            .iter()
            .map(|e| format!("data: {}\n\n", e.as_ref()).into_bytes())
            .collect();
        r
    }

    /// Adds a header (name lowercased).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// Sets the body as one chunk (no headers added).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        let body = body.into();
        self.chunks = if body.is_empty() {
            Vec::new()
        } else {
            vec![body]
        };
        self
    }

    /// Sets the body and a matching `content-length`.
    pub fn body_with_length(self, body: impl Into<Vec<u8>>) -> Self {
        let body = body.into();
        let len = body.len().to_string();
        let mut r = self.body(body);
        r.headers.retain(|(k, _)| k != "content-length");
        r.header("content-length", &len)
    }

    /// Re-splits the body into chunks of at most `size` bytes.
    pub fn chunked(mut self, size: usize) -> Self {
        let body = self.chunks.concat();
        self.chunks = split_chunks(body, size);
        self
    }

    /// Explicit body chunks.
    pub fn body_chunks(mut self, chunks: Vec<Vec<u8>>) -> Self {
        self.chunks = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        self
    }
}

/// Reply of a scripted responder to a `dispatch_http_call`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallReply {
    /// The cluster answers; delivered through `proxy_on_http_call_response`.
    Respond(HttpCallResponse),
    /// Connection failure or timeout: Envoy calls `proxy_on_http_call_response` with zero
    /// headers, body and trailers, and the response maps are unavailable.
    Fail,
    /// No answer for now; answer later with [`crate::Vm::respond_http_call`].
    Pending,
    /// gRPC calls: the service answers with one message, delivered through
    /// `proxy_on_grpc_receive` (after `proxy_on_grpc_receive_initial_metadata` and followed by
    /// `proxy_on_grpc_receive_trailing_metadata` when the response carries metadata). `Fail` on a
    /// gRPC call is a close with 14 UNAVAILABLE (no connection), an expired one 4 DEADLINE_EXCEEDED.
    Grpc(GrpcResponse),
    /// gRPC calls: the call ends with this non-zero status through `proxy_on_grpc_close`.
    GrpcStatus(u32),
}

/// Response to a `dispatch_grpc_call`: the message (without gRPC framing, as Envoy hands it over).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrpcResponse {
    pub message: Vec<u8>,
    pub initial_metadata: Headers,
    pub trailing_metadata: Headers,
}

impl GrpcResponse {
    pub fn new(message: impl Into<Vec<u8>>) -> Self {
        GrpcResponse {
            message: message.into(),
            ..GrpcResponse::default()
        }
    }

    /// Shorthand for `CallReply::Grpc(self)`.
    pub fn reply(self) -> CallReply {
        CallReply::Grpc(self)
    }
}

/// The gRPC method of a `dispatch_grpc_call` (`HttpCall::grpc`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GrpcTarget {
    pub service: String,
    pub method: String,
}

/// Response to a `dispatch_http_call`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCallResponse {
    pub status: u16,
    /// Headers without `:status` (added by the harness).
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
}

impl HttpCallResponse {
    pub fn new(status: u16) -> Self {
        HttpCallResponse {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            trailers: Vec::new(),
        }
    }

    /// JSON body with `content-type`.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        HttpCallResponse::new(status)
            .header("content-type", "application/json")
            .body(value.to_string())
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Shorthand for `CallReply::Respond(self)`.
    pub fn reply(self) -> CallReply {
        CallReply::Respond(self)
    }
}

/// Scripted answer to http calls: gets the recorded call, returns the reply.
pub type CallResponder = Arc<dyn Fn(&HttpCall) -> CallReply + Send + Sync>;

/// State of a dispatched http call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum CallState {
    Pending,
    Answered {
        status: u16,
    },
    Failed,
    /// The calling stream ended first (Envoy cancels its outstanding calls), or the plugin
    /// cancelled the gRPC call.
    Cancelled,
    /// A gRPC call ended: 0 when its message was delivered, else the status `proxy_on_grpc_close`
    /// reported.
    GrpcClosed {
        code: u32,
    },
}

/// A `dispatch_http_call` made by the plugin, or a `dispatch_grpc_call` (then `grpc` is set,
/// `headers` holds the initial metadata and `body` the request message).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HttpCall {
    pub token: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcTarget>,
    /// Context that dispatched it (root context id for calls from on_tick etc.).
    pub context_id: u32,
    pub vm: usize,
    pub cluster: String,
    pub headers: Headers,
    #[serde(serialize_with = "ser_lossy")]
    pub body: Vec<u8>,
    pub trailers: Headers,
    pub timeout_ms: u32,
    pub dispatched_at_ms: u64,
    pub state: CallState,
}

impl HttpCall {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn path(&self) -> &str {
        self.header(":path").unwrap_or("")
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP stream to drive through the filter.
#[derive(Clone)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub authority: String,
    pub scheme: String,
    /// Extra request headers (names lowercased). A `host` header becomes `:authority`.
    pub headers: Headers,
    /// Body chunks as they arrive at Envoy (empty: a headers-only request).
    pub chunks: Vec<Vec<u8>>,
    /// Add `content-length` when there is a body and the test did not set one (default on).
    pub auto_content_length: bool,
    /// Per-request properties (`get_property`), keyed by [`property_key`]; override the defaults.
    pub properties: BTreeMap<String, Vec<u8>>,
    pub upstream: Upstream,
    /// Overrides the VM's `allow_on_headers_stop_iteration`.
    pub allow_on_headers_stop_iteration: Option<bool>,
    /// Overrides the VM's http call responder for calls made by this stream.
    pub responder: Option<CallResponder>,
}

impl fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("authority", &self.authority)
            .field("headers", &self.headers)
            .field("chunks", &self.chunks.len())
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .field("upstream", &self.upstream)
            .field(
                "allow_on_headers_stop_iteration",
                &self.allow_on_headers_stop_iteration,
            )
            .field("responder", &self.responder.is_some())
            .finish()
    }
}

impl HttpRequest {
    pub fn new(method: &str, path: &str) -> Self {
        HttpRequest {
            method: method.to_string(),
            path: path.to_string(),
            authority: "localhost".to_string(),
            scheme: "http".to_string(),
            headers: Vec::new(),
            chunks: Vec::new(),
            auto_content_length: true,
            properties: BTreeMap::new(),
            upstream: Upstream::Echo,
            allow_on_headers_stop_iteration: None,
            responder: None,
        }
    }

    pub fn get(path: &str) -> Self {
        HttpRequest::new("GET", path)
    }

    pub fn post(path: &str) -> Self {
        HttpRequest::new("POST", path)
    }

    /// Adds a request header (name lowercased; `host` sets `:authority`).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = name.to_ascii_lowercase();
        if name == "host" || name == ":authority" {
            self.authority = value.to_string();
        } else {
            self.headers.push((name, value.to_string()));
        }
        self
    }

    /// Body as one chunk.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        let body = body.into();
        self.chunks = if body.is_empty() {
            Vec::new()
        } else {
            vec![body]
        };
        self
    }

    /// JSON body with `content-type: application/json`.
    pub fn json(self, value: &serde_json::Value) -> Self {
        self.header("content-type", "application/json")
            .body(value.to_string())
    }

    /// Re-splits the body into chunks of at most `size` bytes.
    pub fn chunked(mut self, size: usize) -> Self {
        let body = self.chunks.concat();
        self.chunks = split_chunks(body, size);
        self
    }

    /// Explicit body chunks.
    pub fn body_chunks(mut self, chunks: Vec<Vec<u8>>) -> Self {
        self.chunks = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        self
    }

    /// Sets a property for `get_property(path)`.
    pub fn property(mut self, path: &[&str], value: impl Into<Vec<u8>>) -> Self {
        self.properties.insert(property_key(path), value.into());
        self
    }

    /// mTLS peer: sets `connection.uri_san_peer_certificate` and `connection.mtls`.
    pub fn peer(self, uri_san: &str) -> Self {
        self.property(&["connection", "uri_san_peer_certificate"], uri_san)
            .property(&["connection", "mtls"], vec![1u8])
    }

    /// Downstream address (`source.address`, `source.port`), e.g. `10.0.0.7:51000`.
    pub fn source(self, address: &str) -> Self {
        let port = address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<i64>().ok())
            .unwrap_or(0);
        self.property(&["source", "address"], address)
            .property(&["source", "port"], port.to_le_bytes().to_vec())
    }

    pub fn upstream(mut self, response: UpstreamResponse) -> Self {
        self.upstream = Upstream::Fixed(response);
        self
    }

    pub fn upstream_fn(
        mut self,
        f: impl Fn(&Forwarded) -> UpstreamResponse + Send + Sync + 'static,
    ) -> Self {
        self.upstream = Upstream::Func(Arc::new(f));
        self
    }

    pub fn allow_on_headers_stop_iteration(mut self, allow: bool) -> Self {
        self.allow_on_headers_stop_iteration = Some(allow);
        self
    }

    pub fn responder(mut self, f: impl Fn(&HttpCall) -> CallReply + Send + Sync + 'static) -> Self {
        self.responder = Some(Arc::new(f));
        self
    }

    /// The whole body.
    pub fn body_bytes(&self) -> Vec<u8> {
        self.chunks.concat()
    }
}

fn ser_lossy<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(b))
}

/// A `send_local_response` (send_http_response) as the plugin issued it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LocalReply {
    pub status: u16,
    /// Additional headers the plugin passed (names lowercased).
    pub headers: Headers,
    #[serde(serialize_with = "ser_lossy")]
    pub body: Vec<u8>,
    pub details: String,
    /// `-1` when not a gRPC reply.
    pub grpc_status: i32,
}

impl LocalReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What reached the upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Forwarded {
    /// Request headers after the filter's mutations (pseudo headers included).
    pub headers: Headers,
    #[serde(serialize_with = "ser_lossy")]
    pub body: Vec<u8>,
    /// Trailers the filter added (Envoy creates them on request in the last body callback).
    pub trailers: Headers,
    /// The end of stream reached the upstream.
    pub complete: bool,
}

impl Forwarded {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What the client received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClientResponse {
    pub status: u16,
    pub headers: Headers,
    #[serde(serialize_with = "ser_lossy")]
    pub body: Vec<u8>,
    pub trailers: Headers,
    /// The end of stream reached the client.
    pub complete: bool,
}

impl ClientResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A `set_property` call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PropertySet {
    pub path: Vec<String>,
    #[serde(serialize_with = "ser_lossy")]
    pub value: Vec<u8>,
}

/// Result of driving one HTTP stream: outcomes, not call order.
#[derive(Clone, Debug, Serialize)]
pub struct HttpOutcome {
    pub vm: usize,
    pub context_id: u32,
    /// The plugin's `send_local_response`, as issued.
    pub local_reply: Option<LocalReply>,
    /// What reached the upstream (`None`: the request never left Envoy).
    pub forwarded: Option<Forwarded>,
    /// What the client received (after the filter's response callbacks); `None` if nothing.
    pub response: Option<ClientResponse>,
    /// Log lines emitted while the harness drove this stream (all sources, all levels).
    pub logs: Vec<LogEntry>,
    /// Metrics after the stream.
    pub metrics: Metrics,
    /// `set_property` calls of this stream, in order.
    pub properties_set: Vec<PropertySet>,
    /// Http calls dispatched by this stream (with their final state).
    pub http_calls: Vec<HttpCall>,
    /// The stream neither completed nor failed: something paused and nothing resumed it.
    pub stalled: bool,
    pub stall_reason: Option<String>,
    /// A trap (panic, unreachable, fuel exhaustion...) while handling this stream.
    pub trapped: Option<String>,
    /// The VM is failed (trapped in this stream or earlier).
    pub vm_failed: bool,
    /// The stream was reset (close_stream, or a local reply after the response started).
    pub reset: bool,
    /// Ended by [`crate::Vm::timeout_stream`].
    pub timed_out: bool,
    /// [`crate::Vm::http`] only: the proxy-wasm and WASI host calls the filter made for this stream, and the
    /// callbacks the host made into it (the `on_log`/`on_done`/`on_delete` ones included).
    pub host_calls: u64,
    pub callbacks: u64,
}

impl HttpOutcome {
    /// Status the client received.
    pub fn status(&self) -> Option<u16> {
        self.response.as_ref().map(|r| r.status)
    }

    /// Body the client received (lossy UTF-8; empty if none).
    pub fn body_str(&self) -> String {
        self.response
            .as_ref()
            .map(ClientResponse::body_str)
            .unwrap_or_default()
    }

    /// Body the client received parsed as JSON.
    pub fn body_json(&self) -> Option<serde_json::Value> {
        let r = self.response.as_ref()?;
        serde_json::from_slice(&r.body).ok()
    }

    /// Response header the client received.
    pub fn response_header(&self, name: &str) -> Option<&str> {
        self.response.as_ref().and_then(|r| r.header(name))
    }

    /// Request header that reached the upstream.
    pub fn forwarded_header(&self, name: &str) -> Option<&str> {
        self.forwarded.as_ref().and_then(|f| f.header(name))
    }

    /// Plugin log messages (`proxy_log`) at `min` level or above.
    pub fn plugin_logs(&self, min: LogLevel) -> Vec<&str> {
        self.logs
            .iter()
            .filter(|l| l.source == LogSource::Plugin && l.level >= min)
            .map(|l| l.message.as_str())
            .collect()
    }

    /// Any log line (any source) contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs.iter().any(|l| l.message.contains(needle))
    }

    /// Value of a `set_property` call of this stream (last one wins).
    pub fn property_set(&self, path: &[&str]) -> Option<&[u8]> {
        self.properties_set
            .iter()
            .rev()
            .find(|p| p.path.iter().map(String::as_str).eq(path.iter().copied()))
            .map(|p| p.value.as_slice())
    }

    /// Value of a metric after the stream.
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.metrics.get(name).map(|m| m.value)
    }
}

/// Result of a root-context callback driven by the harness (tick, queue ready, call response).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RootOutcome {
    /// Number of root callbacks invoked.
    pub callbacks: u32,
    pub logs: Vec<LogEntry>,
    /// Http calls dispatched during these callbacks.
    pub http_calls: Vec<HttpCall>,
    pub trapped: Option<String>,
}

impl RootOutcome {
    pub fn logged(&self, needle: &str) -> bool {
        self.logs.iter().any(|l| l.message.contains(needle))
    }
}

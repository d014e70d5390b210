//! Per-VM state reachable from host calls (the wasmtime `Store` data).

use crate::abi::LogLevel;
use crate::host::HostShared;
use crate::types::{HttpCall, LocalReply, LogEntry, LogSource, PropertySet};
use crate::world::World;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use wasmtime::{format_err, Result};
use wasmtime::{Memory, TypedFunc};

/// Host-call-visible state of one HTTP stream (an Envoy `Context` with filter callbacks).
#[derive(Debug, Default)]
pub(crate) struct StreamData {
    pub req_headers: Vec<(String, String)>,
    /// Envoy keeps `request_headers_` only until `on_request_headers` returns Continue or the
    /// plugin calls `continue_stream`; outside that window map calls return BadArgument.
    pub req_headers_avail: bool,
    pub req_trailers: Option<Vec<(String, String)>>,
    /// The buffer `HttpRequestBody` refers to (current chunk, or everything buffered so far).
    pub req_body: Option<Vec<u8>>,
    pub resp_started: bool,
    pub resp_headers: Vec<(String, String)>,
    pub resp_headers_avail: bool,
    pub resp_trailers: Option<Vec<(String, String)>>,
    pub resp_body: Option<Vec<u8>>,
    pub end_of_stream: bool,
    /// on_log: maps are read-only views of the final headers.
    pub log_phase: bool,
    /// Static per-request properties (harness defaults overridden by the test's).
    pub props: BTreeMap<String, Vec<u8>>,
    pub props_set: Vec<PropertySet>,
    /// Deferred actions requested during the current callback.
    pub local_reply: Option<LocalReply>,
    pub resume_request: bool,
    pub resume_response: bool,
    pub reset: bool,
}

/// Response of an http call while `on_http_call_response` runs (or of a gRPC call while its
/// callbacks run).
#[derive(Debug, Default)]
pub(crate) struct ActiveCallResponse {
    /// `None`: the call failed (maps and body unavailable).
    pub headers: Option<Vec<(String, String)>>,
    pub trailers: Option<Vec<(String, String)>>,
    pub body: Option<Vec<u8>>,
    /// gRPC calls: the received message and metadata (each only in its own callback).
    pub grpc_message: Option<Vec<u8>>,
    pub grpc_initial: Option<Vec<(String, String)>>,
    pub grpc_trailing: Option<Vec<(String, String)>>,
}

#[derive(Debug)]
pub(crate) struct CallEntry {
    pub call: HttpCall,
    /// The responder has been consulted.
    pub offered: bool,
}

pub(crate) struct VmState {
    pub world: Arc<Mutex<World>>,
    pub shared: Arc<HostShared>,
    pub vm_index: usize,
    pub memory: Option<Memory>,
    pub alloc: Option<TypedFunc<i32, i32>>,
    pub root_id: u32,
    pub effective: u32,
    pub next_context_id: u32,
    pub streams: HashMap<u32, StreamData>,
    pub logs: Vec<LogEntry>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub log_level: LogLevel,
    pub tick_period_ms: u32,
    pub next_tick_ns: u64,
    pub vm_config: Vec<u8>,
    pub plugin_config: Vec<u8>,
    pub in_configure: bool,
    pub next_token: u32,
    pub calls: Vec<CallEntry>,
    pub call_response: Option<ActiveCallResponse>,
    pub metric_ids: HashMap<u32, String>,
    pub next_metric_seq: u32,
    /// Calls into the host (proxy-wasm and WASI imports) and into the guest (callbacks), counted by a
    /// wasmtime call hook: what the filter costs Envoy beyond its own instructions.
    pub host_calls: u64,
    pub guest_calls: u64,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("vm_index", &self.vm_index)
            .field("root_id", &self.root_id)
            .field("streams", &self.streams.len())
            .field("logs", &self.logs.len())
            .finish()
    }
}

impl VmState {
    pub fn world(&self) -> Result<MutexGuard<'_, World>> {
        self.world
            .lock()
            .map_err(|_| format_err!("harness shared state poisoned"))
    }

    pub fn stream(&self) -> Option<&StreamData> {
        self.streams.get(&self.effective)
    }

    pub fn stream_mut(&mut self) -> Option<&mut StreamData> {
        self.streams.get_mut(&self.effective)
    }

    pub fn log(&mut self, level: LogLevel, source: LogSource, message: String) {
        self.logs.push(LogEntry {
            level,
            message,
            context_id: self.effective,
            source,
            vm: self.vm_index,
        });
    }

    /// A diagnostic about a host call Envoy would reject (helps explain the SDK panic that
    /// usually follows).
    pub fn diag(&mut self, message: String) {
        self.log(LogLevel::Warn, LogSource::Host, message);
    }

    /// Appends WASI output and turns complete lines into log entries.
    pub fn write_output(&mut self, fd: i32, data: &[u8]) {
        let (buf, source, level) = if fd == 1 {
            (&mut self.stdout, LogSource::Stdout, LogLevel::Info)
        } else {
            (&mut self.stderr, LogSource::Stderr, LogLevel::Error)
        };
        buf.extend_from_slice(data);
        let mut lines = Vec::new();
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line);
            lines.push(text.trim_end_matches(['\n', '\r']).to_string());
        }
        for line in lines {
            self.log(level, source, line);
        }
    }

    /// Flushes partial stdout/stderr lines (at the end of a callback that trapped).
    pub fn flush_output(&mut self) {
        if !self.stdout.is_empty() {
            let text = String::from_utf8_lossy(&std::mem::take(&mut self.stdout)).into_owned();
            self.log(LogLevel::Info, LogSource::Stdout, text);
        }
        if !self.stderr.is_empty() {
            let text = String::from_utf8_lossy(&std::mem::take(&mut self.stderr)).into_owned();
            self.log(LogLevel::Error, LogSource::Stderr, text);
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.world().map(|w| w.now_ns / 1_000_000).unwrap_or(0)
    }
}

//! `Vm`: one instance of the module (an Envoy worker's VM) and the HTTP stream driver that
//! mimics Envoy's filter manager around a single Wasm filter followed by the router.

use crate::abi::LogLevel;
use crate::host::Host;
use crate::state::{ActiveCallResponse, StreamData, VmState};
use crate::types::{
    header, CallReply, CallResponder, CallState, ClientResponse, Forwarded, Headers, HttpCall,
    HttpOutcome, HttpRequest, LocalReply, LogEntry, LogSource, RootOutcome, Upstream,
};
use anyhow::{anyhow, bail, Context as _, Result};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use wasmtime::{Instance, Store, TypedFunc, WasmParams, WasmResults};

/// Per-VM settings (the plugin's Envoy filter configuration).
#[derive(Clone)]
pub struct VmOptions {
    /// Plugin configuration (`configuration` of the filter), given to `on_configure`.
    pub plugin_config: Vec<u8>,
    /// VM configuration (`vm_config.configuration`), given to `on_vm_start`.
    pub vm_config: Vec<u8>,
    /// Envoy's `allow_on_headers_stop_iteration` (default false, like Envoy): when false a
    /// Pause from a headers callback stops all iteration, so no body callback runs until the
    /// plugin resumes the stream.
    pub allow_on_headers_stop_iteration: bool,
    /// Envoy's `failure_policy: FAIL_OPEN`: after a trap, streams pass through untouched
    /// instead of getting a 503.
    pub fail_open: bool,
    /// What `get_log_level` reports (all lines are recorded whatever the level).
    pub log_level: LogLevel,
    /// Scripted answers to `dispatch_http_call`; without one calls stay pending.
    pub responder: Option<CallResponder>,
    /// Guard against plugins that never stop dispatching: callbacks per stream before the
    /// harness gives up on it (reported as stalled).
    pub max_callbacks_per_stream: u32,
}

impl fmt::Debug for VmOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmOptions")
            .field(
                "plugin_config",
                &String::from_utf8_lossy(&self.plugin_config),
            )
            .field("vm_config", &String::from_utf8_lossy(&self.vm_config))
            .field(
                "allow_on_headers_stop_iteration",
                &self.allow_on_headers_stop_iteration,
            )
            .field("fail_open", &self.fail_open)
            .field("log_level", &self.log_level)
            .field("responder", &self.responder.is_some())
            .finish()
    }
}

impl VmOptions {
    pub fn new(plugin_config: impl Into<Vec<u8>>) -> Self {
        VmOptions {
            plugin_config: plugin_config.into(),
            vm_config: Vec::new(),
            allow_on_headers_stop_iteration: false,
            fail_open: false,
            log_level: LogLevel::Info,
            responder: None,
            max_callbacks_per_stream: 10_000,
        }
    }

    pub fn vm_config(mut self, config: impl Into<Vec<u8>>) -> Self {
        self.vm_config = config.into();
        self
    }

    pub fn allow_on_headers_stop_iteration(mut self, allow: bool) -> Self {
        self.allow_on_headers_stop_iteration = allow;
        self
    }

    pub fn fail_open(mut self, open: bool) -> Self {
        self.fail_open = open;
        self
    }

    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.log_level = level;
        self
    }

    pub fn responder(mut self, f: impl Fn(&HttpCall) -> CallReply + Send + Sync + 'static) -> Self {
        self.responder = Some(Arc::new(f));
        self
    }
}

/// Creating a VM failed in the plugin (its start-up or configuration was rejected or trapped).
#[derive(Debug, Clone)]
pub struct StartError {
    /// `_initialize`, `proxy_on_context_create`, `on_vm_start` or `on_configure`.
    pub stage: String,
    pub trap: Option<String>,
    /// Everything the plugin logged while starting.
    pub logs: Vec<LogEntry>,
}

impl StartError {
    /// The plugin log lines, without the harness's own diagnostics.
    pub fn plugin_messages(&self) -> Vec<&str> {
        self.logs
            .iter()
            .filter(|l| l.source != LogSource::Host)
            .map(|l| l.message.as_str())
            .collect()
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.trap {
            Some(t) => write!(f, "plugin trapped in {}: {t}", self.stage)?,
            None => write!(
                f,
                "plugin rejected its configuration: {} returned false",
                self.stage
            )?,
        }
        if !self.logs.is_empty() {
            write!(f, "; plugin logs:")?;
            for l in &self.logs {
                write!(f, "\n  {l}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for StartError {}

type F1 = TypedFunc<i32, ()>;
type F1R = TypedFunc<i32, i32>;
type F2 = TypedFunc<(i32, i32), ()>;
type F2R = TypedFunc<(i32, i32), i32>;
type F3 = TypedFunc<(i32, i32, i32), ()>;
type F3R = TypedFunc<(i32, i32, i32), i32>;
type F5 = TypedFunc<(i32, i32, i32, i32, i32), ()>;

struct Exports {
    context_create: Option<F2>,
    vm_start: Option<F2R>,
    configure: Option<F2R>,
    tick: Option<F1>,
    queue_ready: Option<F2>,
    request_headers: Option<F3R>,
    request_body: Option<F3R>,
    response_headers: Option<F3R>,
    response_body: Option<F3R>,
    call_response: Option<F5>,
    grpc_initial: Option<F3>,
    grpc_receive: Option<F3>,
    grpc_trailing: Option<F3>,
    grpc_close: Option<F3>,
    log: Option<F1>,
    done: Option<F1R>,
    delete: Option<F1>,
}

fn export<P: WasmParams, R: WasmResults>(
    instance: &Instance,
    store: &mut Store<VmState>,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>> {
    match instance.get_func(&mut *store, name) {
        None => Ok(None),
        Some(f) => Ok(Some(
            f.typed::<P, R>(&*store)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("export {name} has an unexpected signature"))?,
        )),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SideId {
    Req,
    Resp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Request,
    Response,
}

/// Filter-manager view of one direction of the stream.
#[derive(Debug, Default)]
struct Side {
    headers_passed: bool,
    /// The filter is stopping iteration (Pause from headers or body, not yet resumed).
    stopped: bool,
    /// The stop is StopAllIteration: data is held by the filter manager, not delivered.
    stop_all: bool,
    /// Last body callback returned Pause: data accumulates in the body buffer.
    buffering: bool,
    held: Vec<u8>,
    held_eos: bool,
    has_held: bool,
    /// The filter has seen end of stream.
    filter_eos: bool,
    eos_passed: bool,
}

#[derive(Debug)]
enum Ev {
    Headers { headers: Headers, eos: bool },
    Data { data: Vec<u8>, eos: bool },
}

struct StreamRun {
    id: u32,
    allow_stop: bool,
    responder: Option<CallResponder>,
    upstream: Upstream,
    req_events: VecDeque<Ev>,
    resp_events: VecDeque<Ev>,
    rq: Side,
    rs: Side,
    phase: Phase,
    /// The response side carries a local reply (the plugin's or a timeout's).
    local_reply_encoding: bool,
    local_reply: Option<LocalReply>,
    forwarded: Option<Forwarded>,
    response: Option<ClientResponse>,
    logs: Vec<LogEntry>,
    trapped: Option<String>,
    vm_failed: bool,
    reset: bool,
    timed_out: bool,
    finished: bool,
    upstream_called: bool,
    callbacks: u32,
    limit_hit: bool,
}

impl StreamRun {
    fn side(&mut self, side: SideId) -> &mut Side {
        match side {
            SideId::Req => &mut self.rq,
            SideId::Resp => &mut self.rs,
        }
    }

    fn live(&self, side: SideId) -> bool {
        !self.finished
            && match side {
                SideId::Req => self.phase == Phase::Request,
                SideId::Resp => self.phase == Phase::Response,
            }
    }
}

fn body_events(chunks: Vec<Vec<u8>>) -> Vec<Ev> {
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, data)| Ev::Data {
            data,
            eos: i + 1 == n,
        })
        .collect()
}

fn status_of(headers: &[(String, String)]) -> u16 {
    header(headers, ":status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn local_reply_headers(status: u16, extra: &[(String, String)], body: &[u8]) -> Headers {
    let mut h = vec![(":status".to_string(), status.to_string())];
    h.extend(extra.iter().cloned());
    if !body.is_empty() {
        h.retain(|(k, _)| k != "content-length");
        h.push(("content-length".to_string(), body.len().to_string()));
        if header(&h, "content-type").is_none() {
            h.push(("content-type".to_string(), "text/plain".to_string()));
        }
    }
    h
}

/// One instance of the module with its own root context, as an Envoy worker thread has.
pub struct Vm {
    host: Host,
    store: Store<VmState>,
    ex: Exports,
    opts: VmOptions,
    failed: Option<String>,
    pending_trap: Option<String>,
    runs: BTreeMap<u32, StreamRun>,
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("index", &self.index())
            .field("options", &self.opts)
            .field("failed", &self.failed)
            .field("stalled_streams", &self.runs.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Vm {
    pub(crate) fn start(host: Host, opts: VmOptions) -> Result<Vm> {
        let vm_index = {
            let mut w = host.world()?;
            let i = w.next_vm;
            w.next_vm += 1;
            i
        };
        let state = VmState {
            world: host.world.clone(),
            shared: host.shared.clone(),
            vm_index,
            memory: None,
            alloc: None,
            root_id: 1,
            effective: 1,
            next_context_id: 2,
            streams: Default::default(),
            logs: Vec::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            log_level: opts.log_level,
            tick_period_ms: 0,
            next_tick_ns: 0,
            vm_config: opts.vm_config.clone(),
            plugin_config: opts.plugin_config.clone(),
            in_configure: false,
            next_token: 1,
            calls: Vec::new(),
            call_response: None,
            metric_ids: Default::default(),
            next_metric_seq: 0,
            host_calls: 0,
            guest_calls: 0,
        };
        let mut store = Store::new(&host.shared.engine, state);
        store.call_hook(|mut c, hook| {
            match hook {
                wasmtime::CallHook::CallingHost => c.data_mut().host_calls += 1,
                wasmtime::CallHook::CallingWasm => c.data_mut().guest_calls += 1,
                _ => {}
            }
            Ok(())
        });
        if let Some(fuel) = host.shared.options.fuel_per_callback {
            store.set_fuel(fuel)?;
        }
        let instance = host
            .shared
            .pre
            .instantiate(&mut store)
            .map_err(anyhow::Error::from)
            .context("instantiating the module")?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| anyhow!("the module does not export `memory`"))?;
        let alloc = match export::<i32, i32>(&instance, &mut store, "proxy_on_memory_allocate")? {
            Some(f) => f,
            None => export::<i32, i32>(&instance, &mut store, "malloc")?
                .ok_or_else(|| anyhow!("the module exports no allocator"))?,
        };
        store.data_mut().memory = Some(memory);
        store.data_mut().alloc = Some(alloc);
        let ex = Exports {
            context_create: export(&instance, &mut store, "proxy_on_context_create")?,
            vm_start: export(&instance, &mut store, "proxy_on_vm_start")?,
            configure: export(&instance, &mut store, "proxy_on_configure")?,
            tick: export(&instance, &mut store, "proxy_on_tick")?,
            queue_ready: export(&instance, &mut store, "proxy_on_queue_ready")?,
            request_headers: export(&instance, &mut store, "proxy_on_request_headers")?,
            request_body: export(&instance, &mut store, "proxy_on_request_body")?,
            response_headers: export(&instance, &mut store, "proxy_on_response_headers")?,
            response_body: export(&instance, &mut store, "proxy_on_response_body")?,
            call_response: export(&instance, &mut store, "proxy_on_http_call_response")?,
            grpc_initial: export(
                &instance,
                &mut store,
                "proxy_on_grpc_receive_initial_metadata",
            )?,
            grpc_receive: export(&instance, &mut store, "proxy_on_grpc_receive")?,
            grpc_trailing: export(
                &instance,
                &mut store,
                "proxy_on_grpc_receive_trailing_metadata",
            )?,
            grpc_close: export(&instance, &mut store, "proxy_on_grpc_close")?,
            log: export(&instance, &mut store, "proxy_on_log")?,
            done: export(&instance, &mut store, "proxy_on_done")?,
            delete: export(&instance, &mut store, "proxy_on_delete")?,
        };
        let init = match export::<(), ()>(&instance, &mut store, "_initialize")? {
            Some(f) => Some(("_initialize", f)),
            None => export::<(), ()>(&instance, &mut store, "_start")?.map(|f| ("_start", f)),
        };
        let mut vm = Vm {
            host,
            store,
            ex,
            opts,
            failed: None,
            pending_trap: None,
            runs: BTreeMap::new(),
        };
        if let Some((name, f)) = init {
            vm.call(Some(f), 1, (), ())
                .ok_or_else(|| vm.start_error(name))?;
        }
        let root = vm.root_context_id() as i32;
        vm.call(vm.ex.context_create.clone(), 1, (root, 0), ())
            .ok_or_else(|| vm.start_error("proxy_on_context_create"))?;
        let vm_config_len = vm.opts.vm_config.len() as i32;
        let started = vm
            .call(vm.ex.vm_start.clone(), 1, (root, vm_config_len), 1)
            .ok_or_else(|| vm.start_error("on_vm_start"))?;
        if started == 0 {
            return Err(vm.start_error("on_vm_start").into());
        }
        let plugin_config_len = vm.opts.plugin_config.len() as i32;
        vm.store.data_mut().in_configure = true;
        let configured = vm.call(vm.ex.configure.clone(), 1, (root, plugin_config_len), 1);
        vm.store.data_mut().in_configure = false;
        match configured {
            None => return Err(vm.start_error("on_configure").into()),
            Some(0) => return Err(vm.start_error("on_configure").into()),
            Some(_) => {}
        }
        vm.deferred_root();
        Ok(vm)
    }

    fn start_error(&mut self, stage: &str) -> StartError {
        StartError {
            stage: stage.to_string(),
            trap: self.pending_trap.take(),
            logs: self.store.data().logs.clone(),
        }
    }

    /// Index of this VM within its host (0, 1, ...).
    pub fn index(&self) -> usize {
        self.store.data().vm_index
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn root_context_id(&self) -> u32 {
        self.store.data().root_id
    }

    /// Every log line of this VM so far.
    pub fn logs(&self) -> &[LogEntry] {
        &self.store.data().logs
    }

    /// Drains the VM's log lines.
    pub fn take_logs(&mut self) -> Vec<LogEntry> {
        std::mem::take(&mut self.store.data_mut().logs)
    }

    /// Tick period the plugin set (0: none).
    pub fn tick_period_ms(&self) -> u32 {
        self.store.data().tick_period_ms
    }

    /// The VM trapped earlier (Envoy marks it failed); the message of that trap.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Every http call this VM dispatched, in order.
    pub fn http_calls(&self) -> Vec<HttpCall> {
        self.store
            .data()
            .calls
            .iter()
            .map(|c| c.call.clone())
            .collect()
    }

    /// Calls still waiting for an answer.
    pub fn pending_http_calls(&self) -> Vec<HttpCall> {
        self.http_calls()
            .into_iter()
            .filter(|c| c.state == CallState::Pending)
            .collect()
    }

    /// Context ids of streams that stalled and are still open.
    pub fn stalled_streams(&self) -> Vec<u32> {
        self.runs.keys().copied().collect()
    }

    pub fn set_http_call_responder(
        &mut self,
        f: impl Fn(&HttpCall) -> CallReply + Send + Sync + 'static,
    ) {
        self.opts.responder = Some(Arc::new(f));
    }

    pub fn clear_http_call_responder(&mut self) {
        self.opts.responder = None;
    }

    /// Sets what `get_log_level` reports.
    pub fn set_log_level(&mut self, level: LogLevel) {
        self.store.data_mut().log_level = level;
    }

    // -----------------------------------------------------------------------------------------
    // Calling into the module.

    fn log_mark(&self) -> usize {
        self.store.data().logs.len()
    }

    fn logs_since(&self, mark: usize) -> Vec<LogEntry> {
        self.store
            .data()
            .logs
            .get(mark..)
            .map(<[LogEntry]>::to_vec)
            .unwrap_or_default()
    }

    /// Calls an export with `ctx` as the current context. `None`: the VM is failed (it trapped
    /// now, see `pending_trap`, or earlier). A missing export returns `default`.
    fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        f: Option<TypedFunc<P, R>>,
        ctx: u32,
        params: P,
        default: R,
    ) -> Option<R> {
        if self.failed.is_some() {
            return None;
        }
        let Some(f) = f else {
            return Some(default);
        };
        self.store.data_mut().effective = ctx;
        if let Some(fuel) = self.host.shared.options.fuel_per_callback {
            let _ = self.store.set_fuel(fuel);
        }
        let mark = self.log_mark();
        let result = f.call(&mut self.store, params);
        let root = self.store.data().root_id;
        self.store.data_mut().effective = root;
        match result {
            Ok(r) => Some(r),
            Err(e) => {
                self.store.data_mut().flush_output();
                let mut msg = e.root_cause().to_string();
                let panic = self
                    .logs_since(mark)
                    .into_iter()
                    .rev()
                    .find(|l| {
                        l.source != LogSource::Host
                            && (l.level == LogLevel::Critical || l.message.contains("panicked at"))
                    })
                    .map(|l| l.message);
                if let Some(p) = panic {
                    msg = format!("{msg}; {p}");
                }
                let detail = format!("trap in context {ctx}: {e:?}");
                self.store
                    .data_mut()
                    .log(LogLevel::Critical, LogSource::Host, detail);
                self.failed = Some(msg.clone());
                self.pending_trap = Some(msg);
                None
            }
        }
    }

    fn stream(&mut self, id: u32) -> &mut StreamData {
        self.store.data_mut().streams.entry(id).or_default()
    }

    // -----------------------------------------------------------------------------------------
    // Root-context driving.

    fn responder_for(&self, run: Option<&StreamRun>, call: &HttpCall) -> Option<CallResponder> {
        run.filter(|r| r.id == call.context_id)
            .and_then(|r| r.responder.clone())
            .or_else(|| self.opts.responder.clone())
    }

    fn next_unoffered_call(&mut self) -> Option<HttpCall> {
        let entry = self
            .store
            .data_mut()
            .calls
            .iter_mut()
            .find(|c| !c.offered && c.call.state == CallState::Pending)?;
        entry.offered = true;
        Some(entry.call.clone())
    }

    /// Delivers an answer through `proxy_on_http_call_response`. `false` if the VM trapped.
    fn deliver_call_reply(&mut self, token: u32, reply: CallReply) -> bool {
        let s = self.store.data_mut();
        let Some(entry) = s.calls.iter_mut().find(|c| c.call.token == token) else {
            return true;
        };
        if entry.call.state != CallState::Pending {
            return true;
        }
        entry.offered = true;
        let ctx = entry.call.context_id;
        if entry.call.grpc.is_some() {
            return self.deliver_grpc_reply(ctx, token, reply);
        }
        let (active, state) = match reply {
            CallReply::Pending => return true,
            // A gRPC answer scripted for an http call: the call fails.
            CallReply::Fail | CallReply::Grpc(_) | CallReply::GrpcStatus(_) => {
                (ActiveCallResponse::default(), CallState::Failed)
            }
            CallReply::Respond(r) => {
                let mut headers = vec![(":status".to_string(), r.status.to_string())];
                headers.extend(r.headers);
                (
                    ActiveCallResponse {
                        headers: Some(headers),
                        trailers: (!r.trailers.is_empty()).then_some(r.trailers),
                        body: Some(r.body),
                        ..ActiveCallResponse::default()
                    },
                    CallState::Answered { status: r.status },
                )
            }
        };
        entry.call.state = state;
        let nh = active.headers.as_ref().map_or(0, Vec::len) as i32;
        let nb = active.body.as_ref().map_or(0, Vec::len) as i32;
        let nt = active.trailers.as_ref().map_or(0, Vec::len) as i32;
        s.call_response = Some(active);
        let r = self.call(
            self.ex.call_response.clone(),
            ctx,
            (ctx as i32, token as i32, nh, nb, nt),
            (),
        );
        self.store.data_mut().call_response = None;
        r.is_some()
    }

    /// Delivers the end of a gRPC call: metadata and message callbacks, or `proxy_on_grpc_close`.
    /// `false` if the VM trapped.
    fn deliver_grpc_reply(&mut self, ctx: u32, token: u32, reply: CallReply) -> bool {
        let code = match &reply {
            CallReply::Pending => return true,
            CallReply::Grpc(_) => 0,
            CallReply::GrpcStatus(code) => *code,
            CallReply::Fail => 14,
            CallReply::Respond(_) => {
                self.store.data_mut().diag(format!(
                    "an http response scripted for gRPC call {token}: closing it with 13 INTERNAL"
                ));
                13
            }
        };
        if let Some(e) = self
            .store
            .data_mut()
            .calls
            .iter_mut()
            .find(|c| c.call.token == token)
        {
            e.call.state = CallState::GrpcClosed { code };
        }
        let CallReply::Grpc(response) = reply else {
            let f = self.ex.grpc_close.clone();
            return self
                .call(f, ctx, (ctx as i32, token as i32, code as i32), ())
                .is_some();
        };
        let steps = [
            (
                self.ex.grpc_initial.clone(),
                (!response.initial_metadata.is_empty()).then(|| ActiveCallResponse {
                    grpc_initial: Some(response.initial_metadata.clone()),
                    ..ActiveCallResponse::default()
                }),
                response.initial_metadata.len(),
            ),
            (
                self.ex.grpc_receive.clone(),
                Some(ActiveCallResponse {
                    grpc_message: Some(response.message.clone()),
                    ..ActiveCallResponse::default()
                }),
                response.message.len(),
            ),
            (
                self.ex.grpc_trailing.clone(),
                (!response.trailing_metadata.is_empty()).then(|| ActiveCallResponse {
                    grpc_trailing: Some(response.trailing_metadata.clone()),
                    ..ActiveCallResponse::default()
                }),
                response.trailing_metadata.len(),
            ),
        ];
        for (f, active, n) in steps {
            let Some(active) = active else {
                continue;
            };
            self.store.data_mut().call_response = Some(active);
            let r = self.call(f, ctx, (ctx as i32, token as i32, n as i32), ());
            self.store.data_mut().call_response = None;
            if r.is_none() {
                return false;
            }
        }
        true
    }

    /// Answers calls dispatched by root callbacks with the VM's responder.
    fn deferred_root(&mut self) {
        let mut guard = 0;
        while let Some(call) = self.next_unoffered_call() {
            guard += 1;
            if guard > self.opts.max_callbacks_per_stream {
                break;
            }
            let reply = match self.responder_for(None, &call) {
                Some(f) => f(&call),
                None => CallReply::Pending,
            };
            if !self.deliver_call_reply(call.token, reply) {
                break;
            }
        }
    }

    fn root_outcome(&mut self, mark: usize, calls_mark: usize, callbacks: u32) -> RootOutcome {
        RootOutcome {
            callbacks,
            logs: self.logs_since(mark),
            http_calls: self
                .store
                .data()
                .calls
                .get(calls_mark..)
                .map(|c| c.iter().map(|e| e.call.clone()).collect())
                .unwrap_or_default(),
            trapped: self.pending_trap.take(),
        }
    }

    /// Runs `on_tick` once (whatever the tick period), then answers the calls it dispatched.
    pub fn tick(&mut self) -> RootOutcome {
        let (mark, calls_mark) = (self.log_mark(), self.store.data().calls.len());
        let root = self.root_context_id();
        let period = u64::from(self.store.data().tick_period_ms) * 1_000_000;
        let now = self.host.world().map(|w| w.now_ns).unwrap_or(0);
        self.store.data_mut().next_tick_ns = now + period;
        let fired = self
            .call(self.ex.tick.clone(), root, root as i32, ())
            .is_some();
        if fired {
            self.deferred_root();
        }
        self.root_outcome(mark, calls_mark, 1)
    }

    /// Runs `on_tick` for every period elapsed on the host clock since the plugin set its tick
    /// period (or since the last tick), like Envoy's timer would have.
    pub fn run_due_ticks(&mut self) -> RootOutcome {
        let (mark, calls_mark) = (self.log_mark(), self.store.data().calls.len());
        let root = self.root_context_id();
        let mut fired = 0;
        loop {
            let period = u64::from(self.store.data().tick_period_ms) * 1_000_000;
            let now = self.host.world().map(|w| w.now_ns).unwrap_or(0);
            let due = self.store.data().next_tick_ns;
            if period == 0 || now < due || fired >= 10_000 || self.failed.is_some() {
                break;
            }
            self.store.data_mut().next_tick_ns = due + period;
            fired += 1;
            if self
                .call(self.ex.tick.clone(), root, root as i32, ())
                .is_none()
            {
                break;
            }
            self.deferred_root();
        }
        self.root_outcome(mark, calls_mark, fired)
    }

    /// Delivers pending `on_queue_ready` notifications for queues this VM registered.
    pub fn deliver_queue_notifications(&mut self) -> RootOutcome {
        let (mark, calls_mark) = (self.log_mark(), self.store.data().calls.len());
        let index = self.index();
        let mine: Vec<(usize, u32, u32)> = match self.host.world() {
            Ok(mut w) => {
                let (mine, rest) = std::mem::take(&mut w.queue_ready)
                    .into_iter()
                    .partition(|(vm, _, _)| *vm == index);
                w.queue_ready = rest;
                mine
            }
            Err(_) => Vec::new(),
        };
        let mut n = 0;
        for (_, root, queue) in mine {
            n += 1;
            if self
                .call(
                    self.ex.queue_ready.clone(),
                    root,
                    (root as i32, queue as i32),
                    (),
                )
                .is_none()
            {
                break;
            }
            self.deferred_root();
        }
        self.root_outcome(mark, calls_mark, n)
    }

    /// Answers a pending http call explicitly. If the call belongs to a stalled stream, the
    /// stream is driven on and its updated outcome returned.
    pub fn respond_http_call(
        &mut self,
        token: u32,
        reply: CallReply,
    ) -> Result<Option<HttpOutcome>> {
        let call = self
            .store
            .data()
            .calls
            .iter()
            .find(|c| c.call.token == token)
            .map(|c| c.call.clone())
            .ok_or_else(|| anyhow!("no http call with token {token}"))?;
        if call.state != CallState::Pending {
            bail!("http call {token} is not pending ({:?})", call.state);
        }
        if matches!(reply, CallReply::Pending) {
            return Ok(None);
        }
        let mark = self.log_mark();
        match self.runs.remove(&call.context_id) {
            Some(mut run) => {
                run.callbacks += 1;
                if self.deliver_call_reply(token, reply) {
                    if !self.terminal_check(&mut run) {
                        self.deferred(&mut run);
                    }
                } else {
                    self.on_failure(&mut run, SideId::Req);
                }
                self.drive(&mut run);
                Ok(Some(self.conclude(run, mark)))
            }
            None => {
                self.deliver_call_reply(token, reply);
                self.deferred_root();
                Ok(None)
            }
        }
    }

    /// Fails every pending call whose timeout elapsed on the host clock (Envoy delivers
    /// `on_http_call_response` with no response). Returns updated outcomes of streams that
    /// were waiting on them.
    pub fn expire_http_calls(&mut self) -> Vec<HttpOutcome> {
        let now_ms = self.host.now_ms();
        let expired: Vec<u32> = self
            .pending_http_calls()
            .into_iter()
            .filter(|c| c.timeout_ms > 0 && c.dispatched_at_ms + u64::from(c.timeout_ms) <= now_ms)
            .map(|c| c.token)
            .collect();
        // Envoy fails an expired http call (no response) and closes an expired gRPC call with
        // 4 DEADLINE_EXCEEDED.
        let grpc: Vec<u32> = self
            .http_calls()
            .into_iter()
            .filter(|c| c.grpc.is_some())
            .map(|c| c.token)
            .collect();
        expired
            .into_iter()
            .filter_map(|t| {
                let reply = if grpc.contains(&t) {
                    CallReply::GrpcStatus(4)
                } else {
                    CallReply::Fail
                };
                self.respond_http_call(t, reply).ok().flatten()
            })
            .collect()
    }

    /// Ends a stalled stream as Envoy's stream timeout would: a 504 local reply through the
    /// filter's response callbacks if no response started, else a reset.
    pub fn timeout_stream(&mut self, context_id: u32) -> Result<HttpOutcome> {
        let mut run = self
            .runs
            .remove(&context_id)
            .ok_or_else(|| anyhow!("no stalled stream with context id {context_id}"))?;
        let mark = self.log_mark();
        run.timed_out = true;
        if run.phase == Phase::Request && !run.local_reply_encoding {
            let body = b"stream timeout".to_vec();
            let headers = local_reply_headers(504, &[], &body);
            run.req_events.clear();
            run.phase = Phase::Response;
            run.local_reply_encoding = true;
            run.resp_events = VecDeque::from(vec![
                Ev::Headers {
                    headers,
                    eos: false,
                },
                Ev::Data {
                    data: body,
                    eos: true,
                },
            ]);
            self.drive(&mut run);
        }
        if !run.finished {
            if !run.rs.headers_passed {
                let body = b"stream timeout".to_vec();
                let headers = local_reply_headers(504, &[], &body);
                run.response = Some(ClientResponse {
                    status: 504,
                    headers,
                    body,
                    trailers: Vec::new(),
                    complete: true,
                });
            } else {
                run.reset = true;
            }
            run.finished = true;
        }
        Ok(self.conclude(run, mark))
    }

    // -----------------------------------------------------------------------------------------
    // HTTP streams.

    fn request_headers(&self, req: &HttpRequest, id: u32) -> Headers {
        let mut h: Headers = vec![
            (":authority".to_string(), req.authority.clone()),
            (":path".to_string(), req.path.clone()),
            (":method".to_string(), req.method.clone()),
            (":scheme".to_string(), req.scheme.clone()),
        ];
        h.extend(req.headers.iter().cloned());
        let body_len: usize = req.chunks.iter().map(Vec::len).sum();
        if req.auto_content_length && body_len > 0 && header(&h, "content-length").is_none() {
            h.push(("content-length".to_string(), body_len.to_string()));
        }
        if header(&h, "x-forwarded-proto").is_none() {
            h.push(("x-forwarded-proto".to_string(), req.scheme.clone()));
        }
        if header(&h, "x-request-id").is_none() {
            h.push((
                "x-request-id".to_string(),
                format!("harness-{}-{id}", self.index()),
            ));
        }
        h
    }

    fn request_properties(&self, req: &HttpRequest, id: u32) -> BTreeMap<String, Vec<u8>> {
        let mut p = BTreeMap::new();
        let mut put = |path: &[&str], v: Vec<u8>| {
            p.insert(crate::types::property_key(path), v);
        };
        put(&["source", "address"], b"127.0.0.1:50000".to_vec());
        put(&["source", "port"], 50000i64.to_le_bytes().to_vec());
        put(&["destination", "address"], b"127.0.0.1:10000".to_vec());
        put(&["destination", "port"], 10000i64.to_le_bytes().to_vec());
        put(&["connection", "id"], u64::from(id).to_le_bytes().to_vec());
        put(&["connection", "mtls"], vec![0]);
        put(&["request", "protocol"], b"HTTP/1.1".to_vec());
        let now = self.host.world().map(|w| w.now_ns).unwrap_or(0);
        put(&["request", "time"], (now as i64).to_le_bytes().to_vec());
        let size: usize = req.chunks.iter().map(Vec::len).sum();
        put(&["request", "size"], (size as i64).to_le_bytes().to_vec());
        for (k, v) in &req.properties {
            p.insert(k.clone(), v.clone());
        }
        p
    }

    /// Drives one HTTP stream through the filter (see the crate docs for the model).
    pub fn http(&mut self, req: HttpRequest) -> HttpOutcome {
        self.deliver_queue_notifications();
        let mark = self.log_mark();
        let counts = (self.store.data().host_calls, self.store.data().guest_calls);
        let id = {
            let s = self.store.data_mut();
            let id = s.next_context_id;
            s.next_context_id += 1;
            id
        };
        let headers = self.request_headers(&req, id);
        let props = self.request_properties(&req, id);
        let chunks = req.chunks.clone();
        let mut req_events = VecDeque::new();
        req_events.push_back(Ev::Headers {
            headers,
            eos: chunks.is_empty(),
        });
        req_events.extend(body_events(chunks));
        let mut run = StreamRun {
            id,
            allow_stop: req
                .allow_on_headers_stop_iteration
                .unwrap_or(self.opts.allow_on_headers_stop_iteration),
            responder: req.responder.clone(),
            upstream: req.upstream.clone(),
            req_events,
            resp_events: VecDeque::new(),
            rq: Side::default(),
            rs: Side::default(),
            phase: Phase::Request,
            local_reply_encoding: false,
            local_reply: None,
            forwarded: None,
            response: None,
            logs: Vec::new(),
            trapped: None,
            vm_failed: self.failed.is_some(),
            reset: false,
            timed_out: false,
            finished: false,
            upstream_called: false,
            callbacks: 0,
            limit_hit: false,
        };
        self.stream(id).props = props;
        if self.failed.is_none() {
            let root = self.root_context_id();
            if self
                .call(
                    self.ex.context_create.clone(),
                    id,
                    (id as i32, root as i32),
                    (),
                )
                .is_none()
            {
                self.on_failure(&mut run, SideId::Req);
            }
        }
        self.drive(&mut run);
        let mut outcome = self.conclude(run, mark);
        let data = self.store.data();
        outcome.host_calls = data.host_calls - counts.0;
        outcome.callbacks = data.guest_calls - counts.1;
        self.deliver_queue_notifications();
        outcome
    }

    fn drive(&mut self, run: &mut StreamRun) {
        loop {
            if run.finished {
                return;
            }
            if run.callbacks > self.opts.max_callbacks_per_stream {
                run.limit_hit = true;
                return;
            }
            match run.phase {
                Phase::Request => {
                    if let Some(ev) = run.req_events.pop_front() {
                        self.deliver(run, SideId::Req, ev);
                    } else if run.rq.eos_passed && !run.upstream_called {
                        self.call_upstream(run);
                    } else {
                        return;
                    }
                }
                Phase::Response => {
                    if let Some(ev) = run.resp_events.pop_front() {
                        self.deliver(run, SideId::Resp, ev);
                    } else if run.rs.eos_passed {
                        run.finished = true;
                    } else {
                        return;
                    }
                }
            }
        }
    }

    fn call_upstream(&mut self, run: &mut StreamRun) {
        run.upstream_called = true;
        let fwd = match &run.forwarded {
            Some(f) => f.clone(),
            None => return,
        };
        let resp = run.upstream.respond(&fwd);
        let mut headers = vec![(":status".to_string(), resp.status.to_string())];
        headers.extend(resp.headers);
        run.resp_events.push_back(Ev::Headers {
            headers,
            eos: resp.chunks.is_empty(),
        });
        run.resp_events.extend(body_events(resp.chunks));
        run.phase = Phase::Response;
        let d = self.stream(run.id);
        d.req_body = None;
        d.req_headers_avail = false;
    }

    fn deliver(&mut self, run: &mut StreamRun, side: SideId, ev: Ev) {
        match ev {
            Ev::Headers { headers, eos } => self.deliver_headers(run, side, headers, eos),
            Ev::Data { data, eos } => self.deliver_data(run, side, data, eos),
        }
    }

    fn deliver_headers(&mut self, run: &mut StreamRun, side: SideId, headers: Headers, eos: bool) {
        let n = headers.len() as i32;
        let d = self.stream(run.id);
        match side {
            SideId::Req => {
                d.req_headers = headers;
                d.req_headers_avail = true;
            }
            SideId::Resp => {
                d.resp_headers = headers;
                d.resp_headers_avail = true;
                d.resp_started = true;
            }
        }
        d.end_of_stream = eos;
        run.side(side).filter_eos = eos;
        run.callbacks += 1;
        let f = match side {
            SideId::Req => self.ex.request_headers.clone(),
            SideId::Resp => self.ex.response_headers.clone(),
        };
        let id = run.id as i32;
        let result = match self.call(f, run.id, (id, n, i32::from(eos)), 0) {
            Some(r) => r,
            None => {
                if !self.on_failure(run, side) {
                    return;
                }
                0
            }
        };
        if self.terminal_check(run) {
            return;
        }
        if result == 0 {
            let d = self.stream(run.id);
            match side {
                SideId::Req => d.req_headers_avail = false,
                SideId::Resp => d.resp_headers_avail = false,
            }
            self.pass_headers(run, side);
            if eos {
                self.pass_data(run, side, Vec::new(), true);
            }
        } else {
            let allow = run.allow_stop;
            let s = run.side(side);
            s.stopped = true;
            s.stop_all = !allow;
        }
        self.deferred(run);
    }

    fn deliver_data(&mut self, run: &mut StreamRun, side: SideId, data: Vec<u8>, eos: bool) {
        {
            let s = run.side(side);
            if s.stopped && s.stop_all {
                s.held.extend_from_slice(&data);
                s.held_eos |= eos;
                s.has_held = true;
                return;
            }
        }
        let buffering = run.side(side).buffering;
        let d = self.stream(run.id);
        let slot = match side {
            SideId::Req => &mut d.req_body,
            SideId::Resp => &mut d.resp_body,
        };
        let buf = if buffering {
            let mut b = slot.take().unwrap_or_default();
            b.extend_from_slice(&data);
            b
        } else {
            data
        };
        let len = buf.len() as i32;
        *slot = Some(buf);
        d.end_of_stream = eos;
        run.side(side).filter_eos = eos;
        run.callbacks += 1;
        let f = match side {
            SideId::Req => self.ex.request_body.clone(),
            SideId::Resp => self.ex.response_body.clone(),
        };
        let id = run.id as i32;
        let result = match self.call(f, run.id, (id, len, i32::from(eos)), 0) {
            Some(r) => r,
            None => {
                if !self.on_failure(run, side) {
                    return;
                }
                0
            }
        };
        if self.terminal_check(run) {
            return;
        }
        if result == 0 {
            if !run.side(side).headers_passed {
                self.pass_headers(run, side);
            }
            let d = self.stream(run.id);
            let out = match side {
                SideId::Req => d.req_body.take(),
                SideId::Resp => d.resp_body.take(),
            }
            .unwrap_or_default();
            let s = run.side(side);
            s.buffering = false;
            s.stopped = false;
            self.pass_data(run, side, out, eos);
        } else {
            let s = run.side(side);
            s.buffering = true;
            s.stopped = true;
        }
        self.deferred(run);
    }

    fn pass_headers(&mut self, run: &mut StreamRun, side: SideId) {
        let d = self.stream(run.id);
        match side {
            SideId::Req => {
                run.forwarded = Some(Forwarded {
                    headers: d.req_headers.clone(),
                    body: Vec::new(),
                    trailers: Vec::new(),
                    complete: false,
                });
                run.rq.headers_passed = true;
            }
            SideId::Resp => {
                run.response = Some(ClientResponse {
                    status: status_of(&d.resp_headers),
                    headers: d.resp_headers.clone(),
                    body: Vec::new(),
                    trailers: Vec::new(),
                    complete: false,
                });
                run.rs.headers_passed = true;
            }
        }
    }

    fn pass_data(&mut self, run: &mut StreamRun, side: SideId, data: Vec<u8>, eos: bool) {
        if !run.side(side).headers_passed {
            self.pass_headers(run, side);
        }
        let d = self.stream(run.id);
        match side {
            SideId::Req => {
                let trailers = d.req_trailers.clone();
                if let Some(f) = run.forwarded.as_mut() {
                    f.body.extend_from_slice(&data);
                    if eos {
                        f.complete = true;
                        f.trailers = trailers.unwrap_or_default();
                    }
                }
            }
            SideId::Resp => {
                let trailers = d.resp_trailers.clone();
                if let Some(r) = run.response.as_mut() {
                    r.body.extend_from_slice(&data);
                    if eos {
                        r.complete = true;
                        r.trailers = trailers.unwrap_or_default();
                    }
                }
            }
        }
        if eos {
            run.side(side).eos_passed = true;
        }
    }

    /// The VM failed (now or before) while handling `run`. With fail-open the filter is
    /// bypassed (returns true: treat as Continue); fail-closed answers 503 (Envoy's
    /// `failStream`) or resets if the response already started (returns false).
    fn on_failure(&mut self, run: &mut StreamRun, _side: SideId) -> bool {
        run.vm_failed = true;
        if run.trapped.is_none() {
            run.trapped = self.pending_trap.take();
        }
        if self.opts.fail_open {
            return true;
        }
        if !run.rs.headers_passed {
            run.response = Some(ClientResponse {
                status: 503,
                headers: local_reply_headers(503, &[], &[]),
                body: Vec::new(),
                trailers: Vec::new(),
                complete: true,
            });
        } else {
            run.reset = true;
        }
        run.finished = true;
        false
    }

    /// Handles what Envoy does right after a callback returns, before looking at its status:
    /// resets and local replies. `true` if the stream was ended or redirected.
    fn terminal_check(&mut self, run: &mut StreamRun) -> bool {
        if run.finished {
            return true;
        }
        let d = self.stream(run.id);
        if d.reset {
            d.reset = false;
            d.local_reply = None;
            run.reset = true;
            run.finished = true;
            return true;
        }
        let Some(lr) = d.local_reply.take() else {
            return false;
        };
        d.resume_request = false;
        d.resume_response = false;
        match run.phase {
            Phase::Request => {
                let headers = local_reply_headers(lr.status, &lr.headers, &lr.body);
                let body = lr.body.clone();
                run.local_reply = Some(lr);
                run.req_events.clear();
                run.phase = Phase::Response;
                run.local_reply_encoding = true;
                run.resp_events.push_back(Ev::Headers {
                    headers,
                    eos: body.is_empty(),
                });
                if !body.is_empty() {
                    run.resp_events.push_back(Ev::Data {
                        data: body,
                        eos: true,
                    });
                }
                d.req_headers_avail = false;
                d.req_body = None;
            }
            Phase::Response => {
                if run.local_reply_encoding {
                    self.store.data_mut().diag(
                        "send_local_response while a local reply is being sent is ignored"
                            .to_string(),
                    );
                    return false;
                }
                if !run.rs.headers_passed {
                    run.response = Some(ClientResponse {
                        status: lr.status,
                        headers: local_reply_headers(lr.status, &lr.headers, &lr.body),
                        body: lr.body.clone(),
                        trailers: Vec::new(),
                        complete: true,
                    });
                } else {
                    run.reset = true;
                }
                run.local_reply = Some(lr);
                run.finished = true;
            }
        }
        true
    }

    /// Deferred actions after a callback's status was applied: resumes, then http call answers.
    fn deferred(&mut self, run: &mut StreamRun) {
        loop {
            if run.finished || run.callbacks > self.opts.max_callbacks_per_stream {
                return;
            }
            let d = self.stream(run.id);
            if d.resume_request {
                d.resume_request = false;
                self.resume(run, SideId::Req);
                continue;
            }
            if d.resume_response {
                d.resume_response = false;
                self.resume(run, SideId::Resp);
                continue;
            }
            let Some(call) = self.next_unoffered_call() else {
                return;
            };
            let reply = match self.responder_for(Some(run), &call) {
                Some(f) => f(&call),
                None => CallReply::Pending,
            };
            if matches!(reply, CallReply::Pending) {
                continue;
            }
            run.callbacks += 1;
            if !self.deliver_call_reply(call.token, reply) {
                self.on_failure(run, SideId::Req);
                return;
            }
            if call.context_id == run.id && self.terminal_check(run) {
                return;
            }
        }
    }

    fn resume(&mut self, run: &mut StreamRun, side: SideId) {
        if !run.live(side) || !run.side(side).stopped {
            return;
        }
        run.side(side).stopped = false;
        if !run.side(side).headers_passed {
            self.pass_headers(run, side);
        }
        if run.side(side).stop_all {
            let s = run.side(side);
            s.stop_all = false;
            if s.has_held {
                let data = std::mem::take(&mut s.held);
                let eos = s.held_eos;
                s.has_held = false;
                s.held_eos = false;
                // Envoy delivers the held body to this filter first (iterate from current).
                self.deliver_data(run, side, data, eos);
            } else if s.filter_eos && !s.eos_passed {
                self.pass_data(run, side, Vec::new(), true);
            }
            return;
        }
        if run.side(side).buffering {
            run.side(side).buffering = false;
            let d = self.stream(run.id);
            let data = match side {
                SideId::Req => d.req_body.take(),
                SideId::Resp => d.resp_body.take(),
            }
            .unwrap_or_default();
            let eos = run.side(side).filter_eos;
            self.pass_data(run, side, data, eos);
        } else if run.side(side).filter_eos && !run.side(side).eos_passed {
            self.pass_data(run, side, Vec::new(), true);
        }
    }

    fn stall_reason(&self, run: &StreamRun) -> String {
        let mut reasons = Vec::new();
        let (name, s) = match run.phase {
            Phase::Request => ("request", &run.rq),
            Phase::Response => ("response", &run.rs),
        };
        if run.limit_hit {
            reasons.push(format!(
                "gave up after {} callbacks (max_callbacks_per_stream)",
                run.callbacks
            ));
        }
        if s.stopped && s.stop_all {
            reasons.push(format!(
                "on_http_{name}_headers returned Pause while allow_on_headers_stop_iteration is \
                 false: Envoy stops all iteration, so the {name} body ({} bytes held) is not \
                 delivered until the plugin resumes the stream, and nothing resumed it",
                s.held.len()
            ));
        } else if s.stopped && s.buffering {
            reasons.push(format!(
                "on_http_{name}_body returned Pause (buffering) and the {name} was never resumed"
            ));
        } else if s.stopped {
            reasons.push(format!(
                "on_http_{name}_headers returned Pause and the {name} was never resumed"
            ));
        }
        let pending: Vec<String> = self
            .store
            .data()
            .calls
            .iter()
            .filter(|c| c.call.context_id == run.id && c.call.state == CallState::Pending)
            .map(|c| {
                format!(
                    "#{} to {} {} {}",
                    c.call.token,
                    c.call.cluster,
                    c.call.header(":method").unwrap_or(""),
                    c.call.path()
                )
            })
            .collect();
        if !pending.is_empty() {
            reasons.push(format!("pending http calls: {}", pending.join(", ")));
        }
        if reasons.is_empty() {
            reasons.push(format!("the {name} did not complete"));
        }
        reasons.join("; ")
    }

    /// Builds the outcome; finished streams get on_log/on_done/on_delete, stalled ones stay open.
    fn conclude(&mut self, mut run: StreamRun, mark: usize) -> HttpOutcome {
        let stalled = !run.finished;
        let stall_reason = stalled.then(|| self.stall_reason(&run));
        if run.finished {
            let id = run.id as i32;
            if self.failed.is_none() {
                let d = self.stream(run.id);
                d.log_phase = true;
                d.req_body = None;
                d.resp_body = None;
                if let Some(resp) = &run.response {
                    d.resp_headers = resp.headers.clone();
                    d.resp_started = true;
                }
                let ok = self.call(self.ex.log.clone(), run.id, id, ()).is_some()
                    && self.call(self.ex.done.clone(), run.id, id, 1).is_some()
                    && self.call(self.ex.delete.clone(), run.id, id, ()).is_some();
                if !ok {
                    run.vm_failed = true;
                    if run.trapped.is_none() {
                        run.trapped = self.pending_trap.take();
                    }
                }
            }
            for c in self.store.data_mut().calls.iter_mut() {
                if c.call.context_id == run.id && c.call.state == CallState::Pending {
                    c.call.state = CallState::Cancelled;
                    c.offered = true;
                }
            }
        }
        run.logs.extend(self.logs_since(mark));
        let calls: Vec<HttpCall> = self
            .store
            .data()
            .calls
            .iter()
            .filter(|c| c.call.context_id == run.id)
            .map(|c| c.call.clone())
            .collect();
        let props_set = self
            .store
            .data()
            .streams
            .get(&run.id)
            .map(|d| d.props_set.clone())
            .unwrap_or_default();
        let outcome = HttpOutcome {
            vm: self.index(),
            context_id: run.id,
            local_reply: run.local_reply.clone(),
            forwarded: run.forwarded.clone(),
            response: run.response.clone(),
            logs: run.logs.clone(),
            metrics: self.host.metrics(),
            properties_set: props_set,
            http_calls: calls,
            stalled,
            stall_reason,
            trapped: run.trapped.clone(),
            vm_failed: run.vm_failed || self.failed.is_some(),
            reset: run.reset,
            timed_out: run.timed_out,
            host_calls: 0,
            callbacks: 0,
        };
        if stalled {
            self.runs.insert(run.id, run);
        } else {
            self.store.data_mut().streams.remove(&run.id);
        }
        outcome
    }
}

//! `Host`: one compiled module plus the state its VMs share.

use crate::hostcalls::{define_env, Registry};
use crate::state::VmState;
use crate::types::Metrics;
use crate::vm::{Vm, VmOptions};
use crate::wasi::define_wasi;
use crate::world::World;
use anyhow::{anyhow, bail, Context as _, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wasmtime::{Config, Engine, ExternType, InstancePre, Linker, Module, OptLevel};

/// Host-wide settings (Envoy's plugin/VM configuration outside the configuration strings).
#[derive(Clone, Debug)]
pub struct HostOptions {
    /// `vm_config.vm_id`: shared data and queues are scoped by it.
    pub vm_id: String,
    /// Plugin `name` (property `plugin_name`).
    pub plugin_name: String,
    /// Plugin `root_id` (property `plugin_root_id`).
    pub root_id: String,
    /// Clusters `dispatch_http_call` may target; `None` accepts any (Envoy: BadArgument for
    /// a cluster it does not know).
    pub clusters: Option<BTreeSet<String>>,
    /// Extra properties visible from every context, keyed by [`crate::property_key`].
    pub properties: BTreeMap<String, Vec<u8>>,
    /// Instructions (wasmtime fuel) allowed per callback before the call traps; guards tests
    /// against runaway loops. `None` disables metering.
    pub fuel_per_callback: Option<u64>,
    /// Initial clock in ms since the Unix epoch; `None` takes the system time once at start.
    /// The clock only moves through [`Host::set_time_ms`] / [`Host::advance_ms`].
    pub start_time_ms: Option<u64>,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            vm_id: String::new(),
            plugin_name: "txngate".to_string(),
            root_id: String::new(),
            clusters: None,
            properties: BTreeMap::new(),
            fuel_per_callback: Some(20_000_000_000),
            start_time_ms: None,
        }
    }
}

pub(crate) struct HostShared {
    pub options: HostOptions,
    pub engine: Engine,
    pub pre: InstancePre<VmState>,
    pub imports: Vec<String>,
}

/// A loaded proxy-wasm module (compiled once) and the world its VMs share: clock, shared
/// data, shared queues, metrics. Cheap to clone.
#[derive(Clone)]
pub struct Host {
    pub(crate) shared: Arc<HostShared>,
    pub(crate) world: Arc<Mutex<World>>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("options", &self.shared.options)
            .field("imports", &self.shared.imports.len())
            .finish()
    }
}

const ABI_MARKERS: [&str; 3] = [
    "proxy_abi_version_0_2_1",
    "proxy_abi_version_0_2_0",
    "proxy_abi_version_0_1_0",
];

impl Host {
    /// Loads a `.wasm` file with default options.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Host> {
        Host::from_file_with(path, HostOptions::default())
    }

    pub fn from_file_with(path: impl AsRef<Path>, options: HostOptions) -> Result<Host> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Host::from_bytes(&bytes, options).with_context(|| format!("loading {}", path.display()))
    }

    /// Compiles a module and checks that every import is implemented.
    pub fn from_bytes(wasm: &[u8], options: HostOptions) -> Result<Host> {
        let mut config = Config::new();
        config.consume_fuel(options.fuel_per_callback.is_some());
        config.cranelift_opt_level(OptLevel::None);
        let engine = Engine::new(&config)?;
        let module = Module::from_binary(&engine, wasm)
            .map_err(anyhow::Error::from)
            .context("compiling the module")?;

        let mut linker = Linker::new(&engine);
        let mut registry = Registry {
            linker: &mut linker,
            names: BTreeSet::new(),
        };
        define_env(&mut registry)?;
        define_wasi(&mut registry)?;
        let names = registry.names;

        let mut missing = Vec::new();
        let mut imports = Vec::new();
        for import in module.imports() {
            let full = format!("{}.{}", import.module(), import.name());
            imports.push(full.clone());
            match import.ty() {
                ExternType::Func(_) => {
                    if !names.contains(&(import.module().to_string(), import.name().to_string())) {
                        missing.push(full);
                    }
                }
                other => missing.push(format!("{full} (a {} import)", extern_kind(&other))),
            }
        }
        if !missing.is_empty() {
            bail!(
                "the module imports {} function(s) the harness does not implement: {}",
                missing.len(),
                missing.join(", ")
            );
        }
        let exports: BTreeSet<&str> = module.exports().map(|e| e.name()).collect();
        if !ABI_MARKERS.iter().any(|m| exports.contains(m)) {
            bail!("the module exports no proxy_abi_version_* marker: not a proxy-wasm module");
        }
        for required in ["memory", "proxy_on_context_create"] {
            if !exports.contains(required) {
                bail!("the module does not export `{required}`");
            }
        }
        if !exports.contains("proxy_on_memory_allocate") && !exports.contains("malloc") {
            bail!("the module exports neither proxy_on_memory_allocate nor malloc");
        }
        let pre = linker
            .instantiate_pre(&module)
            .map_err(anyhow::Error::from)
            .context("linking the module's imports")?;

        let start_ms = match options.start_time_ms {
            Some(ms) => ms,
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        };
        Ok(Host {
            shared: Arc::new(HostShared {
                options,
                engine,
                pre,
                imports,
            }),
            world: Arc::new(Mutex::new(World::new(start_ms * 1_000_000))),
        })
    }

    /// Same compiled module, new empty world (clock, shared data, queues, metrics): lets
    /// independent tests share one compilation.
    pub fn with_fresh_state(&self) -> Host {
        let now_ns = self.world().map(|w| w.now_ns).unwrap_or(0);
        Host {
            shared: self.shared.clone(),
            world: Arc::new(Mutex::new(World::new(now_ns))),
        }
    }

    pub(crate) fn world(&self) -> Result<MutexGuard<'_, World>> {
        self.world
            .lock()
            .map_err(|_| anyhow!("harness shared state poisoned"))
    }

    pub fn options(&self) -> &HostOptions {
        &self.shared.options
    }

    /// Imports of the module (`module.name`).
    pub fn imports(&self) -> &[String] {
        &self.shared.imports
    }

    /// New VM (an Envoy worker thread's instance) with `plugin_config` as plugin configuration.
    pub fn vm(&self, plugin_config: impl Into<Vec<u8>>) -> Result<Vm> {
        self.vm_with(VmOptions::new(plugin_config))
    }

    /// New VM with full options. Runs `_initialize`, creates the root context, calls
    /// `on_vm_start` and `on_configure`; a `false` from either is a [`crate::StartError`]
    /// carrying the plugin's logs.
    pub fn vm_with(&self, options: VmOptions) -> Result<Vm> {
        Vm::start(self.clone(), options)
    }

    /// Clock, ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.world().map(|w| w.now_ns / 1_000_000).unwrap_or(0)
    }

    pub fn set_time_ms(&self, ms: u64) {
        if let Ok(mut w) = self.world() {
            w.now_ns = ms * 1_000_000;
        }
    }

    pub fn advance_ms(&self, ms: u64) {
        self.advance(Duration::from_millis(ms));
    }

    pub fn advance(&self, by: Duration) {
        if let Ok(mut w) = self.world() {
            w.now_ns = w.now_ns.saturating_add(by.as_nanos() as u64);
        }
    }

    /// Snapshot of shared data: key -> (value, cas).
    pub fn shared_data(&self) -> BTreeMap<String, (Vec<u8>, u32)> {
        self.world().map(|w| w.shared.clone()).unwrap_or_default()
    }

    /// One shared data entry: (value, cas).
    pub fn shared_value(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.world().ok().and_then(|w| w.get_shared(key))
    }

    /// Sets shared data from the test with the same rules as the plugin's
    /// `set_shared_data`; `false` on a cas mismatch.
    pub fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> bool {
        self.world()
            .map(|mut w| w.set_shared(key, value.to_vec(), cas) == crate::abi::Status::Ok)
            .unwrap_or(false)
    }

    /// Enqueues on a registered shared queue (like another plugin would); the owner VM gets
    /// `on_queue_ready` the next time it is driven.
    pub fn enqueue(&self, queue_name: &str, value: &[u8]) -> Result<()> {
        let mut w = self.world()?;
        let id = w
            .resolve_queue(&self.shared.options.vm_id, queue_name)
            .ok_or_else(|| anyhow!("no shared queue named {queue_name:?} is registered"))?;
        w.enqueue(id, value.to_vec());
        Ok(())
    }

    /// Items waiting in a shared queue.
    pub fn queue_len(&self, queue_name: &str) -> Option<usize> {
        let w = self.world().ok()?;
        let id = w.resolve_queue(&self.shared.options.vm_id, queue_name)?;
        w.queues.get(&id).map(|q| q.items.len())
    }

    /// Snapshot of all metrics.
    pub fn metrics(&self) -> Metrics {
        self.world().map(|w| w.metrics.clone()).unwrap_or_default()
    }

    /// Counter/gauge value (sample count for histograms).
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.world()
            .ok()
            .and_then(|w| w.metrics.get(name).map(|m| m.value))
    }
}

fn extern_kind(t: &ExternType) -> &'static str {
    match t {
        ExternType::Func(_) => "function",
        ExternType::Global(_) => "global",
        ExternType::Table(_) => "table",
        ExternType::Memory(_) => "memory",
        _ => "non-function",
    }
}

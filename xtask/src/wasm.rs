//! The core workloads inside wasmtime: builds `tests/bench-wasm` for wasm32-wasip1 (release, like the
//! filter), loads it in wasmtime 48 with Cranelift (the harness's engine) and times each case from the host.
//!
//! The module needs almost nothing from WASI (the workloads use no host randomness or clock); the few
//! imports std links are given minimal definitions and anything else traps, so a workload that started
//! doing I/O would fail loudly instead of being timed.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use wasmtime::{Caller, Config, Engine, Extern, Instance, Linker, Module, Store, TypedFunc};

const WASI: &str = "wasi_snapshot_preview1";
const WASM: &str = "target/wasm32-wasip1/release/txngate_bench_wasm.wasm";

pub fn run(root: &Path, quick: bool) -> Result<()> {
    let _ = std::fs::remove_file(root.join(crate::core_bench::WASM_JSON));
    eprintln!("xtask bench: wasm: building tests/bench-wasm for wasm32-wasip1 (release)");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args([
            "build",
            "--locked",
            "--release",
            "-p",
            "txngate-bench-wasm",
            "--target",
            "wasm32-wasip1",
        ])
        .status()
        .context("starting cargo build")?;
    if !status.success() {
        bail!("building the wasm bench module exited with {status}");
    }
    let (order, cases, fuel) = time_module(&root.join(WASM), quick)?;
    crate::core_bench::save(root, crate::core_bench::WASM_JSON, &cases, quick)?;
    // Keep the workload's own case order for the report, and the instruction counts.
    let path = root.join(crate::core_bench::WASM_JSON);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    if let Some(object) = v.as_object_mut() {
        object.insert("order".into(), serde_json::json!(order));
        object.insert("instructions".into(), serde_json::json!(fuel));
    }
    std::fs::write(path, serde_json::to_vec_pretty(&v)?)?;
    Ok(())
}

struct Bench {
    store: Store<()>,
    instance: Instance,
    setup: TypedFunc<u32, i32>,
    run: TypedFunc<u32, u32>,
}

impl Bench {
    fn string(&mut self, packed: u64) -> Result<String> {
        let memory = self
            .instance
            .get_memory(&mut self.store, "memory")
            .context("the module exports no memory")?;
        let ptr = usize::try_from(packed >> 32)?;
        let len = usize::try_from(packed & 0xffff_ffff)?;
        let bytes = memory
            .data(&self.store)
            .get(ptr..ptr.saturating_add(len))
            .context("string out of bounds")?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn call_u64(&mut self, name: &str, arg: Option<u32>) -> Result<u64> {
        match arg {
            Some(a) => Ok(self
                .instance
                .get_typed_func::<u32, u64>(&mut self.store, name)?
                .call(&mut self.store, a)?),
            None => Ok(self
                .instance
                .get_typed_func::<(), u64>(&mut self.store, name)?
                .call(&mut self.store, ())?),
        }
    }

    /// Time per run of the current case: batches sized to `batch`, median of `samples`.
    fn time(&mut self, batch: Duration, samples: usize) -> Result<f64> {
        let mut iters: u32 = 1;
        loop {
            let t = self.batch(iters)?;
            if t >= batch || iters >= 1 << 24 {
                break;
            }
            let grow = (batch.as_secs_f64() / t.as_secs_f64().max(1e-9)).clamp(1.5, 16.0);
            iters = ((f64::from(iters) * grow) as u32).max(iters + 1);
        }
        let mut per_iter: Vec<f64> = (0..samples)
            .map(|_| {
                self.batch(iters)
                    .map(|t| t.as_nanos() as f64 / f64::from(iters))
            })
            .collect::<Result<_>>()?;
        per_iter.sort_by(f64::total_cmp);
        per_iter
            .get(per_iter.len() / 2)
            .copied()
            .context("no samples")
    }

    fn batch(&mut self, iters: u32) -> Result<Duration> {
        let start = Instant::now();
        let ok = self.run.call(&mut self.store, iters)?;
        let elapsed = start.elapsed();
        if ok != iters {
            bail!(
                "{} of {iters} runs did not give the expected result",
                iters - ok
            );
        }
        Ok(elapsed)
    }
}

fn memory<'a>(caller: &'a mut Caller<'_, ()>) -> Option<&'a mut [u8]> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Some(m.data_mut(caller)),
        _ => None,
    }
}

fn write(caller: &mut Caller<'_, ()>, ptr: i32, bytes: &[u8]) -> i32 {
    let Ok(ptr) = usize::try_from(ptr) else {
        return 28; // EINVAL
    };
    match memory(caller).and_then(|m| m.get_mut(ptr..ptr.saturating_add(bytes.len()))) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            0
        }
        None => 21, // EFAULT
    }
}

fn linker(engine: &Engine, module: &Module) -> Result<Linker<()>> {
    let mut linker: Linker<()> = Linker::new(engine);
    // std asks for its environment at start-up: there is none.
    linker.func_wrap(
        WASI,
        "environ_sizes_get",
        |mut c: Caller<'_, ()>, n: i32, size: i32| {
            let a = write(&mut c, n, &0u32.to_le_bytes());
            let b = write(&mut c, size, &0u32.to_le_bytes());
            a.max(b)
        },
    )?;
    linker.func_wrap(WASI, "environ_get", |_: Caller<'_, ()>, _: i32, _: i32| {
        0i32
    })?;
    // std seeds its HashMap hashers from it (the workloads themselves use none): real entropy, like a host.
    linker.func_wrap(
        WASI,
        "random_get",
        |mut c: Caller<'_, ()>, ptr: i32, len: i32| {
            let len = usize::try_from(len).unwrap_or(0);
            let mut bytes = Vec::with_capacity(len + 8);
            while bytes.len() < len {
                let word = std::hash::BuildHasher::hash_one(
                    &std::collections::hash_map::RandomState::new(),
                    bytes.len(),
                );
                bytes.extend_from_slice(&word.to_le_bytes());
            }
            bytes.truncate(len);
            write(&mut c, ptr, &bytes)
        },
    )?;
    // A panic message reaches stderr before the trap; nothing else writes.
    linker.func_wrap(
        WASI,
        "fd_write",
        |mut c: Caller<'_, ()>, _fd: i32, iovs: i32, count: i32, written: i32| -> i32 {
            let mut text = Vec::new();
            if let Some(mem) = memory(&mut c) {
                for i in 0..usize::try_from(count).unwrap_or(0) {
                    let at = usize::try_from(iovs)
                        .unwrap_or(usize::MAX)
                        .saturating_add(i * 8);
                    let word = |o: usize| {
                        mem.get(at + o..at + o + 4)
                            .and_then(|b| <[u8; 4]>::try_from(b).ok())
                            .map(|b| u32::from_le_bytes(b) as usize)
                    };
                    if let (Some(p), Some(l)) = (word(0), word(4)) {
                        if let Some(b) = mem.get(p..p.saturating_add(l)) {
                            text.extend_from_slice(b);
                        }
                    }
                }
            }
            eprint!("[wasm] {}", String::from_utf8_lossy(&text));
            let n = u32::try_from(text.len()).unwrap_or(u32::MAX);
            write(&mut c, written, &n.to_le_bytes())
        },
    )?;
    linker.func_wrap(
        WASI,
        "proc_exit",
        |_: Caller<'_, ()>, code: i32| -> wasmtime::Result<()> {
            wasmtime::bail!("the bench module exited with {code}")
        },
    )?;
    linker.define_unknown_imports_as_traps(module)?;
    Ok(linker)
}

fn instantiate(engine: &Engine, module: &Module) -> Result<Bench> {
    let linker = linker(engine, module)?;
    let mut store = Store::new(engine, ());
    if engine.get_consume_fuel() {
        store.set_fuel(FUEL)?;
    }
    let instance = linker.instantiate(&mut store, module)?;
    if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
        init.call(&mut store, ())?;
    }
    let setup = instance.get_typed_func::<u32, i32>(&mut store, "txngate_bench_setup")?;
    let run = instance.get_typed_func::<u32, u32>(&mut store, "txngate_bench_run")?;
    Ok(Bench {
        store,
        instance,
        setup,
        run,
    })
}

/// Plenty: fuel is refilled before every measured call.
const FUEL: u64 = u64::MAX / 4;

impl Bench {
    fn setup_case(&mut self, index: u32, name: &str) -> Result<()> {
        if self.setup.call(&mut self.store, index)? != 0 {
            let packed = self.call_u64("txngate_bench_error", None)?;
            bail!("wasm case {name}: {}", self.string(packed)?);
        }
        Ok(())
    }

    /// Wasm instructions per run (wasmtime fuel: about one unit per operator), a figure the machine's load
    /// cannot move: what the curves are judged on.
    fn fuel(&mut self, runs: u32) -> Result<f64> {
        self.store.set_fuel(FUEL)?;
        self.batch(1)?;
        self.store.set_fuel(FUEL)?;
        self.batch(runs)?;
        let used = FUEL - self.store.get_fuel()?;
        Ok(used as f64 / f64::from(runs))
    }
}

/// Times every case (median ns per run) and counts its wasm instructions per run in a second, fuel-metered
/// instance (metering slows code down, so it never shares an instance with the timing).
type Figures = (Vec<String>, BTreeMap<String, f64>, BTreeMap<String, f64>);

fn time_module(path: &Path, quick: bool) -> Result<Figures> {
    let engine = Engine::default();
    let module = Module::from_file(&engine, path)
        .map_err(|e| anyhow!("loading {}: {e:#}", path.display()))?;
    let mut metered_config = Config::new();
    metered_config.consume_fuel(true);
    let metered_engine = Engine::new(&metered_config)?;
    let metered_module = Module::from_file(&metered_engine, path)
        .map_err(|e| anyhow!("loading {}: {e:#}", path.display()))?;
    let mut bench = instantiate(&engine, &module)?;
    let mut metered = instantiate(&metered_engine, &metered_module)?;
    let count = bench
        .instance
        .get_typed_func::<(), u32>(&mut bench.store, "txngate_bench_cases")?
        .call(&mut bench.store, ())?;
    let filter = std::env::var("TXNGATE_BENCH_FILTER").unwrap_or_default();
    let (batch, samples) = if quick {
        (Duration::from_millis(20), 9)
    } else {
        (Duration::from_millis(100), 31)
    };
    let mut order = Vec::new();
    let mut times = BTreeMap::new();
    let mut fuel = BTreeMap::new();
    for index in 0..count {
        let packed = bench.call_u64("txngate_bench_name", Some(index))?;
        let name = bench.string(packed)?;
        order.push(name.clone());
        if !name.contains(filter.as_str()) {
            continue;
        }
        bench.setup_case(index, &name)?;
        let ns = bench.time(batch, samples)?;
        metered.setup_case(index, &name)?;
        let instructions = metered.fuel(16)?;
        eprintln!(
            "wasm {name:<32} {:>12.3} µs {:>12.1} k instructions",
            ns / 1000.0,
            instructions / 1000.0
        );
        times.insert(name.clone(), ns);
        fuel.insert(name, instructions);
    }
    Ok((order, times, fuel))
}

//! Times each case natively and inside wasmtime (Cranelift, as the harness runs the filter; Envoy runs V8, so
//! in-Envoy figures differ somewhat). Build the module first:
//!
//!     cargo build --release -p txngate-verify-bench --target wasm32-wasip1
//!     cargo run --release -p txngate-verify-bench [ITERATIONS]

/// The runner is a native program; in a wasm build only the library (the timed module) matters.
#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> anyhow::Result<()> {
    native::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::time::Instant;

    use anyhow::{bail, Context as _};
    use wasmtime::{Engine, Linker, Module, Store};

    /// Median of `rounds` timings of `iterations` calls, in µs per call.
    fn time(
        mut call: impl FnMut(u32) -> anyhow::Result<u32>,
        iterations: u32,
    ) -> anyhow::Result<f64> {
        call(2)?; // warm-up
        let mut samples = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let ok = call(iterations)?;
            let us = t.elapsed().as_secs_f64() * 1e6 / f64::from(iterations);
            if ok != iterations {
                bail!("{ok} of {iterations} checks succeeded");
            }
            samples.push(us);
        }
        samples.sort_by(f64::total_cmp);
        samples
            .get(samples.len() / 2)
            .copied()
            .context("no samples")
    }

    pub fn main() -> anyhow::Result<()> {
        let iterations: u32 = std::env::args()
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or(200);
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let wasm = std::env::var("TXNGATE_VERIFY_BENCH_WASM").unwrap_or_else(|_| {
            format!("{root}/target/wasm32-wasip1/release/txngate_verify_bench.wasm")
        });
        let engine = Engine::default();
        let module = Module::from_file(&engine, &wasm)
            .map_err(|e| anyhow::anyhow!("loading {wasm}: {e}"))?;
        let mut linker: Linker<()> = Linker::new(&engine);
        // The module imports a few WASI functions (panic printing, exit) it never calls in these cases.
        linker.define_unknown_imports_as_traps(&module)?;
        let mut store = Store::new(&engine, ());
        let instance = linker.instantiate(&mut store, &module)?;
        let setup = instance.get_typed_func::<(), u32>(&mut store, "bench_setup")?;
        let run = instance.get_typed_func::<(u32, u32), u32>(&mut store, "bench_run")?;
        if setup.call(&mut store, ())? != 1 || !txngate_verify_bench::setup() {
            bail!("fixture setup failed");
        }
        println!(
            "{:<48} {:>12} {:>12} {:>7}",
            "case", "native µs", "wasm µs", "ratio"
        );
        for (case, name) in (0u32..).zip(txngate_verify_bench::CASES) {
            let native = time(|n| Ok(txngate_verify_bench::run(case, n)), iterations)?;
            let in_wasm = time(|n| Ok(run.call(&mut store, (case, n))?), iterations)?;
            println!(
                "{name:<48} {native:>12.2} {in_wasm:>12.2} {:>7.1}",
                in_wasm / native
            );
        }
        Ok(())
    }
}

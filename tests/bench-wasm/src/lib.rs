//! The core bench workloads (`shared/benches/support/workload.rs`, the very file the native criterion bench
//! uses) compiled to wasm32-wasip1. `cargo xtask bench` loads this module in wasmtime 48 (the harness's
//! version), builds one case at a time and times `txngate_bench_run` from the host, so the wasm figure
//! includes exactly what the filter pays inside Envoy's wasm runtime for the same work, minus the ABI.
//!
//! Exports (all plain integers; strings come back as `ptr << 32 | len` into linear memory):
//! `txngate_bench_cases() -> u32`, `txngate_bench_name(i) -> u64`, `txngate_bench_setup(i) -> i32`
//! (0 ok, else see `txngate_bench_error() -> u64`), `txngate_bench_run(iters) -> u32` (runs that gave the
//! expected result; the host requires all of them).

use std::cell::RefCell;

#[allow(dead_code)]
#[path = "../../../shared/benches/support/workload.rs"]
mod workload;

thread_local! {
    static CASE: RefCell<Option<workload::Case>> = const { RefCell::new(None) };
    static ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

fn pack(s: &str) -> u64 {
    ((s.as_ptr() as usize as u64) << 32) | s.len() as u64
}

/// How many cases there are.
// Exported by name for the host: `no_mangle` is the only reason this crate allows unsafe_code.
#[allow(unsafe_code)]
#[no_mangle]
pub extern "C" fn txngate_bench_cases() -> u32 {
    workload::CASES.len() as u32
}

/// Case `index`'s name (static, so the pointer stays valid).
#[allow(unsafe_code)]
#[no_mangle]
pub extern "C" fn txngate_bench_name(index: u32) -> u64 {
    workload::CASES.get(index as usize).map_or(0, |n| pack(n))
}

/// Builds case `index` (dropping the previous one) and checks its verdict once.
#[allow(unsafe_code)]
#[no_mangle]
pub extern "C" fn txngate_bench_setup(index: u32) -> i32 {
    CASE.with_borrow_mut(|c| *c = None);
    let built = workload::CASES
        .get(index as usize)
        .ok_or_else(|| format!("no case {index}"))
        .and_then(|name| workload::Case::build(name));
    match built {
        Ok(case) => {
            CASE.with_borrow_mut(|c| *c = Some(case));
            0
        }
        Err(e) => {
            ERROR.with_borrow_mut(|s| *s = e);
            1
        }
    }
}

/// The last setup error (valid until the next setup).
#[allow(unsafe_code)]
#[no_mangle]
pub extern "C" fn txngate_bench_error() -> u64 {
    ERROR.with_borrow(|s| pack(s))
}

/// Runs the current case `iters` times; returns how many runs gave the expected result.
#[allow(unsafe_code)]
#[no_mangle]
pub extern "C" fn txngate_bench_run(iters: u32) -> u32 {
    CASE.with_borrow_mut(|c| match c {
        Some(case) => (0..iters).map(|_| u32::from(case.run())).sum(),
        None => 0,
    })
}

//! Criterion benches of the core (native). The workloads live in `support/workload.rs`, shared with the
//! wasm32-wasip1 bench module so `cargo xtask bench` can report a native/wasm ratio per case.
//!
//! `TXNGATE_BENCH_QUICK=1` shortens warm-up and measurement (the `--quick` smoke run);
//! `TXNGATE_BENCH_FILTER=substring` builds only matching cases (building the 100,000-bucket curve point or an
//! RSA key takes a moment).
#![allow(clippy::panic)] // test helpers (clippy.toml: #[test] fns)

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, Criterion};

#[path = "support/workload.rs"]
mod workload;

fn cases(c: &mut Criterion) {
    let filter = std::env::var("TXNGATE_BENCH_FILTER").unwrap_or_default();
    for name in workload::CASES {
        if !name.contains(filter.as_str()) {
            continue;
        }
        // A case that does not give its expected verdict must fail the bench, not be measured.
        let mut case = workload::Case::build(name).unwrap_or_else(|e| panic!("{e}"));
        c.bench_function(name, |b| {
            b.iter(|| assert!(black_box(case.run()), "{name} changed its verdict"))
        });
    }
}

fn config() -> Criterion {
    let quick = std::env::var_os("TXNGATE_BENCH_QUICK").is_some_and(|v| v != "0");
    let c = Criterion::default().without_plots();
    if quick {
        c.warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_millis(1200))
            .sample_size(20)
    } else {
        c.warm_up_time(Duration::from_secs(2))
            .measurement_time(Duration::from_secs(5))
            .sample_size(60)
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = cases
}
/// `TXNGATE_PROFILE_CASE=<case> [TXNGATE_PROFILE_RUNS=n]`: no criterion, just that case's loop (for a
/// function-level profile, e.g. `valgrind --tool=callgrind` on the bench binary); otherwise criterion.
fn main() {
    if let Ok(name) = std::env::var("TXNGATE_PROFILE_CASE") {
        let runs: u32 = std::env::var("TXNGATE_PROFILE_RUNS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1000);
        let mut case = workload::Case::build(&name).unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..runs {
            assert!(black_box(case.run()), "{name} changed its verdict");
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

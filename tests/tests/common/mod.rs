//! Shared test helpers: builds the probe filter fixture once per test binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use txngate_harness::{cargo_build, Host, HostOptions};

/// Clock every test host starts at (2023-11-14T22:13:20Z).
pub const START_MS: u64 = 1_700_000_000_000;

/// Path of the probe filter built for wasm32-wasip1 (built at most once per test binary;
/// cargo makes later builds no-ops).
pub fn probe_wasm() -> &'static Path {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| {
        let manifest =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/probe-filter/Cargo.toml");
        let target = cargo_build::target_dir().join("probe");
        cargo_build::build_wasm_crate(&manifest, &target).expect("building the probe filter")
    })
}

/// A host over the probe filter with its own world (the compilation is shared).
pub fn host() -> Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let options = HostOptions {
            start_time_ms: Some(START_MS),
            ..HostOptions::default()
        };
        Host::from_file_with(probe_wasm(), options).expect("loading the probe filter")
    })
    .with_fresh_state()
}

//! `cargo xtask bench [--quick] [--only core|wasm|envoy|worker]...`: runs txngate's benchmarks and writes
//! docs/benchmarks.md.
//!
//! Parts, in order: `core` (criterion, native, `shared/benches/core.rs`), `wasm` (the same workloads compiled
//! to wasm32-wasip1 and timed under wasmtime 48), `envoy` (`tests/bench/envoy_bench.py`, real Envoy) and
//! `worker` (`tests/bench/worker_bench.mjs`, workerd). Each part leaves a markdown fragment (and JSON) in
//! target/bench/; the report is assembled from whatever fragments exist, with a header naming the machine and
//! a targets section computed from the JSON (see docs/performance.md). A part that fails makes
//! the command exit non-zero after the report is written; a part whose script is missing is skipped, said so.

// Reading serde_json::Value by key or index never panics (absent → Null); the lint cannot tell it from slice
// indexing. Writes go through `as_object_mut`.
#![allow(clippy::indexing_slicing)]

mod core_bench;
mod report;
mod system;
mod wasm;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

pub const PARTS: [&str; 4] = ["core", "wasm", "envoy", "worker"];

#[derive(Debug)]
pub struct Options {
    pub quick: bool,
    pub parts: Vec<&'static str>,
}

/// What happened to one part in this invocation (reported in the header).
#[derive(Debug, Clone)]
pub enum PartStatus {
    Ran,
    NotSelected,
    Skipped(String),
    Failed(String),
}

fn usage() -> &'static str {
    "usage: cargo xtask bench [--quick] [--only core|wasm|envoy|worker]... [--report-only]\n\
     \n\
     --quick        short measurements (a smoke run: core+wasm in about 3 minutes after the builds)\n\
     --only P       run only part P (repeatable, or comma separated); the report still includes earlier fragments\n\
     --report-only  measure nothing: write docs/benchmarks.md again from the fragments in target/bench"
}

fn parse(args: &[String]) -> Result<Options> {
    let mut quick = false;
    let mut report_only = false;
    let mut only: Vec<&'static str> = Vec::new();
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("bench") => {}
        Some("-h" | "--help") | None => bail!("{}", usage()),
        Some(other) => bail!("unknown command {other:?}\n{}", usage()),
    }
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--only" => {
                let value = it.next().context("--only needs a part name")?;
                for name in value.split(',') {
                    let part = PARTS
                        .iter()
                        .find(|p| **p == name.trim())
                        .with_context(|| format!("unknown part {name:?}\n{}", usage()))?;
                    only.push(part);
                }
            }
            "--report-only" => report_only = true,
            "-h" | "--help" => bail!("{}", usage()),
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    let parts = if report_only {
        Vec::new()
    } else if only.is_empty() {
        PARTS.to_vec()
    } else {
        PARTS.iter().copied().filter(|p| only.contains(p)).collect()
    };
    Ok(Options { quick, parts })
}

/// The workspace root (xtask/..).
fn root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Runs `program args` in `root`, inheriting the terminal, after `source scripts/env.sh` (envoy, wrangler,
/// node and pytest on PATH, as the scripts' contract says).
pub fn run_with_env(root: &Path, program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new("bash")
        .current_dir(root)
        .arg("-c")
        .arg("source scripts/env.sh >/dev/null && exec \"$@\"")
        .arg("xtask")
        .arg(program)
        .args(args)
        .status()
        .with_context(|| format!("starting {program}"))?;
    if !status.success() {
        bail!("{program} {} exited with {status}", args.join(" "));
    }
    Ok(())
}

fn script_part(root: &Path, opts: &Options, part: &str) -> PartStatus {
    let (script, program, out) = match part {
        "envoy" => (
            "tests/bench/envoy_bench.py",
            ".venv/bin/python",
            "target/bench/envoy.md",
        ),
        _ => (
            "tests/bench/worker_bench.mjs",
            "node",
            "target/bench/worker.md",
        ),
    };
    if !root.join(script).is_file() {
        let why = format!("{script} is not in this tree");
        eprintln!("xtask bench: skipping {part}: {why}");
        return PartStatus::Skipped(why);
    }
    // A stale fragment must not pass for this run's.
    let _ = std::fs::remove_file(root.join(out));
    let _ = std::fs::remove_file(root.join(out).with_extension("json"));
    // Measure what this tree ships, never a stale build: the wasm-opt'd filter, a rebuilt Worker.
    if part == "envoy" {
        eprintln!("xtask bench: envoy: scripts/build-filter.sh");
        if let Err(e) = run_with_env(root, "bash", &["scripts/build-filter.sh"]) {
            eprintln!("xtask bench: building the filter failed: {e:#}");
            return PartStatus::Failed(format!("{e:#}"));
        }
    }
    let mut args = vec![script, "--out", out];
    if part == "worker" {
        args.push("--build");
    }
    if opts.quick {
        args.push("--quick");
    }
    eprintln!("xtask bench: {part}: {program} {}", args.join(" "));
    match run_with_env(root, program, &args) {
        Ok(()) => PartStatus::Ran,
        Err(e) => {
            eprintln!("xtask bench: {part} failed: {e:#}");
            PartStatus::Failed(format!("{e:#}"))
        }
    }
}

fn bench(opts: &Options) -> Result<bool> {
    let root = root();
    std::fs::create_dir_all(root.join("target/bench"))?;
    let mut statuses: Vec<(&str, PartStatus)> = Vec::new();
    for part in PARTS {
        let status = if !opts.parts.contains(&part) {
            PartStatus::NotSelected
        } else {
            let result = match part {
                "core" => core_bench::run(&root, opts.quick),
                "wasm" => wasm::run(&root, opts.quick),
                _ => {
                    statuses.push((part, script_part(&root, opts, part)));
                    continue;
                }
            };
            match result {
                Ok(()) => PartStatus::Ran,
                Err(e) => {
                    eprintln!("xtask bench: {part} failed: {e:#}");
                    PartStatus::Failed(format!("{e:#}"))
                }
            }
        };
        statuses.push((part, status));
    }
    // The core fragment merges native and wasm figures (whichever exist).
    core_bench::write_fragment(&root)?;
    let path = report::write(&root, opts, &statuses)?;
    eprintln!("xtask bench: wrote {}", path.display());
    Ok(statuses
        .iter()
        .all(|(_, s)| !matches!(s, PartStatus::Failed(_))))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(2);
        }
    };
    match bench(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("xtask bench: some parts failed (see above and docs/benchmarks.md)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("xtask bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parts_follow_only_in_report_order() {
        let o = parse(&args("bench --quick --only worker,core")).unwrap();
        assert!(o.quick);
        assert_eq!(o.parts, vec!["core", "worker"]);
        let o = parse(&args("bench --only wasm --only envoy")).unwrap();
        assert_eq!(o.parts, vec!["wasm", "envoy"]);
        assert_eq!(parse(&args("bench")).unwrap().parts, PARTS.to_vec());
    }

    #[test]
    fn bad_arguments_are_refused() {
        for bad in [
            "",
            "run",
            "bench --only gpu",
            "bench --only",
            "bench --fast",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
    }
}

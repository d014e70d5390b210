//! The native core benches (criterion) and the core fragment that puts native and wasm figures side by side.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Where criterion leaves its estimates.
const CRITERION: &str = "target/criterion";
/// This run's native figures, `{"cases": {name: ns}, "at": ...}`.
pub const NATIVE_JSON: &str = "target/bench/core-native.json";
/// This run's wasm figures, same shape.
pub const WASM_JSON: &str = "target/bench/core-wasm.json";

pub fn run(root: &Path, quick: bool) -> Result<()> {
    // Old estimates must not mix with this run's.
    let _ = std::fs::remove_dir_all(root.join(CRITERION));
    let _ = std::fs::remove_file(root.join(NATIVE_JSON));
    eprintln!("xtask bench: core: cargo bench -p txngate-core --bench core");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root)
        .args(["bench", "--locked", "-p", "txngate-core", "--bench", "core"]);
    if quick {
        cmd.env("TXNGATE_BENCH_QUICK", "1");
    }
    let status = cmd.status().context("starting cargo bench")?;
    if !status.success() {
        bail!("cargo bench exited with {status}");
    }
    let cases = read_criterion(&root.join(CRITERION))?;
    if cases.is_empty() {
        bail!("criterion left no estimates in {CRITERION}");
    }
    save(root, NATIVE_JSON, &cases, quick)
}

/// Saves one side's figures (ns per operation).
pub fn save(root: &Path, rel: &str, cases: &BTreeMap<String, f64>, quick: bool) -> Result<()> {
    let value = json!({"cases": cases, "quick": quick, "at": crate::system::now_utc()});
    std::fs::write(root.join(rel), serde_json::to_vec_pretty(&value)?)
        .with_context(|| format!("writing {rel}"))
}

/// Every benchmark's median (ns) under `dir`, by criterion's full id (the case name).
fn read_criterion(dir: &Path) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            if path.file_name().is_some_and(|n| n == "new") {
                let bench: Value = read_json(&path.join("benchmark.json"))?;
                let estimates: Value = read_json(&path.join("estimates.json"))?;
                let id = bench["full_id"]
                    .as_str()
                    .context("benchmark.json without full_id")?;
                let median = estimates["median"]["point_estimate"]
                    .as_f64()
                    .context("estimates.json without a median")?;
                out.insert(id.to_string(), median);
            } else {
                stack.push(path);
            }
        }
    }
    Ok(out)
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

fn load(root: &Path, rel: &str) -> Option<Value> {
    read_json(&root.join(rel)).ok()
}

/// Report order of the cases: the workload's own list, as the wasm module reports it, else by name.
fn order(
    native: &BTreeMap<String, f64>,
    wasm: &BTreeMap<String, f64>,
    listed: &[String],
) -> Vec<String> {
    let mut names: Vec<String> = listed.to_vec();
    for n in native.keys().chain(wasm.keys()) {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

fn cases_of(v: &Option<Value>) -> BTreeMap<String, f64> {
    v.as_ref()
        .and_then(|v| v["cases"].as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_f64().map(|n| (k.clone(), n)))
                .collect()
        })
        .unwrap_or_default()
}

fn us(ns: Option<f64>) -> String {
    match ns {
        Some(ns) if ns >= 100_000.0 => format!("{:.0}", ns / 1000.0),
        Some(ns) if ns >= 1_000.0 => format!("{:.2}", ns / 1000.0),
        Some(ns) => format!("{:.3}", ns / 1000.0),
        None => "—".into(),
    }
}

pub type Curves = BTreeMap<String, (Vec<(u64, f64)>, f64)>;

/// Largest over smallest figure of each curve (`curve/<what>/<n>`), with its points in order of `n`.
pub fn curves(cases: &BTreeMap<String, f64>) -> Curves {
    let mut points: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    for (name, ns) in cases {
        let parts: Vec<&str> = name.split('/').collect();
        if let ["curve", what, n] = parts.as_slice() {
            if let Ok(n) = n.parse::<u64>() {
                points
                    .entry((*what).to_string())
                    .or_default()
                    .push((n, *ns));
            }
        }
    }
    points
        .into_iter()
        .map(|(what, mut p)| {
            p.sort_by_key(|(n, _)| *n);
            let max = p.iter().map(|(_, v)| *v).fold(f64::MIN, f64::max);
            let min = p.iter().map(|(_, v)| *v).fold(f64::MAX, f64::min);
            let spread = if min > 0.0 { max / min } else { f64::INFINITY };
            (what, (p, spread))
        })
        .collect()
}

/// Most a curve may vary (largest/smallest point) and still count as flat: run-to-run noise on a busy
/// machine is about this much.
pub const FLAT: f64 = 1.25;

/// Writes target/bench/core.md and core.json from whichever of the native and wasm figures exist.
pub fn write_fragment(root: &Path) -> Result<()> {
    let native_v = load(root, NATIVE_JSON);
    let wasm_v = load(root, WASM_JSON);
    if native_v.is_none() && wasm_v.is_none() {
        return Ok(());
    }
    let native = cases_of(&native_v);
    let wasm = cases_of(&wasm_v);
    let listed: Vec<String> = wasm_v
        .as_ref()
        .and_then(|v| v["order"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let names = order(&native, &wasm, &listed);
    let mut rows = Vec::new();
    let mut ratios = serde_json::Map::new();
    let mut md = String::new();
    let instructions: BTreeMap<String, f64> = wasm_v
        .as_ref()
        .and_then(|v| v["instructions"].as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_f64().map(|n| (k.clone(), n)))
                .collect()
        })
        .unwrap_or_default();
    md.push_str("## Core: native (criterion) and inside wasmtime\n\n");
    md.push_str("Median time per operation, µs. `wasm/native` is the cost of running the same code as the filter's wasm. \
");
    md.push_str("`wasm k instr`: thousands of wasm instructions per operation (wasmtime fuel), which the machine's load cannot move.\n\n");
    md.push_str(
        "| case | native µs | wasm µs | wasm/native | wasm k instr |\n|---|---:|---:|---:|---:|\n",
    );
    for name in &names {
        let n = native.get(name).copied();
        let w = wasm.get(name).copied();
        let i = instructions.get(name).copied();
        let ratio = match (n, w) {
            (Some(n), Some(w)) if n > 0.0 => Some(w / n),
            _ => None,
        };
        md.push_str(&format!(
            "| `{name}` | {} | {} | {} | {} |\n",
            us(n),
            us(w),
            ratio.map_or("—".into(), |r| format!("{r:.1}×")),
            i.map_or("—".into(), |i| format!("{:.1}", i / 1000.0))
        ));
        if let Some(r) = ratio {
            ratios.insert(name.clone(), json!((r * 1000.0).round() / 1000.0));
        }
        rows.push(json!({"name": name, "native_us": n.map(|v| v / 1000.0), "wasm_us": w.map(|v| v / 1000.0),
                         "wasm_ratio": ratio, "wasm_instructions": i}));
    }
    md.push_str(&format!(
        "\nCurves: per-decision cost as the state grows, largest/smallest point. Judged on wasm instructions when \
         measured (deterministic), else on time; flat when ≤ {FLAT}.\n\n\
         | curve | points (N: native µs) | native time | wasm time | wasm instructions |\n|---|---|---:|---:|---:|\n"
    ));
    let nc = curves(&native);
    let wc = curves(&wasm);
    let ic = curves(&instructions);
    let mut flat = serde_json::Map::new();
    let mut whats: Vec<&String> = nc.keys().chain(wc.keys()).chain(ic.keys()).collect();
    whats.sort();
    whats.dedup();
    for what in whats {
        let pts = nc.get(what).or_else(|| wc.get(what));
        let text = pts.map_or(String::new(), |(p, _)| {
            p.iter()
                .map(|(n, v)| format!("{n}: {}", us(Some(*v))))
                .collect::<Vec<_>>()
                .join(", ")
        });
        let spread = |c: &Curves| c.get(what).map_or("—".into(), |(_, s)| format!("{s:.2}"));
        let judged = ic
            .get(what)
            .or_else(|| nc.get(what))
            .or_else(|| wc.get(what))
            .map(|c| c.1);
        md.push_str(&format!(
            "| {what} | {text} | {} | {} | {} ({}) |\n",
            spread(&nc),
            spread(&wc),
            spread(&ic),
            match judged {
                Some(s) if s <= FLAT => "flat",
                Some(_) => "NOT flat",
                None => "—",
            }
        ));
        flat.insert(
            what.clone(),
            json!({"native": nc.get(what).map(|c| c.1), "wasm": wc.get(what).map(|c| c.1),
                   "instructions": ic.get(what).map(|c| c.1), "judged": judged}),
        );
    }
    md.push_str("\nWhat the cases are:\n\n");
    md.push_str("- `token/<alg>/fresh|cached`: the Txn-Token check alone (a GET outside the MCP path through `Gate::decide`): `fresh` with the token cache off, so the signature and claims are checked every time; `cached` a TokenCache hit.\n");
    md.push_str("- `mcp/parse/small|8KiB|64KiB`: the strict JSON-RPC parse of a `tools/call` body (duplicate keys, depth), small or with ~8 KiB or ~64 KiB of arguments; `decision/allow/cached_8KiB|_64KiB`: the cached decision with those arguments (parse, checks, canonical hash for the audit).\n");
    md.push_str("- `decision/allow/*`: a whole allowed `tools/call` through `Gate::decide`: token, two-actor delegation chain, scope narrowing, an argument constraint, a rate limit in a `SlotTable` (the filter's bounded store), the audit record.\n");
    md.push_str("- `parts/*`: pieces of the cached path, to see where it goes: SHA-256 of the token (cache key and audit), splitting it and reading its header, decoding and parsing its claims (fresh path only), the audit hash of the arguments.\n");
    md.push_str("- `gcra/step|MemoryStore|SlotTable`: one rate-limit step: the GCRA arithmetic alone, through the CAS store, through the bounded slot table.\n");
    md.push_str("- `curve/limit_keys/N`: the cached decision with N other agents' buckets live in the slot table; `curve/tools/N`: with N tools in the policy; `curve/agents/N`: with N agent patterns, all more specific than (so tried before) the one the calling agent matches; `curve/ring_keys/N`: a fresh EdDSA decision with N keys in the ring, the token naming the last.\n");
    md.push_str(&format!(
        "\nNative: {}. Wasm: {}.\n",
        describe(&native_v, "criterion medians, release profile"),
        describe(
            &wasm_v,
            "wasmtime 48 (Cranelift), host-timed batches, median of samples"
        )
    ));
    std::fs::write(root.join("target/bench/core.md"), md)?;
    let json = json!({"rows": rows, "ratios": ratios, "curves": flat,
                      "meta": {"native": native_v.map(|v| v["at"].clone()), "wasm": wasm_v.map(|v| v["at"].clone())}});
    std::fs::write(
        root.join("target/bench/core.json"),
        serde_json::to_vec_pretty(&json)?,
    )?;
    Ok(())
}

fn describe(v: &Option<Value>, what: &str) -> String {
    match v {
        Some(v) => format!(
            "{what}{}, measured {}",
            if v["quick"].as_bool() == Some(true) {
                " (--quick)"
            } else {
                ""
            },
            v["at"].as_str().unwrap_or("?")
        ),
        None => "not measured".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_are_grouped_sorted_by_n_and_spread() {
        let cases: BTreeMap<String, f64> = [
            ("curve/tools/100", 12.0),
            ("curve/tools/1", 10.0),
            ("curve/tools/10", 11.0),
            ("curve/agents/1", 5.0),
            ("curve/agents/100", 10.0),
            ("decision/allow/cached", 1.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let c = curves(&cases);
        assert_eq!(c.len(), 2);
        let (points, spread) = &c["tools"];
        assert_eq!(
            points.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            vec![1, 10, 100]
        );
        assert!((spread - 1.2).abs() < 1e-9);
        assert!(c["agents"].1 > FLAT);
    }
}

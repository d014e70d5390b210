//! The `txngate-harness replay` command on the probe filter.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers (clippy.toml: #[test] fns)

mod common;

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("txngate-replay-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn replay(dir: &std::path::Path, policy: &str, requests: &str) -> std::process::Output {
    std::fs::write(dir.join("policy.txt"), policy).unwrap();
    std::fs::write(dir.join("requests.jsonl"), requests).unwrap();
    Command::new(env!("CARGO_BIN_EXE_txngate-harness"))
        .arg("replay")
        .arg("--wasm")
        .arg(common::probe_wasm())
        .arg("--policy")
        .arg(dir.join("policy.txt"))
        .arg("--requests")
        .arg(dir.join("requests.jsonl"))
        .args(["--vms", "2", "--now-ms", "1700000000000"])
        .output()
        .unwrap()
}

#[test]
fn replay_prints_one_outcome_per_line() {
    let dir = scratch("ok");
    let requests = r#"{"method":"GET","path":"/a","headers":{"x-probe-deny":"nope"}}
{"method":"POST","path":"/b","headers":[["x-probe-cas","1"]],"body":"hi","peer":"spiffe://cluster.local/ns/agents/sa/agent-1"}

{"path":"/c","vm":0,"headers":{"x-probe-call":"headers"},"http_calls":{"authz":{"status":200,"body":"tok"}},"upstream":{"status":201,"body":{"ok":true}}}
"#;
    let out = replay(&dir, "tick=1000\n", requests);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);

    assert_eq!(lines[0]["line"], 1);
    assert_eq!(lines[0]["status"], 403);
    assert_eq!(lines[0]["local_reply"]["body"], "denied: nope");
    assert!(lines[0]["forwarded"].is_null());
    assert!(lines[0]["logs"][0]
        .as_str()
        .unwrap()
        .starts_with("[info] request headers"));

    assert_eq!(lines[1]["vm"], 1, "round-robin");
    let fwd = lines[1]["forwarded"]["headers"].as_array().unwrap();
    assert!(fwd.iter().any(|h| h[0] == "x-probe-counter" && h[1] == "1"));
    assert_eq!(lines[1]["forwarded"]["body"], "hi");
    assert!(lines[1]["logs"].as_array().unwrap().iter().any(|l| l
        .as_str()
        .unwrap()
        .contains("peer=spiffe://cluster.local/ns/agents/sa/agent-1")));

    assert_eq!(lines[2]["line"], 4);
    assert_eq!(lines[2]["vm"], 0);
    assert_eq!(lines[2]["status"], 201);
    assert_eq!(lines[2]["response"]["body"], "{\"ok\":true}");
    assert_eq!(lines[2]["http_calls"][0]["state"]["state"], "answered");
    assert_eq!(lines[2]["stalled"], false);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn replay_reports_a_rejected_policy_with_the_plugin_logs() {
    let dir = scratch("bad");
    let out = replay(&dir, "fail=bad issuer\n", "{\"path\":\"/\"}\n");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid probe config: bad issuer"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

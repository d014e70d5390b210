//! Building proxy-wasm crates for tests (`cargo build --target wasm32-wasip1`).

use anyhow::{anyhow, bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The cargo target directory the running binary lives in (found through `CACHEDIR.TAG`),
/// else `$CARGO_TARGET_DIR`, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1) {
            if dir.join("CACHEDIR.TAG").is_file() {
                return dir.to_path_buf();
            }
        }
    }
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
}

/// Builds the cdylib of `manifest_path` for `wasm32-wasip1` (release profile) into
/// `target_dir` and returns the path of the `.wasm` artifact.
pub fn build_wasm_crate(manifest_path: &Path, target_dir: &Path) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let output = Command::new(&cargo)
        .arg("build")
        .arg("--release")
        .args(["--target", "wasm32-wasip1"])
        .arg("--manifest-path")
        .arg(manifest_path)
        .arg("--target-dir")
        .arg(target_dir)
        .args(["--message-format", "json-render-diagnostics"])
        // Flags meant for the host build must not leak into the wasm build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .with_context(|| format!("running {cargo}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint =
            if stderr.contains("wasm32-wasip1") && stderr.contains("target may not be installed") {
                "\nhint: rustup target add wasm32-wasip1"
            } else {
                ""
            };
        bail!(
            "building {} for wasm32-wasip1 failed:\n{stderr}{hint}",
            manifest_path.display()
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut wasm = None;
    for line in stdout.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg.get("reason").and_then(|r| r.as_str()) != Some("compiler-artifact") {
            continue;
        }
        let files = msg.get("filenames").and_then(|f| f.as_array());
        for f in files.into_iter().flatten().filter_map(|f| f.as_str()) {
            if f.ends_with(".wasm") {
                wasm = Some(PathBuf::from(f));
            }
        }
    }
    wasm.ok_or_else(|| {
        anyhow!(
            "cargo produced no .wasm artifact for {}",
            manifest_path.display()
        )
    })
}

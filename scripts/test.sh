#!/usr/bin/env bash
# txngate's whole test suite, from a bare machine: installs what it needs (scripts/bootstrap.sh), then runs
# every stage and prints a summary. This is the README's test command; .ci/run calls it and nothing else.
#
#   scripts/test.sh            all stages
#   TXNGATE_STAGES="core cli"  a subset (names as printed)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TERM_COLOR=never

started=$(date +%s)
passed=0
failed=0
failures=()

stage() {
    local name="$1"; shift
    if [ -n "${TXNGATE_STAGES:-}" ] && [[ " $TXNGATE_STAGES " != *" $name "* ]]; then
        return 0
    fi
    local t0=$(date +%s)
    echo
    echo "=== [$name] $*"
    if "$@"; then
        passed=$((passed + 1))
        echo "=== [$name] ok ($(( $(date +%s) - t0 )) s)"
    else
        failed=$((failed + 1))
        failures+=("$name")
        echo "=== [$name] FAILED ($(( $(date +%s) - t0 )) s)"
    fi
}

bootstrap() { scripts/bootstrap.sh --all; }

core_tests() { cargo test --locked -p txngate-core -p txngate-cli; }

core_wasm() {
    cargo build --locked -p txngate-core --target wasm32-wasip1 &&
        cargo build --locked -p txngate-core --target wasm32-unknown-unknown
}

lint() {
    cargo fmt --all --check &&
        cargo clippy --locked -p txngate-core -p txngate-cli -p txngate-harness --all-targets -- -D warnings &&
        cargo clippy --locked -p txngate-core --target wasm32-wasip1 -- -D warnings &&
        cargo clippy --locked -p txngate-core --target wasm32-unknown-unknown -- -D warnings &&
        cargo clippy --locked -p txngate-filter --target wasm32-wasip1 --all-targets -- -D warnings &&
        cargo clippy --locked -p txngate-worker --target wasm32-unknown-unknown --all-targets -- -D warnings
}

harness_tests() { cargo test --locked -p txngate-harness; }

filter_unit() { cargo test --locked -p txngate-filter; }

# The shipped filter is cargo's release build passed through binaryen's wasm-opt -Oz (node_modules/.bin, from
# scripts/bootstrap.sh), written back to the same path so that tests, demo and examples all load one artifact.
# The optimised file replaces cargo's hard link (deps/ keeps cargo's own copy), so a fresh `cargo build` does not
# undo it; a rebuild after a source change does, until this runs again (the plain build works, only bigger).
filter_build() {
    local wasm=target/wasm32-wasip1/release/txngate_filter.wasm
    local wasm_opt="${WASM_OPT_BIN:-$ROOT/node_modules/.bin/wasm-opt}"
    cargo build --locked --release -p txngate-filter --target wasm32-wasip1 || return 1
    echo "cargo:    $(stat -c %s "$wasm") bytes, $(gzip -9c "$wasm" | wc -c) gzipped"
    # rustc's stripped output carries no target_features section: name the features it uses.
    "$wasm_opt" -Oz --strip-debug --strip-producers --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
        --enable-nontrapping-float-to-int --enable-multivalue --enable-reference-types "$wasm" -o "$wasm.opt"  && mv "$wasm.opt" "$wasm" || return 1
    echo "wasm-opt: $(stat -c %s "$wasm") bytes, $(gzip -9c "$wasm" | wc -c) gzipped"
}

worker_unit() { cargo test --locked -p txngate-worker; }

# Builds the Worker with `wrangler deploy --dry-run` (also validating the deploy configuration offline), then
# runs the workerd suite.
worker_e2e() { scripts/test-worker.sh; }

envoy_e2e() { .venv/bin/pytest -q tests/e2e/test_envoy.py; }

# One verdict everywhere: every vector on every host, with the table.
# The debug harness binary (already built by the harness stage) replays as well as a release one and saves CI a
# release build of wasmtime.
conformance() {
    cargo build --locked -p txngate-harness --bin txngate-harness &&
        TXNGATE_HARNESS="$ROOT/target/debug/txngate-harness" .venv/bin/python tests/conformance/run.py \
            --hosts "${TXNGATE_CONFORMANCE_HOSTS:-native,harness,envoy,worker}" --require-all
}

e2e_plumbing() { .venv/bin/pytest -q tests/e2e/test_plumbing.py; }

# Bootstrap first: everything after it needs the tools it installs.
stage bootstrap bootstrap || true
if [ "$failed" -gt 0 ]; then
    echo "bootstrap failed; nothing else can run"
    echo "0 passed, 1 failed"
    exit 1
fi
# shellcheck source=scripts/env.sh
source scripts/env.sh

stage core core_tests
stage core-wasm core_wasm
stage filter filter_unit
stage filter-wasm filter_build
stage harness harness_tests
stage lint lint
stage fuzz-smoke scripts/fuzz.sh 10
stage e2e-plumbing e2e_plumbing
stage envoy envoy_e2e
stage worker worker_unit
stage workerd worker_e2e
stage conformance conformance

echo
echo "wall time: $(( $(date +%s) - started )) s"
[ "$failed" -eq 0 ] || echo "failed stages: ${failures[*]}"
echo "stages: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

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
# Every stage's output, the suites' process logs (Envoy, workerd, MCP servers: the audit lines) and the ledger of
# every token and private key the suites made, for the final `secrets` stage (tests/secrets/scan.py).
LOG_DIR="$ROOT/target/test-logs"
rm -rf "$LOG_DIR"
mkdir -p "$LOG_DIR/tmp"
export TXNGATE_SECRET_LEDGER="$LOG_DIR/secrets.ledger"
: >"$TXNGATE_SECRET_LEDGER"
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
    if "$@" 2>&1 | tee "$LOG_DIR/$name.log"; then
        passed=$((passed + 1))
        echo "=== [$name] ok ($(( $(date +%s) - t0 )) s)"
    else
        failed=$((failed + 1))
        failures+=("$name")
        echo "=== [$name] FAILED ($(( $(date +%s) - t0 )) s)"
    fi
}

bootstrap() { scripts/bootstrap.sh --all --apt redis-server; }

# Then the core as a filter built without the ES384 and RSA verifiers (`--no-default-features`) links it:
# its unit tests, among them the refusal of those keys at load.
core_tests() {
    cargo test --locked -p txngate-core -p txngate-cli &&
        cargo test --locked -p txngate-core --lib --no-default-features --features rust-verify
}

core_wasm() {
    cargo build --locked -p txngate-core --target wasm32-wasip1 &&
        cargo build --locked -p txngate-core --target wasm32-unknown-unknown
}

# --all-targets covers txngate-core's criterion benches (shared/benches) and the xtask (`cargo xtask bench`);
# the wasm bench module is linted for the target it is built for. `txngate-layout` (std only, seconds) fails
# on a cycle between a crate's top-level modules, an adapter file over 600 lines, or a numeric const in an adapter.
lint() {
    python3 tests/docs/check_links.py || return 1 # every relative link and anchor of the Markdown files resolves
    cargo fmt --all --check &&
        cargo test --locked -p txngate-layout &&
        cargo clippy --locked -p txngate-core -p txngate-cli -p txngate-harness -p xtask -p txngate-verify-bench -p txngate-layout --all-targets -- -D warnings &&
        cargo clippy --locked -p txngate-bench-wasm --target wasm32-wasip1 --all-targets -- -D warnings &&
        cargo clippy --locked -p txngate-verify-bench --lib --target wasm32-wasip1 -- -D warnings &&
        cargo clippy --locked -p txngate-core --target wasm32-wasip1 -- -D warnings &&
        cargo clippy --locked -p txngate-core --target wasm32-unknown-unknown -- -D warnings &&
        cargo clippy --locked -p txngate-filter --target wasm32-wasip1 --all-targets -- -D warnings &&
        cargo clippy --locked -p txngate-core --all-targets --no-default-features --features rust-verify -- -D warnings &&
        cargo clippy --locked -p txngate-filter --target wasm32-wasip1 --no-default-features -- -D warnings &&
        cargo clippy --locked -p txngate-worker --target wasm32-unknown-unknown --all-targets -- -D warnings
}

harness_tests() { cargo test --locked -p txngate-harness; }

filter_unit() { cargo test --locked -p txngate-filter; }

# The shipped filter: cargo's release build passed through wasm-opt -Oz (scripts/build-filter.sh), at
# target/shipped/txngate_filter.wasm (cargo never writes there). Every stage that loads the filter runs through
# `with_filter`: the script again (a no-op when current), so a single stage never loads a stale or unoptimised
# file, and TXNGATE_FILTER_WASM (exported below) names that file for every suite, bench and demo.
SHIPPED_FILTER="$ROOT/target/shipped/txngate_filter.wasm"
filter_build() { scripts/build-filter.sh; }
with_filter() { scripts/build-filter.sh >/dev/null && "$@"; }

worker_unit() { cargo test --locked -p txngate-worker; }

# Builds the Worker with `wrangler deploy --dry-run` (also validating the deploy configuration offline), then
# runs the workerd suite.
worker_e2e() { scripts/test-worker.sh; }

# pytest keeps each stage's temporary trees (Envoy and MCP server logs among them) under $LOG_DIR.
pytest_logged() {
    local name="$1"; shift
    .venv/bin/pytest -q -p no:cacheprovider --basetemp "$LOG_DIR/pytest-$name" "$@"
}

envoy_e2e() { pytest_logged envoy tests/e2e/test_envoy.py; }

# Distinct agents and tool names through one Envoy: resident memory must stay flat once the bounded stores
# (token cache, rate-limit table) are full. The 1,000,000-request run is scripts/flood.sh.
flood_smoke() {
    .venv/bin/python tests/flood/envoy_flood.py --count 20000 --max-keys 2048 \
        --period-seconds 1 --baseline-at 5000 --max-growth-mib 16 --keep-logs --out "$LOG_DIR/flood-envoy.md"
}

# No token or private key any suite used appears in any output: stage logs, process logs, audit lines.
secrets_scan() {
    .venv/bin/python tests/secrets/scan.py --self-test &&
        .venv/bin/python tests/secrets/scan.py --ledger "$TXNGATE_SECRET_LEDGER" --logs "$LOG_DIR"
}

# Hybrid mode (jwt_authn verifies, the filter the rest): its e2e suite, then every conformance vector through it.
envoy_hybrid() {
    pytest_logged hybrid tests/e2e/test_envoy_hybrid.py &&
        .venv/bin/python tests/conformance/run.py --hosts envoy-hybrid --require-all
}

# Faults in real Envoy: a trapping VM (test-only build with the fault-injection feature, in
# target/fault-injection), JWKS server faults, unknown-kid bursts, a full rate-limit table, the MCP server down.
envoy_faults() { pytest_logged faults tests/e2e/test_envoy_faults.py; }

# One verdict everywhere: every vector on every host, with the table.
# The debug harness binary (already built by the harness stage) replays as well as a release one and saves CI a
# release build of wasmtime.
conformance() {
    cargo build --locked -p txngate-harness --bin txngate-harness &&
        TXNGATE_HARNESS="$ROOT/target/debug/txngate-harness" .venv/bin/python tests/conformance/run.py \
            --hosts "${TXNGATE_CONFORMANCE_HOSTS:-native,harness,envoy,worker}" --require-all
}

e2e_plumbing() { pytest_logged plumbing tests/e2e/test_plumbing.py; }

# Real Envoy configured as Istio's WasmPlugin configures it (ECDS, no allow_on_headers_stop_iteration): the filter's
# default body-holding mode, with a wire tap on the MCP server's side. Reuses the filter-wasm stage's filter.
envoy_wasmplugin() { pytest_logged wasmplugin tests/e2e/test_envoy_wasmplugin.py; }

# The shipped filter as OCI image layouts (scripts/build-oci.sh writes target/oci), read back.
oci_images() { scripts/build-oci.sh && pytest_logged oci tests/e2e/test_oci.py; }

# examples/istio/*.yaml against Istio's CRD schemas (../shared/reference/istio/crds.yaml beside the clone, or
# $TXNGATE_ISTIO_CRDS); their plugin configurations compiled by `txngate policy validate` and loaded in Envoy.
istio_manifests() { pytest_logged istio tests/e2e/test_istio_manifests.py; }

# One budget across a mesh: two Envoys, the test-only rate limit service (limitador over Redis) and redis-server.
# The service builds in its own workspace (tests/ratelimit-service, its own target dir) in the background from
# right after bootstrap, niced so that the stages before this one keep the CPU; only this stage waits for it.
# Its exit status lands in a file: stages run in a pipeline (a subshell), where `wait` cannot see the job.
RLS_BUILD_RC="$LOG_DIR/ratelimit-service-build.rc"
start_rls_build() {
    if [ -n "${TXNGATE_STAGES:-}" ] && [[ " $TXNGATE_STAGES " != *" mesh "* ]]; then
        return 0
    fi
    rm -f "$RLS_BUILD_RC"
    (
        t0=$(date +%s)
        nice -n 10 tests/ratelimit-service/build.sh >"$LOG_DIR/ratelimit-service-build.log" 2>&1
        rc=$?
        echo "ratelimit-service build: exit $rc after $(( $(date +%s) - t0 )) s" >>"$LOG_DIR/ratelimit-service-build.log"
        echo "$rc" >"$RLS_BUILD_RC"
    ) &
}
mesh_e2e() {
    local waited=0
    echo "waiting for the rate limit service build (started after bootstrap)"
    while [ ! -s "$RLS_BUILD_RC" ] && [ "$waited" -lt 3600 ]; do
        sleep 2
        waited=$((waited + 2))
    done
    tail -n 1 "$LOG_DIR/ratelimit-service-build.log" 2>/dev/null
    if [ "$(cat "$RLS_BUILD_RC" 2>/dev/null)" != "0" ]; then
        tail -n 40 "$LOG_DIR/ratelimit-service-build.log" 2>/dev/null
        return 1
    fi
    echo "(waited ${waited} s)"
    pytest_logged mesh tests/e2e/test_envoy_mesh_limits.py
}

# Bootstrap first: everything after it needs the tools it installs.
stage bootstrap bootstrap || true
if [ "$failed" -gt 0 ]; then
    echo "bootstrap failed; nothing else can run"
    echo "0 passed, 1 failed"
    exit 1
fi
# shellcheck source=scripts/env.sh
source scripts/env.sh
export TXNGATE_FILTER_WASM="$SHIPPED_FILTER"
# Temporary trees of every suite (process logs included) land where the `secrets` stage scans.
export TMPDIR="$LOG_DIR/tmp"
start_rls_build

stage core core_tests
stage core-wasm core_wasm
stage filter filter_unit
stage filter-wasm filter_build
stage harness with_filter harness_tests
stage lint lint
stage fuzz-smoke scripts/fuzz.sh 10
stage e2e-plumbing e2e_plumbing
stage envoy with_filter envoy_e2e
stage envoy-faults with_filter envoy_faults
stage envoy-hybrid with_filter envoy_hybrid
stage envoy-wasmplugin with_filter envoy_wasmplugin
stage oci with_filter oci_images
stage istio with_filter istio_manifests
stage mesh with_filter mesh_e2e
stage worker worker_unit
stage workerd worker_e2e
stage conformance with_filter conformance
stage flood-smoke with_filter flood_smoke
stage secrets secrets_scan

echo
echo "wall time: $(( $(date +%s) - started )) s"
[ "$failed" -eq 0 ] || echo "failed stages: ${failures[*]}"
echo "stages: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

#!/usr/bin/env bash
# txngate's main job in one command: a user's Txn-Token, delegated by an orchestrator to a research agent and
# an email agent (an `act` chain per agent, minted with `txngate mint`), every MCP tool call of a scripted
# session decided by txngate, printed as a table (agent, tool, verdict, status, reason, rate-limit budget)
# followed by the audit lines from the filter's log, then a proof-of-possession step (demo/proof.py): the email
# agent's token stolen and sent without its WIMSE proof is refused, the bound call accepted (with --worker, at
# the Worker, where no mTLS peer exists). Installs and builds what the chosen mode needs.
#
#   scripts/demo.sh              the built proxy-wasm filter in the wasmtime harness (txngate-harness replay)
#   scripts/demo.sh --envoy      then the same session through real Envoy (.venv/bin/envoy) in front of the
#                                official MCP Python SDK server, sent by the official MCP client
#   scripts/demo.sh --worker     then through the Cloudflare Worker in workerd (Miniflare), same server/client
#   (--envoy --worker: both)     options passed on to demo/demo.py: --session FILE, --no-audit, --logs DIR
#
# The session is demo/session.json (examples/policy.json, examples/keys/demo-ed25519: development only).
# Exit status: 0 when every request got the verdict, status and reason the session expects (and, with
# --envoy / --worker, the same as in the harness run), 1 when any did not, 2 when something could not run.
# No cloud account, no Docker; everything listens on 127.0.0.1 and is stopped by PID. Logs: target/demo/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CALLER_PWD="$PWD"
cd "$ROOT"
# shellcheck source=scripts/env.sh
source "$ROOT/scripts/env.sh"
export CARGO_TERM_COLOR=never

envoy=0 worker=0 pass=()
while [ $# -gt 0 ]; do
    case "$1" in
        --envoy) envoy=1 ;;
        --worker) worker=1 ;;
        --session | --logs) [ $# -gt 1 ] || { echo "demo: $1 needs a value" >&2; exit 2; }
            case "$2" in /*) pass+=("$1" "$2") ;; *) pass+=("$1" "$CALLER_PWD/$2") ;; esac
            shift ;;
        --no-audit) pass+=("$1") ;;
        -h | --help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "demo: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

started=$SECONDS
say() { echo "[demo] $*"; }
die() { echo "[demo] ERROR: $*" >&2; exit 2; }

TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
LOGDIR="$TARGET/demo"
mkdir -p "$LOGDIR"
# Cargo.lock pins every dependency when it is there.
locked=()
[ -f Cargo.lock ] && locked=(--locked)

# step "what (how long)" COMMAND...: runs COMMAND with its output in target/demo/build.log; while it runs,
# a line every 20 s says how far it got; on failure, the end of the log. Bounded by `timeout` (1 h).
step_pid=""
trap '[ -z "$step_pid" ] || kill "$step_pid" 2>/dev/null || true' EXIT
step() {
    local what="$1" log="$LOGDIR/build.log" t0=$SECONDS next=20
    shift
    say "$what..."
    timeout 3600 "$@" >"$log" 2>&1 </dev/null &
    step_pid=$!
    while kill -0 "$step_pid" 2>/dev/null; do
        sleep 0.2
        if [ $((SECONDS - t0)) -ge $next ]; then
            local n last
            n="$(grep -c '^ *Compiling' "$log" || true)"
            last="$(grep '^ *Compiling' "$log" | tail -n 1 | awk '{print $2}' || true)"
            say "  ... $((SECONDS - t0)) s${n:+, $n crates compiled}${last:+ (now $last)}"
            next=$((next + 20))
        fi
    done
    if ! wait "$step_pid"; then
        step_pid=""
        tail -n 40 "$log" >&2
        die "$what: failed (the whole output: $log)"
    fi
    step_pid=""
    [ $((SECONDS - t0)) -lt 5 ] || say "  done in $((SECONDS - t0)) s"
}

# -- install: only what the chosen modes need ----------------------------------------------------------
parts=(--rust-wasm)                          # wasm32-wasip1 for the filter
[ $envoy -eq 0 ] && [ $worker -eq 0 ] || parts+=(--python)   # Envoy, the MCP SDK server and client
worker_missing=0
if [ $worker -eq 1 ]; then
    parts+=(--node)                          # Miniflare / workerd (wrangler)
    if [ ! -f worker/build/index.js ] || [ ! -f worker/build/index_bg.wasm ]; then
        worker_missing=1
        parts+=(--worker-tools)              # worker-build and wasm-bindgen-cli, to build the Worker
    fi
fi
scripts/bootstrap.sh "${parts[@]}" | sed 's/^/  /'

if [ $envoy -eq 0 ] && [ $worker -eq 0 ]; then
    PYTHON="${PYTHON:-python3}"
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found (Python >= 3.10 is needed)"
    "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
        || die "$PYTHON is $("$PYTHON" --version 2>&1); the demo needs Python >= 3.10"
else
    PYTHON="$ROOT/.venv/bin/python"
fi

# -- build -----------------------------------------------------------------------------------------------
command -v cargo >/dev/null || die "cargo not found (install Rust with rustup)"
# One cargo command per binary, as scripts/test.sh and tests/conformance build them: building them together
# would unify features differently and make the next separate build compile the core again.
step "building the txngate CLI (release, about 2 min the first time)" \
    cargo build ${locked[@]+"${locked[@]}"} --release --bin txngate
step "building the wasmtime harness txngate-harness (release, about 6 min the first time)" \
    cargo build ${locked[@]+"${locked[@]}"} --release -p txngate-harness --bin txngate-harness
step "building the proxy-wasm filter (release + wasm-opt, about 1 min the first time)" \
    scripts/build-filter.sh
export TXNGATE_CLI="$TARGET/release/txngate"
export TXNGATE_HARNESS="$TARGET/release/txngate-harness"
export TXNGATE_FILTER_WASM="$TARGET/shipped/txngate_filter.wasm"

if [ $worker_missing -eq 1 ]; then
    # The build part of scripts/test-worker.sh: wrangler runs wrangler.toml's [build] (worker-build --release,
    # offline, with our wasm-bindgen / wasm-opt / esbuild) and checks the deploy configuration, no account.
    want="$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' Cargo.lock 2>/dev/null || true)"
    have="$("$WASM_BINDGEN_BIN" --version 2>/dev/null | awk '{print $NF}')" || have=""
    [ -z "$want" ] || [ "$have" = "$want" ] \
        || die "wasm-bindgen CLI is '${have:-absent}', Cargo.lock has $want: run scripts/bootstrap.sh --worker-tools"
    dry="$(mktemp -d "${TMPDIR:-/tmp}/txngate-demo-dry-run.XXXXXX")"
    step "building the Worker: wrangler deploy --dry-run, i.e. worker-build --release (about 3 min the first time)" \
        node_modules/.bin/wrangler deploy --dry-run --outdir "$dry"
    rm -rf "$dry"
    [ -f worker/build/index.js ] || die "the Worker build left no worker/build/index.js (log: $LOGDIR/build.log)"
fi

# -- run -----------------------------------------------------------------------------------------------------
args=(--logs "$LOGDIR" ${pass[@]+"${pass[@]}"})
[ $envoy -eq 0 ] || args+=(--envoy)
[ $worker -eq 0 ] || args+=(--worker)
status=0
"$PYTHON" demo/demo.py ${args[@]+"${args[@]}"} || status=$?
say "done in $((SECONDS - started)) s (exit $status)"
exit $status

#!/usr/bin/env bash
# Build the Cloudflare Worker and run its tests in the real runtime (workerd, through wrangler's Miniflare).
#
#   scripts/test-worker.sh [--no-build] [--bench [N]] [--flood [N,N,...]] [-- NODE_TEST_ARGS...]
#
#   (default)     build with `wrangler deploy --dry-run` (runs wrangler.toml's [build]: worker-build --release,
#                 offline, with our wasm-bindgen / wasm-opt / esbuild) — this also checks the deploy
#                 configuration (bindings, Durable Object migration) without a Cloudflare account — then run
#                 tests/workerd/*.test.mjs with `node --test`
#   --no-build    reuse worker/build/ as it is
#   --bench [N]   afterwards, print workerd CPU per request and cold start (tests/workerd/bench.mjs)
#   --flood [Ns]  afterwards, the memory flood at checkpoints Ns (default 10000,100000,1000000; time box
#                 15 min): distinct agents and tool names through one isolate (tests/workerd/flood.mjs)
#
# Assumes scripts/bootstrap.sh --rust-wasm --python --node --worker-tools has run. CARGO_TARGET_DIR is
# honoured. Every process the tests start is stopped by PID; everything listens on 127.0.0.1 only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/env.sh
source "$ROOT/scripts/env.sh"
cd "$ROOT"

build=1 bench=0 bench_n=500 flood=0 flood_n=10000,100000,1000000 node_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) build=0 ;;
        --bench)
            bench=1
            if [ $# -gt 1 ] && [[ "$2" =~ ^[0-9]+$ ]]; then bench_n="$2"; shift; fi
            ;;
        --flood)
            flood=1
            if [ $# -gt 1 ] && [[ "$2" =~ ^[0-9,]+$ ]]; then flood_n="$2"; shift; fi
            ;;
        --) shift; node_args=("$@"); break ;;
        -h | --help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "test-worker: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

say() { echo "[test-worker] $*"; }
die() { echo "[test-worker] ERROR: $*" >&2; exit 1; }

# -- prerequisites (installed by scripts/bootstrap.sh) -----------------------------------------------
[ -x node_modules/.bin/wrangler ] || die "node_modules missing: run scripts/bootstrap.sh --node"
[ -x .venv/bin/python ] || die ".venv missing: run scripts/bootstrap.sh --python"
if [ $build -eq 1 ]; then
    command -v worker-build >/dev/null || die "worker-build missing: run scripts/bootstrap.sh --worker-tools"
    want="$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' Cargo.lock)"
    have="$("$WASM_BINDGEN_BIN" --version 2>/dev/null | awk '{print $NF}')" || have=""
    [ "$have" = "$want" ] || die "wasm-bindgen CLI is '${have:-absent}', Cargo.lock has $want: run scripts/bootstrap.sh --worker-tools"
    rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown \
        || die "rust target wasm32-unknown-unknown missing: run scripts/bootstrap.sh --rust-wasm"
fi

# -- build (and validate the deploy configuration, offline) ------------------------------------------
if [ $build -eq 1 ]; then
    dry="$(mktemp -d "${TMPDIR:-/tmp}/txngate-dry-run.XXXXXX")"
    trap 'rm -rf "$dry"' EXIT
    say "building: wrangler deploy --dry-run (worker-build --release; about 5 min from clean, 40 s after a change)"
    node_modules/.bin/wrangler deploy --dry-run --outdir "$dry" </dev/null
fi
[ -f worker/build/index.js ] && [ -f worker/build/index_bg.wasm ] || die "worker/build/ is missing: run without --no-build"
wasm_bytes="$(wc -c <worker/build/index_bg.wasm)"
wasm_gzip="$(gzip -9 -c worker/build/index_bg.wasm | wc -c)"
say "bundle: worker/build/index_bg.wasm $((wasm_bytes / 1024)) KiB, $((wasm_gzip / 1024)) KiB gzipped; index.js $(($(wc -c <worker/build/index.js) / 1024)) KiB"

# -- tests in workerd ---------------------------------------------------------------------------------
cli="${TXNGATE_BIN:-target/release/txngate}"
if [ "${TXNGATE_TOKENS:-}" != pyjwt ] && [ -x "$cli" ]; then
    say "tokens: $cli keygen/mint"
else
    say "tokens: PyJWT (tests/workerd/pytokens.py; RS256/PS256 cases skipped)"
fi
say "running tests/workerd/*.test.mjs"
node --test --test-concurrency=1 --test-timeout=180000 "${node_args[@]}" tests/workerd/*.test.mjs

if [ $bench -eq 1 ]; then
    say "benchmark: $bench_n requests per case"
    node tests/workerd/bench.mjs "$bench_n"
fi

if [ $flood -eq 1 ]; then
    say "flood: checkpoints $flood_n (time box ${TXNGATE_FLOOD_SECONDS:-900} s)"
    node tests/workerd/flood.mjs --n "$flood_n" --max-seconds "${TXNGATE_FLOOD_SECONDS:-900}"
fi

#!/usr/bin/env bash
# The documented flood runs of issue #6 (not part of the test command: several minutes each).
#
#   scripts/flood.sh [COUNT]        default 1000000 distinct agents and tool names
#   FLOOD_HOSTS="envoy" scripts/flood.sh 100000
#
# envoy:  tests/flood/envoy_flood.py — one Envoy (2 workers) with the filter; every request a fresh token, its
#         own agent, its own tool; Envoy's RSS at 1k/10k/100k/1M. Two runs: period 3600 s (every bucket stays
#         live: the 65,536-slot table fills, then 503 ratelimit.store_full) and period 1 s (slots drain and are
#         reused: every request allowed).
# worker: tests/workerd/flood.mjs — one Worker isolate in workerd (Miniflare): every request a fresh token (its
#         own acting agent) and its own tool name; process RSS, the isolate's JS heap and Wasm memory at each
#         checkpoint. workerd locally serves about 470 such requests a second on a quiet 2-core machine
#         (150-200 on a busy one), so 1,000,000 takes 35 min to 1.5 h: FLOOD_WORKER_SECONDS (default 7200)
#         time-boxes it and the report says how far it got.
# Results: target/flood/*.md and *.json (Envoy); the Worker flood prints its table.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
COUNT="${1:-1000000}"
HOSTS="${FLOOD_HOSTS:-envoy worker}"
# shellcheck source=scripts/env.sh
source scripts/env.sh
mkdir -p target/flood
cargo build --locked --release -p txngate-filter --target wasm32-wasip1
for host in $HOSTS; do
    case "$host" in
        envoy)
            .venv/bin/python tests/flood/envoy_flood.py --count "$COUNT" --period-seconds 3600 \
                --baseline-at $((COUNT / 10)) --out target/flood/envoy-live.md
            .venv/bin/python tests/flood/envoy_flood.py --count "$COUNT" --period-seconds 1 \
                --baseline-at $((COUNT / 10)) --out target/flood/envoy-drain.md
            ;;
        worker)
            # Builds the Worker, runs the workerd suite, then the flood (its time box: FLOOD_WORKER_SECONDS).
            TXNGATE_FLOOD_SECONDS="${FLOOD_WORKER_SECONDS:-7200}" scripts/test-worker.sh --flood \
                "10000,100000,$((COUNT / 2)),$COUNT"
            ;;
        *) echo "unknown flood host $host" >&2; exit 2 ;;
    esac
done

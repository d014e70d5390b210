#!/usr/bin/env bash
# Fuzzes txngate's core (txngate-core) with cargo-fuzz / libFuzzer: builds every target in fuzz/fuzz_targets
# (token, policy, mcp_body, jwks), runs each for SECONDS_PER_TARGET, then prints executions and crashes per
# target. Exits non-zero on any crash, timeout or out-of-memory input, or a target that failed to build or run.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      default 20
#   FUZZ_TARGETS="token jwks" scripts/fuzz.sh 60
#   FUZZ_TARGET_DIR=/tmp/fuzz-target          build directory (default: $CARGO_TARGET_DIR/fuzz, else fuzz/target)
#
# Installs cargo-fuzz with `cargo install cargo-fuzz --locked` when it is missing (once, a few minutes), and
# uses the nightly toolchain when there is one, else the default one with RUSTC_BOOTSTRAP=1.
# Seeds come from fuzz/corpus/<target> and are only read: what a run discovers goes to a scratch corpus, so
# the committed seeds stay small. Crashing inputs land in fuzz/artifacts/<target>/; reproduce one with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
# and shrink it with `cargo +nightly fuzz tmin <target> <file>`.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
export CARGO_TERM_COLOR=never

SECONDS_PER_TARGET="${1:-20}"
if ! [[ "$SECONDS_PER_TARGET" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (a positive whole number, default 20)" >&2
    exit 2
fi
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    TARGET_DIR="${FUZZ_TARGET_DIR:-$CARGO_TARGET_DIR/fuzz}"
else
    TARGET_DIR="${FUZZ_TARGET_DIR:-$ROOT/fuzz/target}"
fi
started=$(date +%s)

# libFuzzer instrumentation needs nightly compiler flags (-Zsanitizer=...). Use the nightly toolchain when
# there is one; otherwise the default toolchain with RUSTC_BOOTSTRAP=1, which accepts them too (nothing to
# download: toolchains cannot be fetched on every machine).
if cargo +nightly --version >/dev/null 2>&1; then
    CARGO=(cargo +nightly)
else
    echo "fuzz: no nightly toolchain; using $(cargo --version) with RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
    CARGO=(cargo)
fi

if "${CARGO[@]}" fuzz --version >/dev/null 2>&1; then
    echo "fuzz: $("${CARGO[@]}" fuzz --version)"
else
    echo "fuzz: cargo-fuzz is missing; installing it (cargo install cargo-fuzz --locked, a few minutes, once)"
    t0=$(date +%s)
    if ! cargo install cargo-fuzz --locked; then
        echo "fuzz: installing cargo-fuzz failed" >&2
        exit 2
    fi
    echo "fuzz: cargo-fuzz installed in $(( $(date +%s) - t0 )) s: $("${CARGO[@]}" fuzz --version)"
fi

targets="${FUZZ_TARGETS:-$("${CARGO[@]}" fuzz list --fuzz-dir fuzz)}"
if [ -z "$targets" ]; then
    echo "fuzz: no targets found" >&2
    exit 2
fi

# One build for all targets; release with debug assertions (integer overflow checks on) and AddressSanitizer.
echo "fuzz: building $(echo $targets | wc -w) targets into $TARGET_DIR"
t0=$(date +%s)
if ! "${CARGO[@]}" fuzz build --fuzz-dir fuzz --debug-assertions --target-dir "$TARGET_DIR"; then
    echo "fuzz: build failed" >&2
    exit 2
fi
echo "fuzz: built in $(( $(date +%s) - t0 )) s"

max_len() {
    case "$1" in
        token) echo 12288 ;;   # past the policy's 8192-byte token cap, so the size check is exercised too
        *) echo 8192 ;;
    esac
}

scratch="$(mktemp -d "${TMPDIR:-/tmp}/txngate-fuzz.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

declare -A executions crashes status
total_crashes=0
failed=0
for t in $targets; do
    mkdir -p "$scratch/$t" "fuzz/artifacts/$t" "fuzz/corpus/$t"
    find "fuzz/artifacts/$t" -type f | sort >"$scratch/$t.before"
    log="$scratch/$t.log"
    echo "fuzz: [$t] running ${SECONDS_PER_TARGET} s"
    "${CARGO[@]}" fuzz run --fuzz-dir fuzz "$t" "$scratch/$t" "fuzz/corpus/$t" \
        --debug-assertions --target-dir "$TARGET_DIR" -- \
        -max_total_time="$SECONDS_PER_TARGET" -max_len="$(max_len "$t")" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 -print_pcs=0 >"$log" 2>&1
    rc=$?
    # The final stats line is authoritative; else the last "#N ..." progress line (e.g. "#123 DONE ...").
    n=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -1)
    if [ -z "$n" ]; then
        n=$(sed -n 's/^#\([0-9][0-9]*\)[[:space:]].*/\1/p' "$log" | tail -1)
    fi
    rate=$(sed -n 's/^stat::average_exec_per_sec: *\([0-9]*\).*/\1/p' "$log" | tail -1)
    find "fuzz/artifacts/$t" -type f | sort | comm -13 "$scratch/$t.before" - >"$scratch/$t.new"
    c=$(wc -l <"$scratch/$t.new")
    executions[$t]="${n:-0}"
    crashes[$t]=$c
    if [ "$rc" -ne 0 ] && [ "$c" -eq 0 ]; then
        status[$t]="FAILED (exit $rc, no artifact; log follows)"
        failed=$((failed + 1))
        tail -n 40 "$log"
    elif [ "$c" -gt 0 ]; then
        status[$t]="CRASH"
        total_crashes=$((total_crashes + c))
        grep -E -A1 "^thread '.*panicked at" "$log" | head -n 4
        grep -E "^(==[0-9]+== ?ERROR|SUMMARY: )" "$log" | head -n 3
        while read -r input; do
            echo "fuzz: crashing input: $input"
            echo "fuzz:   reproduce: cargo +nightly fuzz run --fuzz-dir fuzz $t $input"
            echo "fuzz:   minimise:  cargo +nightly fuzz tmin --fuzz-dir fuzz $t $input"
        done < <(head -n 5 "$scratch/$t.new")
    else
        status[$t]="ok"
    fi
    echo "fuzz: [$t] ${executions[$t]} executions (${rate:-?}/s), ${crashes[$t]} crashes: ${status[$t]}"
done

echo
echo "=== fuzz summary (${SECONDS_PER_TARGET} s per target, $(( $(date +%s) - started )) s in all)"
printf '%-10s %14s %8s  %s\n' target executions crashes status
for t in $targets; do
    printf '%-10s %14s %8s  %s\n' "$t" "${executions[$t]}" "${crashes[$t]}" "${status[$t]}"
done
if [ "$total_crashes" -gt 0 ] || [ "$failed" -gt 0 ]; then
    echo "fuzz: $total_crashes crashes, $failed failed targets; crashing inputs are in fuzz/artifacts/" >&2
    exit 1
fi
echo "fuzz: no crashes"

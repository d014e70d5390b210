#!/usr/bin/env bash
# Builds the shipped filter: cargo's release build passed through binaryen's wasm-opt (node_modules/.bin, from
# scripts/bootstrap.sh --node), written to target/shipped/txngate_filter.wasm, a path cargo never writes, so
# that no later `cargo build` can put the unoptimised file where tests, demo, examples and benchmarks load
# from. scripts/test.sh exports TXNGATE_FILTER_WASM to that path. Prints both sizes.
#
# Cheap when nothing changed: the cargo build is then a no-op and the optimised file is kept when its stamp
# (the SHA-256 of the cargo output it came from) still matches. Every stage that loads the filter runs this.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
cargo_wasm="$TARGET/wasm32-wasip1/release/txngate_filter.wasm"
shipped="$TARGET/shipped/txngate_filter.wasm"
stamp="$shipped.source-sha256"
wasm_opt="${WASM_OPT_BIN:-$ROOT/node_modules/.bin/wasm-opt}"
cargo build --locked --release -p txngate-filter --target wasm32-wasip1
source_sha="$(sha256sum "$cargo_wasm" | cut -d' ' -f1)"
if [ -f "$shipped" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$source_sha" ]; then
    echo "shipped:  $shipped is current ($(stat -c %s "$shipped") bytes)"
    exit 0
fi
mkdir -p "$(dirname "$shipped")"
echo "cargo:    $(stat -c %s "$cargo_wasm") bytes, $(gzip -9c "$cargo_wasm" | wc -c) gzipped"
# rustc's stripped output carries no target_features section: name the features it uses.
# TXNGATE_WASM_OPT_LEVEL (default -Oz) is for measuring other wasm-opt levels (docs/performance.md, "Sizes").
"$wasm_opt" ${TXNGATE_WASM_OPT_LEVEL:--Oz} --strip-debug --strip-producers --enable-bulk-memory --enable-sign-ext \
    --enable-mutable-globals --enable-nontrapping-float-to-int --enable-multivalue --enable-reference-types \
    "$cargo_wasm" -o "$shipped.tmp"
mv "$shipped.tmp" "$shipped"
echo "$source_sha" >"$stamp"
echo "wasm-opt: $(stat -c %s "$shipped") bytes, $(gzip -9c "$shipped" | wc -c) gzipped -> $shipped"

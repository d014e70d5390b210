#!/usr/bin/env bash
# Builds the shipped filter: cargo's release build passed through binaryen's wasm-opt -Oz (node_modules/.bin, from
# scripts/bootstrap.sh --node), written back to the same path so that tests, demo, examples and benchmarks all
# load one artifact: target/wasm32-wasip1/release/txngate_filter.wasm. Prints both sizes.
# The optimised file replaces cargo's hard link (deps/ keeps cargo's own copy), so a fresh `cargo build` does not
# undo it; a rebuild after a source change does, until this runs again (the plain build works, only bigger).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
wasm=target/wasm32-wasip1/release/txngate_filter.wasm
wasm_opt="${WASM_OPT_BIN:-$ROOT/node_modules/.bin/wasm-opt}"
cargo build --locked --release -p txngate-filter --target wasm32-wasip1
echo "cargo:    $(stat -c %s "$wasm") bytes, $(gzip -9c "$wasm" | wc -c) gzipped"
# rustc's stripped output carries no target_features section: name the features it uses.
"$wasm_opt" -Oz --strip-debug --strip-producers --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
    --enable-nontrapping-float-to-int --enable-multivalue --enable-reference-types "$wasm" -o "$wasm.opt"
mv "$wasm.opt" "$wasm"
echo "wasm-opt: $(stat -c %s "$wasm") bytes, $(gzip -9c "$wasm" | wc -c) gzipped"

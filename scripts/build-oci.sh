#!/usr/bin/env bash
# The shipped filter (scripts/build-filter.sh's target/shipped/txngate_filter.wasm) as OCI images in
# the two formats Istio's WasmPlugin pulls, as OCI image layouts (directory and tarball) under target/oci:
#   txngate-filter         the Wasm OCI artifact (config application/vnd.module.wasm.config.v1+json, layer
#                          application/vnd.module.wasm.content.layer.v1+wasm = the .wasm byte for byte)
#   txngate-filter-compat  an ordinary OCI image whose one tar+gzip layer holds plugin.wasm
# Prints each manifest digest (what to pin in the WasmPlugin). Deterministic; pushes nothing.
#
#   scripts/build-oci.sh [--wasm FILE] [--out DIR] [--version TAG]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec python3 "$ROOT/scripts/oci_image.py" "$@"

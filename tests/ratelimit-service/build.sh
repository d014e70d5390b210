#!/usr/bin/env bash
# Builds the test-only rate limit service (tests/ratelimit-service) into tests/ratelimit-service/target/debug.
# Run by scripts/test.sh in the background at its start; the `mesh` stage waits for it.
#
# limitador 0.14.0 as published does not compile with `default-features = false, features =
# ["redis_storage"]`: its Redis key encoding (`storage::keys`) calls `storage::keys::bin`, which is compiled only
# with `disk_storage` (RocksDB, a long C++ build). So this script takes the registry's own copy of the crate
# (fetched by cargo, checksum-verified), widens those two `cfg`s (the `bin` module and `Counter::variables_for_key`) to also cover `redis_storage`, and builds
# against the result through `[patch.crates-io]` (the copy lives under target/, never in the repository). The
# edit is checked: if the source does not read as expected, the build stops.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target="$here/target"
patched="$target/limitador-0.14.0-patched"
mkdir -p "$target"

if [ ! -f "$patched/.txngate-patched" ]; then
    fetch="$target/fetch-limitador"
    mkdir -p "$fetch/src"
    cat > "$fetch/Cargo.toml" <<'TOML'
[package]
name = "fetch-limitador"
version = "0.0.0"
edition = "2021"
publish = false
[workspace]
[dependencies]
limitador = { version = "=0.14.0", default-features = false, features = ["redis_storage"] }
TOML
    : > "$fetch/src/lib.rs"
    cargo fetch --manifest-path "$fetch/Cargo.toml" >/dev/null
    src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/limitador-0.14.0 | head -n 1)"
    [ -f "$src/src/storage/keys.rs" ] || { echo "build.sh: limitador 0.14.0 source not found" >&2; exit 1; }
    rm -rf "$patched"
    cp -R "$src" "$patched"
    python3 - "$patched" <<'PY'
import sys
root = sys.argv[1]
# (file, text before, text after): the two items the Redis storage uses that 0.14.0 gates on disk_storage.
edits = [
    ("src/storage/keys.rs", '#[cfg(feature = "disk_storage")]\npub mod bin {'),
    ("src/counter.rs", '    #[cfg(feature = "disk_storage")]\n    pub(crate) fn variables_for_key('),
]
for rel, before in edits:
    path = f"{root}/{rel}"
    text = open(path).read()
    if text.count(before) != 1:
        sys.exit(f"build.sh: {path} does not read as expected; not patching")
    after = before.replace('feature = "disk_storage"', 'any(feature = "disk_storage", feature = "redis_storage")')
    open(path, "w").write(text.replace(before, after))
PY
    touch "$patched/.txngate-patched"
fi

cargo build --manifest-path "$here/Cargo.toml" --locked "$@"

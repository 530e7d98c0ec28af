#!/usr/bin/env bash
# `nimbus bench --suite wasm` (issue 3) with its baselines: builds the no-op wasi:http component
# (crates/nimbus/tests/wasm-fixtures/noop) and a release nimbus, installs wasmtime-cli 48.0.8
# (the wasmtime this build embeds) into a cache outside the repository when missing — that build
# took 12 min on 2 cores with these trimmed features — and runs the suite. Extra arguments go to
# `nimbus bench` (e.g. --output /tmp/wasm.md --seconds 10).
#
#   NIMBUS_BENCH_CACHE  where wasmtime-cli is installed (default ~/.cache/nimbus-bench)
#   WASMTIME            use this wasmtime binary instead (must be 48.0.8)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
target="${CARGO_TARGET_DIR:-$root/target}"
cache="${NIMBUS_BENCH_CACHE:-$HOME/.cache/nimbus-bench}"
version=48.0.8

wasmtime="${WASMTIME:-$cache/wasmtime-$version/bin/wasmtime}"
if [ ! -x "$wasmtime" ] || ! "$wasmtime" --version | grep -q "$version"; then
  echo "== installing wasmtime-cli $version into $cache/wasmtime-$version (slow: about 12 min on 2 cores)"
  cargo install wasmtime-cli --version "$version" --locked --root "$cache/wasmtime-$version" \
    --no-default-features \
    --features run,serve,cranelift,pooling-allocator,parallel-compilation,component-model,component-model-async,wat
  wasmtime="$cache/wasmtime-$version/bin/wasmtime"
fi

rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
echo "== building the no-op component"
CARGO_TARGET_DIR="$target/tmp/nimbus-wasm-fixtures" cargo build --release --quiet \
  --target wasm32-wasip2 --manifest-path crates/nimbus/tests/wasm-fixtures/noop/Cargo.toml
component="$target/tmp/nimbus-wasm-fixtures/wasm32-wasip2/release/nimbus_wasm_noop.wasm"

echo "== building nimbus (release)"
cargo build --release --locked -p nimbus
exec "$target/release/nimbus" bench --suite wasm --wasm-component "$component" \
  --wasmtime "$wasmtime" "$@"

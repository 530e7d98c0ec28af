#!/usr/bin/env bash
# Regenerates the vendored WASI WIT from the wasmtime-wasi-http crate source in the cargo
# registry (the crate is a dependency of nimbus-wasm, so `cargo fetch` puts it there):
#   wasi-0.2.12/deps/  the WIT exactly as wasmtime-wasi-http 48.0.8 ships it (the host's own WIT);
#   wasi-0.2.10/deps/  the same files with every package version rewritten to 0.2.10, for
#                 componentize-js 0.23, whose StarlingMonkey engine is built against WASI
#                 0.2.10 and fails to link against 0.2.12 exports. The one item newer than
#                 0.2.10 (`wasi:cli/exit.exit-with-code`, @since 0.2.12) is removed. wasmtime
#                 links 0.2.10 imports to its 0.2.12 implementation (semver-compatible matching).
set -euo pipefail
cd "$(dirname "$0")"
version=48.0.8
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/wasmtime-wasi-http-$version/wit 2>/dev/null | head -1)
[ -n "$src" ] || { echo "wasmtime-wasi-http-$version not in the cargo registry (run cargo fetch)" >&2; exit 1; }
rm -rf wasi-0.2.12/deps wasi-0.2.10/deps
mkdir -p wasi-0.2.12/deps wasi-0.2.10/deps
cp "$src"/deps/*.wit wasi-0.2.12/deps/
for f in wasi-0.2.12/deps/*.wit; do
  # Drop exit-with-code (its doc comment, @since line and declaration) and rewrite versions.
  awk '
    /^  \/\/\// { doc = doc $0 "\n"; next }
    /@since\(version = 0\.2\.1[1-9]\)/ { skip = 1; doc = ""; next }
    skip && /exit-with-code: func/ { skip = 0; next }
    { printf "%s", doc; doc = ""; print }
  ' "$f" | sed -e 's/@0\.2\.12/@0.2.10/g' > "wasi-0.2.10/deps/$(basename "$f")"
done
if grep -rqE '0\.2\.1[1-9]' wasi-0.2.10; then echo "leftover 0.2.11+ references" >&2; exit 1; fi
echo "vendored WIT from $src"

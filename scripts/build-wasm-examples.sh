#!/usr/bin/env bash
# Builds the WebAssembly examples (examples/wasm) into one directory:
#
#   rust-wasi-p1.wasm  Rust, wasm:wasi, a WASI preview 1 module      (cargo, wasm32-wasip1)
#   rust-wasi.wasm     Rust, wasm:wasi, a wasi:cli command component (cargo, wasm32-wasip2)
#   rust-http.wasm     Rust, wasm:http, a wasi:http/proxy component  (cargo, wasm32-wasip2, wstd)
#   python-wasi.wasm   Python, wasm:wasi                             (componentize-py)
#   python-http.wasm   Python, wasm:http                             (componentize-py)
#   js-wasi.wasm       JavaScript, wasm:wasi                         (componentize-js)
#   js-http.wasm       JavaScript, wasm:http                         (componentize-js)
#
# Usage: scripts/build-wasm-examples.sh [OUT_DIR]
#   OUT_DIR defaults to $NIMBUS_WASM_EXAMPLES, else ${CARGO_TARGET_DIR:-target}/wasm-examples.
#
# It installs what it needs: the rustup targets, componentize-py (pinned in
# examples/wasm/python/requirements.txt) into a venv under OUT_DIR/.cache, and componentize-js
# (pinned by examples/wasm/js/package-lock.json) with npm under OUT_DIR/.cache. Only
# crates.io, PyPI and npm are contacted; the WASI WIT is vendored in examples/wasm/wit.
# Each group (rust, python, js) is rebuilt only when a hash of its sources, WIT and tool
# pins changed: the Python and JavaScript builds take about a minute each.
# Concurrent runs (test processes, scripts/test.sh) serialise on OUT_DIR/.lock.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${1:-${NIMBUS_WASM_EXAMPLES:-${CARGO_TARGET_DIR:-$root/target}/wasm-examples}}
mkdir -p "$out/.cache" "$out/.stamps"
out=$(cd "$out" && pwd)
cache=$out/.cache
ex=$root/examples/wasm

exec 9>"$out/.lock"
flock 9

log() { printf '[wasm-examples] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# A hash of files (paths relative to the repo root, sorted) plus extra strings.
hash_inputs() { # extra-string paths...
  local extra=$1; shift
  {
    printf '%s\n' "$extra"
    sha256sum scripts/build-wasm-examples.sh
    find "$@" -type f ! -name '*.wasm' ! -path '*/target/*' ! -path '*/node_modules/*' \
      ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -d' ' -f1
}

# True when the group's stamp matches and all its outputs exist.
up_to_date() { # group hash outputs...
  local group=$1 hash=$2; shift 2
  [ "$(cat "$out/.stamps/$group" 2>/dev/null)" = "$hash" ] || return 1
  local f
  for f in "$@"; do [ -s "$out/$f" ] || return 1; done
}

stamp() { printf '%s\n' "$2" > "$out/.stamps/$1"; }

# Installs a finished artifact atomically (tests may read the directory meanwhile).
install_wasm() { # src name
  cp "$1" "$out/.$2.tmp"
  mv -f "$out/.$2.tmp" "$out/$2"
}

# Runs the given commands (one per argument, each a string for bash -c) in parallel; fails if
# any fails, showing its output.
run_parallel() {
  local pids=() logs=() i=0 cmd rc=0
  for cmd in "$@"; do
    logs+=("$cache/job$i.log")
    bash -c "$cmd" > "$cache/job$i.log" 2>&1 &
    pids+=($!)
    i=$((i + 1))
  done
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
      log "failed: ${*:$((i + 1)):1}"
      cat "${logs[$i]}" >&2
      rc=1
    fi
  done
  return $rc
}

elapsed() { echo $(( $(date +%s) - $1 ))s; }

# --- Rust: cargo, wasm32-wasip1 and wasm32-wasip2 -----------------------------------------
build_rust() {
  local outputs=(rust-wasi-p1.wasm rust-wasi.wasm rust-http.wasm)
  command -v cargo >/dev/null || die "cargo not found (install Rust with rustup)"
  local hash
  hash=$(hash_inputs "$(rustc -V)" examples/wasm/rust)
  if up_to_date rust "$hash" "${outputs[@]}"; then log "rust: up to date"; return; fi
  local t0; t0=$(date +%s)
  if command -v rustup >/dev/null; then
    local installed; installed=$(rustup target list --installed)
    for t in wasm32-wasip1 wasm32-wasip2; do
      grep -qx "$t" <<<"$installed" || { log "rustup target add $t"; rustup target add "$t"; }
    done
  fi
  local target_dir=$cache/rust-target
  log "rust: cargo build --release (wasm32-wasip2, wasm32-wasip1)"
  (
    cd "$ex/rust"
    unset RUSTFLAGS CARGO_BUILD_TARGET
    export CARGO_TARGET_DIR=$target_dir
    cargo build --release --locked --quiet --target wasm32-wasip2
    cargo build --release --locked --quiet --target wasm32-wasip1 -p hello-wasi
  ) || die "rust build failed (are the targets installed? rustup target add wasm32-wasip1 wasm32-wasip2)"
  install_wasm "$target_dir/wasm32-wasip1/release/hello-wasi.wasm" rust-wasi-p1.wasm
  install_wasm "$target_dir/wasm32-wasip2/release/hello-wasi.wasm" rust-wasi.wasm
  install_wasm "$target_dir/wasm32-wasip2/release/hello-http.wasm" rust-http.wasm
  stamp rust "$hash"
  log "rust: built in $(elapsed "$t0")"
}

# --- Python: componentize-py, WASI 0.2.12 WIT ------------------------------------------------
build_python() {
  local outputs=(python-wasi.wasm python-http.wasm)
  local hash
  hash=$(hash_inputs "python" examples/wasm/python examples/wasm/wit/wasi-0.2.12)
  if up_to_date python "$hash" "${outputs[@]}"; then log "python: up to date"; return; fi
  local t0; t0=$(date +%s)
  local venv=$cache/venv req=$ex/python/requirements.txt
  local req_hash; req_hash=$(sha256sum "$req" | cut -d' ' -f1)
  if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$req_hash" ]; then
    command -v python3 >/dev/null || die "python3 not found"
    log "python: installing componentize-py into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    echo "$req_hash" > "$venv/.requirements"
  fi
  local wit=$ex/wit/wasi-0.2.12 cpy=$venv/bin/componentize-py
  log "python: componentize-py (2 components)"
  run_parallel \
    "'$cpy' -d '$wit' -w command componentize -p '$ex/python/wasi' app -o '$cache/python-wasi.wasm'" \
    "'$cpy' -d '$wit' -w http componentize -p '$ex/python/http' app -o '$cache/python-http.wasm'" \
    || die "python build failed"
  install_wasm "$cache/python-wasi.wasm" python-wasi.wasm
  install_wasm "$cache/python-http.wasm" python-http.wasm
  stamp python "$hash"
  log "python: built in $(elapsed "$t0")"
}

# --- JavaScript: componentize-js, WASI 0.2.10 WIT -------------------------------------------
build_js() {
  local outputs=(js-wasi.wasm js-http.wasm)
  command -v node >/dev/null || die "node not found"
  local hash
  hash=$(hash_inputs "$(node --version)" examples/wasm/js examples/wasm/wit/wasi-0.2.10)
  if up_to_date js "$hash" "${outputs[@]}"; then log "js: up to date"; return; fi
  local t0; t0=$(date +%s)
  local dir=$cache/js
  local lock_hash; lock_hash=$(cat "$ex/js/package.json" "$ex/js/package-lock.json" | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$dir/.lock-hash" 2>/dev/null)" != "$lock_hash" ] || [ ! -x "$dir/node_modules/.bin/componentize-js" ]; then
    log "js: npm install (componentize-js, locked versions) in $dir"
    mkdir -p "$dir"
    cp "$ex/js/package.json" "$ex/js/package-lock.json" "$dir/"
    # `npm install` with the committed lock installs exactly the locked versions. Not `npm ci`:
    # it refuses this tree because some optional platform packages that dependencies declare
    # were never published (e.g. @bytecodealliance/jco-node-fs-win32-x64-msvc@0.3.2), so npm
    # cannot record them in any lock file. See examples/wasm/README.md.
    (cd "$dir" && npm install --no-save --no-audit --no-fund --loglevel=error) || die "npm install failed"
    local v
    v=$(node -p 'require(process.argv[1]).version' "$dir/node_modules/@bytecodealliance/componentize-js/package.json")
    [ "$v" = "$(node -p 'require(process.argv[1]).devDependencies["@bytecodealliance/componentize-js"]' "$ex/js/package.json")" ] \
      || die "componentize-js $v installed, not the locked version"
    echo "$lock_hash" > "$dir/.lock-hash"
  fi
  local wit=$ex/wit/wasi-0.2.10 cjs=$dir/node_modules/.bin/componentize-js
  log "js: componentize-js (2 components)"
  run_parallel \
    "'$cjs' --wit '$wit' --world-name command -o '$cache/js-wasi.wasm' '$ex/js/wasi/app.js'" \
    "'$cjs' --wit '$wit' --world-name http -o '$cache/js-http.wasm' '$ex/js/http/app.js'" \
    || die "js build failed"
  install_wasm "$cache/js-wasi.wasm" js-wasi.wasm
  install_wasm "$cache/js-http.wasm" js-http.wasm
  stamp js "$hash"
  log "js: built in $(elapsed "$t0")"
}

build_rust
build_python
build_js
log "examples in $out:"
(cd "$out" && ls -l -- *.wasm | awk '{printf "  %-18s %10d bytes\n", $9, $5}') >&2

#!/usr/bin/env bash
# The whole Nimbus test suite, from a fresh machine: installs what it needs, starts the local
# services that are down, then runs formatting and lint checks, every Rust test (unit and API
# integration tests against a real server process) and the Node.js suites (the system catalog,
# and the compatibility suite driving the server with the official `openwhisk` npm client).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

log() { printf '\n== %s\n' "$*"; }

need_apt=()
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
# The function sandbox: bubblewrap (namespaces, binds, seccomp) and slirp4netns (outbound network).
command -v bwrap >/dev/null 2>&1 || need_apt+=(bubblewrap)
command -v slirp4netns >/dev/null 2>&1 || need_apt+=(slirp4netns)
# nft loads the egress policy into each outbound sandbox's network namespace.
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || need_apt+=(nftables)
# The IoT example's end-to-end test publishes with mosquitto_pub and checks tables with psql.
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
# The TLS feed tests make a CA with openssl and start brokers of their own.
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v mosquitto >/dev/null 2>&1 || need_apt+=(mosquitto)
command -v nats-server >/dev/null 2>&1 || need_apt+=(nats-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

# Local services used by the cluster/event backends; start whichever is down (cheap when up).
start_if_down() { # name port command...
  local name=$1 port=$2; shift 2
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    log "starting $name"
    "$@" >/dev/null 2>&1 || echo "warning: could not start $name"
  fi
}
if [ "$(id -u)" = 0 ]; then
  command -v pg_ctlcluster >/dev/null && start_if_down postgresql 5432 sh -c 'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start'
  command -v nats-server >/dev/null && start_if_down nats 4222 start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  command -v mosquitto >/dev/null && start_if_down mosquitto 1883 mosquitto -d -c /etc/mosquitto/mosquitto.conf
fi

# --- wasm (issue 3): the tests build wasi:http fixtures (crates/nimbus/tests/wasm-fixtures) and
# the nimbus-wasm examples with cargo for these targets. Idempotent and fast when installed.
if command -v rustup >/dev/null 2>&1; then
  rustup target add wasm32-wasip1 wasm32-wasip2 >/dev/null
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# --- wasm examples: build examples/wasm (Rust, Python, JavaScript) for the nimbus-wasm and
# server tests; installs the rustup wasm targets, componentize-py (venv) and componentize-js
# (npm) under the target dir. A no-op when the sources are unchanged (about a second).
log "wasm examples"
if ! python3 -c 'import ensurepip' 2>/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi
scripts/build-wasm-examples.sh

log "cargo test"
cargo test --workspace --locked --no-fail-fast

log "node suites"
bin_dir="${CARGO_TARGET_DIR:-$root/target}/debug"
export NIMBUS_BIN="$bin_dir/nimbus"
(cd tests/compat && npm ci --no-audit --no-fund --loglevel=error)
node --test --test-concurrency=1 crates/nimbus-controller/catalog/ tests/compat/

# --- console: browser end-to-end tests of the web console (headless Debian chromium driven by
# playwright-core from npm; no browser download). Screenshots: $CARGO_TARGET_DIR/console-e2e/.
log "console e2e (chromium)"
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
(cd tests/console && npm ci --no-audit --no-fund --loglevel=error)
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}" node --test --test-concurrency=1 tests/console/

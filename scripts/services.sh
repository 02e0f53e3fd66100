#!/usr/bin/env bash
# Installs and starts what the tests need, idempotently: quick when all is
# already there. Today the suite needs only the Rust toolchain with rustfmt and
# clippy; the Kafka-compatible broker (Tansu) and ClickHouse join this script
# with the Kafka source and the ClickHouse sink.
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
  log "cargo not found: install Rust (https://rustup.rs) first"; exit 1
fi
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    log "installing rustup component $component"
    rustup component add "$component"
  fi
done
if ! cargo nextest --version >/dev/null 2>&1; then
  log "cargo-nextest not found: tests will run with cargo test"
fi
log "ready"

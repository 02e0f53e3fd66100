#!/usr/bin/env bash
# The one test command: services, formatting, lints, every test.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh

echo "== docker-compose.yml"
# No Docker engine here: the compose file is checked, not run (docs/operations.md).
if docker compose version >/dev/null 2>&1; then compose=(docker compose);
elif command -v docker-compose >/dev/null 2>&1; then compose=(docker-compose);
else compose=(); fi
if [ ${#compose[@]} -gt 0 ]; then
  STOCKFLOW_API_KEYS="check-only-key-0123456789:*:admin" CLICKHOUSE_PASSWORD=check "${compose[@]}" -f docker-compose.yml config -q
else
  python3 -c 'import sys, yaml; yaml.safe_load(open("docker-compose.yml"))' 2>/dev/null || echo "(no docker compose and no PyYAML: compose file not checked)"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
# Release mode: the property tests and the engine run many timely steps.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --release --locked --no-fail-fast
  # nextest does not run doctests.
  cargo test --workspace --release --locked --doc
else
  cargo test --workspace --release --locked --no-fail-fast
fi

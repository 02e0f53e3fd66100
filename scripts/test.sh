#!/usr/bin/env bash
# The one test command: services, formatting, lints, every test.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh

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

#!/usr/bin/env bash
# Commands per second through HTTP -> commands log -> decider -> views, with
# an external load tool (autocannon, from npm) at 64 connections on loopback:
# the figure issue 4 asks for. Starts a release build of stockflow on a fresh
# data dir, seeds one item, posts `adjust` commands for SECONDS, then checks
# that the view's on_hand moved by exactly the number of 202s.
#
#   scripts/bench-commands.sh [SECONDS] [CONNECTIONS]     (defaults 10 64)
#
# Needs Node (npm). The in-process bench with command-to-visible latencies is
# `cargo bench --bench commands`. BENCH_AUTH=1 runs the server with an API
# key (rate limit off) and sends it on every request: the cost of auth.
set -euo pipefail
SECONDS_TO_RUN="${1:-10}"
CONNECTIONS="${2:-64}"
PORT="${STOCKFLOW_BENCH_PORT:-18080}"
CACHE="${STOCKFLOW_CACHE:-$HOME/.cache/stockflow}"
cd "$(dirname "$0")/.."

cargo build --release --quiet
if [ ! -x "$CACHE/node/node_modules/.bin/autocannon" ]; then
  mkdir -p "$CACHE/node"
  (cd "$CACHE/node" && npm install --silent --no-audit --no-fund autocannon@7)
fi
data="$(mktemp -d)"
AUTH=()
if [ "${BENCH_AUTH:-0}" = 1 ]; then
  key="bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  export STOCKFLOW_API_KEYS="$key:*:admin" STOCKFLOW_RATE_LIMIT=0
  AUTH=(-H "authorization: Bearer $key")
fi
./target/release/stockflow serve --data-dir "$data" --listen "127.0.0.1:$PORT" --workers 2 >"$data/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do curl -sf "127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done

token=$(curl -sf -X POST -H 'content-type: application/json' "${AUTH[@]}" \
  -d '{"sku":"BENCH-1","name":"bench","price":1,"stock":{"m":1000000}}' "127.0.0.1:$PORT/v1/items" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
curl -sf "${AUTH[@]}" "127.0.0.1:$PORT/v1/stock/BENCH-1?after=$token" >/dev/null

"$CACHE/node/node_modules/.bin/autocannon" -c "$CONNECTIONS" -d "$SECONDS_TO_RUN" -m POST \
  -H 'content-type=application/json' ${key:+-H "authorization=Bearer $key"} -b '{"location":"m","qty":1}' --json \
  "http://127.0.0.1:$PORT/v1/stock/BENCH-1/adjust" >"$data/result.json" 2>/dev/null
sleep 1
python3 - "$data/result.json" "127.0.0.1:$PORT" "$CONNECTIONS" "${key:-}" <<'PY'
import json, sys, urllib.request
r = json.load(open(sys.argv[1]))
ok = r["2xx"]
request = urllib.request.Request(f"http://{sys.argv[2]}/v1/stock/BENCH-1")
if sys.argv[4]:
    request.add_header("authorization", f"Bearer {sys.argv[4]}")
stock = json.load(urllib.request.urlopen(request))
on_hand = stock["totals"]["on_hand"]
print(f"commands {ok} accepted (non-2xx {r['non2xx']}, errors {r['errors']}) in {r['duration']:.1f}s: "
      f"{ok / r['duration']:.0f} commands/s; 202 latency p50 {r['latency']['p50']} ms p99 {r['latency']['p99']} ms")
# Requests still in flight when the tool stops are applied but not counted: at most one per connection.
applied = on_hand - 1_000_000
good = ok <= applied <= ok + int(sys.argv[3])
print(f"view: on_hand moved by {applied}: the {ok} counted 202s plus {applied - ok} in flight at the end "
      f"(at most {sys.argv[3]}): {'consistent' if good else 'MISMATCH'}")
sys.exit(0 if good else 1)
PY

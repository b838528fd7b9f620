#!/usr/bin/env bash
# Starts the whole Bulkhead stack on loopback (nats-server, control-plane,
# audit-service, a CPU worker with a small generated model, router), sends one
# streamed request through it, and keeps running until Ctrl-C.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
BULKHEAD_NATS_SERVER="$(scripts/ensure-nats.sh)"
export BULKHEAD_NATS_SERVER
echo "building Bulkhead (first time: a few minutes) ..."
cargo build --workspace --bins
dir="$root/.bulkhead/dev"
rm -f "$dir/stack.json"
target/debug/bulkhead dev --dir "$dir" "$@" &
dev_pid=$!
trap 'kill -INT $dev_pid 2>/dev/null || true; wait $dev_pid 2>/dev/null || true' INT TERM
for _ in $(seq 1 600); do
  [ -f "$dir/stack.json" ] && break
  kill -0 "$dev_pid" 2>/dev/null || { echo "the dev stack failed to start" >&2; exit 1; }
  sleep 0.2
done
[ -f "$dir/stack.json" ] || { echo "the dev stack did not come up in 2 minutes" >&2; exit 1; }
read -r url key model < <(python3 -c '
import json,sys
s=json.load(open(sys.argv[1]))
print(s["router_http"], s["tenants"][0]["api_key"], s["model"])' "$dir/stack.json")
echo
echo "\$ curl -sN $url/v1/chat/completions -H 'Authorization: Bearer $key' ... (stream: true)"
curl -sN "$url/v1/chat/completions" \
  -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -d "{\"model\":\"$model\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello, Bulkhead!\"}],\"max_tokens\":12,\"stream\":true}"
echo
echo "The stack keeps running (stack.json: $dir/stack.json). Press Ctrl-C to stop it."
wait $dev_pid

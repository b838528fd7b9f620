#!/usr/bin/env bash
# Renders deploy/edge/nginx.conf.template into an nginx.conf.
#
#   EDGE_LISTEN=0.0.0.0:8443 EDGE_SERVER_NAME=api.example.com \
#   EDGE_TLS_CERT=/etc/bulkhead/edge/edge.pem EDGE_TLS_KEY=/etc/bulkhead/edge/edge.key \
#   EDGE_ROUTER_HTTP=bulkhead-router.bulkhead.svc:8080 \
#   EDGE_ROUTER_GRPC=bulkhead-router.bulkhead.svc:50051 \
#   EDGE_RUN_DIR=/var/run/bulkhead-edge deploy/edge/render.sh > nginx.conf
#
# Every variable is required; only these names are substituted, so nginx's
# own $variables are left as they are.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
vars=(EDGE_LISTEN EDGE_SERVER_NAME EDGE_TLS_CERT EDGE_TLS_KEY EDGE_ROUTER_HTTP EDGE_ROUTER_GRPC EDGE_RUN_DIR)
text="$(cat "$here/nginx.conf.template")"
for v in "${vars[@]}"; do
  if [ -z "${!v:-}" ]; then
    echo "render.sh: $v is not set (needed: ${vars[*]})" >&2
    exit 1
  fi
  text="${text//\$\{$v\}/${!v}}"
done
if grep -v '^\s*#' <<<"$text" | grep -q '\${EDGE_'; then
  echo "render.sh: the template uses a variable this script does not set:" >&2
  grep -n '\${EDGE_' <<<"$text" >&2
  exit 1
fi
printf '%s\n' "$text"

#!/usr/bin/env bash
# Prints the path of an nginx binary for the edge-proxy test (deploy/edge/),
# installing Debian's nginx (non-interactive, quiet) when none is on PATH,
# and curl (that test's HTTPS client) when it is missing.
# Only the binary is used: the test runs it as a child process with its own
# prefix and config, so the packaged service is kept from starting.
set -euo pipefail
missing=()
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ "${#missing[@]}" -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "${missing[*]} not on PATH and there is no apt-get: install them (nginx with the ssl, http_v2 and grpc modules)" >&2
    exit 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "${missing[*]} not on PATH: run this script as root once, or install them" >&2
    exit 1
  fi
  echo "installing ${missing[*]} from Debian's packages (one time)" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Keep the package's service from starting (exit 101 = action forbidden).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  log="$(mktemp)"
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
      -o Dpkg::Use-Pty=0 "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "installing ${missing[*]} failed" >&2
    exit 1
  fi
  rm -f "$log"
fi
command -v nginx

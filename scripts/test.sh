#!/usr/bin/env bash
# Runs Bulkhead's whole test suite: unit, property and end-to-end tests.
# The end-to-end tests start the real binaries and a real nats-server.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
BULKHEAD_NATS_SERVER="$(scripts/ensure-nats.sh)"
export BULKHEAD_NATS_SERVER
BULKHEAD_PYTHON="$(scripts/ensure-python.sh)"
export BULKHEAD_PYTHON
BULKHEAD_NGINX="$(scripts/ensure-nginx.sh)"
export BULKHEAD_NGINX
BULKHEAD_HELM="$(scripts/ensure-helm.sh)"
export BULKHEAD_HELM
# NVRTC (CUDA C -> PTX on the CPU) for the test that compiles the worker's
# CUDA kernels; required, so that test cannot skip silently here.
BULKHEAD_NVRTC_DIR="$(scripts/ensure-nvrtc.sh)"
export LD_LIBRARY_PATH="$BULKHEAD_NVRTC_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export BULKHEAD_REQUIRE_NVRTC=1
echo "using nats-server at $BULKHEAD_NATS_SERVER, python at $BULKHEAD_PYTHON," \
  "nginx at $BULKHEAD_NGINX, helm at $BULKHEAD_HELM, NVRTC in $BULKHEAD_NVRTC_DIR" >&2
# The end-to-end tests run the binaries from target/debug: build them first.
cargo build --workspace --bins
cargo test --workspace "$@"

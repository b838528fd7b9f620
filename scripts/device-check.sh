#!/usr/bin/env bash
# The checks that need a CUDA device, in one run (for a machine with a GPU):
# the CUDA-vs-CPU parity and in-kernel ownership tests, required to run (not
# skip), then the decode benchmark on the device and on the CPU.
# Needs the NVIDIA driver; NVRTC comes from scripts/ensure-nvrtc.sh, cuBLAS
# (libcublas.so.12) must be on the library path.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
nvrtc="$(scripts/ensure-nvrtc.sh)"
export LD_LIBRARY_PATH="$nvrtc${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export BULKHEAD_REQUIRE_NVRTC=1 BULKHEAD_REQUIRE_CUDA=1
cargo test --release -p bulkhead-worker --test cuda -- --nocapture
cargo build --release -p bulkhead-worker
target/release/bulkhead-worker bench decode --device cuda --json
target/release/bulkhead-worker bench decode --device cpu --rounds 2 --json

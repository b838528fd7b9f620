#!/usr/bin/env bash
# Prints the path of a Python with the packages the tests use, installing
# them, pinned, into the project's own venv (.bulkhead/venv) when missing:
# - numpy: the independent reference implementation of the model;
# - prometheus_client: the reference parser of the metrics format;
# - kubernetes-validate: the Kubernetes JSON schemas (bundled, offline) that
#   every rendered manifest is validated against.
# Versions and wheel hashes: scripts/requirements/test.txt (the versions
# below must match it).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.bulkhead/venv"
NUMPY_VERSION="2.2.6"
PROMETHEUS_CLIENT_VERSION="0.26.0"
KUBERNETES_VALIDATE_VERSION="1.37.0"
[ -x "$venv/bin/python3" ] || python3 -m venv "$venv" >&2
if ! "$venv/bin/python3" - "$KUBERNETES_VALIDATE_VERSION" 2>/dev/null <<'PY'
import sys, importlib.metadata as m
import numpy, prometheus_client, kubernetes_validate
sys.exit(m.version("kubernetes-validate") != sys.argv[1])
PY
then
  echo "installing numpy $NUMPY_VERSION, prometheus_client $PROMETHEUS_CLIENT_VERSION," \
    "kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $venv (one time)" >&2
  # Every wheel, dependencies included, pinned by hash.
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    --require-hashes --only-binary=:all: \
    -r "$root/scripts/requirements/test.txt" >&2
fi
echo "$venv/bin/python3"

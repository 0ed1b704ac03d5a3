#!/usr/bin/env bash
# Installs dicomnode into .venv/ at the repository root (Debian 12, Python 3.11).
# torch/torchvision are pinned to the versions that lie on the build machines' local disk (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-dev
  else
    echo "install python3-venv first (apt-get install python3-venv)" >&2; exit 1
  fi
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip setuptools wheel
.venv/bin/pip install -q -e ".${EXTRAS:-}"
echo "installed: $(.venv/bin/dicomnode --help | head -1)" >&2

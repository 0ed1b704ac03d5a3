#!/usr/bin/env bash
# Installs everything the tests need (Debian peers, the project with its test extras) and runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-peers.sh
EXTRAS="[test,seed]" bash scripts/install.sh
exec .venv/bin/python -m pytest -q -ra "$@"

#!/usr/bin/env bash
# Installs everything the tests need (Debian peers, the project with its test extras), checks lint, format and
# types, and runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-peers.sh
EXTRAS="[test,seed]" bash scripts/install.sh
# lint, format and types first (configured in pyproject.toml): a finding fails the run like a failing test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# two workers, a test file each at a time (its module fixtures stay in one process); PYTEST_WORKERS=0 runs in one
exec .venv/bin/python -m pytest -q -ra -n "${PYTEST_WORKERS:-2}" --dist loadfile --durations=15 "$@"

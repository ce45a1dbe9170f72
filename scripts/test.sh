#!/usr/bin/env bash
# The project's one check: set up, lint (ruff), type-check (mypy), test (pytest).
# Tests run in parallel (pytest-xdist, one file per worker so a file's shared server starts once):
# PYTEST_WORKERS=N sets the count (default 2, one per core of the 2-core CI machine: 4 workers
# start up to 4 servers at once, and on a shared machine their start-up CPU pushed module
# fixtures past their timeouts); PYTEST_WORKERS=0 runs them in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
echo "== ruff"
.venv/bin/ruff format --check src tests benchmarks examples scripts
.venv/bin/ruff check src tests benchmarks examples scripts
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
workers="${PYTEST_WORKERS:-2}"
if [ "$workers" = "0" ]; then
  .venv/bin/python -m pytest -q "$@"
else
  .venv/bin/python -m pytest -q -n "$workers" --dist loadfile "$@"
fi

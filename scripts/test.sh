#!/usr/bin/env bash
# The project's one check: set up, lint (ruff), type-check (mypy), test (pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
echo "== ruff"
.venv/bin/ruff format --check src tests benchmarks examples scripts
.venv/bin/ruff check src tests benchmarks examples scripts
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest -q "$@"

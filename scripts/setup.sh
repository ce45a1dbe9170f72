#!/usr/bin/env bash
# Create .venv and install steadyserve (+ test tools with --test). torch is pinned by
# constraints.txt to the CPU wheel; pyproject.toml keeps the dependency open.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
extra=""
if [ "${1:-}" = "--test" ]; then extra="[test]"; fi
.venv/bin/python -m pip install -q -c constraints.txt -e ".${extra}"
if [ "${1:-}" = "--test" ]; then
  # the gRPC stubs are committed (generated, never hand-edited); just say when they are stale
  .venv/bin/python scripts/gen_grpc.py --check || echo "warning: run python scripts/gen_grpc.py"
fi

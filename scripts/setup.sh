#!/usr/bin/env bash
# Create .venv and install steadyserve (+ test tools with --test). torch is pinned by
# constraints.txt to the CPU wheel; pyproject.toml keeps the dependency open.
# pip runs only when something it reads changed: a stamp in .venv hashes pyproject.toml,
# constraints.txt, the extras and this checkout's path (SETUP_FORCE=1 installs anyway).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
say() { echo "setup: $*" >&2; }
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $("$PY" --version 2>&1)"
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
extra=""
if [ "${1:-}" = "--test" ]; then extra="[test]"; fi
stamp=".venv/.steadyserve-installed${extra:+-test}"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1) ${extra} $(pwd -P)"
if [ "${SETUP_FORCE:-0}" != "1" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  say "dependencies up to date (pyproject.toml and constraints.txt unchanged); skipping pip"
else
  say "installing steadyserve${extra} and its dependencies into .venv (pip; the first time"
  say "downloads torch and transformers, a minute or two)..."
  start=$SECONDS
  .venv/bin/python -m pip install -q -c constraints.txt -e ".${extra}"
  echo "$want" > "$stamp"
  say "installed in $((SECONDS - start))s"
fi
if [ "${1:-}" = "--test" ]; then
  # the gRPC stubs are committed (generated, never hand-edited); just say when they are stale
  .venv/bin/python scripts/gen_grpc.py --check || echo "warning: run python scripts/gen_grpc.py"
fi

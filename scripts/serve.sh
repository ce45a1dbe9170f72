#!/usr/bin/env bash
# Set up and serve. With no arguments: the built-in demo model on http://127.0.0.1:8080.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -eq 0 ]; then set -- --host 127.0.0.1; fi
echo "serve: starting $(pwd -P)/.venv/bin/steadyserve serve $* (Ctrl-C to stop)" >&2
echo "serve: the steadyserve command lives in .venv/bin (or run: source .venv/bin/activate)" >&2
exec .venv/bin/steadyserve serve "$@"

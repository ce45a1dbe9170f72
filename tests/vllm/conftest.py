"""tests/vllm: the vLLM backend, run in the vLLM environment (``bash scripts/setup_vllm.sh``, then
``.venv-vllm/bin/python -m pytest tests/vllm``). Skipped where vLLM is not installed (the main
environment). Each module starts ONE vLLM-backed server (vLLM takes about a minute to start).

vLLM's CPU build is held to a small footprint here: no thread pinning, a 1 GiB KV cache.
Models: vLLM's CPU attention needs a head size of 32 or more, so these tiny models use 32
(the shared fixtures use 16).
"""

from __future__ import annotations

import importlib.util
import os

import pytest

if importlib.util.find_spec("vllm") is None:
    collect_ignore_glob = ["test_*.py"]

#: what every vLLM server of these tests runs with
VLLM_ENV = {
    "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind"),
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
}
VLLM_ARGS = (
    "--kv_cache_space_gb",
    "1",
    "--max_model_len",
    "512",
    "--dtype",
    "bfloat16",
    "--enforce_eager",  # no torch.compile warm-up: minutes of CPU on a shared machine
)
#: vLLM's start-up (engine core, executor, warm-up compile) under a shared, loaded CPU
READY_TIMEOUT = 600.0


@pytest.fixture(scope="session")
def vllm_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from steadyserve.runtimes.huggingface import tiny

    path = tmp_path_factory.mktemp("vllm-llama")
    return tiny.build_llama(
        path, hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2
    )


@pytest.fixture(scope="session")
def vllm_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from steadyserve.runtimes.huggingface import tiny

    path = tmp_path_factory.mktemp("vllm-gpt2")
    return tiny.build_gpt2(path, n_embd=64, n_head=2)

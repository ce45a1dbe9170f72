"""Which engine serves a Hugging Face model: vLLM or steadyserve's own (``--backend``).

As KServe's huggingfaceserver: ``vllm`` insists on vLLM, ``huggingface`` never uses it, ``auto``
uses it when it is importable and supports the checkpoint (decoder-only text generation with an
architecture in vLLM's registry), else falls back to the Hugging Face engine and logs why.
Encoder-decoders (T5), the encoder tasks and custom models always stay on our engines.

The server process only checks what it can without importing vLLM (:func:`check_settings`,
a configuration error before any port opens) and stamps the backend options on each Hugging
Face spec (:func:`apply_backend`); the worker decides (:func:`choose`, through
:func:`huggingface_or_vllm`, the ``huggingface`` runtime's factory).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from steadyserve.config import ModelSpec
    from steadyserve.model import Model
    from steadyserve.settings import Settings

log = logging.getLogger("steadyserve.vllm")

#: key of ``ModelSpec.options`` that carries the backend choice and vLLM's settings
OPTION = "backend"
INSTALL_HINT = (
    "install it: pip install 'steadyserve[vllm]' (GPU) or bash scripts/setup_vllm.sh (CPU)"
)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def check_settings(settings: Settings) -> None:
    """Configuration errors of ``--backend vllm`` that need no model: one line each."""
    from steadyserve.settings import ConfigError

    if settings.backend != "vllm":
        return
    if settings.model_class is not None:
        raise ConfigError("--backend vllm serves Hugging Face models; --model_class is custom")
    if settings.task not in (None, "text_generation"):
        raise ConfigError(
            f"--backend vllm serves task text_generation only, not --task={settings.task}"
        )
    if not vllm_installed():
        raise ConfigError(f"--backend vllm: vLLM is not installed; {INSTALL_HINT}")


def backend_options(settings: Settings) -> dict[str, Any]:
    return {
        "backend": settings.backend,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "enforce_eager": settings.enforce_eager,
        "kv_cache_space_gb": settings.kv_cache_space_gb,
        "engine_core": settings.vllm_engine_core,
    }


def apply_backend(settings: Settings, specs: list[ModelSpec]) -> list[ModelSpec]:
    """Check the backend settings and stamp them on every Hugging Face spec."""
    check_settings(settings)
    return [stamp_backend(settings, spec) for spec in specs]


def stamp_backend(settings: Settings, spec: ModelSpec) -> ModelSpec:
    """The backend settings on a Hugging Face spec (also for a model the repository API loads
    later: it gets the same ``--backend`` as the models of the command line)."""
    if spec.runtime == "huggingface":
        spec.options = {**spec.options, OPTION: backend_options(settings)}
    return spec


def _config(spec: ModelSpec) -> dict[str, Any] | None:
    """The checkpoint's ``config.json`` (local model directories only)."""
    if spec.model_dir is None:
        return None
    from steadyserve.runtimes.huggingface.loading import find_model_dir

    path = os.path.join(find_model_dir(spec.model_dir), "config.json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else None


def supported_architectures() -> set[str]:
    """Architectures vLLM's model registry serves (imports vLLM: seconds)."""
    from vllm.model_executor.models import ModelRegistry

    return set(ModelRegistry.get_supported_archs())


def why_not_vllm(spec: ModelSpec) -> str | None:
    """``None`` when vLLM can serve ``spec``, else the reason it cannot."""
    if not vllm_installed():
        return "vLLM is not installed"
    if spec.task not in (None, "text_generation"):
        return f"task {spec.task} is not text generation"
    config = _config(spec)
    if config is None:
        return None if spec.model_id is not None else "no model directory"
    if config.get("is_encoder_decoder"):
        return "encoder-decoder models stay on the Hugging Face engine"
    from steadyserve.runtimes.huggingface.loading import infer_task

    archs = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    task = spec.task or infer_task(archs, False)
    if task != "text_generation":
        return f"task {task} is not text generation"
    known = supported_architectures()
    if not any(a in known for a in archs):
        return f"vLLM does not support the architecture {', '.join(archs) or '(none)'}"
    return None


def choose(spec: ModelSpec) -> Model | None:
    """The vLLM-backed model for ``spec``, or ``None`` for the Hugging Face engine.

    Raises ``LoadError`` when ``--backend vllm`` was asked for and vLLM cannot serve the model.
    """
    from steadyserve.runtimes.huggingface.loading import LoadError

    options = spec.options.get(OPTION)
    backend = options.get("backend", "auto") if isinstance(options, dict) else "auto"
    if backend == "huggingface" or not isinstance(options, dict):
        return None
    try:
        reason = why_not_vllm(spec)
    except (OSError, ValueError, ImportError) as exc:
        reason = f"cannot read the model config: {exc}"
    if reason is not None:
        if backend == "vllm":
            raise LoadError(f"--backend vllm cannot serve {spec.name}: {reason}")
        log.info("model %s: Hugging Face engine (--backend auto: %s)", spec.name, reason)
        return None
    from steadyserve.runtimes.vllm.model import VllmModel

    log.info("model %s: vLLM engine (--backend %s)", spec.name, backend)
    return VllmModel(spec.name, spec, options)


def huggingface_or_vllm(spec: ModelSpec) -> Model:
    """The ``huggingface`` runtime's factory: vLLM's engine when :func:`choose` picks it, else
    the Hugging Face runtime."""
    chosen = choose(spec)
    if chosen is not None:
        return chosen
    from steadyserve.runtimes.huggingface.runtime import HuggingFaceModel

    return HuggingFaceModel.from_spec(spec)

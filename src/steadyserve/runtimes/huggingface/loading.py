"""Loading a Hugging Face model: task, device and dtype resolution, and the one-device check.

Task inference from ``config.architectures`` (when ``--task`` is not given); the first
architecture that matches a row wins:

=========================================================  ==========================  =====================================
architecture name                                          task                        loaded with
=========================================================  ==========================  =====================================
``*ForCausalLM``, ``*LMHeadModel``                         ``text_generation``         ``AutoModelForCausalLM``
``*ForConditionalGeneration`` (encoder-decoder config)     ``text2text_generation``    ``AutoModelForSeq2SeqLM``
``*ForMaskedLM``                                           ``fill_mask``               ``AutoModelForMaskedLM``
``*ForSequenceClassification``                             ``sequence_classification`` ``AutoModelForSequenceClassification``
``*ForTokenClassification``                                ``token_classification``    ``AutoModelForTokenClassification``
``*Model`` (a bare encoder, e.g. ``BertModel``)            ``text_embedding``          ``AutoModel``
=========================================================  ==========================  =====================================

Anything else is a load error that names the architectures and the valid ``--task`` values.

``dtype``: ``auto`` (float32 on CPU; the checkpoint's own dtype on GPU), ``float32``,
``bfloat16``, ``float16``. ``device``: ``auto`` (``cuda`` when available, else ``cpu``), ``cpu``,
``cuda``, ``cuda:N``. After loading, every parameter and buffer must be on that one device;
otherwise the load fails naming the devices found.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

from steadyserve.config import ModelSpec

log = logging.getLogger("steadyserve.huggingface")

TASKS: tuple[str, ...] = (
    "text_generation",
    "text2text_generation",
    "fill_mask",
    "sequence_classification",
    "token_classification",
    "text_embedding",
)
GENERATION_TASKS = ("text_generation", "text2text_generation")

#: task → name of the ``transformers`` auto class that loads it.
AUTO_CLASSES: dict[str, str] = {
    "text_generation": "AutoModelForCausalLM",
    "text2text_generation": "AutoModelForSeq2SeqLM",
    "fill_mask": "AutoModelForMaskedLM",
    "sequence_classification": "AutoModelForSequenceClassification",
    "token_classification": "AutoModelForTokenClassification",
    "text_embedding": "AutoModel",
}

_DTYPES = ("auto", "float32", "bfloat16", "float16")


class LoadError(Exception):
    """The model cannot be loaded as configured (the message says why and what is valid)."""


def infer_task(architectures: list[str] | None, is_encoder_decoder: bool = False) -> str:
    """The task of a checkpoint from its ``config.architectures`` (see the module table)."""
    for arch in architectures or []:
        if arch.endswith("ForCausalLM") or arch.endswith("LMHeadModel"):
            return "text_generation"
        if arch.endswith("ForConditionalGeneration") and is_encoder_decoder:
            return "text2text_generation"
        if arch.endswith("ForMaskedLM"):
            return "fill_mask"
        if arch.endswith("ForSequenceClassification"):
            return "sequence_classification"
        if arch.endswith("ForTokenClassification"):
            return "token_classification"
        if arch.endswith("Model") and not is_encoder_decoder:
            return "text_embedding"
    raise LoadError(
        f"cannot infer the task from architectures {architectures or []}; "
        f"pass --task (one of: {', '.join(TASKS)})"
    )


def resolve_device(device: str, cuda_available: bool | None = None) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; ``cuda`` → ``cuda:0``.

    Raises :class:`LoadError` for CUDA when no GPU is available, or an unknown device."""
    if cuda_available is None:
        import torch

        cuda_available = bool(torch.cuda.is_available())
    if device == "auto":
        return "cuda:0" if cuda_available else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not cuda_available:
            raise LoadError(f"--device={device} but CUDA is not available; use --device=cpu")
        index = device.partition(":")[2] or "0"
        if not index.isdigit():
            raise LoadError(f"invalid --device={device!r} (valid: auto, cpu, cuda, cuda:N)")
        return f"cuda:{int(index)}"
    raise LoadError(f"invalid --device={device!r} (valid: auto, cpu, cuda, cuda:N)")


def resolve_dtype(dtype: str, device: str, config_dtype: Any = None) -> Any:
    """The ``torch.dtype`` to load with. ``auto``: float32 on CPU, else the checkpoint's dtype
    (``config_dtype``, falling back to float32)."""
    import torch

    if dtype not in _DTYPES:
        raise LoadError(f"invalid --dtype={dtype!r} (valid: {', '.join(_DTYPES)})")
    if dtype != "auto":
        return getattr(torch, dtype)
    if device == "cpu":
        return torch.float32
    if isinstance(config_dtype, str) and isinstance(
        getattr(torch, config_dtype, None), torch.dtype
    ):
        return getattr(torch, config_dtype)
    if isinstance(config_dtype, torch.dtype):
        return config_dtype
    return torch.float32


def tensor_devices(model: Any) -> set[str]:
    """The devices of every parameter and buffer of ``model``."""
    devices = {str(p.device) for p in model.parameters()}
    devices |= {str(b.device) for b in model.buffers()}
    return devices


def check_single_device(model: Any, device: str) -> None:
    """Fail the load unless every parameter and buffer lives on ``device``."""
    found = tensor_devices(model)
    if found != {device}:
        raise LoadError(
            f"model tensors are on devices {sorted(found)}, expected all on {device}; "
            "a model split across devices (or left on 'meta') is not supported"
        )


def find_model_dir(model_dir: str) -> str:
    """The directory holding ``config.json``: ``model_dir`` itself or its only subdirectory
    that has one (KServe's storage initializer may add one level)."""
    if not os.path.isdir(model_dir):
        raise LoadError(f"model directory {model_dir} does not exist")
    if os.path.isfile(os.path.join(model_dir, "config.json")):
        return model_dir
    subdirs = [
        os.path.join(model_dir, d)
        for d in sorted(os.listdir(model_dir))
        if os.path.isfile(os.path.join(model_dir, d, "config.json"))
    ]
    if len(subdirs) == 1:
        return subdirs[0]
    raise LoadError(
        f"no config.json in {model_dir}"
        + (f" (several candidate subdirectories: {subdirs})" if subdirs else "")
        + "; is this a Hugging Face model directory?"
    )


@dataclasses.dataclass
class Loaded:
    """A loaded model with everything the runtime needs to serve it."""

    model: Any
    tokenizer: Any
    config: Any
    task: str
    device: str
    dtype: Any
    #: where the server process can load the tokenizer from (local dir or hub snapshot).
    tokenizer_dir: str | None
    max_model_len: int


def _snapshot_dir(model_id: str, revision: str | None = None) -> str:
    try:
        from huggingface_hub import snapshot_download

        return str(snapshot_download(model_id, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - the id itself still loads from the cache
        return model_id


def model_max_len(config: Any, requested: int | None) -> int:
    """``requested`` (checked against the model's positional limit) or the model's limit
    (``max_position_embeddings`` / ``n_positions``; 512 when the model has none, e.g. T5)."""
    limit = None
    for attr in ("max_position_embeddings", "n_positions"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            limit = value
            break
    if requested is not None:
        if limit is not None and requested > limit:
            raise LoadError(
                f"--max_model_len={requested} exceeds the model's limit of {limit} positions"
            )
        return requested
    return limit if limit is not None else 512


def load(spec: ModelSpec, progress: Callable[[str], None] = log.info) -> Loaded:
    """Load the model and tokenizer a spec describes onto one device (see the module doc)."""
    import transformers

    source = spec.model_dir if spec.model_dir is not None else spec.model_id
    if source is None:
        raise LoadError("no model: give --model_dir or --model_id")
    local = spec.model_dir is not None
    if local:
        source = find_model_dir(source)
    device = resolve_device(spec.device)
    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    tokenizer_kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if not local:  # hub revisions (KServe's --model_revision / --tokenizer_revision)
        if spec.revision:
            kwargs["revision"] = spec.revision
        if spec.tokenizer_revision or spec.revision:
            tokenizer_kwargs["revision"] = spec.tokenizer_revision or spec.revision
    progress(f"reading the config of {source}")
    try:
        config = transformers.AutoConfig.from_pretrained(source, **kwargs)
    except Exception as exc:
        raise LoadError(f"cannot read the model config from {source}: {exc}") from exc
    is_enc_dec = bool(getattr(config, "is_encoder_decoder", False))
    task = spec.task or infer_task(getattr(config, "architectures", None), is_enc_dec)
    if task not in TASKS:
        raise LoadError(f"unknown task {task!r} (valid: {', '.join(TASKS)})")
    dtype = resolve_dtype(
        spec.dtype, device, getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    )
    max_len = model_max_len(config, spec.max_model_len)
    if local and any(f.endswith(".safetensors") for f in os.listdir(source)):
        kwargs["use_safetensors"] = True
    auto_cls = getattr(transformers, AUTO_CLASSES[task])
    progress(f"loading {source} as {task} ({auto_cls.__name__}, {dtype}, {device})")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **tokenizer_kwargs)
    except Exception as exc:
        raise LoadError(f"cannot load the tokenizer from {source}: {exc}") from exc
    try:
        model = auto_cls.from_pretrained(source, dtype=dtype, **kwargs)
    except Exception as exc:
        archs = getattr(config, "architectures", None)
        raise LoadError(f"cannot load {source} (architectures {archs}) as {task}: {exc}") from exc
    model = model.to(device).eval()
    check_single_device(model, device)
    progress(f"loaded {sum(p.numel() for p in model.parameters()):,} parameters")
    tokenizer_dir = source if local else _snapshot_dir(source, tokenizer_kwargs.get("revision"))
    return Loaded(
        model=model,
        tokenizer=tokenizer,
        config=config,
        task=task,
        device=device,
        dtype=dtype,
        tokenizer_dir=tokenizer_dir,
        max_model_len=max_len,
    )

"""What the engine needs from the settings: :class:`ModelSpec` (per model, sent to its worker)
and :class:`EngineConfig` (the server side of each model's engine client).

This is the one place where Settings are copied into them. A field of either struct whose name
(or :data:`SETTING_NAMES` alias) is a Settings field is filled from the settings by
:func:`model_options` / :func:`engine_config`; so a new per-model setting is two lines: the
Settings field and the field here. Defaults are the Settings' own (read from the pydantic
model), never restated. This module imports nothing from the package at run time except
``settings`` (for those defaults), so runtimes, the worker and the server all import it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from steadyserve.settings import Settings

#: a struct field → the Settings field it comes from, where the names differ
SETTING_NAMES = {"memory_limit_mb": "worker_memory_limit_mb"}


def _default(field: str) -> Any:
    """The Settings default of ``field`` (or of its alias)."""
    info = Settings.model_fields[SETTING_NAMES.get(field, field)]
    return info.get_default(call_default_factory=True)


class ModelSpec(msgspec.Struct, kw_only=True):
    """Everything a worker needs to build and load one model."""

    name: str
    #: which runtime builds it: "custom" (``model_class``) or a key of
    #: :data:`steadyserve.runtimes.RUNTIMES` ("huggingface", ...)
    runtime: str
    model_dir: str | None = None
    model_id: str | None = None
    #: hub revisions of model_id (KServe's --model_revision / --tokenizer_revision)
    revision: str | None = None
    tokenizer_revision: str | None = None
    model_class: str | None = None
    # ---- per-model settings (filled by model_options; defaults are the Settings') ----------
    task: str | None = _default("task")
    dtype: str = _default("dtype")
    device: str = _default("device")
    trust_remote_code: bool = _default("trust_remote_code")
    max_model_len: int | None = _default("max_model_len")
    max_batch_size: int = _default("max_batch_size")
    max_batch_wait_ms: float = _default("max_batch_wait_ms")
    max_num_seqs: int = _default("max_num_seqs")
    memory_limit_mb: int | None = _default("memory_limit_mb")
    torch_threads: int | None = _default("torch_threads")
    compile: bool = _default("compile")
    prefill_delay_steps: int | None = _default("prefill_delay_steps")
    prefill_hold_ms: float | None = _default("prefill_hold_ms")
    #: keyword arguments for a custom model's constructor
    options: dict[str, Any] = {}


#: ModelSpec fields that are not per-model settings
_SPEC_IDENTITY = frozenset(
    {
        "name",
        "runtime",
        "model_dir",
        "model_id",
        "revision",
        "tokenizer_revision",
        "model_class",
        "options",
    }
)


def model_options(settings: Settings) -> dict[str, Any]:
    """The per-model settings every model spec gets from the server's settings (the CLI's
    models and the repository's alike)."""
    return {
        f: getattr(settings, SETTING_NAMES.get(f, f))
        for f in ModelSpec.__struct_fields__
        if f not in _SPEC_IDENTITY
    }


class EngineConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The server side of each model's engine: admission, deadlines, supervision."""

    max_queue_size: int = _default("max_queue_size")
    max_queue_tokens: int = _default("max_queue_tokens")
    request_timeout_s: float = _default("request_timeout_s")
    worker_load_timeout_s: float = _default("worker_load_timeout_s")
    worker_hang_timeout_s: float = _default("worker_hang_timeout_s")
    max_consecutive_crashes: int = _default("max_consecutive_crashes")
    restart_backoff_s: float = _default("restart_backoff_s")
    restart_backoff_max_s: float = _default("restart_backoff_max_s")
    #: the workers log like the server (--log_level / --log_format)
    log_level: str = _default("log_level")
    log_format: str = _default("log_format")


def engine_config(settings: Settings) -> EngineConfig:
    """The engine configuration of ``settings`` (every field copied by name)."""
    return EngineConfig(**{f: getattr(settings, f) for f in EngineConfig.__struct_fields__})

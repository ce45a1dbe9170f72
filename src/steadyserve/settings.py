"""Typed, validated settings: flags > environment > defaults, built once before any port opens.

``ENV_VARS`` is the one table of environment variables the server reads. Every field has a
description (shown by ``steadyserve serve --help``) and bounds. Unset optional values take their
documented defaults (``PROTOCOL_VERSION`` unset or empty → ``v1``); an invalid value stops start-up
with one line naming the setting, the bad value and the valid values (:class:`ConfigError`).

This module imports nothing else from the package.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

DEFAULT_MODEL_DIR = "/mnt/models"
DEMO_MODEL_NAME = "steadyserve-demo"

Task = Literal[
    "text_generation",
    "text2text_generation",
    "fill_mask",
    "sequence_classification",
    "token_classification",
    "text_embedding",
]


class ConfigError(Exception):
    """A setting is invalid; the message is one line naming it and what is valid."""


class Settings(BaseModel):
    """Every setting of the server. Field names are the flag names (``--http_port``)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False
    )

    # ---- network ---------------------------------------------------------------------------
    host: str = Field("0.0.0.0", description="Address the HTTP and gRPC servers bind.")
    http_port: int = Field(8080, ge=1, le=65535, description="HTTP port (V1, V2, OpenAI).")
    grpc_port: int = Field(8081, ge=1, le=65535, description="gRPC port (V2 gRPC).")
    protocol_version: Literal["v1", "v2", "grpc-v2"] = Field(
        "v1",
        description="KServe protocol version. REST always serves V1, V2 and OpenAI; "
        "grpc-v2 also starts the gRPC server. Unset or empty means v1.",
    )
    enable_grpc: bool = Field(False, description="Start the V2 gRPC server on --grpc_port.")

    # ---- model ---------------------------------------------------------------------------
    model_name: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Name the model is served under (default: the model directory's name, "
        f"or '{DEMO_MODEL_NAME}' for the built-in demo).",
    )
    model_dir: str | None = Field(
        None,
        description=f"Local model directory (KServe layout). Default: STORAGE_URI if set, else "
        f"{DEFAULT_MODEL_DIR}; with neither present, the built-in demo model is served.",
    )
    storage_uri: str | None = Field(
        None, description="Where KServe's storage initializer put the model: a path or file:// URI."
    )
    model_id: str | None = Field(None, description="Hugging Face hub id to load instead of a dir.")
    model_revision: str | None = Field(
        None, max_length=256, description="Hub revision (branch, tag or commit) of --model_id."
    )
    tokenizer_revision: str | None = Field(
        None,
        max_length=256,
        description="Hub revision of the tokenizer (default: --model_revision).",
    )
    backend: Literal["auto", "huggingface", "vllm"] = Field(
        "auto",
        description="KServe's huggingfaceserver backend: vllm serves decoder-only text "
        "generation with vLLM's engine inside steadyserve's worker; huggingface uses steadyserve's "
        "own engine (transformers + continuous batching); auto picks vLLM when it is installed "
        "and supports the model's architecture, else huggingface (the reason is logged).",
    )
    model_class: str | None = Field(
        None,
        description="Custom model: 'path/to/file.py:ClassName' or 'package.module:ClassName'.",
    )
    model_repository: str | None = Field(
        None, description="Directory with one sub-directory per model; serves all of them."
    )
    model_archive: str | None = Field(
        None,
        description="TorchServe model archive (.mar file or unpacked archive dir) to serve; "
        "its handler runs unmodified (pip install steadyserve[torchserve]).",
    )
    ts_config: str | None = Field(
        None,
        description="TorchServe config.properties: inference_address, model_store, "
        "load_models, default_response_timeout, models={...} (see docs/torchserve.md).",
    )
    task: Task | None = Field(
        None, description="Hugging Face task; inferred from config.architectures when unset."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype (auto: float32 on CPU, the checkpoint's on GPU)."
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    trust_remote_code: bool = Field(False, description="Allow model code from the model dir/hub.")
    max_model_len: int | None = Field(
        None, ge=1, description="Cap on prompt + generated tokens (default: the model's limit)."
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="vLLM backend: fraction of GPU memory vLLM may use."
    )
    tensor_parallel_size: int = Field(
        1, ge=1, le=64, description="vLLM backend: GPUs to shard the model over."
    )
    enforce_eager: bool = Field(
        False, description="vLLM backend: run eagerly (no CUDA graphs / torch.compile)."
    )
    vllm_engine_core: Literal["process", "worker"] = Field(
        "process",
        description="vLLM backend: run vLLM's engine core in its own process, a child of the "
        "model worker (vLLM's default), or inside the worker (one process less: faster start, "
        "less memory, more throughput on a few CPU cores; a kill of the worker is then the "
        "engine core's too).",
    )
    kv_cache_space_gb: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="vLLM backend on CPU: KV-cache space in GiB (VLLM_CPU_KVCACHE_SPACE; "
        "default: vLLM's own).",
    )

    # ---- engine --------------------------------------------------------------------------
    max_batch_size: int = Field(32, ge=1, le=4096, description="Largest predict/infer batch.")
    max_batch_wait_ms: float = Field(
        5.0, ge=0, le=10_000, description="Longest a request waits for a batch to fill (ms)."
    )
    max_num_seqs: int = Field(
        32, ge=1, le=4096, description="Most sequences in the running generation batch."
    )
    max_queue_size: int = Field(
        256,
        ge=1,
        le=1_000_000,
        description="Requests admitted per model (in flight + queued); beyond it: 429.",
    )
    max_queue_tokens: int = Field(
        1_048_576,
        ge=1,
        description="Prompt + max_tokens admitted per model for generation; beyond it: 429.",
    )
    request_timeout_s: float = Field(
        600.0,
        gt=0,
        description="Default request deadline (504 past it); a request may ask for "
        "less with the X-Request-Timeout header (seconds) or a gRPC deadline.",
    )
    worker_load_timeout_s: float = Field(
        900.0, gt=0, description="Longest a worker may take to load its model."
    )
    worker_hang_timeout_s: float = Field(
        60.0,
        gt=0,
        description="A worker silent this long (no progress, no heartbeat) is killed "
        "and restarted; its requests fail with 503. A predict batch of N rows may run N times "
        "this long.",
    )
    max_consecutive_crashes: int = Field(
        5, ge=1, description="After this many worker crashes in a row, liveness fails."
    )
    restart_backoff_s: float = Field(0.5, ge=0, description="First restart delay (doubles).")
    restart_backoff_max_s: float = Field(30.0, ge=0, description="Longest restart delay.")
    graceful_shutdown_s: float = Field(
        30.0, ge=0, description="On SIGTERM, how long in-flight requests may finish."
    )
    worker_memory_limit_mb: int | None = Field(
        None, ge=64, description="Address-space limit of each worker (MemoryError past it)."
    )
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads per worker.")
    prefill_delay_steps: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Generation: how many decode steps an arrival may wait so that arrivals "
        "share one prefill pass (time to first token grows by at most that many steps; "
        "default: 4 on CUDA, 0 on CPU).",
    )
    prefill_hold_ms: float | None = Field(
        None,
        ge=0,
        le=10_000,
        description="Generation: while the next requests of clients whose sequences just "
        "finished are on their way, how long an arrival may be held so that they share one "
        "prefill pass (0: never; default 50).",
    )
    compile: bool = Field(
        False,
        description="torch.compile the generation decode step over fixed shapes (power-of-two "
        "row buckets, compiled at load; CUDA graphs on GPU); a compile failure falls back to "
        "eager mode with a warning.",
    )

    # ---- security and limits -------------------------------------------------------------
    api_key: SecretStr | None = Field(
        None, description="API key(s), comma-separated. Env STEADYSERVE_API_KEY only (no flag)."
    )
    api_key_file: str | None = Field(None, description="File with API keys, one per line.")
    auth_health: bool = Field(False, description="Also require the API key for health/metrics.")
    max_request_body_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Largest request body (413 past it)."
    )
    request_read_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="A connection closes when a request's line and headers take longer than "
        "this to arrive (one that sends nothing included), or its body stalls this long.",
    )
    grpc_max_message_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest gRPC message (RESOURCE_EXHAUSTED past it)."
    )
    ssl_certfile: str | None = Field(None, description="TLS certificate (HTTP and gRPC).")
    ssl_keyfile: str | None = Field(None, description="TLS private key (HTTP and gRPC).")
    cors_origins: list[str] = Field(
        default_factory=list, description="Allowed CORS origins, comma-separated (off if empty)."
    )
    enable_docs_url: bool = Field(
        True,
        description="Serve interactive API docs at /docs and the OpenAPI schema (request and "
        "response bodies of V1, V2 and OpenAI) at /openapi.json; false turns both off.",
    )
    allow_request_chat_template: bool = Field(
        False, description="Let chat requests supply their own chat_template (sandboxed)."
    )

    # ---- logging -------------------------------------------------------------------------
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )
    log_format: Literal["text", "json"] = Field("text", description="Log format.")
    log_prompts: bool = Field(
        False,
        description="Log each OpenAI request's prompt, cut to 500 characters, with its "
        "request id. Off by default: prompts are not logged.",
    )

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype_aliases(cls, value: Any) -> Any:
        # KServe's huggingfaceserver also accepts torch's aliases
        return CHOICE_ALIASES["dtype"].get(value, value) if isinstance(value, str) else value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
            raise ValueError("must be one of auto, cpu, cuda, cuda:N, mps")
        return value

    @field_validator("model_class")
    @classmethod
    def _check_model_class(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[^:]+:[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError("must look like 'path/to/file.py:ClassName' or 'module:ClassName'")
        return value

    @field_validator("model_name")
    @classmethod
    def _check_model_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", value):
            raise ValueError("must be letters, digits, '.', '_' or '-' (starting alphanumeric)")
        return value

    # ---- derived -------------------------------------------------------------------------
    @property
    def grpc_enabled(self) -> bool:
        return self.enable_grpc or self.protocol_version == "grpc-v2"

    def api_keys(self) -> list[str]:
        """Every accepted API key (empty: authentication off)."""
        keys: list[str] = []
        if self.api_key is not None:
            keys += [k.strip() for k in self.api_key.get_secret_value().split(",") if k.strip()]
        if self.api_key_file:
            text = Path(self.api_key_file).read_text(encoding="utf-8")
            keys += [line.strip() for line in text.splitlines() if line.strip()]
        return keys

    def redacted(self) -> dict[str, Any]:
        """The effective configuration for the start-up log, secrets hidden."""
        data = self.model_dump()
        data["api_key"] = "***" if self.api_key is not None else None
        return data


#: The one table of environment variables: field → variable. Flags win over these.
ENV_VARS: dict[str, str] = {
    "host": "STEADYSERVE_HOST",
    "http_port": "HTTP_PORT",
    "grpc_port": "GRPC_PORT",
    "protocol_version": "PROTOCOL_VERSION",
    "enable_grpc": "ENABLE_GRPC",
    "model_name": "MODEL_NAME",
    "storage_uri": "STORAGE_URI",
    "model_id": "MODEL_ID",
    "model_class": "MODEL_CLASS",
    "model_repository": "MODEL_REPOSITORY",
    "model_archive": "MODEL_ARCHIVE",
    "task": "TASK",
    "dtype": "DTYPE",
    "device": "DEVICE",
    "max_model_len": "MAX_MODEL_LEN",
    "max_batch_size": "MAX_BATCH_SIZE",
    "max_batch_wait_ms": "MAX_BATCH_WAIT_MS",
    "max_num_seqs": "MAX_NUM_SEQS",
    "max_queue_size": "MAX_QUEUE_SIZE",
    "request_timeout_s": "REQUEST_TIMEOUT_S",
    "worker_hang_timeout_s": "WORKER_HANG_TIMEOUT_S",
    "api_key": "STEADYSERVE_API_KEY",
    "api_key_file": "STEADYSERVE_API_KEY_FILE",
    "log_level": "LOG_LEVEL",
    "log_format": "LOG_FORMAT",
}

#: Every other setting is read from ``STEADYSERVE_<FIELD>`` (``STEADYSERVE_MAX_QUEUE_TOKENS``):
#: each flag has exactly one environment variable, shown by ``--help``.
for _field in Settings.model_fields:
    ENV_VARS.setdefault(_field, f"STEADYSERVE_{_field.upper()}")
del _field

#: Settings that are never flags (secrets).
ENV_ONLY = frozenset({"api_key"})

#: Other spellings a setting accepts besides its choices (KServe's huggingfaceserver takes
#: torch's dtype aliases); error messages list them with the choices.
CHOICE_ALIASES: dict[str, dict[str, str]] = {"dtype": {"float": "float32", "half": "float16"}}


def accepted_values(field: str) -> tuple[str, ...] | None:
    """Every value a choice setting accepts (its choices, then their aliases), or None."""
    choices = _literal_choices(field)
    if choices is None:
        return None
    return choices + tuple(CHOICE_ALIASES.get(field, {}))


def _literal_choices(field: str) -> tuple[str, ...] | None:
    annotation = Settings.model_fields[field].annotation
    candidates = [annotation, *get_args(annotation)]
    for candidate in candidates:
        if get_origin(candidate) is Literal:
            return tuple(str(a) for a in get_args(candidate))
    return None


def _source_name(field: str, from_env: set[str]) -> str:
    if field in from_env:
        return ENV_VARS[field]
    return f"--{field}"


def build_settings(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Merge flags > env > defaults and validate. Raises :class:`ConfigError` (one line)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    from_env: set[str] = set()
    for field, var in ENV_VARS.items():
        raw = environ.get(var)
        if raw is None or raw.strip() == "":
            continue  # unset or empty → documented default
        values[field] = raw.strip()
        from_env.add(field)
    for field, value in flags.items():
        if value is not None:
            values[field] = value
            from_env.discard(field)
    for field in ("cors_origins",):
        if isinstance(values.get(field), str):
            values[field] = [v.strip() for v in values[field].split(",") if v.strip()]
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        name = _source_name(field, from_env) if field in Settings.model_fields else field
        bad = values.get(field, err.get("input"))
        shown = "***" if field == "api_key" else repr(bad)
        choices = accepted_values(field) if field in Settings.model_fields else None
        if choices:
            raise ConfigError(
                f"invalid {name}={shown}: valid values are {', '.join(choices)}"
            ) from None
        raise ConfigError(f"invalid {name}={shown}: {err['msg']}") from None
    _check_paths(settings)
    return settings


def _check_paths(settings: Settings) -> None:
    for field in ("api_key_file", "ssl_certfile", "ssl_keyfile"):
        path = getattr(settings, field)
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(f"invalid --{field}={path!r}: file does not exist or is unreadable")
    if settings.restart_backoff_max_s < settings.restart_backoff_s:
        raise ConfigError(
            f"invalid --restart_backoff_max_s={settings.restart_backoff_max_s!r}: must be at "
            f"least --restart_backoff_s={settings.restart_backoff_s!r}"
        )
    if (settings.ssl_certfile is None) != (settings.ssl_keyfile is None):
        raise ConfigError("--ssl_certfile and --ssl_keyfile must be given together")
    if settings.model_repository is not None and not os.path.isdir(settings.model_repository):
        raise ConfigError(
            f"invalid --model_repository={settings.model_repository!r}: not a readable directory"
        )


def check_ports(settings: Settings) -> None:
    """The HTTP (and gRPC) port can be bound: a port in use stops start-up with one line
    before any model worker is spawned, instead of after the model loaded."""
    ports = [("--http_port", settings.http_port)]
    if settings.grpc_enabled:
        ports.append(("--grpc_port", settings.grpc_port))
    if settings.grpc_enabled and settings.grpc_port == settings.http_port:
        raise ConfigError(f"invalid --grpc_port={settings.grpc_port}: the same as --http_port")
    for flag, port in ports:
        try:
            infos = socket.getaddrinfo(
                settings.host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except OSError as exc:
            raise ConfigError(f"invalid --host={settings.host!r}: {exc}") from None
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise ConfigError(
                    f"invalid {flag}={port}: cannot listen on {settings.host}:{port} "
                    f"({exc.strerror or exc})"
                ) from None


def storage_path(uri: str) -> str:
    """A local path from STORAGE_URI (a path or file:// URI). Remote URIs are KServe's storage
    initializer's job; we refuse them with a clear message."""
    if uri.startswith("file://"):
        return uri[len("file://") :]
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise ConfigError(
            f"invalid STORAGE_URI={uri!r}: scheme {scheme}:// is not downloaded by steadyserve; "
            "use KServe's storage initializer (it mounts the model at /mnt/models)"
        )
    return uri


def resolve_model_dir(settings: Settings) -> str | None:
    """The model directory to serve, or ``None`` for the built-in demo.

    ``--model_dir`` > ``STORAGE_URI`` > ``/mnt/models`` if it exists > demo (only when no other
    model source - ``--model_id``, ``--model_class``, ``--model_repository`` - was given).
    Raises :class:`ConfigError` naming the path when an explicit directory is unusable.
    """
    if settings.model_dir is not None:
        path, name = settings.model_dir, "--model_dir"
    elif settings.storage_uri is not None:
        uri = settings.storage_uri
        if "://" in uri and not uri.startswith("file://") and os.path.isdir(DEFAULT_MODEL_DIR):
            # KServe keeps the remote URI in STORAGE_URI; its storage initializer put it here
            return DEFAULT_MODEL_DIR
        path, name = storage_path(uri), "STORAGE_URI"
    elif os.path.isdir(DEFAULT_MODEL_DIR):
        return DEFAULT_MODEL_DIR
    else:
        return None
    if not os.path.isdir(path) or not os.access(path, os.R_OK | os.X_OK):
        raise ConfigError(f"invalid {name}={path!r}: not a readable directory")
    return path

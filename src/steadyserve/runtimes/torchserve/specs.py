"""Model specs for TorchServe archives: ``--model_archive``, ``.mar`` files (or unpacked
archives) in ``--model_repository`` / ``model_store``, and ``POST /models?url=``.

Batching follows TorchServe: a model's ``batchSize`` / ``maxBatchDelay`` come from
``config.properties`` (``models=``), else its ``model-config.yaml``, else TorchServe's defaults
(batch size 1, 100 ms): a handler written for one request at a time is never handed eight.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import msgspec

from steadyserve.config import ModelSpec
from steadyserve.runtimes.torchserve.archive import (
    MANIFEST,
    ArchiveError,
    open_archive,
    read_model_config,
)
from steadyserve.runtimes.torchserve.config import ModelOverrides
from steadyserve.runtimes.torchserve.handler import MODEL_CLASS

log = logging.getLogger("steadyserve.torchserve")

TS_DEFAULT_BATCH_SIZE = 1
TS_DEFAULT_BATCH_DELAY_MS = 100.0
TS_DEFAULT_RESPONSE_TIMEOUT_S = 120.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


def is_archive(path: str) -> bool:
    """A ``.mar`` file or an unpacked archive directory."""
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, MANIFEST))
    return path.endswith(".mar") and os.path.isfile(path)


def archive_spec(
    path: str,
    common: dict[str, Any],
    name: str | None = None,
    overrides: dict[str, ModelOverrides] | None = None,
) -> ModelSpec:
    """The spec of one archive (unpacked on the way). Raises :class:`ArchiveError`."""
    model_dir, manifest = open_archive(path)
    name = name or manifest.model_name
    if not _NAME.fullmatch(name):
        raise ArchiveError(f"{path}: model name {name[:100]!r} is not a valid model name")
    yaml_config = read_model_config(model_dir, manifest)
    o = (overrides or {}).get(name) or ModelOverrides()

    def pick(value: Any, key: str, default: float) -> float:
        chosen = value if value is not None else yaml_config.get(key, default)
        try:
            number = float(chosen)
        except (TypeError, ValueError):
            raise ArchiveError(
                f"{path}: model-config.yaml {key}={chosen!r} is not a number"
            ) from None
        if number <= 0:
            raise ArchiveError(f"{path}: model-config.yaml {key}={chosen!r} must be positive")
        return number

    batch_size = int(pick(o.batch_size, "batchSize", TS_DEFAULT_BATCH_SIZE))
    delay_ms = pick(o.max_batch_delay_ms, "maxBatchDelay", TS_DEFAULT_BATCH_DELAY_MS)
    timeout_s = pick(o.response_timeout_s, "responseTimeout", TS_DEFAULT_RESPONSE_TIMEOUT_S)
    base = {k: v for k, v in common.items() if k not in ("max_batch_size", "max_batch_wait_ms")}
    return ModelSpec(
        name=name,
        runtime="custom",
        model_class=MODEL_CLASS,
        model_dir=model_dir,
        max_batch_size=batch_size,
        max_batch_wait_ms=delay_ms,
        options={
            "handler": manifest.handler,
            "version": manifest.model_version,
            "archive": os.path.abspath(path),
            "batch_size": batch_size,
            "response_timeout_s": timeout_s,
            "torchserve": True,
            "device": common.get("device", "auto"),
        },
        **base,
    )


def store_entries(root: str) -> dict[str, str]:
    """Model name → archive path for every ``.mar`` file (name: the file's stem) and unpacked
    archive directory in ``root``."""
    out: dict[str, str] = {}
    for entry in sorted(os.listdir(root)):
        path = os.path.join(root, entry)
        if entry.startswith(".") or not is_archive(path):
            continue
        name = entry[: -len(".mar")] if entry.endswith(".mar") else entry
        if _NAME.fullmatch(name) and name not in out:
            out[name] = path
    return out


def scan_store(
    root: str,
    common: dict[str, Any],
    load_models: list[str] | None = None,
    overrides: dict[str, ModelOverrides] | None = None,
) -> list[ModelSpec]:
    """Specs for the archives of a model store (``load_models``: TorchServe's list, None =
    all). An archive that cannot be opened stops start-up (:class:`ConfigError`)."""
    entries = store_entries(root)
    chosen: list[tuple[str, str]] = []
    if load_models is None:
        chosen = [(name, path) for name, path in entries.items()]
    else:
        for item in load_models:
            alias, _, file = item.rpartition("=")
            path = os.path.join(root, file)
            if not is_archive(path):
                from steadyserve.settings import ConfigError

                raise ConfigError(f"invalid load_models entry {item!r}: no archive {path}")
            stem = file[: -len(".mar")] if file.endswith(".mar") else file
            chosen.append((alias or stem, path))
    specs = []
    for name, path in chosen:
        try:
            specs.append(archive_spec(path, common, name, overrides))
        except ArchiveError as exc:
            from steadyserve.settings import ConfigError

            raise ConfigError(f"invalid model archive {path}: {exc}") from None
    return specs


def with_batching(spec: ModelSpec, batch_size: int | None, delay_ms: float | None) -> ModelSpec:
    """``POST /models?batch_size=&max_batch_delay=`` on top of an archive's spec."""
    if batch_size is None and delay_ms is None:
        return spec
    options = dict(spec.options)
    if batch_size is not None:
        options["batch_size"] = batch_size
    return msgspec.structs.replace(
        spec,
        max_batch_size=batch_size or spec.max_batch_size,
        max_batch_wait_ms=delay_ms if delay_ms is not None else spec.max_batch_wait_ms,
        options=options,
    )

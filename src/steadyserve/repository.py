"""A model repository directory (one sub-directory per model) and the model repository
extension on top of the registry: index, load, unload.

Both transports (REST ``/v2/repository/...`` and the gRPC ``Repository*`` RPCs) call
:class:`ModelRepository`, so they answer the same states and the same errors.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from typing import TYPE_CHECKING, Any

from steadyserve.config import ModelSpec, model_options
from steadyserve.engine.supervisor import State
from steadyserve.errors import InvalidInput, ModelError, ServiceUnavailable
from steadyserve.runtimes.torchserve.archive import ArchiveError
from steadyserve.settings import ConfigError

if TYPE_CHECKING:
    from steadyserve.registry import Registry
    from steadyserve.settings import Settings

log = logging.getLogger("steadyserve.repository")

#: Longest a load request waits for the model to become ready (then 503: still loading).
LOAD_WAIT_MAX_S = 120.0
#: Longest an unload lets in-flight requests finish before failing them with 503.
UNLOAD_GRACE_MAX_S = 10.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


def spec_for_dir(name: str, path: str, common: dict[str, Any]) -> ModelSpec:
    """A Hugging Face model (config.json), a custom model (model.py with a ``Model``
    subclass named in ``steadyserve.txt``, default class ``Model``), or a TorchServe archive
    (a ``.mar`` file, or a directory with ``MAR-INF/MANIFEST.json``)."""
    from steadyserve.runtimes.torchserve.specs import archive_spec, is_archive

    if is_archive(path):
        return archive_spec(path, common, name)
    if os.path.isfile(os.path.join(path, "config.json")):
        return ModelSpec(name=name, runtime="huggingface", model_dir=path, **common)
    custom = os.path.join(path, "model.py")
    if os.path.isfile(custom):
        class_name = "Model"
        marker = os.path.join(path, "steadyserve.txt")
        if os.path.isfile(marker):
            with open(marker, encoding="utf-8") as fh:
                class_name = fh.read().strip() or class_name
        return ModelSpec(
            name=name,
            runtime="custom",
            model_class=f"{custom}:{class_name}",
            model_dir=path,
            **common,
        )
    return ModelSpec(name=name, runtime="huggingface", model_dir=path, **common)


def scan_repository(root: str, common: dict[str, Any]) -> list[ModelSpec]:
    """A spec per sub-directory whose name is a valid model name (others are skipped with a
    warning: a model must be addressable by every protocol)."""
    specs = []
    for entry in sorted(os.listdir(root)):
        path = os.path.join(root, entry)
        if entry.endswith(".mar") and os.path.isfile(path):
            entry = entry[: -len(".mar")]  # a TorchServe archive: served under its stem
        elif not os.path.isdir(path) or entry.startswith("."):
            continue
        if not _NAME.fullmatch(entry):
            log.warning(
                "skipping %r in the model repository: not a valid model name "
                "(letters, digits, '.', '_', '-')",
                entry,
            )
            continue
        try:
            specs.append(spec_for_dir(entry, path, common))
        except ArchiveError as exc:
            raise ConfigError(f"invalid model archive {path}: {exc}") from None
    return specs


def check_load_parameters(names: list[str]) -> None:
    """Loads come from the repository directory only: a model config or files sent with the
    load request (Triton's override) are refused, never silently ignored."""
    for name in names:
        if name == "config" or name.startswith("file:"):
            raise InvalidInput(
                f"load parameter {name[:60]!r} is not supported: models load from the "
                "repository directory"
            )


class ModelRepository:
    """The model repository extension: what is there, load it, unload it."""

    def __init__(self, registry: Registry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        self.root = settings.model_repository
        self.options = model_options(settings)
        self.load_wait_s = min(settings.worker_load_timeout_s, LOAD_WAIT_MAX_S)
        self.unload_grace_s = min(settings.graceful_shutdown_s, UNLOAD_GRACE_MAX_S)

    def _on_disk(self) -> list[str]:
        if self.root is None or not os.path.isdir(self.root):
            return []
        found = []
        for entry in sorted(os.listdir(self.root)):
            path = os.path.join(self.root, entry)
            if entry.endswith(".mar") and os.path.isfile(path):
                entry = entry[: -len(".mar")]  # a TorchServe archive
            elif not os.path.isdir(path):
                continue
            if _NAME.fullmatch(entry):
                found.append(entry)
        return found

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model the server knows or the repository holds, with its state:
        READY, LOADING or UNAVAILABLE (and why)."""
        names = set(self.registry.names()) | set(self.registry.known())
        unloaded = self.registry.unloaded()
        names |= set(unloaded) | set(self._on_disk())
        out: list[dict[str, str]] = []
        for name in sorted(names):
            state, reason = self._state(name, unloaded)
            if ready_only and state != "READY":
                continue
            out.append({"name": name, "version": "", "state": state, "reason": reason})
        return out

    def _state(self, name: str, unloaded: dict[str, str]) -> tuple[str, str]:
        if not self.registry.has(name):
            return "UNAVAILABLE", unloaded.get(name, "not loaded")
        engine = self.registry.get(name)
        if engine.ready:
            return "READY", ""
        if engine.state in (State.STARTING, State.RESTARTING):
            return "LOADING", engine.last_error or ""
        return "UNAVAILABLE", engine.last_error or engine.state

    def _spec(self, name: str) -> ModelSpec:
        if not _NAME.fullmatch(name) or name in (".", ".."):
            raise InvalidInput(f"invalid model name {name[:100]!r}")
        if self.root is not None:
            for path in (os.path.join(self.root, name), os.path.join(self.root, f"{name}.mar")):
                if os.path.isdir(path) or (path.endswith(".mar") and os.path.isfile(path)):
                    try:
                        spec = spec_for_dir(name, path, self.options)
                    except ArchiveError as exc:
                        raise InvalidInput(f"model {name}: {exc}") from None
                    from steadyserve.runtimes.vllm.select import stamp_backend

                    return stamp_backend(self.settings, spec)  # --backend, as for the CLI's
        return self.registry.spec_for(name)

    async def load(self, name: str) -> None:
        """Load ``name`` (from the repository directory, or the spec it was unloaded with) and
        wait until it is ready. 500 with the reason when the model's own load fails (it raised:
        retrying would fail the same way). A worker that dies while loading (killed, OOM) is
        restarted by its supervisor like any crash, and the load goes on; after
        ``max_consecutive_crashes`` of those the model is given up: 503 with the reason. 503 too
        when it is still loading after the bounded wait (the load goes on; poll the index)."""
        if self.registry.has(name):
            engine = self.registry.get(name)
        else:
            engine = await self.registry.load(self._spec(name))
        deadline = time.monotonic() + self.load_wait_s
        while not engine.ready:
            health = engine.health()
            reason = engine.last_error or ""
            if engine.info is None and health.load_failed:
                if self.registry.has(name) and self.registry.get(name) is engine:
                    await self.registry.unload(name, 0.0, reason=reason)
                raise ModelError(f"model {name} failed to load: {reason}")
            if not self.registry.has(name) or self.registry.get(name) is not engine:
                why = self.registry.unloaded().get(name, "it was unloaded while loading")
                raise ServiceUnavailable(f"model {name} did not load: {why}", retry_after=1)
            if time.monotonic() > deadline:
                raise ServiceUnavailable(
                    f"model {name} is still loading after {self.load_wait_s:.0f}s",
                    retry_after=5,
                )
            await asyncio.sleep(0.05)

    async def unload(self, name: str) -> None:
        """Unload ``name``: gone from every listing at once; in-flight requests get a short
        grace, then 503; the worker stops. 404 when it is not loaded."""
        await self.registry.unload(name, self.unload_grace_s)

"""Model name → engine. Load/unload, readiness of the server as a whole."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from steadyserve.config import EngineConfig, ModelSpec
from steadyserve.engine.client import WorkerClient
from steadyserve.errors import InvalidInput, ModelNotFound

log = logging.getLogger("steadyserve.registry")


class Registry:
    def __init__(
        self,
        config: EngineConfig,
        specs: Iterable[ModelSpec] = (),
        give_up_unloadable: bool = False,
    ) -> None:
        """``give_up_unloadable`` (a model repository): a model that fails to load
        ``max_consecutive_crashes`` times in a row, never having loaded, is taken out of the
        server (listed UNAVAILABLE with the reason; a repository ``load`` retries it) rather
        than keeping readiness down and failing liveness for every other model. With one model
        it stays in, so liveness fails and Kubernetes shows the crash loop."""
        self.config = config
        self.give_up_unloadable = give_up_unloadable
        self._engines: dict[str, WorkerClient] = {}
        #: models that *should* be loaded (server readiness waits for all of them).
        self._known: dict[str, ModelSpec] = {}
        self.draining = False
        for spec in specs:
            self._known[spec.name] = spec
        #: models unloaded (or that failed to load) → (spec, reason); ``load`` can bring them back.
        self._unloaded: dict[str, tuple[ModelSpec, str]] = {}
        #: hooks (metrics): called with each engine client as it is created.
        self.on_engine: list[Callable[[WorkerClient], None]] = []

    def names(self) -> list[str]:
        return sorted(self._engines)

    def engines(self) -> list[WorkerClient]:
        return [self._engines[n] for n in sorted(self._engines)]

    def known(self) -> dict[str, ModelSpec]:
        return dict(self._known)

    def get(self, name: str) -> WorkerClient:
        engine = self._engines.get(name)
        if engine is None:
            raise ModelNotFound(f"model '{name[:200]}' is not loaded")
        return engine

    def has(self, name: str) -> bool:
        return name in self._engines

    @property
    def ready(self) -> bool:
        """Server readiness: not draining and every model that should be loaded is ready."""
        if self.draining or not self._engines:
            return False
        return all(e.ready for e in self._engines.values())

    @property
    def live(self) -> bool:
        return all(e.live for e in self._engines.values())

    async def start_all(self) -> None:
        for spec in self._known.values():
            await self.load(spec)

    async def load(self, spec: ModelSpec) -> WorkerClient:
        if spec.name in self._engines:
            return self._engines[spec.name]
        engine = WorkerClient(spec, self.config)
        if self.give_up_unloadable:
            engine.on_give_up = lambda reason: self._give_up(engine, reason)
        for hook in self.on_engine:
            hook(engine)
        self._engines[spec.name] = engine
        self._known[spec.name] = spec
        self._unloaded.pop(spec.name, None)
        await engine.start()
        return engine

    async def unload(self, name: str, grace_s: float = 0.0, reason: str = "unloaded") -> None:
        """Remove the model from every listing at once, let its in-flight requests finish for up
        to ``grace_s`` (the rest fail with 503), stop its worker. ``reason`` is what the
        repository index shows for it afterwards."""
        engine = self._engines.pop(name, None)
        if engine is None:
            raise ModelNotFound(f"model '{name[:200]}' is not loaded")
        spec = self._known.pop(name, None)
        self._unloaded[name] = (spec or engine.spec, reason)
        await engine.stop(grace_s)

    def _give_up(self, engine: WorkerClient, reason: str) -> None:
        """Called by the engine's own supervisor (which then stops): out of every listing."""
        if self._engines.get(engine.name) is engine:
            del self._engines[engine.name]
            self._known.pop(engine.name, None)
            self._unloaded[engine.name] = (engine.spec, reason)

    def unloaded(self) -> dict[str, str]:
        """Models that were unloaded or failed to load: name → reason."""
        return {name: reason for name, (_, reason) in self._unloaded.items()}

    def spec_for(self, name: str) -> ModelSpec:
        spec = self._known.get(name)
        if spec is None and name in self._unloaded:
            spec = self._unloaded[name][0]
        if spec is None:
            raise ModelNotFound(f"model '{name[:200]}' is not in the repository")
        return spec

    def add_known(self, spec: ModelSpec) -> None:
        if spec.name in self._known and spec.name in self._engines:
            raise InvalidInput(f"model '{spec.name}' is already loaded")
        self._known[spec.name] = spec

    async def stop_all(self, grace_s: float = 0.0) -> None:
        await asyncio.gather(*(e.stop(grace_s) for e in self._engines.values()))

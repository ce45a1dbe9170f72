"""The custom-model API: subclass :class:`Model`, implement ``load`` and ``predict``.

A recipe (see ``examples/custom_model.py``)::

    class Doubler(steadyserve.Model):
        inputs = [TensorSpec("x", "FP32", [-1])]
        outputs = [TensorSpec("y", "FP32", [-1])]

        def load(self):               # read weights from self.model_dir
            self.factor = 2.0

        def predict(self, instances): # a *batch*: one output per instance, same order
            return [x * self.factor for x in instances]

Served with ``steadyserve serve --model_class path/to/file.py:Doubler --model_name doubler``.

Every hook runs in the model's worker process, never on the server's event loop; any of them may
be ``async def``. ``predict`` receives a batch: concurrent V1 ``:predict`` requests (and V2
``/infer`` requests, whose input tensors are split into rows along the first axis) are merged
into one call by the dynamic batcher, so write it for a list. An exception fails only the request
that caused it: a batch that raises is re-run one request at a time to find the culprit.

Optional hooks: ``preprocess`` / ``postprocess`` (around ``predict``), ``infer`` (take over the
V2 tensor path entirely), ``embed`` (OpenAI embeddings), ``generate`` (a per-request iterator of
:class:`~steadyserve.types.TokenDelta` for OpenAI completions) or ``generation_engine`` (a
continuous-batching engine, as the Hugging Face runtime provides).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from steadyserve.types import (
    Capability,
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    InferRequest,
    InferResponse,
    ModelInfo,
    TensorSpec,
    TokenDelta,
)


class BatchGenerator(Protocol):
    """Iteration-level (continuous) batching generator, driven by the worker's scheduler.

    The scheduler calls ``add`` for new sequences and ``abort`` for cancelled ones *between*
    steps, and ``step`` while ``has_work()``; each ``step`` runs one decoding iteration for every
    running sequence and returns the new tokens per request id. A sequence whose delta carries a
    ``finish_reason`` is done and must already have freed its slot. A per-sequence failure is
    returned as an exception paired with its id (only that request fails). If ``step`` itself
    raises, every running sequence fails and the scheduler calls ``reset``.

    A generator may also define ``idle_s() -> float``: how long it would rather wait for more
    arrivals than step (it holds queued requests and has nothing to decode). The scheduler then
    sleeps on its inbox for at most that long, waking at once for the next message. An ``add``
    that takes an ``arrived`` keyword gets the ``time.monotonic()`` at which the request reached
    the worker (it may have waited for a free slot since).
    """

    def add(self, request_id: str, request: GenerateRequest) -> None: ...

    def abort(self, request_id: str) -> None: ...

    def has_work(self) -> bool: ...

    def step(self) -> list[tuple[str, TokenDelta | BaseException]]: ...

    def reset(self) -> None: ...

    def stats(self) -> dict[str, int]: ...


#: the name before the design pass ("engine" now means only the server's engine client); the
#: method that returns one keeps its name (``generation_engine``): it is the custom-model API
GenerationEngine = BatchGenerator


class Model:
    """Base class of every servable model (custom models and the built-in runtimes)."""

    #: V2 metadata of the model's inputs/outputs; V2 requests are checked against it.
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    #: ``False`` to receive one request per ``predict`` call (no dynamic batching).
    batching: bool = True
    platform: str = "steadyserve-python"

    def __init__(self, name: str, model_dir: str | None = None, **options: Any) -> None:
        self.name = name
        self.model_dir = model_dir
        self.options = options
        self.ready = False

    # ---- lifecycle ---------------------------------------------------------------------------
    def load(self) -> Any:
        """Load weights (from ``self.model_dir``). Runs once in the worker before readiness."""
        raise NotImplementedError

    def unload(self) -> Any:
        """Release resources. Called when the worker stops."""
        return None

    # ---- predict path (V1 and, by default, V2) -------------------------------------------------
    def preprocess(self, instances: list[Any]) -> Any:
        return instances

    def predict(self, inputs: Any) -> Any:
        """Return one output per instance, in order. Declare ``predict(self, inputs,
        parameters)`` to also receive the request's ``parameters`` (requests are then batched
        together only when their parameters are equal)."""
        raise NotImplementedError

    def postprocess(self, outputs: Any) -> Any:
        return outputs

    # ---- optional paths ------------------------------------------------------------------------
    def infer(self, request: InferRequest) -> InferResponse:
        """V2 tensors in, tensors out. Override to take over; the default routes through
        ``predict`` row by row (and is dynamically batched)."""
        raise NotImplementedError

    def infer_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """The ``predict`` parameters of a V2 request routed through ``predict`` (its request
        parameters by default). Override to give V2 what its declared outputs need."""
        return parameters

    def embed(self, request: EmbedRequest) -> EmbedResponse:
        raise NotImplementedError

    def generate(self, request: GenerateRequest) -> Iterator[TokenDelta]:
        """Yield token deltas for one request; the last one carries ``finish_reason``."""
        raise NotImplementedError

    def generation_engine(self) -> BatchGenerator | None:
        """A continuous-batching generator, or ``None`` to drive ``generate`` per request."""
        return None

    # ---- introspection -------------------------------------------------------------------------
    def _overrides(self, method: str) -> bool:
        return getattr(type(self), method) is not getattr(Model, method)

    def capabilities(self) -> list[str]:
        """What this model serves; derived from the methods a subclass overrides."""
        caps: list[str] = []
        if self._overrides("predict"):
            caps += [Capability.PREDICT, Capability.INFER]
        elif self._overrides("infer"):
            caps.append(Capability.INFER)
        if self._overrides("embed"):
            caps.append(Capability.EMBED)
        if self._overrides("generate") or self._overrides("generation_engine"):
            caps.append(Capability.GENERATE)
        return caps

    def info(self) -> ModelInfo:
        """Metadata reported to the server after ``load``; override to add tokenizer etc."""
        return ModelInfo(
            name=self.name,
            platform=self.platform,
            inputs=list(self.inputs),
            outputs=list(self.outputs),
            capabilities=self.capabilities(),
        )

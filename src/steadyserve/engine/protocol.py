"""The one interface the transports code against: :class:`EngineClient`.

Everything a route needs of a model - admission and exactly-once completion of its requests,
its metadata, its tokenizer, its counters and its health - goes through this protocol; how the
requests reach the model (a supervised worker process over IPC, today) is the implementation's
business (:class:`steadyserve.engine.client.WorkerClient`). Nothing framework-specific crosses
it. Tests use fakes of it (``tests/unit/test_openai_sequences.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from steadyserve.engine.supervisor import ExitReason, State, WorkerExit
from steadyserve.engine.tokenizer import LoadedTokenizer
from steadyserve.types import (
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    InferRequest,
    InferResponse,
    ModelInfo,
    PredictRequest,
    PredictResponse,
    TokenDelta,
)


@dataclass(frozen=True)
class Health:
    """What readiness, liveness and the repository index say about one model."""

    state: State
    #: serving requests now (loaded, not draining)
    ready: bool
    #: not in a crash loop
    live: bool
    #: why the last worker went away (None once a worker is ready)
    last_exit: WorkerExit | None
    restarts: int

    @property
    def load_failed(self) -> bool:
        """The model's own load raised (retrying would fail the same way)."""
        return self.last_exit is not None and self.last_exit.reason is ExitReason.LOAD_FAILED


class EngineClient(Protocol):
    """One model, as the transports see it."""

    @property
    def name(self) -> str: ...

    @property
    def info(self) -> ModelInfo | None:
        """The model's metadata once it has loaded (kept across restarts)."""

    @property
    def ready(self) -> bool: ...

    def require_ready_info(self) -> ModelInfo:
        """The metadata for edge validation; 503 (with the reason) while not ready."""

    async def predict(
        self, request: PredictRequest, timeout_s: float | None = None
    ) -> PredictResponse: ...

    async def infer(
        self, request: InferRequest, timeout_s: float | None = None
    ) -> InferResponse: ...

    async def embed(
        self, request: EmbedRequest, timeout_s: float | None = None
    ) -> EmbedResponse: ...

    def generate(
        self,
        request: GenerateRequest,
        timeout_s: float | None = None,
        *,
        stream: bool = True,
        detokenize: Sequence[int] | None = None,
        stop: Sequence[str] = (),
    ) -> AsyncIterator[TokenDelta]:
        """Token deltas; the last carries ``finish_reason``. Closing the iterator early aborts
        the sequence. ``stream=False``: the caller wants the whole output only, and is woken
        once, when the sequence ends. ``detokenize`` (prompt ids as context): the deltas'
        ``text`` is decoded by the client (per step, batched). ``stop``: stop strings, matched
        by the client on each step's text (the text is cut before a match, which ends the
        sequence with ``finish_reason="stop"``)."""

    async def tokenizer(self) -> LoadedTokenizer | None:
        """The model's tokenizer (None for models without one), loaded once per worker."""

    def stats(self) -> dict[str, Any]: ...

    def health(self) -> Health: ...

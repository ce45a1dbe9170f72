"""The engine client: one model, as the transports see it (:class:`EngineClient`).

:class:`WorkerClient` lives in the server process (asyncio). It admits requests (bounded queue
→ 429; not ready → 503), sends them to the model's worker, and completes each *exactly once*:
with a result, an error, a cancellation (the caller's task was cancelled → ``Abort`` to the
worker), a deadline (504, ``Abort``) or a worker failure (503). It *owns* a
:class:`~steadyserve.engine.supervisor.WorkerSupervisor` (the worker's process lifecycle:
restart, hang, readiness) and receives, as its :class:`WorkerSink`, the request messages and
the loss of a worker.

Generation output is handled per engine step, not per token: a ``Deltas`` message (one per
step, every running sequence in it) is filed under each request and its metrics observed
(typed :mod:`~steadyserve.engine.events`) in one pass; a streaming reader is woken once per
step, a non-streaming one once, when its sequence ends.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from steadyserve.config import EngineConfig, ModelSpec
from steadyserve.engine import events, ipc
from steadyserve.engine.detokenize import IncrementalDetokenizer, StopMatcher
from steadyserve.engine.events import EngineEvent, Listener
from steadyserve.engine.output import (
    SequenceState,
    UnaryState,
    detokenize_step,
    merge_deltas,
)
from steadyserve.engine.protocol import Health
from steadyserve.engine.supervisor import Launcher, State, WorkerSupervisor, spawn_subprocess
from steadyserve.engine.tokenizer import (
    LoadedTokenizer,
    TokenizerSlot,
    preload_tokenizer_library,
)
from steadyserve.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelError,
    QueueFull,
    ServiceUnavailable,
    SteadyError,
    from_kind,
)
from steadyserve.logs import request_id_var
from steadyserve.runtimes import TRANSFORMERS_RUNTIMES
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

log = logging.getLogger("steadyserve.engine")

#: a stream with this many token deltas buffered whose reader has taken none for
#: ``STREAM_STALL_S`` (its client stopped reading: the response is blocked on the socket) is cut:
#: its sequence is aborted in the worker and an in-band error ends it. A client that does not
#: read must not make the server buffer an unbounded output; a slow but reading one is never cut.
MAX_UNREAD_DELTAS = 4096
STREAM_STALL_S = 1.0


class WorkerClient:
    """One model served by a supervised worker process (implements :class:`EngineClient`)."""

    def __init__(
        self, spec: ModelSpec, config: EngineConfig, launcher: Launcher = spawn_subprocess
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.config = config
        self.supervisor = WorkerSupervisor(spec, config, self, launcher)
        self._pending: dict[int, UnaryState | SequenceState] = {}
        #: generate() streams still open (their response not yet fully read): admission counts
        #: them until then, even after the worker finished generating
        self._streams: set[int] = set()
        self._queued_tokens = 0
        #: Result/Failed messages received for predict/infer/embed (the batching hint)
        self._unary_results = 0
        self._ids = itertools.count(1)
        self.worker_stats: dict[str, int] = {"running": 0, "queued": 0}
        #: set on SIGTERM: readiness fails and new requests get 503 while in-flight ones finish.
        self.draining = False
        #: observers (metrics): called as ``listener(client, event)``
        self.listeners: list[Listener] = []
        self._tokenizer = TokenizerSlot(spec.name)

    # ---- status --------------------------------------------------------------------------
    @property
    def state(self) -> State:
        return self.supervisor.state

    @property
    def info(self) -> ModelInfo | None:
        return self.supervisor.info

    @property
    def last_error(self) -> str | None:
        return self.supervisor.last_error

    @property
    def restarts(self) -> int:
        return self.supervisor.restarts

    @property
    def ready(self) -> bool:
        return self.state == State.READY and self.info is not None and not self.draining

    @property
    def live(self) -> bool:
        return self.supervisor.consecutive_crashes < self.config.max_consecutive_crashes

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def health(self) -> Health:
        sup = self.supervisor
        return Health(self.state, self.ready, self.live, sup.last_exit, sup.restarts)

    def stats(self) -> dict[str, Any]:
        """What ``/debug/engine`` and the scrape-time gauges show. ``worker_running`` /
        ``worker_queued``: generation from the worker's last heartbeat, plus predict/infer/embed
        requests - those in the batch the worker said it started (``Busy``) run, the rest of the
        server's unary requests in flight wait (in the worker's queue or on their way to it)."""
        unary = sum(1 for p in self._pending.values() if isinstance(p, UnaryState))
        busy = min(self.supervisor.busy_requests, unary)
        proc = self.supervisor.proc
        return {
            "state": str(self.state),
            "in_flight": len(self._pending),
            "streams_open": len(self._streams),
            "queued_tokens": self._queued_tokens,
            "worker_running": self.worker_stats.get("running", 0) + busy,
            "worker_queued": self.worker_stats.get("queued", 0) + unary - busy,
            "restarts": self.restarts,
            "consecutive_crashes": self.supervisor.consecutive_crashes,
            "last_error": self.last_error,
            "pid": proc.pid if proc is not None else None,
        }

    # ---- lifecycle (the supervisor's) -------------------------------------------------------
    async def start(self) -> None:
        if self.spec.runtime in TRANSFORMERS_RUNTIMES:
            preload_tokenizer_library()  # while the worker loads, not when it is ready
        await self.supervisor.start()

    async def stop(self, grace_s: float = 0.0) -> None:
        await self.supervisor.stop(grace_s)

    @property
    def on_give_up(self) -> Any:
        return self.supervisor.on_give_up

    @on_give_up.setter
    def on_give_up(self, hook: Any) -> None:
        self.supervisor.on_give_up = hook

    # ---- tokenizer -------------------------------------------------------------------------
    async def tokenizer(self) -> LoadedTokenizer | None:
        info = self.info
        if info is None or not info.tokenizer_dir:
            return None
        return await self._tokenizer.get((self.restarts, info.tokenizer_dir), info.tokenizer_dir)

    # ---- WorkerSink: what the worker's messages mean for requests ----------------------------
    def on_event(self, event: EngineEvent) -> None:
        if isinstance(event, events.Ready):
            info = self.info
            if info is not None and info.tokenizer_dir:  # loaded now, not on the first request
                self._tokenizer.warm((self.restarts, info.tokenizer_dir), info.tokenizer_dir)
        for listener in self.listeners:
            try:
                listener(self, event)
            except Exception:  # pragma: no cover - observers never break serving
                log.exception("engine listener failed")

    def on_message(self, msg: ipc.ToServer) -> None:
        if isinstance(msg, ipc.Deltas):
            self._on_deltas(msg)
        elif isinstance(msg, ipc.Result):
            self._unary_results += 1
            if msg.id in self._pending:
                self.on_event(events.QueueWait(msg.queue_s))
            self._finish(msg.id, msg.output.response)
        elif isinstance(msg, ipc.Failed):
            if isinstance(self._pending.get(msg.id), UnaryState):
                self._unary_results += 1
            self._finish(msg.id, from_kind(msg.error, msg.message))
        elif isinstance(msg, ipc.Heartbeat):
            self.worker_stats = {"running": msg.running, "queued": msg.queued, **msg.stats}

    def on_worker_lost(self, error: SteadyError) -> None:
        for rid in list(self._pending):
            self._finish(rid, error)

    def _detokenize(self, msg: ipc.Deltas) -> set[SequenceState]:
        return detokenize_step(
            [
                (seq, d)
                for rid, d in msg.items
                if isinstance(seq := self._pending.get(rid), SequenceState)
            ]
        )

    def _on_deltas(self, msg: ipc.Deltas) -> None:
        """One engine step: file each sequence's delta, observe its metrics, wake readers."""
        now = time.monotonic()
        for rid, seconds in msg.started:
            if rid in self._pending:
                self.on_event(events.QueueWait(seconds))
        undecodable = self._detokenize(msg)
        for rid, delta in msg.items:
            seq = self._pending.get(rid)
            if not isinstance(seq, SequenceState):
                continue
            if seq in undecodable:  # ends here (a 500), whoever reads it; the worker drops it
                self._finish(rid, ModelError("the output could not be detokenized"))
                self.supervisor.send(ipc.frame(ipc.Abort(id=rid)))
                continue
            first = seq.last_output == 0.0
            n = len(delta.token_ids)
            if first or n:  # a final delta with no tokens is not a gap between tokens
                prompt = None if seq.prompt_seen else delta.prompt_tokens
                seq.prompt_seen = seq.prompt_seen or delta.prompt_tokens is not None
                gap = now - (seq.started if first else seq.last_output)
                self.on_event(events.Tokens(first, gap, n, prompt))
                seq.last_output = now
            if seq.apply_stop(delta):
                # a stop string ended the text: the sequence ends here, and the worker drops it
                self._finish(rid, delta)
                self.supervisor.send(ipc.frame(ipc.Abort(id=rid)))
            elif delta.finish_reason is not None:
                self._finish(rid, delta)
            elif (
                seq.stream
                and len(seq.out) >= MAX_UNREAD_DELTAS
                and now - seq.last_read > STREAM_STALL_S
            ):
                self._abort(rid, events.Aborted())
                seq.out.append(
                    InvalidInput(
                        f"the client did not read its stream ({MAX_UNREAD_DELTAS} events "
                        "unread); generation was stopped"
                    )
                )
                seq.wake()
            else:
                seq.out.append(delta)
                if seq.stream:
                    seq.wake()

    # ---- completion (exactly once) -------------------------------------------------------
    def _finish(self, rid: int, outcome: Any) -> bool:
        """End request ``rid`` with a result or an exception. Returns False if it had already
        ended: the first outcome wins, later ones are dropped."""
        pending = self._pending.pop(rid, None)
        if pending is None:
            return False
        if isinstance(outcome, BaseException):
            self.on_event(events.Failed(outcome))
        else:
            self.supervisor.served()
        if isinstance(pending, UnaryState):
            if not pending.future.done():
                if isinstance(outcome, BaseException):
                    pending.future.set_exception(outcome)
                else:
                    pending.future.set_result(outcome)
        else:
            self._queued_tokens -= pending.tokens
            pending.out.append(outcome)
            pending.wake()
        return True

    def fail_in_flight(self, error: SteadyError) -> None:
        """End every request in flight with ``error`` and drop them in the worker (shutdown)."""
        for rid in list(self._pending):
            if self._finish(rid, error):
                self.supervisor.send(ipc.frame(ipc.Abort(id=rid)))

    def _abort(self, rid: int, event: EngineEvent) -> bool:
        """The caller left (cancelled, deadline): end the request and tell the worker to drop
        it. Returns False if the request had already ended."""
        pending = self._pending.pop(rid, None)
        if pending is None:
            return False
        if isinstance(pending, SequenceState):
            self._queued_tokens -= pending.tokens
        self.on_event(event)
        self.supervisor.send(ipc.frame(ipc.Abort(id=rid)))
        return True

    # ---- admission -----------------------------------------------------------------------
    def _not_ready(self) -> ServiceUnavailable:
        if self.draining:
            # the same words as the HTTP edge's drain answer, so gRPC callers read them too
            return ServiceUnavailable(
                f"the server is shutting down (model {self.name} is draining)", retry_after=5
            )
        if self.state in (State.STOPPING, State.STOPPED):
            return ServiceUnavailable(f"model {self.name} is not serving", retry_after=5)
        detail = f" ({self.last_error})" if self.last_error else ""
        return ServiceUnavailable(
            f"model {self.name} is not ready: {self.state}{detail}", retry_after=1
        )

    def _admit(self, tokens: int) -> int:
        if self.draining or self.state != State.READY or self.supervisor.writer is None:
            raise self._not_ready()
        admitted = len(self._pending) + len(self._streams.difference(self._pending))
        if admitted >= self.config.max_queue_size:
            raise QueueFull(
                f"model {self.name} has {admitted} requests in flight "
                f"(max_queue_size={self.config.max_queue_size})",
                retry_after=1,
            )
        if tokens > self.config.max_queue_tokens:
            raise InvalidInput(
                f"the request needs {tokens} tokens (prompt + max_tokens), more than this "
                f"model ever queues (max_queue_tokens={self.config.max_queue_tokens})",
                param="max_tokens",
            )
        if tokens and self._queued_tokens + tokens > self.config.max_queue_tokens:
            raise QueueFull(
                f"model {self.name} has {self._queued_tokens} tokens queued "
                f"(max_queue_tokens={self.config.max_queue_tokens})",
                retry_after=1,
            )
        return next(self._ids)

    @staticmethod
    def _encode(message: ipc.Submit) -> bytes:
        """The request's IPC frame. Encoded *before* the request is registered: a payload the
        codec cannot carry (text that is not valid Unicode, an integer beyond 64 bits) is the
        client's 400 and must not leave a pending slot behind."""
        try:
            return ipc.frame(message)
        except (UnicodeEncodeError, OverflowError, TypeError, ValueError) as exc:
            reason = (
                "text that is not valid Unicode"
                if isinstance(exc, UnicodeEncodeError)
                else "an integer outside the 64-bit range"
                if isinstance(exc, OverflowError)
                else "a value that cannot be encoded"
            )
            raise InvalidInput(f"the request holds {reason}") from None

    def _timeout(self, timeout_s: float | None) -> float:
        default = self.config.request_timeout_s
        return default if timeout_s is None else max(0.0, min(timeout_s, default))

    async def _unary(
        self, work: ipc.Predict | ipc.Infer | ipc.Embed, timeout_s: float | None
    ) -> Any:
        timeout = self._timeout(timeout_s)
        rid = self._admit(0)
        unary = 1 + sum(1 for p in self._pending.values() if isinstance(p, UnaryState))
        data = self._encode(
            ipc.Submit(
                id=rid,
                work=work,
                timeout_s=timeout,
                in_flight=unary,
                results_seen=self._unary_results,
                request_id=request_id_var.get(),
            )
        )
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = UnaryState(future)
        self.supervisor.send(data)
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(future)
        except TimeoutError:
            self._abort(rid, events.Expired())
            raise DeadlineExceeded(f"request did not complete within {timeout:.3g}s") from None
        finally:
            if rid in self._pending:  # cancelled by the caller (client disconnected)
                self._abort(rid, events.Aborted())

    async def predict(
        self, request: PredictRequest, timeout_s: float | None = None
    ) -> PredictResponse:
        result = await self._unary(ipc.Predict(request), timeout_s)
        assert isinstance(result, PredictResponse)
        return result

    async def infer(self, request: InferRequest, timeout_s: float | None = None) -> InferResponse:
        result = await self._unary(ipc.Infer(request), timeout_s)
        assert isinstance(result, InferResponse)
        return result

    async def embed(self, request: EmbedRequest, timeout_s: float | None = None) -> EmbedResponse:
        result = await self._unary(ipc.Embed(request), timeout_s)
        assert isinstance(result, EmbedResponse)
        return result

    async def generate(
        self,
        request: GenerateRequest,
        timeout_s: float | None = None,
        *,
        stream: bool = True,
        detokenize: Sequence[int] | None = None,
        stop: Sequence[str] = (),
    ) -> AsyncIterator[TokenDelta]:
        """Stream token deltas; the last one carries ``finish_reason``. Closing the iterator
        early (or cancelling the task consuming it) aborts the sequence in the worker.
        ``stream=False``: the reader is woken once, when the sequence ends, and gets the whole
        output as one delta (:func:`merge_deltas`): one detokenization, one event.

        ``detokenize`` (the prompt's ids to decode after, or ``()``): each delta's ``text`` is
        the text its tokens complete, decoded with the model's tokenizer here - per engine
        step, in one batch for every sequence of the step (never a broken character; the last
        delta flushes the rest).

        ``stop`` (strings): watched here, on each step's text; a match cuts the text before it,
        ends the sequence with ``finish_reason="stop"`` and drops it in the worker. Text that
        may be the start of a stop string is held back until the next step tells. A
        non-streaming request with stop strings is still woken once, at the end.

        Use as ``async with contextlib.aclosing(engine.generate(...)) as stream``."""
        detok = None
        if detokenize is not None:
            loaded = await self.tokenizer()
            if loaded is not None:
                detok = IncrementalDetokenizer(loaded.tokenizer, detokenize)
        timeout = self._timeout(timeout_s)
        prompt_len = len(request.prompt_token_ids or ()) or len(request.prompt or "") // 4
        tokens = prompt_len + request.params.max_tokens
        rid = self._admit(tokens)
        data = self._encode(
            ipc.Submit(
                id=rid,
                work=ipc.Generate(request),
                timeout_s=timeout,
                request_id=request_id_var.get(),
            )
        )
        started = time.monotonic()
        stops = [s for s in stop if s]
        seq = SequenceState(
            tokens=tokens,
            stream=stream,
            started=started,
            detok=detok,
            stop=StopMatcher(stops) if stops else None,
        )
        self._pending[rid] = seq
        self._queued_tokens += tokens
        self._streams.add(rid)
        self.supervisor.send(data)
        loop = asyncio.get_running_loop()
        deadline = started + timeout
        try:
            while True:
                if not seq.out:
                    seq.waiter = loop.create_future()
                    try:
                        async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                            await seq.waiter
                    except TimeoutError:
                        self._abort(rid, events.Expired())
                        raise DeadlineExceeded(
                            f"generation did not complete within {timeout:.3g}s"
                        ) from None
                    finally:
                        seq.waiter = None
                taken, seq.out = seq.out, []
                seq.last_read = time.monotonic()
                if not stream:
                    failure = next((i for i in taken if isinstance(i, BaseException)), None)
                    if failure is not None:
                        raise failure
                    merged = merge_deltas(taken)  # type: ignore[arg-type]
                    seq.text_of(merged)  # the whole output at once: one decode
                    yield merged
                    if merged.finish_reason is not None:
                        return
                    continue
                for item in taken:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
                    if item.finish_reason is not None:
                        return
        finally:
            self._streams.discard(rid)
            if rid in self._pending:
                self._abort(rid, events.Aborted())

    def require_ready_info(self) -> ModelInfo:
        """Model metadata for edge validation; 503 (with the reason) while not ready."""
        if self.info is None or not self.ready:
            raise self._not_ready()
        return self.info

"""The engine client: the one narrow interface between the server and a model's worker.

:class:`ModelEngine` lives in the server process (asyncio). It admits requests (bounded queue →
429; not ready → 503), sends them to the worker, and completes each *exactly once*: with a
result, an error, a cancellation (the caller's task was cancelled → ``Abort`` to the worker),
a deadline (504, ``Abort``) or a worker failure (503). It also supervises the worker process:
restart with backoff on crash, kill on hang, readiness and liveness that tell the truth.

Transports call only ``predict``, ``infer``, ``embed``, ``generate``, ``info`` and the
readiness/liveness properties; nothing framework-specific crosses this boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from steadyserve.engine import ipc
from steadyserve.engine.supervisor import EngineConfig, State, WorkerSupervisor
from steadyserve.errors import (
    DeadlineExceeded,
    InvalidInput,
    QueueFull,
    ServiceUnavailable,
    SteadyError,
    from_kind,
)
from steadyserve.logs import request_id_var
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


@dataclass
class _Pending:
    kind: str
    tokens: int
    future: asyncio.Future[Any] | None = None
    queue: asyncio.Queue[TokenDelta | BaseException] | None = None
    started: float = field(default_factory=time.monotonic)
    #: when the stream's reader last took a delta (generate only)
    last_read: float = field(default_factory=time.monotonic)


class ModelEngine(WorkerSupervisor):
    """One model: its worker process, its admission queue, its readiness."""

    def __init__(self, spec: ipc.ModelSpec, config: EngineConfig) -> None:
        self.spec = spec
        self.name = spec.name
        self.config = config
        self.state = State.STOPPED
        self.info: ModelInfo | None = None
        self.last_error: str | None = None
        self.consecutive_crashes = 0
        self.restarts = 0
        self.worker_stats: dict[str, int] = {"running": 0, "queued": 0}
        self._pending: dict[int, _Pending] = {}
        #: generate() streams still open (their response not yet fully read): admission counts
        #: them until then, even after the worker finished generating
        self._streams: set[int] = set()
        self._queued_tokens = 0
        #: Result/Failed messages received for predict/infer/embed (the batching hint)
        self._unary_results = 0
        self._ids = itertools.count(1)
        self._init_supervision()
        #: set on SIGTERM: readiness fails and new requests get 503 while in-flight ones finish.
        self.draining = False
        self._served_since_start = 0
        self._load_error: str | None = None
        #: observers (metrics): called with (event, **fields)
        self.listeners: list[Any] = []

    # ---- status --------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.state == State.READY and self.info is not None and not self.draining

    @property
    def live(self) -> bool:
        return self.consecutive_crashes < self.config.max_consecutive_crashes

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def _in_flight(self) -> int:
        return len(self._pending)

    def stats(self) -> dict[str, Any]:
        """What ``/debug/engine`` and the scrape-time gauges show. ``worker_running`` /
        ``worker_queued``: generation from the worker's last heartbeat, plus predict/infer/embed
        requests - those in the batch the worker said it started (``Busy``) run, the rest of the
        server's unary requests in flight wait (in the worker's queue or on their way to it)."""
        unary = sum(1 for p in self._pending.values() if p.future is not None)
        busy = min(self._busy_requests, unary)
        return {
            "state": self.state,
            "in_flight": len(self._pending),
            "streams_open": len(self._streams),
            "queued_tokens": self._queued_tokens,
            "worker_running": self.worker_stats.get("running", 0) + busy,
            "worker_queued": self.worker_stats.get("queued", 0) + unary - busy,
            "restarts": self.restarts,
            "consecutive_crashes": self.consecutive_crashes,
            "last_error": self.last_error,
            "pid": self._proc.pid if self._proc is not None else None,
        }

    def _emit(self, event: str, **fields: Any) -> None:
        for listener in self.listeners:
            try:
                listener(self, event, **fields)
            except Exception:  # pragma: no cover - observers never break serving
                log.exception("engine listener failed")

    def _dispatch(self, msg: ipc.ToServer) -> None:
        if isinstance(msg, ipc.Busy):
            self._busy_rows, self._busy_requests = msg.rows, msg.requests
            return
        self._busy_rows = self._busy_requests = 0
        if isinstance(msg, ipc.Deltas):
            for rid, seconds in msg.started:
                if rid in self._pending:
                    self._emit("queue_wait", seconds=seconds)
            for rid, delta in msg.items:
                pending = self._pending.get(rid)
                if pending is None or pending.queue is None:
                    continue
                if delta.finish_reason is not None:
                    self._finish(rid, delta)
                elif (
                    pending.queue.qsize() >= MAX_UNREAD_DELTAS
                    and time.monotonic() - pending.last_read > STREAM_STALL_S
                ):
                    self._abort(rid, "aborted")
                    pending.queue.put_nowait(
                        InvalidInput(
                            f"the client did not read its stream ({MAX_UNREAD_DELTAS} events "
                            "unread); generation was stopped"
                        )
                    )
                else:
                    pending.queue.put_nowait(delta)
        elif isinstance(msg, ipc.Result):
            self._unary_results += 1
            if msg.id in self._pending:
                self._emit("queue_wait", seconds=msg.queue_s)
            self._finish(msg.id, msg.predict or msg.infer or msg.embed)
        elif isinstance(msg, ipc.Failed):
            failed = self._pending.get(msg.id)
            if failed is not None and failed.kind != "generate":
                self._unary_results += 1
            self._finish(msg.id, from_kind(msg.kind, msg.message))
        elif isinstance(msg, ipc.Heartbeat):
            self.worker_stats = {"running": msg.running, "queued": msg.queued, **msg.stats}
        elif isinstance(msg, ipc.Ready):
            self.info = msg.info
            self.state = State.READY
            self._ever_ready = True
            self._ready_this_run = True
            self.last_error = None
            self._ready_event.set()
            log.info("model %s is ready (%s)", self.name, ", ".join(msg.info.capabilities))
            self._emit("ready")
        elif isinstance(msg, ipc.LoadFailed):
            self._load_error = msg.message
            log.error("model %s: load failed: %s", self.name, msg.message)
        elif isinstance(msg, ipc.Progress):
            log.info("model %s: %s", self.name, msg.message)

    # ---- completion (exactly once) -------------------------------------------------------
    def _finish(self, rid: int, outcome: Any) -> bool:
        """End request ``rid`` with a result or an exception. Returns False if it had already
        ended: the first outcome wins, later ones are dropped."""
        pending = self._pending.pop(rid, None)
        if pending is None:
            return False
        self._queued_tokens -= pending.tokens
        if isinstance(outcome, BaseException):
            self._emit("failed", error=outcome)
        else:
            self._served_since_start += 1
            if self._served_since_start == 1 and self.consecutive_crashes:
                self.consecutive_crashes = 0
        if pending.future is not None:
            if not pending.future.done():
                if isinstance(outcome, BaseException):
                    pending.future.set_exception(outcome)
                else:
                    pending.future.set_result(outcome)
        elif pending.queue is not None:
            pending.queue.put_nowait(outcome)
        return True

    def fail_in_flight(self, error: SteadyError) -> None:
        """End every request in flight with ``error`` and drop them in the worker (shutdown)."""
        for rid in list(self._pending):
            if self._finish(rid, error) and self._writer is not None:
                with contextlib.suppress(Exception):
                    self._writer.write(ipc.frame(ipc.Abort(id=rid)))

    def _fail_all(self, error: SteadyError) -> None:
        for rid in list(self._pending):
            self._finish(rid, error)

    def _abort(self, rid: int, event: str = "aborted") -> bool:
        """The caller left (cancelled, deadline): end the request and tell the worker to drop
        it. Returns False if the request had already ended."""
        pending = self._pending.pop(rid, None)
        if pending is None:
            return False
        self._queued_tokens -= pending.tokens
        self._emit(event)
        if self._writer is not None and not self._writer.is_closing():
            with contextlib.suppress(Exception):
                self._writer.write(ipc.frame(ipc.Abort(id=rid)))
        return True

    # ---- admission -----------------------------------------------------------------------
    def _admit(self, kind: str, tokens: int) -> int:
        if self.draining:
            raise ServiceUnavailable(
                f"model {self.name} is draining (shutting down)", retry_after=5
            )
        if self.state != State.READY or self._writer is None:
            if self.state in (State.STOPPING, State.STOPPED):
                raise ServiceUnavailable(f"model {self.name} is not serving", retry_after=5)
            detail = f" ({self.last_error})" if self.last_error else ""
            raise ServiceUnavailable(
                f"model {self.name} is not ready: {self.state}{detail}", retry_after=1
            )
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
        rid = next(self._ids)
        self._queued_tokens += tokens
        return rid

    def _submit_frame(self, message: ipc.Submit, tokens: int) -> bytes:
        """The request's IPC frame. Encoded *before* the request is registered: a payload the
        codec cannot carry (text that is not valid Unicode, an integer beyond 64 bits) is the
        client's 400 and must not leave a pending slot behind."""
        try:
            return ipc.frame(message)
        except (UnicodeEncodeError, OverflowError, TypeError, ValueError) as exc:
            self._queued_tokens -= tokens
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

    async def _unary(self, kind: str, payload: Any, timeout_s: float | None) -> Any:
        timeout = self._timeout(timeout_s)
        rid = self._admit(kind, 0)
        unary = 1 + sum(1 for p in self._pending.values() if p.future is not None)
        submit = ipc.Submit(
            id=rid,
            kind=kind,
            timeout_s=timeout,
            in_flight=unary,
            results_seen=self._unary_results,
            request_id=request_id_var.get(),
            **{kind: payload},
        )
        data = self._submit_frame(submit, 0)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending[rid] = _Pending(kind=kind, tokens=0, future=future)
        assert self._writer is not None
        self._writer.write(data)
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(future)
        except TimeoutError:
            self._abort(rid, "expired")
            raise DeadlineExceeded(f"request did not complete within {timeout:.3g}s") from None
        finally:
            if rid in self._pending:  # cancelled by the caller (client disconnected)
                self._abort(rid)

    async def predict(
        self, request: PredictRequest, timeout_s: float | None = None
    ) -> PredictResponse:
        result = await self._unary("predict", request, timeout_s)
        assert isinstance(result, PredictResponse)
        return result

    async def infer(self, request: InferRequest, timeout_s: float | None = None) -> InferResponse:
        result = await self._unary("infer", request, timeout_s)
        assert isinstance(result, InferResponse)
        return result

    async def embed(self, request: EmbedRequest, timeout_s: float | None = None) -> EmbedResponse:
        result = await self._unary("embed", request, timeout_s)
        assert isinstance(result, EmbedResponse)
        return result

    async def generate(
        self, request: GenerateRequest, timeout_s: float | None = None
    ) -> AsyncIterator[TokenDelta]:
        """Stream token deltas; the last one carries ``finish_reason``. Closing the iterator
        early (or cancelling the task consuming it) aborts the sequence in the worker.

        Use as ``async with contextlib.aclosing(engine.generate(...)) as stream``."""
        timeout = self._timeout(timeout_s)
        prompt_len = len(request.prompt_token_ids or ()) or len(request.prompt or "") // 4
        tokens = prompt_len + request.params.max_tokens
        rid = self._admit("generate", tokens)
        data = self._submit_frame(
            ipc.Submit(
                id=rid,
                kind="generate",
                timeout_s=timeout,
                generate=request,
                request_id=request_id_var.get(),
            ),
            tokens,
        )
        queue: asyncio.Queue[TokenDelta | BaseException] = asyncio.Queue()
        entry = self._pending[rid] = _Pending(kind="generate", tokens=tokens, queue=queue)
        self._streams.add(rid)
        assert self._writer is not None
        self._writer.write(data)
        started = last = time.monotonic()
        deadline = started + timeout
        first, prompt_seen = True, False
        try:
            while True:
                remaining = deadline - time.monotonic()
                try:
                    async with asyncio.timeout(max(remaining, 0)):
                        item = await queue.get()
                    entry.last_read = time.monotonic()
                except TimeoutError:
                    self._abort(rid, "expired")
                    raise DeadlineExceeded(
                        f"generation did not complete within {timeout:.3g}s"
                    ) from None
                if isinstance(item, BaseException):
                    raise item
                # metrics: time to first token, inter-token gaps, token counts
                now = time.monotonic()
                self._emit(
                    "first_token" if first else "tokens",
                    seconds=now - (started if first else last),
                    tokens=len(item.token_ids),
                    prompt_tokens=None if prompt_seen else item.prompt_tokens,
                )
                first, last = False, now
                prompt_seen = prompt_seen or item.prompt_tokens is not None
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            self._streams.discard(rid)
            if rid in self._pending:
                self._abort(rid)

    def require_ready_info(self) -> ModelInfo:
        """Model metadata for edge validation; 503 (with the reason) while not ready."""
        if self.info is None or not self.ready:
            if self.draining or self.state in (State.STOPPING, State.STOPPED):
                raise ServiceUnavailable(f"model {self.name} is not serving", retry_after=5)
            detail = f" ({self.last_error})" if self.last_error else ""
            raise ServiceUnavailable(
                f"model {self.name} is not ready: {self.state}{detail}", retry_after=1
            )
        return self.info

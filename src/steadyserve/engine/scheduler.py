"""The worker's scheduler: dynamic batching for predict/infer/embed, continuous batching for
generation, cancellation and deadlines - all on one thread that owns the model.

A reader thread moves messages from the socket into an inbox; the scheduler thread drains the
inbox between model calls, so an ``Abort`` takes effect before the next batch or decoding step.
Failures stay local: a batch that raises is re-run one request at a time, and only the request
that raises alone fails.
"""

from __future__ import annotations

import inspect
import logging
import os
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

from steadyserve.config import ModelSpec
from steadyserve.engine.bridge import infer_to_instances, predictions_to_infer, to_jsonable
from steadyserve.engine.ipc import (
    Abort,
    BlockingChannel,
    Busy,
    Deltas,
    Embed,
    Embedded,
    Failed,
    Generate,
    Heartbeat,
    Infer,
    Inferred,
    Predict,
    Predicted,
    Result,
    Shutdown,
    Submit,
    ToWorker,
)
from steadyserve.errors import DeadlineExceeded, InvalidInput, ModelError, SteadyError, bounded
from steadyserve.model import BatchGenerator, Model
from steadyserve.types import (
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    InferResponse,
    PredictResponse,
    TokenDelta,
)

log = logging.getLogger("steadyserve.worker")

HEARTBEAT_S = 0.25


def call_maybe_async(loop: Any, fn: Any, *args: Any) -> Any:
    """Call a model method that may be ``async def`` (run on the worker's own loop)."""
    result = fn(*args)
    if inspect.isawaitable(result):
        result = loop.run_until_complete(result)
    return result


def _server_gone() -> None:
    os._exit(0)


@dataclass
class Job:
    msg: Submit
    arrived: float
    deadline: float | None
    group: Any = None
    rows: int = 1
    data: Any = None


def as_error(exc: BaseException) -> SteadyError:
    if isinstance(exc, SteadyError):
        return exc
    if isinstance(exc, MemoryError):
        return ModelError("model ran out of memory on this request")
    return ModelError(bounded(f"{type(exc).__name__}: {exc}"))


class IteratorGenerator:
    """Drives a model's per-request ``generate`` iterators, one token each per step (fair
    interleaving for custom models without a batched engine)."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.running: dict[str, Iterator[TokenDelta]] = {}

    def add(self, request_id: str, request: GenerateRequest) -> None:
        self.running[request_id] = iter(self.model.generate(request))

    def abort(self, request_id: str) -> None:
        it = self.running.pop(request_id, None)
        close = getattr(it, "close", None)
        if close is not None:
            close()

    def has_work(self) -> bool:
        return bool(self.running)

    def step(self) -> list[tuple[str, TokenDelta | BaseException]]:
        out: list[tuple[str, TokenDelta | BaseException]] = []
        for rid, it in list(self.running.items()):
            try:
                delta = next(it)
            except StopIteration:
                delta = TokenDelta(finish_reason="stop")
            except Exception as exc:  # noqa: BLE001 - a failure stays with its request
                self.running.pop(rid, None)
                out.append((rid, exc))
                continue
            if delta.finish_reason is not None:
                self.running.pop(rid, None)
            out.append((rid, delta))
        return out

    def reset(self) -> None:
        for rid in list(self.running):
            self.abort(rid)

    def stats(self) -> dict[str, int]:
        return {"running": len(self.running)}


class Scheduler:
    def __init__(
        self,
        model: Model,
        spec: ModelSpec,
        channel: BlockingChannel,
        loop: Any,
        on_server_gone: Any = _server_gone,
    ) -> None:
        self.model = model
        #: called (on the reader thread) when the server closes the channel; the process
        #: exits by default (nothing is left to serve)
        self.on_server_gone = on_server_gone
        self.spec = spec
        self.channel = channel
        self.loop = loop
        self.inbox: queue.Queue[ToWorker | None] = queue.Queue()
        self.pending: deque[Job] = deque()  # predict / infer / embed
        self.gen_waiting: deque[Job] = deque()
        self.gen_running: dict[int, Job] = {}
        self.stopping = False
        #: ids aborted while their batch was running (skipped when a batch is re-run alone)
        self.aborted: set[int] = set()
        #: the model's batched generator (or one driving its per-request iterators)
        self.generator: BatchGenerator | None = None
        caps = model.capabilities()
        if "generate" in caps:
            self.generator = model.generation_engine() or IteratorGenerator(model)
        self.infer_override = model._overrides("infer")
        self.predict_takes_parameters = _accepts_parameters(model.predict)
        self.last_heartbeat = 0.0
        #: the batching hint of the latest unary Submit: (server's in-flight count, results it
        #: had seen); in_flight 0 = unknown, every batch waits its max_batch_wait_ms
        self.hint = (0, 0)
        #: Result/Failed messages sent for predict/infer/embed requests
        self.results_sent = 0
        #: whether the generator's add() takes the worker's arrival time (``arrived=``)
        self._add_arrival = _accepts_keyword(getattr(self.generator, "add", None), "arrived")
        self._idle_failed = False

    # ---- I/O -----------------------------------------------------------------------------
    def _reader(self) -> None:
        try:
            while True:
                self.inbox.put(self.channel.recv())
        except (EOFError, OSError):
            # The server is gone: nothing left to serve. Exit at once.
            self.on_server_gone()
        except Exception:
            log.exception("bad frame from server")
            os._exit(4)

    def _fail(self, job: Job, exc: BaseException) -> None:
        if not isinstance(job.msg.work, Generate):
            self.results_sent += 1
        err = as_error(exc)
        if not isinstance(err, SteadyError) or isinstance(err, ModelError):
            log.warning(
                "request failed: %s",
                err.message,
                extra={"request_id": job.msg.request_id or f"#{job.msg.id}"},
            )
        self.channel.send(Failed(id=job.msg.id, error=err.kind, message=err.message))

    # ---- main loop -----------------------------------------------------------------------
    def run(self) -> None:
        threading.Thread(target=self._reader, name="ipc-reader", daemon=True).start()
        while not self.stopping:
            self._drain_inbox(self._wait_time())
            self._expire()
            if self.pending and self._batch_due():
                self._run_batch()
            if self.generator is not None and (self.gen_waiting or self.gen_running):
                self._gen_step()
            now = time.monotonic()
            if now - self.last_heartbeat >= HEARTBEAT_S:
                self.last_heartbeat = now
                stats = self.generator.stats() if self.generator is not None else {}
                self.channel.send(
                    Heartbeat(
                        running=len(self.gen_running), queued=len(self.gen_waiting), stats=stats
                    )
                )

    def _wait_time(self) -> float:
        if self.gen_waiting:
            return 0.0
        wait = HEARTBEAT_S
        if self.gen_running:
            # 0 unless the generator holds arrivals with nothing to decode (then it sleeps
            # here, on the inbox, and leaves the CPUs to the HTTP side meanwhile)
            wait = min(wait, self._gen_idle())
        if self.pending:
            if self._batch_due():
                return 0.0
            due = self.pending[0].arrived + self.spec.max_batch_wait_ms / 1000
            wait = min(wait, max(0.0, due - time.monotonic()))
        return wait

    def _gen_idle(self) -> float:
        """The generator's ``idle_s()`` (0 without one; a failing one is logged once and
        treated as 0: it may cost a busy loop, never the requests)."""
        idle = getattr(self.generator, "idle_s", None)
        if idle is None:
            return 0.0
        try:
            return max(0.0, float(idle()))
        except Exception:  # noqa: BLE001 - a custom generator's hint must not kill the worker
            if not self._idle_failed:
                log.exception("the generator's idle_s() failed; stepping without waiting")
                self._idle_failed = True
            return 0.0

    def _drain_inbox(self, timeout: float) -> None:
        try:
            msg = self.inbox.get(timeout=timeout) if timeout > 0 else self.inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(msg)
            try:
                msg = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, msg: ToWorker | None) -> None:
        if isinstance(msg, Submit):
            now = time.monotonic()
            deadline = now + msg.timeout_s if msg.timeout_s is not None else None
            job = Job(msg=msg, arrived=now, deadline=deadline)
            if isinstance(msg.work, Generate):
                if self.generator is None:
                    self._fail(job, InvalidInput("this model does not generate"))
                else:
                    self.gen_waiting.append(job)
            else:
                self.hint = (msg.in_flight, msg.results_seen)
                try:
                    self._classify(job)
                except Exception as exc:  # noqa: BLE001
                    self._fail(job, exc if isinstance(exc, SteadyError) else InvalidInput(str(exc)))
                    return
                self.pending.append(job)
        elif isinstance(msg, Abort):
            self._abort(msg.id)
        elif isinstance(msg, Shutdown):
            self.stopping = True

    def _abort(self, rid: int) -> None:
        self.aborted.add(rid)
        if len(self.aborted) > 10_000:
            self.aborted.clear()
        for q in (self.pending, self.gen_waiting):
            for job in list(q):
                if job.msg.id == rid:
                    q.remove(job)
                    return
        if rid in self.gen_running:
            self.gen_running.pop(rid)
            assert self.generator is not None
            self.generator.abort(str(rid))

    def _expire(self) -> None:
        now = time.monotonic()
        for q in (self.pending, self.gen_waiting):
            for job in [j for j in q if j.deadline is not None and j.deadline <= now]:
                q.remove(job)
                self._fail(job, DeadlineExceeded("deadline passed while queued"))
        for rid, job in list(self.gen_running.items()):
            if job.deadline is not None and job.deadline <= now:
                self._abort(rid)
                self._fail(job, DeadlineExceeded("deadline passed during generation"))

    # ---- dynamic batching (predict / infer / embed) ------------------------------------------
    def _classify(self, job: Job) -> None:
        """Decide which requests may share a batch, and how many rows each contributes."""
        msg = job.msg
        work = msg.work
        if isinstance(work, Predict):
            job.data = work.request.instances
            job.rows = len(job.data)
            job.group = ("predict", msgspec.json.encode(work.request.parameters))
        elif isinstance(work, Infer):
            if self.infer_override or not self.model.batching:
                job.group = ("infer-solo", msg.id)
                return
            job.data = infer_to_instances(work.request)
            job.rows = len(job.data)
            job.group = ("predict", msgspec.json.encode(work.request.parameters))
        elif isinstance(work, Embed):
            req = work.request
            job.data = req.texts if req.texts is not None else req.token_ids
            job.rows = len(job.data or [])
            job.group = ("embed", req.normalize, req.texts is None)
        else:
            raise InvalidInput(f"unknown request type {type(work).__name__}")
        if not self.model.batching:
            job.group = (job.group, msg.id)

    def _batch_due(self) -> bool:
        head = self.pending[0]
        if not self.model.batching or head.group[0] == "infer-solo":
            return True
        rows = sum(j.rows for j in self.pending if j.group == head.group)
        if rows >= self.spec.max_batch_size:
            return True
        in_flight, seen = self.hint
        if in_flight and len(self.pending) >= in_flight - (self.results_sent - seen):
            return True  # every request the server has in flight is here: nobody to wait for
        return time.monotonic() - head.arrived >= self.spec.max_batch_wait_ms / 1000

    def _run_batch(self) -> None:
        head = self.pending[0]
        batch: list[Job] = []
        rows = 0
        for job in list(self.pending):
            if job.group != head.group:
                continue
            if batch and rows + job.rows > self.spec.max_batch_size:
                break
            batch.append(job)
            rows += job.rows
            self.pending.remove(job)
        self._execute(batch)

    def _execute(self, batch: list[Job]) -> None:
        work = batch[0].msg.work
        started = time.monotonic()
        failure: SteadyError | None = None
        self.channel.send(Busy(rows=sum(job.rows for job in batch), requests=len(batch)))
        try:
            if isinstance(work, Infer) and batch[0].group[0] == "infer-solo":
                results = [self._infer_solo(batch[0])]
            elif isinstance(work, Embed):
                results = self._embed(batch)
            else:
                results = self._predict(batch)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - isolate, then fail only the culprit
            if len(batch) == 1:
                log.debug("request failed:\n%s", traceback.format_exc())
            failure = as_error(exc)
            # Leave the except block before re-running: the traceback pins the failed call's
            # frames (e.g. the memory a MemoryError was raised over) until it is cleared.
            del exc
        if failure is not None:
            if len(batch) == 1:
                self._fail(batch[0], failure)
                return
            log.info("batch of %d failed (%s); re-running alone", len(batch), failure.message)
            for job in batch:
                self._drain_inbox(0)  # honour aborts that arrived meanwhile
                if any(job is j for j in self._aborted_jobs(batch)):
                    continue
                self._execute([job])
            return
        for job, result in zip(batch, results, strict=True):
            result.queue_s = max(0.0, started - job.arrived)
            self.results_sent += 1
            self.channel.send(result)

    def _aborted_jobs(self, batch: list[Job]) -> list[Job]:
        return [j for j in batch if j.msg.id in self.aborted]

    def _predict(self, batch: list[Job]) -> list[Result]:
        instances: list[Any] = []
        for job in batch:
            instances.extend(job.data)
        model = self.model
        x = call_maybe_async(self.loop, model.preprocess, instances)
        if self.predict_takes_parameters:
            params = _parameters(batch[0])
            if isinstance(batch[0].msg.work, Infer):
                params = model.infer_parameters(params)
            y = call_maybe_async(self.loop, model.predict, x, params)
        else:
            y = call_maybe_async(self.loop, model.predict, x)
        y = call_maybe_async(self.loop, model.postprocess, y)
        y = list(y) if not isinstance(y, list) else y
        if len(y) != len(instances):
            raise ModelError(f"model returned {len(y)} predictions for {len(instances)} instances")
        out: list[Result] = []
        start = 0
        for job in batch:
            part = y[start : start + job.rows]
            start += job.rows
            work = job.msg.work
            if isinstance(work, Infer):
                resp = predictions_to_infer(self.model, work.request, part)
                out.append(Result(id=job.msg.id, output=Inferred(resp)))
            else:
                response = PredictResponse(predictions=to_jsonable(part))
                out.append(Result(id=job.msg.id, output=Predicted(response)))
        return out

    def _infer_solo(self, job: Job) -> Result:
        work = job.msg.work
        assert isinstance(work, Infer)
        resp = call_maybe_async(self.loop, self.model.infer, work.request)
        if not isinstance(resp, InferResponse):
            raise ModelError("model.infer must return an InferResponse")
        resp.model_name = self.model.name
        resp.id = work.request.id
        return Result(id=job.msg.id, output=Inferred(resp))

    def _embed(self, batch: list[Job]) -> list[Result]:
        work = batch[0].msg.work
        assert isinstance(work, Embed)
        head = work.request
        merged: list[Any] = []
        for job in batch:
            merged.extend(job.data)
        if head.texts is not None:
            req = EmbedRequest(texts=merged, normalize=head.normalize)
        else:
            req = EmbedRequest(token_ids=merged, normalize=head.normalize)
        resp = call_maybe_async(self.loop, self.model.embed, req)
        if len(resp.embeddings) != len(merged):
            raise ModelError("model returned the wrong number of embeddings")
        out = []
        start = 0
        total = max(1, len(merged))
        for job in batch:
            part = resp.embeddings[start : start + job.rows]
            start += job.rows
            tokens = resp.prompt_tokens * job.rows // total
            response = EmbedResponse(embeddings=part, prompt_tokens=tokens)
            out.append(Result(id=job.msg.id, output=Embedded(response)))
        return out

    # ---- continuous batching (generate) ------------------------------------------------------
    def _gen_step(self) -> None:
        generator = self.generator
        assert generator is not None
        joined: list[tuple[int, float]] = []
        while self.gen_waiting and len(self.gen_running) < self.spec.max_num_seqs:
            job = self.gen_waiting.popleft()
            joined.append((job.msg.id, max(0.0, time.monotonic() - job.arrived)))
            work = job.msg.work
            assert isinstance(work, Generate)
            try:
                if self._add_arrival:
                    add: Any = generator.add  # an optional keyword of the protocol
                    add(str(job.msg.id), work.request, arrived=job.arrived)
                else:
                    generator.add(str(job.msg.id), work.request)
            except Exception as exc:  # noqa: BLE001 - bad request fails alone
                self._fail(job, exc)
                continue
            self.gen_running[job.msg.id] = job
        if not generator.has_work():
            return
        try:
            results = generator.step()
        except Exception as exc:  # noqa: BLE001
            log.error("generation step failed:\n%s", traceback.format_exc())
            for job in list(self.gen_running.values()):
                self._fail(job, exc)
            self.gen_running.clear()
            generator.reset()
            return
        items: list[tuple[int, TokenDelta]] = []
        for rid_s, item in results:
            rid = int(rid_s)
            job_or_none = self.gen_running.get(rid)
            if job_or_none is None:
                continue  # aborted meanwhile
            if isinstance(item, BaseException):
                self.gen_running.pop(rid, None)
                self._fail(job_or_none, item)
                continue
            if item.finish_reason is not None:
                self.gen_running.pop(rid, None)
            items.append((rid, item))
        if items or joined:
            self.channel.send(Deltas(items=items, started=joined))


def _accepts_parameters(fn: Any) -> bool:
    """``predict(self, inputs, parameters)``: the request's parameters are passed too (requests
    are only batched together when their parameters are equal)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def _accepts_keyword(fn: Any, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _parameters(job: Job) -> dict[str, Any]:
    work = job.msg.work
    if isinstance(work, (Predict, Infer)):
        return dict(work.request.parameters)
    return {}

"""Messages between the server process and a model worker, and their framing.

Frames are a 4-byte big-endian length followed by a msgpack body (msgspec, tagged unions), over a
Unix socketpair. Nothing is pickled: a client's payload is data on both sides.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Any, Union

import msgspec

from steadyserve.config import ModelSpec
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

MAX_FRAME = 1 << 31
_HEADER = struct.Struct(">I")


# ---- server → worker --------------------------------------------------------------------------
class Load(msgspec.Struct, tag=True):
    spec: ModelSpec


class Predict(msgspec.Struct, tag=True):
    request: PredictRequest


class Infer(msgspec.Struct, tag=True):
    request: InferRequest


class Embed(msgspec.Struct, tag=True):
    request: EmbedRequest


class Generate(msgspec.Struct, tag=True):
    request: GenerateRequest


#: the work of one request (a tagged union: exactly one payload, its type is its kind)
Work = Union[Predict, Infer, Embed, Generate]
#: the unary kinds (predict/infer/embed: one result each; the dynamic batcher's)
UNARY = (Predict, Infer, Embed)


class Submit(msgspec.Struct, tag=True):
    id: int
    work: Work
    timeout_s: float | None
    #: predict/infer/embed requests the server has in flight for this model, this one included,
    #: and how many unary results it had received from the worker when it sent this: with its
    #: own count of results sent, the worker knows how many of those requests it has not
    #: finished; once all of them are queued, no batch-mate is on its way - run, don't wait.
    in_flight: int = 0
    results_seen: int = 0
    #: the server's request id (X-Request-ID), for the worker's log lines about this request
    request_id: str | None = None


class Abort(msgspec.Struct, tag=True):
    id: int


class Shutdown(msgspec.Struct, tag=True):
    pass


# ---- worker → server --------------------------------------------------------------------------
class Ready(msgspec.Struct, tag=True):
    info: ModelInfo


class LoadFailed(msgspec.Struct, tag=True):
    message: str


class Predicted(msgspec.Struct, tag=True):
    response: PredictResponse


class Inferred(msgspec.Struct, tag=True):
    response: InferResponse


class Embedded(msgspec.Struct, tag=True):
    response: EmbedResponse


Output = Union[Predicted, Inferred, Embedded]


class Result(msgspec.Struct, tag=True):
    id: int
    output: Output
    #: seconds the request waited in the worker's queue before its batch started
    queue_s: float = 0.0


class Deltas(msgspec.Struct, tag=True):
    """Token deltas for several sequences from one engine step."""

    items: list[tuple[int, TokenDelta]]
    #: (id, seconds queued) for sequences that joined the running batch in this step
    started: list[tuple[int, float]] = []


class Failed(msgspec.Struct, tag=True):
    id: int
    error: str  # errors.SteadyError subclass name
    message: str


class Heartbeat(msgspec.Struct, tag=True):
    """The worker's generation state (sent between steps). Predict/infer/embed work is counted
    by the server itself, from its requests in flight and :class:`Busy`."""

    #: sequences in the running generation batch
    running: int = 0
    #: generation requests waiting for a slot
    queued: int = 0
    stats: dict[str, int] = {}


class Busy(msgspec.Struct, tag=True):
    """A predict batch of ``rows`` rows (``requests`` requests) starts: the hang watchdog allows
    it ``rows`` times the hang timeout of silence (a batch of slow rows is slow, not hung)."""

    rows: int
    requests: int = 1


class Progress(msgspec.Struct, tag=True):
    """Load progress, forwarded to the server log."""

    message: str


ToWorker = Union[Load, Submit, Abort, Shutdown]
ToServer = Union[Ready, LoadFailed, Result, Deltas, Failed, Heartbeat, Busy, Progress]

_encoder = msgspec.msgpack.Encoder()
to_worker_decoder = msgspec.msgpack.Decoder(ToWorker)
to_server_decoder = msgspec.msgpack.Decoder(ToServer)


def frame(message: Any) -> bytes:
    body = _encoder.encode(message)
    return _HEADER.pack(len(body)) + body


def parse_header(header: bytes) -> int:
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes exceeds the limit")
    return int(length)


class BlockingChannel:
    """The worker's side: blocking reads from one thread, locked writes from any."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def send(self, message: ToServer) -> None:
        data = frame(message)
        with self._lock:
            self._sock.sendall(data)

    def _read_exact(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = _oom_retry(self._sock.recv, min(n, 1 << 20))
            if not chunk:
                raise EOFError("server closed the channel")
            chunks.append(chunk)
            n -= len(chunk)
        return _oom_retry(b"".join, chunks)

    def recv(self) -> ToWorker:
        length = parse_header(self._read_exact(_HEADER.size))
        body = self._read_exact(length)
        return _oom_retry(to_worker_decoder.decode, body)  # type: ignore[no-any-return]


def _oom_retry(fn: Any, *args: Any, attempts: int = 500) -> Any:
    """Retry an allocation that failed because the model (on another thread) is exhausting the
    worker's memory limit: the model's MemoryError fails its request and frees the memory; the
    IPC reader must not die meanwhile. Each step is retried whole, so no bytes are lost."""
    for _ in range(attempts - 1):
        try:
            return fn(*args)
        except MemoryError:
            time.sleep(0.01)
    return fn(*args)

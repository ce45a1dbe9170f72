"""A fake OpenAI-compatible server with injectable faults, for the probe's verdict tests.

Plain asyncio HTTP/1.1 (keep-alive, chunked SSE) on 127.0.0.1, port chosen by the OS, in a
background thread. It serves one model, ``fake``, that completes but cannot chat (like T5).
Healthy, it passes the whole probe battery; each fault makes one kind of verdict fire.

==========================  ===========================================================
fault                       behaviour
==========================  ===========================================================
``500_bad_temperature``     an out-of-range / non-finite temperature answers 500, not 400
``hang_bad_top_p``          an out-of-range top_p never gets an answer
``drop_malformed``          a body that is not JSON: connection closed, no answer
``ok_negative_max_tokens``  max_tokens < 1 is served with 200
``poison_nan``              after a NaN temperature every completion answers 500, while
                            readiness stays 200
``slow_after_bad_stop``     after a mistyped ``stop`` every completion takes 3 s more
``unready_after_huge_n``    after n out of range, readiness says 503 (requests still work)
``close_after_error``       after any 4xx the connection is closed, without saying so
``no_done``                 streams end without ``data: [DONE]``
``v2_only``                 an Open Inference Protocol V2 server instead (like Triton): one
                            FP32 model ``fake``, listed only by the repository index
``v2_500_bad_shape``        (V2) a shape that does not match the data answers 500
``early_413``               a body over 1 MB: 413 and close at once, without reading it
``chat_kills``              KServe's T5 failure: chat answers 200, then every completion
                            hangs while readiness stays 200
==========================  ===========================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
from typing import Any

MODEL = "fake"
HANG = object()
DROP = object()


class FakeServer:
    def __init__(self, *faults: str) -> None:
        self.faults = set(faults)
        self.poisoned = self.slow = self.unready = self.dead = False
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.requests = 0
        self.posts = 0
        #: every header value received (to show what the probe sent)
        self.header_values: set[str] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeServer:
        started = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self.loop = loop
            server = loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
            self.server = server
            self.port = server.sockets[0].getsockname()[1]
            started.set()
            loop.run_forever()
            server.close()
            for task in list(self.tasks):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0.05))
            loop.close()

        self.thread = threading.Thread(target=serve, name="probe-fake", daemon=True)
        self.thread.start()
        assert started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.loop is not None and self.thread is not None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    # ---- HTTP ---------------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                length = int(headers.get("content-length", 0))
                if length > 1_000_000 and "early_413" in self.faults:
                    data = json.dumps(error("too large")).encode()
                    writer.write(
                        b"HTTP/1.1 413 X\r\nconnection: close\r\n"
                        + f"content-length: {len(data)}\r\n\r\n".encode()
                        + data
                    )
                    await writer.drain()
                    writer.transport.abort()  # unread data: the client may see a reset
                    return
                body = await reader.readexactly(length)
                self.requests += 1
                self.posts += method == "POST"
                self.header_values.update(headers.values())
                answer = await self._handle(method, path, body)
                if answer is HANG:
                    await asyncio.Event().wait()
                if answer is DROP:
                    writer.transport.abort()
                    return
                status, payload, stream = answer
                if stream is not None:
                    await self._stream(writer, stream)
                    continue
                data = json.dumps(payload).encode()
                writer.write(
                    f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(data)}\r\n\r\n".encode()
                    + data
                )
                await writer.drain()
                if status >= 400 and "close_after_error" in self.faults:
                    writer.transport.abort()
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:  # the fake is shutting down (a hung request)
            pass
        finally:
            self.tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _stream(self, writer: asyncio.StreamWriter, events: list[str]) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for event in events:
            data = f"data: {event}\n\n".encode()
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    # ---- the model ----------------------------------------------------------------------

    async def _handle(self, method: str, path: str, body: bytes) -> Any:
        if "v2_only" in self.faults:
            return self._v2(method, path, body)
        if method == "GET":
            if path == "/v1/models":
                return 200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]}, None
            if path == "/v2/health/ready":
                ready = not self.unready
                return (200 if ready else 503), {"ready": ready}, None
            return 404, {"error": "not found"}, None
        if self.dead and method == "POST":
            return HANG
        if path == "/v1/chat/completions":
            if "chat_kills" in self.faults:
                self.dead = True
                message = {"role": "assistant", "content": ""}
                return 200, {"object": "chat.completion", "choices": [{"message": message}]}, None
            return 400, error("model fake cannot chat: no chat template"), None
        if path != "/v1/completions":
            return 404, error("unknown route"), None
        if len(body) > 1_000_000:
            return 413, error("body too large"), None
        try:
            req = json.loads(body.decode("utf-8"))
        except ValueError:
            return DROP if "drop_malformed" in self.faults else (400, error("not JSON"), None)
        if not isinstance(req, dict):
            return 400, error("not an object"), None
        return await self._complete(req)

    async def _complete(self, req: dict[str, Any]) -> Any:
        if req.get("model") != MODEL:
            return 404, error("no such model"), None
        bad = validate(req)
        if bad == "temperature":
            if "poison_nan" in self.faults and not math.isfinite(req["temperature"]):
                self.poisoned = True
            if "500_bad_temperature" in self.faults:
                return 500, error("internal error"), None
        if bad == "top_p" and "hang_bad_top_p" in self.faults:
            return HANG
        if bad == "stop" and "slow_after_bad_stop" in self.faults:
            self.slow = True
        if bad == "n" and "unready_after_huge_n" in self.faults:
            self.unready = True
        if (
            bad == "max_tokens"
            and "ok_negative_max_tokens" in self.faults
            and isinstance(req.get("max_tokens"), int)
        ):
            bad = None
        if bad is not None:
            return 400, error(f"invalid {bad}"), None
        if self.poisoned:
            return 500, error("the generation thread is dead"), None
        if self.slow:
            await asyncio.sleep(3)
        if req.get("stream"):
            chunk = {"object": "text_completion", "choices": [{"index": 0, "text": "hi"}]}
            events = [json.dumps(chunk)] * 2
            return 200, None, events if "no_done" in self.faults else [*events, "[DONE]"]
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        choice = {"index": 0, "text": " world", "finish_reason": "length"}
        return 200, {"object": "text_completion", "choices": [choice], "usage": usage}, None

    def _v2(self, method: str, path: str, body: bytes) -> Any:
        meta = {"name": MODEL, "versions": ["1"], "platform": "fake"}
        tensor = {"name": "x", "datatype": "FP32", "shape": [-1]}
        routes = {
            ("GET", "/v2"): {"name": "fakev2", "version": "1", "extensions": []},
            ("GET", "/v2/health/live"): {"live": True},
            ("GET", "/v2/health/ready"): {"ready": True},
            ("GET", f"/v2/models/{MODEL}/ready"): {"ready": True},
            ("GET", f"/v2/models/{MODEL}"): {**meta, "inputs": [tensor], "outputs": [tensor]},
            ("POST", "/v2/repository/index"): [{"name": MODEL, "state": "READY"}],
        }
        if (method, path) in routes:
            return 200, routes[method, path], None
        if path != f"/v2/models/{MODEL}/infer" or method != "POST":
            return 404, {"error": "not found"}, None
        try:
            req = json.loads(body.decode("utf-8"))
            (x,) = req["inputs"]
            shape, data = x["shape"], x["data"]
            if x["name"] != "x" or x["datatype"] != "FP32" or not isinstance(data, list):
                raise ValueError("bad input")
            if not all(_number(v) for v in data) or not all(
                isinstance(d, int) and d >= 0 for d in shape
            ):
                raise ValueError("bad data or shape")
        except (ValueError, KeyError, TypeError, AttributeError):
            return 400, {"error": "invalid request"}, None
        if math.prod(shape) != len(data):
            return (500 if "v2_500_bad_shape" in self.faults else 400), {"error": "shape"}, None
        out = {"name": "y", "datatype": "FP32", "shape": shape, "data": [2 * v for v in data]}
        return 200, {"model_name": MODEL, "outputs": [out]}, None


def error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error"}}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate(req: dict[str, Any]) -> str | None:
    """The name of the first invalid field, or None."""
    prompt = req.get("prompt")
    if not isinstance(prompt, str) or len(prompt) > 10_000 or "\ud800" in prompt:
        return "prompt"
    max_tokens = req.get("max_tokens", 16)
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= 1024:
        return "max_tokens"
    temperature = req.get("temperature", 1.0)
    if not _number(temperature) or not 0 <= temperature <= 2:
        return "temperature"
    top_p = req.get("top_p", 1.0)
    if not _number(top_p) or not 0 < top_p <= 1:
        return "top_p"
    if not isinstance(req.get("n", 1), int) or not 1 <= req.get("n", 1) <= 4:
        return "n"
    if not isinstance(req.get("stop", []), (str, list)):
        return "stop"
    return None

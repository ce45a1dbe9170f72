"""Server-sent events: encoding and a streaming response that notices client disconnects.

Starlette's ``StreamingResponse`` only notices a disconnect when a send fails (ASGI 2.4), so a
stream still waiting for its first token - queued behind other requests - would never be
cancelled. :class:`EventStreamResponse` always runs a disconnect listener next to the body and
cancels the body (closing its async generator, which aborts the sequence in the worker) as soon as
the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

log = logging.getLogger("steadyserve.sse")

DONE = b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    """One SSE ``data:`` event carrying a JSON object."""
    return (
        b"data: "
        + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        + b"\n\n"
    )


class EventStreamResponse(Response):
    """An ASGI response streaming ``body`` as ``text/event-stream``.

    ``on_close`` (if given) runs however the response ends - finished, failed, or the client
    left - even when ``body`` was never started.
    """

    def __init__(
        self,
        body: AsyncIterator[bytes],
        *,
        on_close: Callable[[], Awaitable[None]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=200, media_type="text/event-stream")
        self.stream = body
        self.on_close = on_close
        self.extra_headers = headers or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ] + [(k.lower().encode(), v.encode()) for k, v in self.extra_headers.items()]

        async def pump() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async for chunk in self.stream:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                # Neither a send to a client that has gone (uvicorn drops it) nor a get from a
                # non-empty queue yields to the loop: without this, a backlog of buffered
                # events would be written out in one go, starving every other request and the
                # disconnect listener below.
                await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def listen() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return

        writer = asyncio.ensure_future(pump())
        watcher = asyncio.ensure_future(listen())
        try:
            done, _ = await asyncio.wait({writer, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if writer in done:
                watcher.cancel()
                try:
                    writer.result()
                except OSError:
                    pass  # the client went away while we wrote
            else:
                writer.cancel()  # client disconnected: stop generating
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer
        finally:
            for task in (writer, watcher):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            aclose = getattr(self.stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            if self.on_close is not None:
                try:
                    await self.on_close()
                except Exception:  # pragma: no cover - cleanup never masks the response
                    log.exception("stream cleanup failed")

"""Helpers shared by the HTTP routes: body parsing, deadlines, cancellation on disconnect."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.requests import Request

from steadyserve.errors import InvalidInput

T = TypeVar("T")

TIMEOUT_HEADER = "x-request-timeout"


class ClientDisconnected(Exception):
    """The client went away before the response was ready; the work was cancelled."""


async def read_json(request: Request) -> Any:
    return parse_json_bytes(await request.body())


def parse_json_bytes(body: bytes) -> Any:
    """Parse a JSON body (or the JSON header of a binary-extension body); errors are 400s."""
    if not body:
        raise InvalidInput("request body is empty; expected JSON")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput("request body is nested too deeply") from None


def request_timeout(request: Request) -> float | None:
    """Per-request deadline from ``X-Request-Timeout`` (seconds); None → server default."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"{TIMEOUT_HEADER} must be a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise InvalidInput(f"{TIMEOUT_HEADER} must be a positive number of seconds")
    return value


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``; if the client disconnects first, cancel it (which aborts the request in the
    engine) and raise :class:`ClientDisconnected`. Call after the body has been read."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    if task in done:
        watcher.cancel()
        return task.result()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass
    raise ClientDisconnected()

"""Helpers shared by the HTTP routes: body parsing, deadlines, cancellation on disconnect."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse

from steadyserve.errors import InvalidInput

T = TypeVar("T")

TIMEOUT_HEADER = "x-request-timeout"


class ClientDisconnected(Exception):
    """The client went away before the response was ready; the work was cancelled."""


#: bodies larger than this are parsed and validated in a worker thread, not on the event loop
#: (an 8 MB body parsed on the loop held health probes for a second under load)
OFF_LOOP_BYTES = 64 * 1024


async def read_json(request: Request) -> Any:
    body = await request.body()
    return await off_loop(len(body), parse_json_bytes, body)


async def off_loop(size: int, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a thread when ``size`` (the body's bytes) passes :data:`OFF_LOOP_BYTES`,
    else inline (a thread hop costs more than parsing a small body)."""
    if size > OFF_LOOP_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


#: a ``\uD800``-``\uDFFF`` escape: JSON can spell a lone UTF-16 surrogate, Unicode cannot
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def parse_json_bytes(body: bytes) -> Any:
    """Parse a JSON body (or the JSON header of a binary-extension body); errors are 400s.

    Refused besides malformed JSON: nesting too deep for the parser, integers too long to
    convert (Python's 4300-digit limit), and strings holding a lone UTF-16 surrogate
    (``"\ud800"`` parses, but is not text: no tokenizer, encoder or codec downstream takes it).
    ``NaN`` / ``Infinity`` literals are accepted (Python clients send them for such floats)."""
    if not body:
        raise InvalidInput("request body is empty; expected JSON")
    try:
        # msgspec first: several times faster than json, and a parse holds the GIL (so the
        # event loop) for its whole length even in a thread. Anything it refuses (NaN
        # literals, lone surrogates, deep nesting, numbers past a float) is parsed again by
        # json, whose answers (values or errors) stay the reference.
        value = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        value = _parse_json_stdlib(body)
    if _SURROGATE_ESCAPE.search(body) is not None:
        _refuse_lone_surrogates(value)
    return value


def _parse_json_stdlib(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput("request body is nested too deeply") from None
    except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string ..."
        raise InvalidInput(
            f"request body has a number that cannot be read: {str(exc)[:80]}"
        ) from None


def _refuse_lone_surrogates(value: Any) -> None:
    """400 if any string (key or value) in ``value`` is not encodable Unicode. Iterative: the
    parser already bounded the depth, but a walk must not recurse on it either."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            texts: list[str] = [item]
        elif isinstance(item, dict):
            texts = [k for k in item if isinstance(k, str)]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidInput(
                    "request body has a string with a lone UTF-16 surrogate (\\ud800-\\udfff "
                    "not in a pair): not valid Unicode text"
                ) from None


class DataJSONResponse(JSONResponse):
    """JSON for inference results: a model's NaN / Infinity outputs are written as the
    ``NaN`` / ``Infinity`` literals that Python's ``json`` (and so tritonclient) reads, rather
    than failing the response (strict JSON has no spelling for them)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(
            content, ensure_ascii=False, allow_nan=True, separators=(",", ":")
        ).encode("utf-8")


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

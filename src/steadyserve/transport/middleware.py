"""HTTP middleware, all pure ASGI (``BaseHTTPMiddleware`` would break streaming and disconnect
detection): request ids, access log and metrics, API keys, body and header limits, CORS.

Order, outermost first (:func:`install`):

1. :class:`RequestContextMiddleware` - ``X-Request-ID`` (the client's if it is printable ASCII
   of at most 128 characters, else 32 fresh random hex digits) set in ``logs.request_id_var`` for the
   request's duration and returned on *every* response (errors, 404s, 401s, 413s and 500s
   included); header count bound (431); one access-log line and the request metrics per request;
   an exception no handler took becomes a 500 here, with the id, never a traceback.
2. ``CORSMiddleware`` - only with ``--cors_origins`` (off by default).
3. :class:`~steadyserve.transport.auth.AuthMiddleware` - only when API keys are configured.
4. :class:`BodyLimitMiddleware` - 413 as soon as ``Content-Length`` is too large, or as soon as
   a chunked body passes the limit while it streams in; nothing is buffered here.
5. :class:`DecompressMiddleware` - ``Content-Encoding: gzip`` / ``deflate`` request bodies
   decompressed as they stream in (every member of a multi-member gzip body; junk after the
   end is a 400), the decompressed size held to the same limit (413).

The header *bytes* bound lives one level lower, in the HTTP parser (:func:`http_protocol`),
because by the time ASGI sees headers they are already in memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import zlib
from typing import Any

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from steadyserve.errors import PayloadTooLarge, ServiceUnavailable, bounded
from steadyserve.logs import request_id_var
from steadyserve.transport.auth import AuthMiddleware
from steadyserve.transport.context import ServerContext
from steadyserve.transport.errors import error_response
from steadyserve.transport.metrics import MODEL_SCOPE_KEY, UNMATCHED_ROUTE, Metrics

access_log = logging.getLogger("steadyserve.access")
log = logging.getLogger("steadyserve.http")

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_CHARS = 128
#: most request headers accepted (431 past it)
MAX_HEADERS = 100
#: largest request line + header block, enforced by the HTTP parser (431 / 400 past it)
MAX_HEADER_BYTES = 64 * 1024
#: longest a request's line + headers may take to arrive, or its body may stall (seconds)
READ_TIMEOUT_S = 30.0


#: health probes and scrapes: their access lines are DEBUG (a failing one stays INFO)
PROBE_ROUTES = frozenset(
    {
        "/",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/versions/{version}/ready",
        "/v1/models/{name}",
        "/metrics",
    }
)


def valid_request_id(value: bytes) -> str | None:
    """The client's request id if it is 1-128 printable ASCII characters, else None."""
    if not 0 < len(value) <= MAX_REQUEST_ID_CHARS:
        return None
    if any(b < 0x20 or b > 0x7E for b in value):
        return None
    return value.decode("ascii")


def route_template(scope: Scope) -> str:
    """The matched route's path template (bounded label set), or ``<unmatched>``."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class RequestContextMiddleware:
    """Request id, header-count bound, access log, request metrics, last-resort 500."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid: str | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = valid_request_id(value)
                break
        rid = rid or os.urandom(16).hex()  # as random as uuid4().hex, cheaper
        rid_header = (b"x-request-id", rid.encode("ascii"))
        token = request_id_var.set(rid)
        status = 499  # until a response starts: the client left before one was sent
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = int(message["status"])
                headers = [
                    (k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"
                ]
                headers.append(rid_header)
                message = {**message, "headers": headers}
            await send(message)

        try:
            if len(scope["headers"]) > MAX_HEADERS:
                exc = StarletteHTTPException(
                    431, f"too many request headers ({len(scope['headers'])} > {MAX_HEADERS})"
                )
                await error_response(Request(scope), exc)(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if response_started:  # too late for a status: uvicorn drops the connection
                log.error("error after the response started", exc_info=exc)
                raise
            await error_response(Request(scope), exc)(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = route_template(scope)
            model = scope.get(MODEL_SCOPE_KEY) or (scope.get("path_params") or {}).get("name")
            if self.metrics is not None:
                self.metrics.observe_request(scope["method"], route, model, status, elapsed)
            shown = route if route != UNMATCHED_ROUTE else repr(bounded(scope["path"], 200))
            # probes (Kubernetes asks every few seconds) at DEBUG unless they fail
            level = logging.DEBUG if route in PROBE_ROUTES and status < 400 else logging.INFO
            model_name = bounded(str(model), 128) if model else None
            access_log.log(
                level,
                "%s %s %d %.1fms",
                scope["method"],
                shown,
                status,
                elapsed * 1000.0,
                extra={
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000.0, 3),
                    **({"model": model_name} if model_name else {}),
                },
            )
            request_id_var.reset(token)


class ShuttingDownMiddleware:
    """While the server drains, a new request (other than a probe or a scrape) is a 503 "the
    server is shutting down" with Retry-After, before it reaches a route."""

    def __init__(self, app: ASGIApp, registry: Any) -> None:
        self.app = app
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.registry.draining and not _is_probe(scope["path"]):
            exc = ServiceUnavailable("the server is shutting down", retry_after=5)
            await error_response(Request(scope), exc)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _is_probe(path: str) -> bool:
    return path in ("/", "/metrics") or path.startswith("/v2/health/") or path.endswith("/ready")


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``: at once from ``Content-Length``, or while a chunked
    body streams in (the route's read fails with 413). The 413 closes the connection so the
    rest of an oversized body is never read."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> str:
        return f"request body exceeds the limit of {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    response = error_response(Request(scope), PayloadTooLarge(self._too_large()))
                    response.headers["Connection"] = "close"
                    await response(scope, receive, send)
                    return
                break
        received = 0
        exceeded = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    # an HTTPException so FastAPI's body parsing re-raises it instead of
                    # turning it into a 400
                    raise StarletteHTTPException(413, self._too_large())
            return message

        async def send_close_after_413(message: Message) -> None:
            if message["type"] == "http.response.start" and exceeded:
                message = {
                    **message,
                    "headers": [*message.get("headers", ()), (b"connection", b"close")],
                }
            await send(message)

        await self.app(scope, limited_receive, send_close_after_413)


#: request ``Content-Encoding`` values that are decompressed (tritonclient's
#: ``request_compression_algorithm``); zlib's 32 + MAX_WBITS reads both gzip and zlib framing
_DECODERS = {
    b"gzip": 32 + zlib.MAX_WBITS,
    b"x-gzip": 32 + zlib.MAX_WBITS,
    b"deflate": 32 + zlib.MAX_WBITS,
}


class DecompressMiddleware:
    """Request bodies sent with ``Content-Encoding: gzip`` or ``deflate`` are decompressed as
    they stream in, and the *decompressed* size is held to ``max_bytes`` (413: a small
    compressed body cannot expand into gigabytes). A body that is not valid for its encoding
    is a 400; another encoding (``br``, ``zstd``, a list) is a 415. The route sees the plain
    body, without ``Content-Encoding`` / ``Content-Length``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        encoding = None
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"content-encoding":
                    encoding = value.strip().lower()
                    break
        if encoding in (None, b"", b"identity"):
            await self.app(scope, receive, send)
            return
        wbits = _DECODERS.get(encoding or b"")
        if wbits is None:
            shown = bounded((encoding or b"").decode("latin-1"), 50)
            exc = StarletteHTTPException(
                415, f"Content-Encoding {shown!r} is not supported (use gzip, deflate or none)"
            )
            await error_response(Request(scope), exc)(scope, receive, send)
            return
        label = (encoding or b"").decode("latin-1")
        decoder = zlib.decompressobj(wbits)
        produced = 0
        limit = self.max_bytes

        multi_member = encoding in (b"gzip", b"x-gzip")

        def expand(data: bytes) -> bytes:
            nonlocal produced, decoder
            out = []
            try:
                while data:
                    if decoder.eof:
                        # RFC 1952: a gzip body may hold several members, one after another
                        # (all decoded); anything else after the end is refused, not dropped
                        if not multi_member:
                            raise StarletteHTTPException(
                                400, f"request body has data after the end of the {label} stream"
                            )
                        decoder = zlib.decompressobj(wbits)
                    piece = decoder.decompress(data, limit - produced + 1)
                    produced += len(piece)
                    if produced > limit:
                        raise StarletteHTTPException(
                            413,
                            f"request body exceeds the limit of {limit} bytes once decompressed",
                        )
                    out.append(piece)
                    data = decoder.unused_data if decoder.eof else decoder.unconsumed_tail
            except zlib.error as exc:
                raise StarletteHTTPException(
                    400, f"request body is not valid {label} data: {exc}"
                ) from None
            return b"".join(out)

        async def decoded_receive() -> Message:
            message = await receive()
            if message["type"] != "http.request":
                return message
            body = expand(message.get("body", b""))
            if not message.get("more_body", False) and not decoder.eof:
                raise StarletteHTTPException(400, f"request body is truncated {label} data")
            return {**message, "body": body}

        # in place, not a copy: the outer middleware reads what the router writes into the
        # scope (the route template, the model) for the access log and the metrics
        scope["headers"] = [
            (k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")
        ]
        await self.app(scope, decoded_receive, send)


def http_protocol(
    max_header_bytes: int = MAX_HEADER_BYTES, read_timeout_s: float = READ_TIMEOUT_S
) -> Any:
    """The uvicorn ``http`` protocol: httptools with the request line + headers bounded to
    ``max_header_bytes`` (431 and close past it; plain httptools buffers any size), or ``"h11"``
    (bound by ``h11_max_incomplete_event_size``) when httptools is not installed.

    Read timeouts (uvicorn has none before the first request, nor inside one): a connection
    closes when a request's line and headers have not all arrived ``read_timeout_s`` after its
    first byte (or after the connection opened, for one that sends nothing), or when its body
    stalls that long (not while the server itself paused reading). Between requests,
    uvicorn's keep-alive timeout applies."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - uvicorn without [standard]
        return "h11"

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        _in_headers = False
        _in_body = False
        _header_bytes = 0
        _read_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_read_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_read_timer()
            super().connection_lost(exc)

        def _arm_read_timer(self) -> None:
            self._cancel_read_timer()
            self._read_timer = self.loop.call_later(read_timeout_s, self._read_timed_out)

        def _cancel_read_timer(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

        def _read_timed_out(self) -> None:
            self._read_timer = None
            if self.transport.is_closing():
                return
            if self._in_body and self.flow is not None and self.flow.read_paused:
                self._arm_read_timer()  # the server stopped reading, not the client sending
                return
            log.info("closing a connection that sent no complete request in %gs", read_timeout_s)
            self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_headers = True
            self._header_bytes = 0

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._in_body = True
            self._arm_read_timer()  # from here: the body's idle timeout
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_body = False
            self._cancel_read_timer()
            super().on_message_complete()

        def data_received(self, data: bytes) -> None:
            if self._in_body or self._read_timer is None:
                self._arm_read_timer()  # a body's next chunk, or a new request's first byte
            idle = not self._in_headers and (self.cycle is None or self.cycle.response_complete)
            if idle:
                # a new request starts with this chunk: its header block may be whole in it
                end = data.find(b"\r\n\r\n")
                if (len(data) if end < 0 else end) > max_header_bytes:
                    self._refuse()
                    return
            super().data_received(data)
            if not self._in_headers or self.transport.is_closing():
                return
            self._header_bytes += len(data)
            if self._header_bytes > max_header_bytes:
                self._refuse()

        def _refuse(self) -> None:
            msg = b'{"error": "request line and headers too large"}'
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: application/json\r\n"
                b"x-request-id: " + os.urandom(16).hex().encode("ascii") + b"\r\n"
                b"content-length: " + str(len(msg)).encode("ascii") + b"\r\n"
                b"connection: close\r\n\r\n" + msg
            )
            self.transport.close()
            self._in_headers = False

    return BoundedHttpToolsProtocol


def install(app: FastAPI, ctx: ServerContext) -> None:
    """Add ``/metrics`` and the middleware stack (see the module docstring for the order)."""
    metrics = Metrics(ctx.registry)
    ctx.metrics = metrics
    ctx.registry.on_engine.append(metrics.attach)
    for engine in ctx.registry.engines():
        metrics.attach(engine)

    async def scrape() -> Response:
        return Response(generate_latest(metrics.prometheus), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", scrape, methods=["GET"], include_in_schema=False)

    settings = ctx.settings
    app.add_middleware(DecompressMiddleware, max_bytes=settings.max_request_body_bytes)
    app.add_middleware(ShuttingDownMiddleware, registry=ctx.registry)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_body_bytes)
    keys = settings.api_keys()
    if keys:
        app.add_middleware(AuthMiddleware, keys=keys, protect_open_paths=settings.auth_health)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=[REQUEST_ID_HEADER],
        )
    app.add_middleware(RequestContextMiddleware, metrics=metrics)

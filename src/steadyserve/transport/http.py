"""The HTTP app: routers, health, and the one place errors become HTTP responses."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from steadyserve import __version__
from steadyserve.errors import SteadyError, bounded
from steadyserve.transport.common import ClientDisconnected
from steadyserve.transport.context import ServerContext

log = logging.getLogger("steadyserve.http")

OPENAI_PREFIXES = ("/openai/",)
OPENAI_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/embeddings"})


def is_openai_path(path: str) -> bool:
    return path.startswith(OPENAI_PREFIXES) or path in OPENAI_PATHS


def error_body(
    path: str,
    status: int,
    message: str,
    *,
    err_type: str,
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """The error shape of the protocol the path belongs to."""
    if is_openai_path(path):
        return {
            "error": {
                "message": message,
                "type": err_type,
                "param": param,
                "code": code if code is not None else status,
            }
        }
    return {"error": message}


def error_response(request: Request, exc: BaseException) -> Response:
    """Map any exception to a response. The only place HTTP status codes are chosen."""
    path = request.url.path
    headers: dict[str, str] = {}
    if isinstance(exc, (ClientDisconnect, ClientDisconnected)):
        # the client left (mid-upload or before its answer): nobody reads this; logged as 499
        return Response(status_code=499)
    if isinstance(exc, SteadyError):
        status, message = exc.http_status, exc.message
        err_type, param, code = exc.openai_type, exc.param, exc.code
        if exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    elif isinstance(exc, RequestValidationError):
        status = 422
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = bounded(f"invalid request: {loc}: {first.get('msg', 'invalid')}")
        err_type, param, code = "invalid_request_error", loc or None, None
    elif isinstance(exc, StarletteHTTPException):
        status = exc.status_code
        message = "not found" if status == 404 else bounded(str(exc.detail))
        if status == 404:
            message = f"no route {request.method} {bounded(path, 200)}"
        err_type = "invalid_request_error" if status < 500 else "server_error"
        param = code = None
        if exc.headers:
            headers.update(exc.headers)
    else:
        log.error("unhandled error on %s %s", request.method, path, exc_info=exc)
        status, message = 500, "internal server error"
        err_type, param, code = "server_error", None, None
    body = error_body(path, status, message, err_type=err_type, param=param, code=code)
    return ErrorJSONResponse(body, status_code=status, headers=headers)


class ErrorJSONResponse(JSONResponse):
    """Error bodies are ASCII JSON: a message that quotes a client's bytes (a model name with a
    lone surrogate, say) can always be written, and an error response never fails itself."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=True).encode("ascii")


def build_app(ctx: ServerContext) -> FastAPI:
    """The whole HTTP surface for one server context."""
    from steadyserve.transport import (
        middleware,
        routes_admin,
        routes_openai,
        routes_repository,
        routes_torchserve,
        routes_v1,
        routes_v2,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ctx.registry.start_all()
        try:
            yield
        finally:
            await ctx.registry.stop_all(0.0)

    app = FastAPI(
        title="steadyserve",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        redirect_slashes=False,  # an unknown path is a 404 JSON error, not a bodiless 307
    )

    async def handle(request: Request, exc: Exception) -> Response:
        return error_response(request, exc)

    async def handle_disconnect(request: Request, exc: Exception) -> Response:
        return Response(status_code=499)

    app.add_exception_handler(SteadyError, handle)
    app.add_exception_handler(RequestValidationError, handle)
    app.add_exception_handler(StarletteHTTPException, handle)
    app.add_exception_handler(ClientDisconnected, handle_disconnect)
    app.add_exception_handler(ClientDisconnect, handle_disconnect)  # left while uploading
    app.add_exception_handler(Exception, handle)

    app.include_router(routes_v1.build_router(ctx))
    app.include_router(routes_v2.build_router(ctx))
    app.include_router(routes_admin.build_router(ctx))
    app.include_router(routes_openai.build_router(ctx))
    app.include_router(routes_repository.build_router(ctx))
    app.include_router(routes_torchserve.build_router(ctx))
    middleware.install(app, ctx)
    return app

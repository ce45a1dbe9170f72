"""The HTTP app: routers, health, docs, middleware. Errors become responses in
:mod:`steadyserve.transport.errors` (re-exported here)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from steadyserve import __version__
from steadyserve.errors import SteadyError
from steadyserve.transport.common import ClientDisconnected
from steadyserve.transport.context import ServerContext
from steadyserve.transport.errors import (
    ErrorJSONResponse,
    error_body,
    error_response,
    is_openai_client,
    is_openai_path,
    wants_openai_errors,
)

__all__ = [
    "ErrorJSONResponse",
    "build_app",
    "error_body",
    "error_response",
    "is_openai_client",
    "is_openai_path",
    "wants_openai_errors",
]


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

    from steadyserve.transport import openapi_docs

    docs = ctx.settings.enable_docs_url
    app = FastAPI(
        title="steadyserve",
        version=__version__,
        lifespan=lifespan,
        docs_url=openapi_docs.DOCS_URL if docs else None,
        redoc_url=None,
        openapi_url=openapi_docs.OPENAPI_URL if docs else None,
        redirect_slashes=False,  # an unknown path is a 404 JSON error, not a bodiless 307
    )
    openapi_docs.install(app)

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

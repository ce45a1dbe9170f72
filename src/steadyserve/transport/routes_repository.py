"""V2 model repository extension over REST: ``POST /v2/repository/index``,
``POST /v2/repository/models/{name}/load``, ``POST /v2/repository/models/{name}/unload``.

Ordinary routes (so the HTTP middleware - auth, limits - covers them); the logic is
:class:`steadyserve.repository.ModelRepository`, shared with the gRPC transport.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse

from steadyserve.errors import InvalidInput
from steadyserve.repository import ModelRepository, check_load_parameters
from steadyserve.transport.common import parse_json_bytes
from steadyserve.transport.context import ServerContext


async def _optional_json(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        return {}
    data = parse_json_bytes(body)
    if not isinstance(data, dict):
        raise InvalidInput("request body must be a JSON object")
    return data


def build_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter()
    repository = ModelRepository(ctx.registry, ctx.settings)

    @router.post("/v2/repository/index")
    async def index(request: Request) -> JSONResponse:
        """Every model known or on disk: ``[{name, version, state, reason}]``; body
        ``{"ready": true}`` lists only ready ones."""
        body = await _optional_json(request)
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInput("'ready' must be true or false")
        return JSONResponse(repository.index(ready_only=ready))

    @router.post("/v2/repository/models/{name}/load")
    async def load(name: str, request: Request) -> JSONResponse:
        """Load a model and answer once it is ready (bounded wait)."""
        body = await _optional_json(request)
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInput("'parameters' must be an object")
        check_load_parameters(list(params))
        await repository.load(name)
        return JSONResponse({"name": name, "load": True})

    @router.post("/v2/repository/models/{name}/unload")
    async def unload(name: str, request: Request) -> JSONResponse:
        """Unload a model: drained for a short grace, then its worker stops."""
        await _optional_json(request)
        await repository.unload(name)
        return JSONResponse({"name": name, "unload": True})

    return router

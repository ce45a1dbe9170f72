"""Open Inference Protocol V2 REST: server/model health and metadata, ``/infer``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from steadyserve import __version__
from steadyserve.engine.client import ModelEngine
from steadyserve.errors import ModelNotFound, UnsupportedEndpoint
from steadyserve.protocol import v2
from steadyserve.transport.common import cancel_on_disconnect, read_json, request_timeout
from steadyserve.transport.context import ServerContext
from steadyserve.types import Capability

EXTENSIONS = ["model_repository", "binary_tensor_data", "openai"]


def build_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter()
    registry = ctx.registry

    def engine_for(name: str, version: str | None) -> ModelEngine:
        engine = registry.get(name)
        info = engine.info
        if version is not None and info is not None and info.versions and version not in info.versions:
            raise ModelNotFound(f"model {name} has no version '{version[:50]}'")
        return engine

    @router.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "steadyserve", "version": __version__, "extensions": EXTENSIONS}

    @router.get("/v2/health/live")
    async def live() -> JSONResponse:
        ok = registry.live
        return JSONResponse({"live": ok}, status_code=200 if ok else 503)

    @router.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        ok = registry.ready
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def model_ready(name: str, version: str | None = None) -> JSONResponse:
        engine = engine_for(name, version)
        ok = engine.ready
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    async def model_metadata(name: str, version: str | None = None) -> JSONResponse:
        engine = engine_for(name, version)
        info = engine.require_ready_info()
        return JSONResponse(v2.model_metadata(info))

    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        engine = engine_for(name, version)
        info = engine.require_ready_info()
        if Capability.INFER not in info.capabilities:
            raise UnsupportedEndpoint(
                f"model {name} does not support V2 inference; it supports: "
                f"{', '.join(info.capabilities) or 'nothing'}"
            )
        req = await decode_request(request)
        v2.check_against_metadata(req, info)
        result = await cancel_on_disconnect(
            request, engine.infer(req, timeout_s=request_timeout(request))
        )
        if version is not None:
            result.model_version = version
        return encode_response(request, req, result)

    router.add_api_route("/v2/models/{name}/ready", model_ready, methods=["GET"])
    router.add_api_route("/v2/models/{name}/versions/{version}/ready", model_ready, methods=["GET"])
    router.add_api_route("/v2/models/{name}", model_metadata, methods=["GET"])
    router.add_api_route("/v2/models/{name}/versions/{version}", model_metadata, methods=["GET"])
    router.add_api_route("/v2/models/{name}/infer", infer, methods=["POST"])
    router.add_api_route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"])
    return router


async def decode_request(request: Request) -> v2.InferRequest:
    """JSON body (the binary extension hooks in here)."""
    return v2.decode_infer_request(await read_json(request))


def encode_response(request: Request, req: v2.InferRequest, result: v2.InferResponse) -> Response:
    return JSONResponse(v2.encode_infer_response(result))

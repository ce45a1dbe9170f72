"""Open Inference Protocol V2 REST: server/model health and metadata, ``/infer``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from steadyserve import __version__
from steadyserve.engine.protocol import EngineClient
from steadyserve.protocol import v2, v2_binary
from steadyserve.transport.common import (
    DataJSONResponse,
    cancel_on_disconnect,
    off_loop,
    parse_json_bytes,
    request_timeout,
)
from steadyserve.transport.context import ServerContext

EXTENSIONS = ["model_repository", "binary_tensor_data", "openai"]


def build_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter()
    registry = ctx.registry

    def engine_for(name: str, version: str | None) -> EngineClient:
        engine = registry.get(name)
        v2.check_version(engine.info, version)
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
        v2.check_infer_capability(info)
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
    """JSON body, or - with ``Inference-Header-Content-Length`` - the binary tensor extension:
    a JSON header followed by the raw bytes of the inputs that declare ``binary_data_size``."""
    raw_length = request.headers.get(v2_binary.HEADER_LENGTH)
    body = await request.body()
    # parsed and validated in a thread when large: the event loop keeps answering probes
    return await off_loop(len(body), _decode_body, body, raw_length)


def _decode_body(body: bytes, raw_length: str | None) -> v2.InferRequest:
    if raw_length is None:
        return v2.decode_infer_request(parse_json_bytes(body))
    length = v2_binary.parse_header_length(raw_length, len(body))
    header = parse_json_bytes(body[:length])
    binary_inputs = v2_binary.split_binary_inputs(header, body[length:])
    return v2.decode_infer_request(header, binary_inputs)


def encode_response(request: Request, req: v2.InferRequest, result: v2.InferResponse) -> Response:
    """JSON, or JSON header + raw output bytes when the request asked for binary outputs."""
    framed = v2_binary.encode_binary_response(req, result)
    if framed is None:
        return DataJSONResponse(v2.encode_infer_response(result))
    content, header_length = framed
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(header_length)},
    )

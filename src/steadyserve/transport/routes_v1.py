"""KServe V1 REST: list models, model status, ``:predict``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from steadyserve.errors import ServiceUnavailable, UnsupportedEndpoint
from steadyserve.protocol import v1
from steadyserve.transport.common import (
    DataJSONResponse,
    cancel_on_disconnect,
    off_loop,
    parse_json_bytes,
    request_timeout,
)
from steadyserve.transport.context import ServerContext
from steadyserve.types import Capability, ModelInfo, PredictRequest


def build_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter()
    registry = ctx.registry

    @router.get("/")
    async def root() -> dict[str, Any]:
        return {"status": "alive" if registry.live else "crash-looping"}

    @router.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        # KServe's V1 listing; the OpenAI route of the same path adds "object"/"data".
        from steadyserve.transport.routes_models import openai_model_list

        names = registry.names()
        return {"models": names, **openai_model_list(ctx)}

    @router.api_route(
        "/v1/models/{name}:predict",
        methods=["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"],
        include_in_schema=False,
    )
    async def predict_wrong_method(name: str) -> None:
        # without it, GET would reach /v1/models/{name} ("model 'm:predict' is not loaded") and
        # PUT its 405 with "Allow: GET"
        raise StarletteHTTPException(405, "use POST for :predict", headers={"Allow": "POST"})

    @router.get("/v1/models/{name}")
    async def model_status(name: str) -> JSONResponse:
        from steadyserve.transport.routes_models import openai_model_card

        engine = registry.get(name)
        if not engine.ready:
            raise ServiceUnavailable(f"model {name} is not ready: {engine.state}", retry_after=1)
        return JSONResponse({"name": name, "ready": True, **openai_model_card(ctx, name)})

    @router.post("/v1/models/{name}:predict")
    async def predict(name: str, request: Request) -> JSONResponse:
        engine = registry.get(name)
        body = await request.body()
        info = engine.require_ready_info()
        if Capability.PREDICT not in info.capabilities:
            raise UnsupportedEndpoint(
                f"model {name} does not support V1 :predict; it supports: "
                f"{', '.join(info.capabilities) or 'nothing'}"
            )
        # parsed and checked in a thread when large: the event loop keeps answering probes
        req = await off_loop(len(body), _decode, body, info)
        result = await cancel_on_disconnect(
            request, engine.predict(req, timeout_s=request_timeout(request))
        )
        return DataJSONResponse(v1.encode_predict_response(result))

    return router


def _decode(body: bytes, info: ModelInfo) -> PredictRequest:
    req = v1.decode_predict_request(parse_json_bytes(body))
    v1.check_against_metadata(req, info)
    return req

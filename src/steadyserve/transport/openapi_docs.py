"""The OpenAPI document (``/openapi.json``) and the interactive docs (``/docs``).

The routes read their bodies themselves (validation stays in the codecs, which answer 400 in each
protocol's error shape, never FastAPI's 422), so FastAPI cannot see a body schema. The request and
response schemas are added here instead, from pydantic models that exist for the docs only (the
OpenAI request models are the real wire schemas of :mod:`steadyserve.protocol.openai_schema`).
Clients can be generated from the result. ``--enable_docs_url false`` turns both URLs off.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from steadyserve.protocol.openai_schema import ChatRequest, CompletionRequest, EmbeddingRequest
from steadyserve.types import V2_DATATYPES

DOCS_URL = "/docs"
OPENAPI_URL = "/openapi.json"

Datatype = Literal[V2_DATATYPES]  # type: ignore[valid-type]


# ---- KServe V1 ---------------------------------------------------------------------------------
class V1PredictRequest(BaseModel):
    """KServe V1 ``:predict`` body (``inputs`` is accepted in place of ``instances``)."""

    instances: list[Any] = Field(
        description="One item per instance; for a model declaring one numeric input, together "
        "they form an array of the declared shape (instances are its first dimension).",
        max_length=100_000,
        min_length=1,
    )
    parameters: dict[str, Any] | None = Field(None, description="Per-request model parameters.")


class V1PredictResponse(BaseModel):
    predictions: list[Any]


class V1ModelStatus(BaseModel):
    name: str
    ready: bool


class KServeError(BaseModel):
    """The V1 / V2 error shape."""

    error: str


# ---- Open Inference Protocol V2 ----------------------------------------------------------------
class V2InputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Any] | None = Field(
        None, description="``binary_data_size`` with the binary tensor extension."
    )
    data: list[Any] | None = Field(
        None, description="Row-major elements (nested lists are flattened)."
    )


class V2RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(
        None, description="``binary_data``: true for this output as raw bytes."
    )


class V2InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="``binary_data_output``; unsupported ones are refused."
    )
    inputs: list[V2InputTensor]
    outputs: list[V2RequestedOutput] | None = None


class V2OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[V2OutputTensor]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool


# ---- OpenAI responses --------------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int | None = None
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None = None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    finish_reason: Literal["stop", "length"] | None
    logprobs: dict[str, Any] | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class Embedding(BaseModel):
    index: int
    object: Literal["embedding"]
    embedding: list[float] | str = Field(description="floats, or base64 of float32s")


class EmbeddingList(BaseModel):
    object: Literal["list"]
    model: str
    data: list[Embedding]
    usage: Usage


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class OpenAIModelList(BaseModel):
    object: Literal["list"]
    data: list[OpenAIModel]


class ModelListing(BaseModel):
    """``GET /v1/models``: KServe's ``models`` and OpenAI's ``object``/``data`` in one body."""

    models: list[str]
    object: Literal["list"]
    data: list[OpenAIModel]


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class OpenAIError(BaseModel):
    """The OpenAI error shape."""

    error: OpenAIErrorBody


# ---- which route gets which schema -------------------------------------------------------------
#: (path, method) → (request model or None, response model, error model)
_Entry = tuple[type[BaseModel] | None, type[BaseModel]]
_KSERVE_V1: dict[tuple[str, str], _Entry] = {
    ("/v1/models/{name}:predict", "post"): (V1PredictRequest, V1PredictResponse),
    ("/v1/models/{name}", "get"): (None, V1ModelStatus),
}
_KSERVE_V2: dict[tuple[str, str], _Entry] = {
    ("/v2", "get"): (None, V2ServerMetadata),
    ("/v2/health/live", "get"): (None, V2Live),
    ("/v2/health/ready", "get"): (None, V2Ready),
    ("/v2/models/{name}/ready", "get"): (None, V2ModelReady),
    ("/v2/models/{name}/versions/{version}/ready", "get"): (None, V2ModelReady),
    ("/v2/models/{name}", "get"): (None, V2ModelMetadata),
    ("/v2/models/{name}/versions/{version}", "get"): (None, V2ModelMetadata),
    ("/v2/models/{name}/infer", "post"): (V2InferRequest, V2InferResponse),
    ("/v2/models/{name}/versions/{version}/infer", "post"): (V2InferRequest, V2InferResponse),
}
_OPENAI: dict[tuple[str, str], _Entry] = {}
for _prefix in ("/openai/v1", "/v1"):
    _OPENAI[(f"{_prefix}/completions", "post")] = (CompletionRequest, Completion)
    _OPENAI[(f"{_prefix}/chat/completions", "post")] = (ChatRequest, ChatCompletion)
    _OPENAI[(f"{_prefix}/embeddings", "post")] = (EmbeddingRequest, EmbeddingList)
_OPENAI[("/openai/v1/models", "get")] = (None, OpenAIModelList)
_OPENAI[("/v1/models", "get")] = (None, ModelListing)
_OPENAI[("/openai/v1/models/{name}", "get")] = (None, OpenAIModel)

ROUTE_SCHEMAS: dict[tuple[str, str], tuple[type[BaseModel] | None, type[BaseModel], type]] = {
    **{k: (*v, KServeError) for k, v in _KSERVE_V1.items()},
    **{k: (*v, KServeError) for k, v in _KSERVE_V2.items()},
    **{k: (*v, OpenAIError) for k, v in _OPENAI.items()},
}

_ERRORS = {
    "400": "invalid request (bad body, shape, datatype, parameter, or unsupported endpoint)",
    "401": "missing or wrong API key",
    "404": "unknown model or route",
    "413": "body too large",
    "429": "queue full (Retry-After)",
    "503": "not ready, draining or restarting (Retry-After)",
    "504": "deadline passed",
}


def _ref(model: type) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(model)}}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document with every known route's request and response schemas filled in."""
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description="KServe V1, Open Inference Protocol V2 (REST) and the OpenAI API.",
        routes=app.routes,
    )
    models = {m for entry in ROUTE_SCHEMAS.values() for m in entry if m is not None}
    _, top = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(top.get("$defs", {}))
    paths = schema.setdefault("paths", {})
    for (path, method), (request, response, error) in ROUTE_SCHEMAS.items():
        operation = paths.get(path, {}).get(method)
        if operation is None:
            continue
        if request is not None:
            operation["requestBody"] = {"required": True, "content": _json(request)}
        responses: dict[str, Any] = {"200": {"description": "OK", "content": _json(response)}}
        for status, text in _ERRORS.items():
            responses[status] = {"description": text, "content": _json(error)}
        operation["responses"] = responses
    return schema


def install(app: FastAPI) -> None:
    """Serve ``/openapi.json`` built by :func:`build_openapi` (computed once)."""
    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not cached:
            cached.update(build_openapi(app))
        return cached

    app.openapi = openapi  # type: ignore[method-assign]

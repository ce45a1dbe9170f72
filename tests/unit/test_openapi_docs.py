"""/openapi.json documents the request and response bodies of V1, V2 and OpenAI (clients can be
generated from it); /docs serves the interactive docs; --enable_docs_url false turns both off."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from steadyserve.config import EngineConfig, ModelSpec
from steadyserve.registry import Registry
from steadyserve.settings import build_settings
from steadyserve.transport.context import ServerContext
from steadyserve.transport.http import build_app


def _app(**flags: Any) -> Any:
    registry = Registry(EngineConfig(), [ModelSpec(name="m", runtime="custom")])
    ctx = ServerContext(settings=build_settings(flags, environ={}), registry=registry)
    return build_app(ctx)


def _get(app: Any, path: str) -> httpx.Response:
    async def go() -> httpx.Response:
        # no lifespan: no model worker is started
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get(path)

    return asyncio.run(go())


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema["$ref"]
    assert ref.startswith("#/components/schemas/")
    return doc["components"]["schemas"][ref.rsplit("/", 1)[1]]


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    r = _get(_app(), "/openapi.json")
    assert r.status_code == 200
    return r.json()


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/v1/models/{name}:predict", {"instances"}),
        ("/v2/models/{name}/infer", {"inputs"}),
        ("/v2/models/{name}/versions/{version}/infer", {"inputs"}),
        ("/openai/v1/completions", {"model", "prompt"}),
        ("/openai/v1/chat/completions", {"model", "messages"}),
        ("/openai/v1/embeddings", {"model", "input"}),
        ("/v1/completions", {"model", "prompt"}),
    ],
)
def test_every_inference_post_documents_its_body_and_answer(
    doc: dict[str, Any], path: str, fields: set[str]
) -> None:
    op = doc["paths"][path]["post"]
    body = _resolve(doc, op["requestBody"]["content"]["application/json"]["schema"])
    assert fields <= set(body["required"])
    ok = _resolve(doc, op["responses"]["200"]["content"]["application/json"]["schema"])
    assert ok["properties"]
    error = _resolve(doc, op["responses"]["400"]["content"]["application/json"]["schema"])
    assert "error" in error["properties"]


def test_error_shapes_follow_the_protocol(doc: dict[str, Any]) -> None:
    def error_of(path: str) -> str:
        schema = doc["paths"][path]["post"]["responses"]["400"]["content"]["application/json"]
        return str(schema["schema"]["$ref"])

    assert error_of("/v2/models/{name}/infer").endswith("/KServeError")
    assert error_of("/openai/v1/completions").endswith("/OpenAIError")


def test_v2_tensor_datatypes_are_enumerated(doc: dict[str, Any]) -> None:
    tensor = doc["components"]["schemas"]["V2InputTensor"]
    assert "FP32" in tensor["properties"]["datatype"]["enum"]


def test_docs_page_is_served_and_can_be_turned_off() -> None:
    on = _app()
    r = _get(on, "/docs")
    assert r.status_code == 200 and "swagger" in r.text.lower()
    off = _app(enable_docs_url=False)
    assert _get(off, "/docs").status_code == 404
    assert _get(off, "/openapi.json").status_code == 404
    assert _get(off, "/v2").status_code == 200

"""TorchServe's APIs beside ours: inference (``/ping``, ``/predictions``, ``/explanations``)
and management (``/models``), all on the HTTP port and, except ``/ping``, behind the API key.

Bodies are read as TorchServe's frontend reads them: a raw body is the input ``body`` (with its
content type), a multipart form gives one input per part, query parameters are inputs too. The
worker decodes them like TorchServe's backend (JSON parsed, text as str, the rest as bytes).
The response is the handler's output with the status and headers it set: bytes as they are,
a str as text, anything else as JSON. Errors are steadyserve's JSON errors (never a
traceback). The same models are served over KServe V1/V2 and gRPC by the usual routes.
"""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

from fastapi import APIRouter
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from steadyserve.errors import InvalidInput, ModelError, NotFound
from steadyserve.logs import request_id_var
from steadyserve.transport.common import cancel_on_disconnect, request_timeout
from steadyserve.transport.context import ServerContext
from steadyserve.types import PredictRequest

#: request headers never handed to a handler (credentials)
HIDDEN_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", "x-api-key"})
#: most parts of a multipart form
MAX_FORM_PARTS = 64
#: most distinct handler metric names per model in /metrics
MAX_METRIC_NAMES = 100

# kept in step with steadyserve.runtimes.torchserve.handler (not imported: it imports ts)
TS_MODE = "__torchserve__"
TS_REQUEST = "__torchserve_request__"
TS_RESPONSE = "__torchserve_response__"


class _HandlerMetrics:
    """Prometheus families for the metrics handlers record through ``context.metrics``."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge

        self.counter = Counter(
            "steadyserve_torchserve_metric",
            "Counters a TorchServe handler adds (context.metrics.add_counter / add_metric).",
            ["model", "metric", "unit"],
            registry=registry,
        )
        self.gauge = Gauge(
            "steadyserve_torchserve_metric_value",
            "Last value of a TorchServe handler's timers, sizes, percents and gauges.",
            ["model", "metric", "unit"],
            registry=registry,
        )
        self.names: dict[str, set[str]] = {}

    def add(self, model: str, records: list[Any]) -> None:
        seen = self.names.setdefault(model, set())
        for name, kind, unit, value in records:
            if name not in seen and len(seen) >= MAX_METRIC_NAMES:
                continue
            seen.add(name)
            if kind == "counter":
                if value >= 0:
                    self.counter.labels(model, name, unit).inc(value)
            else:
                self.gauge.labels(model, name, unit).set(value)


def _ts_spec(ctx: ServerContext, name: str, version: str | None) -> Any:
    registry = ctx.registry
    engine = registry.get(name)  # 404 for an unknown model
    spec = engine.spec
    if not spec.options.get("torchserve"):
        raise InvalidInput(
            f"model {name} is not a TorchServe archive: use the V1 or V2 routes for it"
        )
    if version is not None and version != str(spec.options.get("version")):
        raise NotFound(f"model {name} has no version {version[:50]!r}")
    return engine, spec


async def _inputs(request: Request) -> tuple[dict[str, Any], dict[str, str | None]]:
    inputs: dict[str, Any] = {}
    types: dict[str, str | None] = {}
    for key, value in request.query_params.multi_items():
        inputs[key] = value.encode("utf-8")
        types[key] = None
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() == "multipart/form-data":
        async with request.form(max_files=MAX_FORM_PARTS, max_fields=MAX_FORM_PARTS) as form:
            parts = 0
            for field, part in form.multi_items():
                parts += 1
                if isinstance(part, UploadFile):
                    inputs[field] = await part.read()
                    types[field] = part.content_type
                else:
                    inputs[field] = part.encode("utf-8")
                    types[field] = None
            if parts == 0:
                raise InvalidInput("multipart request has no parts: send the input as a file")
        return inputs, types
    body = await request.body()
    if body:
        inputs["body"] = body
        types["body"] = content_type or None
    if not inputs:
        raise InvalidInput("request has no input: send a body, a file or query parameters")
    return inputs, types


def _headers(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.lower() not in HIDDEN_HEADERS}


def _response(env: dict[str, Any]) -> Response:
    status = int(env.get("status") or 200)
    if not 100 <= status <= 599:
        raise ModelError(f"handler set an invalid status {status}")
    headers = {str(k): str(v) for k, v in (env.get("headers") or {}).items()}
    media = env.get("content_type")
    if "b64" in env:
        content = base64.b64decode(env["b64"])
        media = media or "application/octet-stream"
    elif "text" in env:
        content = env["text"].encode("utf-8")
        media = media or "text/plain; charset=utf-8"
    elif "json_text" in env:
        content = str(env["json_text"]).encode("utf-8")
        media = media or "application/json"
    else:
        raise ModelError("the model sent no output")
    return Response(content, status_code=status, headers=headers, media_type=media)


def build_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter()
    registry = ctx.registry
    handler_metrics: list[_HandlerMetrics] = []

    def record(model: str, records: list[Any]) -> None:
        if not records or ctx.metrics is None:
            return
        if not handler_metrics:
            handler_metrics.append(_HandlerMetrics(ctx.metrics.prometheus))
        handler_metrics[0].add(model, records)

    #: models whose registration through ``POST /models`` failed: that request got the error;
    #: they do not make the server unhealthy (as in TorchServe)
    refused: set[str] = set()

    @router.get("/ping")
    async def ping() -> JSONResponse:
        """``{"status": "Healthy"}`` only when every model is ready and none of the models the
        server was started with failed to load (given up); else 503 with each one's reason."""
        from steadyserve.engine.supervisor import ExitReason

        models = {e.name: e.last_error or str(e.state) for e in registry.engines() if not e.ready}
        for name, reason in registry.unloaded().items():
            if reason.startswith(ExitReason.LOAD_FAILED.value) and name not in refused:
                models[name] = reason
        if registry.ready and not models:
            return JSONResponse({"status": "Healthy"})
        return JSONResponse({"status": "Unhealthy", "models": models}, status_code=503)

    async def run(request: Request, name: str, version: str | None, mode: str) -> Response:
        engine, spec = _ts_spec(ctx, name, version)
        inputs, types = await _inputs(request)
        engine.require_ready_info()
        rid = request_id_var.get() or uuid.uuid4().hex
        envelope = {
            TS_REQUEST: {
                "request_id": rid,
                "headers": _headers(request),
                "inputs": inputs,
                "content_types": types,
            }
        }
        timeout = request_timeout(request)
        limit = spec.options.get("response_timeout_s")
        if limit is not None:
            timeout = min(timeout, float(limit)) if timeout else float(limit)
        req = PredictRequest(instances=[envelope], parameters={TS_MODE: mode})
        if ctx.metrics is not None:
            ctx.metrics.label_model(request, name)
        result = await cancel_on_disconnect(request, engine.predict(req, timeout_s=timeout))
        env = result.predictions[0][TS_RESPONSE]
        record(name, env.get("metrics") or [])
        return _response(env)

    @router.post("/predictions/{name}")
    async def predict(name: str, request: Request) -> Response:
        return await run(request, name, None, "predict")

    @router.post("/predictions/{name}/{version}")
    async def predict_version(name: str, version: str, request: Request) -> Response:
        return await run(request, name, version, "predict")

    @router.post("/explanations/{name}")
    async def explain(name: str, request: Request) -> Response:
        return await run(request, name, None, "explain")

    @router.post("/explanations/{name}/{version}")
    async def explain_version(name: str, version: str, request: Request) -> Response:
        return await run(request, name, version, "explain")

    # ---- management ----------------------------------------------------------------------
    def describe(name: str) -> dict[str, Any]:
        spec = registry.spec_for(name)
        opts = spec.options
        ready = registry.has(name) and registry.get(name).ready
        state = "READY" if ready else "UNLOADING" if not registry.has(name) else "LOADING"
        return {
            "modelName": name,
            "modelVersion": str(opts.get("version", "")),
            "modelUrl": os.path.basename(str(opts.get("archive") or spec.model_dir or "")),
            "runtime": "python",
            "minWorkers": 1,
            "maxWorkers": 1,
            "batchSize": spec.max_batch_size,
            "maxBatchDelay": spec.max_batch_wait_ms,
            "responseTimeout": opts.get("response_timeout_s"),
            "workers": [{"id": "1", "status": state}],
        }

    @router.get("/models")
    async def list_models() -> dict[str, Any]:
        return {
            "models": [
                {"modelName": n, "modelUrl": describe(n)["modelUrl"]} for n in registry.names()
            ]
        }

    @router.get("/models/{name}")
    async def describe_model(name: str) -> list[dict[str, Any]]:
        registry.get(name)  # 404 for an unknown model
        return [describe(name)]

    @router.get("/models/{name}/{version}")
    async def describe_version(name: str, version: str) -> list[dict[str, Any]]:
        known = registry.get(name).spec.options.get("version")  # 404 for an unknown model
        if known is not None and version != str(known):
            raise NotFound(f"model {name} has no version {version[:50]!r}")
        return [describe(name)]

    @router.post("/models")
    async def register(request: Request) -> JSONResponse:
        from steadyserve.config import model_options
        from steadyserve.repository import ModelRepository
        from steadyserve.runtimes.torchserve.archive import ArchiveError
        from steadyserve.runtimes.torchserve.specs import archive_spec, with_batching

        q = request.query_params
        url = q.get("url")
        if not url:
            raise InvalidInput("register needs ?url=<archive>.mar (a file in the model store)")
        path = _local_archive(ctx, url)
        try:  # unpacking may take a while: off the event loop
            spec = await asyncio.to_thread(
                archive_spec, path, model_options(ctx.settings), q.get("model_name")
            )
        except ArchiveError as exc:
            raise InvalidInput(str(exc)) from None
        spec = with_batching(spec, _int_param(q, "batch_size"), _int_param(q, "max_batch_delay"))
        if registry.has(spec.name):
            raise InvalidInput(f"model {spec.name} is already registered")
        if q.get("synchronous", "true").lower() == "false":
            await registry.load(spec)
            return JSONResponse(
                {"status": f'Model "{spec.name}" registration accepted'}, status_code=202
            )
        refused.discard(spec.name)
        await registry.load(spec)
        try:
            await ModelRepository(registry, ctx.settings).load(spec.name)
        except ModelError as exc:
            # the archive is at fault (its handler is missing or does not import): a 400 with
            # the handler's own message; the server and its other models are unaffected
            refused.add(spec.name)
            raise InvalidInput(exc.message) from None
        version = spec.options.get("version")
        return JSONResponse(
            {"status": f'Model "{spec.name}" Version: {version} registered with 1 initial workers'}
        )

    async def unregister(name: str, version: str | None) -> dict[str, str]:
        from steadyserve.repository import ModelRepository

        if version is not None:
            _ts_spec(ctx, name, version)
        else:
            registry.get(name)
        await ModelRepository(registry, ctx.settings).unload(name)
        return {"status": f'Model "{name}" unregistered'}

    @router.delete("/models/{name}")
    async def delete_model(name: str) -> dict[str, str]:
        return await unregister(name, None)

    @router.delete("/models/{name}/{version}")
    async def delete_version(name: str, version: str) -> dict[str, str]:
        return await unregister(name, version)

    return router


def _int_param(query: Any, key: str) -> int | None:
    raw = query.get(key)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{key} must be a positive integer") from None
    if not 0 < value <= 4096:
        raise InvalidInput(f"{key} must be between 1 and 4096")
    return value


def _local_archive(ctx: ServerContext, url: str) -> str:
    """The archive ``url`` names, inside the model store: local files only."""
    parts = urlsplit(url)
    if parts.scheme not in ("", "file"):
        raise InvalidInput(
            f"only local archives can be registered (a file in the model store), not {parts.scheme}://"
        )
    store = ctx.settings.model_repository
    if store is None:
        raise InvalidInput("no model store: start with --model_repository (or model_store)")
    raw = unquote(parts.path if parts.scheme else url)
    root = os.path.realpath(store)
    path = os.path.realpath(os.path.join(root, raw))
    if os.path.commonpath([root, path]) != root:
        raise InvalidInput("the archive must be in the model store")
    if not os.path.exists(path):
        raise InvalidInput(f"no archive {os.path.basename(raw)[:200]!r} in the model store")
    return path

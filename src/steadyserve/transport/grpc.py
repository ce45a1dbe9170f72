"""Open Inference Protocol V2 over gRPC (grpc.aio), on the server's event loop.

Thin, like the HTTP routes: decode (``protocol.v2_grpc``), validate with the *same* functions as
REST (``v2.check_infer_capability``, ``v2.check_against_metadata``), call the engine, encode.
Errors become gRPC status codes in one place (:func:`status_of`, from ``SteadyError.grpc_code``),
so an error is never INVALID_ARGUMENT here and a 500 over REST.

- the client's deadline (``context.time_remaining()``) is the engine call's ``timeout_s``;
- a client cancellation cancels the handler task, which aborts the request in the engine;
- messages larger than ``grpc_max_message_bytes`` are refused with RESOURCE_EXHAUSTED (by gRPC
  on the way in; by :func:`_check_size` on the way out);
- TLS from ``ssl_certfile`` / ``ssl_keyfile``, like HTTP;
- API keys as over HTTP (``transport.auth``): every RPC but live/ready/server metadata needs
  ``authorization: Bearer <key>`` metadata (those too with ``--auth_health``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from steadyserve import __version__
from steadyserve.engine.protocol import EngineClient
from steadyserve.errors import PayloadTooLarge, SteadyError
from steadyserve.logs import request_id_var
from steadyserve.protocol import v2, v2_grpc
from steadyserve.protocol.grpc_gen import grpc_predict_v2_pb2 as pb
from steadyserve.protocol.grpc_gen import grpc_predict_v2_pb2_grpc as pb_grpc
from steadyserve.repository import ModelRepository, check_load_parameters
from steadyserve.transport import auth
from steadyserve.transport.context import ServerContext
from steadyserve.transport.middleware import access_log, valid_request_id
from steadyserve.transport.routes_v2 import EXTENSIONS

log = logging.getLogger("steadyserve.grpc")

T = TypeVar("T")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[T]]

#: RPCs open without an API key unless ``--auth_health`` (as the HTTP health/metadata paths).
OPEN_RPCS = frozenset({"ServerLive", "ServerReady", "ServerMetadata"})
#: health probes: their access lines are DEBUG unless they fail
PROBE_RPCS = frozenset({"ServerLive", "ServerReady", "ModelReady"})


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The one place an exception becomes a gRPC status (code, message)."""
    if isinstance(exc, SteadyError):
        return grpc.StatusCode[exc.grpc_code], exc.message
    return grpc.StatusCode.INTERNAL, "internal server error"


def _request_id(context: grpc.aio.ServicerContext) -> str:
    """The client's ``x-request-id`` metadata if valid (as over HTTP), else a fresh one."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
            valid = valid_request_id(raw)
            if valid is not None:
                return valid
    return os.urandom(16).hex()


# Why a decorator and not a ``grpc.aio.ServerInterceptor`` (issue 10 asked; kept on purpose):
# an aio interceptor gets only ``handler_call_details`` (method name, metadata) and returns a
# ``RpcMethodHandler``. To map the handler's *exceptions* to statuses, set the trailing
# metadata, and log the model named in the *request message*, it would have to unwrap that
# handler and rebuild it (``grpc.unary_unary_rpc_method_handler`` with the same
# deserializers) around a wrapper doing exactly what this decorator does - the same code plus a
# layer that hides it from the servicer's state (API keys, metrics) and from mypy. The decorator
# is applied to every RPC of the one servicer, so nothing can bypass it; test_grpc checks the
# mapping per status code.
def _mapped(method: Handler[T]) -> Handler[T]:
    """Check the API key (``authorization: Bearer <key>`` metadata, when keys are set), run the
    handler; any error ends the call with its mapped status (no traceback leaks). Like the HTTP
    middleware: a request id (the client's ``x-request-id`` or a fresh one) on every log line of
    the call and in the trailing metadata, one access-log line, and the request metrics (route
    ``/inference.GRPCInferenceService/<RPC>``, method ``gRPC``, the HTTP-equivalent code)."""
    route = f"/inference.GRPCInferenceService/{method.__name__}"

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        started = time.perf_counter()
        rid = _request_id(context)
        token = request_id_var.set(rid)
        trailing: list[tuple[str, str]] = [("x-request-id", rid)]
        status = 200
        try:
            if self.keys and (self.auth_health or method.__name__ not in OPEN_RPCS):
                auth.check_grpc_metadata(self.keys, context.invocation_metadata())
            result = await method(self, request, context)
            context.set_trailing_metadata(tuple(trailing))
            return result
        except asyncio.CancelledError:
            status = 499  # the client cancelled (or its deadline passed)
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            if not isinstance(exc, SteadyError):
                log.error("unhandled error in gRPC %s", method.__name__, exc_info=exc)
            code, message = status_of(exc)
            status = exc.http_status if isinstance(exc, SteadyError) else 500
            if isinstance(exc, SteadyError) and exc.retry_after is not None:
                trailing.append(("retry-after", str(max(1, round(exc.retry_after)))))
            context.set_trailing_metadata(tuple(trailing))
            await context.abort(code, message)
            raise AssertionError("unreachable: abort raises") from None
        finally:
            elapsed = time.perf_counter() - started
            model = getattr(request, "model_name", None) or getattr(request, "name", None)
            metrics = self.ctx.metrics
            if metrics is not None:
                metrics.observe_request("gRPC", route, model, status, elapsed)
            probe = method.__name__ in PROBE_RPCS and status < 400
            shown_model = str(model)[:128] if model else None
            access_log.log(
                logging.DEBUG if probe else logging.INFO,  # probes at DEBUG, as over HTTP
                "gRPC %s %d %.1fms",
                route,
                status,
                elapsed * 1000.0,
                extra={
                    "method": "gRPC",
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000.0, 3),
                    **({"model": shown_model} if shown_model else {}),
                },
            )
            request_id_var.reset(token)

    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` backed by the registry."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.registry = ctx.registry
        self.repository = ModelRepository(ctx.registry, ctx.settings)
        self.max_message = ctx.settings.grpc_max_message_bytes
        self.keys = auth.encode_keys(ctx.settings.api_keys())
        self.auth_health = ctx.settings.auth_health

    def _engine(self, name: str, version: str) -> EngineClient:
        engine = self.registry.get(name)
        v2.check_version(engine.info, version)  # the same check (and 404) as REST
        return engine

    def _check_size(self, message: Any) -> Any:
        size = message.ByteSize()
        if size > self.max_message:
            raise PayloadTooLarge(
                f"response of {size} bytes exceeds grpc_max_message_bytes={self.max_message}"
            )
        return message

    @_mapped
    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=self.registry.live)

    @_mapped
    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.registry.ready)

    @_mapped
    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ModelReadyResponse(ready=self._engine(request.name, request.version).ready)

    @_mapped
    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(
            name="steadyserve", version=__version__, extensions=EXTENSIONS
        )

    @_mapped
    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        info = self._engine(request.name, request.version).require_ready_info()
        return v2_grpc.model_metadata(info)

    @_mapped
    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        engine = self._engine(request.model_name, request.model_version)
        info = engine.require_ready_info()
        v2.check_infer_capability(info)
        req = v2_grpc.decode_infer_request(request)
        v2.check_against_metadata(req, info)
        result = await engine.infer(req, timeout_s=context.time_remaining())
        if request.model_version:
            result.model_version = request.model_version
        raw = v2_grpc.wants_raw(request, req, result)
        return self._check_size(v2_grpc.encode_infer_response(result, raw))

    @_mapped
    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        response = pb.RepositoryIndexResponse()
        for entry in self.repository.index(ready_only=request.ready):
            response.models.add(**entry)
        return response

    @_mapped
    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        check_load_parameters(list(request.parameters))
        await self.repository.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_mapped
    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self.repository.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_grpc_server(ctx: ServerContext) -> grpc.aio.Server:
    """Build, bind and start the gRPC server on the running loop. Raises ``RuntimeError`` with
    one line when the port cannot be bound."""
    server = build_grpc_server(ctx)
    await server.start()
    return server


def build_grpc_server(ctx: ServerContext) -> grpc.aio.Server:
    """The gRPC server with its servicer, bound to ``host:grpc_port`` (TLS when configured)."""
    settings = ctx.settings
    limit = settings.grpc_max_message_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),  # a busy port is an error, not a silently shared one
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(ctx), server)
    address = _address(settings.host, settings.grpc_port)
    try:
        if settings.ssl_certfile and settings.ssl_keyfile:
            credentials = grpc.ssl_server_credentials(
                [
                    (
                        Path(settings.ssl_keyfile).read_bytes(),
                        Path(settings.ssl_certfile).read_bytes(),
                    )
                ]
            )
            bound = server.add_secure_port(address, credentials)
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"could not bind the gRPC port {address}: {exc}") from None
    if not bound:
        raise RuntimeError(f"could not bind the gRPC port {address}")
    log.info("gRPC (V2) listening on %s%s", address, " with TLS" if settings.ssl_certfile else "")
    return server

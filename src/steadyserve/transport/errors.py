"""The one place an exception becomes an HTTP response (status, headers, body in the error
shape of the caller's protocol). A leaf of the transport package: the app (:mod:`.http`), the
middleware and the auth layer all import it, and it imports none of them.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from steadyserve.errors import SteadyError, bounded
from steadyserve.transport.common import ClientDisconnected

log = logging.getLogger("steadyserve.http")

OPENAI_PREFIXES = ("/openai/",)
OPENAI_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/embeddings"})


#: paths KServe V1 and the OpenAI API share (``/v1/models``, ``/v1/models/{name}``): their errors
#: take the shape of the caller's protocol, told by the OpenAI SDKs' own headers
SHARED_PREFIX = "/v1/models"


def is_openai_path(path: str) -> bool:
    return path.startswith(OPENAI_PREFIXES) or path in OPENAI_PATHS


def is_openai_client(headers: Any) -> bool:
    """The request comes from an OpenAI SDK (``X-Stainless-Lang``, sent by the official Python
    and Node clients, or a ``User-Agent`` of ``OpenAI/...``)."""
    agent = headers.get("user-agent", "")
    return "x-stainless-lang" in headers or agent.lower().startswith("openai/")


def wants_openai_errors(request: Request) -> bool:
    path = request.url.path
    if is_openai_path(path):
        return True
    shared = path == SHARED_PREFIX or (
        path.startswith(SHARED_PREFIX + "/") and ":" not in path[len(SHARED_PREFIX) :]
    )
    return shared and is_openai_client(request.headers)


def error_body(
    path: str,
    status: int,
    message: str,
    *,
    err_type: str,
    param: str | None = None,
    code: str | None = None,
    openai: bool | None = None,
) -> dict[str, Any]:
    """The error shape of the protocol the path (or, on a shared path, the client) speaks."""
    if openai if openai is not None else is_openai_path(path):
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
    openai = wants_openai_errors(request)
    body = error_body(
        path, status, message, err_type=err_type, param=param, code=code, openai=openai
    )
    return ErrorJSONResponse(body, status_code=status, headers=headers)


class ErrorJSONResponse(JSONResponse):
    """Error bodies are ASCII JSON: a message that quotes a client's bytes (a model name with a
    lone surrogate, say) can always be written, and an error response never fails itself."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=True).encode("ascii")

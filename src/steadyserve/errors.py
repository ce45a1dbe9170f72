"""One error hierarchy for the whole server.

Every error a request can end with is a :class:`SteadyError`. Each class carries the HTTP status
and the gRPC status code it maps to, so each transport maps errors in exactly one place
(``transport.http`` and ``transport.grpc``) by reading these attributes - the same error is never
a 500 over REST and INVALID_ARGUMENT over gRPC.

    SteadyError
    ├── ClientError (4xx)                 the request is at fault; retrying it unchanged won't help
    │   ├── InvalidInput          400     malformed body, bad tensor, bad parameter
    │   │   └── UnsupportedEndpoint 400   the model cannot serve this endpoint (e.g. chat on T5)
    │   ├── SchemaError           422     body is JSON but does not match the schema
    │   ├── Unauthorized          401     missing / wrong API key
    │   ├── NotFound              404     unknown model or route
    │   │   └── ModelNotFound     404
    │   ├── PayloadTooLarge       413     body or message too large
    │   └── QueueFull             429     admission queue full (Retry-After)
    └── ServerError (5xx)                 the server is at fault (or busy); the request may be retried
        ├── ModelError            500     the model raised on valid input (its message is kept)
        ├── ServiceUnavailable    503     not ready, draining, restarting (Retry-After)
        │   └── WorkerCrashed     503     the worker process died while the request was in flight
        └── DeadlineExceeded      504     the request's deadline passed

This module imports nothing from the package (see DESIGN.md, import direction).
"""

from __future__ import annotations

# gRPC status codes by name; kept as strings so this module does not import grpc.
# The gRPC transport resolves them with ``grpc.StatusCode[name]``.

MAX_MESSAGE_CHARS = 1000
"""Error messages are cut to this length: an error never echoes a whole input back."""


def bounded(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Cut ``message`` to ``limit`` characters, marking the cut."""
    if len(message) <= limit:
        return message
    return message[: limit - 15] + "... (truncated)"


class SteadyError(Exception):
    """Base of every error a request can end with."""

    http_status: int = 500
    grpc_code: str = "INTERNAL"
    #: OpenAI error ``type`` field.
    openai_type: str = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.message = bounded(str(message))
        self.param = param
        self.code = code
        self.retry_after = retry_after
        super().__init__(self.message)

    @property
    def kind(self) -> str:
        """Stable name used on the IPC wire and in logs."""
        return type(self).__name__


class ClientError(SteadyError):
    """The request is at fault (4xx)."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"
    openai_type = "invalid_request_error"


class InvalidInput(ClientError):
    """Malformed body, bad shape or datatype, bad parameter."""


class UnsupportedEndpoint(InvalidInput):
    """This model does not support this endpoint (e.g. chat on a model without a chat template)."""


class SchemaError(ClientError):
    """The body parsed but does not match the request schema."""

    http_status = 422


class Unauthorized(ClientError):
    http_status = 401
    grpc_code = "UNAUTHENTICATED"
    openai_type = "authentication_error"


class NotFound(ClientError):
    http_status = 404
    grpc_code = "NOT_FOUND"
    openai_type = "not_found_error"


class ModelNotFound(NotFound):
    pass


class PayloadTooLarge(ClientError):
    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class QueueFull(ClientError):
    """Admission queue full; the client should back off (Retry-After)."""

    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"
    openai_type = "rate_limit_error"


class ServerError(SteadyError):
    """The server is at fault, or busy (5xx)."""

    http_status = 500
    grpc_code = "INTERNAL"
    openai_type = "server_error"


class ModelError(ServerError):
    """The model raised while serving a valid request; carries the model's message."""


class ServiceUnavailable(ServerError):
    """Not ready, draining, or the worker is restarting."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
    openai_type = "service_unavailable"


class WorkerCrashed(ServiceUnavailable):
    """The worker process died (or hung and was killed) while the request was in flight."""


class DeadlineExceeded(ServerError):
    http_status = 504
    grpc_code = "DEADLINE_EXCEEDED"
    openai_type = "timeout"


ALL_ERRORS: tuple[type[SteadyError], ...] = (
    SteadyError,
    ClientError,
    InvalidInput,
    UnsupportedEndpoint,
    SchemaError,
    Unauthorized,
    NotFound,
    ModelNotFound,
    PayloadTooLarge,
    QueueFull,
    ServerError,
    ModelError,
    ServiceUnavailable,
    WorkerCrashed,
    DeadlineExceeded,
)

_BY_KIND = {cls.__name__: cls for cls in ALL_ERRORS}


def from_kind(kind: str, message: str) -> SteadyError:
    """Rebuild an error sent over IPC by its class name; unknown names become ModelError."""
    cls = _BY_KIND.get(kind, ModelError)
    return cls(message)

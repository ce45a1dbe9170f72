"""API keys: ``Authorization: Bearer <key>`` checked in constant time, for HTTP and gRPC.

Keys come from ``STEADYSERVE_API_KEY`` (one key or a comma-separated list) and/or
``--api_key_file`` (one per line) - never from a plain flag (``Settings.api_keys()``). With no
key configured, authentication is off.

HTTP: :class:`AuthMiddleware` (installed by ``transport.middleware``) protects every path
except :data:`OPEN_PATHS` (health, server metadata, ``/metrics``) - and those too with
``--auth_health``. Unknown paths are protected as well, so the route table cannot be probed
without a key. A missing or wrong key is a 401 in the protocol's error shape with
``WWW-Authenticate: Bearer``.

gRPC: call :func:`check_grpc_metadata` with the call's metadata at the start of every handler
(or in a server interceptor)::

    auth.check_grpc_metadata(keys, context.invocation_metadata())  # raises errors.Unauthorized

The metadata key is ``authorization`` (gRPC lower-cases keys), value ``Bearer <key>``.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from steadyserve.errors import Unauthorized
from steadyserve.transport.errors import error_response

#: paths open without a key unless ``auth_health`` is set: liveness, readiness (TorchServe's
#: ``/ping`` too), server metadata and the Prometheus scrape.
OPEN_PATHS = frozenset(
    {"/", "/v2", "/v2/health/live", "/v2/health/ready", "/metrics", "/ping"}  # /ping: TorchServe
)

_MISSING = "missing API key: send 'Authorization: Bearer <key>'"
_WRONG = "invalid API key"


def encode_keys(keys: Iterable[str]) -> tuple[bytes, ...]:
    return tuple(k.encode("utf-8") for k in keys if k)


def key_matches(candidate: bytes, keys: Sequence[bytes]) -> bool:
    """Constant-time over *all* keys: every key is compared, whichever matches."""
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(candidate, key)
    return ok


def bearer_token(header_value: str | bytes | None) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` value, or None when absent/other."""
    if header_value is None:
        return None
    raw = header_value.encode("latin-1") if isinstance(header_value, str) else header_value
    scheme, _, token = raw.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        return None
    return token.strip()


def check_token(keys: Sequence[bytes], header_value: str | bytes | None) -> None:
    """Raise :class:`Unauthorized` unless ``header_value`` is ``Bearer <one of keys>``.
    No keys: authentication is off."""
    if not keys:
        return
    token = bearer_token(header_value)
    if token is None:
        raise Unauthorized(_MISSING)
    if not key_matches(token, keys):
        raise Unauthorized(_WRONG)


def check_grpc_metadata(keys: Sequence[str] | Sequence[bytes], metadata: Any) -> None:
    """gRPC: raise :class:`Unauthorized` (→ UNAUTHENTICATED) unless the call's metadata carries
    ``authorization: Bearer <key>``. ``metadata`` is ``context.invocation_metadata()``: an
    iterable of ``(key, value)`` pairs or of objects with ``.key`` / ``.value``. Empty ``keys``:
    authentication is off."""
    encoded = tuple(k.encode("utf-8") if isinstance(k, str) else k for k in keys if k)
    if not encoded:
        return
    value: str | bytes | None = None
    for item in metadata or ():
        key, val = (item.key, item.value) if hasattr(item, "key") else (item[0], item[1])
        if str(key).lower() == "authorization":
            value = val
            break
    check_token(encoded, value)


class AuthMiddleware:
    """Pure ASGI: 401 before the route (and before the body is read) unless the key is right."""

    def __init__(self, app: ASGIApp, keys: Sequence[str], protect_open_paths: bool) -> None:
        self.app = app
        self.keys = encode_keys(keys)
        self.open_paths = frozenset() if protect_open_paths else OPEN_PATHS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
                break
        try:
            check_token(self.keys, header)
        except Unauthorized as exc:
            response = error_response(Request(scope), exc)
            response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

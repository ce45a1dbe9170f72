"""Every error class maps to one HTTP status and one gRPC code, in one place."""

from __future__ import annotations

import json

import grpc
import pytest
from starlette.requests import Request

from steadyserve import errors
from steadyserve.transport.errors import error_response


def _request(path: str) -> Request:
    return Request(
        {"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""}
    )


@pytest.mark.parametrize("cls", errors.ALL_ERRORS)
def test_every_error_is_mapped(cls: type[errors.SteadyError]) -> None:
    assert grpc.StatusCode[cls.grpc_code]
    exc = cls("something went wrong")
    resp = error_response(_request("/v2/models/m/infer"), exc)
    assert resp.status_code == cls.http_status
    assert json.loads(bytes(resp.body)) == {"error": "something went wrong"}
    oai = error_response(_request("/openai/v1/completions"), exc)
    body = json.loads(bytes(oai.body))["error"]
    assert oai.status_code == cls.http_status
    assert body["message"] == "something went wrong"
    assert body["type"] == cls.openai_type
    assert set(body) == {"message", "type", "param", "code"}


def test_client_and_server_errors_are_separated() -> None:
    for cls in errors.ALL_ERRORS:
        if issubclass(cls, errors.ClientError):
            assert 400 <= cls.http_status < 500, cls
        elif issubclass(cls, errors.ServerError):
            assert cls.http_status >= 500, cls


def test_retry_after_header_and_bounded_message() -> None:
    resp = error_response(
        _request("/v1/models/m:predict"), errors.QueueFull("x" * 5000, retry_after=2)
    )
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "2"
    assert len(json.loads(bytes(resp.body))["error"]) <= errors.MAX_MESSAGE_CHARS


def test_unexpected_exception_is_a_500_without_traceback() -> None:
    resp = error_response(_request("/v1/models/m:predict"), RuntimeError("secret internals"))
    assert resp.status_code == 500
    assert b"secret" not in bytes(resp.body)
    assert b"Traceback" not in bytes(resp.body)


def test_from_kind_round_trips() -> None:
    for cls in errors.ALL_ERRORS:
        rebuilt = errors.from_kind(cls.__name__, "m")
        assert type(rebuilt) is cls
    assert type(errors.from_kind("NoSuchError", "m")) is errors.ModelError

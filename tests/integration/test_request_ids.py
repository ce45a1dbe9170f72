"""Request ids: the client's id echoed (when valid), a generated one otherwise, on every response
(200, 404, model 500, unhandled 500); every log line of a request carries it, JSON logs work end to
end, and prompts stay out of the logs."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator

import httpx
import pytest

from steadyserve.config import EngineConfig
from steadyserve.registry import Registry
from steadyserve.settings import build_settings
from steadyserve.transport.context import ServerContext
from steadyserve.transport.http import build_app
from steadyserve.transport.middleware import valid_request_id
from tests.helpers import FAULTY, ServerProcess, wait_for

GENERATED = re.compile(r"[0-9a-f]{32}")
SECRET = "secret-prompt-text-4242"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(
        "--model_class", FAULTY, "--model_name", "faulty", "--log_format", "json"
    ) as srv:
        yield srv


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def predict(client: httpx.Client, instance: str, **headers: str) -> httpx.Response:
    return client.post("/v1/models/faulty:predict", json={"instances": [instance]}, headers=headers)


def json_lines(server: ServerProcess) -> list[dict[str, object]]:
    out = []
    for line in server.logs().splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def test_valid_request_id() -> None:
    assert valid_request_id(b"abc-123_X.y") == "abc-123_X.y"
    assert valid_request_id(b"a" * 128) == "a" * 128
    assert valid_request_id(b"a" * 129) is None
    assert valid_request_id(b"") is None
    assert valid_request_id(b"bad\x01id") is None
    assert valid_request_id("caf\u00e9".encode()) is None


def test_client_id_echoed_and_generated(client: httpx.Client) -> None:
    r = predict(client, "hello", **{"X-Request-ID": "client-id-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "client-id-1"
    r = predict(client, "hello")
    assert r.status_code == 200 and GENERATED.fullmatch(r.headers["x-request-id"])
    assert predict(client, "hello").headers["x-request-id"] != r.headers["x-request-id"]


def test_invalid_client_id_replaced(client: httpx.Client) -> None:
    for bad in ("x" * 129, "tab\there"):
        r = predict(client, "hello", **{"X-Request-ID": bad})
        assert r.status_code == 200
        assert GENERATED.fullmatch(r.headers["x-request-id"]), r.headers["x-request-id"]


def test_id_on_errors(client: httpx.Client) -> None:
    r = client.get("/no/such/route")
    assert r.status_code == 404 and GENERATED.fullmatch(r.headers["x-request-id"])
    r = client.get("/no/such/route", headers={"X-Request-ID": "nf-1"})
    assert r.status_code == 404 and r.headers["x-request-id"] == "nf-1"
    r = predict(client, "raise", **{"X-Request-ID": "boom-1"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "boom-1"
    r = predict(client, "raise")
    assert r.status_code == 500 and GENERATED.fullmatch(r.headers["x-request-id"])
    assert "Traceback" not in r.text
    r = client.post("/v1/models/faulty:predict", content=b"{not json")
    assert r.status_code == 400 and GENERATED.fullmatch(r.headers["x-request-id"])
    assert predict(client, "hello").status_code == 200


def test_json_access_log_carries_request_id(server: ServerProcess, client: httpx.Client) -> None:
    r = predict(client, SECRET, **{"X-Request-ID": "log-id-7"})
    assert r.status_code == 200

    def access_line() -> dict[str, object] | None:
        for entry in json_lines(server):
            if (
                entry.get("logger") == "steadyserve.access"
                and entry.get("request_id") == "log-id-7"
            ):
                return entry
        return None

    entry = wait_for(access_line, timeout=10)
    assert entry["level"] == "info"
    assert (
        entry["message"] == f"POST /v1/models/{{name}}:predict 200 {entry['message'].split()[-1]}"
    )
    assert str(entry["message"]).endswith("ms")
    assert entry["method"] == "POST" and entry["route"] == "/v1/models/{name}:predict"
    assert entry["status"] == 200 and isinstance(entry["duration_ms"], float)
    # the model's 500 is logged with the request's id too
    predict(client, "raise", **{"X-Request-ID": "log-id-8"})
    wait_for(lambda: any(e.get("request_id") == "log-id-8" for e in json_lines(server)))
    # prompts are not logged by default
    assert SECRET not in server.logs()
    assert SECRET.upper() not in server.logs()


def test_unhandled_exception_is_500_with_id() -> None:
    """A bug (not a SteadyError) in a route: 500, generic message, the request id attached."""
    asyncio.run(_unhandled_exception())


async def _unhandled_exception() -> None:
    settings = build_settings({}, environ={})
    app = build_app(ServerContext(settings=settings, registry=Registry(EngineConfig())))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("internal detail that must not leak")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        r = await c.get("/boom")
        assert r.status_code == 500
        assert r.json() == {"error": "internal server error"}
        assert GENERATED.fullmatch(r.headers["x-request-id"])
        r = await c.get("/boom", headers={"X-Request-ID": "mine"})
        assert r.status_code == 500 and r.headers["x-request-id"] == "mine"
        r = await c.get("/v2/health/live")
        assert r.status_code == 200 and GENERATED.fullmatch(r.headers["x-request-id"])


def test_worker_lines_are_json_and_name_the_request(
    server: ServerProcess, client: httpx.Client
) -> None:
    """LOG_FORMAT=json: the model workers' lines are JSON objects too, and a request's failure
    logged by the worker carries that request's id."""
    r = predict(client, "raise", **{"X-Request-ID": "worker-id-9"})
    assert r.status_code == 500
    line = wait_for(
        lambda: next(
            (
                e
                for e in json_lines(server)
                if e.get("request_id") == "worker-id-9" and "worker_pid" in e
            ),
            None,
        )
    )
    assert "boom" in str(line["message"]) and line["level"] == "warning"
    text_lines = [ln for ln in server.logs().splitlines() if ln.strip()]
    assert all(ln.startswith("{") for ln in text_lines), [
        ln for ln in text_lines if not ln.startswith("{")
    ][:3]
    assert predict(client, "fine").status_code == 200


def test_json_logs_of_a_hugging_face_model_are_all_json(tiny_gpt2_dir: str) -> None:
    """transformers' own notices (``warning_once`` on the first generation, progress bars while
    loading) go through our handler: with LOG_FORMAT=json every line, server's and worker's, is
    a JSON object."""
    env = {"LOG_FORMAT": "json", "STEADYSERVE_WORKER_LOG_LEVEL": "info"}
    with (
        ServerProcess("--model_dir", tiny_gpt2_dir, "--model_name", "gpt2", env=env) as srv,
        srv.client() as c,
    ):
        for path in ("/v1/completions", "/v1/models/gpt2:predict"):
            body = (
                {"model": "gpt2", "prompt": "hello", "max_tokens": 3}
                if "completions" in path
                else {"instances": ["hello"]}
            )
            assert c.post(path, json=body).status_code == 200
        logs = srv.logs()
    lines = [ln for ln in logs.splitlines() if ln.strip()]
    assert any('"worker_pid"' in ln for ln in lines)
    assert all(ln.startswith("{") for ln in lines), [ln for ln in lines if not ln.startswith("{")][
        :3
    ]
    for ln in lines:
        json.loads(ln)

"""API keys: every route of the app (found by walking its route table, so new routes are covered
automatically) answers 401 without a key and with a wrong one, and works with the right one;
health and /metrics stay open unless --auth_health; the key file; the gRPC helper."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from steadyserve.config import EngineConfig
from steadyserve.errors import Unauthorized
from steadyserve.registry import Registry
from steadyserve.settings import build_settings
from steadyserve.transport.auth import OPEN_PATHS, bearer_token, check_grpc_metadata, key_matches
from steadyserve.transport.context import ServerContext
from steadyserve.transport.http import build_app
from tests.helpers import EXAMPLE, ServerProcess, run_cli

KEYS = "key-one, key-two"
GOOD = {"Authorization": "Bearer key-two"}
WRONG = {"Authorization": "Bearer key-three"}
GOOD_V2 = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
#: bodies for the POST routes we know; other POST routes only have to get past auth
BODIES: dict[str, Any] = {
    "/v1/models/{name}:predict": {"instances": [[1, 2]]},
    "/v2/models/{name}/infer": GOOD_V2,
    "/v2/models/{name}/versions/{version}/infer": GOOD_V2,
}


def app_routes() -> list[tuple[str, str]]:
    """(method, path template) of every route the app serves: the OpenAPI schema plus a walk of
    the route table (for routes left out of the schema)."""
    settings = build_settings({}, environ={})
    app = build_app(ServerContext(settings=settings, registry=Registry(EngineConfig())))
    found: set[tuple[str, str]] = set()
    for path, operations in app.openapi()["paths"].items():
        found |= {(method.upper(), path) for method in operations}

    def walk(routes: Any, prefix: str = "") -> None:
        for route in routes:
            path, methods = getattr(route, "path", None), getattr(route, "methods", None)
            if isinstance(path, str) and methods:
                found.update((m, prefix + path) for m in set(methods) - {"HEAD"})
            inner = getattr(route, "original_router", None) or getattr(route, "router", None)
            if inner is not None and hasattr(inner, "routes"):  # included routers
                context = getattr(route, "include_context", None)
                walk(inner.routes, prefix + str(getattr(context, "prefix", "") or ""))

    walk(app.routes)
    return sorted(found)


def concrete(template: str) -> str:
    name = "no-such-model" if "repository" in template else "scaler"
    path = re.sub(r"\{name(:[^}]*)?\}", name, template)
    path = re.sub(r"\{version(:[^}]*)?\}", "1", path)
    return re.sub(r"\{[^}]+\}", "x", path)


ROUTES = app_routes()
PROTECTED = [(m, p) for m, p in ROUTES if p not in OPEN_PATHS]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(
        "--model_class", EXAMPLE, "--model_name", "scaler", env={"STEADYSERVE_API_KEY": KEYS}
    ) as srv:
        yield srv


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def call(
    client: httpx.Client, method: str, template: str, headers: dict[str, str]
) -> httpx.Response:
    body = BODIES.get(template, {}) if method in ("POST", "PUT") else None
    path = concrete(template)
    if method == "DELETE":  # TorchServe's DELETE /models/{name}: never unload the test's model
        path = path.replace("scaler", "no-such-model")
    return client.request(method, path, json=body, headers=headers)


def test_route_table_is_walked() -> None:
    templates = {p for _, p in PROTECTED}
    assert {"/v1/models/{name}:predict", "/v2/models/{name}/infer", "/debug/engine"} <= templates
    assert {p for _, p in ROUTES if p in OPEN_PATHS} == OPEN_PATHS


@pytest.mark.parametrize(("method", "template"), PROTECTED)
def test_protected_route(client: httpx.Client, method: str, template: str) -> None:
    for headers in (
        {},
        WRONG,
        {"Authorization": "key-two"},
        {"Authorization": "Basic a2V5LXR3bw=="},
    ):
        r = call(client, method, template, headers)
        assert r.status_code == 401, (method, template, headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert "x-request-id" in r.headers
        body = r.json()
        if template.startswith("/openai/") or template in (
            "/v1/completions",
            "/v1/chat/completions",
            "/v1/embeddings",
        ):
            assert body["error"]["type"] == "authentication_error"
        else:
            assert isinstance(body["error"], str) and "API key" in body["error"]
    r = call(client, method, template, GOOD)
    if template.endswith(":predict") and method != "POST":
        assert r.status_code == 405 and r.headers["allow"] == "POST", (method, template, r.text)
    elif method == "GET" or template in BODIES:
        assert r.status_code == 200, (method, template, r.text)
    else:
        assert r.status_code != 401, (method, template, r.text)


@pytest.mark.parametrize("path", sorted(OPEN_PATHS))
def test_open_paths_need_no_key(client: httpx.Client, path: str) -> None:
    assert client.get(path).status_code == 200
    assert client.get(path, headers=WRONG).status_code == 200


def test_every_key_and_scheme_case(client: httpx.Client) -> None:
    for header in ("Bearer key-one", "Bearer key-two", "bearer key-one", "BEARER  key-two"):
        r = client.post(
            "/v1/models/scaler:predict",
            json={"instances": [[1, 2]]},
            headers={"Authorization": header},
        )
        assert r.status_code == 200, (header, r.text)
        assert r.json() == {"predictions": [[2.0, 4.0]]}


def test_unknown_paths_need_a_key_too(client: httpx.Client) -> None:
    assert client.get("/no/such/route").status_code == 401
    assert client.get("/no/such/route", headers=GOOD).status_code == 404
    r = client.post("/openai/v1/chat/completions", json={})
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"


def test_auth_health_and_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("file-key-1\n\nfile-key-2\n", encoding="utf-8")
    with ServerProcess(
        "--model_class",
        EXAMPLE,
        "--model_name",
        "scaler",
        "--api_key_file",
        str(key_file),
        "--auth_health",
        wait_ready=False,
    ) as srv:
        good = {"Authorization": "Bearer file-key-2"}
        deadline = time.monotonic() + 90
        while True:
            assert srv.proc is not None and srv.proc.poll() is None, srv.logs()
            try:
                if (
                    httpx.get(srv.url + "/v2/health/ready", headers=good, timeout=2).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, srv.logs()
            time.sleep(0.1)
        with srv.client() as c:
            for path in sorted(OPEN_PATHS):
                assert c.get(path).status_code == 401, path
                assert c.get(path, headers=good).status_code == 200, path
            r = c.post(
                "/v1/models/scaler:predict",
                json={"instances": [[1, 2]]},
                headers={"Authorization": "Bearer file-key-1"},
            )
            assert r.status_code == 200


def test_api_key_is_not_a_flag() -> None:
    result = run_cli("serve", "--api_key", "plain-on-the-command-line", timeout=30)
    assert result.returncode == 2, result.stderr
    assert "--api_key" in result.stderr


def test_bearer_parsing_and_constant_time_match() -> None:
    assert bearer_token("Bearer abc") == b"abc"
    assert bearer_token(b"bearer  abc ") == b"abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None
    keys = (b"k1", b"k2")
    assert key_matches(b"k2", keys) and key_matches(b"k1", keys)
    assert not key_matches(b"k3", keys) and not key_matches(b"k", keys)


def test_grpc_metadata_helper() -> None:
    check_grpc_metadata([], ())  # auth off
    check_grpc_metadata(["k1", "k2"], (("authorization", "Bearer k2"),))
    check_grpc_metadata(["k1"], [SimpleNamespace(key="authorization", value="Bearer k1")])
    check_grpc_metadata(["k1"], (("x-other", "1"), ("Authorization", "bearer k1")))
    with pytest.raises(Unauthorized, match="missing"):
        check_grpc_metadata(["k1"], (("x-other", "1"),))
    with pytest.raises(Unauthorized, match="invalid"):
        check_grpc_metadata(["k1"], (("authorization", "Bearer nope"),))
    with pytest.raises(Unauthorized):
        check_grpc_metadata(["k1"], None)
    assert Unauthorized.grpc_code == "UNAUTHENTICATED"

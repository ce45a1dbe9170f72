"""Every V1/V2 route against the example custom model: good paths, every error path, and a good
request right after each error."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import EXAMPLE, ServerProcess

GOOD_V2 = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}]}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess("--model_class", EXAMPLE, "--model_name", "scaler") as srv:
        yield srv


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def assert_good(client: httpx.Client) -> None:
    r = client.post("/v1/models/scaler:predict", json={"instances": [[1, 2]]})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [[2.0, 4.0]]}
    r = client.post("/v2/models/scaler/infer", json=GOOD_V2)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]


def test_health_and_metadata(client: httpx.Client) -> None:
    assert client.get("/").json() == {"status": "alive"}
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2").json()
    assert meta["name"] == "steadyserve" and "extensions" in meta
    assert client.get("/v1/models").json()["models"] == ["scaler"]
    status = client.get("/v1/models/scaler")
    assert status.status_code == 200 and status.json()["ready"] is True
    for path in ("/v2/models/scaler", "/v2/models/scaler/versions/1"):
        m = client.get(path).json()
        assert m["name"] == "scaler"
        assert m["versions"] == ["1"]  # declares none: serves "1" (and no version)
        assert m["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}]
        assert m["outputs"][0]["name"] == "y"
    for path in ("/v2/models/scaler/ready", "/v2/models/scaler/versions/1/ready"):
        assert client.get(path).json() == {"name": "scaler", "ready": True}


def test_predict_and_infer(client: httpx.Client) -> None:
    assert_good(client)
    r = client.post("/v2/models/scaler/versions/1/infer", json={**GOOD_V2, "id": "abc"})
    assert r.status_code == 200
    assert r.json()["id"] == "abc"
    assert r.json()["model_version"] == "1"
    r = client.post("/v2/models/scaler/infer", json={**GOOD_V2, "outputs": [{"name": "y"}]})
    assert r.status_code == 200 and [o["name"] for o in r.json()["outputs"]] == ["y"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "needle"),
    [
        ("post", "/v1/models/scaler:predict", {"content": b"{not json"}, 400, "not valid JSON"),
        ("post", "/v1/models/scaler:predict", {"content": b""}, 400, "empty"),
        ("post", "/v1/models/scaler:predict", {"json": {"instances": []}}, 400, "non-empty"),
        ("post", "/v1/models/scaler:predict", {"json": {"wrong": 1}}, 400, "instances"),
        (
            "post",
            "/v1/models/scaler:predict",
            {"json": {"instances": ["a"]}},
            400,
            "must be numbers",
        ),
        (
            "post",
            "/v1/models/scaler:predict",
            {"json": {"instances": [[1, 2], [3]]}},
            400,
            "instance 1 has shape [1] but instance 0 has [2]",
        ),
        (
            "post",
            "/v1/models/scaler:predict",
            {"json": {"instances": [["a", "b"]]}},
            400,
            "input 'x': FP32 elements must be numbers",
        ),
        ("post", "/v1/models/scaler:predict", {"json": {"inputs": [[[1, 2], [3]]]}}, 400, "ragged"),
        (
            "post",
            "/v2/models/scaler/versions/999/infer",
            {"json": GOOD_V2},
            404,
            "model scaler has no version '999'; its versions: 1",
        ),
        ("get", "/v2/models/scaler/versions/999", {}, 404, "its versions: 1"),
        ("get", "/v2/models/scaler/versions/999/ready", {}, 404, "its versions: 1"),
        (
            "post",
            "/v2/models/scaler/infer",
            {"json": {**GOOD_V2, "outputs": [{"name": "y", "parameters": {"classification": 2}}]}},
            400,
            "parameter 'classification'",
        ),
        (
            "post",
            "/v2/models/scaler/infer",
            {"json": {**GOOD_V2, "outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}]}},
            400,
            "'binary_data' must be a boolean",
        ),
        ("post", "/v1/models/nope:predict", {"json": {"instances": [1]}}, 404, "nope"),
        ("get", "/v1/models/nope", {}, 404, "nope"),
        ("post", "/v2/models/scaler/infer", {"content": b"[1,"}, 400, "JSON"),
        (
            "post",
            "/v2/models/scaler/infer",
            {"json": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1]}]}},
            400,
            "elements",
        ),
        (
            "post",
            "/v2/models/scaler/infer",
            {"json": {"inputs": [{"name": "q", "datatype": "FP32", "shape": [1, 1], "data": [1]}]}},
            400,
            "unknown input",
        ),
        (
            "post",
            "/v2/models/scaler/infer",
            {
                "json": {
                    "inputs": [{"name": "x", "datatype": "INT32", "shape": [1, 1], "data": [1]}]
                }
            },
            400,
            "datatype",
        ),
        (
            "post",
            "/v2/models/scaler/infer",
            {"json": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}]}},
            400,
            "shape",
        ),
        ("post", "/v2/models/nope/infer", {"json": GOOD_V2}, 404, "nope"),
        ("get", "/v2/models/nope", {}, 404, "nope"),
        ("get", "/v2/models/nope/ready", {}, 404, "nope"),
        ("get", "/no/such/route", {}, 404, "no route"),
        (
            "post",
            "/v1/models/scaler:predict",
            {"json": {"instances": [[1]]}, "headers": {"x-request-timeout": "abc"}},
            400,
            "timeout",
        ),
        (
            "post",
            "/v1/models/scaler:predict",
            {"json": {"instances": [[1]]}, "headers": {"x-request-timeout": "-1"}},
            400,
            "timeout",
        ),
    ],
)
def test_errors_then_good(
    client: httpx.Client,
    method: str,
    path: str,
    kwargs: dict,
    status: int,
    needle: str,  # type: ignore[type-arg]
) -> None:
    r = getattr(client, method)(path, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert isinstance(error, str) and needle in error
    assert "Traceback" not in r.text
    assert_good(client)


def test_empty_batch_keeps_datatype_and_rank(client: httpx.Client) -> None:
    empty = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [0, 2], "data": []}]}
    r = client.post("/v2/models/scaler/infer", json=empty)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert (out["datatype"], out["shape"], out["data"]) == ("FP32", [0, 0], [])
    assert_good(client)


def test_chat_on_a_predict_model_is_refused_at_the_edge(client: httpx.Client) -> None:
    r = client.post(
        "/openai/v1/chat/completions",
        json={"model": "scaler", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert 400 <= r.status_code < 500, r.text
    assert r.status_code != 200
    assert_good(client)


LONG_INT = b"1" + b"0" * 5000  # past Python's 4300-digit int conversion limit


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/v1/models/scaler:predict", b'{"instances": [["\\ud800"]]}', "surrogate"),
        (
            "/v1/models/scaler:predict",
            b'{"instances": [[1]], "parameters": {"p": "a\\udfff"}}',
            "surrogate",
        ),
        (
            "/v1/models/scaler:predict",
            b'{"instances": [[1]], "parameters": {"\\ud800": 1}}',
            "surrogate",
        ),
        (
            "/v2/models/scaler/infer",
            b'{"id": "\\ud800", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], '
            b'"data": [1]}]}',
            "surrogate",
        ),
        ("/v1/models/scaler:predict", b'{"instances": [[36893488147419103232]]}', "64-bit"),
        (
            "/v2/models/scaler/infer",
            b'{"parameters": {"k": 36893488147419103232}, "inputs": [{"name": "x", '
            b'"datatype": "FP32", "shape": [1, 1], "data": [1]}]}',
            "64-bit",
        ),
        ("/v1/models/scaler:predict", b'{"instances": [[' + LONG_INT + b"]]}", "number"),
        ("/openai/v1/completions", b'{"model": "a\\udfffb", "prompt": "x"}', "surrogate"),
    ],
)
def test_unencodable_values_are_400_and_hold_no_slot(
    server: ServerProcess, client: httpx.Client, path: str, body: bytes, needle: str
) -> None:
    """Valid JSON that no downstream codec can carry (a lone surrogate, an integer past 64 bits
    or past Python's digit limit): 400 - several times over, and no request stays in flight
    (a leaked admission slot would end in 429s for everyone)."""
    for _ in range(3):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        message = error["message"] if isinstance(error, dict) else error
        assert needle in message and "Traceback" not in r.text
    assert server.debug()["models"]["scaler"]["in_flight"] == 0
    assert_good(client)


def test_nan_and_infinity_round_trip(client: httpx.Client) -> None:
    """NaN / Infinity in (Python clients send the literals) and out (the same literals), where
    strict JSON would have made a valid request a 500."""
    import json
    import math

    r = client.post(
        "/v1/models/scaler:predict",
        content=b'{"instances": [[NaN, Infinity]]}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    (row,) = json.loads(r.text)["predictions"]
    assert math.isnan(row[0]) and row[1] == math.inf
    body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [NaN, -Infinity]}]}'
    r = client.post(
        "/v2/models/scaler/infer", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 200, r.text
    data = json.loads(r.text)["outputs"][0]["data"]
    assert math.isnan(data[0]) and data[1] == -math.inf
    assert_good(client)

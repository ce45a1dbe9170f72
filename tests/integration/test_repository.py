"""Several models in one server (``--model_repository``) and the model repository extension
over REST: a crash of one model leaves the other serving; index/load/unload round trips; every
listing agrees at once; unload drains, then fails the rest with 503; load failures are reported."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import EXAMPLE, ServerProcess, make_repository, wait_for

GOOD_X = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
BROKEN = """
import steadyserve


class Broken(steadyserve.Model):
    def load(self):
        raise RuntimeError("no weights here")

    def predict(self, instances):
        return instances
"""


def text(value: str) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [value]}]}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess(
        "--model_repository",
        str(repo),
        "--graceful_shutdown_s",
        "2",
        "--restart_backoff_s",
        "0.1",
    ) as srv:
        yield srv


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def index(client: httpx.Client) -> dict[str, dict[str, str]]:
    r = client.post("/v2/repository/index")
    assert r.status_code == 200, r.text
    return {m["name"]: m for m in r.json()}


def scaler_ok(client: httpx.Client) -> bool:
    r = client.post("/v2/models/scaler/infer", json=GOOD_X)
    assert r.status_code == 200, r.text
    return bool(r.json()["outputs"][0]["data"] == [2.0, 4.0])


def test_two_models_ready_and_indexed(client: httpx.Client) -> None:
    models = index(client)
    assert {n: m["state"] for n, m in models.items()} == {"faulty": "READY", "scaler": "READY"}
    assert client.get("/v1/models").json()["models"] == ["faulty", "scaler"]
    assert client.get("/v2/health/ready").status_code == 200
    assert scaler_ok(client)
    r = client.post("/v2/models/faulty/infer", json=text("hi"))
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == ["HI"]
    ready = client.post("/v2/repository/index", json={"ready": True})
    assert [m["name"] for m in ready.json()] == ["faulty", "scaler"]


def test_crash_of_one_model_leaves_the_other_serving(
    server: ServerProcess, client: httpx.Client
) -> None:
    scaler_pid = server.debug()["models"]["scaler"]["pid"]
    r = client.post("/v2/models/faulty/infer", json=text("crash"))
    assert r.status_code == 503, r.text
    # the other model serves on, with the same worker, while the faulty one restarts
    for _ in range(5):
        assert scaler_ok(client)
    assert server.debug()["models"]["scaler"]["pid"] == scaler_pid
    assert index(client)["scaler"]["state"] == "READY"
    wait_for(lambda: client.get("/v2/models/faulty/ready").status_code == 200, timeout=30)
    assert client.get("/v2/health/ready").status_code == 200
    r = client.post("/v2/models/faulty/infer", json=text("back"))
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == ["BACK"]


def test_unload_load_round_trip_and_listings_agree(client: httpx.Client) -> None:
    r = client.post("/v2/repository/models/scaler/unload")
    assert r.status_code == 200, r.text
    assert client.get("/v1/models").json()["models"] == ["faulty"]
    assert client.get("/v2/models/scaler/ready").status_code == 404
    assert client.post("/v2/models/scaler/infer", json=GOOD_X).status_code == 404
    openai = client.get("/openai/v1/models")
    if openai.status_code == 200:  # the OpenAI listing reads the same registry
        assert [m["id"] for m in openai.json()["data"]] == ["faulty"]
    entry = index(client)["scaler"]
    assert entry["state"] == "UNAVAILABLE" and entry["reason"] == "unloaded"
    assert client.get("/v2/health/ready").status_code == 200  # what should be loaded is ready
    assert client.post("/v2/models/faulty/infer", json=text("x")).status_code == 200
    assert client.post("/v2/repository/models/scaler/unload").status_code == 404
    r = client.post("/v2/repository/models/scaler/load")
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "scaler", "load": True}
    assert client.get("/v2/models/scaler/ready").status_code == 200
    assert client.get("/v1/models").json()["models"] == ["faulty", "scaler"]
    assert index(client)["scaler"]["state"] == "READY"
    assert scaler_ok(client)
    # loading a loaded model is a no-op 200
    assert client.post("/v2/repository/models/scaler/load").status_code == 200
    # the unload (counted after the model left the registry) keeps its model label
    metrics = client.get("/metrics").text
    assert 'route="/v2/repository/models/{name}/unload"' in metrics and any(
        'model="scaler"' in line and "/unload" in line and 'code="200"' in line
        for line in metrics.splitlines()
    )


def test_unload_drains_in_flight_then_fails_the_rest(
    server: ServerProcess, client: httpx.Client
) -> None:
    results: dict[str, int] = {}

    def send(value: str) -> None:
        with server.client() as c:
            results[value] = c.post("/v2/models/faulty/infer", json=text(value)).status_code

    quick = threading.Thread(target=send, args=("sleep:1",))
    slow = threading.Thread(target=send, args=("sleep:30",))
    quick.start()
    wait_for(lambda: server.debug()["models"]["faulty"]["in_flight"] == 1, timeout=5)
    slow.start()
    wait_for(lambda: server.debug()["models"]["faulty"]["in_flight"] == 2, timeout=5)
    started = time.monotonic()
    r = client.post("/v2/repository/models/faulty/unload")
    assert r.status_code == 200, r.text
    assert time.monotonic() - started < 10
    quick.join(10)
    slow.join(10)
    assert results == {"sleep:1": 200, "sleep:30": 503}
    assert scaler_ok(client)
    assert client.post("/v2/repository/models/faulty/load").status_code == 200
    assert client.post("/v2/models/faulty/infer", json=text("again")).status_code == 200


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "needle"),
    [
        ("/v2/repository/models/nope/load", {}, 404, "nope"),
        ("/v2/repository/models/nope/unload", {}, 404, "nope"),
        ("/v2/repository/models/-bad/load", {}, 400, "invalid model name"),
        (
            "/v2/repository/models/scaler/load",
            {"json": {"parameters": {"config": "{}"}}},
            400,
            "not supported",
        ),
        ("/v2/repository/models/scaler/load", {"content": b"{oops"}, 400, "JSON"),
        ("/v2/repository/index", {"json": {"ready": "yes"}}, 400, "ready"),
        ("/v2/repository/index", {"json": [1]}, 400, "object"),
    ],
)
def test_repository_errors_then_good(
    client: httpx.Client, path: str, kwargs: dict[str, Any], status: int, needle: str
) -> None:
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]
    assert index(client)["scaler"]["state"] == "READY"
    assert scaler_ok(client)


def test_models_added_later_and_load_failures(repo: Path, client: httpx.Client) -> None:
    broken = repo / "broken"
    broken.mkdir()
    (broken / "model.py").write_text(BROKEN, encoding="utf-8")
    (broken / "steadyserve.txt").write_text("Broken", encoding="utf-8")
    make_repository(repo, late=EXAMPLE)
    models = index(client)
    assert models["broken"]["state"] == models["late"]["state"] == "UNAVAILABLE"
    assert models["late"]["reason"] == "not loaded"
    r = client.post("/v2/repository/models/broken/load")
    assert r.status_code == 500, r.text
    assert "no weights here" in r.json()["error"] and "Traceback" not in r.text
    entry = index(client)["broken"]
    assert entry["state"] == "UNAVAILABLE" and "no weights here" in entry["reason"]
    assert client.get("/v2/health/ready").status_code == 200  # a failed load blocks nothing
    assert "broken" not in client.get("/v1/models").json()["models"]
    r = client.post("/v2/repository/models/late/load")
    assert r.status_code == 200, r.text
    r = client.post("/v2/models/late/infer", json=GOOD_X)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [2.0, 4.0]
    assert client.post("/v2/repository/models/late/unload").status_code == 200
    assert scaler_ok(client)


def test_a_model_that_never_loads_is_given_up_not_a_pod_restart(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A repository holding a model that cannot load: after --max_consecutive_crashes failed
    loads it is taken out (UNAVAILABLE with its reason), so the server turns ready for the good
    model and liveness never fails; a directory whose name is not a model name is skipped."""
    repo = make_repository(tmp_path_factory.mktemp("repo-broken"), scaler=EXAMPLE)
    broken = repo / "broken"
    broken.mkdir()
    (broken / "model.py").write_text(BROKEN, encoding="utf-8")
    (broken / "steadyserve.txt").write_text("Broken", encoding="utf-8")
    make_repository(repo / "spaced", **{"bad name": EXAMPLE})  # repo/spaced/bad name
    (repo / "spaced").rename(repo / "bad name")
    with (
        ServerProcess(
            "--model_repository",
            str(repo),
            "--max_consecutive_crashes",
            "2",
            "--restart_backoff_s",
            "0.1",
            wait_ready=False,
        ) as srv,
        srv.client() as c,
    ):
        lives: list[int] = []

        def ready() -> bool:
            try:
                lives.append(c.get("/v2/health/live").status_code)
                return c.get("/v2/health/ready").status_code == 200
            except httpx.ConnectError:  # not listening yet
                return False

        wait_for(ready, timeout=60, interval=0.1)
        assert set(lives) == {200}, lives
        models = index(c)
        assert set(models) == {"broken", "scaler"}
        assert models["scaler"]["state"] == "READY"
        assert models["broken"]["state"] == "UNAVAILABLE"
        assert "no weights here" in models["broken"]["reason"]
        assert c.get("/v1/models").json()["models"] == ["scaler"]
        assert [m["id"] for m in c.get("/openai/v1/models").json()["data"]] == ["scaler"]
        assert c.post("/v2/models/broken/infer", json=GOOD_X).status_code == 404
        assert scaler_ok(c)
        assert c.get("/v2/health/live").status_code == 200

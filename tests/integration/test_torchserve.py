"""TorchServe archives served by steadyserve over TorchServe's own APIs and KServe's: built
with torch-model-archiver, run unmodified, under concurrency and faults, behind the API key."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from steadyserve.protocol.grpc_gen import grpc_predict_v2_pb2 as pb
from steadyserve.protocol.grpc_gen import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.helpers import ServerProcess, run_cli, wait_for
from tests.ts_material import build_all, build_broken  # skips without ts / the archiver

KEY = "ts-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("ts")
    store = work / "store"
    archives = build_all(work, store)
    spare = work / "spare"
    spare.mkdir()
    archives.update(build_broken(spare, work))
    for name in ("importerror", "wrongname"):
        (spare / f"{name}-config.yaml").unlink(missing_ok=True)
    for path in store.glob("*.yaml"):
        path.unlink()
    return archives


@pytest.fixture(scope="module")
def server(material: dict[str, Path]) -> Iterator[ServerProcess]:
    store = material["echo"].parent
    with ServerProcess(
        "--model_repository",
        str(store),
        "--max_request_body_bytes",
        str(LIMIT),
        env={"STEADYSERVE_API_KEY": KEY},
        grpc=True,
        ready_timeout=180,
    ) as srv:
        yield srv


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client(headers=AUTH) as c:
        yield c


def echo_ok(client: httpx.Client, text: str = "still fine") -> None:
    r = client.post("/predictions/echo", content=text, headers={"content-type": "text/plain"})
    assert r.status_code == 200, r.text
    assert r.json()["echo"] == text


def test_ping_is_open_and_healthy(server: ServerProcess) -> None:
    r = httpx.get(server.url + "/ping")
    assert (r.status_code, r.json()) == (200, {"status": "Healthy"})


def test_predictions_behind_the_api_key(server: ServerProcess) -> None:
    r = httpx.post(server.url + "/predictions/echo", content=b"x")
    assert r.status_code == 401
    r = httpx.get(server.url + "/models")
    assert r.status_code == 401


def test_torchscript_and_eager(client: httpx.Client) -> None:
    for name in ("scripted", "eager"):
        r = client.post(f"/predictions/{name}", json={"x": [1, 2, 3]})
        assert r.status_code == 200, r.text
        out = r.json()
        assert isinstance(out, list) and len(out) == 2 and all(isinstance(v, float) for v in out)
    r = client.post("/predictions/scripted/1.0", json={"x": [1, 2, 3]})
    assert r.status_code == 200
    r = client.post("/predictions/scripted/9.9", json={"x": [1, 2, 3]})
    assert r.status_code == 404 and "no version" in r.json()["error"]
    r = client.post("/predictions/nope", json={"x": [1]})
    assert r.status_code == 404


def test_raw_json_and_multipart_bodies(client: httpx.Client) -> None:
    r = client.post(
        "/predictions/echo/2.0", content=b"hi", headers={"content-type": "text/plain", "x-tag": "t"}
    )
    body = r.json()
    assert (r.status_code, body["echo"], body["tag"], body["model"]) == (200, "hi", "t", "echo")
    assert body["request_id"] == r.headers["x-request-id"]
    assert body["saw_authorization"] is False  # the API key never reaches a handler
    r = client.post("/predictions/echo", json={"a": 1})
    assert r.json()["echo"] == {"a": 1}
    r = client.post("/predictions/echo", files={"data": ("img.bin", b"filebytes", "text/plain")})
    assert r.status_code == 200, r.text
    assert r.json()["echo"] == "filebytes" and r.json()["fields"] == ["data"]


def test_bad_bodies_are_4xx_then_good_requests_succeed(client: httpx.Client) -> None:
    empty_form = client.post(
        "/predictions/echo",
        content=b"--xyz--\r\n",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert empty_form.status_code == 400 and "no parts" in empty_form.json()["error"]
    echo_ok(client)
    r = client.post("/predictions/echo", content=b"")
    assert r.status_code == 400 and "no input" in r.json()["error"]
    echo_ok(client)
    r = client.post(
        "/predictions/echo", content=b"a" * (LIMIT + 1), headers={"content-type": "text/plain"}
    )
    assert r.status_code == 413
    echo_ok(client)


def test_handler_status_content_type_and_bytes(client: httpx.Client) -> None:
    r = client.post(
        "/predictions/status", content=b"teapot", headers={"content-type": "text/plain"}
    )
    assert (r.status_code, r.json()) == (418, {"error": "short and stout"})
    r = client.post("/predictions/status", content=b"text", headers={"content-type": "text/plain"})
    assert (r.status_code, r.text, r.headers["x-handler"]) == (200, "plain words", "status")
    assert r.headers["content-type"].startswith("text/plain")
    r = client.post("/predictions/status", content=b"bytes", headers={"content-type": "text/plain"})
    assert (r.status_code, r.content) == (200, b"\x00\x01raw")
    r = client.post(
        "/predictions/status", content=b"object", headers={"content-type": "text/plain"}
    )
    assert r.status_code == 500 and "not JSON" in r.json()["error"]
    r = client.post(
        "/predictions/status",
        content=b"prediction-exception",
        headers={"content-type": "text/plain"},
    )
    assert (r.status_code, r.text) == (422, "cannot predict that")
    echo_ok(client)


def test_wrong_number_of_outputs_is_500_naming_the_handler(client: httpx.Client) -> None:
    for _ in range(2):
        r = client.post("/predictions/wrongcount", content=b"x")
        assert r.status_code == 500
        assert "handler wrong_handler:handle returned 2 outputs" in r.json()["error"]
        assert "Traceback" not in r.text
    echo_ok(client)
    assert client.get("/v2/models/wrongcount/ready").status_code == 200  # worker stayed up


def _fire(client: httpx.Client, bodies: list[Any]) -> list[httpx.Response]:
    """All at once, while the echo worker is busy with a slow request, so they queue together
    and the batcher hands them to the handler as one batch (batchSize 8)."""
    results: list[Any] = [None] * len(bodies)
    slow = threading.Thread(
        target=lambda: client.post("/predictions/echo", json={"sleep": 1.0}), daemon=True
    )
    slow.start()
    time.sleep(0.3)
    barrier = threading.Barrier(len(bodies))

    def one(i: int) -> None:
        barrier.wait()
        results[i] = client.post("/predictions/echo", json=bodies[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    slow.join(60)
    return results


def test_batch_of_8_and_one_poisoned_input_fails_alone(client: httpx.Client) -> None:
    good = _fire(client, [{"i": i} for i in range(8)])
    assert [r.status_code for r in good] == [200] * 8
    assert max(r.json()["batch"] for r in good) > 1  # really batched
    assert sorted(r.json()["echo"]["i"] for r in good) == list(range(8))
    bodies: list[Any] = [{"i": i} for i in range(8)]
    bodies[5] = {"boom": True}
    mixed = _fire(client, bodies)
    codes = [r.status_code for r in mixed]
    assert codes == [200] * 5 + [500] + [200] * 2, [r.text for r in mixed]
    assert "poisoned" in mixed[5].json()["error"] and "Traceback" not in mixed[5].text
    echo_ok(client)


def test_concurrent_clients_on_several_models(client: httpx.Client) -> None:
    errors: list[str] = []

    def worker(n: int) -> None:
        for i in range(5):
            name = ("echo", "status", "scripted")[(n + i) % 3]
            body = {"x": [1, 2, 3]} if name == "scripted" else {"n": n, "i": i}
            r = client.post(f"/predictions/{name}", json=body)
            if r.status_code != 200:
                errors.append(f"{name}: {r.status_code} {r.text[:200]}")
            # KServe V1 on the same models at the same time (batched apart from /predictions)
            instance = [1, 2, 3] if name == "scripted" else {"data": body}
            r = client.post(f"/v1/models/{name}:predict", json={"instances": [instance]})
            if r.status_code != 200 or len(r.json()["predictions"]) != 1:
                errors.append(f"v1 {name}: {r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []


def test_explanations(client: httpx.Client) -> None:
    r = client.post("/explanations/explain", json={"target": 1})
    assert (r.status_code, r.json()) == (200, {"explanation": "because", "target": 0})
    r = client.post("/explanations/scripted", json={"x": [1, 2, 3]})
    assert r.status_code == 400 and "does not implement explanations" in r.json()["error"]
    echo_ok(client)


def test_same_model_over_v1_v2_and_grpc(server: ServerProcess, client: httpx.Client) -> None:
    ts = client.post("/predictions/scripted", json={"x": [1, 2, 3]}).json()
    v1 = client.post("/v1/models/scripted:predict", json={"instances": [[1, 2, 3]]})
    assert v1.status_code == 200 and v1.json()["predictions"][0] == pytest.approx(ts)
    v2 = client.post(
        "/v2/models/scripted/infer",
        json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]},
    )
    assert v2.status_code == 200, v2.text
    assert v2.json()["outputs"][0]["data"] == pytest.approx(ts)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        msg = pb.ModelInferRequest(model_name="scripted")
        t = msg.inputs.add(name="x", datatype="FP32", shape=[1, 3])
        t.contents.fp32_contents.extend([1, 2, 3])
        resp = stub.ModelInfer(msg, metadata=[("authorization", f"Bearer {KEY}")], timeout=30)
        out = resp.outputs[0]
        dtype = {"FP32": "<f4", "FP64": "<f8"}[out.datatype]
        values = (
            np.frombuffer(resp.raw_output_contents[0], dtype=dtype).tolist()
            if resp.raw_output_contents
            else list(out.contents.fp32_contents or out.contents.fp64_contents)
        )
        assert values == pytest.approx(ts)
    # a V1 failure of one instance is that instance's error (the status handler's 418 → 400)
    r = client.post("/v1/models/status:predict", json={"instances": ["teapot"]})
    assert r.status_code == 400 and "teapot" in r.json()["error"]


def test_handler_metrics_in_prometheus(server: ServerProcess, client: httpx.Client) -> None:
    echo_ok(client)
    text = httpx.get(server.url + "/metrics").text
    assert (
        'steadyserve_torchserve_metric_total{metric="EchoRequests",model="echo",unit="count"}'
        in text
    )
    assert (
        'steadyserve_torchserve_metric_value{metric="PredictionTime",model="echo",unit="ms"}'
        in text
    )


def test_management_api(material: dict[str, Path], client: httpx.Client) -> None:
    listed = client.get("/models").json()["models"]
    assert {m["modelName"] for m in listed} >= {"echo", "scripted", "eager", "status", "other"}
    (desc,) = client.get("/models/echo").json()
    assert (desc["modelVersion"], desc["batchSize"], desc["maxBatchDelay"]) == ("2.0", 8, 50.0)
    assert desc["workers"][0]["status"] == "READY"
    assert client.get("/models/nope").status_code == 404
    store = material["echo"].parent
    shutil.copy(material["status"], store / "status2.mar")
    # the manifest's model name, as in TorchServe, unless model_name is given
    r = client.post("/models", params={"url": "status2.mar"})
    assert r.status_code == 400 and "model status is already registered" in r.json()["error"]
    r = client.post(
        "/models", params={"url": "status2.mar", "model_name": "status2", "batch_size": 2}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"status": 'Model "status2" Version: 1.0 registered with 1 initial workers'}
    assert client.post("/predictions/status2", content=b"ok").json() == {"ok": "ok"}
    assert client.get("/models/status2").json()[0]["batchSize"] == 2
    assert client.delete("/models/status2").status_code == 200
    assert client.post("/predictions/status2", content=b"ok").status_code == 404
    for url, why in (
        ("https://example.com/m.mar", "only local archives"),
        ("../../etc/passwd", "in the model store"),
        ("absent.mar", "no archive"),
    ):
        r = client.post("/models", params={"url": url})
        assert r.status_code == 400 and why in r.json()["error"], r.text
    # a handler that fails to import or does not exist: 400 with its message; others serve on
    for name, why in (
        ("importerror", "No module named 'not_a_real_package_for_steadyserve_tests'"),
        ("wrongname", "handler 'no_such_handler.py' not found"),
    ):
        shutil.copy(material[name], store / f"{name}.mar")
        r = client.post("/models", params={"url": f"{name}.mar"})
        assert r.status_code == 400 and why in r.json()["error"], r.text
        assert "Traceback" not in r.text
        echo_ok(client)
        (store / f"{name}.mar").unlink()
    assert httpx.get(str(client.base_url) + "/ping").json() == {"status": "Healthy"}


def test_failed_loads_show_in_ping(material: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    for name in ("echo", "importerror", "wrongname"):
        shutil.copy(material[name], store / f"{name}.mar")
    with ServerProcess(
        "--model_repository", str(store), "--max_consecutive_crashes", "1", wait_ready=False
    ) as srv:
        srv.wait_until_ready(180, path="/v2/models/echo/ready")

        def given_up() -> bool:
            r = httpx.post(srv.url + "/v2/repository/index", json={}, timeout=10)
            return sum(m["state"] == "UNAVAILABLE" for m in r.json()) == 2

        wait_for(given_up, timeout=120)  # both failed loads are final, not restarting
        r = httpx.get(srv.url + "/ping")
        body = r.json()
        assert (r.status_code, body["status"]) == (503, "Unhealthy")
        assert "not_a_real_package_for_steadyserve_tests" in body["models"]["importerror"]
        assert "no_such_handler" in body["models"]["wrongname"]
        with srv.client() as c:
            echo_ok(c)


def test_ts_config_and_model_archive(material: dict[str, Path], tmp_path: Path) -> None:
    cfg = tmp_path / "config.properties"
    cfg.write_text(
        "inference_address=http://127.0.0.1:1\n"
        "default_response_timeout=30\n"
        "number_of_netty_threads=4\n"
        'models={"echo": {"2.0": {"batchSize": 4, "maxBatchDelay": 20, "responseTimeout": 2}}}\n'
    )
    with ServerProcess("--model_archive", str(material["echo"]), "--ts_config", str(cfg)) as srv:
        with srv.client() as c:
            (desc,) = c.get("/models/echo").json()
            assert (desc["batchSize"], desc["maxBatchDelay"], desc["responseTimeout"]) == (
                4,
                20.0,
                2,
            )
            echo_ok(c)
            # responseTimeout: the model's deadline on its TorchServe routes (504 past it)
            r = c.post("/predictions/echo", json={"sleep": 3})
            assert r.status_code == 504
            echo_ok(c)
        assert "number_of_netty_threads" in srv.logs()


def test_start_up_errors_exit_2(material: dict[str, Path], tmp_path: Path) -> None:
    r = run_cli("serve", "--model_archive", str(tmp_path / "absent.mar"))
    assert r.returncode == 2 and "--model_archive" in r.stderr and "no such archive" in r.stderr
    junk = tmp_path / "junk.mar"
    junk.write_bytes(b"not a zip at all")
    r = run_cli("serve", "--model_archive", str(junk))
    assert r.returncode == 2 and "not a zip file" in r.stderr
    cfg = tmp_path / "config.properties"
    cfg.write_text("default_response_timeout=soon\n")
    r = run_cli("serve", "--model_archive", str(material["echo"]), "--ts_config", str(cfg))
    assert r.returncode == 2 and "default_response_timeout" in r.stderr
    assert "Traceback" not in r.stderr

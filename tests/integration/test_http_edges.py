"""HTTP edges found by the newcomer's walk and the fuzzer (issue 11), against one server: each
bad input gets its status code, and a good request still succeeds after it."""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import ServerProcess, make_repository, wait_for

HUGE = "1" + "0" * 309  # a JSON integer too large for any float
PREDICT = "/v1/models/scaler:predict"
READ_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = make_repository(tmp_path_factory.mktemp("repo"))
    with ServerProcess(
        "--model_repository",
        str(repo),
        "--request_read_timeout_s",
        str(READ_TIMEOUT_S),
    ) as srv:
        srv.wait_until_ready(path="/v2/models/faulty/ready")
        yield srv


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def assert_good(client: httpx.Client) -> None:
    r = client.post(PREDICT, json={"instances": [[1, 2]]})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [[2.0, 4.0]]}


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "OPTIONS"])
def test_predict_with_another_method_is_405_allow_post(client: httpx.Client, method: str) -> None:
    r = client.request(method, PREDICT)
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == "POST"
    assert_good(client)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (PREDICT, '{"instances": [[' + HUGE + ", 1]]}"),
        (
            "/v2/models/scaler/infer",
            '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": ['
            + HUGE
            + "]}]}",
        ),
        (
            "/openai/v1/completions",
            '{"model": "faulty", "prompt": "hi", "max_tokens": 1, "temperature": ' + HUGE + "}",
        ),
        (
            "/openai/v1/completions",
            '{"model": "faulty", "prompt": "hi", "max_tokens": 1, "logit_bias": {"1": '
            + HUGE
            + "}}",
        ),
    ],
)
def test_huge_json_integers_in_float_fields_are_400(
    client: httpx.Client, path: str, body: str
) -> None:
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert_good(client)


def test_non_ascii_digits_in_the_binary_header_length_are_400(client: httpx.Client) -> None:
    r = client.post(
        "/v2/models/scaler/infer",
        content=b"{}",
        headers={"Inference-Header-Content-Length": "\xb2".encode("latin-1")},
    )
    assert r.status_code == 400, r.text
    assert "Inference-Header-Content-Length" in r.json()["error"]
    assert_good(client)


def test_v1_instances_must_meet_the_declared_shape(client: httpx.Client) -> None:
    r = client.post(PREDICT, json={"instances": [1, 2]})  # scaler declares [-1, -1]
    assert r.status_code == 400, r.text
    assert "[-1, -1]" in r.json()["error"]
    assert_good(client)


def test_multi_member_gzip_is_decoded_whole_and_junk_after_it_refused(
    client: httpx.Client,
) -> None:
    body = b'{"instances": [[1, 2], [3, 4]]}'
    two_members = gzip.compress(body[:10]) + gzip.compress(body[10:])
    r = client.post(
        PREDICT,
        content=two_members,
        headers={"content-encoding": "gzip", "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [[2.0, 4.0], [6.0, 8.0]]}
    for junk in (b"junk", b"\0" * 8):
        r = client.post(
            PREDICT, content=gzip.compress(body) + junk, headers={"content-encoding": "gzip"}
        )
        assert r.status_code == 400, r.text
    assert_good(client)


def test_unknown_model_on_a_shared_path_answers_in_the_callers_shape(
    client: httpx.Client,
) -> None:
    kserve = client.get("/v1/models/nope")
    assert kserve.status_code == 404 and isinstance(kserve.json()["error"], str)
    openai = client.get("/v1/models/nope", headers={"X-Stainless-Lang": "python"})
    assert openai.status_code == 404
    assert set(openai.json()["error"]) >= {"message", "type", "code"}
    assert client.get("/v1/models/scaler").status_code == 200


def _silent_socket(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=READ_TIMEOUT_S + 15)


@pytest.mark.parametrize(
    "sent", [b"", b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n", b"POST /v1/x HTTP/1.1\r\n"]
)
def test_connections_that_stall_are_closed(
    client: httpx.Client, server: ServerProcess, sent: bytes
) -> None:
    with _silent_socket(server) as sock:
        sock.sendall(sent)
        start = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server (a timeout here raises)
        assert time.monotonic() - start >= READ_TIMEOUT_S - 0.5
    assert_good(client)


def test_a_stalled_body_is_closed_but_a_slow_one_is_not(
    client: httpx.Client, server: ServerProcess
) -> None:
    body = b'{"instances": [[1, 2]]}'
    head = (
        f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with _silent_socket(server) as sock:  # a slow body: each pause under the timeout
        sock.sendall(head)
        for i in range(3):
            time.sleep(READ_TIMEOUT_S / 3)
            sock.sendall(body[i * 8 : (i + 1) * 8])
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    with _silent_socket(server) as sock:  # a stalled one
        sock.sendall(head + body[:5])
        assert sock.recv(1024) == b""
    assert_good(client)


def test_access_log_names_the_model_and_probes_are_debug(
    client: httpx.Client, server: ServerProcess
) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/models/scaler/ready").status_code == 200
    assert_good(client)

    def logged() -> str | None:
        text = server.logs()
        return text if f"POST {PREDICT.replace('scaler', '{name}')} 200" in text else None

    text = wait_for(logged, timeout=10)
    line = next(x for x in text.splitlines() if "POST /v1/models/{name}:predict 200" in x)
    assert line.rstrip().endswith("model=scaler"), line
    assert "/v2/health/live" not in text and "/v2/models/{name}/ready" not in text
    # the effective configuration: one key per line
    assert "effective configuration (" in text
    assert any(x.rstrip().endswith("http_port = " + str(server.port)) for x in text.splitlines())


def test_health_answers_fast_while_large_bodies_are_parsed(server: ServerProcess) -> None:
    """Three clients loop 8 MB bodies; the liveness probe keeps answering (the bodies are parsed
    off the event loop). Bounded: 20 probes, about 5 s."""
    import threading

    body = json.dumps(
        {"model": "faulty", "prompt": "x " * (4 * 1024 * 1024), "max_tokens": 1}
    ).encode()
    stop = threading.Event()
    sent = [0]

    def hammer() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            while not stop.is_set():
                c.post(
                    "/openai/v1/completions",
                    content=body,
                    headers={"content-type": "application/json"},
                )
                sent[0] += 1

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    latencies = []
    try:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            time.sleep(0.5)
            for _ in range(20):
                start = time.perf_counter()
                assert c.get("/v2/health/live").status_code == 200
                latencies.append(time.perf_counter() - start)
                time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert sent[0] >= 3
    latencies.sort()
    # Kubernetes' probe timeout is 1 s: every probe within it, and most within 100 ms
    assert latencies[-1] < 1.0, latencies
    assert latencies[len(latencies) // 2] < 0.1, latencies


def test_draining_says_what_happens_next(tmp_path: Path) -> None:
    import signal
    import threading

    release = tmp_path / "release"
    repo = make_repository(tmp_path / "repo")
    with ServerProcess("--model_repository", str(repo), "--graceful_shutdown_s", "30") as srv:
        srv.wait_until_ready(path="/v2/models/faulty/ready")
        held: list[httpx.Response] = []
        worker = threading.Thread(
            target=lambda: held.append(
                httpx.post(
                    srv.url + "/v1/models/faulty:predict",
                    json={"instances": [f"wait:{release}"]},
                    timeout=60,
                )
            )
        )
        worker.start()
        wait_for(lambda: srv.debug()["models"]["faulty"]["in_flight"] == 1, timeout=30)
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGINT)
        wait_for(lambda: "press Ctrl-C again to stop now" in srv.logs(), timeout=10)
        r = httpx.post(srv.url + PREDICT, json={"instances": [[1, 2]]}, timeout=10)
        assert r.status_code == 503 and r.json() == {"error": "the server is shutting down"}
        assert "Retry-After" in r.headers
        assert httpx.get(srv.url + "/v2/health/live").status_code == 200
        release.touch()
        worker.join(60)
        assert held and held[0].status_code == 200
        assert srv.proc.wait(timeout=30) == 0

"""Fault injection: a model that raises, crashes, segfaults, hangs or runs out of memory on chosen
inputs, next to good requests under concurrency. Every good request succeeds (or, if it shared a
dying worker, gets a fast 503), every bad one gets its status, nothing hangs, readiness tells the
truth, and the server serves normally afterwards."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.helpers import FAULTY, ServerProcess, wait_for

FAST = [
    "--model_class",
    FAULTY,
    "--model_name",
    "faulty",
    "--worker_hang_timeout_s",
    "4",
    "--restart_backoff_s",
    "0.1",
    "--max_batch_wait_ms",
    "30",
    "--worker_memory_limit_mb",
    "512",
]


def predict(
    url: str, item: str, timeout: float = 20, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/models/faulty:predict",
        json={"instances": [item]},
        timeout=timeout,
        headers=headers or {},
    )


@pytest.fixture(scope="module")
def calls_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("faulty") / "calls.txt"


@pytest.fixture(scope="module")
def load_gate(calls_file: Path) -> Path:
    """While this file exists, a (re)starting faulty worker waits in ``load``."""
    return calls_file.parent / "load-gate"


@pytest.fixture(scope="module")
def server(calls_file: Path, load_gate: Path) -> Iterator[ServerProcess]:
    env = {"FAULTY_CALLS_FILE": str(calls_file), "FAULTY_LOAD_GATE": str(load_gate)}
    with ServerProcess(*FAST, env=env) as srv:
        yield srv


def ready(srv: ServerProcess) -> int:
    return httpx.get(srv.url + "/v2/health/ready", timeout=5).status_code


def assert_serving(srv: ServerProcess) -> None:
    srv.wait_until_ready(30)
    r = predict(srv.url, "ok")
    assert r.status_code == 200 and r.json() == {"predictions": ["OK"]}


def test_exception_in_a_batch_fails_only_the_culprit(
    server: ServerProcess, calls_file: Path
) -> None:
    calls_file.write_text("")
    items = [f"good{i}" for i in range(24)]
    items[5] = items[17] = "raise"
    items[11] = "bad-input"
    with ThreadPoolExecutor(len(items)) as pool:
        responses = list(pool.map(lambda it: predict(server.url, it), items))
    for item, r in zip(items, responses, strict=True):
        if item == "raise":
            assert r.status_code == 500
            assert "boom" in r.json()["error"] and "Traceback" not in r.text
        elif item == "bad-input":
            assert r.status_code == 400 and "refused" in r.json()["error"]
        else:
            assert r.status_code == 200, r.text
            assert r.json() == {"predictions": [item.upper()]}
    sizes = [int(x) for x in calls_file.read_text().split()]
    assert max(sizes) > 1, f"requests were never batched: {sizes}"
    assert server.debug()["models"]["faulty"]["restarts"] == 0
    assert_serving(server)


@pytest.mark.parametrize("culprit", ["crash", "segfault"])
def test_worker_death_fails_in_flight_fast_and_recovers(
    server: ServerProcess, culprit: str, load_gate: Path
) -> None:
    """Readiness is red from the moment the death is seen: it is checked right after the
    culprit's own 503, while the restarted worker is held in ``load`` (a gate file) - not
    sampled by a poller that a busy machine may deschedule past the whole restart."""
    before = server.debug()["models"]["faulty"]["restarts"]
    items = ["sleep:0.3"] * 6 + [culprit] + ["ok"] * 5
    results: dict[int, tuple[int, float]] = {}

    def go(i: int, item: str) -> None:
        t0 = time.monotonic()
        r = predict(server.url, item)
        results[i] = (r.status_code, time.monotonic() - t0)
        if r.status_code == 503:
            assert "Retry-After" in r.headers and "Traceback" not in r.text

    load_gate.write_text("held")
    try:
        threads = [threading.Thread(target=go, args=(i, it)) for i, it in enumerate(items)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        assert len(results) == len(items), "a request never completed"
        status, elapsed = results[items.index(culprit)]
        assert status == 503 and elapsed < 5
        for i, (code, took) in results.items():
            assert code in (200, 503), (items[i], code)
            assert took < 10
        # the worker is down (its successor is held in load): readiness and requests say so
        assert ready(server) == 503, "readiness stayed green while the worker was down"
        assert predict(server.url, "ok").status_code == 503
    finally:
        load_gate.unlink()
    assert_serving(server)
    stats = server.debug()["models"]["faulty"]
    assert stats["restarts"] == before + 1
    assert stats["in_flight"] == 0


def test_hang_is_detected_and_worker_restarted(server: ServerProcess) -> None:
    before = server.debug()["models"]["faulty"]["restarts"]
    t0 = time.monotonic()
    r = predict(server.url, "hang", timeout=30)
    took = time.monotonic() - t0
    assert r.status_code == 503 and took < 10, (r.status_code, took)
    assert_serving(server)
    assert server.debug()["models"]["faulty"]["restarts"] == before + 1


def test_a_slow_batch_is_not_a_hang(server: ServerProcess) -> None:
    """Three rows of 2 s each in one predict call: 6 s of silence, past the 4 s hang timeout,
    but within it per row - the batch completes and the worker is not restarted."""
    before = server.debug()["models"]["faulty"]["restarts"]
    r = httpx.post(
        f"{server.url}/v1/models/faulty:predict",
        json={"instances": ["sleep:2", "sleep:2", "sleep:2"]},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": ["sleep:2"] * 3}
    assert server.debug()["models"]["faulty"]["restarts"] == before
    assert_serving(server)


def test_out_of_memory_fails_only_that_request(server: ServerProcess) -> None:
    before = server.debug()["models"]["faulty"]["restarts"]
    with ThreadPoolExecutor(4) as pool:
        oom = pool.submit(predict, server.url, "oom")
        goods = [pool.submit(predict, server.url, f"g{i}") for i in range(3)]
        r = oom.result()
        assert r.status_code == 500 and "memory" in r.json()["error"]
        for g in goods:
            assert g.result().status_code == 200
    assert server.debug()["models"]["faulty"]["restarts"] == before
    assert_serving(server)


def test_deadline_gives_504_and_expired_queued_work_is_dropped(
    server: ServerProcess, calls_file: Path
) -> None:
    t0 = time.monotonic()
    r = predict(server.url, "sleep:1.5", headers={"X-Request-Timeout": "0.3"})
    assert r.status_code == 504 and time.monotonic() - t0 < 1.2
    # the worker is still busy with the sleep; a queued request whose deadline passes while
    # it waits must be dropped, not run later
    calls_file.write_text("")
    r = predict(server.url, "never-run", headers={"X-Request-Timeout": "0.2"})
    assert r.status_code == 504
    time.sleep(1.5)
    assert_serving(server)
    assert "never-run" not in calls_file.read_text()


def test_client_disconnect_cancels_the_request(server: ServerProcess) -> None:
    with pytest.raises(httpx.ReadTimeout):
        predict(server.url, "sleep:3", timeout=0.3)
    # the engine forgets it at once (not after the 3 s sleep)
    wait_for(lambda: server.debug()["models"]["faulty"]["in_flight"] == 0, timeout=1.0)
    time.sleep(3)
    assert_serving(server)


def test_queue_full_is_429_with_retry_after() -> None:
    with ServerProcess(*FAST, "--max_queue_size", "3") as srv, ThreadPoolExecutor(3) as pool:
        # (3 x 0.8 s in one batch stays under the 4 s hang timeout: the hang timeout bounds
        # the time one batch may run without progress)
        busy = [pool.submit(predict, srv.url, "sleep:0.8") for _ in range(3)]
        wait_for(lambda: srv.debug()["models"]["faulty"]["in_flight"] == 3, timeout=5)
        t0 = time.monotonic()
        r = predict(srv.url, "ok")
        assert r.status_code == 429 and time.monotonic() - t0 < 0.5
        assert int(r.headers["Retry-After"]) >= 1
        assert all(f.result().status_code == 200 for f in busy)
        assert_serving(srv)


def test_crash_loop_fails_liveness() -> None:
    args = [a for a in FAST if a != "--restart_backoff_s" and a != "0.1"]
    with ServerProcess(
        *args,
        "--restart_backoff_s",
        "0.05",
        "--restart_backoff_max_s",
        "0.2",
        "--max_consecutive_crashes",
        "3",
        env={"FAULTY_FAIL_LOAD": "1"},
        wait_ready=False,
    ) as srv:
        srv.wait_until_ready(30, path="/")  # HTTP is up even though the model never loads
        assert ready(srv) == 503
        r = wait_for(
            lambda: (
                (x := predict(srv.url, "ok")).status_code == 503
                and "load failed" in x.json()["error"]
                and x
            ),
            timeout=10,
        )
        assert "Retry-After" in r.headers
        wait_for(lambda: httpx.get(srv.url + "/v2/health/live").status_code == 503, timeout=20)
        assert srv.proc is not None and srv.proc.poll() is None  # the HTTP process stays up


def test_sigterm_drains_then_exits_zero(tmp_path: Path) -> None:
    # the in-flight request is held until released, not for a fixed time that load can outlast
    release = tmp_path / "release"
    with ServerProcess(*FAST) as srv, ThreadPoolExecutor(2) as pool:
        slow = pool.submit(predict, srv.url, f"wait:{release}", 60)
        wait_for(lambda: srv.debug()["models"]["faulty"]["in_flight"] == 1, timeout=30)
        assert srv.proc is not None
        os.kill(srv.proc.pid, signal.SIGTERM)
        wait_for(lambda: ready(srv) == 503, timeout=10)
        r = predict(srv.url, "late")
        assert r.status_code == 503 and "Retry-After" in r.headers
        release.touch()
        assert slow.result().status_code == 200  # in-flight work finished
        assert srv.proc.wait(timeout=15) == 0


def test_sigterm_drain_over_grpc_says_the_server_is_shutting_down(tmp_path: Path) -> None:
    """gRPC callers get UNAVAILABLE with the same words as HTTP ones while the server drains,
    and the request in flight still finishes."""
    import grpc

    from steadyserve.protocol.grpc_gen import grpc_predict_v2_pb2 as pb
    from steadyserve.protocol.grpc_gen import grpc_predict_v2_pb2_grpc as pb_grpc

    def request(text: str) -> pb.ModelInferRequest:
        msg = pb.ModelInferRequest(model_name="faulty")
        tensor = msg.inputs.add(name="text", datatype="BYTES", shape=[1])
        tensor.contents.bytes_contents.append(text.encode())
        return msg

    release = tmp_path / "release"
    with ServerProcess(*FAST, grpc=True) as srv, ThreadPoolExecutor(1) as pool:
        with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ModelInfer(request("ok"), timeout=30).outputs  # serving
            slow = pool.submit(predict, srv.url, f"wait:{release}", 60)
            wait_for(lambda: srv.debug()["models"]["faulty"]["in_flight"] == 1, timeout=30)
            assert srv.proc is not None
            os.kill(srv.proc.pid, signal.SIGTERM)
            wait_for(lambda: ready(srv) == 503, timeout=10)
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(request("late"), timeout=30)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "the server is shutting down" in (err.value.details() or "")
            release.touch()
            assert slow.result().status_code == 200
        assert srv.proc.wait(timeout=15) == 0


def test_sigterm_past_the_grace_period_ends_requests_with_503() -> None:
    """A request still running when the grace period ends gets a JSON 503 (not the transport's
    plain-text 500), and the server exits 0 soon after."""
    with ServerProcess(*FAST, "--graceful_shutdown_s", "1") as srv, ThreadPoolExecutor(1) as pool:
        slow = pool.submit(predict, srv.url, "sleep:20", 30)
        wait_for(lambda: srv.debug()["models"]["faulty"]["in_flight"] == 1, timeout=5)
        assert srv.proc is not None
        t0 = time.monotonic()
        os.kill(srv.proc.pid, signal.SIGTERM)
        r = slow.result()
        assert r.status_code == 503, r.text
        assert "shutting down" in r.json()["error"] and "Retry-After" in r.headers
        assert srv.proc.wait(timeout=20) == 0
        assert time.monotonic() - t0 < 12


def test_second_sigterm_ends_at_once_and_still_exits_zero() -> None:
    with ServerProcess(*FAST, "--graceful_shutdown_s", "60") as srv, ThreadPoolExecutor(1) as pool:
        slow = pool.submit(predict, srv.url, "sleep:20", 30)
        wait_for(lambda: srv.debug()["models"]["faulty"]["in_flight"] == 1, timeout=5)
        assert srv.proc is not None
        os.kill(srv.proc.pid, signal.SIGTERM)
        wait_for(lambda: ready(srv) == 503, timeout=2)
        os.kill(srv.proc.pid, signal.SIGTERM)
        assert slow.result().status_code == 503
        assert srv.proc.wait(timeout=20) == 0  # not 143: the signal is not re-raised


def test_batches_wait_only_for_requests_on_their_way(tmp_path: Path) -> None:
    """--max_batch_wait_ms is a bound, not a toll: a lone request runs at once (the server tells
    the worker nothing else is in flight), and requests that queue behind a running batch still
    merge into one call - without the wait."""
    calls = tmp_path / "calls.txt"
    args = ["--model_class", FAULTY, "--model_name", "faulty", "--max_batch_wait_ms", "3000"]
    with ServerProcess(*args, env={"FAULTY_CALLS_FILE": str(calls)}) as srv:
        for _ in range(3):
            t0 = time.monotonic()
            assert predict(srv.url, "alone").status_code == 200
            assert time.monotonic() - t0 < 1.0  # not the 3 s wait
        calls.write_text("")
        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: predict(srv.url, "sleep:0.2"), range(8)))
        assert [r.status_code for r in results] == [200] * 8
        # 8 x 0.2 s of serial sleeps; a batch that waited 3 s for company would take 4.6 s+
        assert time.monotonic() - t0 < 3.5
        sizes = [int(n) for n in calls.read_text().split()]
        assert sum(sizes) == 8 and max(sizes) >= 2, sizes  # still batched

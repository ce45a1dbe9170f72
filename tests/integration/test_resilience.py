"""Invariants under hostile clients and process-level events: crashes after a good load never
fail liveness, a SIGTERM to the whole process group still drains, shutdown keeps to its grace
period, a stream nobody reads is bounded and still counted by admission, a client leaving
mid-upload is a 499 (not a 500), and an explicit repository load survives a killed worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.helpers import FAULTY, ServerProcess, make_repository, wait_for

BASE = ["--model_class", FAULTY, "--model_name", "faulty", "--restart_backoff_s", "0.1"]


def predict(url: str, item: str, timeout: float = 20) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/models/faulty:predict", json={"instances": [item]}, timeout=timeout
    )


def status(url: str, path: str) -> int:
    return httpx.get(url + path, timeout=5).status_code


def test_crashes_after_a_good_load_never_fail_liveness() -> None:
    """A request that kills the worker, repeated past --max_consecutive_crashes (each time after
    the model is ready again), flips readiness but never liveness: no client can get the pod
    restarted. A model that never loads still fails liveness (test_engine_faults)."""
    with ServerProcess(*BASE, "--max_consecutive_crashes", "2") as srv:
        for _ in range(4):
            srv.wait_until_ready(30)
            assert predict(srv.url, "crash").status_code == 503
            assert status(srv.url, "/v2/health/live") == 200
        srv.wait_until_ready(30)
        assert status(srv.url, "/v2/health/live") == 200
        assert srv.debug()["models"]["faulty"]["consecutive_crashes"] <= 1
        assert predict(srv.url, "ok").json() == {"predictions": ["OK"]}


def _stream(url: str, prompt: str, max_tokens: int) -> list[str]:
    body = {"model": "faulty", "prompt": prompt, "max_tokens": max_tokens, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        return [line for line in r.iter_lines() if line]


def test_sigterm_to_the_process_group_still_drains() -> None:
    """systemd, `timeout`, tini -g signal the whole group: the worker must not die under
    requests the server is draining."""
    with (
        ServerProcess(*BASE, "--graceful_shutdown_s", "10", new_session=True) as srv,
        ThreadPoolExecutor(1) as pool,
    ):
        stream = pool.submit(_stream, srv.url, "slow", 40)  # ~2 s of tokens
        wait_for(lambda: srv.debug()["models"]["faulty"]["in_flight"] == 1, timeout=5)
        assert srv.proc is not None
        os.killpg(srv.proc.pid, signal.SIGTERM)
        lines = stream.result()
        assert lines[-1] == "data: [DONE]", lines[-3:]
        assert not any('"error"' in line for line in lines)
        assert srv.proc.wait(timeout=20) == 0
        assert "killed by signal" not in srv.logs()


def test_shutdown_keeps_to_the_grace_period() -> None:
    """A request still running when the grace period ends: 503, and the process exits soon
    after - not a further wait for a busy worker."""
    with ServerProcess(*BASE, "--graceful_shutdown_s", "1") as srv, ThreadPoolExecutor(1) as pool:
        slow = pool.submit(predict, srv.url, "sleep:30", 40)
        wait_for(lambda: srv.debug()["models"]["faulty"]["in_flight"] == 1, timeout=5)
        assert srv.proc is not None
        t0 = time.monotonic()
        os.kill(srv.proc.pid, signal.SIGTERM)
        assert slow.result().status_code == 503
        assert srv.proc.wait(timeout=20) == 0
        assert time.monotonic() - t0 < 4.5


def test_a_stream_nobody_reads_is_bounded_counted_and_harmless() -> None:
    """A client that opens a long stream and never reads: the server buffers a bounded number
    of events (the sequence is then stopped in the worker), the stream still counts against
    --max_queue_size until it ends, and its disconnect does not stall anyone else."""
    with ServerProcess(*BASE, "--max_queue_size", "1") as srv:
        body = json.dumps(
            {"model": "faulty", "prompt": "p", "max_tokens": 200_000, "stream": True}
        ).encode()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", srv.port))
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: "
            b"application/json\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        try:
            wait_for(lambda: srv.debug()["models"]["faulty"]["in_flight"] == 1, timeout=10)
            # generation stops far short of 200k tokens: the unread backlog is capped
            wait_for(
                lambda: (
                    srv.debug()["models"]["faulty"]["worker_running"] == 0
                    and srv.debug()["models"]["faulty"]["in_flight"] == 0
                ),
                timeout=20,
            )
            r = predict(srv.url, "ok")  # the unread stream still holds the only slot
            assert r.status_code == 429, r.text
        finally:
            sock.close()
        t0 = time.monotonic()
        assert status(srv.url, "/v2/health/live") == 200
        assert time.monotonic() - t0 < 1.0
        r = wait_for(lambda: (x := predict(srv.url, "ok")).status_code == 200 and x, timeout=10)
        assert r.json() == {"predictions": ["OK"]}


def test_client_leaving_mid_upload_is_499_not_500() -> None:
    with ServerProcess(*BASE) as srv:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", srv.port)) as sock:
                sock.sendall(
                    b"POST /v1/models/faulty:predict HTTP/1.1\r\nhost: x\r\n"
                    b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n"
                    b'{"instances": ['
                )
                time.sleep(0.2)
        wait_for(lambda: srv.logs().count(":predict 499") >= 3, timeout=10)
        logs = srv.logs()
        assert "Traceback" not in logs and "unhandled error" not in logs
        metrics = httpx.get(srv.url + "/metrics").text
        assert 'code="500"' not in metrics
        assert predict(srv.url, "ok").status_code == 200


def test_explicit_load_survives_a_killed_worker(tmp_path: Path) -> None:
    """A worker killed while a repository load is under way is restarted like any crash, and
    the load still succeeds (only the model's own load error ends it at once)."""
    repo = make_repository(tmp_path / "repo", faulty=FAULTY)
    with (
        ServerProcess(
            "--model_repository",
            str(repo),
            "--restart_backoff_s",
            "0.1",
            env={"FAULTY_LOAD_DELAY": "1.5"},
        ) as srv,
        srv.client(timeout=60) as c,
    ):
        assert c.post("/v2/repository/models/faulty/unload").status_code == 200
        result: dict[str, httpx.Response] = {}
        loader = threading.Thread(
            target=lambda: result.setdefault("r", c.post("/v2/repository/models/faulty/load"))
        )
        loader.start()
        pid = wait_for(lambda: (srv.debug()["models"].get("faulty") or {}).get("pid"), timeout=10)
        time.sleep(0.3)  # inside the model's load
        os.kill(pid, signal.SIGKILL)
        loader.join(60)
        assert result["r"].status_code == 200, result["r"].text
        assert srv.debug()["models"]["faulty"]["restarts"] >= 1
        assert predict(srv.url, "ok").json() == {"predictions": ["OK"]}


def test_files_in_the_working_directory_do_not_shadow_packages_in_the_worker(
    tmp_path: Path,
) -> None:
    """A stray ``msgspec.py`` (or ``triton.py``...) in the directory the server starts from
    must not be imported by the model worker in place of the installed package; a model class
    given as ``module:Class`` is still found there."""
    import shutil
    import subprocess
    import sys

    from tests.helpers import EXAMPLE, free_port

    (tmp_path / "msgspec.py").write_text("raise RuntimeError('shadowed msgspec imported')\n")
    shutil.copy(EXAMPLE.rpartition(":")[0], tmp_path / "my_scaler.py")
    exe = Path(sys.executable).parent / "steadyserve"
    for model_class in (FAULTY, "my_scaler:Scaler"):
        port = free_port()
        proc = subprocess.Popen(
            [
                str(exe),
                "serve",
                "--host",
                "127.0.0.1",
                "--http_port",
                str(port),
                "--model_class",
                model_class,
                "--model_name",
                "m",
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda u=url: _ready(u), timeout=60)
            body = {"instances": [[1.0]]} if "Scaler" in model_class else {"instances": ["ok"]}
            r = httpx.post(f"{url}/v1/models/m:predict", json=body, timeout=10)
            assert r.status_code == 200, r.text
        finally:
            proc.terminate()
            out = proc.communicate(timeout=30)[0].decode(errors="replace")
        assert "shadowed msgspec" not in out


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False

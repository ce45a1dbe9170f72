"""Faults under ``--backend vllm``: kill -9 of vLLM's engine core or of the worker gives 503 for
in-flight requests, a restart and no orphaned process; SIGTERM drains. One server, used in order
(each test leaves it ready again)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests.helpers import ServerProcess, wait_for
from tests.vllm.conftest import READY_TIMEOUT, VLLM_ARGS, VLLM_ENV

pytestmark = pytest.mark.timeout(900)

OAI = "/openai/v1/completions"
LONG = {"model": "m", "prompt": "hello", "max_tokens": 480, "ignore_eos": True}


@pytest.fixture(scope="module")
def server(vllm_gpt2_dir: str) -> Iterator[ServerProcess]:
    args = ("--model_dir", vllm_gpt2_dir, "--model_name", "m", "--backend", "vllm", *VLLM_ARGS)
    with ServerProcess(*args, env=VLLM_ENV, ready_timeout=READY_TIMEOUT) as srv:
        yield srv


def _worker(server: ServerProcess) -> psutil.Process:
    return psutil.Process(int(server.debug()["models"]["m"]["pid"]))


def _engine_core(worker: psutil.Process) -> psutil.Process:
    cores = [c for c in worker.children() if "EngineCore" in " ".join(c.cmdline()) + c.name()]
    assert cores, [(c.pid, c.name()) for c in worker.children(recursive=True)]
    return cores[0]


def _in_flight(server: ServerProcess, out: list[httpx.Response]) -> threading.Thread:
    def send() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            out.append(c.post(OAI, json=LONG))

    t = threading.Thread(target=send)
    t.start()
    wait_for(lambda: server.debug()["models"]["m"]["in_flight"] == 1, timeout=30)
    return t


def _gone(procs: list[psutil.Process]) -> bool:
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def _assert_restarted_and_serving(server: ServerProcess, old_worker: int) -> None:
    server.wait_until_ready(READY_TIMEOUT)
    assert _worker(server).pid != old_worker
    with server.client(timeout=60) as c:
        r = c.post(OAI, json={"model": "m", "prompt": "hi", "max_tokens": 3})
    assert r.status_code == 200, r.text


def test_engine_core_killed_gives_503_restart_and_no_orphan(server: ServerProcess) -> None:
    worker = _worker(server)
    vllm_procs = worker.children(recursive=True)
    out: list[httpx.Response] = []
    t = _in_flight(server, out)
    _engine_core(worker).kill()
    t.join(60)
    assert out and out[0].status_code == 503, out[0].text if out else "no answer"
    assert "Traceback" not in out[0].text
    wait_for(lambda: _gone([worker, *vllm_procs]), timeout=30)
    _assert_restarted_and_serving(server, worker.pid)


def test_worker_killed_gives_503_restart_and_no_orphan(server: ServerProcess) -> None:
    worker = _worker(server)
    vllm_procs = worker.children(recursive=True)
    assert vllm_procs
    out: list[httpx.Response] = []
    t = _in_flight(server, out)
    worker.send_signal(signal.SIGKILL)
    t.join(60)
    assert out and out[0].status_code == 503, out[0].text if out else "no answer"
    # the engine core and its executor die with the worker (PR_SET_PDEATHSIG)
    wait_for(lambda: _gone(vllm_procs), timeout=30)
    _assert_restarted_and_serving(server, worker.pid)


def test_sigterm_drains_then_nothing_is_left(server: ServerProcess) -> None:
    worker = _worker(server)
    procs = [worker, *worker.children(recursive=True)]
    out: list[httpx.Response] = []

    def send() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            out.append(c.post(OAI, json={**LONG, "max_tokens": 40}))

    t = threading.Thread(target=send)
    t.start()
    wait_for(lambda: server.debug()["models"]["m"]["in_flight"] == 1, timeout=30)
    assert server.stop(signal.SIGTERM, timeout=120) == 0
    t.join(60)
    assert out and out[0].status_code == 200, out[0].text if out else "no answer"
    assert out[0].json()["usage"]["completion_tokens"] == 40
    wait_for(lambda: _gone(procs), timeout=30)

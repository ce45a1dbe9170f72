"""``--vllm_engine_core worker``: vLLM's engine core inside the model worker (one process less).
The same answers as the default layout (greedy output, the bad-input battery), no vLLM child
process, and kill -9 of the worker gives 503, a restart and a model that serves again. This
server starts in seconds, so it also carries the shell's server-side checks under vLLM:
metrics with exact token counts, request ids, and 429 past the admission limit."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests.helpers import ServerProcess, wait_for
from tests.vllm.battery import CASES, good_request, run_battery
from tests.vllm.conftest import READY_TIMEOUT, VLLM_ARGS, VLLM_ENV

pytestmark = pytest.mark.timeout(900)

OAI = "/openai/v1/completions"
QUEUE = 4


@pytest.fixture(scope="module")
def server(vllm_llama_dir: str) -> Iterator[ServerProcess]:
    args = ("--model_dir", vllm_llama_dir, "--model_name", "m", "--backend", "vllm")
    with ServerProcess(
        *args,
        *VLLM_ARGS,
        "--vllm_engine_core",
        "worker",
        "--max_queue_size",
        str(QUEUE),
        env=VLLM_ENV,
        ready_timeout=READY_TIMEOUT,
    ) as srv:
        yield srv


def _worker(server: ServerProcess) -> psutil.Process:
    return psutil.Process(int(server.debug()["models"]["m"]["pid"]))


def test_served_by_vllm_in_the_worker_with_no_engine_core_process(server: ServerProcess) -> None:
    worker = _worker(server)
    names = [" ".join(c.cmdline()) + c.name() for c in worker.children(recursive=True)]
    assert not any("EngineCore" in n for n in names), names
    with server.client(timeout=120) as c:
        meta = c.get("/v2/models/m").json()
        assert meta["platform"] == "vllm"
        body = {"model": "m", "prompt": [5, 6, 7], "max_tokens": 6, "min_tokens": 6}
        r = c.post(OAI, json={**body, "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["usage"] == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}
        # streamed: the same greedy tokens, ending with the finish reason
        with c.stream("POST", OAI, json={**body, "temperature": 0, "stream": True}) as s:
            assert s.status_code == 200
            lines = [ln for ln in s.iter_lines() if ln.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        assert '"finish_reason":"length"' in lines[-2].replace(" ", "")


def _counter(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"steadyserve_{name}") and 'model="m"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_exact_tokens_and_request_ids_round_trip(server: ServerProcess) -> None:
    with server.client(timeout=120) as c:
        before = c.get("/metrics").text
        body = {"model": "m", "prompt": [5, 6, 7, 8], "max_tokens": 5, "min_tokens": 5}
        r = c.post(OAI, json=body, headers={"X-Request-ID": "vllm-req-42"})
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] == "vllm-req-42"
        after = c.get("/metrics").text
    assert _counter(after, "completion_tokens_total") - _counter(
        before, "completion_tokens_total"
    ) == pytest.approx(5)
    assert _counter(after, "prompt_tokens_total") - _counter(
        before, "prompt_tokens_total"
    ) == pytest.approx(4)


def test_admission_past_the_queue_limit_is_429_and_the_rest_complete(
    server: ServerProcess,
) -> None:
    body = {"model": "m", "prompt": "hello", "max_tokens": 200, "ignore_eos": True}
    codes: list[int] = []

    def send() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            codes.append(c.post(OAI, json=body).status_code)

    threads = [threading.Thread(target=send) for _ in range(3 * QUEUE)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(set(codes)) == [200, 429], codes
    assert len(codes) == 3 * QUEUE  # every request answered, with one of the two
    with server.client(timeout=60) as c:
        good_request(c, "m")


def test_bad_inputs_get_the_battery_answers(server: ServerProcess) -> None:
    with server.client(timeout=60) as c:
        got = run_battery(c, "m")
        for case, (status, _) in got.items():
            assert status == CASES[case][2], (case, got[case])
        good_request(c, "m")


def test_worker_killed_mid_request_gives_503_and_a_restart(server: ServerProcess) -> None:
    worker = _worker(server)
    out: list[httpx.Response] = []

    def send() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            body = {"model": "m", "prompt": "hello", "max_tokens": 480, "ignore_eos": True}
            out.append(c.post(OAI, json=body))

    t = threading.Thread(target=send)
    t.start()
    wait_for(lambda: server.debug()["models"]["m"]["in_flight"] == 1, timeout=30)
    worker.send_signal(signal.SIGKILL)
    t.join(60)
    assert out and out[0].status_code == 503, out[0].text if out else "no answer"
    assert "Traceback" not in out[0].text
    server.wait_until_ready(READY_TIMEOUT)
    assert _worker(server).pid != worker.pid
    with server.client(timeout=60) as c:
        r = c.post(OAI, json={"model": "m", "prompt": "hi", "max_tokens": 3})
    assert r.status_code == 200, r.text

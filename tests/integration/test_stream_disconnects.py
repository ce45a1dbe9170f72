"""40 clients leave their streams mid-generation: the continuous batch must drop every one of
their sequences at once (no work for a client that left), which ``/debug/engine`` and the
cancellation counter show, and the model serves on.

The model is GPT-2-base-shaped (12 layers, random weights): 40 sequences x 400 tokens take it
well over a minute on a CPU, so a batch that kept generating for absent clients could not look
idle within the few seconds the test waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import ServerProcess, wait_for

pytestmark = pytest.mark.timeout(300)

CLIENTS = 40


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from steadyserve.runtimes.huggingface import tiny

    path = tiny.build_gpt2(tmp_path_factory.mktemp("models") / "gpt2-base", preset="gpt2")
    with ServerProcess(
        "--model_dir", path, "--model_name", "gpt2", "--max_num_seqs", "64", ready_timeout=180
    ) as srv:
        yield srv


def cancelled_total(server: ServerProcess) -> float:
    for line in httpx.get(server.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("steadyserve_requests_cancelled_total{") and 'model="gpt2"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_forty_clients_leaving_mid_stream_leave_no_work_behind(server: ServerProcess) -> None:
    before = cancelled_total(server)
    body = {
        "model": "gpt2",
        "prompt": "Once upon a time",
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
    }
    all_streaming = asyncio.Event()
    streaming = 0
    in_flight_when_all_streaming: list[int] = []

    async def one(http: httpx.AsyncClient) -> int:
        nonlocal streaming
        async with http.stream("POST", "/openai/v1/completions", json=body) as r:
            assert r.status_code == 200
            chunks = 0
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    chunks += 1
                if chunks == 2:
                    streaming += 1
                    if streaming == CLIENTS:  # the last one in: all 40 are mid-stream now
                        debug = (await http.get("/debug/engine")).json()
                        in_flight_when_all_streaming.append(debug["models"]["gpt2"]["in_flight"])
                        all_streaming.set()
                    await asyncio.wait_for(all_streaming.wait(), 120)
                    return chunks  # leaving the block closes the connection mid-stream
        raise AssertionError("a stream ended before its client left")

    async def main() -> list[int]:
        limits = httpx.Limits(max_connections=CLIENTS + 1)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as http:
            return await asyncio.gather(*(one(http) for _ in range(CLIENTS)))

    assert asyncio.run(main()) == [2] * CLIENTS
    assert in_flight_when_all_streaming == [CLIENTS]

    def idle() -> bool:
        stats = server.debug()["models"]["gpt2"]
        return stats["in_flight"] == 0 and stats["worker_running"] == 0

    wait_for(idle, timeout=10)
    assert cancelled_total(server) - before == CLIENTS
    with server.client(timeout=60) as c:
        r = c.post(
            "/openai/v1/completions",
            json={"model": "gpt2", "prompt": "Hello", "max_tokens": 3, "ignore_eos": True},
        )
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 3

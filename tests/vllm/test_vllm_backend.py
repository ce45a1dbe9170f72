"""``--backend vllm`` behind steadyserve's shell: one vLLM-backed server for this module (and a
Hugging Face-backed one on the same checkpoint, for the shared bad-input battery)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.helpers import ServerProcess, wait_for
from tests.vllm.battery import CASES, good_request, run_battery
from tests.vllm.conftest import READY_TIMEOUT, VLLM_ARGS, VLLM_ENV

pytestmark = pytest.mark.timeout(900)

OAI = "/openai/v1/completions"
LONG = {"model": "m", "prompt": "hello", "max_tokens": 400, "ignore_eos": True}


@pytest.fixture(scope="module")
def server(vllm_llama_dir: str) -> Iterator[ServerProcess]:
    args = ("--model_dir", vllm_llama_dir, "--model_name", "m", "--backend", "vllm", *VLLM_ARGS)
    with ServerProcess(*args, env=VLLM_ENV, ready_timeout=READY_TIMEOUT) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client(timeout=120) as c:
        yield c


def test_vllm_processes_get_vllms_thread_defaults_not_ours(server: ServerProcess) -> None:
    """Our passive OpenMP wait (cpus.py) is for our engine; vLLM's engine core and executor
    manage their own threads, so they start without our defaults (the operator's stay)."""
    import psutil

    from steadyserve.cpus import DEFAULTS_ENV

    worker = psutil.Process(int(server.debug()["models"]["m"]["pid"]))
    assert DEFAULTS_ENV in worker.environ()  # the worker itself got them
    children = worker.children(recursive=True)
    assert children
    for child in children:
        env = child.environ()
        assert DEFAULTS_ENV not in env, child.name()
        for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
            assert env.get(name) == server.env.get(name), (child.name(), name)


def test_the_model_runs_on_vllm_with_our_metadata(client: httpx.Client) -> None:
    meta = client.get("/v2/models/m").json()
    assert meta["platform"] == "vllm", meta
    caps = client.get("/openai/v1/models").json()
    assert [m["id"] for m in caps["data"]] == ["m"]


def test_completion_ids_usage_and_logprobs(client: httpx.Client) -> None:
    body = {"model": "m", "prompt": "hello there", "max_tokens": 5, "temperature": 0}
    r = client.post(OAI, json={**body, "logprobs": 2})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"].startswith("cmpl-") and out["object"] == "text_completion"
    choice = out["choices"][0]
    assert choice["finish_reason"] == "length"
    usage = out["usage"]
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 5
    assert all(
        len(top) <= 2 and v <= 0
        for top, v in zip(lp["top_logprobs"], lp["token_logprobs"], strict=True)
    )
    # greedy: the chosen token is the most likely one
    assert all(
        max(top.values()) == pytest.approx(v, abs=1e-3)
        for top, v in zip(lp["top_logprobs"], lp["token_logprobs"], strict=True)
    )
    # greedy is deterministic, and a stream gives the same text
    again = client.post(OAI, json=body).json()["choices"][0]["text"]
    assert again == choice["text"]
    with client.stream("POST", OAI, json={**body, "stream": True}) as s:
        assert s.status_code == 200
        events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == choice["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_logit_bias_stop_token_and_min_tokens(client: httpx.Client) -> None:
    """logit_bias forces token 42; it is a stop token, honoured only after min_tokens."""
    body = {"model": "m", "prompt": "abc", "max_tokens": 8, "temperature": 0}
    forced = {**body, "logit_bias": {"42": 100}}
    r = client.post(OAI, json={**forced, "stop_token_ids": [42]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    assert r.json()["usage"]["completion_tokens"] == 1  # the stop token is counted, as vLLM does
    # min_tokens suppresses stop tokens (as our own engine does): 3 others, then the stop token
    r = client.post(OAI, json={**forced, "stop_token_ids": [42], "min_tokens": 3})
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    assert r.json()["usage"]["completion_tokens"] == 4
    r = client.post(OAI, json=forced)
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert r.json()["usage"]["completion_tokens"] == 8


def test_chat_stream_and_v1_v2_generation(client: httpx.Client) -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    r = client.post("/openai/v1/chat/completions", json=chat)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["role"] == "assistant"
    with client.stream("POST", "/openai/v1/chat/completions", json={**chat, "stream": True}) as s:
        lines = [x for x in s.iter_lines() if x.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    r = client.post(
        "/v1/models/m:predict",
        json={"instances": ["hello world", "a b c"], "parameters": {"max_new_tokens": 3}},
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 2
    r = client.post(
        "/v2/models/m/infer",
        json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["name"] == "text"


def test_concurrent_requests_each_complete_once(
    client: httpx.Client, server: ServerProcess
) -> None:
    def one(i: int) -> tuple[int, int]:
        r = client.post(
            OAI,
            json={"model": "m", "prompt": f"n {i}", "max_tokens": 8, "ignore_eos": True, "seed": i},
        )
        return r.status_code, r.json()["usage"]["completion_tokens"] if r.status_code == 200 else -1

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(16)))
    assert results == [(200, 8)] * 16
    wait_for(lambda: server.debug()["models"]["m"]["in_flight"] == 0, timeout=30)


def test_cancel_on_disconnect_reaches_vllm(server: ServerProcess) -> None:
    with (
        httpx.Client(base_url=server.url, timeout=60) as c,
        c.stream("POST", OAI, json={**LONG, "stream": True}) as s,
    ):
        assert s.status_code == 200
        for line in s.iter_lines():
            if line.startswith("data: "):
                break  # one token arrived: vLLM is generating; now hang up
    state = wait_for(lambda: (m := server.debug()["models"]["m"])["in_flight"] == 0 and m, 30)
    # the worker's engine dropped it too (vLLM's request aborted, not run to 400 tokens)
    wait_for(lambda: server.debug()["models"]["m"]["worker_running"] == 0, timeout=30)
    assert state["state"] == "ready"


def test_deadline_is_504_and_the_next_request_succeeds(client: httpx.Client) -> None:
    started = time.monotonic()
    r = client.post(OAI, json={**LONG, "max_tokens": 480}, headers={"X-Request-Timeout": "0.3"})
    assert r.status_code == 504, r.text
    assert time.monotonic() - started < 30
    assert good_request(client, "m").status_code == 200


def test_bad_inputs_get_the_same_answers_on_both_backends(
    client: httpx.Client, vllm_llama_dir: str
) -> None:
    ours = run_battery(client, "m")
    args = (
        "--model_dir",
        vllm_llama_dir,
        "--model_name",
        "m",
        "--backend",
        "huggingface",
        "--max_model_len",
        "512",
    )
    with ServerProcess(*args, ready_timeout=READY_TIMEOUT) as hf, hf.client(timeout=60) as hc:
        theirs = run_battery(hc, "m")
        assert good_request(hc, "m").status_code == 200
    for name, (_, _, status) in CASES.items():
        assert ours[name][0] == status, (name, ours[name])
        assert "Traceback" not in ours[name][1]
    assert ours == theirs
    assert good_request(client, "m").status_code == 200

"""OpenAI routes against a custom model without a tokenizer (tests/models/faulty.py): both
prefixes, streaming, stop strings, in-band errors, deadlines, disconnects, and every error path
followed by a good request."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers import FAULTY, ServerProcess, wait_for

PREFIXES = ("/openai/v1", "/v1")


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    # one sequence at a time, so a second stream waits in the queue
    with ServerProcess(
        "--model_class", FAULTY, "--model_name", "faulty", "--max_num_seqs", "1"
    ) as srv:
        yield srv


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def sse_events(response: httpx.Response) -> list[Any]:
    """Parse an SSE body into JSON objects (and the string "[DONE]")."""
    out: list[Any] = []
    for block in response.text.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def assert_good(client: httpx.Client, prefix: str = "/openai/v1") -> None:
    r = client.post(
        f"{prefix}/completions", json={"model": "faulty", "prompt": "x", "max_tokens": 2}
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == "t0 t1 "


def wait_idle(server: ServerProcess) -> None:
    def idle() -> bool:
        stats = server.debug()["models"]["faulty"]
        return stats["in_flight"] == 0 and stats["worker_running"] == 0

    wait_for(idle, timeout=10)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_completion(client: httpx.Client, prefix: str) -> None:
    r = client.post(
        f"{prefix}/completions", json={"model": "faulty", "prompt": "hi", "max_tokens": 3}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "faulty"
    assert body["id"].startswith("cmpl-") and isinstance(body["created"], int)
    assert body["choices"] == [
        {"index": 0, "text": "t0 t1 t2 ", "logprobs": None, "finish_reason": "length"}
    ]
    assert body["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("prefix", PREFIXES)
def test_stream_ends_with_usage_and_done(client: httpx.Client, prefix: str) -> None:
    body = {
        "model": "faulty",
        "prompt": "hi",
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = client.post(f"{prefix}/completions", json=body)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in events[:-2]) == "t0 t1 t2 "
    assert events[-3]["choices"][0]["finish_reason"] == "length"
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 3


def test_n_prompts_and_echo(client: httpx.Client) -> None:
    r = client.post(
        "/v1/completions",
        json={"model": "faulty", "prompt": ["a", "b"], "n": 2, "max_tokens": 1, "echo": True},
    )
    assert r.status_code == 200, r.text
    assert [c["text"] for c in r.json()["choices"]] == ["at0 ", "at0 ", "bt0 ", "bt0 "]
    assert [c["index"] for c in r.json()["choices"]] == [0, 1, 2, 3]


def test_stop_string_truncates_and_frees_the_worker(
    server: ServerProcess, client: httpx.Client
) -> None:
    r = client.post(
        "/v1/completions",
        json={"model": "faulty", "prompt": "slow", "max_tokens": 500, "stop": ["t2"]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0] == {
        "index": 0,
        "text": "t0 t1 ",
        "logprobs": None,
        "finish_reason": "stop",
    }
    wait_idle(server)  # the sequence (500 slow tokens) was aborted, not run to the end
    assert_good(client)


def test_failure_mid_stream_is_an_in_band_error(client: httpx.Client) -> None:
    r = client.post(
        "/v1/completions",
        json={"model": "faulty", "prompt": "raise-after:2", "max_tokens": 5, "stream": True},
    )
    assert r.status_code == 200
    events = sse_events(r)
    assert [e["choices"][0]["text"] for e in events[:-1]] == ["t0 ", "t1 "]
    assert "generation failed on purpose" in events[-1]["error"]["message"]
    assert events[-1]["error"]["type"] == "server_error"
    assert "[DONE]" not in events
    assert_good(client)


def test_failure_before_the_first_token_is_an_http_error(client: httpx.Client) -> None:
    for stream in (True, False):
        r = client.post(
            "/v1/completions",
            json={"model": "faulty", "prompt": "raise-after:0", "max_tokens": 5, "stream": stream},
        )
        assert r.status_code == 500, r.text
        assert "generation failed on purpose" in r.json()["error"]["message"]
        assert_good(client)


def test_deadline_mid_stream_and_before_answer(client: httpx.Client) -> None:
    body = {"model": "faulty", "prompt": "slow", "max_tokens": 200}
    headers = {"X-Request-Timeout": "0.4"}
    r = client.post("/v1/completions", json=body, headers=headers)
    assert r.status_code == 504, r.text
    r = client.post("/v1/completions", json={**body, "stream": True}, headers=headers)
    assert r.status_code == 200
    events = sse_events(r)
    assert events[-1]["error"]["code"] == 504 and "[DONE]" not in events
    assert_good(client)


def test_client_disconnect_mid_stream_aborts_the_sequence(
    server: ServerProcess, client: httpx.Client
) -> None:
    body = {"model": "faulty", "prompt": "slow", "max_tokens": 2000, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        chunks = r.iter_bytes()
        assert b'"t0 "' in next(chunks)
        assert b'"t1 "' in next(chunks)
        assert server.debug()["models"]["faulty"]["in_flight"] == 1
    wait_idle(server)  # 2000 tokens x 50 ms would take 100 s
    assert_good(client)


def test_client_leaving_a_queued_stream_cancels_it(
    server: ServerProcess, client: httpx.Client
) -> None:
    """A stream still waiting for its first token (queued behind another) is cancelled when
    its client leaves - nothing is written to it yet, so only the disconnect listener sees it."""
    body = {"model": "faulty", "prompt": "slow", "max_tokens": 2000, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as running:
        chunks = running.iter_bytes()
        assert b'"t0 "' in next(chunks)
        with pytest.raises(httpx.ReadTimeout), server.client(timeout=0.5) as impatient:
            impatient.post("/v1/completions", json=body)
        wait_for(lambda: server.debug()["models"]["faulty"]["in_flight"] == 1, timeout=5)
        assert b'"t1 "' in next(chunks)  # the running stream is unaffected
    wait_idle(server)
    assert_good(client)


def test_chat_and_embeddings_are_refused_fast(client: httpx.Client) -> None:
    for path, body in (
        (
            "/v1/chat/completions",
            {"model": "faulty", "messages": [{"role": "user", "content": "x"}]},
        ),
        ("/openai/v1/embeddings", {"model": "faulty", "input": "x"}),
    ):
        start = time.perf_counter()
        r = client.post(path, json=body)
        assert time.perf_counter() - start < 0.5
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["param"] == "model"
        assert "it supports: completions, v1, v2" in err["message"]
        assert_good(client)


BAD = [
    ({"model": "faulty", "prompt": 5}, 400, "prompt"),
    ({"model": "faulty", "prompt": "x", "max_tokens": "3"}, 400, "max_tokens"),
    ({"model": "faulty", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "faulty", "prompt": "x", "n": 17}, 400, "n"),
    ({"model": "faulty", "prompt": "x", "temperature": 5}, 400, "temperature"),
    ({"model": "faulty", "prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"model": "faulty", "prompt": "x", "stop": ["a"] * 5}, 400, "stop"),
    ({"model": "faulty", "prompt": "x", "logit_bias": {"a": 1}}, 400, "logit_bias"),
    ({"model": "faulty", "prompt": "x", "logprobs": 21}, 400, "logprobs"),
    ({"model": "faulty", "prompt": "x", "best_of": 2}, 400, "best_of"),
    (
        {"model": "faulty", "prompt": "x", "response_format": {"type": "json_object"}},
        400,
        "response_format",
    ),
    ({"model": "faulty", "prompt": ""}, 400, "prompt"),
    ({"model": "faulty", "prompt": [1, 2]}, 400, "prompt"),  # no tokenizer: text only
    ({"prompt": "x"}, 400, "model"),
    ({"model": "nope", "prompt": "x"}, 404, None),
]


@pytest.mark.parametrize(("body", "status", "param"), BAD)
def test_bad_request_then_good(
    client: httpx.Client, body: dict[str, Any], status: int, param: str | None
) -> None:
    r = client.post("/openai/v1/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param
    assert_good(client)


def test_malformed_json_and_unknown_fields(client: httpx.Client) -> None:
    r = client.post(
        "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = client.post("/v1/completions", content=b"[1]", headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = client.post(
        "/v1/completions",
        json={
            "model": "faulty",
            "prompt": "x",
            "max_tokens": 1,
            "some_future_field": {"a": 1},
            "user": "u",
        },
    )
    assert r.status_code == 200, r.text


def test_models(client: httpx.Client) -> None:
    listing = client.get("/openai/v1/models").json()
    assert listing["object"] == "list" and [m["id"] for m in listing["data"]] == ["faulty"]
    card = client.get("/openai/v1/models/faulty").json()
    assert card["id"] == "faulty" and card["object"] == "model"
    r = client.get("/openai/v1/models/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    merged = client.get("/v1/models").json()  # KServe V1 + OpenAI in one body
    assert merged["models"] == ["faulty"] and merged["data"][0]["id"] == "faulty"


def test_worker_crash_mid_stream_is_an_in_band_error(
    server: ServerProcess, client: httpx.Client
) -> None:
    """Runs last: the worker dies after two tokens and is restarted."""
    r = client.post(
        "/v1/completions",
        json={"model": "faulty", "prompt": "crash-after:2", "max_tokens": 5, "stream": True},
    )
    assert r.status_code == 200
    events = sse_events(r)
    assert [e["choices"][0]["text"] for e in events[:-1]] == ["t0 ", "t1 "]
    assert events[-1]["error"]["code"] == 503 and "[DONE]" not in events
    server.wait_until_ready(30)
    assert_good(client)


def test_a_request_larger_than_the_token_budget_is_400_not_429() -> None:
    """429 means "retry later"; a request that can never fit --max_queue_tokens must say so
    (400, naming max_tokens) instead of sending clients into a retry loop."""
    with (
        ServerProcess(
            "--model_class", FAULTY, "--model_name", "faulty", "--max_queue_tokens", "100"
        ) as srv,
        srv.client() as c,
    ):
        r = c.post(
            "/openai/v1/completions", json={"model": "faulty", "prompt": "x", "max_tokens": 200}
        )
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "max_tokens" and "max_queue_tokens=100" in err["message"]
        assert "Retry-After" not in r.headers
        r = c.post(
            "/openai/v1/completions", json={"model": "faulty", "prompt": "x", "max_tokens": 2}
        )
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "t0 t1 "


def test_log_prompts_logs_a_bounded_prompt_only_when_asked() -> None:
    secret = "PROMPT-MARKER-" + "x" * 2000
    with (
        ServerProcess("--model_class", FAULTY, "--model_name", "faulty", "--log_prompts") as srv,
        srv.client() as c,
    ):
        r = c.post("/v1/completions", json={"model": "faulty", "prompt": secret, "max_tokens": 1})
        assert r.status_code == 200, r.text
        line = wait_for(
            lambda: next((ln for ln in srv.logs().splitlines() if "PROMPT-MARKER" in ln), None)
        )
        assert "completions prompt (2014 chars, cut)" in line
        assert "x" * 480 in line and "x" * 600 not in line

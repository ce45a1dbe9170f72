"""Running sequences without a server: usage counting, stop strings handed to the engine
client, n choices with per-choice seeds, SSE framing and in-band
errors, against a fake engine."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from steadyserve.errors import ModelError
from steadyserve.transport import routes_openai as ro
from steadyserve.transport.openai_serving import SeqSpec
from steadyserve.types import GenerateRequest, SamplingParams, TokenDelta


class FakeEngine:
    """Yields ``t{i} `` per token; records requests and whether each stream was closed early."""

    name = "fake"

    def __init__(self, fail_after: int | None = None) -> None:
        self.requests: list[GenerateRequest] = []
        self.stops: list[list[str]] = []
        self.closed_early = 0
        self.fail_after = fail_after

    async def generate(
        self,
        request: GenerateRequest,
        timeout_s: float | None = None,
        *,
        stream: bool = True,
        detokenize: Any = None,
        stop: Any = (),
    ) -> AsyncIterator[TokenDelta]:
        self.requests.append(request)
        self.stops.append(list(stop))
        n = request.params.max_tokens
        finished = False
        try:
            for i in range(n):
                await asyncio.sleep(0)
                if self.fail_after is not None and i >= self.fail_after:
                    raise ModelError("boom")
                last = i == n - 1
                finished = last
                yield TokenDelta(
                    token_ids=[i], text=f"t{i} ", finish_reason="length" if last else None
                )
        finally:
            if not finished:
                self.closed_early += 1


def job(
    engine: FakeEngine,
    *,
    prompts: int = 1,
    n: int = 1,
    max_tokens: int = 5,
    stops: list[str] | None = None,
    seed: int | None = None,
    chat: bool = False,
    stream: bool = False,
    logprobs: int | None = None,
    echo: list[str] | None = None,
) -> ro._Job:
    base = SamplingParams(seed=seed)
    seqs = ro._sequences(
        [f"p{i}" for i in range(prompts)],
        [3] * prompts,
        base,
        [max_tokens] * prompts,
        n,
        context=False,
    )
    return ro._Job(
        chat=chat,
        model="fake",
        engine=engine,
        tokenizer=None,  # type: ignore[arg-type]
        seqs=seqs,
        stops=stops or [],
        stream=stream,
        include_usage=True,
        logprobs=logprobs,
        echo=echo,
        timeout_s=None,
        n=n,
    )


def test_usage_counts_each_prompt_once_and_every_generated_token() -> None:
    engine = FakeEngine()
    body = asyncio.run(ro._collect(job(engine, prompts=2, n=3, max_tokens=4)))
    assert [c["index"] for c in body["choices"]] == list(range(6))
    assert all(c["text"] == "t0 t1 t2 t3 " for c in body["choices"])
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 24, "total_tokens": 30}
    assert engine.closed_early == 0


def test_seeds_differ_per_choice() -> None:
    engine = FakeEngine()
    asyncio.run(ro._collect(job(engine, n=3, seed=10)))
    assert sorted(r.params.seed for r in engine.requests if r.params.seed is not None) == [
        10,
        11,
        12,
    ]
    engine = FakeEngine()
    asyncio.run(ro._collect(job(engine, n=2)))
    assert [r.params.seed for r in engine.requests] == [None, None]


def test_stop_strings_go_to_the_engine_client_with_every_choice() -> None:
    """The engine client matches them (tests/unit/test_engine_client.py); the route passes
    them on for every choice and reports the finish reason the client gives."""
    engine = FakeEngine()
    body = asyncio.run(ro._collect(job(engine, n=2, max_tokens=3, stops=["t3", "x"])))
    assert engine.stops == [["t3", "x"], ["t3", "x"]]
    assert [c["finish_reason"] for c in body["choices"]] == ["length", "length"]


async def _sse(j: ro._Job) -> list[Any]:
    events = j.events()
    first = await anext(events)
    out = []
    async for chunk in ro._sse_body(j, first, events):
        text = chunk.decode()
        assert text.startswith("data: ") and text.endswith("\n\n")
        payload = text[len("data: ") : -2]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def test_chat_stream_starts_with_role_and_ends_with_usage_and_done() -> None:
    chunks = asyncio.run(_sse(job(FakeEngine(), max_tokens=3, chat=True, stream=True)))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:-2])
    assert text == "t0 t1 t2 "
    assert chunks[-3]["choices"][0]["finish_reason"] == "length"
    assert chunks[-2]["choices"] == [] and chunks[-2]["usage"]["completion_tokens"] == 3
    assert chunks[-1] == "[DONE]"


def test_failure_mid_stream_is_an_in_band_error_without_done() -> None:
    engine = FakeEngine(fail_after=2)
    chunks = asyncio.run(_sse(job(engine, max_tokens=5, stream=True)))
    assert chunks[-1]["error"]["message"] == "boom"
    assert chunks[-1]["error"]["code"] == 500
    assert "[DONE]" not in chunks
    assert [c["choices"][0]["text"] for c in chunks[:-1]] == ["t0 ", "t1 "]


def test_one_failing_choice_cancels_the_others() -> None:
    engine = FakeEngine(fail_after=1)
    try:
        asyncio.run(ro._collect(job(engine, n=3, max_tokens=50)))
    except ModelError as exc:
        assert exc.message == "boom"
    else:  # pragma: no cover
        raise AssertionError("the failure was swallowed")


def test_seq_spec_carries_token_prompts() -> None:
    seqs = ro._sequences([[1, 2]], [2], SamplingParams(), [4], 1, context=True)
    assert seqs == [SeqSpec(index=0, request=seqs[0].request, prompt_tokens=2, context_ids=[1, 2])]
    assert seqs[0].request.prompt_token_ids == [1, 2] and seqs[0].request.params.max_tokens == 4


def test_streamed_text_offsets_run_on_like_the_non_streaming_ones() -> None:
    """Each chunk's text_offset continues from the previous chunk of its choice (it was [0] in
    every chunk); an echoed prompt shifts both paths alike."""
    step = len("token_id:0")  # no tokenizer: each token's text is token_id:<id>
    for echo in (None, ["p0", "p1"]):
        shift = 2 if echo else 0
        full = asyncio.run(
            ro._collect(job(FakeEngine(), prompts=2, n=2, max_tokens=4, logprobs=0, echo=echo))
        )
        for choice in full["choices"]:
            assert choice["logprobs"]["text_offset"] == [shift + i * step for i in range(4)]
        chunks = asyncio.run(
            _sse(
                job(FakeEngine(), prompts=2, n=2, max_tokens=4, logprobs=0, echo=echo, stream=True)
            )
        )
        streamed: dict[int, list[int]] = {}
        for c in chunks:
            if isinstance(c, dict) and c["choices"] and c["choices"][0]["logprobs"]:
                choice = c["choices"][0]
                streamed.setdefault(choice["index"], []).extend(choice["logprobs"]["text_offset"])
        assert streamed == {c["index"]: c["logprobs"]["text_offset"] for c in full["choices"]}

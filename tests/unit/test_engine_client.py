"""The engine client, its supervisor and the worker's scheduler, in process: a real worker
(:func:`steadyserve.engine.worker.serve`) in a thread over a socketpair (tests/engine_harness.py).
Exactly-once completion, batching and bisection, abort, deadlines, crashes and readiness, and
per-step output (typed events, one wake-up per non-streaming sequence)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from steadyserve.engine import events, ipc
from steadyserve.engine.client import WorkerClient
from steadyserve.engine.detokenize import IncrementalDetokenizer, StopMatcher
from steadyserve.engine.output import SequenceState, merge_deltas
from steadyserve.engine.supervisor import ExitReason, State
from steadyserve.errors import (
    DeadlineExceeded,
    ModelError,
    ServiceUnavailable,
    WorkerCrashed,
)
from steadyserve.types import GenerateRequest, PredictRequest, SamplingParams, TokenDelta
from tests import engine_harness as h
from tests.models import inproc

pytestmark = pytest.mark.timeout(60)


def run(test: Callable[[WorkerClient], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        client = await h.started_client(**kw)
        try:
            await test(client)
        finally:
            await client.stop(0)
        assert client.in_flight == 0

    inproc.GATE.clear()
    inproc.CALLS.clear()
    inproc.CLOSED.clear()
    asyncio.run(main())


def gen(prompt: str, n: int = 5) -> GenerateRequest:
    return GenerateRequest(prompt=prompt, params=SamplingParams(max_tokens=n))


async def predict(client: WorkerClient, item: str, timeout_s: float | None = None) -> Any:
    result = await client.predict(PredictRequest(instances=[item]), timeout_s)
    return result.predictions


async def collect(stream: AsyncIterator[TokenDelta]) -> list[TokenDelta]:
    async with contextlib.aclosing(stream) as s:  # type: ignore[type-var]
        return [d async for d in s]


def test_concurrent_requests_are_batched_and_each_completes_once() -> None:
    async def test(client: WorkerClient) -> None:
        # the worker is held in a first batch while the 12 arrive, so they queue up together
        # whatever the machine's load (not only when they happen to arrive within the wait)
        blocker = asyncio.ensure_future(predict(client, "block"))
        await h.wait_until(lambda: inproc.CALLS == [1])
        items = [f"x{i}" for i in range(12)]
        batch = asyncio.gather(*(predict(client, i) for i in items))
        await h.wait_until(lambda: client.stats()["in_flight"] == 13)
        inproc.GATE.set()
        results = await batch
        assert await blocker == ["BLOCK"]
        assert results == [[i.upper()] for i in items]
        assert max(inproc.CALLS[1:]) > 1, inproc.CALLS
        assert sum(inproc.CALLS[1:]) == 12  # each request ran once
        assert client.stats()["in_flight"] == 0

    run(test)


def test_a_failing_batch_is_bisected_and_only_the_culprit_fails() -> None:
    async def test(client: WorkerClient) -> None:
        items = ["a", "b", "raise", "c", "d"]
        results = await asyncio.gather(*(predict(client, i) for i in items), return_exceptions=True)
        for item, result in zip(items, results, strict=True):
            if item == "raise":
                assert isinstance(result, ModelError) and "boom" in result.message
            else:
                assert result == [item.upper()]
        assert client.health().ready and client.restarts == 0

    run(test)


def test_a_deadline_ends_the_request_with_504_and_the_worker_drops_it() -> None:
    seen: list[events.EngineEvent] = []

    async def test(client: WorkerClient) -> None:
        client.listeners.append(lambda _, ev: seen.append(ev))
        with pytest.raises(DeadlineExceeded):
            await predict(client, "block", timeout_s=0.2)
        assert client.in_flight == 0
        assert any(isinstance(ev, events.Expired) for ev in seen)
        inproc.GATE.set()
        assert await predict(client, "after") == ["AFTER"]

    run(test)


def test_a_deadline_mid_stream_ends_the_stream_and_aborts_the_sequence() -> None:
    async def test(client: WorkerClient) -> None:
        with pytest.raises(DeadlineExceeded):
            await collect(client.generate(gen("slow", 200), timeout_s=0.3))
        await h.wait_until(lambda: inproc.CLOSED == ["slow"])
        assert client.in_flight == 0 and client.stats()["streams_open"] == 0

    run(test)


def test_closing_a_stream_early_aborts_the_sequence_in_the_worker() -> None:
    seen: list[events.EngineEvent] = []

    async def test(client: WorkerClient) -> None:
        client.listeners.append(lambda _, ev: seen.append(ev))
        async with contextlib.aclosing(client.generate(gen("slow", 200))) as stream:
            got = [await anext(stream), await anext(stream)]
        assert [d.token_ids for d in got] == [[0], [1]]
        await h.wait_until(lambda: inproc.CLOSED == ["slow"])
        assert client.in_flight == 0
        assert any(isinstance(ev, events.Aborted) for ev in seen)
        # and the next request is served
        deltas = await collect(client.generate(gen("ok", 3)))
        assert deltas[-1].finish_reason == "length"

    run(test)


def test_cancelling_the_caller_aborts_a_unary_request() -> None:
    async def test(client: WorkerClient) -> None:
        task = asyncio.ensure_future(predict(client, "block"))
        await h.wait_until(lambda: client.in_flight == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.in_flight == 0
        inproc.GATE.set()
        assert await predict(client, "next") == ["NEXT"]

    run(test)


def test_a_worker_crash_fails_everything_in_flight_fast_and_readiness_is_red_at_once() -> None:
    async def test(client: WorkerClient) -> None:
        ready_when_failed: list[bool] = []

        async def observed(item: str) -> Any:
            try:
                return await predict(client, item)
            except ServiceUnavailable:
                # the failure and red readiness are one step: no request can see it ready
                ready_when_failed.append(client.ready)
                raise

        items = ["a", "b", "crash", "c"]
        results = await asyncio.gather(*(observed(i) for i in items), return_exceptions=True)
        assert isinstance(results[2], WorkerCrashed)
        assert all(isinstance(r, (list, WorkerCrashed)) for r in results)
        assert ready_when_failed and not any(ready_when_failed)
        await h.wait_until(lambda: client.ready)
        assert client.restarts == 1
        assert client.health().last_exit is None
        assert await predict(client, "again") == ["AGAIN"]

    run(test)


def test_a_worker_exit_noticed_before_its_eof_turns_readiness_red_synchronously() -> None:
    """The exit can be reaped before the channel's EOF is read: the supervisor must not leave a
    window (an ``await``) in which the dead worker still looks ready and admits requests."""

    async def test(client: WorkerClient) -> None:
        proc = h.LAUNCHED[-1]
        observed: list[tuple[str, bool]] = []
        client.listeners.append(lambda c, ev: observed.append((type(ev).__name__, c.ready)))
        proc.exited(-11)  # the exit is seen, the channel is still open
        await h.wait_until(lambda: client.state != State.READY, 5)
        assert not client.ready
        with pytest.raises(ServiceUnavailable):
            await predict(client, "x")
        await h.wait_until(lambda: client.restarts == 1, 5)
        assert ("Restarted", False) in observed
        proc.kill()  # release the old worker thread

    run(test)


def test_a_crash_mid_generation_ends_the_stream_with_503_and_the_model_recovers() -> None:
    async def test(client: WorkerClient) -> None:
        with pytest.raises(WorkerCrashed):
            await collect(client.generate(gen("crash-after:3", 10)))
        await h.wait_until(lambda: client.ready)
        exit_ = client.supervisor.consecutive_crashes
        assert exit_ == 1
        deltas = await collect(client.generate(gen("ok", 4)))
        assert [d.token_ids for d in deltas] == [[0], [1], [2], [3]]

    run(test)


def test_a_model_that_fails_to_load_is_a_typed_load_failure(tmp_path: Any) -> None:
    async def main() -> None:
        spec = h.echo_spec(model_class=f"{tmp_path}/missing.py:Nope")
        client = WorkerClient(spec, h.FAST, launcher=h.thread_launcher)
        await client.start()
        try:
            await h.wait_until(lambda: client.health().last_exit is not None)
            health = client.health()
            assert health.load_failed and not health.ready
            assert health.last_exit is not None
            assert health.last_exit.reason is ExitReason.LOAD_FAILED
            assert "missing.py" in (client.last_error or "")
            with pytest.raises(ServiceUnavailable):
                client.require_ready_info()
        finally:
            await client.stop(0)

    asyncio.run(main())


@pytest.fixture
def wakes(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every wake-up of a sequence's reader: True when a reader was waiting for it."""
    seen: list[bool] = []
    real_wake = SequenceState.wake

    def counting_wake(self: SequenceState) -> None:
        seen.append(self.waiter is not None and not self.waiter.done())
        real_wake(self)

    monkeypatch.setattr(SequenceState, "wake", counting_wake)
    return seen


def test_generation_output_is_per_step_with_exact_metrics_and_one_wake_for_non_streaming(
    wakes: list[bool],
) -> None:
    seen: list[events.EngineEvent] = []

    async def test(client: WorkerClient) -> None:
        client.listeners.append(lambda _, ev: seen.append(ev))
        deltas = await collect(client.generate(gen("ok", 20), stream=False))
        assert len(deltas) == 1  # the whole output, merged
        assert deltas[0].token_ids == list(range(20)) and deltas[0].finish_reason == "length"
        assert deltas[0].text == "".join(f"t{i} " for i in range(20))
        assert deltas[0].prompt_tokens == 3
        assert sum(wakes) == 1, wakes  # the reader was woken once, at the end
        tokens = [ev for ev in seen if isinstance(ev, events.Tokens)]
        assert len(tokens) == 20 and tokens[0].first and not any(t.first for t in tokens[1:])
        assert sum(t.tokens for t in tokens) == 20
        assert [t.prompt_tokens for t in tokens if t.prompt_tokens] == [3]
        assert all(t.seconds >= 0 for t in tokens)
        wakes.clear()
        streamed = await collect(client.generate(gen("ok", 20)))
        assert len(streamed) == 20 and sum(wakes) >= 1

    run(test)


def test_a_stop_string_ends_the_sequence_in_the_worker_and_wakes_a_non_stream_once(
    wakes: list[bool],
) -> None:

    async def test(client: WorkerClient) -> None:
        # "slow" makes 200 tokens in ~4 s: the stop string must end it long before
        deltas = await collect(client.generate(gen("slow", 200), stream=False, stop=["t3"]))
        assert len(deltas) == 1 and sum(wakes) == 1, wakes  # one wake-up, at the end
        assert deltas[0].text == "t0 t1 t2 " and deltas[0].finish_reason == "stop"
        assert deltas[0].token_ids == [0, 1, 2, 3]  # the tokens generated up to the stop
        await h.wait_until(lambda: inproc.CLOSED == ["slow"])  # the worker dropped it
        assert client.in_flight == 0
        # streamed: text that may start a stop string is held back until the next step
        streamed = await collect(client.generate(gen("ok", 20), stop=["t2 t", "zz"]))
        assert [d.text for d in streamed] == ["", "t0 ", "t1 ", ""]
        assert streamed[-1].finish_reason == "stop"
        # a stop string that never matches: the held-back tail is flushed at the end
        tail = await collect(client.generate(gen("ok", 3), stream=False, stop=["never"]))
        assert tail[0].text == "t0 t1 t2 " and tail[0].finish_reason == "length"
        assert await predict(client, "after") == ["AFTER"]

    run(test)


def test_an_undecodable_step_ends_a_non_streamed_sequence_at_once() -> None:
    """A tokenizer that raises on a step's text (decoded per step: stop strings) ends that
    sequence there with a 500 and drops it in the worker, even for a reader woken only at the
    end; the next request is served."""

    class Broken:
        def decode(self, token_ids: Any, skip_special_tokens: bool = True) -> str:
            raise RuntimeError("bad tokenizer")

    async def test(client: WorkerClient) -> None:
        seq = SequenceState(
            tokens=5,
            stream=False,
            started=time.monotonic(),
            detok=IncrementalDetokenizer(Broken()),
            stop=StopMatcher(["x"]),
        )
        client._pending[999] = seq
        client._queued_tokens += 5
        client._on_deltas(ipc.Deltas(items=[(999, TokenDelta(token_ids=[1]))]))
        assert 999 not in client._pending and client.in_flight == 0
        assert len(seq.out) == 1 and isinstance(seq.out[0], ModelError)
        assert "could not be detokenized" in seq.out[0].message
        assert await predict(client, "after") == ["AFTER"]

    run(test)


def test_admission_refuses_when_not_ready_and_when_full() -> None:
    async def test(client: WorkerClient) -> None:
        client.draining = True
        with pytest.raises(ServiceUnavailable, match="draining"):
            await predict(client, "x")
        client.draining = False
        blocked = [asyncio.ensure_future(predict(client, "block")) for _ in range(2)]
        await h.wait_until(lambda: client.in_flight == 2)
        from steadyserve.errors import QueueFull

        with pytest.raises(QueueFull):
            await predict(client, "x")
        inproc.GATE.set()
        assert await asyncio.gather(*blocked) == [["BLOCK"], ["BLOCK"]]
        assert await predict(client, "x") == ["X"]

    run(test, config=h.EngineConfig(max_queue_size=2, restart_backoff_s=0.01))


def test_merge_deltas_keeps_every_token_and_its_logprobs() -> None:
    parts = [
        TokenDelta(token_ids=[1], logprobs=[-0.1], top_logprobs=[{1: -0.1}], prompt_tokens=4),
        TokenDelta(token_ids=[2, 3], logprobs=[-0.2, -0.3], top_logprobs=[{2: -0.2}, {3: -0.3}]),
        TokenDelta(token_ids=[], finish_reason="stop"),
    ]
    merged = merge_deltas(parts)
    assert merged.token_ids == [1, 2, 3] and merged.finish_reason == "stop"
    assert merged.prompt_tokens == 4 and merged.text is None
    assert merged.logprobs == [-0.1, -0.2, -0.3]
    assert merged.top_logprobs == [{1: -0.1}, {2: -0.2}, {3: -0.3}]
    # a delta with tokens but no logprobs: the merged ones would not line up with the tokens
    merged = merge_deltas([parts[0], TokenDelta(token_ids=[5])])
    assert merged.logprobs is None and merged.top_logprobs is None

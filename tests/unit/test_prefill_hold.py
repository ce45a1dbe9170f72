"""Arrivals held for the replacements of recent finishes (``prefill_hold_ms``), on a clock the
test owns: sequences that finished together are replaced together in ONE prefill pass, a lone
client is never held, nobody waits past the bound, tokens stay exact, and the worker's
scheduler sleeps (rather than spins) while the engine holds with nothing to decode.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import pytest

from steadyserve.config import ModelSpec
from steadyserve.engine.ipc import Deltas, Generate, Heartbeat, Shutdown, Submit
from steadyserve.engine.scheduler import Scheduler
from steadyserve.model import Model
from steadyserve.runtimes.huggingface.compiled import DecodeForward
from steadyserve.runtimes.huggingface.generation import PREFILL_HOLD_MS, ContinuousBatcher
from steadyserve.types import GenerateRequest, TokenDelta
from tests.unit.test_generation_engine import (
    _greedy,
    _prompt,
    _reference,
    models,  # noqa: F401 - the module-scoped fixture
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, ms: float) -> None:
        self.t += ms / 1000


def _engine(model: Any, clock: Clock, **kw: Any) -> ContinuousBatcher:
    kw.setdefault("max_num_seqs", 4)
    engine = ContinuousBatcher(
        model,
        eos_token_ids=[int(model.config.eos_token_id)],
        pad_token_id=int(model.config.pad_token_id),
        max_model_len=128,
        **kw,
    )
    engine._now = clock
    return engine


class Run:
    """Drives one engine; records every prefill pass and every token."""

    def __init__(self, engine: ContinuousBatcher) -> None:
        self.engine = engine
        self.prefills: list[list[str]] = []
        self.tokens: dict[str, list[int]] = {}
        self.finished: set[str] = set()
        original = engine._prefill

        def counting(seqs: list[Any]) -> Any:
            self.prefills.append([s.request_id for s in seqs])
            return original(seqs)

        engine._prefill = counting  # type: ignore[method-assign]

    def add(self, rid: str, prompt: list[int], max_tokens: int) -> None:
        self.engine.add(rid, GenerateRequest(prompt, params=_greedy(max_tokens)))

    def step(self) -> None:
        for rid, item in self.engine.step():
            assert not isinstance(item, BaseException), item
            self.tokens.setdefault(rid, []).extend(item.token_ids)
            if item.finish_reason is not None:
                self.finished.add(rid)

    def finish_together(
        self, prompts: dict[str, list[int]], max_tokens: int, clock: Clock, step_ms: float = 5
    ) -> None:
        """Add these requests at once and step until every one of them has finished."""
        for rid, prompt in prompts.items():
            self.add(rid, prompt, max_tokens)
        self.until_finished(set(prompts), clock, step_ms)

    def until_finished(self, rids: set[str], clock: Clock, step_ms: float = 5) -> None:
        for _ in range(100):
            if rids <= self.finished:
                return
            self.step()
            clock.advance(step_ms)
        raise AssertionError(f"not finished: {rids - self.finished}")


@pytest.mark.parametrize("kind", ["gpt2", "t5"])
def test_replacements_of_a_finished_batch_share_one_prefill(
    models: dict[str, Any],  # noqa: F811
    kind: str,
) -> None:
    model = models[kind]
    clock = Clock()
    engine = _engine(model, clock)
    run = Run(engine)
    prompts = {f"r{i}": _prompt(model, 4 + i, seed=300 + i) for i in range(7)}
    run.finish_together({rid: prompts[rid] for rid in ("r0", "r1", "r2")}, 3, clock)
    assert run.prefills == [["r0", "r1", "r2"]]  # a fresh engine holds nobody
    finished_at = clock.t - 0.005  # the last step (then the clock moved on)

    # three finished together: their clients' next requests trickle in; the first two are held
    clock.advance(2)
    run.add("r3", prompts["r3"], 4)
    assert 0 < engine.idle_s() <= PREFILL_HOLD_MS / 1000
    run.step()
    clock.advance(10)
    run.add("r4", prompts["r4"], 4)
    run.step()
    assert len(run.prefills) == 1 and "r3" not in run.tokens
    # held until the finishes are PREFILL_HOLD_MS old (r3 arrived after them)
    assert engine.idle_s() == pytest.approx(finished_at + PREFILL_HOLD_MS / 1000 - clock.t)
    clock.advance(5)
    run.add("r5", prompts["r5"], 4)  # the last replacement: nothing is held any more
    assert engine.idle_s() == 0
    run.step()
    assert run.prefills[1] == ["r3", "r4", "r5"]
    run.until_finished({"r3", "r4", "r5"}, clock)
    for rid in ("r0", "r1", "r2", "r3", "r4", "r5"):
        n = 3 if rid in ("r0", "r1", "r2") else 4
        assert run.tokens[rid] == _reference(model, prompts[rid], n), rid


def test_no_arrival_waits_past_the_bound(models: dict[str, Any]) -> None:  # noqa: F811
    """Three finished, one came back: it is held, but not a moment past ``prefill_hold_ms``
    after it arrived; finishes older than the bound are not waited for at all."""
    model = models["llama"]
    clock = Clock()
    engine = _engine(model, clock, prefill_hold_ms=40)
    run = Run(engine)
    prompts = {f"r{i}": _prompt(model, 5, seed=400 + i) for i in range(5)}
    run.finish_together({rid: prompts[rid] for rid in ("r0", "r1", "r2")}, 2, clock, step_ms=0)
    run.add("r3", prompts["r3"], 3)
    clock.advance(39)
    run.step()
    assert "r3" not in run.tokens and engine.idle_s() == pytest.approx(0.001)
    clock.advance(1)
    assert engine.idle_s() == 0
    run.step()
    assert run.prefills[-1] == ["r3"] and len(run.tokens["r3"]) == 1
    run.until_finished({"r3"}, clock, step_ms=100)  # the finish is 100 ms old by now
    clock.advance(100)
    run.add("r4", prompts["r4"], 2)
    assert engine.idle_s() == 0
    run.step()
    assert run.prefills[-1] == ["r4"]
    assert run.tokens["r3"] == _reference(model, prompts["r3"], 3)


def test_the_hold_ends_when_the_last_expected_replacement_is_too_old(
    models: dict[str, Any],  # noqa: F811
) -> None:
    """Three finished at t0 and one came back at t0+45 ms: the other two are not waited for
    past t0+50 ms (the newest finish's bound), though the arrival itself is only 5 ms old."""
    model = models["gpt2"]
    clock = Clock()
    engine = _engine(model, clock)
    run = Run(engine)
    run.finish_together({f"r{i}": _prompt(model, 4, seed=500) for i in range(3)}, 2, clock, 0)
    clock.advance(45)
    run.add("r3", _prompt(model, 4, seed=501), 2)
    assert engine.idle_s() == pytest.approx(0.005)
    clock.advance(5)
    assert engine.idle_s() == 0
    run.step()
    assert run.prefills[-1] == ["r3"]


def test_a_request_that_waited_for_a_slot_is_not_held_again(
    models: dict[str, Any],  # noqa: F811
) -> None:
    """The bound counts from when the request reached the worker (``arrived``), not from when
    a slot let the scheduler hand it to the engine."""
    model = models["gpt2"]
    clock = Clock()
    engine = _engine(model, clock)
    run = Run(engine)
    run.finish_together({f"r{i}": _prompt(model, 4, seed=600) for i in range(3)}, 2, clock, 0)
    engine.add("late", GenerateRequest(_prompt(model, 4, seed=601), params=_greedy(2)), clock.t - 2)
    assert engine.idle_s() == 0
    run.step()
    assert run.prefills[-1] == ["late"]
    # the same request arriving now would be held for the two others
    run.until_finished({"late"}, clock, step_ms=0)
    engine.add("fresh", GenerateRequest(_prompt(model, 4, seed=602), params=_greedy(2)))
    assert engine.idle_s() > 0


def test_no_hold_is_left_over_from_the_compile_warm_up(
    models: dict[str, Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--compile`` runs warm-up requests through the engine at load; their finishes are not
    finishes a client replaces, so the first real requests are not held for them."""
    monkeypatch.setattr(DecodeForward, "compile", lambda self, device, shapes=0: True)
    model = models["gpt2"]
    engine = _engine(model, Clock(), compile=True)
    assert not engine.has_work()
    run = Run(engine)
    run.add("first", _prompt(model, 4, seed=700), 2)
    assert engine.idle_s() == 0
    run.step()
    assert run.prefills == [["first"]]


def test_a_lone_client_and_a_zero_hold_are_never_held(
    models: dict[str, Any],  # noqa: F811
) -> None:
    model = models["gpt2"]
    for hold, clients in ((PREFILL_HOLD_MS, 1), (0.0, 3)):
        clock = Clock()
        engine = _engine(model, clock, prefill_hold_ms=hold)
        run = Run(engine)
        for round_ in range(3):
            rids = {f"c{i}-{round_}" for i in range(clients)}
            for rid in sorted(rids):
                run.add(rid, _prompt(model, 4, seed=len(run.prefills)), 2)
                assert engine.idle_s() == 0  # a c=1 client, or no hold at all
                if hold == 0:
                    run.step()  # each arrival alone: nothing waits for the next
            run.until_finished(rids, clock, step_ms=1)
        assert len(run.prefills) == 3 * clients
    with pytest.raises(ValueError, match="prefill_hold_ms"):
        _engine(model, Clock(), prefill_hold_ms=-1)


def test_arrivals_that_fill_the_free_slots_are_not_held(
    models: dict[str, Any],  # noqa: F811
) -> None:
    model = models["gpt2"]
    clock = Clock()
    engine = _engine(model, clock, max_num_seqs=2)
    run = Run(engine)
    run.add("a", _prompt(model, 4, seed=1), 2)
    run.add("b", _prompt(model, 4, seed=2), 2)
    run.add("c", _prompt(model, 4, seed=3), 6)  # waits for a slot
    run.until_finished({"a", "b"}, clock, step_ms=1)
    # a and b finished: c (queued for a slot) is held for their replacements...
    assert "c" not in run.tokens and engine.idle_s() > 0
    # ...and d, the first, fills the free slots with c: nothing is left to wait for
    run.add("d", _prompt(model, 4, seed=4), 2)
    assert engine.idle_s() == 0
    run.step()
    assert run.prefills[-1] == ["c", "d"]


class _HoldingGenerator:
    """Holds what it is given while ``hold`` > 0 (as the engine does with nothing to decode),
    then ends every request with one token."""

    def __init__(self) -> None:
        self.hold = 10.0
        self.steps = 0
        self.requests: list[str] = []
        self.arrivals: list[float | None] = []

    def add(self, request_id: str, request: Any, arrived: float | None = None) -> None:
        self.requests.append(request_id)
        self.arrivals.append(arrived)

    def abort(self, request_id: str) -> None:
        self.requests.remove(request_id)

    def has_work(self) -> bool:
        return bool(self.requests)

    def step(self) -> list[tuple[str, TokenDelta]]:
        self.steps += 1
        if self.hold > 0 or (self.hold < 0 and self.steps % 2):
            return []  # held (or, with a broken hint, running for one more step)
        done, self.requests = self.requests, []
        return [(rid, TokenDelta(token_ids=[7], finish_reason="length")) for rid in done]

    def reset(self) -> None:
        self.requests.clear()

    def stats(self) -> dict[str, int]:
        return {}

    def idle_s(self) -> float:
        if self.hold < 0:
            raise RuntimeError("a broken hint")
        return self.hold if self.requests else 0.0


class _HoldingModel(Model):
    def __init__(self) -> None:
        super().__init__("held")
        self.generator = _HoldingGenerator()

    def generation_engine(self) -> _HoldingGenerator:  # type: ignore[override]
        return self.generator


class _Channel:
    def __init__(self) -> None:
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.sent: queue.Queue[Any] = queue.Queue()

    def send(self, msg: Any) -> None:
        self.sent.put(msg)

    def recv(self) -> Any:
        return self.inbox.get()


def _submit(rid: int) -> Submit:
    request = GenerateRequest(prompt_token_ids=[1, 2], params=_greedy(1))
    return Submit(id=rid, work=Generate(request=request), timeout_s=None)


def test_the_scheduler_sleeps_while_the_engine_holds() -> None:
    """While the engine holds arrivals with nothing to decode, the worker waits on its inbox
    (for the hold, or the next message: it wakes at once) instead of stepping in a busy loop;
    once the hold ends, the request is served."""
    model = _HoldingModel()
    channel = _Channel()
    scheduler = Scheduler(
        model, ModelSpec(name="held", runtime="custom"), channel, None, on_server_gone=lambda: None
    )
    thread = threading.Thread(target=scheduler.run, daemon=True)
    thread.start()
    try:
        before = time.monotonic()
        channel.inbox.put(_submit(1))
        time.sleep(0.6)
        steps = model.generator.steps
        assert 1 <= steps <= 10, steps  # a busy loop would have stepped thousands of times
        # it handed the engine the time the request reached the worker
        (arrived,) = model.generator.arrivals
        assert arrived is not None and before <= arrived <= before + 0.5
        # the sleep is cut into heartbeats: the server still hears from it (no "hang")
        beats = 0
        while not channel.sent.empty():
            beats += isinstance(channel.sent.get(), Heartbeat)
        assert beats >= 2
        channel.inbox.put(_submit(2))  # a message wakes it: the new arrival is added at once
        deadline = time.monotonic() + 5
        while model.generator.requests != ["1", "2"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert model.generator.requests == ["1", "2"]
        model.generator.hold = 0.0
        channel.inbox.put(_submit(3))
        ended: set[int] = set()
        while len(ended) < 3:
            msg = channel.sent.get(timeout=5)
            if isinstance(msg, Deltas):
                ended |= {rid for rid, d in msg.items if d.finish_reason is not None}
        assert ended == {1, 2, 3}
    finally:
        channel.inbox.put(Shutdown())
        thread.join(timeout=5)
    assert not thread.is_alive()


def test_a_generator_whose_idle_hint_fails_still_serves(caplog: pytest.LogCaptureFixture) -> None:
    """A custom generator's ``idle_s`` that raises is logged once and ignored: the worker
    keeps stepping and the request is served (the hint is an optimisation, never a failure)."""
    model = _HoldingModel()
    model.generator.hold = -1.0  # idle_s raises; each request takes two steps
    channel = _Channel()
    spec = ModelSpec(name="held", runtime="custom")
    scheduler = Scheduler(model, spec, channel, None, on_server_gone=lambda: None)
    thread = threading.Thread(target=scheduler.run, daemon=True)
    with caplog.at_level("ERROR", logger="steadyserve.worker"):
        thread.start()
        try:
            for rid in (1, 2):
                channel.inbox.put(_submit(rid))
                while True:
                    msg = channel.sent.get(timeout=5)
                    if isinstance(msg, Deltas) and msg.items:
                        assert [i for i, _ in msg.items] == [rid]
                        break
        finally:
            channel.inbox.put(Shutdown())
            thread.join(timeout=5)
    assert not thread.is_alive()
    assert sum("idle_s() failed" in r.getMessage() for r in caplog.records) == 1

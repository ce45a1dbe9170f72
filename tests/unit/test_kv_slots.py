"""The pre-allocated KV slots of the continuous batcher (runtimes/huggingface/slots.py).

The scenarios of ``test_generation_engine.py`` already run on the slots (the default); these
tests push what is particular to them: the buffers are not reallocated or re-padded on a join
or a leave, holes in the slot range, the window compacted and grown mid-stream, and the old
dynamic cache giving the same tokens. Every comparison is exact token equality with the model's
own greedy ``generate()`` (or with the same request run alone).
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import torch

from steadyserve.runtimes.huggingface import slots as slots_mod
from steadyserve.runtimes.huggingface.generation import ContinuousBatcher
from steadyserve.types import GenerateRequest, SamplingParams
from tests.unit.test_generation_engine import (
    KINDS,
    Schedule,
    _check_finished,
    _drive,
    _greedy,
    _prompt,
    _reference,
    _tokens,
    models,  # noqa: F401 - the module-scoped fixture
)


def _engine(model: Any, **kw: Any) -> ContinuousBatcher:
    kw.setdefault("max_num_seqs", 4)
    kw.setdefault("max_model_len", 128)
    kw.setdefault("prefill_hold_ms", 0)  # schedules in steps (see test_prefill_hold.py)
    return ContinuousBatcher(
        model,
        eos_token_ids=[int(model.config.eos_token_id)],
        pad_token_id=int(model.config.pad_token_id),
        **kw,
    )


def _plan_schedule(plan: list[tuple[int, int, int]], prompts: dict[str, list[int]]) -> Schedule:
    """``plan`` rows (arrival step, prompt length, max_tokens) as a schedule of greedy
    requests ``r0``, ``r1``, ... with ``prompts``."""
    schedule: Schedule = {}
    for i, (step, _, max_tokens) in enumerate(plan):
        schedule.setdefault(step, []).append(
            (f"r{i}", GenerateRequest(prompts[f"r{i}"], params=_greedy(max_tokens)))
        )
    return schedule


def _buffers(engine: ContinuousBatcher) -> list[int]:
    assert engine.slots is not None
    layers = engine.slots.own + engine.slots.cross
    return [layer.kbuf.data_ptr() for layer in layers if layer.kbuf is not None]


@pytest.mark.parametrize("kind", KINDS)
def test_joins_and_leaves_do_not_reallocate(models: dict[str, Any], kind: str) -> None:  # noqa: F811
    """After the first join, later joins and leaves (a hole in slot 0 refilled) keep the very
    same buffers, and every request equals generate()."""
    model = models[kind]
    plan = [(0, 6, 3), (0, 9, 14), (1, 5, 9), (4, 7, 6), (5, 3, 8), (9, 12, 4)]
    prompts = {f"r{i}": _prompt(model, n, seed=40 + i) for i, (_, n, _) in enumerate(plan)}
    schedule = _plan_schedule(plan, prompts)
    engine = _engine(model, max_num_seqs=3)
    seen: list[list[int]] = []
    holes: list[bool] = []

    def watch(step: int, e: ContinuousBatcher) -> None:
        if e.slots is not None and e.slots.width:
            seen.append(_buffers(e))
            holes.append(0 < e.slots.rows < e.slots.hi)

    deltas, errors = _drive(engine, schedule, on_step=watch)
    assert not errors
    assert len({tuple(s) for s in seen}) == 1, "a join or a leave reallocated the buffers"
    assert any(holes), "the plan should leave a hole below a running slot"
    for i, (_, _, max_tokens) in enumerate(plan):
        rid = f"r{i}"
        assert _tokens(deltas[rid]) == _reference(model, prompts[rid], max_tokens), rid
        _check_finished(deltas[rid], len(prompts[rid]), "length")
    assert engine.stats() == {"running": 0, "waiting": 0, "cache_columns": 0}


@pytest.mark.parametrize("kind", KINDS)
def test_window_compacts_and_grows_mid_stream(
    models: dict[str, Any],  # noqa: F811
    kind: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tiny first width: the buffers grow and the window is compacted (columns left of every
    running row dropped) many times while requests keep joining; outputs stay exact."""
    monkeypatch.setattr(slots_mod, "INITIAL_WIDTH", 1)
    model = models[kind]
    engine = _engine(model, max_num_seqs=2, max_model_len=40)
    rebuilt: list[int] = []
    original = slots_mod.SlotBatch._rebuild

    def counting(self: slots_mod.SlotBatch, width: int, shift: int) -> None:
        rebuilt.append(shift)
        original(self, width, shift)

    monkeypatch.setattr(slots_mod.SlotBatch, "_rebuild", counting)
    plan = [(0, 5, 20), (3, 14, 18), (10, 2, 25), (21, 9, 12), (24, 20, 15), (30, 1, 6)]
    plan += [(45, 6, 20), (52, 10, 25), (70, 3, 20), (75, 15, 8)]
    prompts = {f"r{i}": _prompt(model, n, seed=60 + i) for i, (_, n, _) in enumerate(plan)}
    schedule = _plan_schedule(plan, prompts)
    deltas, errors = _drive(engine, schedule)
    assert not errors
    assert any(s > 0 for s in rebuilt), "no compaction happened"
    assert any(s < 0 for s in rebuilt) or kind == "t5", "no right shift for a long prompt"
    for i, (_, _, max_tokens) in enumerate(plan):
        rid = f"r{i}"
        assert _tokens(deltas[rid]) == _reference(model, prompts[rid], max_tokens), rid


@pytest.mark.parametrize("kind", KINDS)
def test_slots_and_dynamic_cache_agree_with_sampling(models: dict[str, Any], kind: str) -> None:  # noqa: F811
    """Mixed greedy / seeded sampling / penalties / logprobs, joins at different steps: the slot
    cache and the old dynamic cache give the same tokens and log-probabilities."""
    model = models[kind]
    params = [
        SamplingParams(max_tokens=9, temperature=0.8, seed=7, top_k=20),
        _greedy(6, logprobs=2),
        SamplingParams(max_tokens=7, temperature=1.0, seed=3, top_p=0.9, min_tokens=7),
        _greedy(8, repetition_penalty=1.3),
    ]
    schedule: Schedule = {}
    for i, p in enumerate(params):
        prompt = _prompt(model, 3 + 4 * i, seed=80 + i)
        schedule.setdefault(i % 3, []).append((f"r{i}", GenerateRequest(prompt, params=p)))
    results = []
    for kv_cache in ("slots", "dynamic"):
        deltas, errors = _drive(_engine(model, kv_cache=kv_cache), schedule)
        assert not errors
        results.append(deltas)
    slots, dynamic = results
    assert set(slots) == set(dynamic) == {f"r{i}" for i in range(len(params))}
    for rid in slots:
        assert _tokens(slots[rid]) == _tokens(dynamic[rid]), rid
        lp_s = [x for d in slots[rid] for x in d.logprobs or []]
        lp_d = [x for d in dynamic[rid] for x in d.logprobs or []]
        assert lp_s == pytest.approx(lp_d, abs=1e-4)


def test_seeded_request_same_in_any_slot(models: dict[str, Any]) -> None:  # noqa: F811
    """A seeded sampled request gives the same tokens alone (slot 0) and joining a busy batch
    into a hole (slot 1 of 3)."""
    model = models["llama"]
    prompt = _prompt(model, 6, seed=5)
    seeded = GenerateRequest(prompt, params=SamplingParams(max_tokens=10, temperature=1.0, seed=11))
    alone, _ = _drive(_engine(model), {0: [("s", seeded)]})
    others = {
        0: [
            ("a", GenerateRequest(_prompt(model, 4, 1), params=_greedy(12))),
            ("b", GenerateRequest(_prompt(model, 8, 2), params=_greedy(2))),
            ("c", GenerateRequest(_prompt(model, 5, 3), params=_greedy(12))),
        ],
        3: [("s", seeded)],
    }
    engine = _engine(model)
    slot_of: dict[str, int | None] = {}

    def where(step: int, e: ContinuousBatcher) -> None:
        if step == 4 and e.slots is not None:
            slot_of["s"] = e.slots.row_of("s")

    busy, errors = _drive(engine, others, on_step=where)
    assert not errors
    assert slot_of["s"] == 1  # b left slot 1; s took the lowest free slot
    assert _tokens(busy["s"]) == _tokens(alone["s"])


def test_abort_mid_prefill_wave_and_reuse(models: dict[str, Any]) -> None:  # noqa: F811
    """Aborts between the join of a wave and its next step, and of a request still waiting;
    the freed slots are reused and the survivors are exact."""
    model = models["gpt2"]
    prompts = {f"r{i}": _prompt(model, 4 + i, seed=90 + i) for i in range(6)}
    schedule: Schedule = {
        0: [(rid, GenerateRequest(p, params=_greedy(6))) for rid, p in prompts.items()]
    }

    def abort(step: int, e: ContinuousBatcher) -> None:
        if step == 1:  # r0..r3 were just prefilled; r4, r5 wait for a slot
            e.abort("r1")
            e.abort("r4")

    deltas, errors = _drive(_engine(model, max_num_seqs=4), schedule, on_step=abort)
    assert not errors
    assert len(deltas["r1"]) == 1 and "r4" not in deltas
    for rid in ("r0", "r2", "r3", "r5"):
        assert _tokens(deltas[rid]) == _reference(model, prompts[rid], 6), rid


def test_device_follows_the_model(models: dict[str, Any]) -> None:  # noqa: F811
    model = models["gpt2"]
    engine = _engine(model)
    assert engine.device == torch.device("cpu")
    assert _engine(model, device="cpu").device == torch.device("cpu")
    with pytest.raises(ValueError, match="model is on cpu"):
        _engine(model, device="meta")
    with pytest.raises(ValueError, match="kv_cache"):
        _engine(model, kv_cache="paged")


@pytest.mark.parametrize("delay", [0, 3])
def test_arrivals_prefilled_together_within_the_bound(
    models: dict[str, Any],  # noqa: F811
    delay: int,
) -> None:
    """With ``prefill_delay_steps``, arrivals one step apart share one prefill pass, and none
    waits more than the bound for its first token; outputs stay exact."""
    model = models["gpt2"]
    engine = _engine(model, max_num_seqs=8, prefill_delay_steps=delay)
    prompts = {f"r{i}": _prompt(model, 3 + i, seed=100 + i) for i in range(5)}
    arrive = {"r0": 0, "r1": 1, "r2": 2, "r3": 3, "r4": 9}
    schedule: Schedule = {}
    for rid, step in arrive.items():
        schedule.setdefault(step, []).append(
            (rid, GenerateRequest(prompts[rid], params=_greedy(12)))
        )
    prefills: list[int] = []
    original = engine._prefill

    def counting(seqs: list[Any]) -> Any:
        prefills.append(len(seqs))
        return original(seqs)

    engine._prefill = counting  # type: ignore[method-assign]
    first: dict[str, int] = {}

    def watch(step: int, e: ContinuousBatcher) -> None:
        for rid in prompts:
            if rid not in first and e._row_of(rid) is not None:
                first[rid] = step  # prefilled during the previous step

    deltas, errors = _drive(engine, schedule, on_step=watch)
    assert not errors
    for rid, step in arrive.items():
        assert 1 <= first[rid] - step <= delay + 1, (rid, first[rid], step)
        assert _tokens(deltas[rid]) == _reference(model, prompts[rid], 12), rid
    if delay:
        # r0 alone (idle engine); r1 + r2 together; r3 and r4 alone, at the bound
        assert prefills == [1, 2, 1, 1]
    else:
        assert prefills == [1, 1, 1, 1, 1]


def test_compile_failure_at_load_is_a_warning_and_eager(
    models: dict[str, Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(model: Any, **kw: Any) -> Any:
        def run(**inputs: Any) -> Any:
            raise RuntimeError("inductor exploded")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    model = models["llama"]
    with caplog.at_level("WARNING", logger="steadyserve.generation"):
        engine = _engine(model, compile=True)
    assert engine._forward.compiled is None
    assert any("decoding runs eagerly" in r.getMessage() for r in caplog.records)
    prompt = _prompt(model, 7, seed=123)
    deltas, errors = _drive(engine, {0: [("a", GenerateRequest(prompt, params=_greedy(9)))]})
    assert not errors
    assert _tokens(deltas["a"]) == _reference(model, prompt, 9)


def test_compiled_step_that_raises_later_falls_back_mid_stream(
    models: dict[str, Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A compiled step that works at load and fails mid-stream (after writing some layers of
    the column) is redone eagerly: no request fails and the tokens are exact."""
    calls = {"n": 0, "armed": 0}

    def flaky(model: Any, **kw: Any) -> Any:
        def run(**inputs: Any) -> Any:
            calls["n"] += calls["armed"]
            if calls["n"] > 3:
                model(**inputs)  # writes the column, then fails
                raise RuntimeError("graph break at runtime")
            return model(**inputs)

        return run

    monkeypatch.setattr(torch, "compile", flaky)
    model = models["gpt2"]
    engine = _engine(model, compile=True)
    assert engine._forward.compiled is not None
    calls["armed"] = 1  # the load's warm-up went through; fail the 4th step from now on
    prompts = {rid: _prompt(model, 4 + i, seed=130 + i) for i, rid in enumerate("ab")}
    schedule: Schedule = {
        0: [("a", GenerateRequest(prompts["a"], params=_greedy(10)))],
        2: [("b", GenerateRequest(prompts["b"], params=_greedy(8)))],
    }
    deltas, errors = _drive(engine, schedule)
    assert not errors and engine._forward.compiled is None
    for rid, n in (("a", 10), ("b", 8)):
        assert _tokens(deltas[rid]) == _reference(model, prompts[rid], n), rid


@pytest.mark.parametrize("kind", KINDS)
def test_static_shapes_for_compile_give_exact_tokens_with_few_shapes(
    models: dict[str, Any],  # noqa: F811
    kind: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--compile`` feeds the step fixed shapes (a power-of-two bucket of rows over the whole
    buffer width, the write column a tensor): every row bucket is warmed up at load, joins,
    leaves, holes and a growing, compacting window give exactly generate()'s tokens, and the
    step only ever sees a few distinct shapes. (torch.compile itself is replaced by the eager
    model here: this checks the static view, not inductor.)"""
    shapes: set[tuple[int, ...]] = set()

    def identity(model: Any, **kw: Any) -> Any:
        assert kw.get("dynamic") is False

        def run(**inputs: Any) -> Any:
            ids = inputs.get("input_ids", inputs.get("decoder_input_ids"))
            mask = inputs.get("decoder_attention_mask", inputs["attention_mask"])
            shapes.add((int(ids.shape[0]), int(mask.shape[1])))
            return model(**inputs)

        return run

    monkeypatch.setattr(torch, "compile", identity)
    monkeypatch.setattr(slots_mod, "INITIAL_WIDTH", 8)
    model = models[kind]
    engine = _engine(model, max_num_seqs=5, max_model_len=40, compile=True)
    assert engine.slots is not None and engine.slots.static
    assert {rows for rows, _ in shapes} == {1, 2, 4, 5}  # every bucket warmed up at load
    plan = [(0, 5, 12), (0, 9, 14), (1, 3, 9), (2, 7, 6), (4, 11, 16), (9, 2, 10), (12, 6, 5)]
    prompts = {f"r{i}": _prompt(model, n, seed=80 + i) for i, (_, n, _) in enumerate(plan)}
    schedule = _plan_schedule(plan, prompts)
    deltas, errors = _drive(engine, schedule)
    assert not errors
    for i, (_, _, max_tokens) in enumerate(plan):
        rid = f"r{i}"
        assert _tokens(deltas[rid]) == _reference(model, prompts[rid], max_tokens), rid
    assert {rows for rows, _ in shapes} <= {1, 2, 4, 5}
    widths = {width for _, width in shapes}
    assert len(widths) <= 3, shapes  # the buffer widths only (8, 16, 32...), not one per step


def test_buckets() -> None:
    assert slots_mod.buckets(1) == [1]
    assert slots_mod.buckets(32) == [1, 2, 4, 8, 16, 32]
    assert slots_mod.buckets(5) == [1, 2, 4, 5]
    assert [slots_mod.bucket(n, 5) for n in range(1, 6)] == [1, 2, 4, 4, 5]


@pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="inductor's CPU backend needs a C++ compiler",
)
@pytest.mark.parametrize("kind", ["gpt2", "t5"])
def test_real_torch_compile_of_the_static_step_gives_exact_tokens(
    models: dict[str, Any],  # noqa: F811
    kind: str,
) -> None:
    """The real thing on CPU (inductor; CUDA graphs need a GPU): the static step compiles at
    load, stays compiled while requests join and leave, and gives generate()'s tokens."""
    model = models[kind]
    engine = _engine(model, max_num_seqs=2, max_model_len=64, compile=True)
    assert engine._forward.compiled is not None, "compiling failed (see the warning)"
    prompts = {rid: _prompt(model, 4 + i, seed=150 + i) for i, rid in enumerate("ab")}
    schedule: Schedule = {
        0: [("a", GenerateRequest(prompts["a"], params=_greedy(10)))],
        2: [("b", GenerateRequest(prompts["b"], params=_greedy(8)))],
    }
    deltas, errors = _drive(engine, schedule)
    assert not errors and engine._forward.compiled is not None
    for rid, n in (("a", 10), ("b", 8)):
        assert _tokens(deltas[rid]) == _reference(model, prompts[rid], n), rid


def test_a_compiled_static_step_that_fails_mid_run_is_redone_on_its_own_view(
    models: dict[str, Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three rows in four slots (a padded bucket), the window past column 0 (lo > 0), and the
    compiled step raising mid-run: the step is redone eagerly on the static inputs it was
    built for, then the batch goes back to the windowed view; no request fails, tokens exact."""
    calls = {"n": 0, "armed": 0}

    def flaky(model: Any, **kw: Any) -> Any:
        def run(**inputs: Any) -> Any:
            calls["n"] += calls["armed"]
            if calls["n"] > 6:  # the 7th decoding step: r1-r3 in slots 0-2, lo > 0
                raise RuntimeError("graph break at runtime")
            return model(**inputs)

        return run

    monkeypatch.setattr(torch, "compile", flaky)
    model = models["gpt2"]
    engine = _engine(model, max_num_seqs=4, compile=True)
    calls["armed"] = 1
    # r0 (the widest prompt, from column 0) leaves after 3 tokens while r1 (right-aligned
    # beside it, from column 6) runs on; r2 and r3 join into slots 0 and 2 (hi = 3: a bucket
    # of 4 rows), every running row starting right of column 0 (lo > 0)
    plan = [(0, 9, 3), (0, 3, 20), (4, 4, 12), (5, 5, 12)]
    prompts = {f"r{i}": _prompt(model, n, seed=170 + i) for i, (_, n, _) in enumerate(plan)}
    seen: list[tuple[int, int, bool]] = []

    def watch(step: int, e: ContinuousBatcher) -> None:
        if e.slots is not None:
            seen.append((e.slots.hi, e.slots.lo, e.slots.static))

    deltas, errors = _drive(engine, _plan_schedule(plan, prompts), on_step=watch)
    assert not errors and engine._forward.compiled is None
    assert engine.slots is not None and not engine.slots.static
    assert any(hi == 3 and lo > 0 and static for hi, lo, static in seen), seen
    for i, (_, _, max_tokens) in enumerate(plan):
        rid = f"r{i}"
        assert _tokens(deltas[rid]) == _reference(model, prompts[rid], max_tokens), rid

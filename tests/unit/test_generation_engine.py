"""The continuous batcher (runtimes/huggingface/generation.py) against the model's own generate().

Models are the tiny random-weight fixtures of ``tests/conftest.py``. Their initial weights are so
small that greedy decoding repeats one token (T5 emits only ``<pad>``), which would let a broken
cache pass; so each model's matrices are re-drawn from a wider (seeded) normal distribution,
which gives varied, prompt-dependent tokens. Every comparison is exact token equality.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from steadyserve.errors import InvalidInput
from steadyserve.runtimes.huggingface.generation import ContinuousBatcher
from steadyserve.types import GenerateRequest, SamplingParams, TokenDelta

KINDS = ("gpt2", "llama", "t5")


def _load(path: str, kind: str) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cls = AutoModelForSeq2SeqLM if kind == "t5" else AutoModelForCausalLM
    model = cls.from_pretrained(path).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.5 if kind == "t5" else 0.3)
    return model


@pytest.fixture(scope="module")
def models(tiny_gpt2_dir: str, tiny_llama_dir: str, tiny_t5_dir: str) -> dict[str, Any]:
    paths = {"gpt2": tiny_gpt2_dir, "llama": tiny_llama_dir, "t5": tiny_t5_dir}
    return {kind: _load(path, kind) for kind, path in paths.items()}


def _engine(model: Any, *, max_num_seqs: int = 8, max_model_len: int = 128) -> ContinuousBatcher:
    return ContinuousBatcher(
        model,
        eos_token_ids=[int(model.config.eos_token_id)],
        pad_token_id=int(model.config.pad_token_id),
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len,
        # schedules here are in steps; the hold for replacements is in time, and has its own
        # tests (test_prefill_hold.py, with a clock of their own)
        prefill_hold_ms=0,
    )


def _prompt(model: Any, n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, model.config.vocab_size, (n,), generator=g).tolist()


def _reference(model: Any, prompt: list[int], n: int) -> list[int]:
    """The model's own greedy generate(), exactly ``n`` new tokens."""
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=n,
            min_new_tokens=n,
        )[0].tolist()
    # encoder-decoder output starts with the decoder start token, which is not generated
    return out[1:] if model.config.is_encoder_decoder else out[len(prompt) :]


def _greedy(n: int, **kw: Any) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, min_tokens=n, **kw)


Schedule = dict[int, list[tuple[str, GenerateRequest]]]


def _drive(
    engine: ContinuousBatcher,
    schedule: Schedule,
    *,
    on_step: Callable[[int, ContinuousBatcher], None] | None = None,
    max_steps: int = 200,
) -> tuple[dict[str, list[TokenDelta]], dict[str, BaseException]]:
    """Step the engine like the scheduler does: adds (and ``on_step``) between steps."""
    deltas: dict[str, list[TokenDelta]] = {}
    errors: dict[str, BaseException] = {}
    for step in range(max_steps):
        for rid, req in schedule.get(step, []):
            try:
                engine.add(rid, req)
            except InvalidInput as exc:
                errors[rid] = exc
        if on_step is not None:
            on_step(step, engine)
        if not engine.has_work() and step > max(schedule, default=0):
            break
        for rid, item in engine.step() if engine.has_work() else []:
            if isinstance(item, BaseException):
                errors[rid] = item
            else:
                deltas.setdefault(rid, []).append(item)
    assert not engine.has_work(), "engine still busy after max_steps"
    return deltas, errors


def _tokens(deltas: list[TokenDelta]) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


def _check_finished(deltas: list[TokenDelta], prompt_len: int, reason: str) -> None:
    assert [d.finish_reason for d in deltas[:-1]] == [None] * (len(deltas) - 1)
    assert deltas[-1].finish_reason == reason
    assert deltas[0].prompt_tokens == prompt_len
    assert all(d.prompt_tokens is None for d in deltas[1:])


@pytest.mark.parametrize("kind", KINDS)
def test_solo_greedy_equals_generate(models: dict[str, Any], kind: str) -> None:
    model = models[kind]
    prompt = _prompt(model, 9, seed=3)
    engine = _engine(model)
    deltas, errors = _drive(engine, {0: [("a", GenerateRequest(prompt, params=_greedy(12)))]})
    assert not errors
    assert _tokens(deltas["a"]) == _reference(model, prompt, 12)
    _check_finished(deltas["a"], len(prompt), "length")
    assert engine.stats() == {"running": 0, "waiting": 0, "cache_columns": 0}


@pytest.mark.parametrize("kind", KINDS)
def test_staggered_joins_and_leaves_equal_solo(models: dict[str, Any], kind: str) -> None:
    """Requests of different prompt lengths join at different steps and leave at different
    times (different max_tokens); every one equals its solo greedy result."""
    model = models[kind]
    plan = [  # (join step, prompt length, max_tokens)
        (0, 4, 10),
        (0, 11, 5),
        (2, 17, 12),
        (3, 2, 7),
        (6, 8, 14),
        (6, 23, 3),
    ]
    prompts = {f"r{i}": _prompt(model, n, seed=10 + i) for i, (_, n, _) in enumerate(plan)}
    schedule: Schedule = {}
    for i, (step, _, max_tokens) in enumerate(plan):
        rid = f"r{i}"
        schedule.setdefault(step, []).append(
            (rid, GenerateRequest(prompts[rid], params=_greedy(max_tokens)))
        )
    seen_running: list[int] = []
    engine = _engine(model, max_num_seqs=4)
    deltas, errors = _drive(
        engine, schedule, on_step=lambda _s, e: seen_running.append(e.stats()["running"])
    )
    assert not errors
    assert max(seen_running) == 4  # the slot limit was reached and respected
    for i, (_, _, max_tokens) in enumerate(plan):
        rid = f"r{i}"
        assert _tokens(deltas[rid]) == _reference(model, prompts[rid], max_tokens), rid
        _check_finished(deltas[rid], len(prompts[rid]), "length")
    assert engine.stats()["cache_columns"] == 0


def test_abort_frees_slot_and_others_continue(models: dict[str, Any]) -> None:
    model = models["gpt2"]
    prompts = {rid: _prompt(model, 5 + i, seed=20 + i) for i, rid in enumerate("abc")}
    schedule: Schedule = {
        0: [(rid, GenerateRequest(p, params=_greedy(8))) for rid, p in prompts.items()]
    }
    stats: dict[str, dict[str, int]] = {}

    def abort_b(step: int, engine: ContinuousBatcher) -> None:
        if step == 3:
            stats["before"] = engine.stats()
            engine.abort("b")
            stats["after"] = engine.stats()
            engine.abort("b")  # a second abort (or one for an unknown id) is harmless
            engine.abort("nope")

    deltas, errors = _drive(_engine(model), schedule, on_step=abort_b)
    assert not errors
    assert stats["before"]["running"] == 3
    assert stats["after"]["running"] == 2
    assert len(deltas["b"]) == 3 and deltas["b"][-1].finish_reason is None
    for rid in "ac":
        assert _tokens(deltas[rid]) == _reference(model, prompts[rid], 8)


def test_abort_waiting_request(models: dict[str, Any]) -> None:
    engine = _engine(models["gpt2"], max_num_seqs=1)
    engine.add("a", GenerateRequest([5, 6, 7], params=_greedy(3)))
    engine.add("b", GenerateRequest([5, 6, 7], params=_greedy(3)))
    engine.step()
    assert engine.stats()["waiting"] == 1
    engine.abort("b")
    assert engine.stats() == {"running": 1, "waiting": 0, "cache_columns": 3}


def test_seed_reproducible_alone_and_in_a_batch(models: dict[str, Any]) -> None:
    model = models["llama"]
    prompt = _prompt(model, 6, seed=30)

    def sampled(seed: int) -> GenerateRequest:
        params = SamplingParams(
            max_tokens=16, min_tokens=16, temperature=1.5, top_p=0.95, seed=seed
        )
        return GenerateRequest(prompt, params=params)

    alone, _ = _drive(_engine(model), {0: [("s", sampled(7))]})
    others = [
        (f"o{i}", GenerateRequest(_prompt(model, 3 + i, seed=i), params=_greedy(9)))
        for i in range(3)
    ]
    mixed, _ = _drive(_engine(model), {0: others[:2], 2: [("s", sampled(7)), others[2]]})
    other_seed, _ = _drive(_engine(model), {0: [("s", sampled(8))]})
    assert _tokens(alone["s"]) == _tokens(mixed["s"])
    assert _tokens(alone["s"]) != _tokens(other_seed["s"])
    assert _tokens(alone["s"]) != _reference(model, prompt, 16)  # it did sample


@pytest.mark.parametrize("kind", ("gpt2", "t5"))
def test_min_tokens_and_ignore_eos_give_max_tokens(models: dict[str, Any], kind: str) -> None:
    """A logit bias makes EOS the likeliest token: without either option the sequence stops
    at once; min_tokens suppresses EOS, ignore_eos keeps going through it."""
    model = models[kind]
    eos = int(model.config.eos_token_id)
    bias = {eos: 1000.0}
    prompt = _prompt(model, 5, seed=40)
    schedule: Schedule = {
        0: [
            (
                "plain",
                GenerateRequest(
                    prompt, params=SamplingParams(max_tokens=6, temperature=0.0, logit_bias=bias)
                ),
            ),
            (
                "min",
                GenerateRequest(
                    prompt,
                    params=SamplingParams(
                        max_tokens=6, temperature=0.0, min_tokens=6, logit_bias=bias
                    ),
                ),
            ),
            (
                "ign",
                GenerateRequest(
                    prompt,
                    params=SamplingParams(
                        max_tokens=6, temperature=0.0, ignore_eos=True, logit_bias=bias
                    ),
                ),
            ),
        ]
    }
    deltas, errors = _drive(_engine(model), schedule)
    assert not errors
    assert _tokens(deltas["plain"]) == [eos]
    assert deltas["plain"][-1].finish_reason == "stop"
    assert len(_tokens(deltas["min"])) == 6 and eos not in _tokens(deltas["min"])
    assert deltas["min"][-1].finish_reason == "length"
    assert _tokens(deltas["ign"]) == [eos] * 6
    assert deltas["ign"][-1].finish_reason == "length"


def test_stop_token_ids_end_with_stop(models: dict[str, Any]) -> None:
    model = models["gpt2"]
    prompt = _prompt(model, 7, seed=50)
    ref = _reference(model, prompt, 12)
    stop = ref[4]
    cut = ref.index(stop)
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, stop_token_ids=[stop])
    deltas, _ = _drive(_engine(model), {0: [("a", GenerateRequest(prompt, params=params))]})
    assert _tokens(deltas["a"]) == ref[: cut + 1]  # the stop token is included, as in vLLM
    assert deltas["a"][-1].finish_reason == "stop"


def test_prompt_longer_than_max_model_len_fails_alone(models: dict[str, Any]) -> None:
    model = models["gpt2"]
    engine = _engine(model, max_model_len=16)
    good = _prompt(model, 6, seed=60)
    schedule: Schedule = {
        0: [("good", GenerateRequest(good, params=_greedy(5)))],
        1: [("long", GenerateRequest(_prompt(model, 17, seed=61), params=_greedy(5)))],
        2: [("capped", GenerateRequest(_prompt(model, 12, seed=62), params=_greedy(10)))],
    }
    deltas, errors = _drive(engine, schedule)
    assert set(errors) == {"long"} and isinstance(errors["long"], InvalidInput)
    assert "max_model_len=16" in str(errors["long"])
    assert _tokens(deltas["good"]) == _reference(model, good, 5)
    # prompt 12 + generated may not pass max_model_len=16: 4 tokens, then "length"
    assert len(_tokens(deltas["capped"])) == 4
    assert deltas["capped"][-1].finish_reason == "length"


@pytest.mark.parametrize(
    ("prompt", "params", "message"),
    [
        (None, SamplingParams(), "prompt_token_ids is required"),
        ([], SamplingParams(), "empty"),
        ([5, 10**6], SamplingParams(), "outside the vocabulary"),
        ([5, -1], SamplingParams(), "outside the vocabulary"),
        ([5], SamplingParams(max_tokens=0), "max_tokens"),
        ([5], SamplingParams(top_p=0.0), "top_p"),
        ([5], SamplingParams(logit_bias={10**6: 1.0}), "logit_bias"),
    ],
)
def test_bad_requests_refused_in_add(
    models: dict[str, Any], prompt: list[int] | None, params: SamplingParams, message: str
) -> None:
    engine = _engine(models["gpt2"])
    with pytest.raises(InvalidInput, match=message):
        engine.add("bad", GenerateRequest(prompt_token_ids=prompt, params=params))
    assert not engine.has_work()
    # a good request right after is served
    deltas, errors = _drive(engine, {0: [("ok", GenerateRequest([5, 6, 7], params=_greedy(2)))]})
    assert not errors and len(_tokens(deltas["ok"])) == 2


def test_duplicate_request_id_refused(models: dict[str, Any]) -> None:
    engine = _engine(models["gpt2"])
    engine.add("a", GenerateRequest([5, 6], params=_greedy(3)))
    with pytest.raises(InvalidInput, match="already"):
        engine.add("a", GenerateRequest([5, 6], params=_greedy(3)))


def test_t5_never_emits_decoder_start_token(models: dict[str, Any]) -> None:
    model = models["t5"]
    start = int(model.config.decoder_start_token_id)
    prompt = _prompt(model, 6, seed=70)
    with torch.inference_mode():
        full = model.generate(
            torch.tensor([prompt]), do_sample=False, max_new_tokens=5, min_new_tokens=5
        )
    assert full[0, 0].item() == start  # generate() puts it first ...
    deltas, _ = _drive(_engine(model), {0: [("a", GenerateRequest(prompt, params=_greedy(5)))]})
    tokens = _tokens(deltas["a"])
    assert len(tokens) == 5  # ... the engine counts only generated tokens
    assert tokens == full[0, 1:].tolist()
    assert tokens[0] != start
    assert deltas["a"][0].prompt_tokens == len(prompt)


def test_logprobs_and_top_logprobs(models: dict[str, Any]) -> None:
    model = models["llama"]
    prompt = _prompt(model, 5, seed=80)
    params = SamplingParams(max_tokens=4, min_tokens=4, temperature=0.0, logprobs=3)
    deltas, _ = _drive(_engine(model), {0: [("a", GenerateRequest(prompt, params=params))]})
    for d in deltas["a"]:
        assert d.logprobs is not None and d.top_logprobs is not None
        (token,), (lp,), (top,) = d.token_ids, d.logprobs, d.top_logprobs
        assert len(top) == 3 and lp <= 0.0
        assert top[token] == pytest.approx(lp)  # greedy: the chosen token is the top one
        assert lp == pytest.approx(max(top.values()))
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        first = model(ids).logits[0, -1].log_softmax(-1)
    assert deltas["a"][0].logprobs == [pytest.approx(float(first.max()), abs=1e-4)]


def test_top_k_one_and_tiny_top_p_are_greedy(models: dict[str, Any]) -> None:
    model = models["gpt2"]
    prompt = _prompt(model, 6, seed=90)
    ref = _reference(model, prompt, 8)
    schedule: Schedule = {
        0: [
            (
                "k",
                GenerateRequest(
                    prompt,
                    params=SamplingParams(max_tokens=8, min_tokens=8, temperature=2.0, top_k=1),
                ),
            ),
            (
                "p",
                GenerateRequest(
                    prompt,
                    params=SamplingParams(max_tokens=8, min_tokens=8, temperature=2.0, top_p=1e-6),
                ),
            ),
        ]
    }
    deltas, _ = _drive(_engine(model), schedule)
    assert _tokens(deltas["k"]) == ref
    assert _tokens(deltas["p"]) == ref


def test_repetition_penalty_changes_output(models: dict[str, Any]) -> None:
    model = models["gpt2"]
    prompt = _prompt(model, 6, seed=99)
    ref = _reference(model, prompt, 10)
    assert len(set(ref)) < len(ref)  # plain greedy repeats itself on this prompt
    params = SamplingParams(max_tokens=10, min_tokens=10, temperature=0.0, repetition_penalty=50.0)
    deltas, _ = _drive(_engine(model), {0: [("a", GenerateRequest(prompt, params=params))]})
    tokens = _tokens(deltas["a"])
    assert tokens != ref
    assert len(set(tokens)) == len(tokens)  # a strong penalty never repeats a token
    assert not set(tokens) & set(prompt)


def test_failed_prefill_fails_only_its_request(
    models: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = models["gpt2"]
    engine = _engine(model)
    real = engine._prefill

    def flaky(seqs: list[Any]) -> Any:
        if any(s.request_id == "bad" for s in seqs):
            raise RuntimeError("boom")
        return real(seqs)

    monkeypatch.setattr(engine, "_prefill", flaky)
    prompts = {rid: _prompt(model, 4 + i, seed=95 + i) for i, rid in enumerate(("a", "bad", "c"))}
    schedule: Schedule = {
        0: [(rid, GenerateRequest(p, params=_greedy(4))) for rid, p in prompts.items()]
    }
    deltas, errors = _drive(engine, schedule)
    assert set(errors) == {"bad"} and "boom" in str(errors["bad"])
    for rid in ("a", "c"):
        assert _tokens(deltas[rid]) == _reference(model, prompts[rid], 4)


def test_reset_drops_everything(models: dict[str, Any]) -> None:
    engine = _engine(models["t5"], max_num_seqs=1)
    engine.add("a", GenerateRequest([5, 6, 7], params=_greedy(5)))
    engine.add("b", GenerateRequest([5, 6, 7], params=_greedy(5)))
    engine.step()
    engine.reset()
    assert not engine.has_work()
    assert engine.stats() == {"running": 0, "waiting": 0, "cache_columns": 0}

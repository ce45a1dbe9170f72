"""When a row needs its logits processed (runtimes/huggingface/sampling.py): the batch's greedy
fast path (one argmax) is kept whenever nothing would change the row, and ``min_tokens`` still
bans the stop tokens while it must."""

from __future__ import annotations

import torch

from steadyserve.runtimes.huggingface.sampling import SeqState, needs_processing, select_tokens
from steadyserve.types import SamplingParams

EOS = [2]


def _seq(output: list[int], **kw: object) -> SeqState:
    return SeqState(
        params=SamplingParams(max_tokens=8, temperature=0.0, **kw), prompt=[5], output=output
    )  # type: ignore[arg-type]


def test_min_tokens_needs_processing_only_while_it_bans_something() -> None:
    assert needs_processing(_seq([], min_tokens=3), EOS)
    assert needs_processing(_seq([7, 8], min_tokens=3), EOS)
    assert not needs_processing(_seq([7, 8, 9], min_tokens=3), EOS)  # past min_tokens
    assert not needs_processing(_seq([], min_tokens=3, ignore_eos=True), EOS)  # nothing to ban
    assert needs_processing(_seq([], min_tokens=3, ignore_eos=True, stop_token_ids=[4]), EOS)
    assert not needs_processing(_seq([]), EOS)
    assert needs_processing(_seq([], repetition_penalty=1.2), EOS)


def test_min_tokens_still_bans_eos_and_the_fast_path_picks_the_argmax() -> None:
    logits = torch.zeros((2, 6))
    logits[:, 2] = 5.0  # EOS is everyone's favourite
    logits[:, 3] = 1.0
    banned = _seq([], min_tokens=2)
    free = _seq([], min_tokens=2, ignore_eos=True)
    sel = select_tokens(logits, [banned, free], eos_token_ids=EOS)
    assert sel.tokens == [3, 2]
    done = _seq([1, 1], min_tokens=2)
    assert select_tokens(logits[:1], [done], eos_token_ids=EOS).tokens == [2]

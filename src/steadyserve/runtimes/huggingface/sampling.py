"""Per-sequence token selection for the continuous batcher: logits processing and sampling.

One decoding step gives a ``[rows, vocab]`` logits matrix; every row belongs to a different
request with its own :class:`~steadyserve.types.SamplingParams`. :func:`select_tokens` applies,
in this order (the order of ``transformers``' own processors): repetition penalty, logit bias,
``min_tokens`` (stop tokens suppressed), presence / frequency penalties, temperature, top-k,
top-p, then picks a token - ``argmax`` for greedy rows (``temperature == 0``), a draw from the
row's own ``torch.Generator`` otherwise, so a seeded request gives the same tokens whatever else
shares its batch.

The common case (every row greedy, nothing to process) is one ``argmax`` over the batch; rows
that need processing are handled on a copy, and only those rows.

Log-probabilities (``logprobs``) are those of the model's own distribution (``log_softmax`` of the
raw logits), for the chosen token and the ``logprobs`` most likely alternatives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from steadyserve.types import SamplingParams


@dataclass
class SeqState:
    """What token selection needs to know about one running sequence."""

    params: SamplingParams
    #: the prompt (used by the repetition penalty of decoder-only models)
    prompt: list[int]
    #: tokens generated so far (the decoder start token of encoder-decoder models excluded)
    output: list[int] = field(default_factory=list)
    #: the sequence's own random stream (seeded requests); ``None`` uses the engine's stream
    generator: torch.Generator | None = None
    #: whether the prompt counts for the repetition penalty (decoder-only models)
    penalize_prompt: bool = True


@dataclass
class Selection:
    """The tokens chosen for a batch, and their log-probabilities where asked for."""

    tokens: list[int]
    logprobs: list[float | None]
    top_logprobs: list[dict[int, float] | None]


def needs_processing(seq: SeqState, eos_token_ids: list[int]) -> bool:
    """Whether a row's logits must be changed before choosing its token (this step).
    ``min_tokens`` only counts while it still bans something: not past ``min_tokens`` tokens,
    and not with ``ignore_eos`` and no stop tokens (the benchmarks' fixed-length requests)."""
    params = seq.params
    return (
        params.repetition_penalty != 1.0
        or bool(params.logit_bias)
        or params.presence_penalty != 0.0
        or params.frequency_penalty != 0.0
        or params.temperature > 0.0
        or (params.min_tokens > len(seq.output) and bool(stop_ids(params, eos_token_ids)))
    )


def stop_ids(params: SamplingParams, eos_token_ids: list[int]) -> list[int]:
    """Tokens that end the sequence: EOS (unless ``ignore_eos``) and ``stop_token_ids``."""
    ids = [] if params.ignore_eos else list(eos_token_ids)
    ids.extend(t for t in params.stop_token_ids if t not in ids)
    return ids


def _process_row(
    row: torch.Tensor, seq: SeqState, eos_token_ids: list[int], vocab: int
) -> torch.Tensor:
    """Penalties, bias and ``min_tokens`` on one row of logits (in place, float32)."""
    p = seq.params
    if p.repetition_penalty != 1.0:
        seen = seq.output + seq.prompt if seq.penalize_prompt else seq.output
        if seen:
            idx = torch.tensor(sorted(set(seen)), device=row.device, dtype=torch.long)
            vals = row.index_select(0, idx)
            vals = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
            row.index_copy_(0, idx, vals)
    if p.logit_bias:
        idx = torch.tensor([int(k) for k in p.logit_bias], device=row.device, dtype=torch.long)
        bias = torch.tensor(list(p.logit_bias.values()), device=row.device, dtype=row.dtype)
        row.index_add_(0, idx, bias)
    if p.min_tokens > 0 and len(seq.output) < p.min_tokens:
        banned = [t for t in stop_ids(p, eos_token_ids) if 0 <= t < vocab]
        if banned:
            row[banned] = float("-inf")
    if (p.presence_penalty != 0.0 or p.frequency_penalty != 0.0) and seq.output:
        ids = torch.tensor(seq.output, device=row.device, dtype=torch.long)
        counts = torch.bincount(ids, minlength=vocab)[:vocab].to(row.dtype)
        row -= counts * p.frequency_penalty + (counts > 0).to(row.dtype) * p.presence_penalty
    return row


def _filter_top_k_top_p(scores: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    """Mask (``-inf``) what top-k / top-p exclude, row by row (vectorised over rows)."""
    vocab = scores.shape[-1]
    ks = [k if 0 < k < vocab else 0 for k in top_k]
    if any(ks):
        kmax = max(ks)
        kth = scores.topk(kmax, dim=-1).values
        index = torch.tensor([max(k, 1) - 1 for k in ks], device=scores.device).unsqueeze(1)
        thresh = kth.gather(1, index)
        active = torch.tensor([k > 0 for k in ks], device=scores.device).unsqueeze(1)
        scores = scores.masked_fill(active & (scores < thresh), float("-inf"))
    if any(p < 1.0 for p in top_p):
        sorted_scores, sorted_idx = scores.sort(dim=-1, descending=True)
        cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        ps = torch.tensor(top_p, device=scores.device, dtype=cum.dtype).unsqueeze(1)
        # drop a token when the tokens before it already reach top_p (the first is always kept)
        remove = (cum - sorted_scores.softmax(dim=-1)) >= ps
        remove[:, 0] = False
        mask = torch.zeros_like(remove).scatter(1, sorted_idx, remove)
        scores = scores.masked_fill(mask, float("-inf"))
    return scores


def select_tokens(
    logits: torch.Tensor,
    seqs: Sequence[SeqState],
    *,
    eos_token_ids: list[int],
    generator: torch.Generator | None = None,
) -> Selection:
    """Choose one token per row of ``logits`` (``[len(seqs), vocab]``) for ``seqs``."""
    n, vocab = logits.shape
    work = [i for i, s in enumerate(seqs) if needs_processing(s, eos_token_ids)]
    if not work:
        tokens = logits.argmax(dim=-1).tolist()
    else:
        chosen = logits.argmax(dim=-1) if len(work) < n else None
        sub = logits.index_select(0, torch.tensor(work, device=logits.device)).float()
        for j, i in enumerate(work):
            _process_row(sub[j], seqs[i], eos_token_ids, vocab)
        greedy = [j for j, i in enumerate(work) if seqs[i].params.temperature <= 0.0]
        sampled = [j for j, i in enumerate(work) if seqs[i].params.temperature > 0.0]
        picked: dict[int, int] = {}
        if greedy:
            g_idx = torch.tensor(greedy, device=logits.device)
            for j, t in zip(
                greedy, sub.index_select(0, g_idx).argmax(dim=-1).tolist(), strict=True
            ):
                picked[j] = int(t)
        if sampled:
            s_idx = torch.tensor(sampled, device=logits.device)
            params = [seqs[work[j]].params for j in sampled]
            temps = torch.tensor([p.temperature for p in params], device=logits.device)
            scores = sub.index_select(0, s_idx) / temps.unsqueeze(1)
            scores = _filter_top_k_top_p(
                scores, [p.top_k for p in params], [p.top_p for p in params]
            )
            probs = scores.softmax(dim=-1)
            probs = torch.nan_to_num(probs, nan=0.0)
            shared = [r for r, j in enumerate(sampled) if seqs[work[j]].generator is None]
            if shared:
                rows = probs.index_select(0, torch.tensor(shared, device=probs.device))
                draws = _multinomial(rows, generator)
                for r, t in zip(shared, draws, strict=True):
                    picked[sampled[r]] = t
            for r, j in enumerate(sampled):
                gen = seqs[work[j]].generator
                if gen is not None:
                    picked[j] = _multinomial(probs[r : r + 1], gen)[0]
        base = chosen.tolist() if chosen is not None else [0] * n
        for j, i in enumerate(work):
            base[i] = picked[j]
        tokens = [int(t) for t in base]
    logprobs: list[float | None] = [None] * n
    top: list[dict[int, float] | None] = [None] * n
    want = [i for i, s in enumerate(seqs) if s.params.logprobs is not None]
    if want:
        lp = logits.index_select(0, torch.tensor(want, device=logits.device)).float()
        lp = lp.log_softmax(dim=-1)
        for j, i in enumerate(want):
            logprobs[i] = float(lp[j, tokens[i]])
            k = min(int(seqs[i].params.logprobs or 0), vocab)
            if k > 0:
                vals, ids = lp[j].topk(k)
                top[i] = {
                    int(t): float(v) for t, v in zip(ids.tolist(), vals.tolist(), strict=True)
                }
            else:
                top[i] = {}
    return Selection(tokens=tokens, logprobs=logprobs, top_logprobs=top)


def _multinomial(probs: torch.Tensor, generator: torch.Generator | None) -> list[int]:
    """One draw per row; a row with no mass left (everything masked) draws uniformly."""
    mass = probs.sum(dim=-1)
    if bool((mass <= 0).any()):
        probs = torch.where((mass > 0).unsqueeze(1), probs, torch.ones_like(probs))
    return [int(t) for t in torch.multinomial(probs, 1, generator=generator).squeeze(1).tolist()]

"""What every generation engine checks in ``add`` before a request is queued: one set of rules and
messages for the Hugging Face continuous batcher and the vLLM engine alike (the shared bad-input
battery asserts both backends answer the same). The server's edge checks the same limits first;
these are the engine's own guard, for callers that bypass the edge (custom servers, tests)."""

from __future__ import annotations

from steadyserve.errors import InvalidInput
from steadyserve.types import SamplingParams


def check_prompt(
    ids: list[int] | None, *, vocab_size: int, max_model_len: int, encoder_decoder: bool = False
) -> list[int]:
    """The prompt's token ids as ints, or :class:`InvalidInput`. A decoder-only prompt must leave
    room for one new token; an encoder-decoder's encoder input is bounded by itself."""
    if ids is None:
        raise InvalidInput("prompt_token_ids is required (the server tokenizes the prompt)")
    prompt = [int(t) for t in ids]
    if not prompt:
        raise InvalidInput("the prompt is empty")
    bad = [t for t in prompt if not 0 <= t < vocab_size]
    if bad:
        raise InvalidInput(f"token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})")
    limit = max_model_len if encoder_decoder else max_model_len - 1
    if len(prompt) > limit:
        raise InvalidInput(
            f"the prompt has {len(prompt)} tokens; this model accepts at most {limit} "
            f"(max_model_len={max_model_len})"
        )
    return prompt


def check_sampling(p: SamplingParams, *, vocab_size: int) -> None:
    """:class:`InvalidInput` for sampling parameters no engine can honour."""
    if p.max_tokens < 1:
        raise InvalidInput("max_tokens must be at least 1")
    if not p.temperature >= 0:
        raise InvalidInput("temperature must be >= 0")
    if not 0 < p.top_p <= 1:
        raise InvalidInput("top_p must be in (0, 1]")
    if p.top_k < 0:
        raise InvalidInput("top_k must be >= 0")
    if p.logprobs is not None and p.logprobs < 0:
        raise InvalidInput("logprobs must be >= 0")
    if not p.repetition_penalty > 0:
        raise InvalidInput("repetition_penalty must be > 0")
    for key in p.logit_bias:
        if not 0 <= int(key) < vocab_size:
            raise InvalidInput(f"logit_bias token id {key} is outside the vocabulary")

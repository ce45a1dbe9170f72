"""OpenAI response bodies and stream chunks (pure): completions, chat, usage, embeddings."""

from __future__ import annotations

import base64
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@dataclass(frozen=True)
class TokenLogprob:
    """One token for a logprobs body: its text, log-probability and real bytes."""

    token: str
    logprob: float
    bytes: list[int]


@dataclass(frozen=True)
class PositionLogprobs:
    """One generated position: the chosen token and every alternative, most likely first."""

    chosen: TokenLogprob
    top: list[TokenLogprob]


@dataclass
class ChoiceState:
    """What one generated sequence has produced so far (for non-streaming responses)."""

    index: int
    text: str = ""
    completion_tokens: int = 0
    prompt_tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[PositionLogprobs] = field(default_factory=list)
    #: where the generated text starts in ``text`` (after an echoed prompt)
    text_offset: int = 0


def logprobs_text_length(positions: list[PositionLogprobs]) -> int:
    """How far ``text_offset`` advances over these positions."""
    return sum(len(p.chosen.token) for p in positions)


def completion_logprobs_body(positions: list[PositionLogprobs], offset: int = 0) -> dict[str, Any]:
    """Legacy completions logprobs. ``top_logprobs`` is a dict by spec: alternatives whose texts
    coincide keep the most likely one."""
    offsets, pos = [], offset
    for p in positions:
        offsets.append(pos)
        pos += len(p.chosen.token)
    tops: list[dict[str, float]] = []
    for p in positions:
        top: dict[str, float] = {}
        for alt in p.top:
            top.setdefault(alt.token, alt.logprob)
        tops.append(top)
    return {
        "tokens": [p.chosen.token for p in positions],
        "token_logprobs": [p.chosen.logprob for p in positions],
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def chat_logprobs_body(positions: list[PositionLogprobs]) -> dict[str, Any]:
    """Chat logprobs: every alternative kept (a list), each with its real bytes."""

    def entry(t: TokenLogprob) -> dict[str, Any]:
        return {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)}

    return {
        "content": [
            {**entry(p.chosen), "top_logprobs": [entry(t) for t in p.top]} for p in positions
        ]
    }


def completion_response(
    rid: str,
    created: int,
    model: str,
    choices: list[ChoiceState],
    prompt_tokens: int,
    with_logprobs: bool,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": c.index,
                "text": c.text,
                "logprobs": completion_logprobs_body(c.logprobs, c.text_offset)
                if with_logprobs
                else None,
                "finish_reason": c.finish_reason,
            }
            for c in choices
        ],
        "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices)),
    }


def chat_response(
    rid: str,
    created: int,
    model: str,
    choices: list[ChoiceState],
    prompt_tokens: int,
    with_logprobs: bool,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": c.index,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": chat_logprobs_body(c.logprobs) if with_logprobs else None,
                "finish_reason": c.finish_reason,
            }
            for c in choices
        ],
        "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices)),
    }


def completion_chunk(
    rid: str,
    created: int,
    model: str,
    index: int,
    text: str,
    finish_reason: str | None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        ],
    }


def chat_chunk(
    rid: str,
    created: int,
    model: str,
    index: int,
    delta: dict[str, Any],
    finish_reason: str | None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [
            {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        ],
    }


def usage_chunk(
    rid: str, created: int, model: str, obj: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def encode_embedding(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


def embedding_response(
    model: str, vectors: list[list[float]], encoding_format: str, prompt_tokens: int
) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_embedding(v, encoding_format)}
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }

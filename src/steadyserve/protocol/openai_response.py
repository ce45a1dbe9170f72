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


@dataclass
class ChoiceState:
    """What one generated sequence has produced so far (for non-streaming responses)."""

    index: int
    text: str = ""
    completion_tokens: int = 0
    prompt_tokens: int = 0
    finish_reason: str | None = None
    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[str, float]] = field(default_factory=list)


def completion_logprobs_body(tokens: list[str], lps: list[float],
                             tops: list[dict[str, float]], offset: int = 0) -> dict[str, Any]:
    offsets, pos = [], offset
    for tok in tokens:
        offsets.append(pos)
        pos += len(tok)
    return {
        "tokens": tokens,
        "token_logprobs": lps,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def chat_logprobs_body(tokens: list[str], lps: list[float],
                       tops: list[dict[str, float]]) -> dict[str, Any]:
    content = []
    for i, tok in enumerate(tokens):
        top = tops[i] if i < len(tops) else {}
        content.append({
            "token": tok,
            "logprob": lps[i] if i < len(lps) else 0.0,
            "bytes": list(tok.encode("utf-8")),
            "top_logprobs": [
                {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))} for t, lp in top.items()
            ],
        })
    return {"content": content}


def completion_response(rid: str, created: int, model: str, choices: list[ChoiceState],
                        prompt_tokens: int, with_logprobs: bool) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": c.index,
                "text": c.text,
                "logprobs": completion_logprobs_body(c.tokens, c.token_logprobs, c.top_logprobs)
                if with_logprobs else None,
                "finish_reason": c.finish_reason,
            }
            for c in choices
        ],
        "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices)),
    }


def chat_response(rid: str, created: int, model: str, choices: list[ChoiceState],
                  prompt_tokens: int, with_logprobs: bool) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": c.index,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": chat_logprobs_body(c.tokens, c.token_logprobs, c.top_logprobs)
                if with_logprobs else None,
                "finish_reason": c.finish_reason,
            }
            for c in choices
        ],
        "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices)),
    }


def completion_chunk(rid: str, created: int, model: str, index: int, text: str,
                     finish_reason: str | None, logprobs: dict[str, Any] | None = None,
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


def chat_chunk(rid: str, created: int, model: str, index: int, delta: dict[str, Any],
               finish_reason: str | None, logprobs: dict[str, Any] | None = None,
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


def usage_chunk(rid: str, created: int, model: str, obj: str, prompt_tokens: int,
                completion_tokens: int) -> dict[str, Any]:
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


def embedding_response(model: str, vectors: list[list[float]], encoding_format: str,
                       prompt_tokens: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_embedding(v, encoding_format)}
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }

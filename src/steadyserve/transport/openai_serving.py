"""The OpenAI routes' text side: prompts to tokens, running sequences, merging.

Kept apart from the routes so they stay thin. Everything here runs on the server's event loop
and never blocks it: tokenizers run in threads (``asyncio.to_thread``). The tokenizer itself
belongs to the engine client (:meth:`EngineClient.tokenizer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

from steadyserve.engine.protocol import EngineClient
from steadyserve.errors import InvalidInput, SteadyError
from steadyserve.transport.context import ServerContext
from steadyserve.types import GenerateRequest

log = logging.getLogger("steadyserve.openai")


@functools.cache
def _unicode_to_byte() -> dict[str, int]:
    """The inverse of GPT-2's ``bytes_to_unicode`` (each byte's printable stand-in), the table
    transformers ships."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {c: b for b, c in bytes_to_unicode().items()}


_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _encode(tokenizer: Any, texts: Sequence[str], add_special_tokens: bool) -> list[list[int]]:
    # truncation=False: a tokenizer.json that truncates by default must not shorten a prompt
    # silently - its real length is checked against the model's limit (400 if too long)
    return [
        list(tokenizer(t, add_special_tokens=add_special_tokens, truncation=False)["input_ids"])
        for t in texts
    ]


async def encode(
    tokenizer: Any, texts: Sequence[str], add_special_tokens: bool = True
) -> list[list[int]]:
    """Token ids of each text (in a thread)."""
    return await asyncio.to_thread(_encode, tokenizer, list(texts), add_special_tokens)


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _apply_chat_template(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool,
    kwargs: dict[str, Any],
) -> str:
    try:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )
    except Exception as exc:  # the template raised (e.g. raise_exception on role order)
        raise InvalidInput(
            f"the model's chat template refused the messages: {exc}", param="messages"
        ) from None
    return str(text)


async def apply_chat_template(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool,
    kwargs: dict[str, Any],
) -> str:
    return await asyncio.to_thread(
        _apply_chat_template, tokenizer, messages, add_generation_prompt, kwargs
    )


def token_text(tokenizer: Any | None, token_id: int) -> str:
    """A token's text for logprobs, as it appears in the returned text: special tokens (T5's
    ``<pad>``, ``</s>``) are left out of that text, so their text is ``""`` and ``tokens`` /
    ``text_offset`` describe the text actually returned."""
    if tokenizer is None:
        return f"token_id:{token_id}"
    return str(tokenizer.decode([token_id], skip_special_tokens=True))


def token_bytes(tokenizer: Any | None, token_id: int, text: str, byte_level: bool) -> list[int]:
    """A token's real bytes for logprobs (its text may be a lone ``\ufffd`` for part of a
    character): byte-level BPE maps its token string back to bytes, a sentencepiece
    byte-fallback token ``<0xAB>`` is that byte; otherwise the UTF-8 of ``text``."""
    if tokenizer is not None:
        if not text and token_id in set(getattr(tokenizer, "all_special_ids", ())):
            return []  # a special token: not in the returned text (see token_text)
        piece = tokenizer.convert_ids_to_tokens(token_id)
        if isinstance(piece, str) and piece:
            if byte_level:
                table = _unicode_to_byte()
                if all(c in table for c in piece):
                    return [table[c] for c in piece]
            else:
                match = _BYTE_FALLBACK.fullmatch(piece)
                if match is not None:
                    return [int(match.group(1), 16)]
    return list(text.encode("utf-8"))


#: longest prompt excerpt logged with --log_prompts
LOG_PROMPT_CHARS = 500


def log_prompt(ctx: ServerContext, route: str, prompt: Any) -> None:
    """With ``--log_prompts``: one bounded line with the prompt (never by default)."""
    if not ctx.settings.log_prompts:
        return
    text = prompt if isinstance(prompt, str) else repr(prompt)
    cut = len(text) > LOG_PROMPT_CHARS
    log.info(
        "%s prompt (%d chars%s): %r",
        route,
        len(text),
        ", cut" if cut else "",
        text[:LOG_PROMPT_CHARS],
    )


# ---- sequences ---------------------------------------------------------------------------------


@dataclass
class SeqSpec:
    """One sequence to generate: its choice index, request and prompt."""

    index: int
    request: GenerateRequest
    prompt_tokens: int
    #: prompt ids used as detokenization context (decoder-only models)
    context_ids: list[int]


@dataclass
class Event:
    """New output of one sequence."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None


async def run_sequence(
    engine: EngineClient,
    seq: SeqSpec,
    tokenizer: Any | None,
    stops: list[str],
    timeout_s: float | None,
    stream: bool = True,
) -> AsyncGenerator[Event, None]:
    """Generate one sequence. The engine client decodes its text (per step and in batch for
    streams) and applies the stop strings (a match ends the sequence there, and the worker
    drops it); ``stream=False`` is woken once, with the whole output. Leaving early
    (cancellation) closes the engine stream, which aborts the sequence in the worker."""
    async with contextlib.aclosing(  # type: ignore[type-var]
        engine.generate(
            seq.request,
            timeout_s,
            stream=stream,
            # models without a tokenizer send their own text
            detokenize=seq.context_ids if tokenizer is not None else None,
            stop=stops,
        )
    ) as stream_:
        async for delta in stream_:
            ev = Event(
                seq.index,
                delta.text or "",
                list(delta.token_ids),
                delta.logprobs,
                delta.top_logprobs,
                delta.finish_reason,
                delta.prompt_tokens,
            )
            if ev.finish_reason is not None:
                yield ev
                return
            if ev.text or ev.token_ids:
                yield ev


_END = object()


async def merge(streams: list[AsyncGenerator[Event, None]]) -> AsyncGenerator[Event, None]:
    """Interleave several sequences' events as they come. The first error ends everything
    (the other sequences are cancelled, hence aborted)."""
    if len(streams) == 1:
        async with contextlib.aclosing(streams[0]) as only:
            async for ev in only:
                yield ev
        return
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def pump(stream: AsyncGenerator[Event, None]) -> None:
        try:
            async with contextlib.aclosing(stream) as s:
                async for ev in s:
                    queue.put_nowait(ev)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(_END)

    tasks = [asyncio.ensure_future(pump(s)) for s in streams]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is _END:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def error_payload(exc: BaseException) -> dict[str, Any]:
    """The in-band error event of a stream that failed after it started."""
    if isinstance(exc, SteadyError):
        return {
            "error": {
                "message": exc.message,
                "type": exc.openai_type,
                "param": exc.param,
                "code": exc.code if exc.code is not None else exc.http_status,
            }
        }
    log.error("stream failed", exc_info=exc)
    return {
        "error": {
            "message": "internal server error",
            "type": "server_error",
            "param": None,
            "code": 500,
        }
    }

"""The OpenAI routes' engine side: tokenizers, running sequences, stop strings, merging.

Kept apart from the routes so they stay thin. Everything here runs on the server's event loop
and never blocks it: tokenizers load and run in threads (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import threading
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

from steadyserve.engine.client import ModelEngine
from steadyserve.errors import InvalidInput, ModelError, SteadyError
from steadyserve.protocol.detokenize import IncrementalDetokenizer, StopMatcher
from steadyserve.transport.context import ServerContext
from steadyserve.types import GenerateRequest, ModelInfo

log = logging.getLogger("steadyserve.openai")


# ---- tokenizers (one per model and worker incarnation, loaded once, off the loop) --------------


@dataclass(frozen=True)
class LoadedTokenizer:
    """A model's tokenizer and what the routes need to know about it, worked out once."""

    tokenizer: Any
    #: no token covers more characters of text than this (a prompt longer than
    #: ``max_model_len * max_token_chars`` cannot fit, and is refused before tokenizing)
    max_token_chars: int
    #: byte-level BPE (GPT-2 style): a token's string maps back to its bytes
    byte_level: bool


async def tokenizer_for(ctx: ServerContext, engine: ModelEngine, info: ModelInfo) -> Any | None:
    """The model's tokenizer (``None`` for models without one), loaded once and cached."""
    loaded = await loaded_tokenizer_for(ctx, engine, info)
    return loaded.tokenizer if loaded is not None else None


async def loaded_tokenizer_for(
    ctx: ServerContext, engine: ModelEngine, info: ModelInfo
) -> LoadedTokenizer | None:
    """The model's :class:`LoadedTokenizer` (``None`` for models without one), loaded once and
    cached in ``ctx.openai_state`` per model name and worker restart count."""
    if not info.tokenizer_dir:
        return None
    key = f"tokenizer:{engine.name}"
    version = (engine.restarts, info.tokenizer_dir)
    cached = ctx.openai_state.get(key)
    if cached is not None and cached[0] == version:
        task: asyncio.Future[Any] = cached[1]
    else:
        task = asyncio.ensure_future(asyncio.to_thread(_load_tokenizer, info.tokenizer_dir))
        ctx.openai_state[key] = (version, task)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if ctx.openai_state.get(key, (None, None))[1] is task:
            ctx.openai_state.pop(key, None)
        log.error("could not load the tokenizer of %s: %s", engine.name, exc)
        raise ModelError(f"could not load the tokenizer of model {engine.name}") from None


#: one tokenizer load at a time: transformers' lazy imports are not thread-safe, and several
#: models turning ready together would otherwise load their tokenizers in parallel threads
_TOKENIZER_LOAD = threading.Lock()


def preload_tokenizer_library() -> threading.Thread:
    """Import ``transformers`` (1-2 s of CPU under the GIL, torch included) in a background
    thread now, while the model workers load, instead of when the first model turns ready: a
    late import stalls the event loop - every request in flight - for that long."""

    def run() -> None:
        with _TOKENIZER_LOAD:
            try:
                import transformers  # noqa: F401

                _ = transformers.AutoTokenizer
                from steadyserve.logs import adopt_transformers_logging

                adopt_transformers_logging()
            except Exception:  # pragma: no cover - reported when a tokenizer is loaded
                log.exception("could not import transformers")

    thread = threading.Thread(target=run, name="preload-transformers", daemon=True)
    thread.start()
    return thread


def _load_tokenizer(path: str) -> LoadedTokenizer:
    with _TOKENIZER_LOAD:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
    return LoadedTokenizer(tokenizer, max_token_chars(tokenizer), is_byte_level(tokenizer))


def max_token_chars(tokenizer: Any) -> int:
    """The longest token string, added tokens included: an upper bound on the characters of
    text one token stands for (byte-level BPE: one character per byte; sentencepiece: ``▁`` per
    space; WordPiece's ``##`` and byte-fallback ``<0xAB>`` over-estimate, which is safe). A
    WordPiece word with an unknown character is one ``[UNK]``: its ``max_input_chars_per_word``
    (100) counts too.

    Not a bound for text a tokenizer throws away or folds into one unknown token beyond that
    (whitespace dropped by a normalizer, a WordPiece word over 100 characters): such a text,
    longer than the context times this bound in characters, is refused although it has few
    tokens - never a text of ordinary words."""
    vocab = tokenizer.get_vocab()
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    longest = max((len(t) for t in vocab), default=1)
    longest = max([longest, *(len(str(getattr(t, "content", t))) for t in added.values())])
    backend = getattr(tokenizer, "backend_tokenizer", None)
    word = getattr(getattr(backend, "model", None), "max_input_chars_per_word", None)
    if isinstance(word, int):
        longest = max(longest, word)
    return max(1, longest)


def is_byte_level(tokenizer: Any) -> bool:
    """Whether the tokenizer is a byte-level BPE (its decoder or pre-tokenizer is ByteLevel)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return hasattr(tokenizer, "byte_decoder")  # a slow GPT-2 tokenizer
    from tokenizers import decoders, pre_tokenizers

    return isinstance(backend.decoder, decoders.ByteLevel) or isinstance(
        backend.pre_tokenizer, pre_tokenizers.ByteLevel
    )


@functools.cache
def _unicode_to_byte() -> dict[str, int]:
    """The inverse of GPT-2's ``bytes_to_unicode``: each byte has a printable stand-in."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return {chr(c): b for b, c in chars.items()}


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
    """A token's text for logprobs."""
    if tokenizer is None:
        return f"token_id:{token_id}"
    return str(tokenizer.decode([token_id], skip_special_tokens=False))


def token_bytes(tokenizer: Any | None, token_id: int, text: str, byte_level: bool) -> list[int]:
    """A token's real bytes for logprobs (its text may be a lone ``\ufffd`` for part of a
    character): byte-level BPE maps its token string back to bytes, a sentencepiece
    byte-fallback token ``<0xAB>`` is that byte; otherwise the UTF-8 of ``text``."""
    if tokenizer is not None:
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
    engine: ModelEngine,
    seq: SeqSpec,
    tokenizer: Any | None,
    stops: list[str],
    timeout_s: float | None,
) -> AsyncGenerator[Event, None]:
    """Generate one sequence; detokenize, apply stop strings. Leaving early (stop string,
    cancellation) closes the engine stream, which aborts the sequence in the worker."""
    detok = IncrementalDetokenizer(tokenizer, seq.context_ids) if tokenizer is not None else None
    matcher = StopMatcher(stops)
    async with contextlib.aclosing(  # type: ignore[type-var]
        engine.generate(seq.request, timeout_s)
    ) as stream:
        async for delta in stream:
            if detok is not None:
                piece = detok.push(delta.token_ids)
                if delta.finish_reason is not None:
                    piece += detok.flush()
            else:
                piece = delta.text or ""
            out = matcher.push(piece)
            ev = Event(
                seq.index,
                out,
                list(delta.token_ids),
                delta.logprobs,
                delta.top_logprobs,
                None,
                delta.prompt_tokens,
            )
            if matcher.stopped:
                ev.finish_reason = "stop"
                yield ev
                return  # closing the stream aborts the sequence in the worker
            if delta.finish_reason is not None:
                ev.text += matcher.flush()
                ev.finish_reason = delta.finish_reason
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

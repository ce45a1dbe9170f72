"""A model's tokenizer in the server process: loaded once per worker incarnation, off the loop.

The engine client owns it (:meth:`EngineClient.tokenizer`), as vLLM's engine client does: the
routes ask the client, never a cache of their own. Loading runs in a thread
(``asyncio.to_thread``) under one lock: transformers' lazy imports are not thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any

from steadyserve.errors import ModelError

log = logging.getLogger("steadyserve.engine")


@dataclass(frozen=True)
class LoadedTokenizer:
    """A model's tokenizer and what the routes need to know about it, worked out once."""

    tokenizer: Any
    #: no token covers more characters of text than this (a prompt longer than
    #: ``max_model_len * max_token_chars`` cannot fit, and is refused before tokenizing)
    max_token_chars: int
    #: byte-level BPE (GPT-2 style): a token's string maps back to its bytes
    byte_level: bool


#: one tokenizer load at a time: transformers' lazy imports are not thread-safe, and several
#: models turning ready together would otherwise load their tokenizers in parallel threads
_TOKENIZER_LOAD = threading.Lock()


_preloading: threading.Thread | None = None


def preload_tokenizer_library() -> threading.Thread:
    """Import ``transformers`` (1-2 s of CPU under the GIL, torch included) in a background
    thread now, while the model workers load, instead of when the first model turns ready: a
    late import stalls the event loop - every request in flight - for that long. Once per
    process."""
    global _preloading
    if _preloading is not None:
        return _preloading

    def run() -> None:
        with _TOKENIZER_LOAD:
            try:
                import transformers  # noqa: F401

                _ = transformers.AutoTokenizer
                from steadyserve.logs import adopt_transformers_logging

                adopt_transformers_logging()
            except Exception:  # pragma: no cover - reported when a tokenizer is loaded
                log.exception("could not import transformers")

    _preloading = threading.Thread(target=run, name="preload-transformers", daemon=True)
    _preloading.start()
    return _preloading


def load_tokenizer(path: str) -> LoadedTokenizer:
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


class TokenizerSlot:
    """One model's tokenizer, per worker incarnation: loaded at most once per ``version``
    (a restarted worker may come back with another tokenizer directory)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._version: Any = None
        self._task: asyncio.Future[LoadedTokenizer] | None = None

    def warm(self, version: Any, path: str) -> asyncio.Future[LoadedTokenizer]:
        if self._task is None or self._version != version:
            self._version = version
            self._task = asyncio.ensure_future(asyncio.to_thread(load_tokenizer, path))
            # a warm-up nobody awaits must not log "exception never retrieved"
            self._task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return self._task

    async def get(self, version: Any, path: str) -> LoadedTokenizer:
        task = self.warm(version, path)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._task is task:  # the next request tries again
                self._task = None
            log.error("could not load the tokenizer of %s: %s", self.name, exc)
            raise ModelError(f"could not load the tokenizer of model {self.name}") from None

"""Incremental detokenization and stop strings (pure, no I/O): the engine client decodes each
step's text with it, and matches stop strings on that text with it.

:class:`IncrementalDetokenizer` turns a stream of token ids into text pieces without ever
emitting a broken character: a byte-level BPE token can hold half of a multi-byte UTF-8
character, and decoding it alone gives ``"\\ufffd"``. Like vLLM, it decodes a small window of
recent tokens twice (before and after the new ones) and emits the difference only once it no
longer ends in a replacement character.

Why not ``tokenizers.decoders.DecodeStream`` (tokenizers >= 0.21, installed here): it serves only
fast tokenizers (``tokenizers.Tokenizer``; a slow ``PreTrainedTokenizer`` has none), and it never
hands out the bytes still pending at the end of a sequence - there is no ``flush``. Ours ends a
sequence with what ``decode`` of the whole output gives (a trailing ``\ufffd`` included), so a
streamed text is exactly the non-streamed one; and it works through the ``Decoder`` protocol
below, for any tokenizer a runtime brings.

:class:`StopMatcher` watches the generated text for stop strings. It holds back the last
``len(longest stop) - 1`` characters (they might be the start of a stop string that the next
token completes), and on a match it truncates the text *before* the stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

REPLACEMENT = "\ufffd"


class Decoder(Protocol):
    """The part of a Hugging Face tokenizer the detokenizer needs."""

    def decode(self, token_ids: Any, skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    """Feed token ids in order; get back the new text they complete (possibly empty)."""

    #: tokens of context decoded before the new ones (so merges across the boundary are right)
    CONTEXT = 6

    def __init__(
        self,
        tokenizer: Decoder,
        prompt_ids: Sequence[int] = (),
        skip_special_tokens: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        # a few prompt tokens as context, so the first generated token decodes as it would
        # inside the sequence (e.g. a leading space is kept)
        self.ids: list[int] = list(prompt_ids[-self.CONTEXT :])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=self.skip_special_tokens)

    def push(self, token_ids: Sequence[int]) -> str:
        """Add generated tokens; return the text they complete (never a partial character)."""
        before, after = self.windows(token_ids)
        return self.advance(self._decode(before), self._decode(after))

    def windows(self, token_ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """Add generated tokens; the two windows to decode (before and with them), for
        :meth:`advance` - :func:`decode_step` decodes the windows of many sequences at once."""
        self.ids.extend(int(t) for t in token_ids)
        return self.ids[self.prefix_offset : self.read_offset], self.ids[self.prefix_offset :]

    def advance(self, prefix: str, full: str) -> str:
        """The new text, given the decoded :meth:`windows`."""
        if len(full) <= len(prefix) or full.endswith(REPLACEMENT):
            return ""  # incomplete character (or nothing visible yet): wait for more tokens
        new_text = full[len(prefix) :]
        self.prefix_offset = max(self.read_offset, len(self.ids) - self.CONTEXT)
        self.read_offset = len(self.ids)
        return new_text

    def flush(self) -> str:
        """At the end of the sequence: whatever is left, replacement characters included."""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix) :] if len(full) > len(prefix) else ""


def decode_step(
    tokenizer: Any, work: Sequence[tuple[IncrementalDetokenizer, Sequence[int]]]
) -> list[str]:
    """One engine step's new text for many sequences: ``push`` for each, with every window
    decoded in one call of the fast tokenizer's backend (``decode_batch``, in Rust) where that
    gives what ``decode`` gives (no ``clean_up_tokenization_spaces`` pass), else one by one."""
    if not work:
        return []
    windows: list[list[int]] = []
    for detok, ids in work:
        windows.extend(detok.windows(ids))
    skip = {detok.skip_special_tokens for detok, _ in work}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if (
        backend is not None
        and len(skip) == 1
        and not getattr(tokenizer, "clean_up_tokenization_spaces", False)
    ):
        texts = list(backend.decode_batch(windows, skip_special_tokens=skip.pop()))
    else:
        texts = [detok._decode(w) for (detok, _), w in zip(_pairs(work), windows, strict=True)]
    return [detok.advance(texts[2 * i], texts[2 * i + 1]) for i, (detok, _) in enumerate(work)]


def _pairs(
    work: Sequence[tuple[IncrementalDetokenizer, Sequence[int]]],
) -> list[tuple[IncrementalDetokenizer, Sequence[int]]]:
    """Each item twice (one per window)."""
    return [item for item in work for _ in (0, 1)]


class StopMatcher:
    """Find stop strings in streamed text; emit only text that cannot be part of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.text = ""  # everything generated (up to the stop, once stopped)
        self.emitted = 0  # characters of ``text`` already handed out
        self.stopped = False

    def push(self, piece: str) -> str:
        """Add generated text; return what is safe to emit now. Sets :attr:`stopped` on a
        match (the returned text then ends right before the stop string)."""
        if self.stopped or not piece:
            return ""
        start = max(0, len(self.text) - self.hold)
        self.text += piece
        if self.stops:
            found = -1
            for stop in self.stops:
                pos = self.text.find(stop, start)
                if pos != -1 and (found == -1 or pos < found):
                    found = pos
            if found != -1:
                self.text = self.text[:found]
                self.stopped = True
                return self._take(len(self.text))
        return self._take(len(self.text) - self.hold)

    def flush(self) -> str:
        """The held-back tail, at the end of the sequence."""
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        out = self.text[self.emitted : upto]
        self.emitted = upto
        return out

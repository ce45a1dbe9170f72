"""Generation output, per engine step (what vLLM's ``OutputProcessor`` does): the state of a
request in flight, text decoded for every sequence of a step at once, and the merging of a
sequence's deltas for a reader that wants the whole output only."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from steadyserve.engine.detokenize import IncrementalDetokenizer, StopMatcher, decode_step
from steadyserve.types import TokenDelta

log = logging.getLogger("steadyserve.engine")


@dataclass(eq=False)
class UnaryState:
    """A predict/infer/embed request in flight."""

    future: asyncio.Future[Any]


@dataclass(eq=False)
class SequenceState:
    """A generate request in flight: its output so far, and how to wake its reader."""

    tokens: int
    stream: bool
    started: float
    #: deltas (the final one included) or the error that ends it, not yet taken by the reader
    out: list[TokenDelta | BaseException] = field(default_factory=list)
    waiter: asyncio.Future[None] | None = None
    #: when the step output last arrived (the metrics' inter-token gaps)
    last_output: float = 0.0
    prompt_seen: bool = False
    #: when the reader last took output
    last_read: float = field(default_factory=time.monotonic)
    #: turns the output's token ids into text (None: the model's own ``text``)
    detok: IncrementalDetokenizer | None = None
    #: the request's stop strings (None: none), matched on each step's text
    stop: StopMatcher | None = None

    @property
    def per_step(self) -> bool:
        """Whether the text is decoded per step (a stream, or stop strings to watch) rather
        than once, at the end."""
        return self.stream or self.stop is not None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def text_of(self, delta: TokenDelta) -> None:
        """Decode a merged delta's text at once (a non-streamed sequence without stop
        strings: one decode). Text decoded per step is kept as it is."""
        if self.detok is not None and not self.per_step:
            delta.text = self.detok.push(delta.token_ids)
            if delta.finish_reason is not None:
                delta.text += self.detok.flush()

    def apply_stop(self, delta: TokenDelta) -> bool:
        """Run a step's text through the stop strings: the delta's text becomes what is safe to
        hand out (held back while it may be the start of a stop string, cut before a match).
        Returns True when a stop string matched: the delta then ends the sequence ("stop")."""
        if self.stop is None:
            return False
        text = self.stop.push(delta.text or "")
        if self.stop.stopped:
            delta.text = text
            delta.finish_reason = "stop"
            return True
        if delta.finish_reason is not None:
            text += self.stop.flush()
        delta.text = text
        return False


def detokenize_step(items: list[tuple[SequenceState, TokenDelta]]) -> set[SequenceState]:
    """One engine step's text, set on its deltas, for every sequence decoded per step (streams,
    and sequences with stop strings): one batched decode per tokenizer (:func:`decode_step`).
    Other sequences decode once, at the end (:meth:`SequenceState.text_of`). Returns the
    sequences whose text could not be decoded (the caller ends them)."""
    failed: set[SequenceState] = set()
    groups: dict[int, list[tuple[SequenceState, TokenDelta]]] = {}
    for seq, delta in items:
        if seq.detok is not None and seq.per_step:
            groups.setdefault(id(seq.detok.tokenizer), []).append((seq, delta))
    for group in groups.values():
        try:
            texts = decode_step(
                group[0][0].detok.tokenizer,  # type: ignore[union-attr]
                [(seq.detok, delta.token_ids) for seq, delta in group],  # type: ignore[misc]
            )
            for (seq, delta), text in zip(group, texts, strict=True):
                if delta.finish_reason is not None:
                    text += seq.detok.flush()  # type: ignore[union-attr]
                delta.text = text
        except Exception:
            log.exception("detokenization failed")
            failed.update(seq for seq, _ in group)
    return failed


def merge_deltas(deltas: list[TokenDelta]) -> TokenDelta:
    """Consecutive deltas of one sequence as one (token ids, text and logprobs concatenated;
    the last finish reason, the first prompt count). Logprobs are kept when every delta with
    tokens has them."""
    if len(deltas) == 1:
        return deltas[0]
    logprobs: list[float] | None = []
    tops: list[dict[int, float]] | None = []
    texts: list[str] = []
    ids: list[int] = []
    prompt: int | None = None
    for d in deltas:
        ids.extend(d.token_ids)
        if d.text:
            texts.append(d.text)
        if prompt is None:
            prompt = d.prompt_tokens
        if not d.token_ids:  # a final delta without tokens has no logprobs to add
            continue
        if logprobs is not None:
            logprobs = None if d.logprobs is None else logprobs + d.logprobs
        if tops is not None:
            tops = None if d.top_logprobs is None else tops + d.top_logprobs
    with_text = any(d.text is not None for d in deltas)
    return TokenDelta(
        token_ids=ids,
        text="".join(texts) if with_text else None,
        logprobs=logprobs if ids else None,
        top_logprobs=tops if ids else None,
        finish_reason=deltas[-1].finish_reason,
        prompt_tokens=prompt,
    )

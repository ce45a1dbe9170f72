"""Incremental detokenization (multi-byte characters, merged tokens) and stop strings, against a
byte-level BPE tokenizer trained here (no model, no server)."""

from __future__ import annotations

from typing import Any

import pytest

from steadyserve.engine.detokenize import (
    REPLACEMENT,
    IncrementalDetokenizer,
    StopMatcher,
    decode_step,
)

CORPUS = [
    "Hello world, the quick brown fox jumps over the lazy dog.",
    "Grüße aus München! Ça va très bien, merci.",
    "日本語のテキストです。東京は日本の首都です。",
    "Emoji party 🎉🎉 with friends 👩‍👩‍👧 and cake 🍰.",
    "STOP here. Then stop again; ### end ###",
] * 3


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


TEXTS = [
    "Grüße aus München 🎉 and 日本語!",
    "plain ascii text that merges well",
    "unseen: ψχω ∑∫ 🍰🍰 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
]


@pytest.mark.parametrize("text", TEXTS)
def test_token_by_token_never_emits_broken_characters(tokenizer: Any, text: str) -> None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    # byte-level BPE splits unseen multi-byte characters into several tokens
    pieces = [tokenizer.decode([i]) for i in ids]
    if not text.isascii():
        assert any(REPLACEMENT in p for p in pieces), "the test text must split a character"
    detok = IncrementalDetokenizer(tokenizer)
    out = []
    for i in ids:
        piece = detok.push([i])
        assert REPLACEMENT not in piece
        out.append(piece)
    out.append(detok.flush())
    assert "".join(out) == text


def test_chunks_of_tokens_and_prompt_context(tokenizer: Any) -> None:
    prompt = tokenizer("Hello", add_special_tokens=False)["input_ids"]
    gen = tokenizer(" world 🎉 Grüße", add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer, prompt)
    out = "".join(detok.push(gen[i : i + 3]) for i in range(0, len(gen), 3)) + detok.flush()
    assert out == " world 🎉 Grüße"  # the leading space survives: prompt tokens give context


def test_special_tokens_are_skipped(tokenizer: Any) -> None:
    ids = tokenizer("fox", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    detok = IncrementalDetokenizer(tokenizer)
    assert "".join(detok.push([i]) for i in ids) + detok.flush() == "fox"


def test_incomplete_character_at_the_end_is_flushed(tokenizer: Any) -> None:
    ids = tokenizer("a𝔘", add_special_tokens=False)["input_ids"]  # unseen: 4 byte tokens
    detok = IncrementalDetokenizer(tokenizer)
    text = "".join(detok.push([i]) for i in ids[:-1])
    assert text == "a"  # the character is incomplete: held back
    assert detok.flush().startswith(REPLACEMENT)  # the sequence ended mid-character


# ---- stop strings ------------------------------------------------------------------------------


def run_stop(pieces: list[str], stops: list[str]) -> tuple[str, bool, list[str]]:
    m = StopMatcher(stops)
    emitted = []
    for p in pieces:
        emitted.append(m.push(p))
        if m.stopped:
            break
    if not m.stopped:
        emitted.append(m.flush())
    return "".join(emitted), m.stopped, emitted


def test_stop_string_in_one_piece() -> None:
    assert run_stop(["hello STOP world"], ["STOP"])[:2] == ("hello ", True)


def test_stop_string_split_across_pieces_is_never_emitted() -> None:
    text, stopped, emitted = run_stop(["hel", "lo #", "#", "# rest"], ["###"])
    assert (text, stopped) == ("hello ", True)
    assert all("#" not in e for e in emitted)  # the partial stop string was held back


def test_earliest_stop_wins_and_no_stop_passes_through() -> None:
    assert run_stop(["a b c d"], ["d", "b"])[:2] == ("a ", True)
    assert run_stop(["a", "b", "c"], ["xyz"])[:2] == ("abc", False)
    assert run_stop(["ab", "c"], [])[:2] == ("abc", False)


def test_stop_at_the_very_start() -> None:
    assert run_stop(["STOP", "more"], ["STOP"])[:2] == ("", True)


def test_stop_over_detokenized_multibyte_text(tokenizer: Any) -> None:
    ids = tokenizer("Grüße 🎉 then more text", add_special_tokens=False)["input_ids"]
    detok, m = IncrementalDetokenizer(tokenizer), StopMatcher(["🎉"])
    out = ""
    for i in ids:
        out += m.push(detok.push([i]))
        if m.stopped:
            break
    assert m.stopped and out == "Grüße "


@pytest.mark.parametrize("special", [True, False])
def test_one_batched_decode_per_step_gives_each_sequence_what_push_gives(
    tokenizer: Any, special: bool
) -> None:
    """``decode_step`` (every sequence of an engine step in one backend call) emits exactly the
    pieces ``push`` does, sequence by sequence and step by step; special tokens included."""
    eos = tokenizer.convert_tokens_to_ids("<eos>")
    seqs = [tokenizer(t, add_special_tokens=False)["input_ids"] + [eos] for t in TEXTS]
    alone = [IncrementalDetokenizer(tokenizer, skip_special_tokens=special) for _ in seqs]
    batched = [IncrementalDetokenizer(tokenizer, skip_special_tokens=special) for _ in seqs]
    for step in range(max(len(s) for s in seqs)):
        live = [i for i, s in enumerate(seqs) if step < len(s)]
        want = [alone[i].push([seqs[i][step]]) for i in live]
        got = decode_step(tokenizer, [(batched[i], [seqs[i][step]]) for i in live])
        assert got == want
    for i in range(len(seqs)):
        assert batched[i].flush() == alone[i].flush()


def test_decode_step_without_a_fast_backend_decodes_one_by_one() -> None:
    class Slow:
        def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
            return "".join(chr(97 + i) for i in ids)

    detoks = [IncrementalDetokenizer(Slow()), IncrementalDetokenizer(Slow())]
    assert decode_step(Slow(), [(detoks[0], [0, 1]), (detoks[1], [2])]) == ["ab", "c"]
    assert decode_step(Slow(), []) == []

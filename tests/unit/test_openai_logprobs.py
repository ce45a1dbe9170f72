"""Logprobs bodies without a server: chat keeps every alternative (several tokens may share a
text such as a lone U+FFFD), token bytes are the token's real bytes (byte-level BPE, sentencepiece
byte fallback), the legacy completions dict keeps the most likely of coinciding texts; and the
per-tokenizer facts the routes cache (longest token, byte-level or not)."""

from __future__ import annotations

from typing import Any

import pytest

from steadyserve.engine.tokenizer import LoadedTokenizer, load_tokenizer
from steadyserve.protocol import openai_response as resp
from steadyserve.transport import openai_serving as serving
from steadyserve.transport import routes_openai as ro
from steadyserve.transport.openai_serving import Event


def loaded(path: str) -> LoadedTokenizer:
    return load_tokenizer(path)


class ByteFallbackTokenizer:
    """A sentencepiece-like tokenizer whose ids 3..5 are the byte-fallback tokens of "€"."""

    pieces = {3: "<0xE2>", 4: "<0x82>", 5: "<0xAC>", 6: "▁hi", 7: "<0xZZ>"}

    def convert_ids_to_tokens(self, token_id: int) -> str:
        return self.pieces[token_id]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        piece = self.pieces[ids[0]]
        return " hi" if piece == "▁hi" else "\ufffd" if piece.startswith("<0x") else piece


def job(tokenizer: Any, byte_level: bool, chat: bool = True) -> ro._Job:
    return ro._Job(
        chat=chat,
        model="m",
        engine=None,
        tokenizer=tokenizer,  # type: ignore[arg-type]
        seqs=[],
        stops=[],
        stream=False,
        include_usage=False,
        logprobs=3,
        echo=None,
        timeout_s=None,
        n=1,
        byte_level=byte_level,
    )


def test_byte_fallback_tokens_keep_every_alternative_and_their_bytes() -> None:
    j = job(ByteFallbackTokenizer(), byte_level=False)
    ev = Event(0, "", [3], logprobs=[-0.5], top_logprobs=[{4: -2.0, 3: -0.5, 5: -1.0, 6: -3.0}])
    (pos,) = ro._positions(j, ev)
    body = resp.chat_logprobs_body([pos])["content"][0]
    assert body["token"] == "\ufffd" and body["bytes"] == [0xE2]
    # all four alternatives, most likely first, each with its own byte
    assert [(t["logprob"], t["bytes"]) for t in body["top_logprobs"]] == [
        (-0.5, [0xE2]),
        (-1.0, [0xAC]),
        (-2.0, [0x82]),
        (-3.0, list(b" hi")),
    ]
    assert [t["token"] for t in body["top_logprobs"]] == ["\ufffd"] * 3 + [" hi"]
    # the legacy completions dict has one key per text: the most likely one wins
    legacy = resp.completion_logprobs_body([pos])
    assert legacy["top_logprobs"] == [{"\ufffd": -0.5, " hi": -3.0}]
    assert legacy["tokens"] == ["\ufffd"] and legacy["token_logprobs"] == [-0.5]
    # not a byte: the UTF-8 of its text
    assert serving.token_bytes(ByteFallbackTokenizer(), 7, "<0xZZ>", False) == list(b"<0xZZ>")


def test_byte_level_bpe_bytes_and_no_collisions(tiny_gpt2_dir: str) -> None:
    tok = loaded(tiny_gpt2_dir)
    assert tok.byte_level
    tokenizer = tok.tokenizer
    from tokenizers import pre_tokenizers

    assert set(serving._unicode_to_byte()) == set(pre_tokenizers.ByteLevel.alphabet())
    # every single-byte token: its bytes are that byte, whatever its text decodes to
    singles = {tokenizer.convert_tokens_to_ids(c): b for c, b in serving._unicode_to_byte().items()}
    for token_id, byte in singles.items():
        text = serving.token_text(tokenizer, token_id)
        assert serving.token_bytes(tokenizer, token_id, text, True) == [byte]
    # the non-ASCII bytes all decode to U+FFFD: twenty of them are twenty alternatives
    high = [t for t, b in singles.items() if b >= 0x80][:20]
    ev = Event(
        0,
        "",
        [high[0]],
        logprobs=[-1.0],
        top_logprobs=[{t: -1.0 - i / 100 for i, t in enumerate(high)}],
    )
    (pos,) = ro._positions(job(tokenizer, True), ev)
    content = resp.chat_logprobs_body([pos])["content"][0]
    assert len(content["top_logprobs"]) == 20
    assert [t["bytes"] for t in content["top_logprobs"]] == [[singles[t]] for t in high]
    # a multi-byte character spread over tokens: the bytes join back into its UTF-8
    ids = tokenizer("héllo €", add_special_tokens=False)["input_ids"]
    joined = b"".join(
        bytes(serving.token_bytes(tokenizer, t, serving.token_text(tokenizer, t), True))
        for t in ids
    )
    assert joined == "héllo €".encode()


def test_tokenizer_facts(tiny_gpt2_dir: str, tiny_t5_dir: str, tiny_bert_embed_dir: str) -> None:
    for path, byte_level in (
        (tiny_gpt2_dir, True),
        (tiny_t5_dir, False),
        (tiny_bert_embed_dir, False),
    ):
        tok = loaded(path)
        assert tok.byte_level is byte_level
        longest = max(len(t) for t in tok.tokenizer.get_vocab())
        # WordPiece: a word with an unknown character is one [UNK], up to 100 characters long
        assert tok.max_token_chars == (longest if path != tiny_bert_embed_dir else 100)
        # the bound holds for text: none has fewer tokens than its length / max_token_chars
        for text in (
            "The house is wonderful. " * 20,
            "x" * 90,
            "€" * 100,
            "a  b " * 30,
            "Straße, naïve café! 123-456 (ok)? " * 10,
        ):
            n = len(tok.tokenizer(text, add_special_tokens=False)["input_ids"])
            assert len(text) <= n * tok.max_token_chars, (path, text[:20])


@pytest.mark.parametrize("chat", [True, False])
def test_positions_keep_engine_order_on_ties(chat: bool) -> None:
    j = job(None, byte_level=False, chat=chat)
    ev = Event(
        0, "", [1, 2], logprobs=[-0.1, -0.2], top_logprobs=[{1: -0.1, 9: -0.1, 5: -0.3}, {2: -0.2}]
    )
    positions = ro._positions(j, ev)
    assert [t.token for t in positions[0].top] == ["token_id:1", "token_id:9", "token_id:5"]
    assert resp.logprobs_text_length(positions) == len("token_id:1") + len("token_id:2")


def test_special_tokens_have_no_text_so_offsets_describe_the_returned_text(
    tiny_t5_dir: str,
) -> None:
    """T5 completions with logprobs returned '' as text but four '<pad>' tokens whose offsets ran
    past it (issue 11): a special token is left out of the text, so its logprobs text is ''."""
    tokenizer = loaded(tiny_t5_dir).tokenizer
    pad = tokenizer.pad_token_id
    assert serving.token_text(tokenizer, pad) == ""
    assert serving.token_bytes(tokenizer, pad, "", False) == []
    ev = Event(0, "", [pad] * 4, logprobs=[-0.1] * 4, top_logprobs=[{pad: -0.1}] * 4)
    positions = ro._positions(job(tokenizer, False), ev)
    body = resp.completion_logprobs_body(positions)
    assert "".join(body["tokens"]) == ""  # the returned text
    assert body["text_offset"] == [0, 0, 0, 0]
    word = tokenizer("hello", add_special_tokens=False)["input_ids"][0]
    assert serving.token_text(tokenizer, word) != ""

"""HuggingFaceModel in-process (no server): each task's predict, errors, embed, info, V2 columns."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from steadyserve.config import ModelSpec
from steadyserve.engine.bridge import predictions_to_infer
from steadyserve.errors import InvalidInput
from steadyserve.runtimes.huggingface import HuggingFaceModel
from steadyserve.runtimes.huggingface.tasks import mean_pool, texts_from_instances
from steadyserve.types import Capability, EmbedRequest, InferRequest

_CACHE: dict[str, HuggingFaceModel] = {}


def _model(model_dir: str, **kw: Any) -> HuggingFaceModel:
    key = f"{model_dir}{sorted(kw.items())}"
    if key not in _CACHE:
        spec = ModelSpec(name="m", runtime="huggingface", model_dir=model_dir, device="cpu", **kw)
        model = HuggingFaceModel.from_spec(spec)
        model.load()
        _CACHE[key] = model
    return _CACHE[key]


def test_texts_from_instances() -> None:
    assert texts_from_instances(["a", {"text": "b"}, b"c"]) == ["a", "b", "c"]
    for bad in ([], [1], [{"text": "a", "x": 1}], [None], "abc", [b"\xff"]):
        with pytest.raises(InvalidInput):
            texts_from_instances(bad)  # type: ignore[arg-type]


def test_mean_pool_ignores_padding_and_normalises() -> None:
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert mean_pool(hidden, mask, normalize=False).tolist() == [[2.0, 2.0]]
    pooled = mean_pool(hidden, mask, normalize=True)[0].tolist()
    assert pooled == pytest.approx([math.sqrt(0.5), math.sqrt(0.5)])
    assert mean_pool(hidden, torch.zeros(1, 3, dtype=torch.long), normalize=False).tolist() == [
        [0.0, 0.0]
    ]


def test_sequence_classification(tiny_bert_cls_dir: str) -> None:
    model = _model(tiny_bert_cls_dir)
    assert model.predict(["good", "bad"], {}) in (
        [a, b] for a in ("negative", "positive") for b in ("negative", "positive")
    )
    full = model.predict(["good"], {"return_all_scores": True})[0]
    assert set(full["all_scores"]) == {"negative", "positive"}
    assert sum(full["all_scores"].values()) == pytest.approx(1.0)
    assert full["score"] == max(full["all_scores"].values())
    assert set(model.predict(["good"], {"return_scores": True})[0]) == {"label", "score"}
    with pytest.raises(InvalidInput, match="return_all_scores"):
        model.predict(["good"], {"return_all_scores": "yes"})
    # too long: truncated, not an error
    assert model.predict(["word " * 2000], {})[0] in ("negative", "positive")
    info = model.info()
    assert info.capabilities == [Capability.PREDICT, Capability.INFER]
    assert info.task == "sequence_classification" and info.tokenizer_dir == tiny_bert_cls_dir
    assert [o.name for o in info.outputs] == ["label", "score"]
    resp = predictions_to_infer(
        model, InferRequest(inputs=[]), model.predict(["a", "b"], {"return_scores": True})
    )
    assert [(t.name, t.datatype, t.shape) for t in resp.outputs] == [
        ("label", "BYTES", [2]),
        ("score", "FP32", [2]),
    ]


def test_batch_equals_single(tiny_bert_cls_dir: str) -> None:
    model = _model(tiny_bert_cls_dir)
    texts = ["short", "a much longer sentence that needs padding in the batch"]
    batch = model.predict(texts, {"return_scores": True})
    for text, item in zip(texts, batch, strict=True):
        single = model.predict([text], {"return_scores": True})[0]
        assert single["score"] == pytest.approx(item["score"], abs=1e-5)


def test_fill_mask(tiny_bert_mlm_dir: str) -> None:
    model = _model(tiny_bert_mlm_dir)
    out = model.predict(["the cat sat on the [MASK]."], {"top_k": 3})[0]
    assert len(out) == 3 and out[0]["score"] >= out[1]["score"] >= out[2]["score"]
    assert all(f["sequence"].startswith("the cat sat on the") for f in out)
    for text in ("no mask", "[MASK] and [MASK]"):
        with pytest.raises(InvalidInput, match="exactly once"):
            model.predict([text], {})
    with pytest.raises(InvalidInput, match="top_k"):
        model.predict(["a [MASK]"], {"top_k": 0})
    with pytest.raises(InvalidInput, match="truncation"):
        model.predict(["word " * 600 + "[MASK]"], {})


def test_token_classification(tiny_bert_tok_dir: str) -> None:
    model = _model(tiny_bert_tok_dir)
    text = "John Smith lives in London"
    everything = model.predict([text], {"ignore_labels": []})[0]
    assert [e["word"] for e in everything] == ["John", "Smith", "lives", "in", "London"]
    for ent in everything:
        assert text[ent["start"] : ent["end"]] == ent["word"]
    default = model.predict([text], {})[0]
    assert all(e["entity"] != "O" for e in default)
    assert len(default) == sum(e["entity"] != "O" for e in everything)


def test_text_embedding_and_embed(tiny_bert_embed_dir: str) -> None:
    model = _model(tiny_bert_embed_dir)
    vec = model.predict(["hello world"], {})[0]
    assert len(vec) == 64 and sum(x * x for x in vec) == pytest.approx(1.0, abs=1e-4)
    raw = model.predict(["hello world"], {"normalize": False})[0]
    assert sum(x * x for x in raw) != pytest.approx(1.0, abs=1e-4)
    resp = model.embed(EmbedRequest(texts=["hello world", "a"]))
    assert resp.embeddings[0] == pytest.approx(vec, abs=1e-5)
    assert resp.prompt_tokens == 4 + 3  # [CLS] hello world [SEP] + [CLS] a [SEP]
    ids = model.embed(EmbedRequest(token_ids=[[2, 141, 147, 3], [2, 5, 3]]))
    assert ids.prompt_tokens == 7 and len(ids.embeddings) == 2
    for bad in ([[]], [[-1]], [[10**6]]):
        with pytest.raises(InvalidInput):
            model.embed(EmbedRequest(token_ids=bad))
    info = model.info()
    assert Capability.EMBED in info.capabilities and info.extra["embedding_dim"] == 64


def test_text_generation(tiny_gpt2_dir: str) -> None:
    model = _model(tiny_gpt2_dir)
    out = model.predict(["Hello", "The quick brown fox jumps"], {"max_new_tokens": 5})
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    alone = model.predict(["Hello"], {"max_new_tokens": 5})
    assert alone[0] == out[0]  # left padding: batching does not change greedy output
    with pytest.raises(InvalidInput, match="max_new_tokens"):
        model.predict(["Hello"], {"max_new_tokens": 0})
    with pytest.raises(InvalidInput, match="limit"):
        model.predict(["word " * 600], {})
    info = model.info()
    assert info.task == "text_generation" and info.max_model_len == 512
    assert Capability.CHAT not in info.capabilities  # gpt2 tokenizer has no chat template
    assert info.eos_token_ids == [0] and not info.is_encoder_decoder


def test_text2text_generation(tiny_t5_dir: str) -> None:
    model = _model(tiny_t5_dir)
    out = model.predict(["translate: the house", "hi"], {"max_new_tokens": 4})
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    info = model.info()
    assert info.is_encoder_decoder and info.max_model_len == 512 and info.eos_token_ids == [1]
    assert Capability.CHAT not in info.capabilities and Capability.EMBED not in info.capabilities


def test_llama_has_chat(tiny_llama_dir: str) -> None:
    pytest.importorskip("steadyserve.runtimes.huggingface.generation")
    model = _model(tiny_llama_dir, max_model_len=256)
    info = model.info()
    assert {Capability.GENERATE, Capability.CHAT} <= set(info.capabilities)
    assert info.max_model_len == 256
    engine = model.generation_engine()
    assert engine is not None and not engine.has_work()

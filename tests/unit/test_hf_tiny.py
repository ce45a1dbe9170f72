"""The tiny model builders: real architectures, offline round-trip, determinism, the demo."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer

from steadyserve.runtimes.huggingface import tiny


def test_builders_round_trip(
    tiny_gpt2_dir: str,
    tiny_t5_dir: str,
    tiny_llama_dir: str,
    tiny_bert_mlm_dir: str,
    tiny_bert_cls_dir: str,
    tiny_bert_tok_dir: str,
    tiny_bert_embed_dir: str,
) -> None:
    expected = {
        tiny_gpt2_dir: "GPT2LMHeadModel",
        tiny_t5_dir: "T5ForConditionalGeneration",
        tiny_llama_dir: "LlamaForCausalLM",
        tiny_bert_mlm_dir: "BertForMaskedLM",
        tiny_bert_cls_dir: "BertForSequenceClassification",
        tiny_bert_tok_dir: "BertForTokenClassification",
        tiny_bert_embed_dir: "BertModel",
    }
    for path, arch in expected.items():
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        assert config.architectures == [arch]
        assert os.path.isfile(os.path.join(path, "model.safetensors"))
        assert config.vocab_size == len(tokenizer) and 300 <= len(tokenizer) <= 2000
        assert tokenizer.pad_token_id is not None
        ids = tokenizer("Hello world, the quick brown fox.")["input_ids"]
        assert "quick" in tokenizer.decode(ids).lower()


def test_special_tokens(tiny_t5_dir: str, tiny_llama_dir: str, tiny_bert_mlm_dir: str) -> None:
    t5 = AutoTokenizer.from_pretrained(tiny_t5_dir)
    config = AutoConfig.from_pretrained(tiny_t5_dir)
    assert (
        (t5.pad_token_id, t5.eos_token_id) == (0, 1) == (config.pad_token_id, config.eos_token_id)
    )
    assert config.decoder_start_token_id == 0
    assert t5("hi")["input_ids"][-1] == 1  # eos appended
    llama = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert llama.chat_template and llama("hi")["input_ids"][0] == llama.bos_token_id
    chat = llama.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<s><|user|>\nhi</s>\n<|assistant|>\n"
    bert = AutoTokenizer.from_pretrained(tiny_bert_mlm_dir)
    ids = bert("a [MASK] b")["input_ids"]
    assert ids[0] == bert.cls_token_id and ids[-1] == bert.sep_token_id
    assert bert.mask_token_id in ids


def test_labels(tiny_bert_cls_dir: str, tiny_bert_tok_dir: str) -> None:
    assert AutoConfig.from_pretrained(tiny_bert_cls_dir).id2label == tiny.SEQUENCE_LABELS
    assert AutoConfig.from_pretrained(tiny_bert_tok_dir).id2label == tiny.TOKEN_LABELS


def test_builds_are_deterministic(tmp_path: Path, tiny_bert_cls_dir: str) -> None:
    again = tiny.build_bert(tmp_path / "again", "sequence_classification")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert Path(again, name).read_bytes() == Path(tiny_bert_cls_dir, name).read_bytes()


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="valid: fill_mask"):
        tiny.build_bert(tmp_path, "summarization")
    with pytest.raises(ValueError, match="t5-small"):
        tiny.build_t5(tmp_path, preset="t5-large")
    with pytest.raises(ValueError, match="gpt2"):
        tiny.build_gpt2(tmp_path, preset="gpt2-xl")


def test_demo_model_is_cached_and_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEADYSERVE_CACHE", str(tmp_path))
    path = tiny.ensure_demo_model()
    assert path == str(tmp_path / "demo-v1")
    assert "random weights - demo only" in Path(path, "README.md").read_text()
    assert json.loads(Path(path, "steadyserve-demo.json").read_text())["version"] == "demo-v1"
    assert AutoTokenizer.from_pretrained(path).chat_template
    stamp = os.stat(os.path.join(path, "model.safetensors")).st_mtime_ns

    def no_rebuild(*args: object, **kwargs: object) -> str:
        raise AssertionError("rebuilt a cached demo model")

    monkeypatch.setattr(tiny, "build_llama", no_rebuild)
    assert tiny.ensure_demo_model() == path  # cached: no rebuild
    assert os.stat(os.path.join(path, "model.safetensors")).st_mtime_ns == stamp
    assert sorted(os.listdir(tmp_path)) == ["demo-v1"]  # no temp dirs left behind


def test_demo_model_failed_build_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(path: str, **kwargs: object) -> str:
        Path(path, "partial").write_text("x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(tiny, "build_llama", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        tiny.ensure_demo_model(str(tmp_path / "demo"))
    assert os.listdir(tmp_path) == []


def test_demo_model_refuses_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("do not delete")
    with pytest.raises(FileExistsError, match="not a steadyserve llama demo model"):
        tiny.ensure_demo_model(str(tmp_path))
    assert (tmp_path / "mine.txt").read_text() == "do not delete"


def test_build_demo_other_architectures_from_the_cli(tmp_path: Path) -> None:
    """``steadyserve build-demo --arch t5`` builds a T5 the HF runtime infers as text2text; the
    same directory is reused, never rebuilt as (or mistaken for) another architecture."""
    from transformers import AutoConfig

    from steadyserve.cli import main
    from steadyserve.runtimes.huggingface.loading import infer_task

    out = tmp_path / "t5"
    assert main(["build-demo", "--arch", "t5", "--out", str(out)]) == 0
    config = AutoConfig.from_pretrained(out)
    assert infer_task(config.architectures, config.is_encoder_decoder) == "text2text_generation"
    assert "(t5)" in (out / "README.md").read_text()
    assert main(["build-demo", "--arch", "t5", "--out", str(out)]) == 0  # cached
    assert main(["build-demo", "--arch", "gpt2", "--out", str(out)]) == 2  # not a gpt2 build
    assert AutoConfig.from_pretrained(out).model_type == "t5"
    with pytest.raises(SystemExit) as exc:
        main(["build-demo", "--arch", "resnet", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert not (tmp_path / "x").exists()

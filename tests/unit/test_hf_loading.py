"""Task inference, device/dtype resolution, the one-device check and model-dir discovery."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from steadyserve.config import ModelSpec
from steadyserve.runtimes.huggingface import loading
from steadyserve.runtimes.huggingface.loading import LoadError


@pytest.mark.parametrize(
    ("architectures", "enc_dec", "task"),
    [
        (["GPT2LMHeadModel"], False, "text_generation"),
        (["LlamaForCausalLM"], False, "text_generation"),
        (["T5ForConditionalGeneration"], True, "text2text_generation"),
        (["BertForMaskedLM"], False, "fill_mask"),
        (["DistilBertForSequenceClassification"], False, "sequence_classification"),
        (["BertForTokenClassification"], False, "token_classification"),
        (["BertModel"], False, "text_embedding"),
        (["SomethingElse", "BertModel"], False, "text_embedding"),
    ],
)
def test_infer_task(architectures: list[str], enc_dec: bool, task: str) -> None:
    assert loading.infer_task(architectures, enc_dec) == task


@pytest.mark.parametrize(
    ("architectures", "enc_dec"),
    [
        (None, False),
        ([], False),
        (["WhisperForAudioClassification"], False),
        (["LlavaForConditionalGeneration"], False),
        (["T5Model"], True),
    ],
)
def test_infer_task_unknown_names_architectures_and_tasks(
    architectures: list[str] | None, enc_dec: bool
) -> None:
    with pytest.raises(LoadError) as info:
        loading.infer_task(architectures, enc_dec)
    message = str(info.value)
    assert "--task" in message and "text_embedding" in message
    for arch in architectures or []:
        assert arch in message


def test_resolve_device() -> None:
    assert loading.resolve_device("auto", cuda_available=False) == "cpu"
    assert loading.resolve_device("auto", cuda_available=True) == "cuda:0"
    assert loading.resolve_device("cpu", cuda_available=True) == "cpu"
    assert loading.resolve_device("cuda", cuda_available=True) == "cuda:0"
    assert loading.resolve_device("cuda:1", cuda_available=True) == "cuda:1"
    with pytest.raises(LoadError, match="CUDA is not available"):
        loading.resolve_device("cuda", cuda_available=False)
    for bad in ("tpu", "cuda:x"):
        with pytest.raises(LoadError, match="valid: auto, cpu, cuda"):
            loading.resolve_device(bad, cuda_available=True)


def test_resolve_dtype() -> None:
    assert loading.resolve_dtype("auto", "cpu", "bfloat16") is torch.float32
    assert loading.resolve_dtype("auto", "cuda:0", "bfloat16") is torch.bfloat16
    assert loading.resolve_dtype("auto", "cuda:0", torch.float16) is torch.float16
    assert loading.resolve_dtype("auto", "cuda:0", None) is torch.float32
    assert loading.resolve_dtype("float16", "cpu") is torch.float16
    assert loading.resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    with pytest.raises(LoadError, match="--dtype"):
        loading.resolve_dtype("int8", "cpu")


def test_check_single_device_detects_mixed_devices() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    loading.check_single_device(model, "cpu")
    model[1].to("meta")
    with pytest.raises(LoadError) as info:
        loading.check_single_device(model, "cpu")
    assert "'cpu'" in str(info.value) and "'meta'" in str(info.value)


def test_check_single_device_sees_buffers() -> None:
    model = torch.nn.BatchNorm1d(3)
    model.register_buffer("extra", torch.zeros(1, device="meta"))
    with pytest.raises(LoadError, match="meta"):
        loading.check_single_device(model, "cpu")


def test_find_model_dir(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="does not exist"):
        loading.find_model_dir(str(tmp_path / "nope"))
    with pytest.raises(LoadError, match="no config.json"):
        loading.find_model_dir(str(tmp_path))
    nested = tmp_path / "inner"
    nested.mkdir()
    (nested / "config.json").write_text("{}")
    assert loading.find_model_dir(str(tmp_path)) == str(nested)
    (tmp_path / "config.json").write_text("{}")
    assert loading.find_model_dir(str(tmp_path)) == str(tmp_path)


def test_model_max_len() -> None:
    assert loading.model_max_len(SimpleNamespace(max_position_embeddings=128), None) == 128
    assert loading.model_max_len(SimpleNamespace(n_positions=64), 32) == 32
    assert loading.model_max_len(SimpleNamespace(), None) == 512  # e.g. T5: relative positions
    assert loading.model_max_len(SimpleNamespace(), 2048) == 2048
    with pytest.raises(LoadError, match="exceeds"):
        loading.model_max_len(SimpleNamespace(max_position_embeddings=128), 129)


def _spec(model_dir: str, **kw: object) -> ModelSpec:
    return ModelSpec(name="m", runtime="huggingface", model_dir=model_dir, device="cpu", **kw)  # type: ignore[arg-type]


def test_load_infers_task_and_prefers_safetensors(tiny_bert_cls_dir: str) -> None:
    assert any(f.endswith(".safetensors") for f in os.listdir(tiny_bert_cls_dir))
    loaded = loading.load(_spec(tiny_bert_cls_dir))
    assert loaded.task == "sequence_classification"
    assert loaded.device == "cpu" and loaded.dtype is torch.float32
    assert loaded.tokenizer_dir == tiny_bert_cls_dir
    assert loaded.max_model_len == 512
    assert loading.tensor_devices(loaded.model) == {"cpu"}


def test_load_errors_are_clear(tiny_bert_cls_dir: str, tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="as text2text_generation"):
        loading.load(_spec(tiny_bert_cls_dir, task="text2text_generation"))
    with pytest.raises(LoadError, match="no config.json"):
        loading.load(_spec(str(tmp_path)))
    with pytest.raises(LoadError, match="exceeds"):
        loading.load(_spec(tiny_bert_cls_dir, max_model_len=100_000))

"""``--backend auto`` against vLLM's real model registry (no server)."""

from __future__ import annotations

import warnings

import pytest

from steadyserve.config import ModelSpec
from steadyserve.runtimes.vllm import select
from steadyserve.settings import build_settings


def _spec(model_dir: str, backend: str = "auto") -> ModelSpec:
    options = {select.OPTION: select.backend_options(build_settings({"backend": backend}, {}))}
    return ModelSpec(name="m", runtime="huggingface", model_dir=model_dir, options=options)


@pytest.fixture(scope="module")
def archs() -> set[str]:
    with warnings.catch_warnings():  # vLLM's own import-time warnings are not ours
        warnings.simplefilter("ignore")
        return select.supported_architectures()


def test_auto_picks_vllm_for_decoder_only_models(
    archs: set[str], vllm_llama_dir: str, vllm_gpt2_dir: str
) -> None:
    assert {"LlamaForCausalLM", "GPT2LMHeadModel"} <= archs
    assert select.why_not_vllm(_spec(vllm_llama_dir)) is None
    assert select.why_not_vllm(_spec(vllm_gpt2_dir)) is None


def test_encoder_decoders_and_encoder_tasks_stay_on_our_engines(
    archs: set[str], tiny_t5_dir: str, tiny_bert_embed_dir: str, tiny_bert_cls_dir: str
) -> None:
    assert select.choose(_spec(tiny_t5_dir)) is None
    assert select.choose(_spec(tiny_bert_embed_dir)) is None
    assert select.choose(_spec(tiny_bert_cls_dir)) is None
    assert "encoder-decoder" in str(select.why_not_vllm(_spec(tiny_t5_dir)))

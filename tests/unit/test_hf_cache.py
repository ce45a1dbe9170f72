"""The generation engine passes the KV cache under the name the installed transformers expects:
no "`past_key_values` ... deprecated" notice at start (issue 11)."""

from __future__ import annotations

import logging

import pytest

from steadyserve.runtimes.huggingface.generation import ContinuousBatcher
from steadyserve.runtimes.huggingface.hf_cache import cache_keyword
from steadyserve.types import GenerateRequest, SamplingParams


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_t5_dir"])
def test_generation_logs_no_cache_deprecation(
    fixture: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM
    from transformers.utils import logging as hf_logging

    path = request.getfixturevalue(fixture)
    cls = AutoModelForSeq2SeqLM if fixture == "tiny_t5_dir" else AutoModelForCausalLM
    model = cls.from_pretrained(path).eval()
    if hasattr(hf_logging.get_logger().warning_once, "cache_clear"):
        hf_logging.get_logger().warning_once.cache_clear()  # it logs once per process
    hf_logging.enable_propagation()
    engine = ContinuousBatcher(
        model,
        eos_token_ids=[],
        pad_token_id=0,
        max_num_seqs=2,
        max_model_len=64,
    )
    params = SamplingParams(max_tokens=3, temperature=0.0)
    with caplog.at_level(logging.WARNING):
        engine.add("a", GenerateRequest(prompt_token_ids=[5, 6, 7], params=params))
        for _ in range(10):
            if not engine.has_work():
                break
            engine.step()
    assert not engine.has_work()
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()], caplog.text
    assert cache_keyword(model) in ("cache", "past_key_values")

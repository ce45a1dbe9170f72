"""``--backend auto|vllm|huggingface``: settings, configuration errors, and which engine serves
a model (without vLLM: its presence and model registry are faked here; tests/vllm runs it)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from steadyserve.cli import build_parser
from steadyserve.config import ModelSpec
from steadyserve.runtimes.huggingface.loading import LoadError
from steadyserve.runtimes.vllm import select
from steadyserve.settings import ConfigError, build_settings


def _settings(**flags: Any) -> Any:
    return build_settings(flags, {})


def _spec(model_dir: str, backend: str, **fields: Any) -> ModelSpec:
    options = {select.OPTION: select.backend_options(_settings(backend=backend))}
    return ModelSpec(
        name="m", runtime="huggingface", model_dir=model_dir, options=options, **fields
    )


def test_vllm_flags_have_kserve_spellings() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--backend",
            "vllm",
            "--gpu-memory-utilization",
            "0.5",
            "--tensor-parallel-size",
            "2",
            "--enforce-eager",
            "--max-model-len",
            "256",
            "--kv_cache_space_gb",
            "2",
            "--vllm-engine-core",
            "worker",
        ]
    )
    flags = {k: v for k, v in vars(args).items() if k != "command" and not k.startswith("kserve_")}
    s = build_settings(flags, {})
    assert (s.backend, s.gpu_memory_utilization, s.tensor_parallel_size) == ("vllm", 0.5, 2)
    assert (s.enforce_eager, s.max_model_len, s.kv_cache_space_gb) == (True, 256, 2)
    assert s.vllm_engine_core == "worker"
    assert build_settings({}, {}).vllm_engine_core == "process"  # vLLM's own default


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        ({"gpu_memory_utilization": 0}, "gpu_memory_utilization"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"tensor_parallel_size": 0}, "tensor_parallel_size"),
        ({"kv_cache_space_gb": 0}, "kv_cache_space_gb"),
        ({"vllm_engine_core": "thread"}, "process, worker"),
        ({"backend": "triton"}, "auto, huggingface, vllm"),
    ],
)
def test_bad_vllm_settings_are_config_errors(flags: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        _settings(**flags)
    assert needle in str(info.value)


def test_backend_vllm_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="--model_class is custom"):
        select.check_settings(_settings(backend="vllm", model_class="x.py:M"))
    with pytest.raises(ConfigError, match="text_generation only"):
        select.check_settings(_settings(backend="vllm", task="fill_mask"))
    monkeypatch.setattr(select, "vllm_installed", lambda: False)
    with pytest.raises(ConfigError, match="vLLM is not installed; install it"):
        select.check_settings(_settings(backend="vllm"))
    select.check_settings(_settings(backend="auto"))  # auto never fails: it falls back


def test_options_go_to_hugging_face_specs_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(select, "vllm_installed", lambda: True)
    hf = ModelSpec(name="a", runtime="huggingface", model_dir="/x")
    custom = ModelSpec(name="b", runtime="custom", model_class="x.py:M", options={"k": 1})
    out = select.apply_backend(_settings(backend="vllm", enforce_eager=True), [hf, custom])
    assert out[0].options[select.OPTION]["backend"] == "vllm"
    assert out[0].options[select.OPTION]["enforce_eager"] is True
    assert out[1].options == {"k": 1}  # a custom model's kwargs are untouched


def test_a_model_the_repository_api_loads_gets_the_backend_too(
    tmp_path: Any, tiny_gpt2_dir: str
) -> None:
    """POST /v2/repository/models/{m}/load builds its spec from the repository directory: it
    carries --backend like the command line's models (it used to fall back to our engine)."""
    import shutil

    from steadyserve.config import EngineConfig
    from steadyserve.registry import Registry
    from steadyserve.repository import ModelRepository

    shutil.copytree(tiny_gpt2_dir, tmp_path / "later")
    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "model.py").write_text("class Model: pass\n")
    settings = _settings(backend="vllm", model_repository=str(tmp_path), vllm_engine_core="worker")
    repo = ModelRepository(Registry(EngineConfig()), settings)
    spec = repo._spec("later")
    assert spec.runtime == "huggingface"
    assert spec.options[select.OPTION]["backend"] == "vllm"
    assert spec.options[select.OPTION]["engine_core"] == "worker"
    assert select.OPTION not in repo._spec("custom").options


def test_huggingface_backend_and_unstamped_specs_never_use_vllm(tiny_gpt2_dir: str) -> None:
    assert select.choose(_spec(tiny_gpt2_dir, "huggingface")) is None
    assert (
        select.choose(ModelSpec(name="m", runtime="huggingface", model_dir=tiny_gpt2_dir)) is None
    )


def test_auto_without_vllm_falls_back_and_says_why(
    tiny_gpt2_dir: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(select, "vllm_installed", lambda: False)
    with caplog.at_level(logging.INFO, logger="steadyserve.vllm"):
        assert select.choose(_spec(tiny_gpt2_dir, "auto")) is None
    assert "Hugging Face engine (--backend auto: vLLM is not installed)" in caplog.text
    with pytest.raises(LoadError, match="--backend vllm cannot serve m: vLLM is not installed"):
        select.choose(_spec(tiny_gpt2_dir, "vllm"))


def test_what_vllm_may_serve(
    tiny_gpt2_dir: str,
    tiny_t5_dir: str,
    tiny_bert_cls_dir: str,
    tiny_llama_dir: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(select, "vllm_installed", lambda: True)
    monkeypatch.setattr(select, "supported_architectures", lambda: {"GPT2LMHeadModel"})
    assert select.why_not_vllm(_spec(tiny_gpt2_dir, "auto")) is None
    assert "encoder-decoder" in str(select.why_not_vllm(_spec(tiny_t5_dir, "auto")))
    assert "sequence_classification is not text generation" in str(
        select.why_not_vllm(_spec(tiny_bert_cls_dir, "auto"))
    )
    assert "does not support the architecture LlamaForCausalLM" in str(
        select.why_not_vllm(_spec(tiny_llama_dir, "auto"))
    )
    assert "task fill_mask" in str(
        select.why_not_vllm(_spec(tiny_gpt2_dir, "auto", task="fill_mask"))
    )
    # auto falls back for all of those; vllm refuses them at load, naming the reason
    assert select.choose(_spec(tiny_t5_dir, "auto")) is None
    with pytest.raises(LoadError, match="encoder-decoder"):
        select.choose(_spec(tiny_t5_dir, "vllm"))

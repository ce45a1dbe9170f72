"""Settings → ModelSpec / EngineConfig in one place, with the Settings' own defaults; and the
runtime registry that builds a spec's model."""

from __future__ import annotations

import pytest

from steadyserve import config
from steadyserve.config import EngineConfig, ModelSpec, engine_config, model_options
from steadyserve.runtimes import RUNTIMES, build_model
from steadyserve.settings import Settings, build_settings


def test_every_per_model_and_engine_field_is_a_setting_with_its_default() -> None:
    spec = ModelSpec(name="m", runtime="custom")
    options = model_options(build_settings({}, environ={}))
    assert options, "no per-model settings copied"
    for field, value in options.items():
        setting = config.SETTING_NAMES.get(field, field)
        assert setting in Settings.model_fields, field
        assert getattr(spec, field) == value, field  # ModelSpec defaults are the Settings'
    defaults = EngineConfig()
    copied = engine_config(build_settings({}, environ={}))
    assert copied == defaults
    for field in EngineConfig.__struct_fields__:
        assert field in Settings.model_fields, field


def test_a_setting_reaches_the_spec_and_the_engine_config() -> None:
    settings = build_settings(
        {"max_num_seqs": 7, "worker_memory_limit_mb": 300, "max_queue_size": 9}, environ={}
    )
    spec = ModelSpec(name="m", runtime="huggingface", **model_options(settings))
    assert spec.max_num_seqs == 7 and spec.memory_limit_mb == 300
    assert engine_config(settings).max_queue_size == 9
    assert spec.prefill_delay_steps is None  # the engine's own default (4 on CUDA, 0 on CPU)
    delayed = build_settings({"prefill_delay_steps": 2}, environ={})
    spec = ModelSpec(name="m", runtime="huggingface", **model_options(delayed))
    assert spec.prefill_delay_steps == 2
    from steadyserve.settings import ConfigError

    with pytest.raises(ConfigError, match="prefill_delay_steps"):
        build_settings({"prefill_delay_steps": -1}, environ={})
    assert spec.prefill_hold_ms is None  # the engine's own default (50 ms)
    held = build_settings({"prefill_hold_ms": 0}, environ={})
    assert ModelSpec(name="m", runtime="huggingface", **model_options(held)).prefill_hold_ms == 0
    with pytest.raises(ConfigError, match="prefill_hold_ms"):
        build_settings({"prefill_hold_ms": -5}, environ={})


def test_the_runtime_registry_builds_known_runtimes_and_refuses_others() -> None:
    assert "huggingface" in RUNTIMES
    with pytest.raises(ValueError, match="unknown runtime 'nope'"):
        build_model(ModelSpec(name="m", runtime="nope"))
    with pytest.raises(ValueError, match="model_class"):
        build_model(ModelSpec(name="m", runtime="custom"))
    model = build_model(
        ModelSpec(name="m", runtime="custom", model_class="tests.models.inproc:Echo")
    )
    assert model.name == "m" and "predict" in model.capabilities()

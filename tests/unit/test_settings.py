"""Settings: flags > env > defaults, documented defaults, one-line errors."""

from __future__ import annotations

import pytest

from steadyserve.settings import (
    ENV_VARS,
    ConfigError,
    Settings,
    build_settings,
    resolve_model_dir,
)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "v1"),  # unset → documented default (the pytorch/serve#2956 failure)
        ({"PROTOCOL_VERSION": ""}, "v1"),  # empty → default too
        ({"PROTOCOL_VERSION": "   "}, "v1"),
        ({"PROTOCOL_VERSION": "v1"}, "v1"),
        ({"PROTOCOL_VERSION": "v2"}, "v2"),
        ({"PROTOCOL_VERSION": "grpc-v2"}, "grpc-v2"),
    ],
)
def test_protocol_version_defaults_and_values(environ: dict[str, str], expected: str) -> None:
    settings = build_settings({}, environ)
    assert settings.protocol_version == expected
    assert settings.grpc_enabled == (expected == "grpc-v2")


@pytest.mark.parametrize("bad", ["v3", "V1", "grpc", "None", "v1 "])
def test_invalid_protocol_version_names_variable_value_and_choices(bad: str) -> None:
    if bad.strip() in ("v1",):
        assert build_settings({}, {"PROTOCOL_VERSION": bad}).protocol_version == "v1"
        return
    with pytest.raises(ConfigError) as info:
        build_settings({}, {"PROTOCOL_VERSION": bad})
    message = str(info.value)
    assert "\n" not in message
    assert "PROTOCOL_VERSION" in message
    assert repr(bad.strip()) in message
    assert "v1, v2, grpc-v2" in message


def test_flags_override_env() -> None:
    settings = build_settings({"http_port": 9000}, {"HTTP_PORT": "7000", "PROTOCOL_VERSION": "v2"})
    assert settings.http_port == 9000
    assert settings.protocol_version == "v2"
    assert build_settings({}, {"HTTP_PORT": "7000"}).http_port == 7000


def test_bad_flag_value_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"--http_port"):
        build_settings({"http_port": 70000}, {})
    with pytest.raises(ConfigError, match=r"HTTP_PORT"):
        build_settings({}, {"HTTP_PORT": "abc"})
    with pytest.raises(ConfigError, match=r"--dtype.*auto, float32, bfloat16, float16"):
        build_settings({"dtype": "int3"}, {})
    with pytest.raises(ConfigError, match=r"--device"):
        build_settings({"device": "tpu"}, {})
    with pytest.raises(ConfigError, match=r"--model_class"):
        build_settings({"model_class": "no-colon"}, {})


def test_unknown_setting_is_an_error() -> None:
    with pytest.raises(ConfigError):
        build_settings({"http_prot": 1}, {})


def test_every_env_var_maps_to_a_field() -> None:
    assert set(ENV_VARS) <= set(Settings.model_fields)
    assert len(set(ENV_VARS.values())) == len(ENV_VARS)


def test_api_key_is_env_only_and_redacted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = build_settings({}, {"STEADYSERVE_API_KEY": "k1, k2"})
    assert settings.api_keys() == ["k1", "k2"]
    assert settings.redacted()["api_key"] == "***"
    key_file = tmp_path / "keys"
    key_file.write_text("k3\n\nk4\n")
    assert build_settings({"api_key_file": str(key_file)}, {}).api_keys() == ["k3", "k4"]
    with pytest.raises(ConfigError, match="api_key_file"):
        build_settings({"api_key_file": str(tmp_path / "missing")}, {})


def test_model_dir_resolution(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "m"
    model.mkdir()
    assert resolve_model_dir(build_settings({"model_dir": str(model)}, {})) == str(model)
    assert resolve_model_dir(build_settings({}, {"STORAGE_URI": str(model)})) == str(model)
    assert resolve_model_dir(build_settings({}, {"STORAGE_URI": f"file://{model}"})) == str(model)
    # --model_dir wins over STORAGE_URI
    other = tmp_path / "other"
    other.mkdir()
    settings = build_settings({"model_dir": str(other)}, {"STORAGE_URI": str(model)})
    assert resolve_model_dir(settings) == str(other)
    with pytest.raises(ConfigError, match=r"--model_dir=.*missing.*not a readable directory"):
        resolve_model_dir(build_settings({"model_dir": str(tmp_path / "missing")}, {}))
    with pytest.raises(ConfigError, match="STORAGE_URI"):
        resolve_model_dir(build_settings({}, {"STORAGE_URI": "s3://bucket/model"}))


def test_defaults_are_sane() -> None:
    settings = build_settings({}, {})
    assert settings.http_port == 8080
    assert settings.grpc_port == 8081
    assert settings.api_keys() == []
    assert settings.cors_origins == []
    assert build_settings({"cors_origins": "http://a, http://b"}, {}).cors_origins == [
        "http://a",
        "http://b",
    ]


def test_kserve_dtype_aliases() -> None:
    assert build_settings({"dtype": "float"}, {}).dtype == "float32"
    assert build_settings({"dtype": "half"}, {}).dtype == "float16"
    assert build_settings({}, {"DTYPE": "half"}).dtype == "float16"

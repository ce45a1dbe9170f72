"""The CLI parser: hyphen spellings, "did you mean", --help shows env var, default, choices."""

from __future__ import annotations

import pytest

from steadyserve.cli import _Parser, build_parser, did_you_mean
from steadyserve.settings import ENV_ONLY, ENV_VARS, ConfigError, Settings, build_settings


def test_every_flag_accepts_its_hyphen_spelling() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["serve", "--model-name", "x", "--http-port", "9000", "--max-queue-tokens", "7"]
    )
    assert (args.model_name, args.http_port, args.max_queue_tokens) == ("x", "9000", "7")


@pytest.mark.parametrize(
    ("flag", "suggestion"),
    [
        ("--model_nmae", "--model_name"),
        ("--model-nmae", "--model-name"),
        ("--http_prot", "--http_port"),
        ("--max-queue_size", "--max_queue_size"),
    ],
)
def test_unknown_flag_suggests_the_closest(flag: str, suggestion: str) -> None:
    build_parser()
    assert did_you_mean(flag, _Parser.known_flags) == f" (did you mean {suggestion}?)"
    assert did_you_mean("--zzzzzzzz", _Parser.known_flags) == ""


def test_unknown_flag_exits_2_with_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["serve", "--model_nmae", "x"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean --model_name?" in err


def test_help_shows_env_var_and_default_of_every_flag_and_choices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    usage, _, text = text.partition(" options: ")
    assert "--log_level {debug,info,warning,error}" in usage
    for field in Settings.model_fields:
        if field in ENV_ONLY:
            continue
        start = text.index(f"--{field} ")
        entry = text[start : text.index("[env", start) + len(ENV_VARS[field]) + 6]
        assert "(default: " in entry, field
        assert entry.endswith(f"[env {ENV_VARS[field]}]"), field
    assert "--dtype {auto,float32,bfloat16,float16,float,half}" in text


def test_every_setting_has_one_env_var() -> None:
    assert set(ENV_VARS) == set(Settings.model_fields)
    assert len(set(ENV_VARS.values())) == len(ENV_VARS)
    assert build_settings({}, {"STEADYSERVE_MAX_QUEUE_TOKENS": "12"}).max_queue_tokens == 12


def test_dtype_error_lists_every_accepted_value() -> None:
    with pytest.raises(ConfigError) as info:
        build_settings({"dtype": "fp8"}, {})
    assert "auto, float32, bfloat16, float16, float, half" in str(info.value)
    assert build_settings({"dtype": "half"}, {}).dtype == "float16"
    assert build_settings({"dtype": "float"}, {}).dtype == "float32"

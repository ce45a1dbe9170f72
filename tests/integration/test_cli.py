"""Start-up: configuration fails early (exit 2, one line), every PROTOCOL_VERSION works."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from steadyserve.settings import ENV_ONLY, ENV_VARS, Settings
from tests.helpers import EXAMPLE, ServerProcess, free_port, run_cli


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize("value", ["v3", "None", "http"])
def test_invalid_protocol_version_exits_2_before_any_port(value: str) -> None:
    port = free_port()
    result = run_cli(
        "serve", "--model_class", EXAMPLE, "--http_port", str(port), env={"PROTOCOL_VERSION": value}
    )
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert "PROTOCOL_VERSION" in line and repr(value) in line and "v1, v2, grpc-v2" in line


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["serve", "--model_nmae", "x"], "--model_nmae"),
        (["serve", "--model_name", "x", "--bogus"], "--bogus"),
        (["--model_name", "x", "--http-prot", "1"], "--http-prot"),
        (["serve", "--http_port", "notanumber"], "--http_port"),
        (["serve", "--enable_grpc", "maybe"], "maybe"),
        (["serve", "--model_dir", "/definitely/not/here"], "/definitely/not/here"),
        (["serve", "--model_class", "examples/nope.py"], "--model_class"),
        (["serve", "--model_class", "examples/nope.py:Model"], "examples/nope.py"),
        # a class-name typo, a class of the wrong kind, an import error: before any port opens
        (["serve", "--model_class", "examples/custom_model.py:Scalr"], "has no attribute Scalr"),
        (["serve", "--model_class", "examples/custom_model.py:TensorSpec"], "steadyserve.Model"),
        (["serve", "--model_class", "tests/models/broken_import.py:X"], "ModuleNotFoundError"),
        (["serve", "--dtype", "fp8"], "auto, float32, bfloat16, float16, float, half"),
        (["serve", "--model-nmae", "x"], "did you mean --model-name?"),
    ],
)
def test_bad_flags_exit_2_naming_them(args: list[str], needle: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert needle in _one_line(result.stderr)


def test_missing_storage_uri_dir_names_the_path() -> None:
    result = run_cli("serve", env={"STORAGE_URI": "file:///no/such/model"})
    assert result.returncode == 2
    assert "/no/such/model" in _one_line(result.stderr)


def test_help_documents_every_flag_and_env_var() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for field in Settings.model_fields:
        if field not in ENV_ONLY:
            assert f"--{field}" in text, field
    for var in ENV_VARS.values():
        assert var in text, var


def test_kserve_style_args_without_subcommand_serve() -> None:
    # KServe passes only args; the sub-command is implied.
    result = run_cli("--model_name", "x", "--unknown_flag")
    assert result.returncode == 2
    assert "--unknown_flag" in result.stderr


@pytest.mark.parametrize("value", [None, "", "v1", "v2", "grpc-v2"])
def test_every_protocol_version_serves(value: str | None) -> None:
    env = {} if value is None else {"PROTOCOL_VERSION": value}
    args = ["--model_class", EXAMPLE, "--model_name", "scaler"]
    if value == "grpc-v2":
        args += ["--grpc_port", str(free_port())]
    with ServerProcess(*args, env=env) as srv, srv.client() as c:
        r = c.post("/v1/models/scaler:predict", json={"instances": [[1.0]]})
        assert r.status_code == 200, r.text
        assert r.json() == {"predictions": [[2.0]]}
        assert "None is not a valid" not in srv.logs()


def test_kserve_huggingfaceserver_flags_start_the_server_and_are_named() -> None:
    """An InferenceService written for KServe's runtime passes flags steadyserve has no use
    for: they are accepted (type-checked), named in one warning each, and the server serves."""
    args = [
        "--model_class",
        EXAMPLE,
        "--model_name",
        "scaler",
        "--workers",
        "1",
        "--enable_docs_url",
        "false",
        "--disable_lower_case",
        "--max_length",
        "128",
        "--backend",
        "huggingface",
        "--dtype",
        "float",
        "--return_probabilities",
    ]
    with ServerProcess(*args) as srv, srv.client() as c:
        r = c.post("/v1/models/scaler:predict", json={"instances": [[1.5]]})
        assert r.status_code == 200 and r.json() == {"predictions": [[3.0]]}
        # --enable_docs_url is KServe's flag and has its effect here: docs off
        assert c.get("/docs").status_code == 404 and c.get("/openapi.json").status_code == 404
        logs = srv.logs()
    for flag in (
        "--workers=1",
        "--disable_lower_case=True",
        "--return_probabilities=True",
    ):
        assert f"{flag} is accepted for KServe compatibility and has no effect" in logs, flag
    assert "--enable_docs_url" not in logs
    assert "  max_model_len = 128" in logs and "  dtype = 'float32'" in logs


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--backend", "triton"], "valid values are auto, huggingface, vllm"),
        (["--backend", "vllm"], "--backend vllm serves Hugging Face models"),
        (["--gpu-memory-utilization", "1.5"], "--gpu_memory_utilization"),
        (["--workers", "many"], "--workers"),
        (["--max_length", "0"], "--max_model_len"),
    ],
)
def test_kserve_flags_with_bad_values_exit_2(args: list[str], needle: str) -> None:
    result = run_cli("serve", "--model_class", EXAMPLE, *args)
    assert result.returncode == 2, result.stderr
    assert needle in _one_line(result.stderr)


def test_a_model_dir_without_a_model_exits_2(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no model here")
    result = run_cli("serve", "--model_dir", str(tmp_path))
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert str(tmp_path) in line and "config.json" in line


def test_a_port_in_use_exits_2_before_any_worker() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(
            "serve", "--model_class", EXAMPLE, "--host", "127.0.0.1", "--http_port", str(port)
        )
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert f"--http_port={port}" in line and "in use" in line

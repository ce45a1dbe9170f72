"""scripts/setup.sh says what it does and runs pip only when something it reads changed (a stamp
of pyproject.toml + constraints.txt + extras + checkout). Run against a copy with a stub
``.venv/bin/python`` that records its calls: no real install."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.helpers import ROOT


def _checkout(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    for name in ("pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    stub = tmp_path / ".venv" / "bin" / "python"
    stub.parent.mkdir(parents=True)
    stub.write_text(f'#!/bin/sh\necho "$*" >> "{tmp_path}/calls"\n', encoding="utf-8")
    stub.chmod(0o755)
    return tmp_path


def _setup(root: Path, *args: str) -> tuple[list[str], str]:
    calls = root / "calls"
    calls.unlink(missing_ok=True)
    done = subprocess.run(
        ["bash", "scripts/setup.sh", *args], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    pip = [c for c in (calls.read_text().splitlines() if calls.exists() else []) if "pip" in c]
    return pip, done.stderr


def test_pip_runs_once_until_something_changes(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    pip, said = _setup(root)
    assert pip == ["-m pip install -q -c constraints.txt -e ."]
    assert "installing steadyserve" in said
    pip, said = _setup(root)
    assert pip == [] and "skipping pip" in said
    pip, _ = _setup(root, "--test")  # another extra: installs
    assert pip == ["-m pip install -q -c constraints.txt -e .[test]"]
    assert _setup(root, "--test")[0] == []
    with (root / "constraints.txt").open("a") as fh:
        fh.write("# changed\n")
    assert _setup(root)[0] == ["-m pip install -q -c constraints.txt -e ."]

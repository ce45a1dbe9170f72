"""The vLLM plugin that makes vLLM's processes die with steadyserve's worker."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from steadyserve.runtimes.vllm import plugin

PROBE = """
import ctypes, os
from steadyserve.runtimes.vllm.plugin import die_with_parent
die_with_parent()
sig = ctypes.c_int(-1)
ctypes.CDLL("libc.so.6", use_errno=True).prctl(2, ctypes.byref(sig))  # PR_GET_PDEATHSIG
print(sig.value)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
@pytest.mark.parametrize(("value", "expected"), [("1", "9"), (None, "0")])
def test_only_processes_started_for_our_worker_die_with_their_parent(
    value: str | None, expected: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != plugin.ENV}
    if value is not None:
        env[plugin.ENV] = value
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected

"""The shared bad-input battery (tests/vllm/battery.py) against our own engine. tests/vllm runs
the same cases against ``--backend vllm`` and checks both backends answer alike."""

from __future__ import annotations

import pytest

from tests.helpers import ServerProcess
from tests.vllm.battery import CASES, good_request, run_battery

pytestmark = pytest.mark.timeout(300)


def test_bad_inputs_on_the_hugging_face_engine(tiny_llama_dir: str) -> None:
    args = ("--model_dir", tiny_llama_dir, "--model_name", "m", "--backend", "huggingface")
    with ServerProcess(*args, "--max_model_len", "512") as srv, srv.client(timeout=60) as c:
        results = run_battery(c, "m")
        wrong = {k: v for k, v in results.items() if v[0] != CASES[k][2]}
        assert not wrong, wrong
        assert not [k for k, v in results.items() if "Traceback" in v[1]]
        assert good_request(c, "m").status_code == 200

"""KServe's Python SDK against steadyserve, unmodified: ``InferenceRESTClient`` (V1 and V2, JSON
and binary tensors) and ``InferenceGRPCClient`` - health, readiness, inference, and errors
(unknown model, bad input, bad shape) each followed by a good request.

The SDK runs in a subprocess (``kserve_sdk_client.py``): it cannot share a process with
``tritonclient.grpc``, which the other e2e tests import (both register the ``inference`` protobuf
package in the default pool).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import EXAMPLE, ServerProcess

if importlib.util.find_spec("kserve") is None:  # pragma: no cover - a test extra
    pytest.skip("the kserve SDK is not installed", allow_module_level=True)

CLIENT = Path(__file__).with_name("kserve_sdk_client.py")
DOUBLED = [[0.0, 2.0], [4.0, 6.0], [8.0, 10.0]]


@pytest.fixture(scope="module")
def report() -> Iterator[dict[str, Any]]:
    with ServerProcess("--model_class", EXAMPLE, "--model_name", "scaler", grpc=True) as srv:
        target = {"http": srv.url, "grpc": f"127.0.0.1:{srv.grpc_port}", "model": "scaler"}
        done = subprocess.run(
            [sys.executable, str(CLIENT)],
            input=json.dumps(target),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        yield json.loads(done.stdout)
        # the server is still healthy after everything the SDK sent
        with srv.client() as c:
            assert c.get("/v2/health/ready").status_code == 200


def test_rest_v1(report: dict[str, Any]) -> None:
    v1 = report["v1"]
    assert v1["live"] == {"ok": True}
    assert v1["model_ready"] == {"ok": True}
    assert v1["unknown_ready"]["error"] == 404
    assert v1["predict"] == {"ok": {"predictions": DOUBLED}}
    assert v1["bad_input"]["error"] == 400
    assert v1["unknown_model"]["error"] == 404
    assert "no-such-model" in v1["unknown_model"]["message"]
    assert v1["predict_after"] == {"ok": {"predictions": [[10.0, 12.0]]}}


def test_rest_v2_json_and_binary(report: dict[str, Any]) -> None:
    v2 = report["v2"]
    assert v2["live"] == v2["ready"] == v2["model_ready"] == {"ok": True}
    assert v2["unknown_ready"] == {"ok": False}
    for key in ("infer_json", "infer_binary", "infer_after"):
        assert v2[key] == {"ok": {"id": "sdk-1", "model": "scaler", "outputs": [DOUBLED]}}, key
    assert v2["bad_shape"]["error"] == 400
    assert v2["unknown_model"]["error"] == 404


def test_grpc(report: dict[str, Any]) -> None:
    g = report["grpc"]
    assert g["live"] == g["ready"] == g["model_ready"] == {"ok": True}
    for key in ("infer", "infer_after"):
        assert g[key] == {"ok": {"id": "sdk-1", "model": "scaler", "outputs": [DOUBLED]}}, key
    assert g["bad_shape"]["error"] == "INVALID_ARGUMENT"
    assert g["unknown_model"]["error"] == "NOT_FOUND"

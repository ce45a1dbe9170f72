"""The KServe ServingRuntime, run the way KServe runs it: the container's command and args from
deploy/kserve/serving-runtime.yaml with ``{{.Name}}`` rendered, its env, STORAGE_URI pointing at
the model (no --model_dir) - plus only --host/--http_port so the test can bind 127.0.0.1 on a free
port. The probes and the Prometheus path from the YAML answer, and V1 predict works."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.helpers import ROOT, free_port

RUNTIME = ROOT / "deploy" / "kserve" / "serving-runtime.yaml"
NAME = "sst2-kserve"
#: variables from the developer's shell that must not leak into the server
SCRUB = {
    "PROTOCOL_VERSION",
    "STORAGE_URI",
    "MODEL_NAME",
    "MODEL_ID",
    "MODEL_CLASS",
    "STEADYSERVE_API_KEY",
    "STEADYSERVE_API_KEY_FILE",
    "HTTP_PORT",
    "GRPC_PORT",
    "LOG_FORMAT",
}


def container_spec() -> dict[str, Any]:
    doc = yaml.safe_load(RUNTIME.read_text(encoding="utf-8"))
    [container] = doc["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def test_server_starts_from_the_runtime_args(tiny_bert_cls_dir: str) -> None:
    container = container_spec()
    argv = [a.replace("{{.Name}}", NAME) for a in container["command"] + container["args"]]
    assert argv[0] == "steadyserve" and "--model_dir" not in " ".join(argv)
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    env["STORAGE_URI"] = tiny_bert_cls_dir  # what KServe sets; the model is local here
    env.setdefault("STEADYSERVE_WORKER_LOG_LEVEL", "WARNING")
    port = free_port()
    # `steadyserve` is the console script of `python -m steadyserve`
    cmd = [
        sys.executable,
        "-m",
        "steadyserve",
        *argv[1:],
        "--host",
        "127.0.0.1",
        "--http_port",
        str(port),
    ]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))

        def logs() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")[-10000:]

        try:
            ready = container["readinessProbe"]["httpGet"]["path"]
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, logs()
                try:
                    if httpx.get(url + ready, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, logs()
                time.sleep(0.2)
            with httpx.Client(base_url=url, timeout=30) as c:
                assert c.get(container["livenessProbe"]["httpGet"]["path"]).status_code == 200
                r = c.post(f"/v1/models/{NAME}:predict", json={"instances": ["I love this movie"]})
                assert r.status_code == 200, r.text
                assert r.json()["predictions"][0] in ("negative", "positive")
                assert c.get("/v1/models").json()["models"] == [NAME]
                metrics = c.get("/metrics")
                assert metrics.status_code == 200
                assert f'model="{NAME}"' in metrics.text
            # LOG_FORMAT=json from the runtime's env: the logs are JSON lines
            assert any(
                line.startswith("{") and '"request_id"' in line for line in logs().splitlines()
            )
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
                raise
        assert code == 0, logs()
    assert Path(tiny_bert_cls_dir).is_dir()

"""deploy/kserve: the runtimes and InferenceServices parse, say what KServe needs, and every flag
they pass is one our CLI accepts; the Dockerfile is CPU by default, non-root, same entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from steadyserve.cli import build_parser
from steadyserve.settings import ENV_VARS

ROOT = Path(__file__).resolve().parents[2]
KSERVE = ROOT / "deploy" / "kserve"
RUNTIMES = {
    "cluster-serving-runtime.yaml": "ClusterServingRuntime",
    "serving-runtime.yaml": "ServingRuntime",
}
SERVICES = [
    "inferenceservice-hf.yaml",
    "inferenceservice-custom.yaml",
    "inferenceservice-grpc.yaml",
]
#: env vars KServe or the platform set that are not ours
FOREIGN_ENV = {"PROTOCOL_VERSION", "STORAGE_URI"}


def load(name: str) -> dict[str, Any]:
    docs = list(yaml.safe_load_all((KSERVE / name).read_text(encoding="utf-8")))
    assert len(docs) == 1
    assert isinstance(docs[0], dict)
    return docs[0]


def render(args: list[str], name: str = "my-model") -> list[str]:
    return [a.replace("{{.Name}}", name) for a in args]


def assert_cli_accepts(args: list[str]) -> None:
    """Parse with the real parser: an unknown or invalid flag exits (SystemExit)."""
    parsed = build_parser().parse_args(args)
    assert parsed.command == "serve"


@pytest.mark.parametrize(("name", "kind"), sorted(RUNTIMES.items()))
def test_runtime(name: str, kind: str) -> None:
    doc = load(name)
    assert doc["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert doc["kind"] == kind
    spec = doc["spec"]
    formats = {f["name"]: f for f in spec["supportedModelFormats"]}
    assert formats["huggingface"]["autoSelect"] is True
    assert "steadyserve" in formats
    assert spec["protocolVersions"] == ["v1", "v2", "grpc-v2"]
    assert spec["annotations"]["prometheus.kserve.io/port"] == "8080"
    assert spec["annotations"]["prometheus.kserve.io/path"] == "/metrics"
    [container] = spec["containers"]
    assert container["name"] == "kserve-container"
    command = container["command"] + container["args"]
    assert command[:2] == ["steadyserve", "serve"]
    assert "--model_name={{.Name}}" in command
    assert not any(a.startswith("--model_dir") for a in command)  # /mnt/models or STORAGE_URI
    assert "--http_port=8080" in command and "--grpc_port=8081" in command
    assert_cli_accepts(render(command[1:]))
    assert container["ports"][0]["containerPort"] == 8080
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert container["securityContext"]["runAsNonRoot"] is True
    ours = set(ENV_VARS.values())
    for env in container.get("env", []):
        assert env["name"] in ours, env["name"]
        if "valueFrom" in env:  # secrets are optional: no secret, no auth, still starts
            assert env["valueFrom"]["secretKeyRef"]["optional"] is True


def test_cluster_and_namespaced_runtimes_match() -> None:
    cluster, namespaced = load("cluster-serving-runtime.yaml"), load("serving-runtime.yaml")
    assert cluster["spec"] == namespaced["spec"]


@pytest.mark.parametrize("name", SERVICES)
def test_inference_service(name: str) -> None:
    doc = load(name)
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert doc["kind"] == "InferenceService"
    model = doc["spec"]["predictor"]["model"]
    runtime = load("cluster-serving-runtime.yaml")
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert "://" in model["storageUri"]
    args = runtime["spec"]["containers"][0]["args"] + model.get("args", [])
    assert_cli_accepts(render(args))
    for env in model.get("env", []):
        assert env["name"] in set(ENV_VARS.values()) | FOREIGN_ENV, env["name"]
    if model.get("protocolVersion") == "grpc-v2":
        assert {"name": "PROTOCOL_VERSION", "value": "grpc-v2"} in model["env"]
        assert model["ports"][0]["containerPort"] == 8081


def test_dockerfile() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    assert "ARG TORCH_VERSION=2.13.0" in text
    assert "ARG TORCH_VARIANT=cpu" in text
    assert "download.pytorch.org/whl/${TORCH_VARIANT}" in text
    assert "USER 1000" in text
    assert 'ENTRYPOINT ["steadyserve"]' in text

"""V2 outputs of a predict-only model over REST (JSON and binary) and gRPC, against a real
server: the declared datatypes are what goes out, empty batches keep datatype and shape, BYTES
outputs carry their exact bytes (or fail clearly as JSON), declared versions are the only ones
served - each error followed by a good request."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from steadyserve.protocol.grpc_gen import grpc_predict_v2_pb2 as pb
from steadyserve.protocol.grpc_gen import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.helpers import ServerProcess, make_repository

TYPED_MODEL = '''
import msgspec

import steadyserve
from steadyserve import TensorSpec


class Typed(steadyserve.Model):
    """Declares FP16 / FP64 / INT8 / BYTES outputs and versions 2 and 3; returns Python floats,
    ints and bytes (b"\\x00\\xff" for "bin"; an FP16 overflow for "big"), plus one undeclared
    float output."""

    inputs = [TensorSpec("text", "BYTES", [-1])]
    outputs = [
        TensorSpec("h2", "FP16", [-1]),
        TensorSpec("d", "FP64", [-1]),
        TensorSpec("i8", "INT8", [-1]),
        TensorSpec("raw", "BYTES", [-1]),
    ]

    def load(self):
        pass

    def predict(self, instances):
        return [
            {
                "h2": 1e6 if text == "big" else 0.5,
                "d": 0.1,
                "i8": -3,
                "raw": b"\\x00\\xff" if text == "bin" else text.encode(),
                "free": 0.1,
            }
            for text in instances
        ]

    def info(self):
        return msgspec.structs.replace(super().info(), versions=["2", "3"])
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    src = tmp_path_factory.mktemp("src") / "typed.py"
    src.write_text(TYPED_MODEL, encoding="utf-8")
    repo = make_repository(tmp_path_factory.mktemp("repo"), typed=f"{src}:Typed")
    with ServerProcess(
        "--model_repository", str(repo), "--max_batch_wait_ms", "1", grpc=True
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[Any]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def body(*texts: str, **extra: Any) -> dict[str, Any]:
    tensor = {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": list(texts)}
    return {"inputs": [tensor], **extra}


def grpc_request(*texts: str, version: str = "") -> Any:
    msg = pb.ModelInferRequest(model_name="typed", model_version=version)
    tensor = msg.inputs.add(name="text", datatype="BYTES", shape=[len(texts)])
    tensor.contents.bytes_contents.extend(t.encode() for t in texts)
    return msg


def assert_good(client: httpx.Client, stub: Any) -> None:
    r = client.post("/v2/models/typed/infer", json=body("a", "b"))
    assert r.status_code == 200, r.text
    outs = {o["name"]: o for o in r.json()["outputs"]}
    assert outs["raw"]["data"] == ["a", "b"]
    resp = stub.ModelInfer(grpc_request("a"), timeout=30)
    assert {o.name for o in resp.outputs} == {"h2", "d", "i8", "raw", "free"}


def test_declared_datatypes_over_rest_and_grpc(client: httpx.Client, stub: Any) -> None:
    r = client.post("/v2/models/typed/infer", json=body("a", "b"))
    assert r.status_code == 200, r.text
    outs = {o["name"]: o for o in r.json()["outputs"]}
    assert {n: o["datatype"] for n, o in outs.items()} == {
        "h2": "FP16",
        "d": "FP64",
        "i8": "INT8",
        "raw": "BYTES",
        "free": "FP64",
    }
    assert outs["d"]["data"] == [0.1, 0.1]  # FP64: not narrowed to FP32
    assert outs["i8"]["data"] == [-3, -3]
    resp = stub.ModelInfer(grpc_request("a"), timeout=30)
    by_name = {o.name: o for o in resp.outputs}
    assert {n: o.datatype for n, o in by_name.items()} == {
        "h2": "FP16",
        "d": "FP64",
        "i8": "INT8",
        "raw": "BYTES",
        "free": "FP64",
    }
    index = [o.name for o in resp.outputs].index("h2")  # FP16 goes raw: all outputs are raw
    assert np.frombuffer(resp.raw_output_contents[index], dtype="<f2").tolist() == [0.5]


def test_empty_batch_keeps_declared_datatypes(client: httpx.Client, stub: Any) -> None:
    r = client.post("/v2/models/typed/infer", json=body())
    assert r.status_code == 200, r.text
    outs = {o["name"]: (o["datatype"], o["shape"], o["data"]) for o in r.json()["outputs"]}
    assert outs == {
        "h2": ("FP16", [0], []),
        "d": ("FP64", [0], []),
        "i8": ("INT8", [0], []),
        "raw": ("BYTES", [0], []),
    }
    assert_good(client, stub)


def test_unrepresentable_output_is_500_on_rest_and_internal_on_grpc(
    client: httpx.Client, stub: Any
) -> None:
    r = client.post("/v2/models/typed/infer", json=body("big"))
    assert r.status_code == 500, r.text
    assert r.json() == {"error": "output 'h2': a value is out of range for FP16"}
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(grpc_request("big"), timeout=30)
    assert info.value.code() == grpc.StatusCode.INTERNAL  # type: ignore[attr-defined]
    assert info.value.details() == r.json()["error"]  # type: ignore[attr-defined]
    assert_good(client, stub)


def test_non_utf8_bytes_exact_or_a_clear_error(client: httpx.Client, stub: Any) -> None:
    r = client.post("/v2/models/typed/infer", json=body("bin"))
    assert r.status_code == 500, r.text
    error = r.json()["error"]
    assert "output 'raw'" in error and "not valid UTF-8" in error and "binary_data" in error
    assert "Traceback" not in r.text and "\ufffd" not in r.text
    assert_good(client, stub)
    # The binary tensor extension carries the exact bytes.
    r = client.post(
        "/v2/models/typed/infer",
        json=body("bin", outputs=[{"name": "raw", "parameters": {"binary_data": True}}]),
    )
    assert r.status_code == 200, r.text
    length = int(r.headers["inference-header-content-length"])
    header = json.loads(r.content[:length])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 6
    assert r.content[length:] == struct.pack("<I", 2) + b"\x00\xff"
    # So does gRPC (typed contents here).
    msg = grpc_request("bin")
    msg.outputs.add(name="raw")
    msg.outputs.add(name="d")
    resp = stub.ModelInfer(msg, timeout=30)
    raw = next(o for o in resp.outputs if o.name == "raw")
    assert list(raw.contents.bytes_contents) == [b"\x00\xff"]
    assert_good(client, stub)


def test_declared_versions_only(server: ServerProcess, client: httpx.Client, stub: Any) -> None:
    assert client.get("/v2/models/typed").json()["versions"] == ["2", "3"]
    assert list(stub.ModelMetadata(pb.ModelMetadataRequest(name="typed")).versions) == ["2", "3"]
    r = client.post("/v2/models/typed/versions/3/infer", json=body("a"))
    assert r.status_code == 200 and r.json()["model_version"] == "3"
    assert stub.ModelInfer(grpc_request("a", version="2"), timeout=30).model_version == "2"
    for method, path in [
        ("post", "/v2/models/typed/versions/1/infer"),
        ("get", "/v2/models/typed/versions/1"),
        ("get", "/v2/models/typed/versions/1/ready"),
    ]:
        r = client.request(method.upper(), path, json=body("a") if method == "post" else None)
        assert r.status_code == 404, r.text
        assert r.json() == {"error": "model typed has no version '1'; its versions: 2, 3"}
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(grpc_request("a", version="1"), timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert info.value.details() == "model typed has no version '1'; its versions: 2, 3"  # type: ignore[attr-defined]
    # The other listings are unaffected.
    assert client.get("/v1/models").json()["models"] == ["typed"]
    assert client.get("/openai/v1/models").json()["data"][0]["id"] == "typed"
    assert_good(client, stub)

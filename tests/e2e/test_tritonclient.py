"""Real Triton clients against steadyserve: tritonclient.http (JSON and the binary tensor
extension) and tritonclient.grpc - health, metadata, inference, errors, model repository load and
unload - with two models in one server."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.helpers import ServerProcess, make_repository

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

X = np.arange(6, dtype=np.float32).reshape(3, 2)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_bert_cls_dir: str, tiny_gpt2_dir: str
) -> Iterator[ServerProcess]:
    """One server, four models: two custom ones, a Hugging Face classifier and a generator."""
    repo = make_repository(tmp_path_factory.mktemp("repo"))
    os.symlink(tiny_bert_cls_dir, repo / "bert")
    os.symlink(tiny_gpt2_dir, repo / "gpt2")
    with ServerProcess(
        "--model_repository",
        str(repo),
        "--graceful_shutdown_s",
        "1",
        "--max_batch_wait_ms",
        "1",
        grpc=True,
        ready_timeout=150,
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[Any]:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=30)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(server: ServerProcess) -> Iterator[Any]:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    yield client
    client.close()


def http_infer(http: Any, binary_in: bool, binary_out: bool | None) -> np.ndarray:
    tensor = httpclient.InferInput("x", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X, binary_data=binary_in)
    outputs = None
    if binary_out is not None:
        outputs = [httpclient.InferRequestedOutput("y", binary_data=binary_out)]
    result = http.infer("scaler", [tensor], outputs=outputs, request_id="r1")
    assert result.get_response()["id"] == "r1"
    out = result.as_numpy("y")
    assert out is not None
    return np.asarray(out)


def grpc_infer(client: Any, model: str = "scaler") -> np.ndarray:
    tensor = grpcclient.InferInput("x", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    out = client.infer(model, [tensor], client_timeout=30).as_numpy("y")
    assert out is not None
    return np.asarray(out)


def test_http_health_and_metadata(http: Any) -> None:
    assert http.is_server_live() and http.is_server_ready()
    assert http.is_model_ready("scaler") and http.is_model_ready("faulty")
    meta = http.get_server_metadata()
    assert meta["name"] == "steadyserve" and "binary_tensor_data" in meta["extensions"]
    model = http.get_model_metadata("scaler")
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}]


@pytest.mark.parametrize("binary_in", [False, True])
@pytest.mark.parametrize("binary_out", [None, False, True])
def test_http_infer_json_and_binary(http: Any, binary_in: bool, binary_out: bool | None) -> None:
    assert http_infer(http, binary_in, binary_out).tolist() == (X * 2).tolist()


def test_http_bytes_binary(http: Any) -> None:
    tensor = httpclient.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(
        np.array([b"ab", "c\u00e9".encode()], dtype=object), binary_data=True
    )
    result = http.infer("faulty", [tensor])
    out = result.as_numpy("output-0")
    assert [v.decode() if isinstance(v, bytes) else v for v in out.tolist()] == ["AB", "C\u00c9"]


def test_http_errors_then_good(http: Any) -> None:
    tensor = httpclient.InferInput("x", [6], "FP32")
    tensor.set_data_from_numpy(X.reshape(6))
    with pytest.raises(InferenceServerException) as info:
        http.infer("scaler", [tensor])
    assert info.value.status() == "400" and "shape" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        http.infer("nope", [tensor])
    assert info.value.status() == "404"
    assert http_infer(http, True, True).tolist() == (X * 2).tolist()


def test_versions_and_class_count(http: Any, grpc_client: Any) -> None:
    """A model that declares no versions serves "1" and no version, nothing else; Triton's
    classification extension (``class_count``) is refused, not silently ignored."""
    assert http.get_model_metadata("scaler")["versions"] == ["1"]
    assert grpc_client.get_model_metadata("scaler", as_json=True)["versions"] == ["1"]
    assert http.is_model_ready("scaler", "1") and grpc_client.is_model_ready("scaler", "1")
    tensor = httpclient.InferInput("x", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    result = http.infer("scaler", [tensor], model_version="1")
    assert result.get_response()["model_version"] == "1"
    with pytest.raises(InferenceServerException) as info:
        http.infer("scaler", [tensor], model_version="999")
    assert info.value.status() == "404" and "its versions: 1" in info.value.message()
    gtensor = grpcclient.InferInput("x", list(X.shape), "FP32")
    gtensor.set_data_from_numpy(X)
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer("scaler", [gtensor], model_version="999")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    outputs = [httpclient.InferRequestedOutput("y", class_count=2)]
    with pytest.raises(InferenceServerException) as info:
        http.infer("scaler", [tensor], outputs=outputs)
    assert info.value.status() == "400" and "classification" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer(
            "scaler", [gtensor], outputs=[grpcclient.InferRequestedOutput("y", class_count=2)]
        )
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "classification" in info.value.message()
    assert grpc_infer(grpc_client).tolist() == (X * 2).tolist()
    assert http_infer(http, True, True).tolist() == (X * 2).tolist()


def test_grpc_health_metadata_infer(grpc_client: Any) -> None:
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert grpc_client.is_model_ready("scaler")
    meta = grpc_client.get_server_metadata(as_json=True)
    assert meta["name"] == "steadyserve"
    model = grpc_client.get_model_metadata("scaler", as_json=True)
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "-1"]}]
    assert grpc_infer(grpc_client).tolist() == (X * 2).tolist()
    text = grpcclient.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"hi"], dtype=object))
    assert grpc_client.infer("faulty", [text]).as_numpy("output-0").tolist() == [b"HI"]


def test_grpc_errors_then_good(grpc_client: Any) -> None:
    tensor = grpcclient.InferInput("x", [6], "FP32")
    tensor.set_data_from_numpy(X.reshape(6))
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer("scaler", [tensor])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer("nope", [tensor])
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert grpc_infer(grpc_client).tolist() == (X * 2).tolist()


def test_load_unload_round_trips(http: Any, grpc_client: Any) -> None:
    index = {m["name"]: m["state"] for m in http.get_model_repository_index()}
    assert index == {"bert": "READY", "faulty": "READY", "gpt2": "READY", "scaler": "READY"}
    grpc_client.unload_model("scaler")
    assert not http.is_model_ready("scaler")
    with pytest.raises(InferenceServerException) as info:
        grpc_infer(grpc_client)
    assert info.value.status() == "StatusCode.NOT_FOUND"
    states = {m.name: m.state for m in grpc_client.get_model_repository_index().models}
    assert states == {"bert": "READY", "faulty": "READY", "gpt2": "READY", "scaler": "UNAVAILABLE"}
    http.load_model("scaler")
    assert grpc_client.is_model_ready("scaler")
    assert http_infer(http, True, True).tolist() == (X * 2).tolist()
    http.unload_model("scaler")
    with pytest.raises(InferenceServerException) as info:
        http_infer(http, False, None)
    assert info.value.status() == "404"
    grpc_client.load_model("scaler")
    assert grpc_infer(grpc_client).tolist() == (X * 2).tolist()
    with pytest.raises(InferenceServerException) as info:
        grpc_client.load_model("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as info:
        http.load_model("scaler", config="{}")
    assert info.value.status() == "400"
    assert http.is_model_ready("scaler")


def texts(module: Any, values: list[str], binary: bool = True) -> Any:
    tensor = module.InferInput("text", [len(values)], "BYTES")
    array = np.array([v.encode() for v in values], dtype=object)
    if module is httpclient:
        tensor.set_data_from_numpy(array, binary_data=binary)
    else:
        tensor.set_data_from_numpy(array)
    return tensor


def decoded(values: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).reshape(-1)]


@pytest.mark.parametrize("binary", [False, True])
def test_http_hf_classifier(http: Any, binary: bool) -> None:
    meta = http.get_model_metadata("bert")
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    outputs = [httpclient.InferRequestedOutput("label", binary_data=binary)]
    result = http.infer("bert", [texts(httpclient, ["good", "bad"], binary)], outputs=outputs)
    labels = decoded(result.as_numpy("label"))
    assert len(labels) == 2 and set(labels) <= {"negative", "positive"}
    with pytest.raises(InferenceServerException) as info:
        http.infer("bert", [texts(httpclient, ["fine"])], parameters={"return_all_scores": "yes"})
    assert info.value.status() == "400"


def test_grpc_hf_classifier_and_generator(grpc_client: Any) -> None:
    result = grpc_client.infer("bert", [texts(grpcclient, ["good", "bad"])])
    labels = decoded(result.as_numpy("label"))
    assert len(labels) == 2 and set(labels) <= {"negative", "positive"}
    result = grpc_client.infer(
        "gpt2", [texts(grpcclient, ["hello"])], parameters={"max_new_tokens": 3}
    )
    out = decoded(result.as_numpy("text"))
    assert len(out) == 1 and isinstance(out[0], str)
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer("gpt2", [texts(grpcclient, ["hello"])], parameters={"max_new_tokens": 0})
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert grpc_infer(grpc_client).tolist() == (X * 2).tolist()


def _binary(size: int, data: bytes, header_length: str | None = None) -> dict[str, Any]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1, 2],
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    ).encode()
    length = str(len(header)) if header_length is None else header_length
    return {"content": header + data, "headers": {"Inference-Header-Content-Length": length}}


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (_binary(8, b"\0" * 8, "abc"), "Inference-Header-Content-Length"),
        (_binary(8, b"\0" * 8, "-5"), "Inference-Header-Content-Length"),
        (_binary(8, b"\0" * 8, "100000"), "exceeds the body length"),
        (_binary(8, b"\0" * 8, "10"), "not valid JSON"),
        (_binary(16, b"\0" * 8), "exceeds"),
        (_binary(4, b"\0" * 8), "sum to 4"),
        (_binary(4, b"\0" * 4), "needs 8 bytes"),
        (_binary(-1, b""), "integer >= 0"),
        ({"content": _binary(8, b"\0" * 8)["content"]}, "JSON"),  # binary without the header
    ],
)
def test_rest_binary_errors_then_good(
    server: ServerProcess, http: Any, kwargs: dict[str, Any], needle: str
) -> None:
    r = httpx.post(f"{server.url}/v2/models/scaler/infer", timeout=30, **kwargs)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]
    good = httpx.post(
        f"{server.url}/v2/models/scaler/infer",
        timeout=30,
        **_binary(8, np.array([1, 2], dtype="<f4").tobytes()),
    )
    assert good.status_code == 200 and good.json()["outputs"][0]["data"] == [2.0, 4.0]
    assert http_infer(http, True, True).tolist() == (X * 2).tolist()


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_http_compressed_requests_and_responses(http: Any, algorithm: str) -> None:
    """tritonclient's request_compression_algorithm (Content-Encoding) and
    response_compression_algorithm, with binary and JSON tensors."""
    for binary in (True, False):
        tensor = httpclient.InferInput("x", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X, binary_data=binary)
        result = http.infer(
            "scaler",
            [tensor],
            request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm,
        )
        np.testing.assert_allclose(result.as_numpy("y"), X * 2)

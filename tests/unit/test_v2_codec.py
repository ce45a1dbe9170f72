"""V2 JSON codec: every tensor check is a 400 (InvalidInput); good tensors round-trip."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from steadyserve.engine.bridge import infer_to_instances, predictions_to_infer
from steadyserve.errors import InvalidInput, ModelError, ModelNotFound
from steadyserve.model import Model
from steadyserve.protocol import v1, v2
from steadyserve.types import InferRequest, ModelInfo, TensorSpec, tensor_from_numpy


def body(**inp: Any) -> dict[str, Any]:
    tensor = {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}
    tensor.update(inp)
    return {"inputs": [tensor]}


@pytest.mark.parametrize(
    ("datatype", "data", "dtype"),
    [
        ("FP32", [1.5, 2, 3, 4], np.float32),
        ("FP64", [1.5, 2, 3, 4], np.float64),
        ("FP16", [1.5, 2, 3, 4], np.float16),
        ("INT8", [-1, 2, 3, 4], np.int8),
        ("INT32", [1, 2, 3, 4], np.int32),
        ("INT64", [1, 2, 3, 2**40], np.int64),
        ("UINT8", [0, 2, 3, 255], np.uint8),
        ("UINT64", [0, 2, 3, 4], np.uint64),
        ("BOOL", [True, False, True, True], np.bool_),
    ],
)
def test_numeric_datatypes_round_trip(datatype: str, data: list[Any], dtype: Any) -> None:
    req = v2.decode_infer_request(body(datatype=datatype, data=data))
    arr = req.inputs[0].to_numpy()
    assert arr.dtype == np.dtype(dtype)
    assert arr.shape == (2, 2)
    assert arr.reshape(-1).tolist() == [dtype(v).item() for v in data]
    encoded = v2.tensor_to_json(req.inputs[0])
    assert encoded["data"] == [dtype(v).item() for v in data]


def test_bytes_and_nested_data() -> None:
    req = v2.decode_infer_request(body(datatype="BYTES", shape=[2], data=["héllo", "world"]))
    assert req.inputs[0].data == ["héllo".encode(), b"world"]
    nested = v2.decode_infer_request(body(data=[[1, 2], [3, 4]]))
    assert nested.inputs[0].to_numpy().tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ([], "JSON object"),
        ({"inputs": []}, "non-empty"),
        ({"inputs": "x"}, "non-empty"),
        ({"inputs": [1]}, "object"),
        (body(name=""), "name"),
        (body(datatype="FP128"), "datatype"),
        (body(shape=[2, "2"]), "shape"),
        (body(shape=[-1, 4]), ">= 0"),
        (body(shape=[3, 2]), "needs 6 elements, got 4"),
        (body(data=[1, 2, 3]), "needs 4 elements"),
        (body(data=[1, 2, 3, "4"]), "numbers"),
        (body(datatype="INT8", data=[1, 2, 3, 400]), "out of range"),
        (body(datatype="UINT8", data=[1, 2, 3, -1]), "out of range"),
        (body(datatype="INT32", data=[1, 2, 3, 4.5]), "integers"),
        (body(datatype="BOOL", data=[1, 0, 1, 0]), "true/false"),
        (body(datatype="BYTES", data=[1, 2, 3, 4]), "strings"),
        (body(datatype="FP16", data=[1, 2, 3, 1e10]), "out of range"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}, "no 'data'"),
        ({**body(), "parameters": []}, "parameters"),
        ({**body(), "outputs": "y"}, "outputs"),
        ({**body(), "id": 5}, "'id'"),
        ({"inputs": [body()["inputs"][0], body()["inputs"][0]]}, "twice"),
    ],
)
def test_bad_tensors_are_invalid_input(payload: Any, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        v2.decode_infer_request(payload)


def test_deeply_nested_data_is_refused() -> None:
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    with pytest.raises(InvalidInput, match="nested"):
        v2.decode_infer_request(body(shape=[1], data=deep))


def test_metadata_checks() -> None:
    info = ModelInfo(
        name="m",
        inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 2])],
        outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 2])],
    )
    v2.check_against_metadata(v2.decode_infer_request(body()), info)
    for payload, needle in [
        (body(name="z"), "unknown input 'z'"),
        (body(datatype="INT32"), "datatype INT32 does not match"),
        (body(shape=[4, 1]), r"shape \[4, 1\] does not match"),
        (body(shape=[4]), "shape"),
        ({**body(), "outputs": [{"name": "nope"}]}, "unknown requested output"),
    ]:
        with pytest.raises(InvalidInput, match=needle):
            v2.check_against_metadata(v2.decode_infer_request(payload), info)


def test_v1_decode() -> None:
    assert v1.decode_predict_request({"instances": [1, 2]}).instances == [1, 2]
    assert v1.decode_predict_request({"inputs": [1]}).instances == [1]
    for bad in [[], {}, {"instances": []}, {"instances": 3}, {"instances": [1], "parameters": 1}]:
        with pytest.raises(InvalidInput):
            v1.decode_predict_request(bad)


class _M(Model):
    outputs = [TensorSpec(name="y", datatype="FP32", shape=[-1])]


def test_infer_bridge_rows_and_back() -> None:
    req = InferRequest(
        inputs=[tensor_from_numpy("x", np.arange(6, dtype=np.float32).reshape(3, 2))]
    )
    rows = infer_to_instances(req)
    assert rows == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    resp = predictions_to_infer(_M("m"), req, [sum(r) for r in rows])
    assert resp.outputs[0].name == "y"
    assert resp.outputs[0].to_numpy().tolist() == [1.0, 5.0, 9.0]
    texts = InferRequest(inputs=[tensor_from_numpy("t", np.array([b"a", b"b"], dtype=object))])
    assert infer_to_instances(texts) == ["a", "b"]
    out = predictions_to_infer(Model("m"), texts, ["A", "B"])  # nothing declared: BYTES
    assert out.outputs[0].datatype == "BYTES"
    with pytest.raises(ModelError, match="'y' is declared FP32"):  # y is declared FP32
        predictions_to_infer(_M("m"), texts, ["A", "B"])
    two = InferRequest(
        inputs=[
            tensor_from_numpy("a", np.array([1, 2], dtype=np.int32)),
            tensor_from_numpy("b", np.array([3, 4], dtype=np.int32)),
        ]
    )
    assert infer_to_instances(two) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
    bad = InferRequest(
        inputs=[
            tensor_from_numpy("a", np.array([1, 2], dtype=np.int32)),
            tensor_from_numpy("b", np.array([3], dtype=np.int32)),
        ]
    )
    with pytest.raises(InvalidInput, match="first dimension"):
        infer_to_instances(bad)


@pytest.mark.parametrize(
    ("body_extra", "needle"),
    [
        (
            {"outputs": [{"name": "y", "parameters": {"classification": 2}}]},
            "output 'y': parameter 'classification' .* is not supported",
        ),
        (
            {"outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}]},
            "output 'y': parameter 'binary_data' must be a boolean",
        ),
        ({"outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}, "must be a boolean"),
        ({"parameters": {"binary_data_output": "true"}}, "'binary_data_output' must be a boolean"),
    ],
)
def test_output_parameters_are_checked_not_ignored(body_extra: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        v2.decode_infer_request({**body(), **body_extra})
    ok = v2.decode_infer_request(
        {**body(), "outputs": [{"name": "y", "parameters": {"binary_data": False}}]}
    )
    assert ok.outputs is not None and ok.outputs[0].parameters == {"binary_data": False}


def test_non_utf8_bytes_never_go_out_altered_as_json() -> None:
    tensor = tensor_from_numpy("raw", np.array([b"ok", b"\x00\xff"], dtype=object))
    with pytest.raises(ModelError, match="'raw': BYTES element 1 is not valid UTF-8.*binary_data"):
        v2.tensor_to_json(tensor)
    text = tensor_from_numpy("t", np.array(["caf\u00e9".encode()], dtype=object))
    assert v2.tensor_to_json(text)["data"] == ["caf\u00e9"]


def test_versions() -> None:
    plain = ModelInfo(name="m")
    assert v2.model_metadata(plain)["versions"] == ["1"]
    for version in (None, "", "1"):
        v2.check_version(plain, version)
    with pytest.raises(ModelNotFound, match="model m has no version '999'; its versions: 1"):
        v2.check_version(plain, "999")
    declared = ModelInfo(name="m", versions=["2", "3"])
    assert v2.model_metadata(declared)["versions"] == ["2", "3"]
    v2.check_version(declared, "3")
    with pytest.raises(ModelNotFound, match="its versions: 2, 3"):
        v2.check_version(declared, "1")
    v2.check_version(None, "999")  # not loaded yet: unknown, the caller answers 503

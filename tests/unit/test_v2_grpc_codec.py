"""V2 gRPC codec: typed and raw contents decode to the same tensors, every malformed message is
InvalidInput, responses are raw when asked/needed; the committed stubs match the proto; every
error class maps to a real gRPC status code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from steadyserve.errors import ALL_ERRORS, InvalidInput, ModelNotFound, QueueFull
from steadyserve.protocol import v2_grpc
from steadyserve.protocol.grpc_gen import grpc_predict_v2_pb2 as pb
from steadyserve.transport.grpc import status_of
from steadyserve.types import (
    InferRequest,
    InferResponse,
    ModelInfo,
    RequestedOutput,
    TensorSpec,
    tensor_from_numpy,
)

ROOT = Path(__file__).resolve().parents[2]


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    """The stubs are generated, never hand-edited: regenerating gives identical files."""
    pytest.importorskip("grpc_tools")
    from importlib.metadata import version

    from steadyserve.protocol.grpc_gen import grpc_predict_v2_pb2_grpc

    generated_with = grpc_predict_v2_pb2_grpc.GRPC_GENERATED_VERSION
    if version("grpcio-tools") != generated_with:
        pytest.skip(f"stubs come from grpcio-tools {generated_with} (see constraints.txt)")
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_grpc.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    committed = ROOT / "src" / "steadyserve" / "protocol" / "grpc_gen"
    for name in (
        "grpc_predict_v2_pb2.py",
        "grpc_predict_v2_pb2.pyi",
        "grpc_predict_v2_pb2_grpc.py",
        "__init__.py",
    ):
        assert (tmp_path / name).read_bytes() == (committed / name).read_bytes(), name


def request_with(
    datatype: str, shape: list[int], field: str | None, values: list[Any], raw: bytes | None = None
) -> Any:
    msg = pb.ModelInferRequest(model_name="m", id="r1")
    tensor = msg.inputs.add(name="x", datatype=datatype, shape=shape)
    if raw is not None:
        msg.raw_input_contents.append(raw)
    elif field is not None:
        getattr(tensor.contents, field).extend(values)
    return msg


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("BOOL", [True, False, True, True]),
        ("INT8", [-128, 0, 5, 127]),
        ("INT16", [-300, 0, 5, 300]),
        ("INT32", [-(2**31), 0, 5, 2**31 - 1]),
        ("INT64", [-(2**40), 0, 5, 2**40]),
        ("UINT8", [0, 1, 2, 255]),
        ("UINT16", [0, 1, 2, 65535]),
        ("UINT32", [0, 1, 2, 2**32 - 1]),
        ("UINT64", [0, 1, 2, 2**64 - 1]),
        ("FP32", [1.5, -2.0, 0.0, 3.25]),
        ("FP64", [1.5, -2.0, 0.0, 1e300]),
    ],
)
def test_typed_and_raw_contents_agree(datatype: str, values: list[Any]) -> None:
    field = v2_grpc.CONTENTS_FIELD[datatype]
    typed = v2_grpc.decode_infer_request(request_with(datatype, [2, 2], field, values))
    tensor = typed.inputs[0]
    assert tensor.shape == [2, 2] and tensor.datatype == datatype
    assert tensor.to_numpy().reshape(-1).tolist() == values
    raw = v2_grpc.decode_infer_request(request_with(datatype, [2, 2], None, [], raw=tensor.data))  # type: ignore[arg-type]
    assert raw.inputs[0].data == tensor.data
    assert typed.id == "r1"


def test_bytes_and_fp16() -> None:
    req = v2_grpc.decode_infer_request(request_with("BYTES", [2], "bytes_contents", [b"a", b""]))
    assert req.inputs[0].data == [b"a", b""]
    half = np.array([1.5, 2.0], dtype="<f2")
    req = v2_grpc.decode_infer_request(request_with("FP16", [2], None, [], raw=half.tobytes()))
    assert req.inputs[0].to_numpy().tolist() == [1.5, 2.0]
    with pytest.raises(InvalidInput, match="raw_input_contents"):
        v2_grpc.decode_infer_request(request_with("FP16", [2], "fp32_contents", [1.0, 2.0]))


@pytest.mark.parametrize(
    ("msg", "needle"),
    [
        (request_with("FP32", [3], "fp32_contents", [1.0, 2.0]), "needs 3 elements"),
        (request_with("FP32", [2], "int_contents", [1, 2]), "belongs in contents.fp32_contents"),
        (request_with("INT8", [1], "int_contents", [300]), "out of range"),
        (request_with("UINT8", [1], "uint_contents", [256]), "out of range"),
        (request_with("FP99", [1], "fp32_contents", [1.0]), "unsupported datatype"),
        (request_with("FP32", [-1], "fp32_contents", [1.0]), ">= 0"),
        (request_with("FP32", [2], None, [], raw=b"\0" * 4), "needs 8 bytes"),
        (request_with("BYTES", [1], None, [], raw=b"\x09\0\0\0a"), "exceeds"),
        (pb.ModelInferRequest(model_name="m"), "non-empty"),
    ],
)
def test_malformed_requests_are_invalid_input(msg: Any, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        v2_grpc.decode_infer_request(msg)


def test_raw_contents_must_match_inputs_and_not_mix_with_typed() -> None:
    msg = request_with("FP32", [1], "fp32_contents", [1.0])
    msg.raw_input_contents.append(b"\0" * 4)
    with pytest.raises(InvalidInput, match="contents must be empty"):
        v2_grpc.decode_infer_request(msg)
    msg = request_with("FP32", [1], None, [], raw=b"\0" * 4)
    msg.inputs.add(name="y", datatype="FP32", shape=[1])
    with pytest.raises(InvalidInput, match="1 entries for 2 inputs"):
        v2_grpc.decode_infer_request(msg)
    msg = request_with("FP32", [1], "fp32_contents", [1.0])
    msg.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidInput, match="twice"):
        v2_grpc.decode_infer_request(msg)


def test_parameters_and_requested_outputs() -> None:
    msg = request_with("FP32", [1], "fp32_contents", [1.0])
    msg.parameters["flag"].bool_param = True
    msg.parameters["n"].int64_param = 7
    msg.parameters["s"].string_param = "v"
    out = msg.outputs.add(name="y")
    out.parameters["binary_data"].bool_param = True
    req = v2_grpc.decode_infer_request(msg)
    assert req.parameters == {"flag": True, "n": 7, "s": "v"}
    assert req.outputs == [RequestedOutput(name="y", parameters={"binary_data": True})]


def infer_response(*arrays: tuple[str, Any]) -> InferResponse:
    return InferResponse(
        model_name="m",
        model_version="1",
        id="r1",
        outputs=[tensor_from_numpy(n, a) for n, a in arrays],
        parameters={"a": 1, "b": 0.5, "c": [1, 2]},
    )


def test_encode_typed_and_raw() -> None:
    resp = infer_response(
        ("y", np.array([[1.5, 2.5]], dtype=np.float32)), ("w", np.array([b"x"], dtype=object))
    )
    plain = InferRequest(inputs=[])
    msg = pb.ModelInferRequest()
    assert not v2_grpc.wants_raw(msg, plain, resp)
    typed = v2_grpc.encode_infer_response(resp, raw=False)
    assert list(typed.outputs[0].contents.fp32_contents) == [1.5, 2.5]
    assert list(typed.outputs[0].shape) == [1, 2]
    assert list(typed.outputs[1].contents.bytes_contents) == [b"x"]
    assert typed.parameters["a"].int64_param == 1
    assert typed.parameters["b"].string_param == "0.5"
    assert typed.parameters["c"].string_param == "[1, 2]"
    assert (typed.model_name, typed.model_version, typed.id) == ("m", "1", "r1")
    raw = v2_grpc.encode_infer_response(resp, raw=True)
    assert not raw.outputs[0].HasField("contents")
    assert np.frombuffer(raw.raw_output_contents[0], dtype="<f4").tolist() == [1.5, 2.5]
    assert raw.raw_output_contents[1] == b"\x01\0\0\0x"


def test_raw_when_asked_or_needed() -> None:
    resp = infer_response(("y", np.array([1.0], dtype=np.float32)))
    none = pb.ModelInferRequest()
    assert v2_grpc.wants_raw(
        none, InferRequest(inputs=[], parameters={"binary_data_output": True}), resp
    )
    asked = InferRequest(inputs=[], outputs=[RequestedOutput("y", {"binary_data": True})])
    assert v2_grpc.wants_raw(none, asked, resp)
    assert v2_grpc.wants_raw(
        pb.ModelInferRequest(raw_input_contents=[b""]), InferRequest(inputs=[]), resp
    )
    half = infer_response(("y", np.array([1.0], dtype=np.float16)))
    assert v2_grpc.wants_raw(none, InferRequest(inputs=[]), half)


def test_model_metadata() -> None:
    info = ModelInfo(
        name="m",
        versions=["1"],
        inputs=[TensorSpec("x", "FP32", [-1, 2])],
        outputs=[TensorSpec("y", "INT64", [-1])],
    )
    msg = v2_grpc.model_metadata(info)
    assert msg.name == "m" and list(msg.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in msg.inputs] == [("x", "FP32", [-1, 2])]
    assert msg.outputs[0].datatype == "INT64"


def test_every_error_maps_to_a_grpc_status() -> None:
    for cls in ALL_ERRORS:
        code, message = status_of(cls("boom"))
        assert isinstance(code, grpc.StatusCode) and message == "boom"
    assert status_of(InvalidInput("x"))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(ModelNotFound("x"))[0] == grpc.StatusCode.NOT_FOUND
    assert status_of(QueueFull("x"))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_of(ValueError("secret detail")) == (
        grpc.StatusCode.INTERNAL,
        "internal server error",
    )


def test_requested_output_parameters_are_checked() -> None:
    msg = request_with("FP32", [1], "fp32_contents", [1.0])
    msg.outputs.add(name="y").parameters["classification"].int64_param = 3  # class_count=3
    with pytest.raises(InvalidInput, match="output 'y': parameter 'classification'"):
        v2_grpc.decode_infer_request(msg)
    msg = request_with("FP32", [1], "fp32_contents", [1.0])
    msg.outputs.add(name="y").parameters["binary_data"].string_param = "yes"
    with pytest.raises(InvalidInput, match="'binary_data' must be a boolean"):
        v2_grpc.decode_infer_request(msg)
    msg = request_with("FP32", [1], "fp32_contents", [1.0])
    msg.parameters["binary_data_output"].int64_param = 1
    with pytest.raises(InvalidInput, match="'binary_data_output' must be a boolean"):
        v2_grpc.decode_infer_request(msg)


def test_model_metadata_default_version() -> None:
    assert list(v2_grpc.model_metadata(ModelInfo(name="m")).versions) == ["1"]


def test_bytes_outputs_keep_their_exact_bytes() -> None:
    resp = infer_response(("raw", np.array([b"\x00\xff", b"\xff\x00"], dtype=object)))
    typed = v2_grpc.encode_infer_response(resp, raw=False)
    assert list(typed.outputs[0].contents.bytes_contents) == [b"\x00\xff", b"\xff\x00"]
    raw = v2_grpc.encode_infer_response(resp, raw=True)
    assert raw.raw_output_contents[0] == b"\x02\0\0\0\x00\xff\x02\0\0\0\xff\x00"

"""V2 binary tensor extension: every length is checked (400, never an over-read), tensors
round-trip, and responses are framed only when the request asks for binary outputs."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from steadyserve.errors import InvalidInput
from steadyserve.protocol import v2, v2_binary
from steadyserve.types import InferRequest, InferResponse, RequestedOutput, tensor_from_numpy


def binary_body(*tensors: tuple[str, str, list[int], bytes]) -> tuple[dict[str, Any], bytes]:
    header = {
        "inputs": [
            {"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(raw)}}
            for n, d, s, raw in tensors
        ]
    }
    return header, b"".join(raw for *_, raw in tensors)


def decode(header: dict[str, Any], tail: bytes) -> InferRequest:
    return v2.decode_infer_request(header, v2_binary.split_binary_inputs(header, tail))


@pytest.mark.parametrize("raw", ["abc", "-1", "1.5", "", " ", "0x10", "99999999999999999999999"])
def test_header_length_must_be_a_non_negative_integer(raw: str) -> None:
    with pytest.raises(InvalidInput, match="Inference-Header-Content-Length"):
        v2_binary.parse_header_length(raw, 100)


def test_header_length_not_zero_nor_beyond_the_body() -> None:
    assert v2_binary.parse_header_length("10", 10) == 10
    assert v2_binary.parse_header_length(" 7 ", 10) == 7
    with pytest.raises(InvalidInput, match="exceeds the body length"):
        v2_binary.parse_header_length("11", 10)
    with pytest.raises(InvalidInput, match="> 0"):
        v2_binary.parse_header_length("0", 10)


def test_numeric_and_bytes_inputs_round_trip() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    words = [b"hello", b"", "h\u00e9".encode()]
    raw_words = v2_binary.serialize_bytes_elements(words)
    header, tail = binary_body(("x", "FP32", [2, 3], x.tobytes()), ("w", "BYTES", [3], raw_words))
    req = decode(header, tail)
    assert req.inputs[0].to_numpy().tolist() == x.tolist()
    assert req.inputs[1].data == words


def test_mixed_json_and_binary_inputs() -> None:
    header = {
        "inputs": [
            {"name": "a", "datatype": "INT32", "shape": [2], "data": [1, 2]},
            {"name": "b", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8}},
        ]
    }
    req = decode(header, struct.pack("<q", -5))
    assert req.inputs[0].to_numpy().tolist() == [1, 2]
    assert req.inputs[1].to_numpy().tolist() == [-5]


@pytest.mark.parametrize(
    ("size", "tail", "needle"),
    [
        (16, b"\0" * 8, "exceeds"),  # says more than there is: never an over-read
        (4, b"\0" * 8, "sum to 4"),  # says less: trailing bytes are an error too
        (-1, b"", "integer >= 0"),
        (True, b"\0", "integer >= 0"),
        ("8", b"\0" * 8, "integer >= 0"),
        (8.0, b"\0" * 8, "integer >= 0"),
    ],
)
def test_lying_binary_data_size(size: Any, tail: bytes, needle: str) -> None:
    header = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [2],
                "parameters": {"binary_data_size": size},
            }
        ]
    }
    with pytest.raises(InvalidInput, match=needle):
        decode(header, tail)


def test_size_consistent_with_body_but_not_with_shape() -> None:
    header, tail = binary_body(("x", "FP32", [4], b"\0" * 8))
    with pytest.raises(InvalidInput, match="needs 16 bytes, got 8"):
        decode(header, tail)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x05\0\0\0ab",  # element length beyond the data
        b"\x01\0",  # truncated length prefix
        b"\x01\0\0\0a\x00",  # trailing byte
        b"\xff\xff\xff\xff",  # 4 GiB element claimed
    ],
)
def test_bytes_elements_are_bounds_checked(raw: bytes) -> None:
    header, tail = binary_body(("w", "BYTES", [1], raw))
    with pytest.raises(InvalidInput):
        decode(header, tail)


def test_data_and_binary_size_together_or_twice_are_refused() -> None:
    header = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [1],
                "data": [1.0],
                "parameters": {"binary_data_size": 4},
            }
        ]
    }
    with pytest.raises(InvalidInput, match="both"):
        decode(header, b"\0" * 4)
    header, tail = binary_body(("x", "FP32", [1], b"\0" * 4), ("x", "FP32", [1], b"\0" * 4))
    with pytest.raises(InvalidInput, match="twice"):
        decode(header, tail)


def test_binary_tail_without_binary_inputs_is_refused() -> None:
    header = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    with pytest.raises(InvalidInput, match="sum to 0"):
        decode(header, b"junk")


@pytest.mark.parametrize(
    "header",
    [
        [],
        {"inputs": "x"},
        {"inputs": [1]},
        {
            "inputs": [
                {
                    "name": "",
                    "datatype": "FP32",
                    "shape": [1],
                    "parameters": {"binary_data_size": 4},
                }
            ]
        },
    ],
)
def test_malformed_headers(header: Any) -> None:
    with pytest.raises(InvalidInput):
        v2_binary.split_binary_inputs(header, b"\0" * 4)


def response() -> InferResponse:
    return InferResponse(
        model_name="m",
        outputs=[
            tensor_from_numpy("y", np.array([[1.5, 2.5]], dtype=np.float32)),
            tensor_from_numpy("label", np.array([b"cat"], dtype=object)),
        ],
    )


def request(
    params: dict[str, Any] | None = None, outputs: list[RequestedOutput] | None = None
) -> InferRequest:
    return InferRequest(inputs=[], parameters=params or {}, outputs=outputs)


def split_response(framed: tuple[bytes, int]) -> tuple[dict[str, Any], bytes]:
    content, length = framed
    return json.loads(content[:length]), content[length:]


def test_plain_json_unless_binary_is_asked_for() -> None:
    assert v2_binary.encode_binary_response(request(), response()) is None
    assert (
        v2_binary.encode_binary_response(request({"binary_data_output": False}), response()) is None
    )


def test_request_level_binary_output() -> None:
    framed = v2_binary.encode_binary_response(request({"binary_data_output": True}), response())
    assert framed is not None
    header, tail = split_response(framed)
    y, label = header["outputs"]
    assert "data" not in y and y["parameters"]["binary_data_size"] == 8
    assert label["parameters"]["binary_data_size"] == 7
    assert np.frombuffer(tail[:8], dtype="<f4").tolist() == [1.5, 2.5]
    assert v2_binary.split_bytes_elements("label", tail[8:], 1) == [b"cat"]


def test_per_output_binary_overrides_request_level() -> None:
    req = request(
        {"binary_data_output": True},
        outputs=[RequestedOutput("y", {"binary_data": False}), RequestedOutput("label")],
    )
    framed = v2_binary.encode_binary_response(req, response())
    assert framed is not None
    header, tail = split_response(framed)
    assert header["outputs"][0]["data"] == [1.5, 2.5]
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 7}
    assert len(tail) == 7
    only_y = request(outputs=[RequestedOutput("y", {"binary_data": True})])
    framed = v2_binary.encode_binary_response(only_y, response())
    assert framed is not None
    header, tail = split_response(framed)
    assert len(tail) == 8 and header["outputs"][1]["data"] == ["cat"]


def test_non_utf8_bytes_go_out_exactly_as_binary() -> None:
    resp = InferResponse(
        model_name="m", outputs=[tensor_from_numpy("raw", np.array([b"\x00\xff"], dtype=object))]
    )
    asked = InferRequest(inputs=[], outputs=[RequestedOutput("raw", {"binary_data": True})])
    framed = v2_binary.encode_binary_response(asked, resp)
    assert framed is not None
    content, length = framed
    assert content[length:] == b"\x02\0\0\0\x00\xff"

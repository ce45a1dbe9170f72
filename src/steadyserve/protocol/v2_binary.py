"""The V2 binary tensor data extension over HTTP (the raw tensor codec itself is the leaf module
:mod:`steadyserve.protocol.raw_tensor`, re-exported here).

Over HTTP a request body is ``JSON header + binary tail`` when the ``Inference-Header-Content-Length``
header is given: the inputs that declare ``parameters.binary_data_size`` take their bytes from the
tail in input order (:func:`split_binary_inputs`). A response is framed the same way when the
request asks for binary outputs (:func:`encode_binary_response`). gRPC's ``raw_input_contents``
reuses :func:`tensor_from_raw` / :func:`tensor_to_raw`. Pure functions, no I/O.
"""

from __future__ import annotations

import json
from typing import Any

from steadyserve.errors import InvalidInput
from steadyserve.protocol.raw_tensor import (
    serialize_bytes_elements,
    split_bytes_elements,
    tensor_from_raw,
    tensor_to_raw,
)
from steadyserve.protocol.v2 import encode_infer_response, tensor_to_json
from steadyserve.types import InferRequest, InferResponse

__all__ = [
    "HEADER_LENGTH",
    "encode_binary_response",
    "parse_header_length",
    "serialize_bytes_elements",
    "split_binary_inputs",
    "split_bytes_elements",
    "tensor_from_raw",
    "tensor_to_raw",
]

# ---- HTTP framing: JSON header + binary tail ---------------------------------------------------

HEADER_LENGTH = "inference-header-content-length"
"""Request/response header naming the length of the JSON part of a binary-extension body."""


def parse_header_length(raw: str, body_length: int) -> int:
    """The ``Inference-Header-Content-Length`` value, checked against the body length."""
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 19:  # "\xb2".isdigit() is True
        raise InvalidInput(
            f"Inference-Header-Content-Length must be a non-negative integer, got {raw[:40]!r}"
        )
    length = int(text)
    if length == 0:
        raise InvalidInput("Inference-Header-Content-Length must be > 0 (the JSON header)")
    if length > body_length:
        raise InvalidInput(
            f"Inference-Header-Content-Length {length} exceeds the body length {body_length}"
        )
    return length


def split_binary_inputs(header: Any, tail: bytes) -> dict[str, bytes]:
    """Cut ``tail`` into the raw data of each input that declares
    ``parameters.binary_data_size``, in input order. The sizes must account for every byte of
    ``tail`` exactly; anything else is a 400."""
    inputs = header.get("inputs") if isinstance(header, dict) else None
    if not isinstance(inputs, list):
        raise InvalidInput("'inputs' must be a non-empty list")
    out: dict[str, bytes] = {}
    view = memoryview(tail)
    offset = 0
    for item in inputs:
        if not isinstance(item, dict):
            raise InvalidInput("each input must be an object")
        params = item.get("parameters")
        if not isinstance(params, dict) or "binary_data_size" not in params:
            continue
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput("every input needs a non-empty string 'name'")
        size = params["binary_data_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"input '{name[:100]}': binary_data_size must be an integer >= 0")
        if "data" in item:
            raise InvalidInput(f"input '{name[:100]}' has both 'data' and binary_data_size")
        if offset + size > len(tail):
            raise InvalidInput(
                f"input '{name[:100]}': binary_data_size {size} exceeds the "
                f"{len(tail) - offset} binary bytes left"
            )
        if name in out:
            raise InvalidInput(f"input '{name[:100]}' given twice")
        out[name] = bytes(view[offset : offset + size])
        offset += size
    if offset != len(tail):
        raise InvalidInput(
            f"the binary tensor data is {len(tail)} bytes but the inputs' binary_data_size "
            f"sum to {offset}"
        )
    return out


def wants_binary(request: InferRequest, output_name: str) -> bool:
    """Whether ``output_name`` is returned as binary data: the output's own
    ``parameters.binary_data`` wins, else the request-level ``binary_data_output``."""
    for requested in request.outputs or ():
        if requested.name == output_name and "binary_data" in requested.parameters:
            return requested.parameters["binary_data"] is True
    return request.parameters.get("binary_data_output") is True


def encode_binary_response(
    request: InferRequest, response: InferResponse
) -> tuple[bytes, int] | None:
    """The response as JSON header + binary tail, with the header's length; ``None`` when no
    output is asked for as binary (answer plain JSON then)."""

    binary = [wants_binary(request, t.name) for t in response.outputs]
    if not any(binary):
        return None
    tails: list[bytes] = []
    outputs: list[dict[str, Any]] = []
    for tensor, as_binary in zip(response.outputs, binary, strict=True):
        if not as_binary:
            outputs.append(tensor_to_json(tensor))
            continue
        raw = tensor_to_raw(tensor)
        tails.append(raw)
        outputs.append(
            {
                "name": tensor.name,
                "datatype": tensor.datatype,
                "shape": tensor.shape,
                "parameters": {**tensor.parameters, "binary_data_size": len(raw)},
            }
        )
    # Binary outputs never pass through JSON: their bytes go out exactly as the model made them.
    body = encode_infer_response(response, outputs)
    header = json.dumps(body, separators=(",", ":")).encode("utf-8")
    return header + b"".join(tails), len(header)

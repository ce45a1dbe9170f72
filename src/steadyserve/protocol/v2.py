"""Open Inference Protocol V2, JSON form: wire ⇄ neutral types. Pure functions, no I/O.

Tensor checks made here (all → 400 :class:`InvalidInput`): names, datatypes, shape entries,
``len(data) == prod(shape)``, element types and ranges per datatype, requested-output parameters
(``binary_data`` must be a boolean; Triton's ``classification`` extension is refused), and - when
the model declares its inputs - unknown, missing or mismatched inputs. The binary tensor
extension and gRPC reuse :func:`check_against_metadata`, :func:`check_output_parameters` and
:func:`tensor_from_values`; V1 reuses :func:`check_values`. Model versions in paths are checked by
:func:`check_version` (REST and gRPC alike).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from steadyserve.errors import InvalidInput, ModelError, ModelNotFound, UnsupportedEndpoint
from steadyserve.protocol.raw_tensor import tensor_from_raw
from steadyserve.types import (
    V2_DATATYPES,
    V2_TO_NUMPY,
    Capability,
    InferRequest,
    InferResponse,
    ModelInfo,
    RequestedOutput,
    Tensor,
    TensorSpec,
)

MAX_TENSORS = 256
MAX_NAME = 256
MAX_ITEMS = 100_000
"""The most items one request may carry, V1 and V2 alike: V1 instances, V2 rows (the first
dimension) and V2 BYTES elements (each one a text for the model to run). A numeric tensor's
elements are bounded by the body size instead (an image is many elements but one item)."""


def _flatten(data: Any, out: list[Any], depth: int = 0) -> None:
    if depth > 32:
        raise InvalidInput("tensor data is nested too deeply")
    if isinstance(data, list):
        for item in data:
            _flatten(item, out, depth + 1)
    else:
        out.append(data)


def check_shape(name: str, shape: Any) -> list[int]:
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise InvalidInput(f"input '{name}': shape must be a list of integers")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input '{name}': shape dimensions must be >= 0, got {shape}")
    if len(shape) > 16:
        raise InvalidInput(f"input '{name}': at most 16 dimensions")
    return shape


def check_items(name: str, datatype: str, shape: list[int]) -> None:
    """At most :data:`MAX_ITEMS` rows, and as many BYTES elements (400 before any data is
    read: a shape alone may announce millions of empty strings)."""
    rows = shape[0] if shape else 1
    count = math.prod(shape) if datatype == "BYTES" else rows
    if rows > MAX_ITEMS or count > MAX_ITEMS:
        what = "BYTES elements" if datatype == "BYTES" else "rows"
        raise InvalidInput(
            f"input '{name}': shape {shape[:16]} has more than {MAX_ITEMS} {what}; "
            f"at most {MAX_ITEMS} items per request"
        )


def _check_name(kind: str, name: Any) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        raise InvalidInput(f"every {kind} needs a non-empty string 'name'")
    return name


def _check_datatype(name: str, datatype: Any) -> str:
    if datatype not in V2_DATATYPES:
        raise InvalidInput(
            f"input '{name}': unsupported datatype {str(datatype)[:40]!r}; "
            f"valid: {', '.join(V2_DATATYPES)}"
        )
    return str(datatype)


def check_values(name: str, datatype: str, flat: list[Any]) -> None:
    """Flat JSON values must be of ``datatype``'s element type and within its range.

    ``datatype`` is numeric or BOOL (BYTES elements are checked by :func:`tensor_from_values`)."""
    dtype = V2_TO_NUMPY[datatype]
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in flat):
            raise InvalidInput(f"input '{name}': BOOL elements must be true/false")
    elif dtype.kind in "iu":
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
            raise InvalidInput(f"input '{name}': {datatype} elements must be integers")
        info = np.iinfo(dtype)
        if flat and (min(flat) < info.min or max(flat) > info.max):
            raise InvalidInput(f"input '{name}': value out of range for {datatype}")
    else:
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
            raise InvalidInput(f"input '{name}': {datatype} elements must be numbers")
    if dtype.kind == "f" and flat:
        try:
            wide = np.asarray(flat, dtype=np.float64)
        except OverflowError:  # a JSON integer too large for any float (1 and 309 zeros)
            raise InvalidInput(f"input '{name}': value out of range for {datatype}") from None
        finite = wide[np.isfinite(wide)]
        if finite.size and np.abs(finite).max() > np.finfo(dtype).max:
            raise InvalidInput(f"input '{name}': value out of range for {datatype}")


def tensor_from_values(
    name: str,
    datatype: str,
    shape: list[int],
    flat: list[Any],
    parameters: dict[str, Any] | None = None,
) -> Tensor:
    """Build a tensor from flat JSON values, checking count, element types and ranges."""
    expected = math.prod(shape)
    if len(flat) != expected:
        raise InvalidInput(
            f"input '{name}': shape {shape} needs {expected} elements, got {len(flat)}"
        )
    if datatype == "BYTES":
        data: list[bytes] = []
        for v in flat:
            if isinstance(v, str):
                data.append(v.encode("utf-8"))
            elif isinstance(v, bytes):
                data.append(v)
            else:
                raise InvalidInput(f"input '{name}': BYTES elements must be strings")
        return Tensor(
            name=name, datatype=datatype, shape=shape, data=data, parameters=parameters or {}
        )
    check_values(name, datatype, flat)
    dtype = V2_TO_NUMPY[datatype]
    arr = np.asarray(flat, dtype=dtype) if flat else np.zeros(0, dtype=dtype)
    return Tensor(
        name=name, datatype=datatype, shape=shape, data=arr.tobytes(), parameters=parameters or {}
    )


UNSUPPORTED_OUTPUT_PARAMETERS = {
    "classification": "Triton's classification extension (tritonclient's class_count)",
}
"""Requested-output parameters this server does not implement: refused, never ignored."""


UNSUPPORTED_REQUEST_PARAMETERS = {
    "sequence_id": "sequence batching (stateful models) is not supported",
    "sequence_start": "sequence batching (stateful models) is not supported",
    "sequence_end": "sequence batching (stateful models) is not supported",
    "priority": "request priorities are not supported",
    "timeout": "use the X-Request-Timeout header (seconds) or a gRPC deadline",
}
"""tritonclient's request parameters this server does not implement: refused (400), never
ignored."""


def check_request_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """Request-level ``parameters`` this codec reads: ``binary_data_output`` must be a boolean;
    tritonclient's ``sequence_id``, ``priority`` and ``timeout`` are refused (see
    :data:`UNSUPPORTED_REQUEST_PARAMETERS`)."""
    for key, why in UNSUPPORTED_REQUEST_PARAMETERS.items():
        if key in parameters:
            raise InvalidInput(f"parameter '{key}' is not supported: {why}", param=key)
    flag = parameters.get("binary_data_output")
    if flag is not None and not isinstance(flag, bool):
        raise InvalidInput(
            f"parameter 'binary_data_output' must be a boolean, got {str(flag)[:40]!r}"
        )
    return parameters


def check_output_parameters(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """A requested output's ``parameters`` (JSON and gRPC alike): ``binary_data`` must be a
    boolean, and an extension we do not implement is a 400 rather than silently ignored."""
    for key, what in UNSUPPORTED_OUTPUT_PARAMETERS.items():
        if key in parameters:
            raise InvalidInput(
                f"output '{name[:100]}': parameter '{key}' ({what}) is not supported"
            )
    if "binary_data" in parameters and not isinstance(parameters["binary_data"], bool):
        raise InvalidInput(
            f"output '{name[:100]}': parameter 'binary_data' must be a boolean, "
            f"got {str(parameters['binary_data'])[:40]!r}"
        )
    return parameters


# Why hand-written structure checks and not ``msgspec.convert`` into Structs (issue 10 asked;
# kept on purpose): the same checks (check_shape, check_items, _check_datatype, tensor building)
# run on gRPC protobuf messages too, which are not JSON-shaped, so one error text covers both
# transports; and the messages name the tensor ("input 'x': shape must be a list of integers")
# where msgspec names a JSON path ("Expected `array`, got `str` - at `$.inputs[0].shape`"), which
# clients of V2 (tritonclient) show as is. A Struct would also have to stay as lax as the wire
# (``parameters`` may be null, ``data`` nested or flat), leaving most checks here anyway.
def decode_infer_request(body: Any, binary_inputs: dict[str, bytes] | None = None) -> InferRequest:
    """A V2 JSON inference request body → :class:`InferRequest`.

    ``binary_inputs`` maps input names to their raw bytes when the binary extension is used
    (see ``protocol.v2_binary``; the raw bytes are decoded by ``protocol.raw_tensor``); those inputs carry no ``data`` in JSON."""
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("'inputs' must be a non-empty list")
    if len(inputs) > MAX_TENSORS:
        raise InvalidInput(f"at most {MAX_TENSORS} inputs")
    parameters = body.get("parameters", {})
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object")
    check_request_parameters(parameters)
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    tensors: list[Tensor] = []
    seen: set[str] = set()
    for item in inputs:
        if not isinstance(item, dict):
            raise InvalidInput("each input must be an object")
        name = _check_name("input", item.get("name"))
        if name in seen:
            raise InvalidInput(f"input '{name}' given twice")
        seen.add(name)
        datatype = _check_datatype(name, item.get("datatype"))
        shape = check_shape(name, item.get("shape"))
        check_items(name, datatype, shape)
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInput(f"input '{name}': 'parameters' must be an object")
        if binary_inputs is not None and name in binary_inputs:
            tensors.append(tensor_from_raw(name, datatype, shape, binary_inputs[name]))
            continue
        if "data" not in item:
            raise InvalidInput(f"input '{name}' has no 'data'")
        flat: list[Any] = []
        _flatten(item["data"], flat)
        params = {k: v for k, v in params.items() if k not in ("binary_data_size",)}
        tensors.append(tensor_from_values(name, datatype, shape, flat, params))
    outputs = body.get("outputs")
    requested: list[RequestedOutput] | None = None
    if outputs is not None:
        if not isinstance(outputs, list):
            raise InvalidInput("'outputs' must be a list")
        requested = []
        for out in outputs:
            if not isinstance(out, dict):
                raise InvalidInput("each requested output must be an object")
            oname = _check_name("output", out.get("name"))
            oparams = out.get("parameters") or {}
            if not isinstance(oparams, dict):
                raise InvalidInput(f"output '{oname[:100]}': 'parameters' must be an object")
            check_output_parameters(oname, oparams)
            requested.append(RequestedOutput(name=oname, parameters=oparams))
    return InferRequest(inputs=tensors, id=request_id, parameters=parameters, outputs=requested)


def check_infer_capability(info: ModelInfo) -> None:
    """V2 inference needs the model's ``infer`` capability (REST and gRPC both ask here, so the
    same refusal is a 400 / INVALID_ARGUMENT on both)."""
    if Capability.INFER not in info.capabilities:
        raise UnsupportedEndpoint(
            f"model {info.name} does not support V2 inference; it supports: "
            f"{', '.join(info.capabilities) or 'nothing'}"
        )


def check_against_metadata(request: InferRequest, info: ModelInfo) -> None:
    """Inputs must match the model's declared inputs (when it declares any)."""
    if not info.inputs:
        return
    declared = {spec.name: spec for spec in info.inputs}
    for tensor in request.inputs:
        spec = declared.get(tensor.name)
        if spec is None:
            raise InvalidInput(
                f"unknown input '{tensor.name[:100]}'; model {info.name} expects "
                f"{', '.join(declared)}"
            )
        if spec.datatype != tensor.datatype:
            raise InvalidInput(
                f"input '{tensor.name}': datatype {tensor.datatype} does not match the "
                f"model's {spec.datatype}"
            )
        if not shape_matches(spec.shape, tensor.shape):
            raise InvalidInput(
                f"input '{tensor.name}': shape {tensor.shape} does not match the model's "
                f"{spec.shape} (-1 is any size)"
            )
    missing = set(declared) - {t.name for t in request.inputs}
    if missing:
        raise InvalidInput(f"missing input(s): {', '.join(sorted(missing))}")
    if request.outputs:
        known = {o.name for o in info.outputs}
        for out in request.outputs:
            if known and out.name not in known:
                raise InvalidInput(
                    f"unknown requested output '{out.name[:100]}'; model outputs: {', '.join(known)}"
                )


def shape_matches(declared: list[int], actual: list[int]) -> bool:
    if len(declared) != len(actual):
        return False
    return all(d == -1 or d == a for d, a in zip(declared, actual, strict=True))


def _bytes_to_json(tensor: Tensor) -> list[str]:
    """BYTES elements as JSON strings - exactly, or not at all.

    A JSON string cannot carry arbitrary bytes, and replacing what is not UTF-8 would hand the
    client different bytes than the model produced. The request is valid and the model's output
    is too; it is this server that cannot carry that output in the encoding the request chose.
    So it is a server-side failure (500 :class:`ModelError`, INTERNAL), never a silent change,
    and its message says how to get the exact bytes: the binary tensor extension or gRPC."""
    assert isinstance(tensor.data, list)
    out: list[str] = []
    for index, element in enumerate(tensor.data):
        try:
            out.append(element.decode("utf-8"))
        except UnicodeDecodeError:
            raise ModelError(
                f"output '{tensor.name}': BYTES element {index} is not valid UTF-8 and cannot be "
                "sent as JSON; request this output with parameters.binary_data=true (binary "
                "tensor extension) or use gRPC to receive the exact bytes"
            ) from None
    return out


def tensor_to_json(tensor: Tensor) -> dict[str, Any]:
    """An output tensor as V2 JSON (BYTES elements must be UTF-8, see :func:`_bytes_to_json`)."""
    data: list[Any]
    if tensor.datatype == "BYTES":
        data = _bytes_to_json(tensor)
    else:
        data = tensor.to_numpy().reshape(-1).tolist()
    out: dict[str, Any] = {
        "name": tensor.name,
        "datatype": tensor.datatype,
        "shape": tensor.shape,
        "data": data,
    }
    if tensor.parameters:
        out["parameters"] = tensor.parameters
    return out


def encode_infer_response(
    response: InferResponse, outputs: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The V2 JSON response body; ``outputs`` (already encoded, e.g. as binary-extension
    headers) replaces the JSON encoding of ``response.outputs`` when given."""
    body: dict[str, Any] = {
        "model_name": response.model_name,
        "outputs": [tensor_to_json(t) for t in response.outputs] if outputs is None else outputs,
    }
    if response.model_version is not None:
        body["model_version"] = response.model_version
    if response.id is not None:
        body["id"] = response.id
    if response.parameters:
        body["parameters"] = response.parameters
    return body


def _spec_json(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": spec.shape}


DEFAULT_VERSION = "1"
"""The one version a model that declares none serves (and reports in its metadata)."""


def served_versions(info: ModelInfo) -> list[str]:
    """The versions a model serves: those it declares, else just :data:`DEFAULT_VERSION`."""
    return list(info.versions) or [DEFAULT_VERSION]


def check_version(info: ModelInfo | None, version: str | None) -> None:
    """A version in a path (REST) or ``model_version`` (gRPC) must be one the model serves;
    ``None`` / ``""`` is "no version". Unknown before the model's first load (``info`` is
    ``None``): not checked then (the caller answers 503 for a model that is not ready)."""
    if not version or info is None:
        return
    versions = served_versions(info)
    if version not in versions:
        raise ModelNotFound(
            f"model {info.name} has no version '{version[:50]}'; "
            f"its versions: {', '.join(versions)}"
        )


def model_metadata(info: ModelInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "versions": served_versions(info),
        "platform": info.platform,
        "inputs": [_spec_json(s) for s in info.inputs],
        "outputs": [_spec_json(s) for s in info.outputs],
    }

"""Open Inference Protocol V2, JSON form: wire ⇄ neutral types. Pure functions, no I/O.

Tensor checks made here (all → 400 :class:`InvalidInput`): names, datatypes, shape entries,
``len(data) == prod(shape)``, element types and ranges per datatype, and - when the model
declares its inputs - unknown, missing or mismatched inputs. The binary tensor extension and gRPC
reuse :func:`check_against_metadata` and :func:`tensor_from_values`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from steadyserve.errors import InvalidInput, UnsupportedEndpoint
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


def tensor_from_values(
    name: str, datatype: str, shape: list[int], flat: list[Any], parameters: dict[str, Any] | None = None
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
        return Tensor(name=name, datatype=datatype, shape=shape, data=data, parameters=parameters or {})
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
        wide = np.asarray(flat, dtype=np.float64)
        finite = wide[np.isfinite(wide)]
        if finite.size and np.abs(finite).max() > np.finfo(dtype).max:
            raise InvalidInput(f"input '{name}': value out of range for {datatype}")
    arr = np.asarray(flat, dtype=dtype) if flat else np.zeros(0, dtype=dtype)
    return Tensor(
        name=name, datatype=datatype, shape=shape, data=arr.tobytes(), parameters=parameters or {}
    )


def decode_infer_request(body: Any, binary_inputs: dict[str, bytes] | None = None) -> InferRequest:
    """A V2 JSON inference request body → :class:`InferRequest`.

    ``binary_inputs`` maps input names to their raw bytes when the binary extension is used
    (see ``protocol.v2_binary``); those inputs carry no ``data`` in JSON."""
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
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInput(f"input '{name}': 'parameters' must be an object")
        if binary_inputs is not None and name in binary_inputs:
            from steadyserve.protocol.v2_binary import tensor_from_raw

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
            oparams = out.get("parameters") or {}
            if not isinstance(oparams, dict):
                raise InvalidInput("output 'parameters' must be an object")
            requested.append(RequestedOutput(name=_check_name("output", out.get("name")), parameters=oparams))
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
        if not _shape_matches(spec.shape, tensor.shape):
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


def _shape_matches(declared: list[int], actual: list[int]) -> bool:
    if len(declared) != len(actual):
        return False
    return all(d == -1 or d == a for d, a in zip(declared, actual, strict=True))


def tensor_to_json(tensor: Tensor) -> dict[str, Any]:
    if tensor.datatype == "BYTES":
        assert isinstance(tensor.data, list)
        data: list[Any] = [b.decode("utf-8", errors="replace") for b in tensor.data]
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


def encode_infer_response(response: InferResponse) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model_name": response.model_name,
        "outputs": [tensor_to_json(t) for t in response.outputs],
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


def model_metadata(info: ModelInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "versions": info.versions,
        "platform": info.platform,
        "inputs": [_spec_json(s) for s in info.inputs],
        "outputs": [_spec_json(s) for s in info.outputs],
    }

"""Open Inference Protocol V2 over gRPC: protobuf messages ⇄ neutral types. Pure, no I/O.

Inputs arrive either as typed ``contents`` (the repeated field that matches the datatype) or as
``raw_input_contents`` (one bytes entry per input, in input order; FP16 can only be raw). Every
check is a 400-class :class:`InvalidInput` (INVALID_ARGUMENT): the same names, datatypes, shapes,
element counts and ranges as the JSON codec (and its requested-output parameter checks), plus: raw
and typed contents never mixed, one raw entry per input, typed values only in the field of their
datatype.

Responses use ``raw_output_contents`` when the request sent raw inputs (what tritonclient does),
asked for it (request parameter ``binary_data_output`` / output parameter ``binary_data``), or when
an output is FP16; typed ``contents`` otherwise.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from steadyserve.errors import InvalidInput
from steadyserve.protocol import v2
from steadyserve.protocol.grpc_gen import grpc_predict_v2_pb2 as pb
from steadyserve.protocol.raw_tensor import tensor_from_raw, tensor_to_raw
from steadyserve.types import (
    V2_DATATYPES,
    V2_TO_NUMPY,
    InferRequest,
    InferResponse,
    ModelInfo,
    RequestedOutput,
    Tensor,
    TensorSpec,
)

#: datatype → the InferTensorContents field that carries it (FP16: raw only).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

RAW_OUTPUT_PARAM = "binary_data_output"


# ---- parameters ------------------------------------------------------------------------------


def params_from_proto(params: Any) -> dict[str, Any]:
    """A ``map<string, InferParameter>`` → plain dict (bool / int / str values)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        choice = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, choice) if choice is not None else None
    return out


def params_to_proto(params: dict[str, Any], target: Any) -> None:
    """Fill a ``map<string, InferParameter>``. Floats and structured values (which the proto
    cannot carry) travel as strings (JSON for lists/objects)."""
    for key, value in params.items():
        entry = target[str(key)]
        if isinstance(value, bool):
            entry.bool_param = value
        elif isinstance(value, int) and -(2**63) <= value < 2**63:
            entry.int64_param = value
        elif isinstance(value, str):
            entry.string_param = value
        elif isinstance(value, (int, float)):
            entry.string_param = repr(value)
        else:
            entry.string_param = json.dumps(value, default=str)


# ---- requests ------------------------------------------------------------------------------


def _check_datatype(name: str, datatype: str) -> str:
    if datatype not in V2_DATATYPES:
        raise InvalidInput(
            f"input '{name}': unsupported datatype {datatype[:40]!r}; "
            f"valid: {', '.join(V2_DATATYPES)}"
        )
    return datatype


def _tensor_from_contents(name: str, datatype: str, shape: list[int], contents: Any) -> Tensor:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input '{name}': {datatype} must be sent in raw_input_contents")
    others = [f.name for f, _ in contents.ListFields() if f.name != field]
    if others:
        raise InvalidInput(
            f"input '{name}': {datatype} data belongs in contents.{field}, not {others[0]}"
        )
    values = getattr(contents, field)
    expected = math.prod(shape)
    if len(values) != expected:
        raise InvalidInput(
            f"input '{name}': shape {shape} needs {expected} elements, got {len(values)}"
        )
    if datatype == "BYTES":
        return Tensor(name=name, datatype=datatype, shape=shape, data=list(values))
    dtype = V2_TO_NUMPY[datatype]
    if datatype in ("UINT64", "BOOL"):
        wide = np.asarray(values, dtype=dtype)
    else:
        wide = np.asarray(values, dtype=np.float64 if dtype.kind == "f" else np.int64)
    if dtype.kind in "iu" and wide.size:
        info = np.iinfo(dtype)
        if int(wide.min()) < info.min or int(wide.max()) > info.max:
            raise InvalidInput(f"input '{name}': value out of range for {datatype}")
    arr = wide.astype(dtype) if wide.size else np.zeros(0, dtype=dtype)
    return Tensor(name=name, datatype=datatype, shape=shape, data=arr.tobytes())


def decode_infer_request(msg: Any) -> InferRequest:
    """A ``ModelInferRequest`` → :class:`InferRequest` (model name/version: the transport's)."""
    if not msg.inputs:
        raise InvalidInput("'inputs' must be a non-empty list")
    if len(msg.inputs) > v2.MAX_TENSORS:
        raise InvalidInput(f"at most {v2.MAX_TENSORS} inputs")
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs; "
            "give one per input, in input order"
        )
    tensors: list[Tensor] = []
    seen: set[str] = set()
    for index, item in enumerate(msg.inputs):
        name = item.name
        if not name or len(name) > v2.MAX_NAME:
            raise InvalidInput("every input needs a non-empty 'name'")
        if name in seen:
            raise InvalidInput(f"input '{name}' given twice")
        seen.add(name)
        datatype = _check_datatype(name, item.datatype)
        shape = v2.check_shape(name, [int(d) for d in item.shape])
        v2.check_items(name, datatype, shape)
        has_contents = item.HasField("contents")
        if raw:
            if has_contents and item.contents.ListFields():
                raise InvalidInput(
                    f"input '{name}': contents must be empty when raw_input_contents is used"
                )
            tensor = tensor_from_raw(name, datatype, shape, raw[index])
        else:
            tensor = _tensor_from_contents(name, datatype, shape, item.contents)
        params = params_from_proto(item.parameters)
        if params:
            tensor = Tensor(
                name=tensor.name,
                datatype=tensor.datatype,
                shape=tensor.shape,
                data=tensor.data,
                parameters=params,
            )
        tensors.append(tensor)
    requested: list[RequestedOutput] | None = None
    if msg.outputs:
        requested = []
        for out in msg.outputs:
            if not out.name or len(out.name) > v2.MAX_NAME:
                raise InvalidInput("every requested output needs a non-empty 'name'")
            oparams = v2.check_output_parameters(out.name, params_from_proto(out.parameters))
            requested.append(RequestedOutput(name=out.name, parameters=oparams))
    parameters = v2.check_request_parameters(params_from_proto(msg.parameters))
    return InferRequest(inputs=tensors, id=msg.id or None, parameters=parameters, outputs=requested)


# ---- responses -----------------------------------------------------------------------------


def wants_raw(msg: Any, request: InferRequest, response: InferResponse) -> bool:
    """Raw output contents: raw inputs sent, asked for, or needed (FP16 has no field)."""
    if msg.raw_input_contents or request.parameters.get(RAW_OUTPUT_PARAM) is True:
        return True
    if any(o.parameters.get("binary_data") is True for o in request.outputs or ()):
        return True
    return any(t.datatype not in CONTENTS_FIELD for t in response.outputs)


def _fill_contents(tensor: Tensor, contents: Any) -> None:
    field = CONTENTS_FIELD[tensor.datatype]
    if tensor.datatype == "BYTES":
        assert isinstance(tensor.data, list)
        contents.bytes_contents.extend(tensor.data)
        return
    flat = tensor.to_numpy().reshape(-1)
    getattr(contents, field).extend(flat.tolist())


def encode_infer_response(response: InferResponse, raw: bool) -> Any:
    """:class:`InferResponse` → ``ModelInferResponse`` (raw or typed contents)."""
    msg = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version or "",
        id=response.id or "",
    )
    params_to_proto(response.parameters, msg.parameters)
    for tensor in response.outputs:
        out = msg.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        params_to_proto(tensor.parameters, out.parameters)
        if raw:
            msg.raw_output_contents.append(tensor_to_raw(tensor))
        else:
            _fill_contents(tensor, out.contents)
    return msg


def _spec(target: Any, spec: TensorSpec) -> None:
    target.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)


def model_metadata(info: ModelInfo) -> Any:
    """:class:`ModelInfo` → ``ModelMetadataResponse``."""
    msg = pb.ModelMetadataResponse(
        name=info.name, versions=v2.served_versions(info), platform=info.platform
    )
    for spec in info.inputs:
        _spec(msg.inputs, spec)
    for spec in info.outputs:
        _spec(msg.outputs, spec)
    return msg

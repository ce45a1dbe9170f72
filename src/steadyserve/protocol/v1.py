"""KServe V1 (``/v1/models/{name}:predict``): wire ⇄ neutral types. Pure functions, no I/O.

When the model declares a single numeric (or BOOL) input, :func:`check_against_metadata` checks
the instances against it at the edge, as V2 checks its tensors: together they must form one
rectangular array (no ragged rows) of the declared shape (the instances are its first dimension)
and of values of the declared datatype, in range. Otherwise the
model's own conversion (e.g. ``np.asarray(instances, dtype=np.float32)``) would fail on the
client's data and the client would get a 500 for its own mistake.
"""

from __future__ import annotations

from typing import Any

from steadyserve.errors import InvalidInput
from steadyserve.protocol.v2 import MAX_ITEMS, check_values, shape_matches
from steadyserve.types import V2_TO_NUMPY, ModelInfo, PredictRequest, PredictResponse

MAX_INSTANCES = MAX_ITEMS  # one limit for V1 instances and V2 rows / BYTES elements
MAX_DEPTH = 32


def decode_predict_request(body: Any) -> PredictRequest:
    """``{"instances": [...]}`` (or KServe's alternative ``{"inputs": [...]}``)."""
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object with 'instances'")
    if "instances" in body:
        instances = body["instances"]
        key = "instances"
    elif "inputs" in body:
        instances = body["inputs"]
        key = "inputs"
    else:
        raise InvalidInput("request body must have 'instances' (a non-empty list)")
    if not isinstance(instances, list) or not instances:
        raise InvalidInput(f"'{key}' must be a non-empty list")
    if len(instances) > MAX_INSTANCES:
        raise InvalidInput(f"at most {MAX_INSTANCES} items (instances) per request")
    parameters = body.get("parameters", {})
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object")
    return PredictRequest(instances=instances, parameters=parameters)


class _Ragged(Exception):
    """Nested lists of different lengths (internal to :func:`_shape_of`)."""


def _shape_of(value: Any, flat: list[Any], depth: int = 0) -> tuple[int, ...]:
    """The shape of nested lists (appending the leaves to ``flat``); raises :class:`_Ragged`."""
    if not isinstance(value, list):
        flat.append(value)
        return ()
    if depth >= MAX_DEPTH:
        raise InvalidInput("instances are nested too deeply")
    shapes = {_shape_of(item, flat, depth + 1) for item in value}
    if len(shapes) > 1:
        raise _Ragged
    return (len(value), *(shapes.pop() if shapes else ()))


def check_against_metadata(request: PredictRequest, info: ModelInfo) -> None:
    """Instances must fit the model's declared input when it declares exactly one of a numeric
    or BOOL datatype (400 otherwise): one rectangular array of that datatype's values. Models
    with several inputs, BYTES or no declared inputs take their instances as they come."""
    if len(info.inputs) != 1 or info.inputs[0].datatype not in V2_TO_NUMPY:
        return
    spec = info.inputs[0]
    expects = f"input '{spec.name}' ({spec.datatype}, shape {spec.shape})"
    flat: list[Any] = []
    first: tuple[int, ...] | None = None
    for index, instance in enumerate(request.instances):
        try:
            shape = _shape_of(instance, flat)
        except _Ragged:
            raise InvalidInput(
                f"instance {index} is ragged (nested lists of different lengths); {expects} "
                "needs a rectangular array"
            ) from None
        if first is None:
            first = shape
        elif shape != first:
            raise InvalidInput(
                f"instance {index} has shape {list(shape)} but instance 0 has {list(first)}; "
                f"{expects} needs instances of one shape"
            )
    check_values(spec.name, spec.datatype, flat)
    batch = [len(request.instances), *(first or ())]
    if not shape_matches(spec.shape, batch):
        raise InvalidInput(
            f"instances form shape {batch} (instances x each instance's shape); {expects} "
            "(-1 is any size)"
        )


def encode_predict_response(response: PredictResponse) -> dict[str, Any]:
    return {"predictions": response.predictions}

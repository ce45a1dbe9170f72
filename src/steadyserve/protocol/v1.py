"""KServe V1 (``/v1/models/{name}:predict``): wire ⇄ neutral types. Pure functions, no I/O."""

from __future__ import annotations

from typing import Any

from steadyserve.errors import InvalidInput
from steadyserve.types import PredictRequest, PredictResponse

MAX_INSTANCES = 100_000


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
        raise InvalidInput(f"at most {MAX_INSTANCES} instances per request")
    parameters = body.get("parameters", {})
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object")
    return PredictRequest(instances=instances, parameters=parameters)


def encode_predict_response(response: PredictResponse) -> dict[str, Any]:
    return {"predictions": response.predictions}

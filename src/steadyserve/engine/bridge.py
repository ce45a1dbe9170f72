"""V2 tensors ⇄ predict instances: how a model that only implements ``predict`` serves V2.

A request's input tensors are split into rows along the first axis (one instance per row; a
single input gives plain values, several give ``{name: value}`` dicts), so V2 requests share
the dynamic batcher with V1 ones; the per-row predictions are stacked back into output tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from steadyserve.errors import InvalidInput
from steadyserve.model import Model
from steadyserve.types import InferRequest, InferResponse, Tensor, tensor_from_numpy


def to_jsonable(value: Any) -> Any:
    """Model outputs (numpy, torch, bytes) → plain JSON-able values."""
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "detach") and hasattr(value, "tolist"):  # torch.Tensor
        return to_jsonable(value.detach().cpu().tolist())
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return list(value)
    return value


def _row_values(tensor: Tensor) -> list[Any]:
    arr = tensor.to_numpy()
    if tensor.datatype == "BYTES":
        flat = [
            v.decode("utf-8", errors="strict") if isinstance(v, bytes) else v
            for v in arr.reshape(-1).tolist()
        ]
        rows = np.empty(len(flat), dtype=object)
        rows[:] = flat
        arr = rows.reshape(arr.shape)
    if arr.ndim == 0:
        return [arr.item()]
    return [row.tolist() if isinstance(row, np.ndarray) else row for row in arr]


def infer_to_instances(request: InferRequest) -> list[Any]:
    """Split V2 input tensors into rows along the first axis: one instance per row.

    A single input gives plain values; several inputs give ``{name: value}`` dicts."""
    if not request.inputs:
        raise InvalidInput("request has no inputs")
    try:
        columns = {t.name: _row_values(t) for t in request.inputs}
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"BYTES input is not valid UTF-8: {exc}") from None
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        raise InvalidInput("all inputs must have the same first dimension")
    if len(columns) == 1:
        return next(iter(columns.values()))
    n = lengths.pop()
    return [{name: col[i] for name, col in columns.items()} for i in range(n)]


def _to_array(values: list[Any]) -> np.ndarray[Any, Any]:
    values = to_jsonable(values)
    if values and all(isinstance(v, str) for v in values):
        arr = np.empty(len(values), dtype=object)
        arr[:] = [v.encode("utf-8") for v in values]
        return arr
    arr = np.asarray(values)
    if arr.dtype.kind in ("U", "S", "O"):
        obj = np.empty(arr.shape, dtype=object)
        obj.reshape(-1)[:] = [
            v if isinstance(v, bytes) else str(v).encode("utf-8") for v in arr.reshape(-1).tolist()
        ]
        return obj
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    if arr.dtype == np.int64 and arr.size and np.abs(arr).max() < 2**31:
        arr = arr.astype(np.int64)
    return arr


def predictions_to_infer(model: Model, request: InferRequest, predictions: list[Any]) -> InferResponse:
    """Turn per-row predictions back into V2 output tensors."""
    predictions = to_jsonable(predictions)
    declared = [o.name for o in model.outputs]
    v2_columns = getattr(model, "v2_columns", None)  # optional hook: rows → {output: column}
    if callable(v2_columns):
        columns = v2_columns(predictions)
    elif predictions and all(isinstance(p, dict) for p in predictions):
        names = list(predictions[0].keys())
        columns = {n: [p.get(n) for p in predictions] for n in names}
    else:
        columns = {(declared[0] if declared else "output-0"): predictions}
    wanted = {o.name for o in request.outputs} if request.outputs else None
    outputs = [
        tensor_from_numpy(name, _to_array(values))
        for name, values in columns.items()
        if wanted is None or name in wanted
    ]
    if wanted is not None:
        missing = wanted - set(columns)
        if missing:
            raise InvalidInput(f"unknown requested output(s): {', '.join(sorted(missing))}")
    return InferResponse(model_name=model.name, outputs=outputs, id=request.id)

"""V2 tensors ⇄ predict instances: how a model that only implements ``predict`` serves V2.

A request's input tensors are split into rows along the first axis (one instance per row; a
single input gives plain values, several give ``{name: value}`` dicts), so V2 requests share
the dynamic batcher with V1 ones; the per-row predictions are stacked back into output tensors
of the datatypes the model declares (cast, or a 500 :class:`ModelError` naming the output when a
value does not fit), of their natural datatype when it declares none. BYTES outputs keep their
exact bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from steadyserve.errors import InvalidInput, ModelError
from steadyserve.model import Model
from steadyserve.types import (
    V2_TO_NUMPY,
    InferRequest,
    InferResponse,
    Tensor,
    TensorSpec,
    tensor_from_numpy,
)


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


def _plain(value: Any) -> Any:
    """Model outputs → lists, numpy arrays/scalars, bytes and plain scalars: like
    :func:`to_jsonable`, but numpy values keep their dtype and bytes stay bytes (V2 carries
    both exactly)."""
    if isinstance(value, (np.ndarray, np.generic, bytes, str)):
        return value
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # torch.Tensor
        try:
            return value.detach().cpu().numpy()
        except TypeError:  # a dtype numpy lacks (bfloat16)
            return value.detach().cpu().float().numpy()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _element_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _nested_shape(name: str, value: Any, flat: list[bytes]) -> tuple[int, ...]:
    """Shape of nested lists/arrays of BYTES elements; leaves (as bytes) go to ``flat``."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list):
        flat.append(_element_bytes(value))
        return ()
    shapes = {_nested_shape(name, item, flat) for item in value}
    if len(shapes) > 1:
        raise ModelError(
            f"output '{name}': the model's predictions are ragged (rows differ in shape)"
        )
    return (len(value), *(shapes.pop() if shapes else ()))


def _bytes_array(name: str, values: list[Any]) -> np.ndarray[Any, Any]:
    """An object array of ``bytes``, built element by element (``np.asarray`` would strip
    trailing NUL bytes); strings are UTF-8 encoded, other values written as text."""
    flat: list[bytes] = []
    shape = _nested_shape(name, values, flat)
    arr = np.empty(len(flat), dtype=object)
    arr[:] = flat
    return arr.reshape(shape)


def _cast(name: str, arr: np.ndarray[Any, Any], datatype: str) -> np.ndarray[Any, Any]:
    """``arr`` as the declared ``datatype``; a value that type cannot represent is the model's
    fault (500 :class:`ModelError` naming the output), never a silent wrap-around or overflow."""
    target = V2_TO_NUMPY[datatype]
    if arr.dtype == target:
        return arr
    if arr.dtype.kind not in "biuf":
        raise ModelError(
            f"output '{name}' is declared {datatype} but the model returned "
            f"{'non-numeric' if arr.dtype.kind in 'OSU' else str(arr.dtype)} values"
        )
    if target.kind == "b":
        if arr.dtype.kind != "b" and not np.isin(arr, (0, 1)).all():
            raise ModelError(f"output '{name}' is declared BOOL but holds values other than 0/1")
        return arr.astype(target)
    if target.kind in "iu":
        if arr.dtype.kind == "f" and not (np.isfinite(arr) & (arr == np.trunc(arr))).all():
            raise ModelError(f"output '{name}' is declared {datatype} but holds non-integer values")
        info = np.iinfo(target)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise ModelError(f"output '{name}': a value is out of range for {datatype}")
        return arr.astype(target)
    with np.errstate(over="ignore"):  # overflow is detected below, and reported
        cast = arr.astype(target)
    if arr.dtype.kind == "f":
        overflow = np.isfinite(arr) & ~np.isfinite(cast)
    else:
        overflow = ~np.isfinite(cast)
    if overflow.any():
        raise ModelError(f"output '{name}': a value is out of range for {datatype}")
    return cast


def _empty(spec: TensorSpec | None) -> np.ndarray[Any, Any]:
    """An output of no rows: the declared datatype, shape ``[0, *declared dims]`` (a variable
    dimension becomes 0: no row tells its size); ``[0]`` float64 when nothing is declared."""
    if spec is None:
        return np.zeros(0, dtype=np.float64)
    shape = (0, *(max(d, 0) for d in spec.shape[1:]))
    if spec.datatype == "BYTES":
        return np.empty(shape, dtype=object)
    return np.zeros(shape, dtype=V2_TO_NUMPY[spec.datatype])


def _to_array(name: str, values: list[Any], spec: TensorSpec | None) -> np.ndarray[Any, Any]:
    """One output column (a value per row) → an array of the declared datatype when ``spec``
    is given, else of the values' natural one (float64 stays FP64, Python ints are INT64,
    text is BYTES)."""
    if not values:
        return _empty(spec)
    if spec is not None and spec.datatype == "BYTES":
        return _bytes_array(name, values)
    try:
        arr = np.asarray(values)
    except ValueError:
        raise ModelError(
            f"output '{name}': the model's predictions are ragged (rows differ in shape)"
        ) from None
    if spec is not None:
        return _cast(name, arr, spec.datatype)
    if arr.dtype.kind in "OSU":
        return _bytes_array(name, values)
    if arr.dtype.kind not in "biuf":
        raise ModelError(f"output '{name}': the model returned {arr.dtype} values V2 cannot carry")
    return arr


def _columns(model: Model, predictions: list[Any]) -> dict[str, list[Any]]:
    """Per-row predictions → ``{output name: values}``: the model's ``v2_columns`` hook, else
    the keys of dict predictions, else the first declared output (``output-0`` if none)."""
    v2_columns = getattr(model, "v2_columns", None)  # optional hook: rows → {output: column}
    if callable(v2_columns):
        return dict(v2_columns(to_jsonable(predictions)))
    predictions = _plain(predictions)
    if predictions and all(isinstance(p, dict) for p in predictions):
        names = list(predictions[0].keys())
        return {n: [p.get(n) for p in predictions] for n in names}
    if not predictions and model.outputs:
        return {o.name: [] for o in model.outputs}
    return {(model.outputs[0].name if model.outputs else "output-0"): predictions}


def predictions_to_infer(
    model: Model, request: InferRequest, predictions: list[Any]
) -> InferResponse:
    """Turn per-row predictions back into V2 output tensors, of the datatypes the model
    declares (see :func:`_to_array`)."""
    columns = _columns(model, predictions)
    specs = {o.name: o for o in model.outputs}
    wanted = {o.name for o in request.outputs} if request.outputs else None
    outputs = [
        tensor_from_numpy(name, _to_array(name, values, specs.get(name)))
        for name, values in columns.items()
        if wanted is None or name in wanted
    ]
    if wanted is not None:
        missing = wanted - set(columns)
        if missing:
            raise InvalidInput(f"unknown requested output(s): {', '.join(sorted(missing))}")
    return InferResponse(model_name=model.name, outputs=outputs, id=request.id)

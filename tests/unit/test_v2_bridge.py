"""The V2 bridge of predict-only models: outputs carry the declared datatypes (cast, or a
ModelError naming the output when a value does not fit), undeclared outputs keep their natural
datatype, empty batches keep datatype and rank, BYTES outputs keep their exact bytes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from steadyserve.engine.bridge import predictions_to_infer
from steadyserve.errors import ModelError
from steadyserve.model import Model
from steadyserve.types import InferRequest, TensorSpec

REQ = InferRequest(inputs=[])


class Declared(Model):
    outputs = [
        TensorSpec("h2", "FP16", [-1]),
        TensorSpec("d", "FP64", [-1]),
        TensorSpec("i8", "INT8", [-1, 2]),
        TensorSpec("u", "UINT16", [-1]),
        TensorSpec("ok", "BOOL", [-1]),
        TensorSpec("raw", "BYTES", [-1]),
    ]


class Undeclared(Model):
    pass


class Texts(Model):
    outputs = [TensorSpec("output-0", "BYTES", [-1])]


class Matrix(Model):
    outputs = [TensorSpec("y", "FP32", [-1, -1])]


def row(**over: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "h2": 1.5,
        "d": 0.1,
        "i8": [1, -2],
        "u": 7,
        "ok": True,
        "raw": b"\xff\x00",
    }
    values.update(over)
    return values


def outputs(model: Model, predictions: list[Any]) -> dict[str, Any]:
    resp = predictions_to_infer(model, REQ, predictions)
    return {t.name: t for t in resp.outputs}


def test_declared_datatypes_are_produced() -> None:
    out = outputs(Declared("m"), [row(), row(h2=np.float64(2.25), i8=np.array([3, 4]))])
    assert {n: t.datatype for n, t in out.items()} == {
        "h2": "FP16",
        "d": "FP64",
        "i8": "INT8",
        "u": "UINT16",
        "ok": "BOOL",
        "raw": "BYTES",
    }
    assert out["h2"].to_numpy().tolist() == [1.5, 2.25]
    assert out["d"].to_numpy().tolist() == [0.1, 0.1]  # FP64: no narrowing to FP32
    assert out["i8"].shape == [2, 2] and out["i8"].to_numpy().tolist() == [[1, -2], [3, 4]]
    assert out["raw"].data == [b"\xff\x00", b"\xff\x00"]  # exact, trailing NUL kept


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"h2": 1e6}, "'h2': a value is out of range for FP16"),
        ({"i8": [1, 300]}, "'i8': a value is out of range for INT8"),
        ({"u": -1}, "'u': a value is out of range for UINT16"),
        ({"i8": [1.5, 2]}, "'i8' is declared INT8 but holds non-integer values"),
        ({"d": "text"}, "'d' is declared FP64 but the model returned non-numeric"),
        ({"ok": 2}, "'ok' is declared BOOL"),
        ({"i8": [1]}, "'i8': the model's predictions are ragged"),
    ],
)
def test_unrepresentable_values_are_model_errors(over: dict[str, Any], needle: str) -> None:
    with pytest.raises(ModelError, match=needle):
        outputs(Declared("m"), [row(), row(**over)])


def test_undeclared_outputs_keep_their_natural_datatype() -> None:
    assert outputs(Undeclared("m"), [0.1, 0.2])["output-0"].datatype == "FP64"
    assert outputs(Undeclared("m"), [1, 2])["output-0"].datatype == "INT64"
    assert outputs(Undeclared("m"), [np.float32(1)])["output-0"].datatype == "FP32"
    assert outputs(Undeclared("m"), [np.array([1], dtype=np.int16)])["output-0"].datatype == "INT16"
    assert outputs(Undeclared("m"), [True])["output-0"].datatype == "BOOL"
    text = outputs(Undeclared("m"), [["a", "b"], ["c", "d"]])["output-0"]
    assert (text.datatype, text.shape, text.data) == ("BYTES", [2, 2], [b"a", b"b", b"c", b"d"])
    mixed = outputs(Undeclared("m"), [{"p": 0.5, "label": "x", "raw": b"\x00\xff"}])
    assert {n: t.datatype for n, t in mixed.items()} == {
        "p": "FP64",
        "label": "BYTES",
        "raw": "BYTES",
    }
    assert mixed["raw"].data == [b"\x00\xff"]


def test_empty_batches_keep_datatype_and_rank() -> None:
    out = outputs(Declared("m"), [])
    assert {n: (t.datatype, t.shape) for n, t in out.items()} == {
        "h2": ("FP16", [0]),
        "d": ("FP64", [0]),
        "i8": ("INT8", [0, 2]),
        "u": ("UINT16", [0]),
        "ok": ("BOOL", [0]),
        "raw": ("BYTES", [0]),
    }
    text = outputs(Texts("m"), [])["output-0"]
    assert (text.datatype, text.shape, text.data) == ("BYTES", [0], [])
    # A variable dimension becomes 0: no row tells its size, the rank is kept.
    matrix = outputs(Matrix("m"), [])["y"]
    assert (matrix.datatype, matrix.shape) == ("FP32", [0, 0])
    assert outputs(Undeclared("m"), [])["output-0"].shape == [0]

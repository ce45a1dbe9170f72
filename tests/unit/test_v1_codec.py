"""V1 instances are checked at the edge against a single declared numeric input: ragged rows and
values of the wrong type are a 400 (InvalidInput), never the model's 500."""

from __future__ import annotations

from typing import Any

import pytest

from steadyserve.errors import InvalidInput
from steadyserve.protocol import v1
from steadyserve.types import ModelInfo, TensorSpec


def info(*inputs: TensorSpec) -> ModelInfo:
    return ModelInfo(name="m", inputs=list(inputs))


FP32 = info(TensorSpec("x", "FP32", [-1, -1]))


def check(instances: list[Any], model: ModelInfo = FP32) -> None:
    v1.check_against_metadata(v1.decode_predict_request({"instances": instances}), model)


@pytest.mark.parametrize(
    "instances",
    [[[1, 2], [3, 4]], [[1.5, float("nan")]], [[]], [[1, 2]] * 3],
)
def test_good_instances(instances: list[Any]) -> None:
    check(instances)


@pytest.mark.parametrize(
    ("instances", "model", "needle"),
    [
        ([[1, 2], [3]], FP32, r"instance 1 has shape \[1\] but instance 0 has \[2\]"),
        # the declared shape holds for V1 as for V2 (instances are its first dimension)
        ([1, 2], FP32, r"instances form shape \[2\].*shape \[-1, -1\]"),
        ([[[1], [2]], [[3], [4]]], FP32, r"instances form shape \[2, 2, 1\]"),
        ([[1, 2, 3]], info(TensorSpec("x", "FP32", [-1, 2])), r"form shape \[1, 3\]"),
        ([[10**309]], FP32, "out of range for FP32"),  # a JSON integer too large for a float
        ([[0]] * 100_001, FP32, "at most 100000 items"),
        ([[[1, 2], [3]]], FP32, "instance 0 is ragged"),
        ([1, [2]], FP32, "instance 1 has shape"),
        ([["a", "b"]], FP32, "input 'x': FP32 elements must be numbers"),
        ([[None]], FP32, "FP32 elements must be numbers"),
        ([[True]], FP32, "FP32 elements must be numbers"),
        ([[1e39]], FP32, "out of range for FP32"),
        ([[1.5]], info(TensorSpec("n", "INT8", [-1, 1])), "INT8 elements must be integers"),
        ([[300]], info(TensorSpec("n", "INT8", [-1, 1])), "out of range for INT8"),
        ([[1]], info(TensorSpec("b", "BOOL", [-1, 1])), "BOOL elements must be true/false"),
    ],
)
def test_bad_instances_are_400(instances: list[Any], model: ModelInfo, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        check(instances, model)


def test_models_without_a_single_numeric_input_take_instances_as_they_come() -> None:
    check(["a", [1, 2], {"k": 1}], info(TensorSpec("text", "BYTES", [-1])))
    check([{"a": 1}], info(TensorSpec("a", "FP32", [-1]), TensorSpec("b", "FP32", [-1])))
    check([[1, 2], [3]], info())

"""Codec-level fixes for what fuzzing found (issue 11): each bad input is a 400 naming it, and a
good input still passes the same check."""

from __future__ import annotations

from typing import Any

import pytest

from steadyserve.errors import InvalidInput
from steadyserve.protocol import openai as oa
from steadyserve.protocol import v1, v2, v2_binary
from steadyserve.protocol.openai_schema import CompletionRequest, parse
from steadyserve.runtimes.huggingface import tasks
from steadyserve.transport.common import parse_json_bytes
from steadyserve.types import Capability, ModelInfo, TensorSpec

HUGE = "1" + "0" * 309  # a JSON integer too large for any float
GEN = ModelInfo(
    name="gen",
    capabilities=[Capability.GENERATE],
    vocab_size=100,
    max_model_len=64,
    tokenizer_dir="/tok",
)


def _completion(extra: str) -> oa.Plan:
    body = parse_json_bytes(
        ('{"model": "gen", "prompt": "hi", "max_tokens": 2, ' + extra + "}").encode()
    )
    return oa.plan_completion(parse(CompletionRequest, body), GEN)


@pytest.mark.parametrize(
    "field",
    ["temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty"],
)
def test_huge_json_integer_in_a_float_field_is_400(field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        _completion(f'"{field}": {HUGE}')
    assert info.value.param == field
    _completion(f'"{field}": 1')  # a good value still passes


def test_huge_json_integer_in_logit_bias_is_400() -> None:
    with pytest.raises(InvalidInput, match="logit_bias"):
        _completion(f'"logit_bias": {{"5": {HUGE}}}')
    _completion('"logit_bias": {"5": 1}')


def test_huge_json_integer_in_v2_fp32_data_is_400() -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [10**309]}]}
    with pytest.raises(InvalidInput, match="out of range for FP32"):
        v2.decode_infer_request(body)
    body["inputs"][0]["data"] = [1]
    assert v2.decode_infer_request(body).inputs[0].shape == [1]


@pytest.mark.parametrize("raw", ["\xb2", "1\xb2", "\u0661\u0662", "\uff11"])
def test_non_ascii_digits_in_the_header_length_are_400(raw: str) -> None:
    with pytest.raises(InvalidInput, match="Inference-Header-Content-Length"):
        v2_binary.parse_header_length(raw, 100)
    assert v2_binary.parse_header_length("12", 100) == 12


@pytest.mark.parametrize("key", ["sequence_id", "sequence_start", "priority", "timeout"])
def test_tritonclient_parameters_we_do_not_implement_are_refused(key: str) -> None:
    body: dict[str, Any] = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
        "parameters": {key: 5},
    }
    with pytest.raises(InvalidInput, match=f"parameter '{key}' is not supported") as info:
        v2.decode_infer_request(body)
    assert info.value.param == key
    body["parameters"] = {"binary_data_output": False}
    v2.decode_infer_request(body)


def _bytes_input(shape: list[int], data: Any = None) -> dict[str, Any]:
    item: dict[str, Any] = {"name": "t", "datatype": "BYTES", "shape": shape}
    item["data"] = data if data is not None else ["a"] * (shape[0] if shape else 1)
    return {"inputs": [item]}


def test_one_item_limit_for_v1_and_v2() -> None:
    limit = v2.MAX_ITEMS
    assert limit == v1.MAX_INSTANCES
    # V2 JSON: rows, and BYTES elements (checked from the shape, before any data is read)
    with pytest.raises(InvalidInput, match=f"more than {limit} BYTES elements"):
        v2.decode_infer_request(_bytes_input([2, limit], data=[]))
    with pytest.raises(InvalidInput, match=f"more than {limit} rows"):
        v2.decode_infer_request(
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [limit + 1], "data": []}]}
        )
    # V2 binary: millions of empty strings announced by the shape
    header = {
        "inputs": [
            {
                "name": "t",
                "datatype": "BYTES",
                "shape": [7_000_000],
                "parameters": {"binary_data_size": 4 * 7_000_000},
            }
        ]
    }
    tail = b"\0" * (4 * 7_000_000)
    with pytest.raises(InvalidInput, match="at most 100000 items"):
        v2.decode_infer_request(header, v2_binary.split_binary_inputs(header, tail))
    # V1
    with pytest.raises(InvalidInput, match="at most 100000 items"):
        v1.decode_predict_request({"instances": ["a"] * (limit + 1)})
    # at the limit: fine
    assert len(v2.decode_infer_request(_bytes_input([limit])).inputs[0].data) == limit
    assert len(v1.decode_predict_request({"instances": ["a"] * limit}).instances) == limit


def test_v1_instances_must_meet_the_declared_shape() -> None:
    model = ModelInfo(name="m", inputs=[TensorSpec("x", "FP32", [-1, -1])])
    with pytest.raises(InvalidInput, match="instances form shape"):
        v1.check_against_metadata(v1.decode_predict_request({"instances": [1, 2]}), model)
    v1.check_against_metadata(v1.decode_predict_request({"instances": [[1, 2]]}), model)


@pytest.mark.parametrize("empty", ["", "   ", {"text": ""}])
def test_an_empty_text_is_refused_alone_or_batched(empty: Any) -> None:
    for batch in ([empty], ["real text", empty], [empty, "real text"]):
        with pytest.raises(InvalidInput, match="is an empty string"):
            tasks.texts_from_instances(batch)
    assert tasks.texts_from_instances(["real text"]) == ["real text"]


@pytest.mark.parametrize("name", ["temperature", "top_p", "do_sample", "sequence_id", "bogus"])
def test_generation_parameters_not_honoured_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput, match=f"parameter '{name}' is not supported") as info:
        tasks.check_generation_parameters("text generation", {"max_new_tokens": 2, name: 1})
    assert info.value.param == name
    tasks.check_generation_parameters(
        "text generation", {"max_new_tokens": 2, "binary_data_output": True}
    )

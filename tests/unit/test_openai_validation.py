"""OpenAI request validation without a server: every bad input → its status and ``param``;
the good request next to it passes."""

from __future__ import annotations

import base64
import struct
from typing import Any

import pytest

from steadyserve.errors import InvalidInput, SteadyError, UnsupportedEndpoint
from steadyserve.protocol import openai as oa
from steadyserve.protocol import openai_response as resp
from steadyserve.protocol import openai_template as ot
from steadyserve.protocol.openai_schema import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    parse,
)
from steadyserve.types import Capability, ModelInfo

GEN = ModelInfo(
    name="gen",
    capabilities=[Capability.GENERATE, Capability.PREDICT, Capability.INFER],
    vocab_size=100,
    max_model_len=64,
    tokenizer_dir="/tok",
)
CHAT = ModelInfo(
    name="chat",
    capabilities=[Capability.GENERATE, Capability.CHAT],
    vocab_size=100,
    max_model_len=64,
    tokenizer_dir="/tok",
)
T5 = ModelInfo(
    name="t5",
    capabilities=[Capability.GENERATE, Capability.PREDICT, Capability.INFER],
    vocab_size=100,
    max_model_len=512,
    tokenizer_dir="/tok",
    is_encoder_decoder=True,
)
EMB = ModelInfo(name="emb", capabilities=[Capability.EMBED], vocab_size=100)

GOOD_COMPLETION: dict[str, Any] = {"model": "gen", "prompt": "hello", "max_tokens": 4}
GOOD_CHAT: dict[str, Any] = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def completion(**fields: Any) -> oa.Plan:
    body = {**GOOD_COMPLETION, **fields}
    return oa.plan_completion(parse(CompletionRequest, body), GEN)


def chat(allow: bool = False, **fields: Any) -> oa.Plan:
    body = {**GOOD_CHAT, **fields}
    return oa.plan_chat(parse(ChatRequest, body), CHAT, allow)


def expect(status: int, param: str | None, fn: Any, *args: Any, **kwargs: Any) -> SteadyError:
    with pytest.raises(SteadyError) as info:
        fn(*args, **kwargs)
    assert info.value.http_status == status, info.value.message
    assert info.value.param == param, info.value.message
    return info.value


BAD_COMPLETIONS = [
    # wrong types → 400 naming the field (never 422/500)
    ({"prompt": 5}, "prompt"),
    ({"prompt": [1, "a"]}, "prompt"),
    ({"max_tokens": "5"}, "max_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"n": None}, "n"),
    ({"stream": "yes"}, "stream"),
    ({"stop": 7}, "stop"),
    ({"stop": ["a", 1]}, "stop"),
    ({"logit_bias": {"1": "x"}}, "logit_bias"),
    ({"logit_bias": [1, 2]}, "logit_bias"),
    ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ({"seed": "1"}, "seed"),
    ({"echo": 1}, "echo"),
    ({"model": 3}, "model"),
    # ranges
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -3}, "max_tokens"),
    ({"n": 0}, "n"),
    ({"n": 17}, "n"),
    ({"best_of": 3}, "best_of"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": "x" * 257}, "stop"),
    ({"logit_bias": {"100": 1}}, "logit_bias"),
    ({"logit_bias": {"-1": 1}}, "logit_bias"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    # only plain decimal ids: int() would read "5_0" as 50 and " 5 " as 5
    ({"logit_bias": {"5_0": 1}}, "logit_bias"),
    ({"logit_bias": {" 5 ": 1}}, "logit_bias"),
    ({"logit_bias": {"+5": 1}}, "logit_bias"),
    ({"logit_bias": {"٥": 1}}, "logit_bias"),  # a non-ASCII digit
    ({"logit_bias": {"1" * 5000: 1}}, "logit_bias"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"logprobs": 21}, "logprobs"),
    ({"logprobs": -1}, "logprobs"),
    ({"logprobs": 1, "echo": True}, "echo"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": ["a", ""]}, "prompt"),
    ({"prompt": ["a"] * 65}, "prompt"),
    ({"prompt": ["a"] * 10, "n": 7}, "n"),
    ({"min_tokens": -1}, "min_tokens"),
    ({"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"suffix": "x"}, "suffix"),
    ({"stop_token_ids": [100]}, "stop_token_ids"),
    ({"seed": 2**64}, "seed"),
]


@pytest.mark.parametrize(("fields", "param"), BAD_COMPLETIONS)
def test_bad_completion_is_400_naming_the_param(fields: dict[str, Any], param: str) -> None:
    expect(400, param, completion, **fields)
    assert completion().params.max_tokens == 16  # a good request right after passes


def test_missing_fields_and_non_object_body() -> None:
    expect(400, "model", parse, CompletionRequest, {"prompt": "x"})
    expect(400, "prompt", parse, CompletionRequest, {"model": "gen"})
    expect(400, None, parse, CompletionRequest, [1, 2])
    expect(400, "messages", parse, ChatRequest, {"model": "chat"})


def test_good_completion_maps_every_sampling_field() -> None:
    plan = completion(
        temperature=0.5,
        top_p=0.9,
        top_k=-1,
        seed=7,
        stop=["x", ""],
        logit_bias={"3": -100},
        min_tokens=1,
        ignore_eos=True,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        repetition_penalty=1.1,
        logprobs=2,
        n=2,
        best_of=2,
        user={"anything": 1},
        response_format={"type": "text"},
        unknown_field=[1, 2],
        stop_token_ids=[5],
    )
    p = plan.params
    assert (p.temperature, p.top_p, p.top_k, p.seed) == (0.5, 0.9, 0, 7)
    assert p.logit_bias == {3: -100.0} and p.logprobs == 2 and p.stop_token_ids == [5]
    assert (p.min_tokens, p.ignore_eos, p.repetition_penalty) == (1, True, 1.1)
    assert plan.stops == ["x"] and plan.max_tokens == 4
    assert completion(prompt=[1, 2, 3]).prompts == [[1, 2, 3]]
    assert completion(prompt=[[1], [2, 3]]).prompts == [[1], [2, 3]]
    assert completion(prompt=["a", "b"]).prompts == ["a", "b"]


BAD_CHATS = [
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
    ({"logprobs": 1}, "logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
    ({"chat_template": "{{ messages }}"}, "chat_template"),
    ({"chat_template_kwargs": {"x": 1}}, "chat_template_kwargs"),
    ({"temperature": 3}, "temperature"),
    # accepted and ignored before: refused by name
    ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"function_call": {"name": "f"}}, "function_call"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    (
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "content": "x", "tool_call_id": "1"},
            ]
        },
        "messages[1].tool_calls",
    ),
    (
        {"messages": [{"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}]},
        "messages[0].function_call",
    ),
    # a user, system or developer message needs content
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
    (
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": []}]},
        "messages[1].content",
    ),
    ({"messages": [{"role": "developer", "content": None}]}, "messages[0].content"),
]


@pytest.mark.parametrize(("fields", "param"), BAD_CHATS)
def test_bad_chat_is_400_naming_the_param(fields: dict[str, Any], param: str) -> None:
    expect(400, param, chat, **fields)
    assert chat().messages == [{"role": "user", "content": "hi"}]


def test_accepted_chat_extras_and_empty_assistant_content() -> None:
    plan = chat(
        function_call="none",
        functions=[],
        modalities=["text"],
        tool_calls=None,
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None},
            {"role": "assistant", "content": [], "tool_calls": []},
            {"role": "user", "content": ""},
        ],
    )
    assert [m["content"] for m in plan.messages] == ["hi", "", "", ""]


def test_chat_content_parts_are_joined_and_template_allowed_when_enabled() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    plan = chat(
        messages=[
            {"role": "system", "content": "s"},
            {"role": "user", "content": parts, "name": "bob"},
        ],
        max_completion_tokens=3,
        logprobs=True,
        top_logprobs=2,
    )
    assert plan.messages[1] == {"role": "user", "content": "a\nb", "name": "bob"}
    assert plan.max_tokens == 3 and plan.params.logprobs == 2
    assert chat(allow=True, chat_template="{{ messages }}").messages
    assert chat(allow=True, chat_template_kwargs={"enable_thinking": False}).messages
    for bad in ({"tokenize": True}, {"chat_template": "x"}, {"messages": []}, {"a b": 1}):
        expect(400, "chat_template_kwargs", chat, allow=True, chat_template_kwargs=bad)


def test_capability_gating_names_what_the_model_supports() -> None:
    body = parse(ChatRequest, {**GOOD_CHAT, "model": "t5"})
    err = expect(400, "model", oa.plan_chat, body, T5, False)
    assert isinstance(err, UnsupportedEndpoint)
    assert err.message == (
        "model t5 does not support chat completions (encoder-decoder model, "
        "no chat template); it supports: completions, v1, v2"
    )
    # a request template does not make T5 a chat model, even when allowed
    body = parse(ChatRequest, {**GOOD_CHAT, "model": "t5", "chat_template": "x"})
    expect(400, "model", oa.plan_chat, body, T5, True)
    # ... but it does for a decoder-only model without a template, when allowed
    body = parse(ChatRequest, {**GOOD_CHAT, "model": "gen", "chat_template": "x"})
    expect(400, "model", oa.plan_chat, body, GEN, False)
    assert oa.plan_chat(body, GEN, True).messages
    expect(400, "model", oa.plan_completion, parse(CompletionRequest, GOOD_COMPLETION), EMB)
    assert oa.plan_completion(parse(CompletionRequest, GOOD_COMPLETION), T5).prompts == ["hello"]


def test_token_limits_name_both_counts() -> None:
    err = expect(400, "max_tokens", oa.resolve_max_tokens, 60, 10, GEN, default=16)
    assert "10" in err.message and "60" in err.message and "64" in err.message
    expect(400, "prompt", oa.resolve_max_tokens, None, 64, GEN, default=16)
    assert oa.resolve_max_tokens(54, 10, GEN, default=16) == 54
    assert oa.resolve_max_tokens(None, 10, GEN, default=16) == 16
    assert oa.resolve_max_tokens(None, 60, GEN, default=16) == 4  # clipped to what fits
    assert oa.resolve_max_tokens(None, 10, CHAT, default=None) == 54  # chat: the rest
    expect(400, "prompt", oa.check_token_ids, [1, 100], 100, "prompt")


def test_max_completion_tokens_is_named_as_sent() -> None:
    body = parse(ChatRequest, {**GOOD_CHAT, "max_completion_tokens": 1_000_000})
    plan = oa.plan_chat(body, CHAT, False)
    err = expect(400, "max_completion_tokens", plan.budget, 10, CHAT, default=None)
    assert "max_completion_tokens (1000000)" in err.message and "max_tokens " not in err.message
    err = expect(400, "min_tokens", chat, min_tokens=5, max_completion_tokens=4)
    assert "max_completion_tokens" in err.message
    plan = chat(max_tokens=1_000_000)
    expect(400, "max_tokens", plan.budget, 10, CHAT, default=None)
    assert chat(max_completion_tokens=5).budget(10, CHAT, default=None) == 5


def test_min_tokens_raises_the_default_budget() -> None:
    plan = completion(max_tokens=None, min_tokens=40)
    assert plan.budget(5, GEN, default=16) == 40  # not the default 16
    assert plan.budget(24, GEN, default=16) == 40  # exactly the 40 left
    err = expect(400, "min_tokens", plan.budget, 30, GEN, default=16)  # 34 left < 40
    assert "min_tokens (40)" in err.message and "64" in err.message
    assert completion(max_tokens=None).budget(5, GEN, default=16) == 16
    assert chat(min_tokens=40).budget(5, CHAT, default=None) == 59  # chat: all the room
    expect(400, "min_tokens", chat(min_tokens=60).budget, 5, CHAT, default=None)
    t5_plan = oa.plan_completion(
        parse(
            CompletionRequest,
            {**GOOD_COMPLETION, "model": "t5", "max_tokens": None, "min_tokens": 500},
        ),
        T5,
    )
    assert t5_plan.budget(400, T5, default=16) == 500  # T5: the decoder's own limit, 512
    big = oa.plan_completion(
        parse(
            CompletionRequest,
            {**GOOD_COMPLETION, "model": "t5", "max_tokens": None, "min_tokens": 600},
        ),
        T5,
    )
    expect(400, "min_tokens", big.budget, 5, T5, default=16)


def test_encoder_decoder_limits_prompt_and_output_separately() -> None:
    # T5: the encoder reads the prompt, the decoder writes max_tokens; each has the full limit
    assert oa.resolve_max_tokens(200, 400, T5, default=16) == 200
    assert oa.resolve_max_tokens(512, 512, T5, default=16) == 512
    assert oa.resolve_max_tokens(None, 500, T5, default=16) == 16
    err = expect(400, "max_tokens", oa.resolve_max_tokens, 513, 10, T5, default=16)
    assert "513" in err.message and "512" in err.message
    expect(400, "prompt", oa.resolve_max_tokens, 10, 513, T5, default=16)
    # decoder-only models still share one context
    expect(400, "max_tokens", oa.resolve_max_tokens, 40, 30, GEN, default=16)


def test_prompt_character_precheck() -> None:
    # GEN: 64 tokens of at most 5 characters each hold at most 320 characters
    oa.check_prompt_chars("x" * 320, GEN, 5, param="prompt")
    err = expect(400, "prompt", lambda: oa.check_prompt_chars("x" * 321, GEN, 5, param="prompt"))
    assert "321 characters" in err.message and "64 tokens" in err.message
    err = expect(
        400,
        "input",
        lambda: oa.check_prompt_chars("x" * 321, GEN, 5, param="input", what="input[0]"),
    )
    assert err.message.startswith("input[0] has 321 characters")
    oa.check_prompt_chars("x" * 10**6, EMB, 5, param="input")  # no known limit: no pre-check


def test_embedding_inputs() -> None:
    def inputs(value: Any) -> Any:
        return oa.embedding_inputs(
            parse(EmbeddingRequest, {"model": "emb", "input": value}).input, EMB
        )

    assert inputs("a") == (["a"], None)
    assert inputs(["a", "b"]) == (["a", "b"], None)
    assert inputs([1, 2]) == (None, [[1, 2]])
    assert inputs([[1], [2]]) == (None, [[1], [2]])
    for bad in ("", [], [""], [[]], [100], ["a"] * 2049):
        expect(400, "input", inputs, bad)
    expect(400, "input", parse, EmbeddingRequest, {"model": "emb", "input": 1.5})
    expect(
        400,
        "encoding_format",
        parse,
        EmbeddingRequest,
        {"model": "emb", "input": "a", "encoding_format": "hex"},
    )
    expect(
        400,
        "dimensions",
        parse,
        EmbeddingRequest,
        {"model": "emb", "input": "a", "dimensions": "3"},
    )


def test_embedding_response_float_and_base64() -> None:
    body = resp.embedding_response("emb", [[0.5, -1.0]], "base64", 3)
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert struct.unpack("<2f", raw) == (0.5, -1.0)
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert resp.embedding_response("emb", [[0.5]], "float", 1)["data"][0]["embedding"] == [0.5]


def test_sandboxed_template_renders_and_is_bounded() -> None:
    variables = {"messages": [{"role": "user", "content": "hi"}], "add_generation_prompt": True}
    tpl = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    assert ot.render_template_sandboxed(tpl, variables) == "<user>hi"
    # the sandbox refuses unsafe attribute access
    expect(
        400,
        "chat_template",
        ot.render_template_sandboxed,
        "{{ messages.__class__.__mro__ }}",
        variables,
    )
    expect(400, "chat_template", ot.render_template_sandboxed, "{% for %}", variables)
    # a template that loops forever (without output) is stopped by the time limit
    spin = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    err = expect(
        400, "chat_template", ot.render_template_sandboxed, spin, variables, time_limit_s=0.3
    )
    assert "within" in err.message
    # and one that writes too much by the output bound
    big = "{% for i in range(100000) %}xxxxxxxxxx{% endfor %}"
    expect(400, "chat_template", ot.render_template_sandboxed, big, variables, max_chars=1000)


def test_usage_and_response_shapes() -> None:
    c = resp.ChoiceState(
        index=0, text="hi", completion_tokens=2, prompt_tokens=3, finish_reason="stop"
    )
    body = resp.completion_response("cmpl-1", 1, "gen", [c], 3, False)
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert body["choices"][0] == {
        "index": 0,
        "text": "hi",
        "logprobs": None,
        "finish_reason": "stop",
    }
    chat_body = resp.chat_response("chatcmpl-1", 1, "chat", [c], 3, False)
    assert chat_body["object"] == "chat.completion"
    assert chat_body["choices"][0]["message"] == {"role": "assistant", "content": "hi"}


def test_invalid_input_is_a_400() -> None:
    assert InvalidInput("x").http_status == 400 and UnsupportedEndpoint("x").http_status == 400


def test_any_64_bit_seed_is_accepted_and_choices_wrap() -> None:
    from steadyserve.transport.routes_openai import _choice_seed

    for seed in (2**63 - 1, -(2**63), 0):
        assert completion(seed=seed).params.seed == seed
    expect(400, "seed", completion, seed=2**63)
    expect(400, "seed", completion, seed=-(2**63) - 1)
    assert _choice_seed(2**63 - 1, 1) == -(2**63)  # wraps, stays a signed 64-bit seed
    assert _choice_seed(7, 2) == 9
    assert chat(tool_choice="none").messages  # "none" needs no tools

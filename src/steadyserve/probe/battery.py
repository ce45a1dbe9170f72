"""The cases, in the order they run: capability checks, conformance, then robustness.

``quick=True`` marks the ``--quick`` subset (under 30 s on a small model).
"""

from __future__ import annotations

from steadyserve.probe import shapes
from steadyserve.probe.cases import (
    LONG_PROMPT,
    OVERSIZED_BYTES,
    RAW,
    UNICODE,
    Case,
    Expect,
    Kind,
    _byte_count,
    _bytes,
    _get,
    _json,
    _nonfinite,
    _oversized,
    _set,
    _v1,
    _wrong_datatype,
    chat_body,
    completions_body,
    gen,
    gen_path,
    v1_instances,
    v2_infer,
    v2_inputs,
)

OK, REJECT, EITHER, DECLINE = Expect.OK, Expect.REJECT, Expect.EITHER, Expect.SERVE_OR_DECLINE
NO_MODEL = "no-such-model-steadyserve-probe"

CAPABILITIES = [
    Case(
        "openai.completions", "openai", "a minimal completion (settles: completions)", DECLINE,
        lambda m, f: _json(f"{f.openai_prefix}/completions", completions_body(m)),
        Kind.CAPABILITY, True, shapes.completion, settles="completions",
    ),
    Case(
        "openai.chat", "openai", "a minimal chat completion (settles: chat)", DECLINE,
        lambda m, f: _json(f"{f.openai_prefix}/chat/completions", chat_body(m)),
        Kind.CAPABILITY, True, shapes.chat, settles="chat",
    ),
    Case(
        "openai.embeddings", "openai", "a minimal embedding (settles: embeddings)", DECLINE,
        lambda m, f: _json(f"{f.openai_prefix}/embeddings", {"model": m.name, "input": "Hello"}),
        Kind.CAPABILITY, True, shapes.embeddings, settles="embeddings",
    ),
    Case(
        "v2.infer", "v2", "an infer request built from the model's V2 metadata", DECLINE,
        lambda m, f: v2_infer(m), Kind.CAPABILITY, True, shapes.v2_infer, settles="v2",
    ),
    Case(
        "v1.predict", "v1", "a V1 :predict with one instance", DECLINE,
        lambda m, f: _v1(m), Kind.CAPABILITY, True, shapes.v1_predict, settles="v1",
    ),
]  # fmt: skip

CONFORMANCE = [
    Case("v2.server_metadata", "v2", "GET /v2", OK, lambda m, f: _get("/v2"),
         quick=True, check=shapes.v2_server_metadata),
    Case("v2.live", "v2", "GET /v2/health/live", OK, lambda m, f: _get("/v2/health/live"),
         quick=True),
    Case("v2.model_ready", "v2", "GET /v2/models/M/ready", OK,
         lambda m, f: _get(f"/v2/models/{m.quoted}/ready")),
    Case("v2.model_metadata", "v2", "GET /v2/models/M", OK,
         lambda m, f: _get(f"/v2/models/{m.quoted}"), quick=True, check=shapes.v2_model_metadata),
    Case("v2.unknown_model", "v2", "infer on a model that is not served: 404", REJECT,
         lambda m, f: _json(f"/v2/models/{NO_MODEL}/infer", {"inputs": v2_inputs(m) or []}),
         quick=True),
    Case("v1.model_status", "v1", "GET /v1/models/M", OK,
         lambda m, f: _get(f"/v1/models/{m.quoted}"), check=shapes.v1_model_status),
    Case("v1.unknown_model", "v1", ":predict on a model that is not served: 404", REJECT,
         lambda m, f: _json(f"/v1/models/{NO_MODEL}:predict", {"instances": ["Hello"]}),
         quick=True),
    Case("openai.models", "openai", "GET models list", OK,
         lambda m, f: _get(f"{f.openai_prefix}/models"), quick=True, check=shapes.models_list),
    Case("openai.unknown_model", "openai", "a completion for a model that is not served", REJECT,
         lambda m, f: gen(m, f, model=NO_MODEL), quick=True, needs=("gen",)),
    Case("openai.completions_stream", "openai", "a streamed completion (SSE, ends [DONE])", OK,
         lambda m, f: _json(f"{f.openai_prefix}/completions",
                            completions_body(m, stream=True)),
         quick=True, check=shapes.sse, needs=("completions",)),
    Case("openai.chat_stream", "openai", "a streamed chat completion (SSE, ends [DONE])", OK,
         lambda m, f: _json(f"{f.openai_prefix}/chat/completions", chat_body(m, stream=True)),
         check=shapes.sse, needs=("chat",)),
]  # fmt: skip

UNSUPPORTED = [
    Case("openai.chat_unsupported", "openai", "chat on a model that cannot chat", REJECT,
         lambda m, f: _json(f"{f.openai_prefix}/chat/completions", chat_body(m)),
         quick=True, needs=("!chat",)),
    Case("openai.chat_stream_unsupported", "openai", "streamed chat on a model that cannot chat",
         REJECT, lambda m, f: _json(f"{f.openai_prefix}/chat/completions",
                                    chat_body(m, stream=True)),
         needs=("!chat",)),
    Case("openai.completions_unsupported", "openai", "a completion on a model without them",
         REJECT, lambda m, f: _json(f"{f.openai_prefix}/completions", completions_body(m)),
         needs=("!completions",)),
    Case("openai.embeddings_unsupported", "openai", "embeddings on a model without them", REJECT,
         lambda m, f: _json(f"{f.openai_prefix}/embeddings", {"model": m.name, "input": "Hi"}),
         quick=True, needs=("!embeddings",)),
    Case("v2.infer_unsupported", "v2", "V2 infer on a model that declined it", REJECT,
         lambda m, f: v2_infer(m), needs=("!v2",)),
]  # fmt: skip

GEN = ("gen",)
OPENAI = [
    Case("openai.malformed_json", "openai", "a truncated JSON body", REJECT,
         lambda m, f: _bytes(gen_path(m, f), b'{"model": "' + m.name.encode() + b'", "max_'),
         quick=True, needs=GEN),
    Case("openai.not_an_object", "openai", "a JSON array as the body", REJECT,
         lambda m, f: _bytes(gen_path(m, f), b"[1, 2, 3]"), needs=GEN),
    Case("openai.mistyped_max_tokens", "openai", 'max_tokens: "ten"', REJECT,
         lambda m, f: gen(m, f, max_tokens="ten"), quick=True, needs=GEN),
    Case("openai.mistyped_prompt", "openai", "the prompt/messages as an object", REJECT,
         lambda m, f: gen(m, f, prompt={"text": 1}), needs=GEN),
    Case("openai.negative_temperature", "openai", "temperature: -1", REJECT,
         lambda m, f: gen(m, f, temperature=-1), needs=GEN),
    Case("openai.nan_temperature", "openai", "temperature: NaN (non-finite)", REJECT,
         lambda m, f: gen(m, f, "NaN", temperature=RAW), quick=True, needs=GEN),
    Case("openai.inf_top_p", "openai", "top_p: 1e999 (infinite)", REJECT,
         lambda m, f: gen(m, f, "1e999", top_p=RAW), needs=GEN),
    Case("openai.top_p_out_of_range", "openai", "top_p: 5", REJECT,
         lambda m, f: gen(m, f, top_p=5), needs=GEN),
    Case("openai.negative_max_tokens", "openai", "max_tokens: -1", REJECT,
         lambda m, f: gen(m, f, max_tokens=-1), needs=GEN),
    Case("openai.max_tokens_beyond_context", "openai", "max_tokens: 1e9", EITHER,
         lambda m, f: gen(m, f, max_tokens=1_000_000_000), quick=True, needs=GEN),
    Case("openai.huge_n", "openai", "n: 100000 choices", EITHER,
         lambda m, f: gen(m, f, n=100_000), needs=GEN),
    Case("openai.prompt_too_long", "openai", f"a {len(LONG_PROMPT):,}-character prompt",
         EITHER, lambda m, f: gen(m, f, prompt=LONG_PROMPT), quick=True, needs=GEN),
    Case("openai.oversized_body", "openai", f"a {OVERSIZED_BYTES >> 20} MiB body", EITHER,
         lambda m, f: _oversized(gen_path(m, f), "prompt",
                                 f'{{"model": "{m.name}", "max_tokens": 1, '.encode()),
         needs=GEN),
    Case("openai.unicode", "openai", "emoji, ZWJ, RTL, combining marks, BOM", OK,
         lambda m, f: gen(m, f, prompt=UNICODE), quick=True, needs=GEN),
    Case("openai.control_chars", "openai", "NUL, BEL, ESC in the prompt", EITHER,
         lambda m, f: gen(m, f, prompt="a\u0000b\u0007c\u001b[2J"), needs=GEN),
    Case("openai.lone_surrogate", "openai", "an unpaired surrogate escape (\\ud800)", EITHER,
         lambda m, f: gen(m, f, '"a\\ud800b"', prompt=RAW), needs=GEN),
    Case("openai.invalid_utf8", "openai", "bytes that are not UTF-8", REJECT,
         lambda m, f: gen(m, f, '"a\udcff\udcfeb"', prompt=RAW), needs=GEN),
    Case("openai.mistyped_stop", "openai", "stop: 5", REJECT,
         lambda m, f: gen(m, f, stop=5), needs=GEN),
    Case("openai.chat_bad_role", "openai", 'a message with role "wizard"', REJECT,
         lambda m, f: _json(f"{f.openai_prefix}/chat/completions", chat_body(
             m, messages=[{"role": "wizard", "content": "Hello"}])), needs=("chat",)),
    Case("openai.chat_no_messages", "openai", "messages: []", REJECT,
         lambda m, f: _json(f"{f.openai_prefix}/chat/completions", chat_body(m, messages=[])),
         needs=("chat",)),
    Case("openai.stream_disconnect", "openai", "a stream the client drops after one event", EITHER,
         lambda m, f: gen(m, f, stream=True, max_tokens=64), Kind.STREAM_DISCONNECT, True,
         needs=GEN),
    Case("openai.stream_never_read", "openai", "a stream the client never reads", EITHER,
         lambda m, f: gen(m, f, stream=True, max_tokens=256), Kind.STREAM_STALL, needs=GEN),
    Case("openai.burst", "openai", "--burst concurrent requests (beyond a small queue)", OK,
         lambda m, f: gen(m, f, max_tokens=8), Kind.BURST, True, needs=GEN),
]  # fmt: skip

V2 = ("v2",)
V2_CASES = [
    Case("v2.malformed_json", "v2", "a truncated JSON body", REJECT,
         lambda m, f: _bytes(f"/v2/models/{m.quoted}/infer", b'{"inputs": [{"name": '),
         quick=True, needs=V2),
    Case("v2.wrong_shape", "v2", "shape promises twice the data sent", REJECT,
         lambda m, f: v2_infer(m, lambda t: t.update(shape=[2 * len(t["data"])])),
         quick=True, needs=V2),
    Case("v2.wrong_datatype", "v2", "a datatype other than the metadata's", REJECT,
         lambda m, f: v2_infer(m, _wrong_datatype), quick=True, needs=V2),
    Case("v2.unknown_datatype", "v2", 'datatype "FP128"', REJECT,
         lambda m, f: v2_infer(m, _set(datatype="FP128")), needs=V2),
    Case("v2.negative_shape", "v2", "shape [-3]", REJECT,
         lambda m, f: v2_infer(m, _set(shape=[-3])), needs=V2),
    Case("v2.huge_shape", "v2", "shape [2**40] with one element", REJECT,
         lambda m, f: v2_infer(m, lambda t: t.update(shape=[2**40], data=t["data"][:1])),
         needs=V2),
    Case("v2.mistyped_data", "v2", "data of the wrong JSON type", REJECT,
         lambda m, f: v2_infer(m, lambda t: t.update(
             data=[{"x": 1}] if t["datatype"] == "BYTES" else ["x"] * len(t["data"]))),
         needs=V2),
    Case("v2.unknown_input", "v2", "an input name the model does not have", REJECT,
         lambda m, f: v2_infer(m, _set(name="no_such_input_probe")), needs=V2),
    Case("v2.no_inputs", "v2", "inputs: []", REJECT,
         lambda m, f: _json(f"/v2/models/{m.quoted}/infer", {"inputs": []}), needs=V2),
    Case("v2.byte_count", "v2", "binary extension: 64 bytes promised, 3 sent", REJECT,
         _byte_count, quick=True, needs=V2),
    Case("v2.nonfinite", "v2", "NaN and Infinity as tensor data", EITHER,
         lambda m, f: v2_infer(m, _nonfinite, raw="[NaN, Infinity, -Infinity]"),
         needs=V2),
    Case("v2.unicode", "v2", "unicode edge cases as BYTES data", EITHER,
         lambda m, f: v2_infer(m, lambda t: t["datatype"] == "BYTES" and t.update(
             data=[UNICODE] * len(t["data"])) is None),
         needs=V2),
    Case("v2.invalid_utf8", "v2", "bytes that are not UTF-8", REJECT,
         lambda m, f: _bytes(f"/v2/models/{m.quoted}/infer",
                             b'{"inputs": [{"name": "\xff\xfe", "shape": [1]}]}'), needs=V2),
    Case("v2.oversized_body", "v2", f"a {OVERSIZED_BYTES >> 20} MiB body", EITHER,
         lambda m, f: _oversized(f"/v2/models/{m.quoted}/infer", "id"), needs=V2),
    Case("v2.burst", "v2", "--burst concurrent infer requests", OK,
         lambda m, f: v2_infer(m), Kind.BURST, needs=("v2", "!gen")),
]  # fmt: skip

V1 = ("v1",)
V1_CASES = [
    Case("v1.malformed_json", "v1", "a truncated JSON body", REJECT,
         lambda m, f: _bytes(f"/v1/models/{m.quoted}:predict", b'{"instances": [1, '),
         quick=True, needs=V1),
    Case("v1.instances_not_a_list", "v1", "instances: 5", REJECT,
         lambda m, f: _v1(m, {"instances": 5}), quick=True, needs=V1),
    Case("v1.no_instances", "v1", "a body without instances", REJECT,
         lambda m, f: _v1(m, {"data": v1_instances(m)}), needs=V1),
    Case("v1.empty_instances", "v1", "instances: []", EITHER,
         lambda m, f: _v1(m, {"instances": []}), needs=V1),
    Case("v1.nonfinite", "v1", "instances: [NaN, Infinity]", EITHER,
         lambda m, f: _v1(m, {"instances": RAW}, "[NaN, Infinity]"), needs=V1),
    Case("v1.unicode", "v1", "unicode edge cases as an instance", EITHER,
         lambda m, f: _v1(m, {"instances": [UNICODE]}), needs=V1),
    Case("v1.invalid_utf8", "v1", "bytes that are not UTF-8", REJECT,
         lambda m, f: _bytes(f"/v1/models/{m.quoted}:predict", b'{"instances": ["\xff\xfe"]}'),
         needs=V1),
    Case("v1.oversized_body", "v1", f"a {OVERSIZED_BYTES >> 20} MiB body", EITHER,
         lambda m, f: _oversized(f"/v1/models/{m.quoted}:predict", "padding"), needs=V1),
]  # fmt: skip

BATTERY: list[Case] = [*CAPABILITIES, *CONFORMANCE, *UNSUPPORTED, *OPENAI, *V2_CASES, *V1_CASES]


def select(quick: bool, patterns: list[str] | None = None) -> list[Case]:
    """The cases to run: all, or the quick subset; ``patterns`` (fnmatch) narrow it further.
    Capability cases always run (the others depend on what they find)."""
    from fnmatch import fnmatch

    chosen = []
    for case in BATTERY:
        if case.kind is not Kind.CAPABILITY and (
            (quick and not case.quick)
            or (patterns and not any(fnmatch(case.name, p) for p in patterns))
        ):
            continue
        chosen.append(case)
    return chosen

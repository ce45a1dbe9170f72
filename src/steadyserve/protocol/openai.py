"""OpenAI API codec: validation against the model, wire ⇄ neutral types (pure, no I/O).

The routes (``transport/routes_openai.py``) parse a body with :mod:`openai_schema`, then call
these functions, which raise :class:`~steadyserve.errors.InvalidInput` (400, ``param`` named) or
:class:`~steadyserve.errors.UnsupportedEndpoint` for anything the model cannot serve - before
anything reaches the engine - and build OpenAI-shaped responses and stream chunks.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from steadyserve.errors import InvalidInput, UnsupportedEndpoint
from steadyserve.protocol.openai_schema import ChatMessage, ChatRequest, CompletionRequest
from steadyserve.types import Capability, ModelInfo, SamplingParams

MAX_N = 16
MAX_SEQUENCES = 64
MAX_PROMPTS = 64
MAX_STOP = 4
MAX_STOP_CHARS = 256
MAX_LOGPROBS = 20
MAX_EMBED_INPUTS = 2048
MAX_SEED = 2**63 - 1
DEFAULT_COMPLETION_TOKENS = 16
#: a ``logit_bias`` key: a decimal token id, nothing else (no ``_``, spaces or ``+``)
_TOKEN_ID_KEY = re.compile(r"-?[0-9]+")

_ENDPOINTS = {
    Capability.GENERATE: "completions",
    Capability.CHAT: "chat completions",
    Capability.EMBED: "embeddings",
    Capability.PREDICT: "v1",
    Capability.INFER: "v2",
}


def supported(info: ModelInfo) -> str:
    """The endpoints a model serves, for error messages: ``completions, v1, v2``."""
    names = [_ENDPOINTS[c] for c in _ENDPOINTS if c in info.capabilities]
    return ", ".join(names) or "nothing"


def require(info: ModelInfo, capability: str, what: str, reason: str = "") -> None:
    """400 naming what the model does support, unless it declares ``capability``."""
    if capability not in info.capabilities:
        detail = f" ({reason})" if reason else ""
        raise UnsupportedEndpoint(
            f"model {info.name} does not support {what}{detail}; it supports: {supported(info)}",
            param="model",
        )


def chat_refusal_reason(info: ModelInfo) -> str:
    """Why a model lacks chat: encoder-decoder, or no chat template."""
    if info.is_encoder_decoder:
        return "encoder-decoder model, no chat template"
    return "no chat template"


# ---- sampling ----------------------------------------------------------------------------------


def _finite(value: float) -> bool:
    """``math.isfinite`` that is False (not an ``OverflowError``) for a JSON integer too large
    for a float (``1`` followed by 309 zeros)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _in_range(
    value: float | None, name: str, lo: float, hi: float, *, lo_open: bool = False
) -> None:
    if value is None:
        return
    ok = _finite(value) and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        bracket = "(" if lo_open else "["
        raise InvalidInput(f"'{name}' must be in {bracket}{lo}, {hi}], got {value}", param=name)


def stop_strings(stop: str | list[str] | None) -> list[str]:
    """Validated stop strings (at most 4, each at most 256 characters)."""
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > MAX_STOP:
        raise InvalidInput(f"'stop' has {len(stops)} entries; at most {MAX_STOP}", param="stop")
    for s in stops:
        if len(s) > MAX_STOP_CHARS:
            raise InvalidInput(
                f"each 'stop' entry must be at most {MAX_STOP_CHARS} characters", param="stop"
            )
    return [s for s in stops if s]


def check_token_ids(ids: Sequence[int], vocab_size: int | None, param: str) -> None:
    """Token ids must be in ``[0, vocab_size)``."""
    limit = vocab_size if vocab_size is not None else 2**31
    for t in ids:
        if not 0 <= t < limit:
            raise InvalidInput(
                f"token id {t} in '{param}' is out of range [0, {limit})", param=param
            )


def sampling_params(
    req: CompletionRequest | ChatRequest,
    info: ModelInfo,
    *,
    logprobs: int | None,
) -> SamplingParams:
    """Range-check the sampling fields shared by completions and chat; ``max_tokens`` is set
    later (it may depend on the prompt length)."""
    if not 1 <= req.n <= MAX_N:
        raise InvalidInput(f"'n' must be in [1, {MAX_N}], got {req.n}", param="n")
    if req.best_of is not None and req.best_of != req.n:
        raise InvalidInput("'best_of' is only supported when equal to 'n'", param="best_of")
    _in_range(req.temperature, "temperature", 0.0, 2.0)
    _in_range(req.top_p, "top_p", 0.0, 1.0, lo_open=True)
    _in_range(req.presence_penalty, "presence_penalty", -2.0, 2.0)
    _in_range(req.frequency_penalty, "frequency_penalty", -2.0, 2.0)
    _in_range(req.repetition_penalty, "repetition_penalty", 0.0, 2.0, lo_open=True)
    if req.top_k is not None and req.top_k < -1:
        raise InvalidInput("'top_k' must be >= 0 (0 or -1: off)", param="top_k")
    if req.min_tokens < 0:
        raise InvalidInput("'min_tokens' must be >= 0", param="min_tokens")
    if req.seed is not None and not -MAX_SEED - 1 <= req.seed <= MAX_SEED:
        raise InvalidInput("'seed' is out of range (64-bit integer)", param="seed")
    if req.response_format is not None and req.response_format.type != "text":
        raise InvalidInput(
            f"response_format type '{req.response_format.type[:50]}' is not supported; only 'text'",
            param="response_format",
        )
    bias: dict[int, float] = {}
    for key, value in (req.logit_bias or {}).items():
        token = _token_id_key(key)
        check_token_ids([token], info.vocab_size, "logit_bias")
        if not (_finite(value) and -100 <= value <= 100):
            raise InvalidInput("logit_bias values must be in [-100, 100]", param="logit_bias")
        bias[token] = float(value)
    stop_ids = list(req.stop_token_ids or [])
    check_token_ids(stop_ids, info.vocab_size, "stop_token_ids")
    return SamplingParams(
        temperature=1.0 if req.temperature is None else float(req.temperature),
        top_p=1.0 if req.top_p is None else float(req.top_p),
        top_k=max(0, req.top_k or 0),
        seed=req.seed,
        min_tokens=req.min_tokens,
        ignore_eos=req.ignore_eos,
        stop_token_ids=stop_ids,
        logprobs=logprobs,
        logit_bias=bias,
        repetition_penalty=1.0 if req.repetition_penalty is None else float(req.repetition_penalty),
        presence_penalty=float(req.presence_penalty or 0.0),
        frequency_penalty=float(req.frequency_penalty or 0.0),
    )


def _token_id_key(key: str) -> int:
    """A ``logit_bias`` key as a token id: only ``-?[0-9]+`` (``int()`` would also take
    ``"5_0"`` or ``" 5 "``)."""
    try:
        if _TOKEN_ID_KEY.fullmatch(key) is not None:
            return int(key)
    except ValueError:  # more digits than int() converts
        pass
    raise InvalidInput(f"logit_bias key '{key[:50]}' is not a token id", param="logit_bias")


def completion_logprobs(req: CompletionRequest) -> int | None:
    if req.logprobs is None:
        return None
    if not 0 <= req.logprobs <= MAX_LOGPROBS:
        raise InvalidInput(f"'logprobs' must be in [0, {MAX_LOGPROBS}]", param="logprobs")
    if req.echo:
        raise InvalidInput("'echo' with 'logprobs' is not supported", param="echo")
    return req.logprobs


def chat_logprobs(req: ChatRequest) -> int | None:
    if req.top_logprobs is not None:
        if not 0 <= req.top_logprobs <= MAX_LOGPROBS:
            raise InvalidInput(
                f"'top_logprobs' must be in [0, {MAX_LOGPROBS}]", param="top_logprobs"
            )
        if not req.logprobs:
            raise InvalidInput("'top_logprobs' requires 'logprobs': true", param="top_logprobs")
    return (req.top_logprobs or 0) if req.logprobs else None


def max_tokens_field(req: CompletionRequest | ChatRequest) -> str:
    """The name of the field the client set the budget with (chat's ``max_completion_tokens``
    wins over ``max_tokens``), for error messages and ``param``."""
    if isinstance(req, ChatRequest) and req.max_completion_tokens is not None:
        return "max_completion_tokens"
    return "max_tokens"


def requested_max_tokens(req: CompletionRequest | ChatRequest) -> int | None:
    """``max_tokens`` (or chat's ``max_completion_tokens``), validated >= 1; None if unset."""
    name = max_tokens_field(req)
    value = req.max_tokens
    if isinstance(req, ChatRequest) and name == "max_completion_tokens":
        value = req.max_completion_tokens
    if value is not None and value < 1:
        raise InvalidInput(f"'{name}' must be >= 1, got {value}", param=name)
    return value


def resolve_max_tokens(
    requested: int | None,
    prompt_tokens: int,
    info: ModelInfo,
    *,
    default: int | None,
    min_tokens: int = 0,
    param: str = "max_tokens",
) -> int:
    """The completion budget (400 naming the counts when it cannot fit).

    Decoder-only models: prompt + max_tokens must fit ``max_model_len``. Encoder-decoder models:
    the prompt (encoder input) and max_tokens (decoder output) are each bounded by it. Without
    ``max_tokens`` the budget is ``default`` (None: all the room left), raised to ``min_tokens``
    and clipped to the room; ``param`` names the field the client used."""
    limit = info.max_model_len
    enc_dec = info.is_encoder_decoder
    if limit is not None and (prompt_tokens > limit if enc_dec else prompt_tokens >= limit):
        raise InvalidInput(
            f"the prompt has {prompt_tokens} tokens; this model's context is {limit} tokens",
            param="prompt",
        )
    room = None if limit is None else (limit if enc_dec else limit - prompt_tokens)
    if requested is None:
        budget = default if default is not None else (room if room is not None else 16)
        budget = max(budget, min_tokens)
        if room is not None and min_tokens > room:
            raise InvalidInput(
                _min_tokens_refusal(min_tokens, prompt_tokens, limit, enc_dec), param="min_tokens"
            )
        return budget if room is None else min(budget, room)
    if room is not None and requested > room:
        if enc_dec:
            raise InvalidInput(
                f"{param} ({requested}) exceeds this model's limit of {limit} output tokens",
                param=param,
            )
        raise InvalidInput(
            f"prompt_tokens ({prompt_tokens}) + {param} ({requested}) = "
            f"{prompt_tokens + requested} exceeds this model's context of {limit} tokens",
            param=param,
        )
    return requested


def _min_tokens_refusal(
    min_tokens: int, prompt_tokens: int, limit: int | None, enc_dec: bool
) -> str:
    if enc_dec:
        return f"min_tokens ({min_tokens}) exceeds this model's limit of {limit} output tokens"
    return (
        f"prompt_tokens ({prompt_tokens}) + min_tokens ({min_tokens}) = "
        f"{prompt_tokens + min_tokens} exceeds this model's context of {limit} tokens"
    )


def check_prompt_chars(
    text: str, info: ModelInfo, max_token_chars: int, *, param: str, what: str = "the prompt"
) -> None:
    """Refuse a text too long for the context before tokenizing it (which costs seconds of CPU
    for megabytes): no token is longer than ``max_token_chars`` characters, so a text longer than
    ``max_model_len * max_token_chars`` cannot fit."""
    limit = info.max_model_len
    if limit is None or len(text) <= limit * max(1, max_token_chars):
        return
    raise InvalidInput(
        f"{what} has {len(text)} characters, more than this model's context of {limit} tokens "
        f"can hold (at most {limit * max_token_chars} characters)",
        param=param,
    )


# ---- prompts -----------------------------------------------------------------------------------


def normalize_prompts(
    prompt: str | list[str] | list[int] | list[list[int]], param: str = "prompt"
) -> list[str | list[int]]:
    """One entry per prompt: a string or a list of token ids (at most 64, none empty)."""
    if isinstance(prompt, str):
        items: list[Any] = [prompt]
    elif not prompt:
        raise InvalidInput(f"'{param}' must not be empty", param=param)
    elif isinstance(prompt[0], int):
        items = [prompt]
    else:
        items = list(prompt)
    if len(items) > MAX_PROMPTS:
        raise InvalidInput(
            f"'{param}' has {len(items)} entries; at most {MAX_PROMPTS}", param=param
        )
    for item in items:
        if len(item) == 0:
            raise InvalidInput(f"'{param}' must not contain an empty prompt", param=param)
    return items


def chat_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as plain dicts for a chat template; text content parts are joined."""
    if not messages:
        raise InvalidInput("'messages' must not be empty", param="messages")
    if len(messages) > 4096:
        raise InvalidInput("'messages' has too many entries (max 4096)", param="messages")
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        _check_message(i, msg)
        content = msg.content
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if part.type != "text" or part.text is None:
                    raise InvalidInput(
                        f"messages[{i}].content[{j}]: only text content parts are supported",
                        param=f"messages[{i}].content",
                    )
                texts.append(part.text)
            content = "\n".join(texts)
        entry: dict[str, Any] = {"role": msg.role, "content": content or ""}
        if msg.name is not None:
            entry["name"] = msg.name
        out.append(entry)
    return out


#: roles whose message must carry content (an assistant turn may be empty)
_CONTENT_ROLES = ("system", "developer", "user")


def _check_message(i: int, msg: ChatMessage) -> None:
    """A known role; content where the role needs it; no tool or function calls."""
    if msg.role not in ("system", "developer", "user", "assistant", "tool"):
        raise InvalidInput(
            f"messages[{i}].role '{msg.role[:50]}' is not one of system, developer, user, "
            "assistant, tool",
            param=f"messages[{i}].role",
        )
    if msg.role in _CONTENT_ROLES and (msg.content is None or msg.content == []):
        raise InvalidInput(
            f"messages[{i}].content is required for a {msg.role} message",
            param=f"messages[{i}].content",
        )
    for name in ("tool_calls", "function_call"):
        if getattr(msg, name) is not None and getattr(msg, name) != []:
            raise InvalidInput(
                f"messages[{i}].{name} is not supported (this server has no tool support)",
                param=f"messages[{i}].{name}",
            )


def check_chat_extras(req: ChatRequest, allow_request_template: bool) -> None:
    """Refuse what chat cannot honour - tools and legacy functions, audio and non-text
    modalities, predicted outputs - and per-request templates unless allowed."""
    if req.tools:
        raise InvalidInput("'tools' are not supported", param="tools")
    if req.tool_choice is not None and req.tool_choice != "none":
        raise InvalidInput(
            "'tool_choice' needs 'tools', which are not supported", param="tool_choice"
        )
    if req.functions:
        raise InvalidInput("'functions' are not supported", param="functions")
    if req.function_call is not None and req.function_call != "none":
        raise InvalidInput(
            "'function_call' needs 'functions', which are not supported", param="function_call"
        )
    if req.audio is not None:
        raise InvalidInput("'audio' output is not supported", param="audio")
    if req.modalities is not None and any(m != "text" for m in req.modalities):
        raise InvalidInput("'modalities' other than 'text' are not supported", param="modalities")
    if req.prediction is not None:
        raise InvalidInput("'prediction' (predicted outputs) is not supported", param="prediction")
    if (req.chat_template is not None or req.chat_template_kwargs) and not allow_request_template:
        param = "chat_template" if req.chat_template is not None else "chat_template_kwargs"
        raise InvalidInput(
            f"'{param}' in a request is disabled on this server "
            "(enable with --allow_request_chat_template)",
            param=param,
        )


#: apply_chat_template / renderer arguments a request's chat_template_kwargs may not set
RESERVED_TEMPLATE_KWARGS = frozenset(
    {
        "messages",
        "conversation",
        "tokenize",
        "add_generation_prompt",
        "chat_template",
        "continue_final_message",
        "return_tensors",
        "return_dict",
        "return_assistant_tokens_mask",
        "padding",
        "truncation",
        "max_length",
        "tokenizer_kwargs",
        "tools",
        "documents",
        "bos_token",
        "eos_token",
    }
)


def template_kwargs(req: ChatRequest) -> dict[str, Any]:
    """``chat_template_kwargs`` as extra template variables (never the renderer's own
    arguments)."""
    kwargs = dict(req.chat_template_kwargs or {})
    for key in kwargs:
        if not key.isidentifier() or key in RESERVED_TEMPLATE_KWARGS:
            raise InvalidInput(
                f"chat_template_kwargs may not set '{key[:50]}'", param="chat_template_kwargs"
            )
    return kwargs


# ---- whole requests ------------------------------------------------------------------------------


@dataclass
class Plan:
    """The model-independent outcome of validating a generation request."""

    params: SamplingParams
    stops: list[str]
    max_tokens: int | None
    logprobs: int | None
    prompts: list[str | list[int]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    #: the field the client set ``max_tokens`` with (named in errors)
    max_tokens_param: str = "max_tokens"

    def budget(self, prompt_tokens: int, info: ModelInfo, *, default: int | None) -> int:
        """This request's ``max_tokens`` for a prompt of ``prompt_tokens`` tokens."""
        return resolve_max_tokens(
            self.max_tokens,
            prompt_tokens,
            info,
            default=default,
            min_tokens=self.params.min_tokens,
            param=self.max_tokens_param,
        )


def plan_completion(req: CompletionRequest, info: ModelInfo) -> Plan:
    """Validate a completions request against the model (before tokenization)."""
    require(info, Capability.GENERATE, "completions")
    if req.suffix:
        raise InvalidInput("'suffix' is not supported", param="suffix")
    logprobs = completion_logprobs(req)
    params = sampling_params(req, info, logprobs=logprobs)
    plan = Plan(
        params,
        stop_strings(req.stop),
        requested_max_tokens(req),
        logprobs,
        prompts=normalize_prompts(req.prompt),
        max_tokens_param=max_tokens_field(req),
    )
    if len(plan.prompts) * req.n > MAX_SEQUENCES:
        raise InvalidInput(
            f"{len(plan.prompts)} prompts x n={req.n} is more than {MAX_SEQUENCES} sequences",
            param="n",
        )
    _check_min_tokens(plan)
    return plan


def chat_allowed(req: ChatRequest, info: ModelInfo, allow_request_template: bool) -> None:
    """400 unless the model can chat: it has a chat template, or the request brings one (when
    the server allows it) for a decoder-only generative model with a tokenizer."""
    own = req.chat_template is not None and allow_request_template
    if not (
        own
        and Capability.GENERATE in info.capabilities
        and info.tokenizer_dir
        and not info.is_encoder_decoder
    ):
        require(info, Capability.CHAT, "chat completions", chat_refusal_reason(info))


def plan_chat(req: ChatRequest, info: ModelInfo, allow_request_template: bool) -> Plan:
    """Validate a chat request against the model (before rendering and tokenization)."""
    chat_allowed(req, info, allow_request_template)
    check_chat_extras(req, allow_request_template)
    messages = chat_messages(req.messages)
    template_kwargs(req)
    logprobs = chat_logprobs(req)
    params = sampling_params(req, info, logprobs=logprobs)
    plan = Plan(
        params,
        stop_strings(req.stop),
        requested_max_tokens(req),
        logprobs,
        messages=messages,
        max_tokens_param=max_tokens_field(req),
    )
    _check_min_tokens(plan)
    return plan


def _check_min_tokens(plan: Plan) -> None:
    if plan.max_tokens is not None and plan.params.min_tokens > plan.max_tokens:
        raise InvalidInput(
            f"'min_tokens' must not exceed '{plan.max_tokens_param}'", param="min_tokens"
        )


# ---- embeddings ----------------------------------------------------------------------------


def embedding_inputs(
    value: str | list[str] | list[int] | list[list[int]], info: ModelInfo
) -> tuple[list[str] | None, list[list[int]] | None]:
    """Texts or token-id lists (at most 2048, none empty)."""
    if isinstance(value, str):
        items: list[Any] = [value]
    elif not value:
        raise InvalidInput("'input' must not be empty", param="input")
    elif isinstance(value[0], int):
        items = [value]
    else:
        items = list(value)
    if len(items) > MAX_EMBED_INPUTS:
        raise InvalidInput(
            f"'input' has {len(items)} entries; at most {MAX_EMBED_INPUTS}", param="input"
        )
    for item in items:
        if len(item) == 0:
            raise InvalidInput("'input' must not contain an empty string or array", param="input")
    if isinstance(items[0], str):
        return [str(x) for x in items], None
    ids = [list(x) for x in items]
    for row in ids:
        check_token_ids(row, info.vocab_size, "input")
    return None, ids

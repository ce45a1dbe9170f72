"""OpenAI wire schemas (pydantic v2): completions, chat completions, embeddings.

Unknown extra fields are ignored, as OpenAI does; a field of the wrong *type* is a 400 in the
OpenAI error shape naming the field (:func:`parse`), never a 422 or a 500. Range checks that need
the model (token limits, vocabulary) live in :mod:`steadyserve.protocol.openai`.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, ValidationError

from steadyserve.errors import InvalidInput

Number = Union[StrictInt, float]
"""A JSON number (a bool is not one)."""

PromptInput = Union[StrictStr, list[StrictStr], list[StrictInt], list[list[StrictInt]]]
"""``prompt`` / ``input``: a string, strings, token ids, or lists of token ids."""


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class StreamOptions(_Wire):
    include_usage: StrictBool = False


class ResponseFormat(_Wire):
    type: StrictStr


class _Sampling(_Wire):
    """Fields shared by completions and chat completions."""

    model: StrictStr
    max_tokens: StrictInt | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    top_k: StrictInt | None = None
    n: StrictInt = 1
    best_of: StrictInt | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = None
    stop_token_ids: list[StrictInt] | None = None
    seed: StrictInt | None = None
    min_tokens: StrictInt = 0
    ignore_eos: StrictBool = False
    logit_bias: dict[str, Number] | None = None
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    repetition_penalty: Number | None = None
    user: Any = None  # ignored
    response_format: ResponseFormat | None = None


class CompletionRequest(_Sampling):
    prompt: PromptInput
    logprobs: StrictInt | None = None
    echo: StrictBool = False
    suffix: StrictStr | None = None


class ContentPart(_Wire):
    type: StrictStr
    text: StrictStr | None = None


class ChatMessage(_Wire):
    role: StrictStr
    content: StrictStr | list[ContentPart] | None = None
    name: StrictStr | None = None
    tool_calls: Any = None  # refused when set (no tool support)
    function_call: Any = None  # refused when set (legacy function calling)


class ChatRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: StrictInt | None = None
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = None
    add_generation_prompt: StrictBool = True
    chat_template: StrictStr | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    # accepted only to be refused by name (never silently ignored)
    functions: list[Any] | None = None
    function_call: Any = None
    audio: Any = None
    modalities: list[StrictStr] | None = None
    prediction: Any = None


class EmbeddingRequest(_Wire):
    model: StrictStr
    input: PromptInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None
    user: Any = None  # ignored


W = TypeVar("W", bound=BaseModel)

_TYPE_NAMES = {
    "str": "a string",
    "int": "an integer",
    "bool": "a boolean",
    "float": "a number",
    "list": "an array",
    "dict": "an object",
}


def _param(loc: tuple[Any, ...], fields: set[str]) -> str:
    """``('messages', 0, 'content', 'str')`` → ``messages[0].content`` (union tags dropped)."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i == 0 or (isinstance(part, str) and part.isidentifier() and part in fields):
            out += ("." if out else "") + str(part)
        else:
            break
    return out


_NESTED_FIELDS = {"role", "content", "name", "type", "text", "include_usage"}


def parse(schema: type[W], body: Any) -> W:
    """Validate a decoded JSON body against ``schema``; a type error is a 400 naming the field."""
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object", param=None)
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        param = _param(tuple(first["loc"]), _NESTED_FIELDS) or None
        if first["type"] == "missing":
            raise InvalidInput(f"'{param}' is a required property", param=param) from None
        if len(errors) > 1:
            # a union field: name it, without listing every alternative pydantic tried
            raise InvalidInput(f"invalid type for '{param}'", param=param) from None
        msg = str(first.get("msg", "invalid value"))
        raise InvalidInput(f"invalid type for '{param}': {msg}", param=param) from None


__all__ = [
    "ChatMessage",
    "ChatRequest",
    "CompletionRequest",
    "ContentPart",
    "EmbeddingRequest",
    "StreamOptions",
    "parse",
]

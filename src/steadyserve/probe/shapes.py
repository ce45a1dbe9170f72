"""Response-shape checks: does a 2xx answer look like the protocol says it should?

Each check takes the parsed JSON body (or the raw SSE text) and returns ``None`` when the answer
conforms, or one line saying what deviates. Pure functions, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], "str | None"]


def error_in_body(body: Any) -> str | None:
    """A 2xx whose body carries an error is a failure dressed as a success."""
    if isinstance(body, dict) and "error" in body and body["error"]:
        return f"2xx answer carries an error: {str(body['error'])[:160]}"
    return None


def _list_of_dicts(body: Any, key: str) -> list[dict[str, Any]] | str:
    if not isinstance(body, dict):
        return "body is not a JSON object"
    value = body.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(x, dict) for x in value):
        return f"'{key}' is not a non-empty list of objects"
    return value


def completion(body: Any) -> str | None:
    choices = _list_of_dicts(body, "choices")
    if isinstance(choices, str):
        return choices
    if not all(isinstance(c.get("text"), str) for c in choices):
        return "choices[].text is not a string"
    return _usage(body)


def chat(body: Any) -> str | None:
    choices = _list_of_dicts(body, "choices")
    if isinstance(choices, str):
        return choices
    for c in choices:
        message = c.get("message")
        if not isinstance(message, dict) or message.get("role") != "assistant":
            return "choices[].message is not an assistant message"
        if not isinstance(message.get("content"), (str, type(None))):
            return "choices[].message.content is not a string"
    return _usage(body)


def _usage(body: dict[str, Any]) -> str | None:
    usage = body.get("usage")
    if usage is not None and not (
        isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int)
    ):
        return "usage.completion_tokens is not an integer"
    return None


def embeddings(body: Any) -> str | None:
    data = _list_of_dicts(body, "data")
    if isinstance(data, str):
        return data
    vector = data[0].get("embedding")
    if isinstance(vector, str):  # base64 encoding_format
        return None
    if not isinstance(vector, list) or not vector:
        return "data[0].embedding is not a non-empty list"
    if not all(isinstance(x, (int, float)) for x in vector):
        return "data[0].embedding holds non-numbers"
    return None


def models_list(body: Any) -> str | None:
    data = _list_of_dicts(body, "data")
    if isinstance(data, str):
        return data
    if not all(isinstance(m.get("id"), str) for m in data):
        return "data[].id is not a string"
    return None


def sse(text: Any) -> str | None:
    """A complete OpenAI stream: ``data: {json}`` events with choices, then ``data: [DONE]``."""
    if not isinstance(text, str):
        return "stream body is not text"
    events = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    if not events:
        return "no 'data:' events in the stream"
    if events[-1] != "[DONE]":
        return "the stream does not end with 'data: [DONE]'"
    for raw in events[:-1]:
        try:
            event = json.loads(raw)
        except ValueError:
            return f"stream event is not JSON: {raw[:80]}"
        if isinstance(event, dict) and "error" in event:
            return f"in-band stream error: {str(event['error'])[:160]}"
        if not isinstance(event, dict) or not isinstance(event.get("choices"), list):
            return "stream event has no 'choices' list"
    return None


def v1_predict(body: Any) -> str | None:
    if not isinstance(body, dict) or not isinstance(body.get("predictions"), list):
        return "no 'predictions' list"
    return None


def v2_infer(body: Any) -> str | None:
    outputs = _list_of_dicts(body, "outputs")
    if isinstance(outputs, str):
        return outputs
    for out in outputs:
        for key, kind in (("name", str), ("datatype", str), ("shape", list)):
            if not isinstance(out.get(key), kind):
                return f"outputs[].{key} is missing or mistyped"
        if "data" in out and not isinstance(out["data"], list):
            return "outputs[].data is not a list"
    if not isinstance(body.get("model_name"), str):
        return "'model_name' is missing"
    return None


def v2_model_metadata(body: Any) -> str | None:
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        return "'name' is missing"
    for key in ("inputs", "outputs"):
        if not isinstance(body.get(key), list):
            return f"'{key}' is not a list"
    return None


def v2_server_metadata(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "body is not a JSON object"
    for key in ("name", "version"):
        if not isinstance(body.get(key), str):
            return f"'{key}' is missing"
    if not isinstance(body.get("extensions", []), list):
        return "'extensions' is not a list"
    return None


def v1_model_status(body: Any) -> str | None:
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        return "'name' is missing"
    return None

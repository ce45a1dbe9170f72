"""The bad-input battery: the same requests against any generation model, with the answers
every backend must give (status code, and the same error text across backends).

``run_battery(client, model)`` sends every case and returns ``{case: (status, error)}``; a test
compares two backends' results and checks each status against ``CASES``. A good request must
still succeed afterwards (``good_request``).
"""

from __future__ import annotations

from typing import Any

import httpx

OAI = "/openai/v1/completions"
CHAT = "/openai/v1/chat/completions"

#: name -> (path, body or raw bytes, expected status); the model name is filled in
CASES: dict[str, tuple[str, Any, int]] = {
    "max_tokens_past_context": (OAI, {"prompt": "hi", "max_tokens": 100_000}, 400),
    "max_tokens_zero": (OAI, {"prompt": "hi", "max_tokens": 0}, 400),
    "token_outside_vocab": (OAI, {"prompt": [5, 10**6], "max_tokens": 2}, 400),
    "negative_token": (OAI, {"prompt": [5, -1], "max_tokens": 2}, 400),
    "empty_token_prompt": (OAI, {"prompt": [], "max_tokens": 2}, 400),
    "negative_temperature": (OAI, {"prompt": "hi", "temperature": -1}, 400),
    "top_p_zero": (OAI, {"prompt": "hi", "top_p": 0}, 400),
    "top_k_negative": (OAI, {"prompt": "hi", "top_k": -2}, 400),
    "logprobs_too_many": (OAI, {"prompt": "hi", "logprobs": 1000}, 400),
    "n_zero": (OAI, {"prompt": "hi", "n": 0}, 400),
    "wrong_type": (OAI, {"prompt": "hi", "max_tokens": "ten"}, 400),
    "logit_bias_outside_vocab": (OAI, {"prompt": "hi", "logit_bias": {"1000000": 5}}, 400),
    "repetition_penalty_zero": (OAI, {"prompt": "hi", "repetition_penalty": 0}, 400),
    "min_tokens_past_max": (OAI, {"prompt": "hi", "max_tokens": 2, "min_tokens": 5}, 400),
    "stream_bad_param": (OAI, {"prompt": "hi", "stream": True, "temperature": -1}, 400),
    "prompt_too_long": (OAI, {"prompt": "word " * 600, "max_tokens": 2}, 400),
    "unknown_model": (OAI, {"model": "no-such-model", "prompt": "hi"}, 404),
    "malformed_json": (OAI, b'{"prompt": ', 400),
    "chat_no_messages": (CHAT, {"max_tokens": 2}, 400),
    "chat_bad_role": (CHAT, {"messages": [{"role": "wizard", "content": "x"}]}, 400),
    "chat_request_template": (
        CHAT,
        {"messages": [{"role": "user", "content": "x"}], "chat_template": "{{ messages }}"},
        400,
    ),
    "embeddings_on_generator": ("/openai/v1/embeddings", {"input": "x"}, 400),
    "v1_not_a_list": ("/v1/models/{model}:predict", {"instances": "hello"}, 400),
    "v1_bad_instance": ("/v1/models/{model}:predict", {"instances": [3]}, 400),
    "v1_max_new_tokens_zero": (
        "/v1/models/{model}:predict",
        {"instances": ["hi"], "parameters": {"max_new_tokens": 0}},
        400,
    ),
    "v1_too_long": (
        "/v1/models/{model}:predict",
        {"instances": ["word " * 600], "parameters": {"max_new_tokens": 2}},
        400,
    ),
    "v2_wrong_datatype": (
        "/v2/models/{model}/infer",
        {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
        400,
    ),
    "v2_shape_mismatch": (
        "/v2/models/{model}/infer",
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a"]}]},
        400,
    ),
}


def _error_text(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:200]
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return f"{err.get('message')} (param={err.get('param')})"
    return str(err if err is not None else body)[:300]


def run_battery(client: httpx.Client, model: str) -> dict[str, tuple[int, str]]:
    results: dict[str, tuple[int, str]] = {}
    for name, (path, body, _) in CASES.items():
        url = path.replace("{model}", model)
        if isinstance(body, bytes):
            r = client.post(url, content=body, headers={"content-type": "application/json"})
        else:
            payload = dict(body)
            if url.startswith("/openai/"):
                payload.setdefault("model", model)
            r = client.post(url, json=payload)
        results[name] = (r.status_code, _error_text(r))
    return results


def good_request(client: httpx.Client, model: str) -> httpx.Response:
    return client.post(OAI, json={"model": model, "prompt": "hello", "max_tokens": 3})

"""A real server per Hugging Face task (tiny local models): V1 ``:predict``, V2 ``/infer`` with
BYTES text, metadata, a bad input (400) then a good request (200); and the built-in demo model."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers import ServerProcess

#: the server fixture loads six models at once; slow when the machine is shared
pytestmark = pytest.mark.timeout(300)

TASK_FIXTURES = {
    "text_generation": "tiny_gpt2_dir",
    "text2text_generation": "tiny_t5_dir",
    "fill_mask": "tiny_bert_mlm_dir",
    "sequence_classification": "tiny_bert_cls_dir",
    "token_classification": "tiny_bert_tok_dir",
    "text_embedding": "tiny_bert_embed_dir",
}

#: two good inputs per task
TEXTS = {
    "fill_mask": ["the cat sat on the [MASK].", "paris is the [MASK] of france"],
}
DEFAULT_TEXTS = ["John Smith lives in London.", "I love this movie"]
PARAMS: dict[str, dict[str, Any]] = {
    "text_generation": {"max_new_tokens": 4},
    "text2text_generation": {"max_new_tokens": 4},
}
#: a task-specific bad request (instances, parameters) → 400
BAD: dict[str, tuple[list[Any], dict[str, Any]]] = {
    "text_generation": (["hello"], {"max_new_tokens": 0}),
    "text2text_generation": (["hello"], {"max_new_tokens": "many"}),
    "fill_mask": (["no mask token here"], {}),
    "sequence_classification": (["fine"], {"return_all_scores": "yes"}),
    "token_classification": (["fine"], {"ignore_labels": "O"}),
    "text_embedding": (["fine"], {"normalize": 1}),
}


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """ONE server for all six task models (a model repository of links to the tiny models):
    the six workers load in parallel, which keeps this module fast on a small machine."""
    repo = tmp_path_factory.mktemp("hf-repo")
    for task, fixture in TASK_FIXTURES.items():
        os.symlink(request.getfixturevalue(fixture), repo / task)
    with ServerProcess(
        "--model_repository",
        str(repo),
        "--max_batch_wait_ms",
        "1",
        "--torch_threads",
        "1",
        ready_timeout=200,
    ) as srv:
        for task in TASK_FIXTURES:
            srv.wait_until_ready(200, path=f"/v2/models/{task}/ready")
        yield srv


@pytest.fixture(params=list(TASK_FIXTURES))
def served(request: pytest.FixtureRequest, server: ServerProcess) -> tuple[str, ServerProcess]:
    return request.param, server


def _v1(
    client: httpx.Client, model: str, instances: list[Any], parameters: dict[str, Any] | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"instances": instances}
    if parameters:
        body["parameters"] = parameters
    return client.post(f"/v1/models/{model}:predict", json=body)


def _check_prediction(task: str, pred: Any) -> None:
    if task in ("text_generation", "text2text_generation"):
        assert isinstance(pred, str)
    elif task == "fill_mask":
        assert len(pred) == 5 and {"token_str", "score", "sequence"} <= set(pred[0])
        assert pred[0]["score"] >= pred[-1]["score"]
    elif task == "sequence_classification":
        assert pred in ("negative", "positive")
    elif task == "token_classification":
        assert isinstance(pred, list)
        for ent in pred:
            assert {"entity", "score", "word", "start", "end"} <= set(ent) and ent["entity"] != "O"
    else:
        assert len(pred) == 64
        assert abs(sum(x * x for x in pred) - 1.0) < 1e-3


def test_v1_predict(served: tuple[str, ServerProcess]) -> None:
    task, srv = served
    texts = TEXTS.get(task, DEFAULT_TEXTS)
    with srv.client() as c:
        r = _v1(c, task, [texts[0], {"text": texts[1]}], PARAMS.get(task))
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert len(preds) == 2
        for pred in preds:
            _check_prediction(task, pred)


def test_v2_infer_and_metadata(served: tuple[str, ServerProcess]) -> None:
    task, srv = served
    texts = TEXTS.get(task, DEFAULT_TEXTS)
    with srv.client() as c:
        meta = c.get(f"/v2/models/{task}").json()
        assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        body = {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": texts}],
            "parameters": PARAMS.get(task, {}),
        }
        r = c.post(f"/v2/models/{task}/infer", json=body)
        assert r.status_code == 200, r.text
        outputs = {o["name"]: o for o in r.json()["outputs"]}
        # every declared output comes back when none is asked for by name
        assert set(outputs) == {o["name"] for o in meta["outputs"]}
        if task == "fill_mask":
            assert (
                outputs["token_str"]["shape"] == [2, 5] and outputs["score"]["datatype"] == "FP32"
            )
        elif task == "text_embedding":
            assert outputs["embedding"]["shape"] == [2, 64]
        elif task == "token_classification":
            assert outputs["entities"]["shape"] == [2]
            assert isinstance(json.loads(outputs["entities"]["data"][0]), list)
        elif task == "sequence_classification":
            assert set(outputs["label"]["data"]) <= {"negative", "positive"}
            assert outputs["score"]["datatype"] == "FP32" and outputs["score"]["shape"] == [2]
            assert all(0.5 <= p <= 1.0 for p in outputs["score"]["data"])  # the top label's
        else:
            assert outputs["text"]["datatype"] == "BYTES" and outputs["text"]["shape"] == [2]


def test_bad_input_then_good(served: tuple[str, ServerProcess]) -> None:
    task, srv = served
    texts = TEXTS.get(task, DEFAULT_TEXTS)
    instances, params = BAD[task]
    with srv.client() as c:
        for bad_instances, bad_params in ((instances, params), ([123], PARAMS.get(task, {}))):
            r = _v1(c, task, bad_instances, bad_params)
            assert r.status_code == 400, r.text
            assert "error" in r.json() and "Traceback" not in r.text
        r = c.post(
            f"/v2/models/{task}/infer",
            json={
                "inputs": [
                    {"name": "text", "datatype": "BYTES", "shape": [1], "data": [instances[0]]}
                ],
                "parameters": params,
            },
        )
        assert r.status_code == 400, r.text
        r = _v1(c, task, [texts[0]], PARAMS.get(task))
        assert r.status_code == 200, r.text
        _check_prediction(task, r.json()["predictions"][0])


def test_empty_text_is_400_alone_or_batched(served: tuple[str, ServerProcess]) -> None:
    """An empty text means no input: a 400 for every task, whether it comes alone or beside real
    text (the answer never depends on what it is batched with), over V1 and V2."""
    task, srv = served
    text = TEXTS.get(task, DEFAULT_TEXTS)[0]
    with srv.client() as c:
        for instances in ([""], [text, ""]):
            r = _v1(c, task, instances, PARAMS.get(task))
            assert r.status_code == 400 and "empty string" in r.json()["error"], r.text
            body = {
                "inputs": [
                    {
                        "name": "text",
                        "datatype": "BYTES",
                        "shape": [len(instances)],
                        "data": instances,
                    }
                ],
                "parameters": PARAMS.get(task, {}),
            }
            r = c.post(f"/v2/models/{task}/infer", json=body)
            assert r.status_code == 400 and "empty string" in r.json()["error"], r.text
        assert _v1(c, task, [text], PARAMS.get(task)).status_code == 200


def test_generation_parameters_not_honoured_are_400(server: ServerProcess) -> None:
    with server.client() as c:
        for task in ("text_generation", "text2text_generation"):
            r = _v1(c, task, ["hello"], {"max_new_tokens": 2, "temperature": 0.7})
            assert r.status_code == 400 and "'temperature'" in r.json()["error"], r.text
            body = {
                "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}],
                "parameters": {"max_new_tokens": 2, "top_p": 0.5},
            }
            r = c.post(f"/v2/models/{task}/infer", json=body)
            assert r.status_code == 400 and "'top_p'" in r.json()["error"], r.text
            assert _v1(c, task, ["hello"], {"max_new_tokens": 2}).status_code == 200


def test_generation_prompt_too_long(server: ServerProcess) -> None:
    task = "text_generation"
    with server.client() as c:
        r = _v1(c, task, ["word " * 600], {"max_new_tokens": 4})  # tiny gpt2 has 512 positions
        assert r.status_code == 400, r.text
        assert "limit" in r.json()["error"]
        r = _v1(c, task, ["hello"], {"max_new_tokens": 4})
        assert r.status_code == 200, r.text


def test_demo_model_serves(tmp_path: Any) -> None:
    """``steadyserve serve`` with no model serves the demo from STEADYSERVE_CACHE (pre-built here,
    in-process, so the server takes the cached fast path; building is tested in unit tests)."""
    from steadyserve.runtimes.huggingface.tiny import ensure_demo_model

    path = ensure_demo_model(str(tmp_path / "demo-v1"))
    env = {"STEADYSERVE_CACHE": str(tmp_path)}
    with ServerProcess(env=env, ready_timeout=120) as srv, srv.client() as c:
        assert c.get("/v1/models").json()["models"] == ["steadyserve-demo"]
        r = c.post("/v1/models/steadyserve-demo:predict", json={"instances": [{"txt": 1}]})
        assert r.status_code == 400, r.text
        r = c.post(
            "/v1/models/steadyserve-demo:predict",
            json={"instances": ["Hello"], "parameters": {"max_new_tokens": 3}},
        )
        assert r.status_code == 200, r.text
        assert isinstance(r.json()["predictions"][0], str)
    assert sorted(os.listdir(tmp_path)) == ["demo-v1"] and path == str(tmp_path / "demo-v1")


def test_openai_paths(server: ServerProcess) -> None:
    """Chat on T5 (no chat template) is a fast 400 and the model keeps serving; completions on
    T5 and GPT-2 and embeddings on the BERT encoder answer 200."""
    pytest.importorskip("steadyserve.runtimes.huggingface.generation")
    with server.client() as c:
        chat = {"model": "text2text_generation", "messages": [{"role": "user", "content": "hi"}]}
        r = c.post("/openai/v1/chat/completions", json=chat)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_request_error"
        for model in ("text2text_generation", "text_generation"):
            body = {"model": model, "prompt": "Hello", "max_tokens": 3}
            r = c.post("/openai/v1/completions", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["completion_tokens"] <= 3
        body = {"model": "text_embedding", "input": ["hello world", "a"]}
        r = c.post("/openai/v1/embeddings", json=body)
        assert r.status_code == 200, r.text
        assert [len(d["embedding"]) for d in r.json()["data"]] == [64, 64]
        r = c.post("/openai/v1/embeddings", json={**body, "model": "fill_mask"})
        assert r.status_code == 400, r.text

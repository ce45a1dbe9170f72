"""The real ``openai`` Python client against steadyserve (``base_url=.../openai/v1``):
completions, chat, streaming, embeddings, models.list, and BadRequestError for chat on T5."""

from __future__ import annotations

import os
from collections.abc import Iterator

import openai
import pytest

from tests.helpers import ServerProcess

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_t5_dir: str,
    tiny_llama_dir: str,
    tiny_bert_embed_dir: str,
) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("openai-e2e")
    for name, path in (
        ("t5", tiny_t5_dir),
        ("llama", tiny_llama_dir),
        ("bert", tiny_bert_embed_dir),
    ):
        os.symlink(path, repo / name)
    with ServerProcess(
        "--model_repository", str(repo), "--allow_request_chat_template", ready_timeout=300
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{server.url}/openai/v1", api_key="x", max_retries=0, timeout=60
    ) as c:
        yield c


def test_models_list(client: openai.OpenAI) -> None:
    assert sorted(m.id for m in client.models.list()) == ["bert", "llama", "t5"]
    assert client.models.retrieve("llama").id == "llama"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_completions(client: openai.OpenAI) -> None:
    out = client.completions.create(model="t5", prompt="The house is wonderful.", max_tokens=3)
    assert out.object == "text_completion" and len(out.choices) == 1
    assert out.usage is not None and out.usage.completion_tokens <= 3
    stream = client.completions.create(
        model="llama",
        prompt="Hello",
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 3
    assert chunks[-2].choices[0].finish_reason in ("length", "stop")


def test_chat(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    out = client.chat.completions.create(
        model="llama",
        messages=messages,  # type: ignore[arg-type]
        max_tokens=4,
    )
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].finish_reason in ("length", "stop")
    stream = client.chat.completions.create(
        model="llama",
        messages=messages,  # type: ignore[arg-type]
        max_tokens=4,
        stream=True,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_chat_with_request_template(client: openai.OpenAI) -> None:
    template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"
    out = client.chat.completions.create(
        model="llama",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=2,
        extra_body={"chat_template": template},
    )
    assert out.usage is not None and out.usage.prompt_tokens > 2
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="llama",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=2,
            extra_body={"chat_template": "{{ messages.__class__.__mro__ }}"},
        )
    assert info.value.status_code == 400


def test_embeddings(client: openai.OpenAI) -> None:
    out = client.embeddings.create(model="bert", input=["hello world", "goodbye"])
    assert len(out.data) == 2 and len(out.data[0].embedding) > 0
    assert out.usage.prompt_tokens > 0
    # the client asks for base64 by default when numpy is present; both must decode
    b64 = client.embeddings.create(model="bert", input="hello world", encoding_format="base64")
    assert b64.data[0].embedding


def test_chat_on_t5_raises_bad_request_and_the_next_completion_works(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="t5", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 400
    assert "does not support chat completions" in str(info.value)
    out = client.completions.create(model="t5", prompt="Translate: hello", max_tokens=2)
    assert out.choices[0].finish_reason in ("length", "stop")

"""Request chat templates over HTTP (``--allow_request_chat_template``): a template that raises
is a 400 naming ``chat_template`` (it was a 500), a single huge big-int operation is refused in
milliseconds instead of freezing the event loop, and the server answers normally after."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.helpers import ServerProcess

pytestmark = pytest.mark.timeout(300)

GOOD = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"


@pytest.fixture(scope="module")
def server(tiny_gpt2_dir: str) -> Iterator[ServerProcess]:
    with ServerProcess(
        "--model_dir",
        tiny_gpt2_dir,
        "--model_name",
        "gpt2",
        "--allow_request_chat_template",
        ready_timeout=240,
    ) as srv:
        yield srv


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client(timeout=60) as c:
        yield c


def chat(client: httpx.Client, template: str, **fields: Any) -> httpx.Response:
    return client.post(
        "/openai/v1/chat/completions",
        json={
            "model": "gpt2",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
            "chat_template": template,
            **fields,
        },
    )


def assert_good(client: httpx.Client) -> None:
    r = chat(client, GOOD)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize(
    ("template", "kind"),
    [
        ("{{ 1/0 }}", "ZeroDivisionError"),
        ("{{ 2.0 ** 5000 }}", "OverflowError"),
        ("{{ messages | sum }}", "TypeError"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "RecursionError"),
        ("{% for %}", "invalid"),
    ],
)
def test_a_raising_template_is_a_400(client: httpx.Client, template: str, kind: str) -> None:
    r = chat(client, template)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == "chat_template" and kind in err["message"]
    assert "Traceback" not in r.text
    assert_good(client)


@pytest.mark.parametrize(
    "template",
    [
        "{{ (7**6000000) % 3 }}",
        "{{ 'x' * 10**9 }}",
        "{{ 'x'.ljust(10**9) }}",
    ],
)
def test_a_huge_operation_is_refused_fast(client: httpx.Client, template: str) -> None:
    start = time.perf_counter()
    r = chat(client, template)
    elapsed = time.perf_counter() - start
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "chat_template"
    assert elapsed < 1.0, elapsed
    assert_good(client)


def test_the_event_loop_stays_free_while_templates_are_refused(server: ServerProcess) -> None:
    def bad(i: int) -> int:
        with server.client(timeout=60) as c:
            return chat(c, "{{ (7**6000000) % 3 }}").status_code

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(bad, i) for i in range(4)]
        with server.client(timeout=60) as c:
            start = time.perf_counter()
            assert c.get("/v2/health/live").status_code == 200
            assert time.perf_counter() - start < 1.0
        assert [f.result() for f in futures] == [400] * 4

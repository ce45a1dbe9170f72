"""``/metrics``: request counters by route template/model/code that move by exactly the traffic
sent, latency histograms, scrape-time gauges, and the engine counters (cancelled, expired,
restarts) - plus the engine-listener side (TTFT/ITL/tokens) without a server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi import APIRouter
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request

from steadyserve.config import EngineConfig, ModelSpec
from steadyserve.engine import events
from steadyserve.registry import Registry
from steadyserve.settings import build_settings
from steadyserve.transport.context import ServerContext
from steadyserve.transport.http import build_app
from steadyserve.transport.metrics import Metrics
from tests.helpers import FAULTY, ServerProcess, wait_for

PREDICT_ROUTE = "/v1/models/{name}:predict"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(
        "--model_class", FAULTY, "--model_name", "faulty", "--restart_backoff_s", "0.1"
    ) as srv:
        yield srv


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def scrape_text(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def scrape(client: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return scrape_text(r.text)


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def predict(client: httpx.Client, instance: str, **kw: object) -> httpx.Response:
    return client.post("/v1/models/faulty:predict", json={"instances": [instance]}, **kw)  # type: ignore[arg-type]


def test_request_counter_moves_by_the_traffic(client: httpx.Client) -> None:
    ok = dict(method="POST", route=PREDICT_ROUTE, model="faulty", code="200")
    before = scrape(client)
    for _ in range(3):
        assert predict(client, "hello").status_code == 200
    assert predict(client, "raise").status_code == 500
    assert client.post("/v1/models/nobody:predict", json={"instances": [1]}).status_code == 404
    after = scrape(client)
    assert (
        value(after, "steadyserve_requests_total", **ok)
        - value(before, "steadyserve_requests_total", **ok)
        == 3
    )
    err = {**ok, "code": "500"}
    assert (
        value(after, "steadyserve_requests_total", **err)
        - value(before, "steadyserve_requests_total", **err)
        == 1
    )
    # an unknown model name is not a label value (bounded cardinality)
    unknown = dict(method="POST", route=PREDICT_ROUTE, model="", code="404")
    assert value(after, "steadyserve_requests_total", **unknown) >= 1
    assert not any(("model", "nobody") in labels for _, labels in after)
    hist = dict(method="POST", route=PREDICT_ROUTE, model="faulty")
    assert (
        value(after, "steadyserve_request_duration_seconds_count", **hist)
        - value(before, "steadyserve_request_duration_seconds_count", **hist)
        == 4
    )
    assert value(after, "steadyserve_request_duration_seconds_sum", **hist) > value(
        before, "steadyserve_request_duration_seconds_sum", **hist
    )
    assert (
        value(after, "steadyserve_requests_failed_total", model="faulty", error="ModelError") >= 1
    )


def test_route_templates_not_raw_paths(client: httpx.Client) -> None:
    client.get("/definitely/not/a/route/12345")
    samples = scrape(client)
    routes = {dict(labels).get("route") for _, labels in samples}
    assert "<unmatched>" in routes
    assert not any(r and "12345" in r for r in routes)


def test_scrape_time_gauges(client: httpx.Client) -> None:
    samples = scrape(client)
    assert value(samples, "steadyserve_model_ready", model="faulty") == 1
    assert value(samples, "steadyserve_requests_in_flight", model="faulty") == 0
    assert ("steadyserve_worker_running", frozenset({("model", "faulty")})) in samples
    assert ("steadyserve_worker_queued", frozenset({("model", "faulty")})) in samples


def test_expired_cancelled_and_restart_counters(
    client: httpx.Client, server: ServerProcess
) -> None:
    before = scrape(client)
    # deadline: 504 and one expired request
    r = predict(client, "sleep:1.0", headers={"X-Request-Timeout": "0.2"})
    assert r.status_code == 504
    # the client leaves: one cancelled (aborted) request
    with pytest.raises(httpx.ReadTimeout), server.client(timeout=0.3) as impatient:
        predict(impatient, "sleep:1.0")
    wait_for(
        lambda: (
            value(scrape(client), "steadyserve_requests_cancelled_total", model="faulty")
            == value(before, "steadyserve_requests_cancelled_total", model="faulty") + 1
        )
    )
    after = scrape(client)
    assert (
        value(after, "steadyserve_requests_expired_total", model="faulty")
        == value(before, "steadyserve_requests_expired_total", model="faulty") + 1
    )
    # a worker crash: one restart
    assert predict(client, "crash").status_code == 503
    wait_for(
        lambda: (
            value(scrape(client), "steadyserve_worker_restarts_total", model="faulty")
            == value(before, "steadyserve_worker_restarts_total", model="faulty") + 1
        )
    )
    server.wait_until_ready(60)
    assert predict(client, "hello").status_code == 200


def test_engine_listener_records_generation_metrics() -> None:
    """TTFT / inter-token latency / token counts from the engine's stream events."""
    registry = Registry(EngineConfig())
    metrics = Metrics(registry)
    engine = SimpleNamespace(name="gen", listeners=[])
    metrics.attach(engine)
    metrics.attach(engine)  # idempotent
    assert len(engine.listeners) == 1
    listener = engine.listeners[0]
    listener(engine, events.Tokens(first=True, seconds=0.2, tokens=1, prompt_tokens=7))
    listener(engine, events.Tokens(first=False, seconds=0.03, tokens=3))
    listener(engine, events.Tokens(first=False, seconds=0.01, tokens=0))  # final, no tokens
    listener(engine, events.Aborted())
    listener(engine, events.Expired())
    listener(engine, events.Restarted(reason="x"))
    listener(engine, events.QueueWait(0.5))
    listener(engine, events.Failed(ValueError("x")))
    samples = scrape_text(generate_latest(metrics.prometheus).decode())
    gen = {"model": "gen"}
    assert value(samples, "steadyserve_time_to_first_token_seconds_count", **gen) == 1
    assert value(samples, "steadyserve_time_to_first_token_seconds_sum", **gen) == pytest.approx(
        0.2
    )
    assert value(samples, "steadyserve_inter_token_latency_seconds_count", **gen) == 3
    assert value(samples, "steadyserve_inter_token_latency_seconds_sum", **gen) == pytest.approx(
        0.03
    )
    assert value(samples, "steadyserve_completion_tokens_total", **gen) == 4
    assert value(samples, "steadyserve_prompt_tokens_total", **gen) == 7
    assert value(samples, "steadyserve_requests_cancelled_total", **gen) == 1
    assert value(samples, "steadyserve_requests_expired_total", **gen) == 1
    assert value(samples, "steadyserve_worker_restarts_total", **gen) == 1
    assert value(samples, "steadyserve_queue_wait_seconds_sum", **gen) == pytest.approx(0.5)
    assert value(samples, "steadyserve_requests_failed_total", error="ValueError", **gen) == 1
    # the routes' API: unknown model names collapse to ""
    metrics.add_tokens("not-a-model", prompt=2, completion=1)
    samples = scrape_text(generate_latest(metrics.prometheus).decode())
    assert value(samples, "steadyserve_prompt_tokens_total", model="") == 2
    # separate apps have separate registries
    assert Metrics(registry).prometheus is not metrics.prometheus


def test_routes_can_name_the_model_of_a_request() -> None:
    """``ctx.metrics.label_model(request, model)`` (OpenAI routes: the model is in the body)."""
    registry = Registry(EngineConfig(), [ModelSpec(name="body-model", runtime="custom")])
    ctx = ServerContext(settings=build_settings({}, environ={}), registry=registry)
    app = build_app(ctx)
    router = APIRouter()

    @router.post("/test/labelled")
    async def labelled(request: Request) -> dict[str, str]:
        ctx.metrics.label_model(request, "body-model")
        return {}

    app.include_router(router)

    async def go() -> str:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            assert (await c.post("/test/labelled")).status_code == 200
            return (await c.get("/metrics")).text

    samples = scrape_text(asyncio.run(go()))
    labels = dict(method="POST", route="/test/labelled", model="body-model", code="200")
    assert value(samples, "steadyserve_requests_total", **labels) == 1


def test_openai_requests_are_labelled_with_the_body_model(client: httpx.Client) -> None:
    labels = dict(method="POST", route="/v1/completions", model="faulty", code="200")
    before = value(scrape(client), "steadyserve_requests_total", **labels)
    r = client.post("/v1/completions", json={"model": "faulty", "prompt": "x", "max_tokens": 2})
    assert r.status_code == 200
    r = client.post("/v1/completions", json={"model": "nope", "prompt": "x"})
    assert r.status_code == 404
    after = scrape(client)
    assert value(after, "steadyserve_requests_total", **labels) == before + 1
    # an unknown model is not a label value
    assert not any(dict(lb).get("model") == "nope" for _, lb in after)


def test_predict_work_shows_in_the_worker_gauges(
    client: httpx.Client, server: ServerProcess, tmp_path: Path
) -> None:
    """A running predict batch and the requests waiting behind it are visible (not only
    generation): `worker_running` / `worker_queued` and /debug/engine agree."""
    import threading

    # held in the worker until released (not for a fixed time: under load the three requests
    # may take longer than any fixed sleep to arrive)
    release = tmp_path / "release"
    threads = [threading.Thread(target=predict, args=(client, f"wait:{release}")) for _ in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    try:

        def busy() -> bool:
            samples = scrape(client)
            running = value(samples, "steadyserve_worker_running", model="faulty")
            queued = value(samples, "steadyserve_worker_queued", model="faulty")
            return running >= 1 and running + queued == 3

        wait_for(busy, timeout=30)
        stats = server.debug()["models"]["faulty"]
        assert stats["worker_running"] >= 1 and stats["in_flight"] == 3
    finally:
        release.touch()
        for t in threads:
            t.join(30)
    wait_for(
        lambda: (
            value(scrape(client), "steadyserve_worker_running", model="faulty") == 0
            and value(scrape(client), "steadyserve_worker_queued", model="faulty") == 0
        )
    )

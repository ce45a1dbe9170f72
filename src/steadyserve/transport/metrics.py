"""Prometheus metrics, one :class:`Metrics` (and one ``CollectorRegistry``) per app.

Served at ``GET /metrics`` in the Prometheus text format. Families (all prefixed ``steadyserve_``):

==========================================  =========  ===========================================
name                                        type       labels / meaning
==========================================  =========  ===========================================
``requests_total``                          counter    method, route (template), model, code
                                                       (gRPC: method ``gRPC``, route
                                                       ``/inference.GRPCInferenceService/<RPC>``,
                                                       the HTTP-equivalent code)
``request_duration_seconds``                histogram  method, route, model: end to end, until
                                                       the last body byte (streams included)
``queue_wait_seconds``                      histogram  model: admission → start of work, fed by
                                                       the engine event ``QueueWait``;
                                                       empty until the worker reports queue time
``time_to_first_token_seconds``             histogram  model: admission → first token (streams)
``inter_token_latency_seconds``             histogram  model: gap between tokens (streams)
``prompt_tokens_total``                     counter    model
``completion_tokens_total``                 counter    model
``worker_restarts_total``                   counter    model
``requests_cancelled_total``                counter    model: the client went away (aborted)
``requests_expired_total``                  counter    model: the deadline passed (504)
``requests_failed_total``                   counter    model, error (error class name)
``requests_in_flight``                      gauge      model (scrape time, ``engine.stats()``)
``worker_running`` / ``worker_queued``      gauge      model (scrape time, the worker's heartbeat)
``model_ready``                             gauge      model: 1 when the model serves requests
==========================================  =========  ===========================================

The ``model`` label only ever holds a name the registry knows (or ``""``): a client cannot
grow the label set by sending made-up names. ``route`` is the route's template
(``/v2/models/{name}/infer``), never the raw path; unmatched paths count as ``<unmatched>``.

API for the routes (the OpenAI routes in particular)::

    ctx.metrics.label_model(request, model)   # the model named in the *body*; path params
                                              # (``{name}``) are picked up automatically
    ctx.metrics.add_tokens(model, prompt=12, completion=0)

Time to first token, inter-token latency and completion tokens are recorded for every
``engine.generate`` stream (the OpenAI routes: continuous batching) by an engine listener
(typed :mod:`steadyserve.engine.events`, one ``Tokens`` per request and engine step, timed when
the step reached the server), so the routes need not time streams themselves. V1
``:predict`` / V2 ``infer`` on a generative model run one batched ``generate()`` in the dynamic
batcher and are seen in the request metrics only; ``add_tokens`` exists for token work that
does not go through ``engine.generate``.
``ctx.metrics`` is ``None`` when the app was built without :func:`middleware.install`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from steadyserve.engine import events
from steadyserve.engine.events import EngineEvent
from steadyserve.engine.protocol import EngineClient
from steadyserve.registry import Registry

log = logging.getLogger("steadyserve.metrics")

PREFIX = "steadyserve"
#: the scope key the routes set (via :meth:`Metrics.label_model`) to name the model of a request
MODEL_SCOPE_KEY = "steadyserve.model"
UNMATCHED_ROUTE = "<unmatched>"

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
TOKEN_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
    2.5,
)


class _EngineCollector(Collector):
    """Gauges computed at scrape time from the registry's engines."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            f"{PREFIX}_requests_in_flight",
            "Requests admitted and not yet completed.",
            labels=["model"],
        )
        running = GaugeMetricFamily(
            f"{PREFIX}_worker_running",
            "Requests the worker is running (last heartbeat).",
            labels=["model"],
        )
        queued = GaugeMetricFamily(
            f"{PREFIX}_worker_queued",
            "Requests queued in the worker (last heartbeat).",
            labels=["model"],
        )
        ready = GaugeMetricFamily(
            f"{PREFIX}_model_ready", "1 when the model serves requests.", labels=["model"]
        )
        for engine in self.registry.engines():
            stats = engine.stats()
            in_flight.add_metric([engine.name], float(stats.get("in_flight", 0)))
            running.add_metric([engine.name], float(stats.get("worker_running", 0)))
            queued.add_metric([engine.name], float(stats.get("worker_queued", 0)))
            ready.add_metric([engine.name], 1.0 if engine.ready else 0.0)
        yield from (in_flight, running, queued, ready)


class Metrics:
    """Every metric of one server; thread-compatible (prometheus-client locks internally)."""

    def __init__(self, registry: Registry) -> None:
        #: the models (steadyserve's registry): label values are names it knows
        self.model_registry = registry
        #: the Prometheus collector registry served at /metrics
        self.prometheus = CollectorRegistry(auto_describe=True)
        r = self.prometheus
        self.requests = Counter(
            f"{PREFIX}_requests",
            "HTTP requests by route template, model and status code.",
            ["method", "route", "model", "code"],
            registry=r,
        )
        self.duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "End-to-end HTTP request latency.",
            ["method", "route", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds",
            "Time from admission to the start of work.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "Time from admission to the first token.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            f"{PREFIX}_inter_token_latency_seconds",
            "Time between tokens of a stream.",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            f"{PREFIX}_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            f"{PREFIX}_completion_tokens", "Tokens generated.", ["model"], registry=r
        )
        self.restarts = Counter(
            f"{PREFIX}_worker_restarts",
            "Model worker restarts (crash, hang, failed load).",
            ["model"],
            registry=r,
        )
        self.cancelled = Counter(
            f"{PREFIX}_requests_cancelled",
            "Requests aborted because the client went away.",
            ["model"],
            registry=r,
        )
        self.expired = Counter(
            f"{PREFIX}_requests_expired",
            "Requests that passed their deadline.",
            ["model"],
            registry=r,
        )
        self.failed = Counter(
            f"{PREFIX}_requests_failed",
            "Requests the engine ended with an error.",
            ["model", "error"],
            registry=r,
        )
        r.register(_EngineCollector(registry))
        #: model → (ttft, itl, completion, prompt) children (only names the registry gave)
        self._token_metric_children: dict[str, tuple[Any, Any, Any, Any]] = {}
        #: (method, route, model, code) → (counter, histogram) children; bounded like the labels
        self._request_children: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}

    # ---- the API for routes ---------------------------------------------------------------
    def model_label(self, name: str | None) -> str:
        """``name`` if the registry knows it (loaded, to be loaded, or unloaded), else ``""``
        (bounded label cardinality: a client cannot invent label values)."""
        if name and (
            self.model_registry.has(name)
            or name in self.model_registry.known()
            or name in self.model_registry.unloaded()
        ):
            return name
        return ""

    @staticmethod
    def label_model(request: Any, model: str) -> None:
        """Name the model a request is for when it is not a ``{name}`` path parameter (OpenAI
        routes: the ``model`` field of the body). ``request`` is a Starlette Request."""
        request.scope[MODEL_SCOPE_KEY] = model

    def add_tokens(self, model: str, *, prompt: int = 0, completion: int = 0) -> None:
        label = self.model_label(model)
        if prompt:
            self.prompt_tokens.labels(label).inc(prompt)
        if completion:
            self.completion_tokens.labels(label).inc(completion)

    # ---- the middleware's side ------------------------------------------------------------
    def observe_request(
        self, method: str, route: str, model: str | None, code: int, seconds: float
    ) -> None:
        label = self.model_label(model)
        key = (method, route, label, code)
        children = self._request_children.get(key)
        if children is None:  # label lookups cost more than the observation itself
            children = (
                self.requests.labels(method, route, label, str(code)),
                self.duration.labels(method, route, label),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    # ---- the engine's side ----------------------------------------------------------------
    def attach(self, engine: Any) -> None:
        """Listen to an engine's events (``Registry.on_engine`` calls this for new engines)."""
        if self._on_event not in engine.listeners:
            engine.listeners.append(self._on_event)

    def _token_children(self, name: str) -> tuple[Any, Any, Any, Any]:
        """The per-model token metrics (label lookups cost more than the observations, and
        token events come once per request and engine step)."""
        children = self._token_metric_children.get(name)
        if children is None:
            children = (
                self.ttft.labels(name),
                self.itl.labels(name),
                self.completion_tokens.labels(name),
                self.prompt_tokens.labels(name),
            )
            self._token_metric_children[name] = children
        return children

    def _on_event(self, engine: EngineClient, event: EngineEvent) -> None:
        name = engine.name
        if isinstance(event, events.Tokens):
            ttft, itl, completion, prompt = self._token_children(name)
            if event.first:
                ttft.observe(event.seconds)
            elif event.tokens:  # a final delta with no tokens is not a gap between tokens
                per_token = event.seconds / event.tokens
                for _ in range(event.tokens):
                    itl.observe(per_token)
            if event.tokens:
                completion.inc(event.tokens)
            if event.prompt_tokens:
                prompt.inc(event.prompt_tokens)
        elif isinstance(event, events.QueueWait):
            self.queue_wait.labels(name).observe(event.seconds)
        elif isinstance(event, events.Restarted):
            self.restarts.labels(name).inc()
        elif isinstance(event, events.Aborted):
            self.cancelled.labels(name).inc()
        elif isinstance(event, events.Expired):
            self.expired.labels(name).inc()
        elif isinstance(event, events.Failed):
            self.failed.labels(name, type(event.error).__name__).inc()

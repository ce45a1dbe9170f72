"""What a TorchServe handler gets as ``context``: the real ``ts.context.Context``, filled in as
TorchServe's backend worker fills it, plus a metrics object.

:class:`HandlerMetrics` speaks the ``MetricCacheAbstract`` API handlers call (``add_counter``,
``add_time``, ``add_size``, ``add_percent``, ``add_metric``, ``add_error``, ``get_metric`` /
``add_metric_to_cache``). Each value is recorded as a :class:`MetricRecord`; the runtime hands
the records recorded during a batch back with the batch's results, and the server adds them to
its Prometheus registry (``steadyserve_torchserve_metric...``), so they appear in ``/metrics``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

#: The most records kept between two hand-backs (a handler in a loop cannot grow memory).
MAX_PENDING_RECORDS = 10_000


@dataclass(frozen=True)
class MetricRecord:
    name: str
    kind: str  # "counter" | "gauge" | "histogram"
    unit: str
    value: float


def _kind(metric_type: Any) -> str:
    name = str(getattr(metric_type, "name", metric_type) or "gauge").lower()
    return name if name in ("counter", "gauge", "histogram") else "gauge"


class _Metric:
    """What ``get_metric`` / ``add_metric_to_cache`` return (``CachingMetric``'s API)."""

    def __init__(self, owner: HandlerMetrics, name: str, unit: str, kind: str) -> None:
        self.owner, self.metric_name, self.unit, self.metric_type = owner, name, unit, kind

    def add_or_update(
        self, value: float, dimension_values: Any = None, request_id: str = ""
    ) -> None:
        self.owner._record(self.metric_name, self.metric_type, self.unit, value)

    def update(self, value: float, request_id: str = "", dimensions: Any = None) -> None:
        self.add_or_update(value)


class HandlerMetrics:
    """A handler's ``context.metrics``. Thread-safe; values are numbers (others are refused
    with ``TypeError``, as TorchServe's cache does)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[MetricRecord] = []
        self.request_ids: Any = None
        self.dropped = 0

    # ---- the ts.metrics API ---------------------------------------------------------------
    def set_request_ids(self, request_ids: Any) -> None:
        self.request_ids = request_ids

    def add_metric(
        self,
        name: str,
        value: float,
        unit: str = "count",
        idx: Any = None,
        dimensions: Any = None,
        metric_type: Any = "counter",
    ) -> None:
        self._record(name, _kind(metric_type), unit, value)

    def add_counter(self, name: str, value: float, idx: Any = None, dimensions: Any = None) -> None:
        self._record(name, "counter", "count", value)

    def add_time(
        self,
        name: str,
        value: float,
        idx: Any = None,
        unit: str = "ms",
        dimensions: Any = None,
        metric_type: Any = "gauge",
    ) -> None:
        if unit not in ("ms", "s"):
            raise ValueError("the unit for a timed metric should be one of ['ms', 's']")
        self._record(name, _kind(metric_type), unit, value)

    def add_size(
        self,
        name: str,
        value: float,
        idx: Any = None,
        unit: str = "MB",
        dimensions: Any = None,
        metric_type: Any = "gauge",
    ) -> None:
        if unit not in ("MB", "kB", "GB", "B"):
            raise ValueError("the unit for a size based metric is one of ['MB','kB', 'GB', 'B']")
        self._record(name, _kind(metric_type), unit, value)

    def add_percent(
        self,
        name: str,
        value: float,
        idx: Any = None,
        dimensions: Any = None,
        metric_type: Any = "gauge",
    ) -> None:
        self._record(name, _kind(metric_type), "percent", value)

    def add_error(self, name: str, value: Any, dimensions: Any = None) -> None:
        self._record(name, "counter", "", 1)

    def get_metric(self, metric_name: str, metric_type: Any = "counter") -> _Metric:
        return _Metric(self, metric_name, "", _kind(metric_type))

    def add_metric_to_cache(
        self,
        metric_name: str,
        unit: str,
        dimension_names: Any = None,
        metric_type: Any = "counter",
    ) -> _Metric:
        return _Metric(self, metric_name, unit, _kind(metric_type))

    # ---- the runtime side ---------------------------------------------------------------------
    def _record(self, name: str, kind: str, unit: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"metric {name!r}: value must be a number, got {type(value).__name__}")
        with self._lock:
            if len(self._pending) >= MAX_PENDING_RECORDS:
                self.dropped += 1
                return
            self._pending.append(MetricRecord(str(name)[:100], kind, str(unit)[:20], float(value)))

    def drain(self) -> list[MetricRecord]:
        with self._lock:
            out, self._pending = self._pending, []
        return out


def make_context(
    model_name: str,
    model_dir: str,
    manifest: dict[str, Any],
    batch_size: int,
    gpu_id: int | None,
    model_yaml_config: dict[str, Any],
    metrics: HandlerMetrics,
    limit_max_image_pixels: bool = True,
) -> Any:
    """A ``ts.context.Context`` exactly as TorchServe's worker builds it."""
    import ts
    from ts.context import Context

    return Context(
        model_name,
        model_dir,
        manifest,
        batch_size,
        gpu_id,
        ts.__version__,
        limit_max_image_pixels,
        metrics,
        model_yaml_config,
    )


def bind_requests(
    context: Any,
    metrics: HandlerMetrics,
    request_ids: list[str],
    headers: list[dict[str, str]],
) -> list[Any]:
    """Give ``context`` this batch's request ids and per-request headers; the returned
    request processors carry each request's status and response headers afterwards."""
    from ts.context import RequestProcessor

    processors = [RequestProcessor(dict(h)) for h in headers]
    ids = dict(enumerate(request_ids))
    context.request_ids = ids
    context.request_processor = processors
    metrics.request_ids = ids
    return processors

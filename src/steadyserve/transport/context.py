"""The server's shared state, passed explicitly to each router (no app.state grab-bag)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from steadyserve.registry import Registry
from steadyserve.settings import Settings


@dataclass
class ServerContext:
    settings: Settings
    registry: Registry
    started: float = field(default_factory=time.time)
    #: Prometheus metrics (transport.metrics.Metrics) when enabled.
    metrics: Any = None

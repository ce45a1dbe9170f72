"""A small closed-loop HTTP load generator (aiohttp or httpx, asyncio), bounded in count and time.

``concurrency`` clients each send requests back to back until ``total`` requests were sent or
``duration_s`` passed. Only loopback targets are meant here.

The load generator shares the machine with the server it measures, so its own CPU use is part of
what a run measures. aiohttp's client (the default) costs a tenth of httpx's per request
(measured on 2 vCPUs: 0.14-0.17 against 2.0 ms of CPU per completion request); every benchmark
here uses it since 2026-12-05, and ``client="httpx"`` gives figures comparable with older runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx


@dataclass
class Reply:
    """What ``on_response`` gets: the status and the body, whichever client sent the request."""

    status_code: int
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


@dataclass
class LoadResult:
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0
    payload: list[Any] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(q * len(data)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) if self.latencies else float("nan")

    def row(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "requests": self.ok,
            "errors": self.errors,
            "rps": round(self.rps, 2),
            "p50_ms": round(self.p50 * 1000, 1),
            "p99_ms": round(self.pct(0.99) * 1000, 1),
        }


async def run_load(
    url: str,
    make_body: Callable[[int], dict[str, Any]],
    *,
    concurrency: int,
    total: int,
    duration_s: float = 60.0,
    on_response: Callable[[Reply], Any] | None = None,
    timeout: float = 120.0,
    client: str = "aiohttp",
) -> LoadResult:
    """POST JSON bodies to ``url`` from ``concurrency`` closed-loop clients."""
    result = LoadResult(concurrency=concurrency)
    counter = iter(range(total))
    stop_at = time.monotonic() + duration_s
    async with _poster(client, concurrency, timeout) as post:

        async def worker() -> None:
            for i in counter:
                if time.monotonic() > stop_at:
                    return
                t0 = time.perf_counter()
                try:
                    reply = await post(url, make_body(i))
                except (httpx.HTTPError, aiohttp.ClientError, asyncio.TimeoutError):
                    result.errors += 1
                    continue
                took = time.perf_counter() - t0
                if reply.status_code == 200:
                    result.latencies.append(took)
                    if on_response is not None:
                        result.payload.append(on_response(reply))
                else:
                    result.errors += 1

        t_start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.elapsed = time.perf_counter() - t_start
    return result


@contextlib.asynccontextmanager
async def _poster(
    client: str, concurrency: int, timeout: float
) -> AsyncIterator[Callable[[str, dict[str, Any]], Awaitable[Reply]]]:
    """``post(url, body) -> Reply`` over one pool of ``concurrency`` keep-alive connections."""
    if client == "httpx":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as hx:

            async def post_httpx(url: str, body: dict[str, Any]) -> Reply:
                resp = await hx.post(url, json=body)
                return Reply(resp.status_code, resp.content)

            yield post_httpx
        return
    if client != "aiohttp":
        raise ValueError(f"client must be 'aiohttp' or 'httpx', not {client!r}")
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as session:

        async def post_aiohttp(url: str, body: dict[str, Any]) -> Reply:
            async with session.post(url, json=body) as resp:
                return Reply(resp.status, await resp.read())

        yield post_aiohttp


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    print(f"\n{title}")
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    print("  ".join(k.rjust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r.get(k, "")).rjust(widths[k]) for k in keys))

"""Run the server: registry + HTTP (+ gRPC) on one event loop, graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import FrameType
from typing import Any

import uvicorn

from steadyserve.config import engine_config
from steadyserve.errors import ServiceUnavailable
from steadyserve.registry import Registry
from steadyserve.settings import Settings
from steadyserve.transport.context import ServerContext
from steadyserve.transport.http import build_app
from steadyserve.transport.middleware import MAX_HEADER_BYTES, http_protocol

log = logging.getLogger("steadyserve.server")

#: after the drain, how long uvicorn waits for the last responses to be written
SHUTDOWN_FLUSH_S = 5


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT drains: readiness and new requests turn 503,
    in-flight requests get up to ``graceful_shutdown_s`` to finish, then the server exits 0.
    A second signal exits at once."""

    def __init__(self, config: uvicorn.Config, ctx: ServerContext) -> None:
        super().__init__(config)
        self.ctx = ctx
        self._drain_started = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Never uvicorn's own handler: it records the signal and re-raises it once the server
        # has stopped, so the process would die of SIGTERM (exit 143) instead of exiting 0.
        name = signal.Signals(sig).name
        if self._loop is None:  # before the loop runs: nothing in flight, just stop
            self.should_exit = True
            return
        if self._drain_started:
            log.info("received %s again: ending in-flight requests now", name)
            self._loop.call_soon_threadsafe(self._end_now)
            return
        self._drain_started = True
        grace = self.ctx.settings.graceful_shutdown_s
        log.warning(
            "received %s: draining - new requests get 503, in-flight ones may finish until %s "
            "(--graceful_shutdown_s=%g); press Ctrl-C again to stop now",
            name,
            time.strftime("%H:%M:%S", time.localtime(time.time() + grace)),
            grace,
        )
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain()))

    def _end_now(self) -> None:
        """Fail what is still in flight with 503 (streams: an in-band error event), so every
        request gets a proper answer before uvicorn closes its connection, then stop."""
        left = 0
        for engine in self.ctx.registry.engines():
            left += engine.in_flight
            engine.fail_in_flight(
                ServiceUnavailable(
                    f"model {engine.name}: the server is shutting down", retry_after=5
                )
            )
        if left:
            log.warning("ended %d request(s) still in flight with 503", left)
        self.should_exit = True

    async def _drain(self) -> None:
        registry = self.ctx.registry
        registry.draining = True
        for engine in registry.engines():
            engine.draining = True
        deadline = time.monotonic() + self.ctx.settings.graceful_shutdown_s
        while (
            not self.should_exit
            and time.monotonic() < deadline
            and any(e.in_flight for e in registry.engines())
        ):
            await asyncio.sleep(0.05)
        if not self.should_exit:
            self._end_now()


async def serve(server: DrainingServer, ctx: ServerContext) -> None:
    """uvicorn, plus the gRPC server on the same loop when enabled (stopped on the way out)."""
    grpc_server = None
    if ctx.settings.grpc_enabled:
        from steadyserve.transport.grpc import start_grpc_server

        try:
            grpc_server = await start_grpc_server(ctx)
        except RuntimeError as exc:
            log.error("%s", exc)
            return
    try:
        await server.serve()
    finally:
        if grpc_server is not None:
            await grpc_server.stop(grace=1.0)


def run(settings: Settings, specs: list[Any]) -> int:
    registry = Registry(
        engine_config(settings), specs, give_up_unloadable=settings.model_repository is not None
    )
    ctx = ServerContext(settings=settings, registry=registry)
    app = build_app(ctx)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        # requests were drained (or ended with 503) before uvicorn stops: its own wait only
        # lets the last responses be written
        timeout_graceful_shutdown=SHUTDOWN_FLUSH_S,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
        server_header=False,
        # bounded request line + headers (431 past it), whichever parser runs
        http=http_protocol(MAX_HEADER_BYTES, settings.request_read_timeout_s),
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )
    server = DrainingServer(config, ctx)
    asyncio.run(serve(server, ctx))
    return 0 if server.started else 1

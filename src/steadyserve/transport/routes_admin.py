"""Operational routes: the engine's live state (``/debug/engine``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from steadyserve.transport.context import ServerContext


def build_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter()

    @router.get("/debug/engine")
    async def engine_state() -> dict[str, Any]:
        """Per model: state, requests in flight, sequences running in the worker, restarts."""
        return {
            "ready": ctx.registry.ready,
            "live": ctx.registry.live,
            "draining": ctx.registry.draining,
            "models": {e.name: e.stats() for e in ctx.registry.engines()},
        }

    return router

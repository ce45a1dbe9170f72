"""V2 model repository extension (to be built: index, load, unload)."""

from __future__ import annotations

from fastapi import APIRouter

from steadyserve.transport.context import ServerContext


def build_router(ctx: ServerContext) -> APIRouter:
    return APIRouter()

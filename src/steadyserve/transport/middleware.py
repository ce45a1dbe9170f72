"""HTTP middleware (to be built: request ids, auth, body limits, metrics, CORS)."""

from __future__ import annotations

from fastapi import FastAPI

from steadyserve.transport.context import ServerContext


def install(app: FastAPI, ctx: ServerContext) -> None:
    return None

"""OpenAI API routes (to be built: completions, chat, embeddings under /openai/v1 and /v1)."""

from __future__ import annotations

from fastapi import APIRouter

from steadyserve.transport.context import ServerContext


def build_router(ctx: ServerContext) -> APIRouter:
    return APIRouter()

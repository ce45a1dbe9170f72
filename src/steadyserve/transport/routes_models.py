"""Model listings shared by the KServe V1 and OpenAI ``/v1/models`` routes (same path, so one
response carries both shapes: KServe's ``models``/``name``/``ready`` and OpenAI's
``object``/``data``/``id``)."""

from __future__ import annotations

from typing import Any

from steadyserve.transport.context import ServerContext


def openai_model_card(ctx: ServerContext, name: str) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": int(ctx.started),
        "owned_by": "steadyserve",
    }


def openai_model_list(ctx: ServerContext) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [openai_model_card(ctx, n) for n in ctx.registry.names()],
    }

"""``--compile``: the continuous batcher's decoding forward pass through ``torch.compile``.

With the slot cache's static shapes (:mod:`.slots`: a bucket of rows over the whole buffer
width, the write column a tensor) the step is compiled for fixed shapes (``dynamic=False``),
one graph per row bucket and buffer width, all row buckets warmed up at load; on CUDA in
``reduce-overhead`` mode, so each graph is replayed as a CUDA graph. Compiling is an
optimisation, never a reason to fail: :class:`DecodeForward` runs the model eagerly when
compiling failed at load, and a compiled call that raises is redone eagerly once, after which
the compiled path is dropped for good (``on_disable``; the slot cache makes the redo safe: the
step writes the same column again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger("steadyserve.generation")


class DecodeForward:
    """Calls the model for one decoding step: compiled when that works, else eagerly."""

    #: graphs one compiled step may hold at least (see ``compile``'s ``shapes``)
    RECOMPILE_LIMIT = 64

    def __init__(self, model: Any, on_disable: Callable[[], None] | None = None) -> None:
        self.model = model
        self.compiled: Any = None
        self.on_disable = on_disable

    def compile(self, device: torch.device, shapes: int = 0) -> bool:
        """Wrap the model with ``torch.compile``; ``False`` (and a warning) when that fails.
        ``shapes``: how many distinct step shapes there can be (row buckets x buffer widths),
        so that dynamo keeps a graph for each instead of running the rest uncompiled."""
        try:
            mode = "reduce-overhead" if device.type == "cuda" else None  # CUDA graphs
            config = torch._dynamo.config
            limit = max(self.RECOMPILE_LIMIT, 2 * shapes)
            for name in ("recompile_limit", "cache_size_limit"):  # the name moved in torch 2.6
                if hasattr(config, name):
                    setattr(config, name, max(getattr(config, name), limit))
            self.compiled = torch.compile(self.model, dynamic=False, mode=mode)
        except Exception as exc:  # noqa: BLE001 - never fail the load over an optimisation
            self.disable(exc)
            return False
        return True

    def disable(self, exc: BaseException) -> None:
        first = (str(exc).strip().splitlines() or [""])[0][:300]  # inductor errors run long
        log.warning("--compile failed (%s: %s); decoding runs eagerly", type(exc).__name__, first)
        self.compiled = None
        if self.on_disable is not None:
            self.on_disable()

    def __call__(self, inputs: dict[str, Any]) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(**inputs)
            except Exception as exc:  # noqa: BLE001 - fall back, never fail the request
                # redo this step eagerly on the inputs (and the cache view) it was built for,
                # and only then give up the compiled path (``on_disable`` changes the view)
                out = self.model(**inputs)
                self.disable(exc)
                return out
        return self.model(**inputs)

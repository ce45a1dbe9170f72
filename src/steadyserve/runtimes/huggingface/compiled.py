"""``--compile``: the continuous batcher's decoding forward pass through ``torch.compile``.

Compiled with dynamic shapes (rows and cache columns change every step); on CUDA in
``reduce-overhead`` mode (CUDA graphs). Compiling is an optimisation, never a reason to fail:
:class:`DecodeForward` runs the model eagerly when compiling failed at load, and a compiled call
that raises is redone eagerly once, after which the compiled path is dropped for good (the slot
cache makes the redo safe: the step writes the same column again).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger("steadyserve.generation")


class DecodeForward:
    """Calls the model for one decoding step: compiled when that works, else eagerly."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.compiled: Any = None

    def compile(self, device: torch.device) -> bool:
        """Wrap the model with ``torch.compile``; ``False`` (and a warning) when that fails."""
        try:
            mode = "reduce-overhead" if device.type == "cuda" else None  # CUDA graphs
            self.compiled = torch.compile(self.model, dynamic=True, mode=mode)
        except Exception as exc:  # noqa: BLE001 - never fail the load over an optimisation
            self.disable(exc)
            return False
        return True

    def disable(self, exc: BaseException) -> None:
        first = (str(exc).strip().splitlines() or [""])[0][:300]  # inductor errors run long
        log.warning("--compile failed (%s: %s); decoding runs eagerly", type(exc).__name__, first)
        self.compiled = None

    def __call__(self, inputs: dict[str, Any]) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(**inputs)
            except Exception as exc:  # noqa: BLE001 - fall back, never fail the request
                self.disable(exc)
        return self.model(**inputs)

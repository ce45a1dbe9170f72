"""The Hugging Face runtime: load a transformers model and serve it for one of six tasks.

``HuggingFaceModel`` is imported lazily so that importing this package (e.g. for
:mod:`~steadyserve.runtimes.huggingface.tiny`) does not import torch or transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from steadyserve.runtimes.huggingface.runtime import HuggingFaceModel

__all__ = ["HuggingFaceModel"]


def __getattr__(name: str) -> Any:
    if name == "HuggingFaceModel":
        from steadyserve.runtimes.huggingface.runtime import HuggingFaceModel

        return HuggingFaceModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""How a transformers model takes and returns its KV cache, across transformers versions.

transformers 5 renamed the forward argument and output field ``past_key_values`` to ``cache``;
the old name still works but logs "`past_key_values`/`cache_params` are deprecated" at every
start. The name is read from the model's own ``forward`` signature, so the engine passes the
cache the way the installed transformers expects (and older versions keep working).
"""

from __future__ import annotations

import inspect
from typing import Any


def cache_keyword(model: Any) -> str:
    """``"cache"`` where ``model.forward`` takes it (transformers >= 5), else
    ``"past_key_values"``."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out: Any) -> Any:
    """The cache a forward pass returned, under whichever name this transformers uses."""
    keys = out.keys() if hasattr(out, "keys") else ()
    if "cache" in keys:
        return out["cache"]
    return out.past_key_values

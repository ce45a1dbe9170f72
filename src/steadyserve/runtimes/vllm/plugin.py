"""A vLLM general plugin (entry point ``vllm.general_plugins``): vLLM loads it in every process it
starts (engine core, executor workers). In processes started for steadyserve's worker (the
``STEADYSERVE_VLLM_CHILD`` environment variable, set by :class:`~.model.VllmModel` before it
starts vLLM), it sets ``PR_SET_PDEATHSIG``: the process gets SIGKILL when its parent dies, so a
``kill -9`` of the worker leaves no orphaned engine core. vLLM spawns (not forks) on CPU, so
nothing of ours runs in those processes otherwise. Elsewhere (vLLM's own server) it does nothing.
"""

from __future__ import annotations

import os
import signal

ENV = "STEADYSERVE_VLLM_CHILD"


def die_with_parent() -> None:
    if os.environ.get(ENV) != "1":
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - not Linux
        return
    if os.getppid() == 1:  # the parent died before we got here
        os._exit(1)

"""The model worker process: ``python -m steadyserve.engine --fd N``.

It receives a :class:`~steadyserve.engine.ipc.Load` on the inherited socket, builds and loads the
model, reports :class:`~steadyserve.engine.ipc.Ready` (or ``LoadFailed``) and then runs the
scheduler until the server says ``Shutdown`` or closes the socket. Model code only ever runs here.

It is started through :mod:`steadyserve.engine.__main__`, so this module is loaded once, under
its own name (``python -m steadyserve.engine.worker`` would load it twice: as ``__main__`` and
again when imported). The model is built by the runtime registry (:mod:`steadyserve.runtimes`):
this module imports no runtime.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable

from steadyserve.config import ModelSpec
from steadyserve.engine.ipc import BlockingChannel, Load, LoadFailed, Progress, Ready
from steadyserve.engine.scheduler import Scheduler, call_maybe_async
from steadyserve.errors import bounded
from steadyserve.runtimes import TRANSFORMERS_RUNTIMES, build_model

log = logging.getLogger("steadyserve.worker")


def _set_limits(spec: ModelSpec) -> None:
    if spec.memory_limit_mb:
        import resource

        limit = spec.memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if spec.torch_threads or spec.runtime != "custom":  # the runtimes all run torch
        import torch

        from steadyserve.cpus import detect

        plan = detect(spec.torch_threads)
        torch.set_num_threads(plan.threads)
        log.info("torch threads: %d (%s)", plan.threads, plan.reason)


def _die_with_parent() -> None:
    """Linux: get SIGKILL if the server process dies (the socket EOF covers the rest)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - not Linux
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    fd = int(argv[argv.index("--fd") + 1])
    fmt = os.environ.get("STEADYSERVE_WORKER_LOG_FORMAT", "text")
    if fmt == "json":  # one JSON object per line: no progress bars in the stream
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from steadyserve.logs import configure

    configure(os.environ.get("STEADYSERVE_WORKER_LOG_LEVEL", "info"), fmt, worker=True)
    # The server decides when we stop (Shutdown, or SIGKILL past its grace period): a SIGTERM or
    # SIGINT sent to the whole process group (systemd, `timeout`, tini -g, Ctrl-C) must not kill
    # the model under requests the server is still draining.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    return serve(BlockingChannel(socket.socket(fileno=fd)))


def serve(
    channel: BlockingChannel, on_server_gone: Callable[[Scheduler], None] | None = None
) -> int:
    """Load the model the server's ``Load`` names, report ``Ready`` and serve until told to
    stop; returns the exit code. ``on_server_gone`` replaces the default reaction to a closed
    channel (the process exits at once) - tests run a worker in a thread with it."""
    import asyncio

    try:
        first = channel.recv()
    except EOFError:
        return 0
    if not isinstance(first, Load):
        channel.send(LoadFailed(message="protocol error: expected Load"))
        return 3
    spec = first.spec
    if spec.runtime in TRANSFORMERS_RUNTIMES:
        from steadyserve.logs import adopt_transformers_logging

        adopt_transformers_logging()
    loop = asyncio.new_event_loop()
    try:
        _set_limits(spec)
        channel.send(Progress(message=f"loading {spec.name} ({spec.runtime})"))
        model = build_model(spec)
        call_maybe_async(loop, model.load)
        model.ready = True
        info = model.info()
    except BaseException as exc:  # noqa: BLE001 - report any load failure, then exit
        log.error("loading %s failed:\n%s", spec.name, traceback.format_exc())
        channel.send(LoadFailed(message=bounded(f"{type(exc).__name__}: {exc}")))
        return 3
    channel.send(Ready(info=info))
    scheduler = Scheduler(model, spec, channel, loop)
    if on_server_gone is not None:
        scheduler.on_server_gone = lambda: on_server_gone(scheduler)
    scheduler.run()
    try:
        call_maybe_async(loop, model.unload)
    except Exception:
        log.exception("unload failed")
    return 0


def entry() -> None:
    """The process entry point (``python -m steadyserve.engine``)."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

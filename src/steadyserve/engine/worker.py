"""The model worker process: ``python -m steadyserve.engine.worker --fd N``.

It receives a :class:`~steadyserve.engine.ipc.Load` on the inherited socket, builds and loads the
model, reports :class:`~steadyserve.engine.ipc.Ready` (or ``LoadFailed``) and then runs the
scheduler until the server says ``Shutdown`` or closes the socket. Model code only ever runs here.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import logging
import os
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

from steadyserve.engine.ipc import BlockingChannel, Load, LoadFailed, ModelSpec, Progress, Ready
from steadyserve.errors import bounded
from steadyserve.model import Model

log = logging.getLogger("steadyserve.worker")


def load_class(ref: str) -> type[Model]:
    """Import ``path/to/file.py:Class`` or ``package.module:Class``."""
    target, _, class_name = ref.rpartition(":")
    if target.endswith(".py") or os.sep in target:
        path = Path(target).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"model class file not found: {target}")
        module_name = f"steadyserve_user_{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {target}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        sys.path.insert(0, str(path.parent))
        spec.loader.exec_module(module)
    else:
        # The worker runs with a safe sys.path (no current directory in front: a stray
        # ``triton.py`` there must not replace an installed package). A module given by name
        # may still live in the directory the server was started from: look there last, and
        # for this import only.
        cwd = os.getcwd()
        sys.path.append(cwd)
        try:
            module = importlib.import_module(target)
        finally:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ImportError(f"{target} has no attribute {class_name}")
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise TypeError(f"{ref} is not a subclass of steadyserve.Model")
    return cls


def build_model(spec: ModelSpec) -> Model:
    """Construct (not load) the model a spec describes."""
    if spec.kind == "custom":
        assert spec.model_class is not None
        cls = load_class(spec.model_class)
        return cls(spec.name, spec.model_dir, **spec.options)
    if spec.kind in ("huggingface", "demo"):
        from steadyserve.runtimes.huggingface import HuggingFaceModel

        return HuggingFaceModel.from_spec(spec)
    raise ValueError(f"unknown model kind {spec.kind!r}")


def call_maybe_async(loop: Any, fn: Any, *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        result = loop.run_until_complete(result)
    return result


def _set_limits(spec: ModelSpec) -> None:
    if spec.memory_limit_mb:
        import resource

        limit = spec.memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if spec.torch_threads or spec.kind in ("huggingface", "demo"):
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
    import asyncio

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
    channel = BlockingChannel(socket.socket(fileno=fd))
    try:
        first = channel.recv()
    except EOFError:
        return 0
    if not isinstance(first, Load):
        channel.send(LoadFailed(message="protocol error: expected Load"))
        return 3
    spec = first.spec
    if spec.kind in ("huggingface", "demo"):
        from steadyserve.logs import adopt_transformers_logging

        adopt_transformers_logging()
    loop = asyncio.new_event_loop()
    try:
        _set_limits(spec)
        channel.send(Progress(message=f"loading {spec.name} ({spec.kind})"))
        model = build_model(spec)
        call_maybe_async(loop, model.load)
        model.ready = True
        info = model.info()
    except BaseException as exc:  # noqa: BLE001 - report any load failure, then exit
        log.error("loading %s failed:\n%s", spec.name, traceback.format_exc())
        channel.send(LoadFailed(message=bounded(f"{type(exc).__name__}: {exc}")))
        return 3
    channel.send(Ready(info=info))
    from steadyserve.engine.scheduler import Scheduler

    Scheduler(model, spec, channel, loop).run()
    try:
        call_maybe_async(loop, model.unload)
    except Exception:
        log.exception("unload failed")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

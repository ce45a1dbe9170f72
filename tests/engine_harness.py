"""Run a model worker in a thread of the test process, over a real socketpair: the engine
client, its supervisor and the worker's scheduler, in process and in seconds.

:func:`thread_launcher` is a :data:`steadyserve.engine.supervisor.Launcher`. The worker is
:func:`steadyserve.engine.worker.serve` itself; a model that raises ``SystemExit`` "crashes"
it (its thread ends and its channel closes, as a dying process's would), and ``kill`` closes
the channel and reports a SIGKILL exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from typing import Any

from steadyserve.config import EngineConfig, ModelSpec
from steadyserve.engine.client import WorkerClient
from steadyserve.engine.ipc import BlockingChannel
from steadyserve.engine.worker import serve

ECHO = "tests.models.inproc:Echo"


class ThreadProcess:
    """A worker thread, seen as a process by the supervisor."""

    pid = None

    def __init__(self, child: socket.socket) -> None:
        self.returncode: int | None = None
        self._child = child
        self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()

    def exited(self, code: int) -> None:
        """Thread-safe: the worker ended with ``code``. A worker thread that outlives its test
        (its loop already closed) has nobody left to tell."""
        with contextlib.suppress(RuntimeError):  # "Event loop is closed"
            self._loop.call_soon_threadsafe(self._set, code)

    def _set(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._done.set()

    async def wait(self) -> int:
        await self._done.wait()
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self._child.shutdown(socket.SHUT_RDWR)
        self._set(-signal.SIGKILL)


def _server_gone(scheduler: Any) -> None:
    scheduler.stopping = True
    scheduler.inbox.put(None)


#: the processes launched so far (the latest last)
LAUNCHED: list[ThreadProcess] = []


async def thread_launcher(
    spec: ModelSpec, config: EngineConfig
) -> tuple[ThreadProcess, asyncio.StreamReader, asyncio.StreamWriter]:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = ThreadProcess(child)

    def run() -> None:
        code = 0
        try:
            code = serve(BlockingChannel(child), on_server_gone=_server_gone)
        except SystemExit as exc:  # the model "crashed" the worker
            code = int(exc.code or 0)
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            with contextlib.suppress(OSError):
                child.shutdown(socket.SHUT_RDWR)
            child.close()
            proc.exited(code)

    threading.Thread(target=run, name=f"worker-{spec.name}", daemon=True).start()
    reader, writer = await asyncio.open_unix_connection(sock=parent)
    LAUNCHED.append(proc)
    return proc, reader, writer


def echo_spec(**kw: Any) -> ModelSpec:
    return ModelSpec(**{"name": "echo", "runtime": "custom", "model_class": ECHO, **kw})


FAST = EngineConfig(restart_backoff_s=0.01, worker_hang_timeout_s=30, request_timeout_s=10)


async def started_client(
    spec: ModelSpec | None = None, config: EngineConfig = FAST, timeout: float = 10
) -> WorkerClient:
    """A client whose thread worker is ready."""
    client = WorkerClient(spec or echo_spec(), config, launcher=thread_launcher)
    await client.start()
    await wait_until(lambda: client.ready, timeout)
    return client


async def wait_until(cond: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)

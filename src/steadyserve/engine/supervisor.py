"""Supervision of a model's worker process: spawn, load, watch, restart.

:class:`WorkerSupervisor` owns the process lifecycle of one model - launch the worker with the
``Load`` message, read its messages, kill it when it loads too long or goes silent with work
(hang), and restart it with exponential backoff when it dies. It counts crashes in a row so
that liveness can fail on a crash loop: worker deaths with no successful load in between. A
worker that dies after its model was ready (killed, OOM, a poison request) starts a new count at
1, so no client can fail the pod's liveness by repeating a request that crashes the worker;
readiness shows each restart.

It is a *member* of the engine client (:mod:`steadyserve.engine.client`), not a base class: it
handles the lifecycle messages (``Ready``, ``LoadFailed``, ``Progress``, ``Busy``) itself and
hands every request message, and the loss of a worker, to its :class:`WorkerSink`. The worker
process comes from a :data:`Launcher` (a subprocess by default; tests run one in a thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from steadyserve import cpus
from steadyserve.config import EngineConfig, ModelSpec
from steadyserve.engine import ipc
from steadyserve.engine.events import EngineEvent, Ready, Restarted
from steadyserve.errors import ServiceUnavailable, SteadyError, WorkerCrashed
from steadyserve.types import ModelInfo

log = logging.getLogger("steadyserve.engine")


class State(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"  # load failed; retrying with backoff
    STOPPING = "stopping"
    STOPPED = "stopped"


class ExitReason(enum.StrEnum):
    """Why a worker went away (the typed outcome behind ``last_error``)."""

    LOAD_FAILED = "load failed"  # the model's own load raised: retrying fails the same way
    CRASHED = "crashed"  # exited or was killed by a signal
    LOAD_TIMEOUT = "load timeout"
    HUNG = "hung"
    SPAWN_FAILED = "spawn failed"


@dataclass(frozen=True)
class WorkerExit:
    reason: ExitReason
    #: one line for people (``last_error``, logs, 503 bodies)
    message: str

    def __str__(self) -> str:
        return self.message


class WorkerProcess(Protocol):
    """What the supervisor needs of a worker process (``asyncio.subprocess.Process``)."""

    @property
    def pid(self) -> int | None: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def kill(self) -> None: ...


#: starts a worker for a spec: its process, and the server's ends of the channel
Launcher = Callable[
    [ModelSpec, EngineConfig],
    Awaitable[tuple[WorkerProcess, asyncio.StreamReader, asyncio.StreamWriter]],
]


class WorkerSink(Protocol):
    """The engine client's side: what the worker's messages and losses mean for requests."""

    def on_message(self, msg: ipc.ToServer) -> None: ...

    def on_worker_lost(self, error: SteadyError) -> None: ...

    def on_event(self, event: EngineEvent) -> None: ...

    @property
    def in_flight(self) -> int: ...


async def spawn_subprocess(
    spec: ModelSpec, config: EngineConfig
) -> tuple[WorkerProcess, asyncio.StreamReader, asyncio.StreamWriter]:
    """The worker as ``python -m steadyserve.engine --fd N`` over a Unix socketpair."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        env = dict(os.environ)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        # `-m` would put the current directory first on the worker's sys.path: a file there
        # (triton.py, say) would shadow an installed package inside the model's process
        env["PYTHONSAFEPATH"] = "1"
        env.setdefault("STEADYSERVE_WORKER_LOG_LEVEL", config.log_level)
        env["STEADYSERVE_WORKER_LOG_FORMAT"] = config.log_format
        # threads from the CPUs we may really use, OpenMP threads that sleep when idle: set
        # before the worker imports torch (steadyserve/cpus.py)
        env.update(cpus.worker_env(env, cpus.detect(spec.torch_threads)))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "steadyserve.engine",
            "--fd",
            str(child.fileno()),
            pass_fds=(child.fileno(),),
            stdin=asyncio.subprocess.DEVNULL,
            env=env,
        )
    finally:
        child.close()
    reader, writer = await asyncio.open_unix_connection(sock=parent, limit=1 << 24)
    return proc, reader, writer


class WorkerSupervisor:
    """Process lifecycle of one model's worker."""

    def __init__(
        self,
        spec: ModelSpec,
        config: EngineConfig,
        sink: WorkerSink,
        launcher: Launcher = spawn_subprocess,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.config = config
        self.sink = sink
        self.launcher = launcher
        self.state = State.STOPPED
        #: the model's metadata, from the first ``Ready`` (kept across restarts)
        self.info: ModelInfo | None = None
        self.last_exit: WorkerExit | None = None
        self.consecutive_crashes = 0
        self.restarts = 0
        self.proc: WorkerProcess | None = None
        #: the current worker's channel (None while there is no worker to write to)
        self.writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_message = time.monotonic()
        self._stopping = False
        self._load_error: str | None = None
        #: rows / requests of the predict batch the worker said it started (0: none running)
        self.busy_rows = 0
        self.busy_requests = 0
        #: whether this model was ever loaded (ready) at all
        self._ever_ready = False
        #: whether the current worker process reached READY (reset at each spawn)
        self._ready_this_run = False
        self._served_since_start = 0
        #: set by the registry where a model that never loads should be given up (called once,
        #: with the reason, after ``max_consecutive_crashes`` failed loads in a row) instead of
        #: failing liveness: in a repository, one broken model must not restart the pod.
        self.on_give_up: Callable[[str], None] | None = None

    @property
    def last_error(self) -> str | None:
        return self.last_exit.message if self.last_exit is not None else None

    def served(self) -> None:
        """A request succeeded: the first success of a worker ends a crash-in-a-row count."""
        self._served_since_start += 1
        if self._served_since_start == 1 and self.consecutive_crashes:
            self.consecutive_crashes = 0

    def send(self, data: bytes) -> bool:
        """Write a frame to the worker; False when there is none to write to."""
        writer = self.writer
        if writer is None or writer.is_closing():
            return False
        with contextlib.suppress(Exception):
            writer.write(data)
            return True
        return False

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._supervise(), name=f"supervise-{self.name}")

    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop admitting; let in-flight requests finish for up to ``grace_s``; stop the worker."""
        if self.state == State.STOPPED and self._task is None:
            return
        self.state = State.STOPPING
        deadline = time.monotonic() + grace_s
        while self.sink.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._stopping = True
        # a worker still busy past the grace period is in model code and would not read the
        # Shutdown before it finishes: don't wait for it beyond a moment
        busy = self.sink.in_flight > 0 or self.busy_rows > 0
        self.sink.on_worker_lost(
            ServiceUnavailable(f"model {self.name} is shutting down", retry_after=1)
        )
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.write(ipc.frame(ipc.Shutdown()))
                await asyncio.wait_for(self.writer.drain(), timeout=1)
        proc = self.proc
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), timeout=0.5 if busy else 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        self.state = State.STOPPED

    def _worker_down(self, error: SteadyError) -> None:
        """The worker is gone (EOF, exit, kill): from this call on nothing is admitted and
        readiness is red - synchronously, before any other callback of the loop runs - and every
        request in flight fails. Idempotent (EOF and the exit are both noticed)."""
        self.writer = None
        if self.state == State.READY:
            self.state = State.RESTARTING
        self.sink.on_worker_lost(error)

    async def _supervise(self) -> None:
        backoff = self.config.restart_backoff_s
        while not self._stopping:
            self.state = State.STARTING if self.restarts == 0 else State.RESTARTING
            self._served_since_start = 0
            self._ready_this_run = False
            proc: WorkerProcess | None = None
            try:
                proc, reader, writer = await self.launcher(self.spec, self.config)
                self.proc, self.writer = proc, writer
                writer.write(ipc.frame(ipc.Load(spec=self.spec)))
                self._last_message = time.monotonic()
                self.busy_rows = self.busy_requests = 0
                self._reader_task = asyncio.create_task(self._read_loop(reader))
                outcome = await self._watch(proc)
            except asyncio.CancelledError:
                if proc is not None and proc.returncode is None:
                    proc.kill()
                raise
            except Exception as exc:  # pragma: no cover - spawn failure
                log.exception("could not start worker for %s", self.name)
                outcome = WorkerExit(ExitReason.SPAWN_FAILED, f"spawn failed: {exc}")
            # ---- the worker is gone -------------------------------------------------------
            was_ready = self._ready_this_run
            if not self._stopping:
                self._worker_down(
                    WorkerCrashed(
                        f"model worker for {self.name} {outcome}; restarting", retry_after=1
                    )
                )
            if self._reader_task is not None:
                self._reader_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._reader_task
            if self._stopping:
                break
            if self._load_error is not None:
                outcome = WorkerExit(
                    ExitReason.LOAD_FAILED, f"{ExitReason.LOAD_FAILED}: {self._load_error}"
                )
                self._load_error = None
            self.last_exit = outcome
            self.state = State.RESTARTING if was_ready else State.FAILED
            # in a row = without a successful load in between (see the module docstring)
            self.consecutive_crashes = 1 if was_ready else self.consecutive_crashes + 1
            self.restarts += 1
            if (
                self.on_give_up is not None
                and not self._ever_ready
                and self.consecutive_crashes >= self.config.max_consecutive_crashes
            ):
                log.error(
                    "model %s: %d failed loads in a row (%s); giving it up",
                    self.name,
                    self.consecutive_crashes,
                    outcome,
                )
                self.on_give_up(str(outcome))
                break
            self.sink.on_event(Restarted(reason=str(outcome)))
            log.error(
                "model %s: worker %s (crash %d in a row); restarting in %.1fs",
                self.name,
                outcome,
                self.consecutive_crashes,
                backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(max(backoff * 2, 0.1), self.config.restart_backoff_max_s)
            if was_ready:
                backoff = self.config.restart_backoff_s
        self.state = State.STOPPED

    async def _watch(self, proc: WorkerProcess) -> WorkerExit:
        """Wait until the worker exits, or kill it when it loads too long or hangs."""
        started = time.monotonic()
        wait = asyncio.ensure_future(proc.wait())
        try:
            while True:
                done, _ = await asyncio.wait({wait}, timeout=0.1)
                if done:
                    code = proc.returncode
                    if code is not None and code < 0:
                        return WorkerExit(ExitReason.CRASHED, f"was killed by signal {-code}")
                    return WorkerExit(ExitReason.CRASHED, f"exited with code {code}")
                now = time.monotonic()
                if self.state != State.READY:
                    if now - started > self.config.worker_load_timeout_s:
                        proc.kill()
                        await wait
                        return WorkerExit(ExitReason.LOAD_TIMEOUT, "did not load in time")
                    continue
                # silence is a hang past the timeout - per row of a running predict batch
                limit = self.config.worker_hang_timeout_s * max(1, self.busy_rows)
                if now - self._last_message > limit:
                    log.error(
                        "model %s: worker silent for %.1fs with %d request(s); killing it",
                        self.name,
                        now - self._last_message,
                        self.sink.in_flight,
                    )
                    proc.kill()
                    await wait
                    return WorkerExit(ExitReason.HUNG, "hung (no progress) and was killed")
        finally:
            if not wait.done():
                wait.cancel()

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                header = await reader.readexactly(4)
                body = await reader.readexactly(ipc.parse_header(header))
                self._last_message = time.monotonic()
                self._handle(ipc.to_server_decoder.decode(body))
        except (asyncio.IncompleteReadError, ConnectionError):
            # EOF: the worker died. Fail in-flight requests now, not when the exit is reaped.
            if not self._stopping:
                self._worker_down(
                    WorkerCrashed(f"model worker for {self.name} died", retry_after=1)
                )

    def _handle(self, msg: ipc.ToServer) -> None:
        if isinstance(msg, ipc.Busy):
            self.busy_rows, self.busy_requests = msg.rows, msg.requests
            return
        if isinstance(msg, ipc.Ready):
            self.info = msg.info
            self.state = State.READY
            self._ever_ready = self._ready_this_run = True
            self.last_exit = None
            log.info("model %s is ready (%s)", self.name, ", ".join(msg.info.capabilities))
            self.sink.on_event(Ready())
            return
        if isinstance(msg, ipc.LoadFailed):
            self._load_error = msg.message
            log.error("model %s: load failed: %s", self.name, msg.message)
            return
        if isinstance(msg, ipc.Progress):
            log.info("model %s: %s", self.name, msg.message)
            return
        self.busy_rows = self.busy_requests = 0
        self.sink.on_message(msg)

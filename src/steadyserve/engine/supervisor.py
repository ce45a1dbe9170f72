"""Supervision of a model's worker process: spawn, load, watch, restart.

:class:`WorkerSupervisor` owns the process lifecycle of one model - spawn the worker with the
``Load`` message, read its messages, kill it when it loads too long or goes silent with work
(hang), and restart it with exponential backoff when it dies. It counts crashes in a row so
that liveness can fail on a crash loop: worker deaths with no successful load in between. A
worker that dies after its model was ready (killed, OOM, a poison request) starts a new count at
1, so no client can fail the pod's liveness by repeating a request that crashes the worker;
readiness shows each restart. What the
messages *mean* for requests is the engine client's business (:mod:`steadyserve.engine.client`),
reached through the ``_dispatch`` / ``_fail_all`` hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from steadyserve import cpus
from steadyserve.engine import ipc
from steadyserve.errors import ServiceUnavailable, SteadyError, WorkerCrashed

log = logging.getLogger("steadyserve.engine")

#: how ``last_error`` starts when the model's own load raised (not a crash of the worker)
LOAD_FAILED = "load failed"


@dataclass(frozen=True)
class EngineConfig:
    """The engine-relevant subset of Settings (kept separate so the engine does not import
    the transport's settings)."""

    max_queue_size: int = 256
    max_queue_tokens: int = 1_048_576
    request_timeout_s: float = 600.0
    worker_load_timeout_s: float = 900.0
    worker_hang_timeout_s: float = 60.0
    max_consecutive_crashes: int = 5
    restart_backoff_s: float = 0.5
    restart_backoff_max_s: float = 30.0
    #: the workers log like the server (--log_level / --log_format)
    log_level: str = "info"
    log_format: str = "text"


class State:
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"  # load failed; retrying with backoff
    STOPPING = "stopping"
    STOPPED = "stopped"


class WorkerSupervisor:
    """Process lifecycle of one model's worker. Subclassed by the engine client."""

    name: str
    spec: ipc.ModelSpec
    config: EngineConfig
    state: str
    last_error: str | None
    consecutive_crashes: int
    restarts: int
    _served_since_start: int
    _load_error: str | None

    def _init_supervision(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._ready_event = asyncio.Event()
        self._last_message = time.monotonic()
        self._stopping = False
        #: rows of the predict batch the worker said it started (0: none running)
        self._busy_rows = 0
        #: requests in that batch
        self._busy_requests = 0
        #: whether this engine's model was ever loaded (ready) at all
        self._ever_ready = False
        #: whether the current worker process reached READY (reset at each spawn)
        self._ready_this_run = False
        #: set by the registry where a model that never loads should be given up (called once,
        #: with the reason, after ``max_consecutive_crashes`` failed loads in a row) instead of
        #: failing liveness: in a repository, one broken model must not restart the pod.
        self.on_give_up: Any = None

    # hooks implemented by the engine client
    def _dispatch(self, msg: ipc.ToServer) -> None:
        raise NotImplementedError

    def _fail_all(self, error: SteadyError) -> None:
        raise NotImplementedError

    def _emit(self, event: str, **fields: Any) -> None:
        raise NotImplementedError

    @property
    def _in_flight(self) -> int:
        raise NotImplementedError

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        if self._supervisor is None:
            self._stopping = False
            self._supervisor = asyncio.create_task(self._supervise(), name=f"supervise-{self.name}")

    async def wait_ready(self, timeout: float | None = None) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._ready_event.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop admitting; let in-flight requests finish for up to ``grace_s``; stop the worker."""
        if self.state == State.STOPPED and self._supervisor is None:
            return
        self.state = State.STOPPING
        self._ready_event.clear()
        deadline = time.monotonic() + grace_s
        while self._in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._stopping = True
        # a worker still busy past the grace period is in model code and would not read the
        # Shutdown before it finishes: don't wait for it beyond a moment
        busy = self._in_flight > 0 or self._busy_rows > 0
        self._fail_all(ServiceUnavailable(f"model {self.name} is shutting down", retry_after=1))
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.write(ipc.frame(ipc.Shutdown()))
                await asyncio.wait_for(self._writer.drain(), timeout=1)
        proc = self._proc
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), timeout=0.5 if busy else 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
            self._supervisor = None
        self.state = State.STOPPED

    async def _spawn(self) -> tuple[asyncio.subprocess.Process, asyncio.StreamReader]:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            env = dict(os.environ)
            env.setdefault("TOKENIZERS_PARALLELISM", "false")
            # `-m` would put the current directory first on the worker's sys.path: a file there
            # (triton.py, say) would shadow an installed package inside the model's process
            env["PYTHONSAFEPATH"] = "1"
            env.setdefault("STEADYSERVE_WORKER_LOG_LEVEL", self.config.log_level)
            env["STEADYSERVE_WORKER_LOG_FORMAT"] = self.config.log_format
            # threads from the CPUs we may really use, OpenMP threads that sleep when idle: set
            # before the worker imports torch (steadyserve/cpus.py)
            env.update(cpus.worker_env(env, cpus.detect(self.spec.torch_threads)))
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "steadyserve.engine.worker",
                "--fd",
                str(child.fileno()),
                pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
            )
        finally:
            child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent, limit=1 << 24)
        self._writer = writer
        writer.write(ipc.frame(ipc.Load(spec=self.spec)))
        await writer.drain()
        return proc, reader

    async def _supervise(self) -> None:
        backoff = self.config.restart_backoff_s
        while not self._stopping:
            self.state = State.STARTING if self.restarts == 0 else State.RESTARTING
            self._served_since_start = 0
            self._ready_this_run = False
            proc: asyncio.subprocess.Process | None = None
            try:
                proc, reader = await self._spawn()
                self._proc = proc
                self._last_message = time.monotonic()
                self._busy_rows = self._busy_requests = 0
                self._reader_task = asyncio.create_task(self._read_loop(reader))
                outcome = await self._watch(proc)
            except asyncio.CancelledError:
                if proc is not None and proc.returncode is None:
                    proc.kill()
                raise
            except Exception as exc:  # pragma: no cover - spawn failure
                log.exception("could not start worker for %s", self.name)
                outcome = f"spawn failed: {exc}"
            # ---- the worker is gone -------------------------------------------------------
            # the read loop may already have moved READY to RESTARTING on EOF
            was_ready = self._ready_this_run
            self._ready_event.clear()
            if self._reader_task is not None:
                self._reader_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._reader_task
            self._writer = None
            if self._stopping:
                break
            if self._load_error is not None:
                outcome = f"{LOAD_FAILED}: {self._load_error}"
                self._load_error = None
            self.last_error = outcome
            self.state = State.RESTARTING if was_ready else State.FAILED
            self._fail_all(
                WorkerCrashed(f"model worker for {self.name} {outcome}; restarting", retry_after=1)
            )
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
                self.on_give_up(outcome)
                break
            self._emit("restart", reason=outcome)
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

    async def _watch(self, proc: asyncio.subprocess.Process) -> str:
        """Wait until the worker exits, or kill it when it loads too long or hangs."""
        started = time.monotonic()
        wait = asyncio.create_task(proc.wait())
        try:
            while True:
                done, _ = await asyncio.wait({wait}, timeout=0.1)
                if done:
                    code = proc.returncode
                    if code is not None and code < 0:
                        return f"was killed by signal {-code}"
                    return f"exited with code {code}"
                now = time.monotonic()
                if self.state != State.READY:
                    if now - started > self.config.worker_load_timeout_s:
                        proc.kill()
                        await wait
                        return "did not load in time"
                    continue
                # silence is a hang past the timeout - per row of a running predict batch
                limit = self.config.worker_hang_timeout_s * max(1, self._busy_rows)
                if now - self._last_message > limit:
                    log.error(
                        "model %s: worker silent for %.1fs with %d request(s); killing it",
                        self.name,
                        now - self._last_message,
                        self._in_flight,
                    )
                    proc.kill()
                    await wait
                    return "hung (no progress) and was killed"
        finally:
            if not wait.done():
                wait.cancel()

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                header = await reader.readexactly(4)
                body = await reader.readexactly(ipc.parse_header(header))
                self._last_message = time.monotonic()
                self._dispatch(ipc.to_server_decoder.decode(body))
        except (asyncio.IncompleteReadError, ConnectionError):
            # EOF: the worker died. Fail in-flight requests now, not when the exit is reaped.
            if not self._stopping:
                self._fail_all(WorkerCrashed(f"model worker for {self.name} died", retry_after=1))
                self._ready_event.clear()
                if self.state == State.READY:
                    self.state = State.RESTARTING

"""Test helpers: run a real server process on 127.0.0.1 and stop it by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from steadyserve.settings import ENV_VARS

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "models"
FAULTY = f"{MODELS / 'faulty.py'}:Faulty"
EXAMPLE = f"{ROOT / 'examples' / 'custom_model.py'}:Scaler"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``steadyserve serve`` in a subprocess. Use as a context manager."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        ready_timeout: float = 90.0,
        wait_ready: bool = True,
        grpc: bool = False,
        new_session: bool = False,
    ) -> None:
        self.port = free_port()
        self.grpc_port = free_port() if grpc else None
        self.args = list(args)
        self.env = {k: v for k, v in os.environ.items() if k not in _SERVER_ENV}
        self.env.update(env or {})
        self.env.setdefault("STEADYSERVE_WORKER_LOG_LEVEL", "WARNING")
        self.ready_timeout = ready_timeout
        self.wait_ready = wait_ready
        #: its own process group (for signals sent to the whole group)
        self.new_session = new_session
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in __exit__
            prefix="steadyserve-", suffix=".log", delete=False
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerProcess:
        cmd = [
            sys.executable,
            "-m",
            "steadyserve",
            "serve",
            "--host",
            "127.0.0.1",
            "--http_port",
            str(self.port),
            *self.args,
        ]
        if self.grpc_port is not None:
            cmd += ["--grpc_port", str(self.grpc_port), "--enable_grpc"]
        self.proc = subprocess.Popen(
            cmd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=str(ROOT),
            start_new_session=self.new_session,
        )
        if self.wait_ready:
            self.wait_until_ready(self.ready_timeout)
        return self

    def wait_until_ready(self, timeout: float = 90.0, path: str = "/v2/health/ready") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-20000:]

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 30), **kwargs)

    def debug(self) -> dict[str, Any]:
        r = httpx.get(self.url + "/debug/engine", timeout=5)
        r.raise_for_status()
        return dict(r.json())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return int(self.proc.returncode)

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


#: server env vars that must not leak from the developer's shell into tests
_SERVER_ENV = set(ENV_VARS.values())


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``steadyserve`` to completion (for start-up failures)."""
    full_env = {k: v for k, v in os.environ.items() if k not in _SERVER_ENV}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "steadyserve", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=str(ROOT),
    )


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"condition not met in {timeout}s (last: {last!r})")


def make_repository(root: Path, **models: str) -> Path:
    """A model repository at ``root``: one sub-directory per ``name=path.py:Class`` custom model
    (``model.py`` + ``steadyserve.txt`` naming the class). Default: scaler + faulty."""
    import shutil

    for name, target in (models or {"scaler": EXAMPLE, "faulty": FAULTY}).items():
        path, _, cls = target.rpartition(":")
        model_dir = root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, model_dir / "model.py")
        (model_dir / "steadyserve.txt").write_text(cls, encoding="utf-8")
    return root

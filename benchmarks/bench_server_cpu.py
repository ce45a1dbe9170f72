"""Server-process CPU per generated token: what the HTTP/engine-client side costs, apart from
the model (issue 12: "work per step, not per token per request").

Starts ``steadyserve serve`` on a tiny random-weight GPT-2-shaped model (so the server path,
not the model, dominates), drives ``/openai/v1/completions`` with closed-loop clients
(token-id prompts, ``max_tokens`` = ``min_tokens``, ``ignore_eos``), and reads the server
process's own CPU time (``/proc/PID/stat`` utime + stime; the worker is a separate process and
is not counted) before and after each run. Prints microseconds of server CPU per token.

    python benchmarks/bench_server_cpu.py                       # stream and non-stream, c=8
    PYTHONPATH=/other/checkout/src python benchmarks/bench_server_cpu.py   # compare a tree
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_load(url: str, concurrency: int, requests: int, tokens: int, stream: bool) -> int:
    """Closed loop; returns the completion tokens served."""
    todo = iter(range(requests))
    served = 0

    async def client() -> None:
        nonlocal served
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            for i in todo:
                body = {
                    "model": "m",
                    "prompt": [1 + (i + k) % 50 for k in range(12)],
                    "max_tokens": tokens,
                    "min_tokens": tokens,
                    "ignore_eos": True,
                    "temperature": 0,
                    "stream": stream,
                }
                if stream:
                    async with http.stream("POST", "/openai/v1/completions", json=body) as r:
                        assert r.status_code == 200, await r.aread()
                        async for _ in r.aiter_lines():
                            pass
                    served += tokens
                else:
                    r = await http.post("/openai/v1/completions", json=body)
                    assert r.status_code == 200, r.text
                    served += r.json()["usage"]["completion_tokens"]

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return served


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from steadyserve.runtimes.huggingface import tiny

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "m"
        tiny.build_gpt2(model_dir)
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "steadyserve",
            "serve",
            "--model_dir",
            str(model_dir),
            "--model_name",
            "m",
            "--http_port",
            str(port),
            "--host",
            "127.0.0.1",
            "--log_level",
            "warning",
            "--max_num_seqs",
            str(max(args.concurrency, 1)),
        ]
        proc = subprocess.Popen(cmd, cwd=tmp)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("server did not become ready")
                time.sleep(0.2)
            asyncio.run(run_load(url, args.concurrency, args.concurrency, 8, False))  # warm-up
            print(
                f"server CPU per token, c={args.concurrency}, {args.requests} requests x "
                f"{args.tokens} tokens (tiny gpt2), source: {sys.modules['steadyserve'].__file__}"
            )
            # what the idle server burns per second (timers, heartbeats, the watchdog): at the
            # low token rates of a busy 2-core machine it is a large part of the total
            c0, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(10)
            idle = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
            print(f"  idle: {idle * 1e3:.1f} ms of CPU per second")
            for stream in (False, True):
                for _ in range(args.repeats):
                    c0, t0 = cpu_seconds(proc.pid), time.monotonic()
                    n = asyncio.run(
                        run_load(url, args.concurrency, args.requests, args.tokens, stream)
                    )
                    cpu, wall = cpu_seconds(proc.pid) - c0, time.monotonic() - t0
                    busy = max(cpu - idle * wall, 0.0)
                    print(
                        f"  stream={stream!s:5}  {n} tokens  {n / wall:7.0f} tok/s  "
                        f"server CPU {cpu:5.2f} s = {cpu / n * 1e6:6.1f} us/token, "
                        f"{busy / n * 1e6:6.1f} us/token above idle"
                    )
        finally:
            proc.terminate()
            proc.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

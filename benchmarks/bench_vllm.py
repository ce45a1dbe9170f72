"""steadyserve ``--backend vllm`` against vLLM's own OpenAI server, same model, same load, ONE run.

Run it in the vLLM environment (``bash scripts/setup_vllm.sh``)::

    PYTHONPATH=src .venv-vllm/bin/python benchmarks/bench_vllm.py                 # CPU
    PYTHONPATH=src python benchmarks/bench_vllm.py --device cuda --rounds 1       # GPU, < 8 min

For each model (``llama``: a Llama-shaped model with a chat template; ``gpt2``: GPT-2 base
dims; random weights, built by ``steadyserve.runtimes.huggingface.tiny`` into ``--cache_dir``)
three servers are started, one after the other, and kept up (idle while another is measured):

* ``ours+vllm``  - ``steadyserve serve --backend vllm``
* ``vllm``       - ``python -m vllm.entrypoints.openai.api_server`` (vLLM's own server)
* ``ours+hf``    - ``steadyserve serve --backend huggingface`` (our own engine; ``--no_hf`` skips)

Each is driven on ``/v1/completions`` (token-id prompts, ``max_tokens`` = ``min_tokens`` =
``--new_tokens``, ``ignore_eos``, greedy) by closed-loop clients at each concurrency; rounds
alternate between the servers so that drift on a shared machine hits them alike; the best
round and the medians over the rounds are reported. Read the ratios: ``tok/s`` ours+vllm / vllm at c=32 (target >= 0.95) and
``p50`` ours+vllm / vllm at c=1 (target <= 1.1). Start-up time (spawn to ready) and memory (RSS
of the server's whole process tree, after the load) are reported per server. JSON goes to
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks.loadgen`` importable
    sys.path.insert(0, str(ROOT))

MODEL_NAME = "bench"


def build(kind: str, cache_dir: Path) -> Path:
    from steadyserve.runtimes.huggingface import tiny

    path = cache_dir / f"bench-vllm-{kind}"
    if not (path / "config.json").exists():
        print(f"building the {kind}-shaped model in {path} ...", flush=True)
        if kind == "gpt2":
            tiny.build_gpt2(path, preset="gpt2")
        else:  # head size 64: vLLM's CPU attention needs >= 32
            tiny.build_llama(
                path,
                hidden_size=512,
                intermediate_size=1376,
                num_hidden_layers=8,
                num_attention_heads=8,
                num_key_value_heads=4,
            )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One server process, its start-up time and its process tree's memory."""

    def __init__(self, label: str, cmd: list[str], port: int, ready_path: str, env: dict[str, str]):
        self.label, self.cmd, self.port, self.ready_path = label, cmd, port, ready_path
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            prefix=f"bench-{label}-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.started = time.monotonic()
        self.startup_s = float("nan")

    def wait_ready(self, timeout: float) -> None:
        import httpx

        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    self.startup_s = time.monotonic() - self.started
                    return
            time.sleep(0.2)
        raise TimeoutError(f"{self.label} not ready in {timeout}s:\n{self.tail()}")

    def rss_mb(self) -> float:
        import psutil

        root = psutil.Process(self.proc.pid)
        total = 0
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total / 2**20

    def tail(self, n: int = 3000) -> str:
        return Path(self.log.name).read_text(errors="replace")[-n:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


def start_servers(model_dir: Path, args: argparse.Namespace) -> list[Server]:
    env = dict(os.environ)
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    env["STEADYSERVE_WORKER_LOG_LEVEL"] = "WARNING"
    ours_common = [
        "--model_dir", str(model_dir), "--model_name", MODEL_NAME, "--host", "127.0.0.1",
        "--dtype", args.dtype, "--max_model_len", str(args.max_model_len),
        "--max_num_seqs", str(max(args.concurrency)), "--log_level", "warning",
        "--device", args.device,
    ]  # fmt: skip
    vllm_flags = ["--enforce_eager"] if args.enforce_eager else []
    if args.device == "cpu":
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        env["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_cache_space_gb)
        vllm_flags += ["--kv_cache_space_gb", str(args.kv_cache_space_gb)]
    py = sys.executable
    plan: list[tuple[str, list[str], str, dict[str, str]]] = []
    port = _free_port()
    plan.append(
        (
            "ours+vllm",
            [py, "-m", "steadyserve", "serve", "--http_port", str(port), *ours_common,
             "--backend", "vllm", *vllm_flags],
            "/v2/health/ready",
            env,
        )
    )  # fmt: skip
    if args.inproc:
        port_i = _free_port()
        plan.append(
            (
                "ours+vllm1p",
                [py, "-m", "steadyserve", "serve", "--http_port", str(port_i), *ours_common,
                 "--backend", "vllm", "--vllm_engine_core", "worker", *vllm_flags],
                "/v2/health/ready",
                env,
            )
        )  # fmt: skip
    port_v = _free_port()
    native = [
        py, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--served-model-name", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port_v),
        "--dtype", args.dtype, "--max-model-len", str(args.max_model_len),
        "--max-num-seqs", str(max(args.concurrency)), "--disable-uvicorn-access-log",
    ]  # fmt: skip
    if args.enforce_eager:
        native.append("--enforce-eager")
    plan.append(("vllm", native, "/v1/models", env))
    if not args.no_hf:
        port_h = _free_port()
        plan.append(
            (
                "ours+hf",
                [py, "-m", "steadyserve", "serve", "--http_port", str(port_h), *ours_common,
                 "--backend", "huggingface"],
                "/v2/health/ready",
                env,
            )
        )  # fmt: skip
    servers: list[Server] = []
    try:
        for label, cmd, ready, env_of in plan:  # one at a time: start-ups do not share the CPU
            port_of = int(cmd[cmd.index("--http_port" if "--http_port" in cmd else "--port") + 1])
            srv = Server(label, cmd, port_of, ready, env_of)
            servers.append(srv)
            srv.wait_ready(args.startup_timeout)
            print(f"  {label}: ready in {srv.startup_s:.1f}s", flush=True)
    except BaseException:
        for srv in servers:
            srv.stop()
        raise
    return servers


def completions_path(label: str) -> str:
    return "/v1/completions" if label == "vllm" else "/openai/v1/completions"


def run_level(srv: Server, prompts: list[list[int]], args: argparse.Namespace, c: int) -> dict:
    from benchmarks.loadgen import run_load

    n = args.new_tokens

    def body(i: int) -> dict[str, Any]:
        return {"model": MODEL_NAME, "prompt": prompts[i % len(prompts)], "max_tokens": n,
                "min_tokens": n, "ignore_eos": True, "temperature": 0.0}  # fmt: skip

    res = asyncio.run(
        run_load(
            srv.url + completions_path(srv.label),
            body,
            concurrency=c,
            total=max(c * args.waves, args.min_requests),
            duration_s=args.level_timeout,
            on_response=lambda r: int(r.json()["usage"]["completion_tokens"]),
        )
    )
    tokens = sum(res.payload)
    return {
        "requests": res.ok,
        "errors": res.errors,
        "tok_s": tokens / res.elapsed if res.elapsed else 0.0,
        "p50_ms": res.p50 * 1000,
        "tokens_checked": all(t == n for t in res.payload),
    }


def make_prompts(model_dir: Path, n: int, length: int) -> list[list[int]]:
    import random

    from transformers import AutoConfig

    vocab = int(AutoConfig.from_pretrained(model_dir).vocab_size)
    rng = random.Random(0)
    return [[rng.randrange(10, vocab) for _ in range(length)] for _ in range(n)]


def bench_model(kind: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    model_dir = build(kind, Path(args.cache_dir))
    prompts = make_prompts(model_dir, 64, args.prompt_tokens)
    print(f"\n== {kind}: starting servers", flush=True)
    servers = start_servers(model_dir, args)
    rows: list[dict[str, Any]] = []
    try:
        for srv in servers:  # warm-up (first requests compile / allocate)
            run_level(srv, prompts, argparse.Namespace(**{**vars(args), "waves": 1}), 2)
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for rnd in range(args.rounds):
            for c in args.concurrency:
                order = servers if rnd % 2 == 0 else servers[::-1]
                for srv in order:
                    r = run_level(srv, prompts, args, c)
                    print(f"  round {rnd} c={c} {srv.label}: {r['tok_s']:.0f} tok/s "
                          f"p50 {r['p50_ms']:.0f} ms", flush=True)  # fmt: skip
                    runs.setdefault((srv.label, c), []).append(r)
        memory = {srv.label: srv.rss_mb() for srv in servers}
        for (label, c), rs in runs.items():
            srv = next(s for s in servers if s.label == label)
            best = max(rs, key=lambda r: r["tok_s"])
            rows.append({"model": kind, "server": label, "c": c, **best,
                         "tok_s_median": statistics.median(r["tok_s"] for r in rs),
                         "p50_ms_median": statistics.median(r["p50_ms"] for r in rs),
                         "errors": sum(r["errors"] for r in rs), "rounds": rs,
                         "startup_s": srv.startup_s, "rss_mb": memory[label]})  # fmt: skip
    finally:
        for srv in servers:
            srv.stop()
    return rows


def print_rows(rows: list[dict[str, Any]]) -> None:
    """Best round's tok/s, and medians over the rounds (tok/s and p50, the steadier
    figures on a shared machine); ratios against vLLM's own server."""
    print(f"\n{'model':6} {'server':11} {'c':>3} {'best tok/s':>10} {'med tok/s':>9} "
          f"{'med p50':>8} {'err':>4} {'start s':>8} {'RSS MB':>7}  ratios vs vllm "
          "(best tok/s, median tok/s, median p50)")  # fmt: skip
    ref = {(r["model"], r["c"]): r for r in rows if r["server"] == "vllm"}
    for r in sorted(rows, key=lambda r: (r["model"], r["c"], r["server"])):
        base = ref.get((r["model"], r["c"]))
        ratio = ""
        if base and r["server"] != "vllm" and base["tok_s"] and base["p50_ms_median"]:
            ratio = (
                f"x{r['tok_s'] / base['tok_s']:.2f}  x{r['tok_s_median'] / base['tok_s_median']:.2f}"
                f"  p50 x{r['p50_ms_median'] / base['p50_ms_median']:.2f}"
            )
        print(f"{r['model']:6} {r['server']:11} {r['c']:>3} {r['tok_s']:>10.0f} "
              f"{r['tok_s_median']:>9.0f} {r['p50_ms_median']:>8.0f} {r['errors']:>4} "
              f"{r['startup_s']:>8.1f} {r['rss_mb']:>7.0f}  {ratio}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--models", nargs="+", default=["llama", "gpt2"], choices=["llama", "gpt2"])
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--new_tokens", type=int, default=32)
    p.add_argument("--prompt_tokens", type=int, default=16)
    p.add_argument("--waves", type=int, default=3, help="requests per level = waves x c")
    p.add_argument("--min_requests", type=int, default=16, help="at least this many per level")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--max_model_len", type=int, default=512)
    p.add_argument("--kv_cache_space_gb", type=int, default=2, help="CPU only")
    p.add_argument("--enforce_eager", action="store_true")
    p.add_argument("--no_hf", action="store_true", help="skip our own engine")
    p.add_argument(
        "--inproc",
        action="store_true",
        help="also ours+vllm1p: --vllm_engine_core worker (vLLM's engine core in our worker)",
    )
    p.add_argument("--startup_timeout", type=float, default=600.0)
    p.add_argument("--level_timeout", type=float, default=180.0)
    p.add_argument("--cache_dir", default=str(Path(tempfile.gettempdir()) / "steadyserve-bench"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for kind in args.models:
        rows += bench_model(kind, args)
    print_rows(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_vllm-{args.device}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1), encoding="utf-8")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

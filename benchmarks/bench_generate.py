"""Generation throughput and latency: the model's own ``generate()`` against the continuous
batcher, in process and behind the server's OpenAI completions route, in ONE run.

For each model (a t5-small-shaped and a gpt2-shaped model with random weights, built by
``steadyserve.runtimes.huggingface.tiny`` and cached in ``--cache_dir``) and each batch size:

* ``generate``  - the in-process ceiling: one batched ``model.generate()`` (greedy, exactly
  ``--new_tokens`` new tokens: ``min_new_tokens`` = ``max_new_tokens``) over the same prompts;
* ``engine``    - :class:`ContinuousBatcher` driven in process (no server): all requests added
  at once, ``step()`` until done;
* ``server``    - ``steadyserve serve --model_dir DIR`` in a subprocess, driven on
  ``/openai/v1/completions`` (token-id prompts, ``max_tokens`` = ``min_tokens`` = new tokens,
  ``ignore_eos``) by closed-loop clients at concurrency = batch size.

Ceiling, engine and server runs alternate (``--repeats`` rounds, the median of each is kept;
the server is up the whole time, idle during the in-process runs) so that drift in what a shared
machine gives us hits all three alike; ratios are what to read. A server round is
``--server_waves`` x concurrency requests from closed-loop clients. Prints a table
and writes JSON to ``benchmarks/results/``. Also measures ``transformers``' own continuous
batching (``generate_batch``) for the decoder-only model with ``--hf_cb``.

``--arrivals closed`` (default) keeps ``c`` requests in flight, a new one as soon as one ends
(the engine in process too: ``--server_waves`` x c requests); ``--arrivals wave`` sends ``c`` at
once and waits for all. ``--neighbour`` repeats every level with one process spinning on one
core (started and stopped here) and prints the ratio to the quiet figure of the same round.
Engine rows also give the time to first token (``ttft``, p50 / p99).

    python benchmarks/bench_generate.py                      # both models, batches 1 8 32
    python benchmarks/bench_generate.py --models t5 --batches 1 32 --no_server
    python benchmarks/bench_generate.py --models gpt2 --batches 1 8 --neighbour --dtype bfloat16
    # the GPU table of issue 12 (Llama ~250M, bf16, 64 new tokens, c = 1 32 128; < 8 min):
    python benchmarks/bench_generate.py --gpu_table [--compile]
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
PRESETS = {
    "t5": ("t5-small", "t5-small"),
    "gpt2": ("gpt2", "gpt2"),
    "llama250m": ("", "llama250m"),
    "llama-tiny": ("", "llama-tiny"),  # a few layers of 64: checks the code paths quickly
    "llama-demo": ("", "llama-demo"),  # issues 12/13's "Llama demo shape" (bench_vllm's llama)
}
#: the Llama shape of bench_vllm.py (8 layers of 512, head size 64, a chat template)
LLAMA_DEMO = {
    "hidden_size": 512,
    "intermediate_size": 1376,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
}
#: the ~250M-parameter Llama shape of issue 12
LLAMA_250M = {
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 16,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "max_position_embeddings": 2048,
}


def build(kind: str, cache_dir: Path) -> Path:
    """The model directory for ``kind`` (built once, then reused from the cache)."""
    from steadyserve.runtimes.huggingface import tiny

    preset, name = PRESETS[kind]
    path = cache_dir / f"bench-{name}"
    if not (path / "config.json").exists():
        print(f"building {name}-shaped model in {path} ...", flush=True)
        if kind == "t5":
            tiny.build_t5(path, preset=preset)
        elif kind == "llama250m":
            tiny.build_llama(path, vocab_size=32000, **LLAMA_250M)  # type: ignore[arg-type]
        elif kind == "llama-tiny":
            tiny.build_llama(path)
        elif kind == "llama-demo":
            tiny.build_llama(path, **LLAMA_DEMO)  # type: ignore[arg-type]
        else:
            tiny.build_gpt2(path, preset=preset)
    return path


def load(kind: str, path: Path, device: str = "cpu", dtype: str = "float32") -> Any:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cls = AutoModelForSeq2SeqLM if kind == "t5" else AutoModelForCausalLM
    model = cls.from_pretrained(str(path), dtype=getattr(torch, dtype))
    return model.to(device).eval()


def make_prompts(model: Any, n: int, seed: int = 0) -> list[list[int]]:
    """``n`` prompts of 12-27 random token ids (deterministic)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    vocab = min(int(model.config.vocab_size), 1000)  # tiny tokenizers: ids the server accepts
    return [torch.randint(5, vocab, (12 + (i * 7) % 16,), generator=g).tolist() for i in range(n)]


# ---- the in-process ceiling: model.generate() ---------------------------------------------------
def run_generate(model: Any, prompts: list[list[int]], new_tokens: int) -> float:
    """Seconds for one batched greedy ``generate()`` of exactly ``new_tokens`` per prompt."""
    import torch

    enc_dec = bool(model.config.is_encoder_decoder)
    pad = int(model.config.pad_token_id if model.config.pad_token_id is not None else 0)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long, device=model.device)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        sl = slice(0, len(p)) if enc_dec else slice(width - len(p), width)
        ids[i, sl] = torch.tensor(p)
        mask[i, sl] = 1
    _sync(model)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=pad,
        )
    _sync(model)
    took = time.perf_counter() - t0
    produced = out.shape[1] - (1 if enc_dec else width)
    assert produced == new_tokens, f"generate produced {produced} tokens, not {new_tokens}"
    return took


def _sync(model: Any) -> None:
    import torch

    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


# ---- the engine, in process ---------------------------------------------------------------------
def make_engine(model: Any, slots: int, args: argparse.Namespace | None = None) -> Any:
    from steadyserve.runtimes.huggingface.generation import ContinuousBatcher

    cfg = model.config
    kw: dict[str, Any] = {}
    if args is not None:
        kw["kv_cache"] = args.kv_cache
        kw["compile"] = args.compile
        if args.prefill_delay is not None:
            kw["prefill_delay_steps"] = args.prefill_delay
        if args.prefill_hold is not None:
            kw["prefill_hold_ms"] = args.prefill_hold
    return ContinuousBatcher(
        model,
        eos_token_ids=[int(cfg.eos_token_id)],
        pad_token_id=int(cfg.pad_token_id if cfg.pad_token_id is not None else 0),
        max_num_seqs=max(32, slots),
        max_model_len=1024,
        **kw,
    )


def run_engine(
    model: Any,
    prompts: list[list[int]],
    new_tokens: int,
    *,
    concurrency: int | None = None,
    total: int | None = None,
    args: argparse.Namespace | None = None,
) -> tuple[float, list[float], list[float]]:
    """The continuous batcher in process: all prompts added at once (``concurrency`` None), or
    closed loop (``concurrency`` in flight, ``total`` requests, a new one added as soon as one
    ends). Returns the seconds taken, each request's latency and its time to first token."""
    from steadyserve.types import GenerateRequest, SamplingParams

    c = concurrency or len(prompts)
    n_total = total or len(prompts)
    engine = make_engine(model, c, args)
    params = SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens, temperature=0.0)
    started: dict[str, float] = {}
    sent = 0

    def send() -> None:
        nonlocal sent
        rid = str(sent)
        started[rid] = time.perf_counter()
        engine.add(
            rid, GenerateRequest(prompt_token_ids=prompts[sent % len(prompts)], params=params)
        )
        sent += 1

    t0 = time.perf_counter()
    for _ in range(min(c, n_total)):
        send()
    latency: list[float] = []
    ttft: list[float] = []
    counts: dict[str, int] = {}
    while engine.has_work():
        for rid, item in engine.step():
            if isinstance(item, BaseException):
                raise item
            now = time.perf_counter()
            if rid not in counts:
                ttft.append(now - started[rid])
            counts[rid] = counts.get(rid, 0) + len(item.token_ids)
            if item.finish_reason is not None:
                latency.append(now - started[rid])
                if concurrency is not None and sent < n_total:
                    send()
    _sync(model)
    took = time.perf_counter() - t0
    assert all(v == new_tokens for v in counts.values()) and len(counts) == n_total
    return took, latency, ttft


def run_hf_cb(model: Any, prompts: list[list[int]], new_tokens: int) -> float:
    """Seconds for transformers' own continuous batching (``generate_batch``)."""
    from transformers import GenerationConfig

    cfg = model.config
    gen = GenerationConfig(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
    )
    t0 = time.perf_counter()
    model.generate_batch(prompts, generation_config=gen, warmup=False)
    return time.perf_counter() - t0


# ---- the server ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_has_completions() -> bool:
    routes = ROOT / "src" / "steadyserve" / "transport" / "routes_openai.py"
    return routes.exists() and "/completions" in routes.read_text()


@contextlib.contextmanager
def serve(
    model_dir: Path, max_num_seqs: int, extra: list[str] | None = None, timeout: float = 300.0
) -> Any:
    """``steadyserve serve`` on a free loopback port; yields its base URL."""
    import httpx

    port = _free_port()
    log = tempfile.NamedTemporaryFile(prefix="bench-serve-", suffix=".log", delete=False)  # noqa: SIM115
    cmd = [
        sys.executable, "-m", "steadyserve", "serve",
        "--model_dir", str(model_dir), "--model_name", "bench",
        "--host", "127.0.0.1", "--http_port", str(port),
        "--max_num_seqs", str(max_num_seqs), *(extra or []),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("STORAGE_URI", "MODEL_NAME")}
    env.setdefault("STEADYSERVE_WORKER_LOG_LEVEL", "WARNING")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}): {_tail(log.name)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {timeout}s: {_tail(log.name)}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        with contextlib.suppress(OSError):
            os.unlink(log.name)


def _tail(path: str, n: int = 1500) -> str:
    return Path(path).read_text(errors="replace")[-n:]


def run_server_load(
    url: str,
    prompts: list[list[int]],
    new_tokens: int,
    concurrency: int,
    total: int,
    arrivals: str = "closed",
    client: str = "aiohttp",
) -> dict[str, Any]:
    """Closed-loop clients at ``concurrency`` (``total`` requests), or with ``arrivals="wave"``
    one simultaneous wave of ``concurrency`` requests."""
    from benchmarks.loadgen import run_load

    def body(i: int) -> dict[str, Any]:
        return {
            "model": "bench",
            "prompt": prompts[i % len(prompts)],
            "max_tokens": new_tokens,
            "min_tokens": new_tokens,
            "ignore_eos": True,
            "temperature": 0.0,
        }

    def usage(resp: Any) -> int:
        return int(resp.json()["usage"]["completion_tokens"])

    res = asyncio.run(
        run_load(
            url + "/openai/v1/completions",
            body,
            concurrency=concurrency,
            total=concurrency if arrivals == "wave" else total,
            duration_s=120.0,
            on_response=usage,
            client=client,
        )
    )
    tokens = sum(res.payload)
    return {
        "requests": res.ok,
        "errors": res.errors,
        "tokens_per_s": tokens / res.elapsed if res.elapsed else 0.0,
        "p50_ms": res.p50 * 1000,
        "p99_ms": res.pct(0.99) * 1000,
        "tokens_checked": all(t == new_tokens for t in res.payload),
    }


# ---- a noisy neighbour ---------------------------------------------------------------------------
_SPIN = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True: pass\n"


@contextlib.contextmanager
def neighbour(on: bool) -> Any:
    """One process spinning on one core (the last one we may use) while the block runs."""
    if not on:
        yield
        return
    cpu = max(os.sched_getaffinity(0))
    proc = subprocess.Popen([sys.executable, "-c", _SPIN, str(cpu)])
    try:
        time.sleep(0.2)
        yield
    finally:
        proc.kill()
        proc.wait(timeout=10)


# ---- driver ----------------------------------------------------------------------------------
def bench_model(kind: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    path = build(kind, Path(args.cache_dir))
    model = load(kind, path, args.device, args.dtype)
    prompts = make_prompts(model, max(args.batches))
    rows: list[dict[str, Any]] = []
    # warm-up (first calls allocate and pick kernels)
    run_generate(model, prompts[:2], 4)
    run_engine(model, prompts[:2], 4, args=args)
    server_error = None
    with contextlib.ExitStack() as stack:
        url = None
        if not args.no_server:
            if not server_has_completions():
                server_error = "no /openai/v1/completions route yet"
            else:
                try:
                    extra = ["--device", args.device, "--dtype", args.dtype, *args.server_args]
                    url = stack.enter_context(serve(path, max(args.batches), extra))
                    run_server_load(url, prompts, 4, 1, 1)  # warm-up request
                except Exception as exc:  # noqa: BLE001 - report, do not stop the run
                    server_error = str(exc)[:500]
        for b in args.batches:
            rows += _bench_level(kind, model, prompts, b, args, url)
        if server_error is not None:
            rows.append({"model": kind, "mode": "server", "error": server_error})
    del model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return rows


def _bench_level(
    kind: str,
    model: Any,
    prompts: list[list[int]],
    b: int,
    args: argparse.Namespace,
    url: str | None,
) -> list[dict[str, Any]]:
    """One concurrency: ceiling, engine and server runs *interleaved* (``--repeats`` rounds,
    medians kept), so that drift in what the machine gives us hits all three alike; with
    ``--neighbour`` each round runs the engine and the server once more beside a spinning
    process. The server's worker idles while the in-process runs go."""
    n = args.new_tokens
    total = max(args.server_waves * b, args.min_requests)
    closed = args.arrivals == "closed"
    gen_times: list[float] = []
    eng: dict[bool, list[tuple[float, list[float], list[float]]]] = {False: [], True: []}
    served: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    noisy = [False, True] if args.neighbour else [False]
    for _ in range(args.repeats):
        gen_times.append(run_generate(model, prompts[:b], n))
        for busy in noisy:
            with neighbour(busy):
                eng[busy].append(
                    run_engine(
                        model,
                        prompts[:b] if not closed else prompts,
                        n,
                        concurrency=b if closed else None,
                        total=total if closed else None,
                        args=args,
                    )
                )
                if url is not None:
                    served[busy].append(
                        run_server_load(url, prompts, n, b, total, args.arrivals, args.client)
                    )
    g = statistics.median(gen_times)
    ceiling = {"tokens_per_s": b * n / g, "latency_ms": g * 1000}
    rows = [_row(kind, "generate", b, b * n / g, g * 1000, g * 1000, ceiling)]
    quiet: dict[str, float] = {}
    line = f"  {kind} c={b}: generate {b * n / g:.1f} tok/s"
    for busy in noisy:
        tag = " +neighbour" if busy else ""
        runs = sorted(eng[busy], key=lambda r: r[0])
        took, lat, ttft = runs[len(runs) // 2]
        tps = len(lat) * n / took
        row = _row(kind, "engine" + tag, b, tps, _pct(lat, 0.5), _pct(lat, 0.99), ceiling)
        row.update(ttft_p50_ms=round(_pct(ttft, 0.5), 1), ttft_p99_ms=round(_pct(ttft, 0.99), 1))
        quiet.setdefault("engine", tps)
        row["x_quiet"] = round(tps / quiet["engine"], 3)
        rows.append(row)
        line += f", engine{tag} {tps:.1f}"
        if served[busy]:
            mid = sorted(served[busy], key=lambda r: r["tokens_per_s"])[len(served[busy]) // 2]
            row = _row(
                kind, "server" + tag, b, mid["tokens_per_s"], mid["p50_ms"], mid["p99_ms"], ceiling
            )
            row.update(
                requests=sum(r["requests"] for r in served[busy]),
                errors=sum(r["errors"] for r in served[busy]),
                exact_tokens=all(r["tokens_checked"] for r in served[busy]),
                x_engine=round(mid["tokens_per_s"] / tps, 3),
            )
            quiet.setdefault("server", mid["tokens_per_s"])
            row["x_quiet"] = round(mid["tokens_per_s"] / quiet["server"], 3)
            rows.append(row)
            line += f", server{tag} {mid['tokens_per_s']:.1f}"
    print(line + " tok/s", flush=True)
    return rows


def _pct(values: list[float], q: float) -> float:
    data = sorted(values)
    return data[min(len(data) - 1, int(q * len(data)))] * 1000 if data else float("nan")


def _row(
    kind: str, mode: str, batch: int, tps: float, p50: float, p99: float, ceiling: dict[str, float]
) -> dict[str, Any]:
    return {
        "model": kind,
        "mode": mode,
        "c": batch,
        "tokens_per_s": round(tps, 1),
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "x_ceiling_tps": round(tps / ceiling["tokens_per_s"], 3),
        "x_ceiling_latency": round(p50 / ceiling["latency_ms"], 3),
    }


def print_rows(rows: list[dict[str, Any]]) -> None:
    keys = ["model", "mode", "c", "tokens_per_s", "p50_ms", "p99_ms", "ttft_p50_ms",
            "ttft_p99_ms", "x_ceiling_tps", "x_ceiling_latency", "x_engine", "x_quiet",
            "errors", "error"]  # fmt: skip
    keys = [k for k in keys if any(k in r for r in rows)]
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    print("  ".join(k.rjust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r.get(k, "")).rjust(widths[k]) for k in keys))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(PRESETS), default=["t5", "gpt2"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--min_requests", type=int, default=4, help="server: fewest requests per level"
    )
    parser.add_argument(
        "--server_waves",
        type=int,
        default=3,
        help="server: requests per round = waves x concurrency",
    )
    parser.add_argument("--cache_dir", default=str(ROOT / ".cache" / "bench-models"))
    parser.add_argument("--no_server", action="store_true", help="skip the server runs")
    parser.add_argument(
        "--hf_cb", action="store_true", help="also time transformers' generate_batch"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: the worker's default, see steadyserve/cpus.py)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (model and server)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--arrivals", choices=["closed", "wave"], default="closed")
    parser.add_argument(
        "--compile", action="store_true", help="compiled decode step (engine and server)"
    )
    parser.add_argument("--neighbour", action="store_true", help="also run beside a busy core")
    parser.add_argument("--kv_cache", choices=["slots", "dynamic"], default="slots")
    parser.add_argument(
        "--prefill_delay", type=int, default=None, help="engine prefill_delay_steps (default: auto)"
    )
    parser.add_argument(
        "--prefill_hold",
        type=float,
        default=None,
        help="prefill_hold_ms of the engine and the server (default: the engine's)",
    )
    parser.add_argument(
        "--client",
        choices=["aiohttp", "httpx"],
        default="aiohttp",
        help="the load generator's HTTP client (it shares the CPUs with the server)",
    )
    parser.add_argument(
        "--server_args",
        nargs="*",
        default=[],
        help="more `steadyserve serve` flags: --server_args='--torch_threads 1'",
    )
    parser.add_argument(
        "--gpu_table",
        action="store_true",
        help="issue 12's GPU table: llama250m, cuda, bf16, 64 new tokens, c = 1 32 128",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    if args.gpu_table:
        args.models, args.device, args.dtype = ["llama250m"], "cuda", "bfloat16"
        args.new_tokens, args.batches, args.repeats, args.server_waves = 64, [1, 32, 128], 2, 2
    args.server_args = [a for arg in args.server_args for a in arg.split()]
    if args.compile:
        args.server_args.append("--compile")
    if args.prefill_hold is not None:
        args.server_args += ["--prefill_hold_ms", str(args.prefill_hold)]

    from steadyserve import cpus

    # the in-process runs get what the server's worker gets (thread count, OpenMP passive
    # wait policy), set before torch is imported
    plan = cpus.detect(args.threads or None)
    os.environ.update(cpus.worker_env(os.environ, plan))
    import torch

    torch.set_num_threads(plan.threads)
    rows: list[dict[str, Any]] = []
    for kind in args.models:
        rows.extend(bench_model(kind, args))
    print()
    print_rows(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"generate-{time.strftime('%Y%m%d-%H%M%S')}.json"
    meta = {
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "device": args.device,
        "dtype": args.dtype,
        "arrivals": args.arrivals,
        "kv_cache": args.kv_cache,
        "compile": args.compile,
        "client": args.client,
        "argv": sys.argv[1:] if argv is None else argv,
        "cpu_count": os.cpu_count(),
        "loadavg_end": os.getloadavg(),
    }
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What dynamic batching buys on a small encoder (BERT classifier, random weights).

Runs the server twice on the same model - ``--max_batch_size 1`` (no batching) and the default
dynamic batcher - and drives V1 ``:predict`` (one sentence per request) at concurrency 1, 8, 32.
Also measures the in-process ceiling: the bare model's forward pass on a batch of 1 and of 32.

    python benchmarks/bench_batching.py [--requests 400] [--layers 4] [--hidden 256]
                                        [--wait_ms 5 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.loadgen import print_table, run_load  # noqa: E402
from tests.helpers import ServerProcess  # noqa: E402

SENTENCES = [
    "the service answered quickly and the results were good",
    "a slow and disappointing experience from start to finish",
    "nothing special but it worked as expected today",
    "I would gladly use this again for my next project",
]


def build_model(cache: Path, layers: int, hidden: int) -> str:
    from steadyserve.runtimes.huggingface.tiny import build_bert

    path = cache / f"bert-cls-{layers}x{hidden}"
    if not (path / "config.json").exists():
        build_bert(
            path,
            "sequence_classification",
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=max(1, hidden // 64),
            intermediate_size=hidden * 4,
        )
    return str(path)


def ceiling(model_dir: str, iters: int = 20) -> list[dict[str, Any]]:
    """Bare model: sentences/s for a batch of 1 and of 32 (tokenize + forward)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    rows = []
    for batch in (1, 32):
        texts = [SENTENCES[i % len(SENTENCES)] for i in range(batch)]
        with torch.inference_mode():
            for _ in range(3):
                model(**tok(texts, return_tensors="pt", padding=True))
            t0 = time.perf_counter()
            for _ in range(iters):
                model(**tok(texts, return_tensors="pt", padding=True))
            took = time.perf_counter() - t0
        rows.append(
            {
                "batch": batch,
                "sentences_per_s": round(batch * iters / took, 1),
                "ms_per_batch": round(took / iters * 1000, 2),
            }
        )
    return rows


async def drive(url: str, total: int) -> list[dict[str, Any]]:
    # warm-up (first forward passes pick kernels, the first connections are opened)
    await run_load(
        url,
        lambda i: {"instances": [SENTENCES[i % len(SENTENCES)]]},
        concurrency=8,
        total=32,
        duration_s=30,
    )
    rows = []
    for concurrency in (1, 8, 32):
        result = await run_load(
            url,
            lambda i: {"instances": [SENTENCES[i % len(SENTENCES)]]},
            concurrency=concurrency,
            total=total if concurrency > 1 else max(50, total // 4),
            duration_s=60,
        )
        rows.append(result.row())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument(
        "--wait_ms",
        type=float,
        nargs="+",
        default=[5.0],
        help="--max_batch_wait_ms values to compare (default: 5, the server's)",
    )
    parser.add_argument(
        "--server_args",
        default="",
        help="extra serve flags for every run, e.g. '--torch_threads 1'",
    )
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "steadyserve-bench"))
    args = parser.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(cache, args.layers, args.hidden)
    results: dict[str, Any] = {"model": f"bert {args.layers}x{args.hidden}"}
    results["ceiling"] = ceiling(model_dir)
    print_table("in-process ceiling (no server)", results["ceiling"])
    configs = [("no batching (max_batch_size=1)", ["--max_batch_size", "1"])]
    for wait in args.wait_ms:
        configs.append(
            (
                f"dynamic batching (max 32, wait {wait:g} ms)",
                ["--max_batch_size", "32", "--max_batch_wait_ms", str(wait)],
            )
        )
    for label, extra in configs:
        with ServerProcess(
            "--model_dir",
            model_dir,
            "--model_name",
            "bert",
            *extra,
            *args.server_args.split(),
            ready_timeout=180,
        ) as srv:
            rows = asyncio.run(drive(f"{srv.url}/v1/models/bert:predict", args.requests))
        results[label] = rows
        print_table(label, rows)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "batching.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""A TorchServe archive on steadyserve: TorchServe's ``/predictions`` route vs KServe V1
``:predict`` on the same handler, with TorchServe's default batch size 1 and with
``batchSize: 8``, at concurrency 1 and 8; next to the handler driven in process (the ceiling).

The archive (built with torch-model-archiver) holds a TorchScript MLP (``--width`` wide, 3
layers) and a BaseHandler subclass (tests/ts_material.py ``TENSOR_HANDLER``).

    python benchmarks/bench_torchserve.py [--requests 200] [--width 512] [--torch_threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
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
from tests.ts_material import TENSOR_HANDLER, archive  # noqa: E402


def build(work: Path, width: int, batch: int) -> Path:
    import torch

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, 8),
    )
    src = work / "src"
    src.mkdir(parents=True, exist_ok=True)
    torch.jit.script(mlp).save(str(src / "mlp.pt"))
    handler = src / "mlp_handler.py"
    handler.write_text(TENSOR_HANDLER)
    store = work / f"store-b{batch}"
    return archive(
        store,
        "mlp",
        str(handler),
        serialized=src / "mlp.pt",
        config_yaml=f"batchSize: {batch}\nmaxBatchDelay: 5\n",
    )


def ceiling(mar: Path, width: int, reps: int) -> list[dict[str, Any]]:
    from steadyserve.runtimes.torchserve.handler import TorchServeModel
    from steadyserve.runtimes.torchserve.specs import archive_spec

    cwd, path = os.getcwd(), list(sys.path)
    spec = archive_spec(str(mar), {"device": "cpu"})
    model = TorchServeModel("mlp", spec.model_dir, **spec.options)
    model.load()
    rows = []
    for batch in (1, 8):
        instances = [{"data": [0.5] * width} for _ in range(batch)]
        model.predict(instances)
        t0 = time.perf_counter()
        for _ in range(reps):
            model.predict(instances)
        took = time.perf_counter() - t0
        rows.append({"batch": batch, "rows/s": round(reps * batch / took, 1)})
    os.chdir(cwd)
    sys.path[:] = path
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument(
        "--torch_threads",
        type=int,
        default=1,
        help="intra-op threads (server and ceiling); on a busy 2-core VM more threads spin",
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.torch_threads)
    vec = [0.5] * args.width
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mars = {b: build(work, args.width, b) for b in (1, 8)}
        print_table("in-process handler (ceiling)", ceiling(mars[8], args.width, 200))
        for batch, mar in mars.items():
            with ServerProcess(
                "--model_archive",
                str(mar),
                "--torch_threads",
                str(args.torch_threads),
                ready_timeout=180,
            ) as srv:
                for route, url, body in (
                    ("/predictions", f"{srv.url}/predictions/mlp", {"x": vec}),
                    ("v1 :predict", f"{srv.url}/v1/models/mlp:predict", {"instances": [vec]}),
                ):
                    for conc in (1, 8):
                        res = asyncio.run(
                            run_load(
                                url,
                                lambda i, b=body: b,
                                concurrency=conc,
                                total=args.requests,
                            )
                        )
                        rows.append({"batchSize": batch, "route": route, **res.row()})
    print_table("server", rows)


if __name__ == "__main__":
    main()

"""Open Inference Protocol V2 transports compared: REST JSON vs REST binary tensor extension vs
gRPC (raw contents), for a 1 MB FP32 tensor and for small requests.

One server process serves a model whose ``infer`` doubles its input with numpy (so the model costs
next to nothing and the numbers show the transport + codec + IPC path). Each case runs
``--requests`` (small) / ``--large_requests`` (1 MB) closed-loop requests per concurrency level
after one warm-up request, and reports requests/s, p50 and p99. Every response is checked (shape
and values of the first and last element).

    python benchmarks/bench_v2.py [--requests 300] [--large_requests 40] [--concurrency 1 8]
                                  [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.loadgen import print_table  # noqa: E402
from tests.helpers import ServerProcess  # noqa: E402

MODEL = """
import numpy as np
import steadyserve
from steadyserve import TensorSpec
from steadyserve.types import InferResponse, tensor_from_numpy


class Doubler(steadyserve.Model):
    inputs = [TensorSpec(name="x", datatype="FP32", shape=[-1, -1])]
    outputs = [TensorSpec(name="y", datatype="FP32", shape=[-1, -1])]

    def load(self):
        pass

    def infer(self, request):
        x = request.inputs[0].to_numpy()
        return InferResponse(model_name=self.name, outputs=[tensor_from_numpy("y", x * 2)])
"""

SIZES = {"small (1x4 FP32)": (1, 4), "1 MB (1x262144 FP32)": (1, 262_144)}
LARGE = "1 MB (1x262144 FP32)"


def summarize(
    name: str, size: str, concurrency: int, latencies: list[float], errors: int, elapsed: float
) -> dict[str, Any]:
    data = sorted(latencies)
    p99 = data[min(len(data) - 1, int(0.99 * len(data)))] if data else float("nan")
    return {
        "payload": size,
        "transport": name,
        "concurrency": concurrency,
        "requests": len(data),
        "errors": errors,
        "rps": round(len(data) / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(statistics.median(data) * 1000, 2) if data else float("nan"),
        "p99_ms": round(p99 * 1000, 2),
    }


async def closed_loop(
    send: Callable[[], Awaitable[None]], concurrency: int, total: int
) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))

    async def worker() -> None:
        nonlocal errors
        for _ in counter:
            t0 = time.perf_counter()
            try:
                await send()
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - start


def check(out: np.ndarray, x: np.ndarray) -> None:
    if out.shape != x.shape or out.flat[0] != x.flat[0] * 2 or out.flat[-1] != x.flat[-1] * 2:
        raise AssertionError("wrong result")


def rest_json_sender(client: Any, url: str, x: np.ndarray) -> Callable[[], Awaitable[None]]:
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "data": x.reshape(-1).tolist(),
                }
            ]
        }
    ).encode()

    async def send() -> None:
        r = await client.post(url, content=body, headers={"content-type": "application/json"})
        r.raise_for_status()
        out = r.json()["outputs"][0]
        check(np.asarray(out["data"], dtype=np.float32).reshape(out["shape"]), x)

    return send


def rest_binary_sender(client: Any, url: str, x: np.ndarray) -> Callable[[], Awaitable[None]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    body = header + x.tobytes()
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }

    async def send() -> None:
        r = await client.post(url, content=body, headers=headers)
        r.raise_for_status()
        n = int(r.headers["inference-header-content-length"])
        out = json.loads(r.content[:n])["outputs"][0]
        check(np.frombuffer(r.content[n:], dtype="<f4").reshape(out["shape"]), x)

    return send


def grpc_sender(stub: Any, x: np.ndarray) -> Callable[[], Awaitable[None]]:
    from steadyserve.protocol.grpc_gen import grpc_predict_v2_pb2 as pb

    msg = pb.ModelInferRequest(model_name="doubler")
    msg.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    msg.raw_input_contents.append(x.tobytes())

    async def send() -> None:
        resp = await stub.ModelInfer(msg, timeout=120)
        shape = list(resp.outputs[0].shape)
        check(np.frombuffer(resp.raw_output_contents[0], dtype="<f4").reshape(shape), x)

    return send


async def bench(
    srv: ServerProcess, small: int, large: int, levels: list[int]
) -> list[dict[str, Any]]:
    import grpc
    import httpx

    from steadyserve.protocol.grpc_gen import grpc_predict_v2_pb2_grpc as pb_grpc

    rows: list[dict[str, Any]] = []
    url = f"{srv.url}/v2/models/doubler/infer"
    options = [
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.max_receive_message_length", 64 << 20),
    ]
    for size, shape in SIZES.items():
        requests = large if size == LARGE else small
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        for concurrency in levels:
            limits = httpx.Limits(max_connections=concurrency)
            async with (
                httpx.AsyncClient(timeout=120, limits=limits) as client,
                grpc.aio.insecure_channel(f"127.0.0.1:{srv.grpc_port}", options=options) as channel,
            ):
                senders = {
                    "REST JSON": rest_json_sender(client, url, x),
                    "REST binary": rest_binary_sender(client, url, x),
                    "gRPC raw": grpc_sender(pb_grpc.GRPCInferenceServiceStub(channel), x),
                }
                for name, send in senders.items():
                    await send()  # warm-up (and a correctness check)
                    lat, err, took = await closed_loop(send, concurrency, requests)
                    rows.append(summarize(name, size, concurrency, lat, err, took))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per small case")
    parser.add_argument("--large_requests", type=int, default=40, help="requests per 1 MB case")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--json", type=Path, default=None, help="also write rows here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "doubler.py"
        model.write_text(MODEL, encoding="utf-8")
        with ServerProcess(
            "--model_class",
            f"{model}:Doubler",
            "--model_name",
            "doubler",
            "--log_level",
            "warning",
            grpc=True,
        ) as srv:
            rows = asyncio.run(bench(srv, args.requests, args.large_requests, args.concurrency))
    print_table("V2 transports (loopback, one server process + one model worker)", rows)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""KServe's own Python SDK (``kserve.InferenceRESTClient`` V1 + V2, ``InferenceGRPCClient``)
driven against a running steadyserve, unmodified. Prints one JSON object of observations.

Run in its own process by ``test_kserve_sdk.py``: ``import kserve`` registers the ``inference``
protobuf package in the default descriptor pool, and so does ``tritonclient.grpc``, so the two
SDKs cannot share a process (steadyserve's own stubs live in a private pool and mind neither).

    echo '{"http": "http://127.0.0.1:8080", "grpc": "127.0.0.1:8081", "model": "scaler"}' |
        python tests/e2e/kserve_sdk_client.py

The target comes on stdin, not argv: ``import kserve`` parses ``sys.argv`` with its own flags.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import grpc
import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

X = np.arange(6, dtype=np.float32).reshape(3, 2)


def _status(exc: BaseException) -> Any:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    return type(exc).__name__


async def _outcome(coro: Any) -> dict[str, Any]:
    """``{"ok": value}`` or ``{"error": status, "message": ...}`` of one SDK call."""
    try:
        return {"ok": await coro}
    except Exception as exc:  # noqa: BLE001 - recorded for the test to judge
        return {"error": _status(exc), "message": str(exc)[:300]}


def _v2_request(model: str, binary: bool, shape: list[int] | None = None) -> InferRequest:
    tensor = InferInput(name="x", shape=list(X.shape), datatype="FP32")
    tensor.set_data_from_numpy(X, binary_data=binary)
    if shape is not None:  # a shape that lies about the data (the SDK checks it only on set)
        tensor.shape = shape
    return InferRequest(model_name=model, infer_inputs=[tensor], request_id="sdk-1")


def _numpy(response: Any) -> list[Any]:
    return [np.asarray(out.as_numpy()).tolist() for out in response.outputs]


async def rest_v1(url: str, model: str) -> dict[str, Any]:
    client = InferenceRESTClient(RESTConfig(protocol="v1", retries=0, timeout=30))
    try:
        return {
            "live": await _outcome(client.is_server_live(url)),
            "model_ready": await _outcome(client.is_model_ready(url, model)),
            "unknown_ready": await _outcome(client.is_model_ready(url, "no-such-model")),
            "predict": await _outcome(
                client.infer(url, {"instances": X.tolist()}, model_name=model)
            ),
            "bad_input": await _outcome(
                client.infer(url, {"instances": "not a list"}, model_name=model)
            ),
            "unknown_model": await _outcome(
                client.infer(url, {"instances": [[1.0]]}, model_name="no-such-model")
            ),
            "predict_after": await _outcome(
                client.infer(url, {"instances": [[5.0, 6.0]]}, model_name=model)
            ),
        }
    finally:
        await client.close()


async def rest_v2(url: str, model: str) -> dict[str, Any]:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))

    async def infer(binary: bool, shape: list[int] | None = None, name: str = model) -> Any:
        response = await client.infer(url, _v2_request(name, binary, shape), model_name=name)
        return {"id": response.id, "model": response.model_name, "outputs": _numpy(response)}

    try:
        return {
            "live": await _outcome(client.is_server_live(url)),
            "ready": await _outcome(client.is_server_ready(url)),
            "model_ready": await _outcome(client.is_model_ready(url, model)),
            "unknown_ready": await _outcome(client.is_model_ready(url, "no-such-model")),
            "infer_json": await _outcome(infer(binary=False)),
            "infer_binary": await _outcome(infer(binary=True)),
            "bad_shape": await _outcome(infer(binary=False, shape=[4, 2])),
            "unknown_model": await _outcome(infer(binary=False, name="no-such-model")),
            "infer_after": await _outcome(infer(binary=True)),
        }
    finally:
        await client.close()


async def grpc_v2(target: str, model: str) -> dict[str, Any]:
    client = InferenceGRPCClient(target, timeout=30, retries=0)

    async def infer(shape: list[int] | None = None, name: str = model) -> Any:
        response = await client.infer(_v2_request(name, True, shape))
        return {"id": response.id, "model": response.model_name, "outputs": _numpy(response)}

    try:
        return {
            "live": await _outcome(client.is_server_live()),
            "ready": await _outcome(client.is_server_ready()),
            "model_ready": await _outcome(client.is_model_ready(model)),
            "infer": await _outcome(infer()),
            "bad_shape": await _outcome(infer(shape=[4, 2])),
            "unknown_model": await _outcome(infer(name="no-such-model")),
            "infer_after": await _outcome(infer()),
        }
    finally:
        await client.close()


async def main_async(target: dict[str, str]) -> dict[str, Any]:
    return {
        "v1": await rest_v1(target["http"], target["model"]),
        "v2": await rest_v2(target["http"], target["model"]),
        "grpc": await grpc_v2(target["grpc"], target["model"]),
    }


def main() -> int:
    print(json.dumps(asyncio.run(main_async(json.loads(sys.stdin.read())))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

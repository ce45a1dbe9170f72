"""The V2 gRPC server against a real server process (two custom models): health, metadata,
typed and raw inference, every error path (then a good request), the same status as REST for the
same error, the client's deadline, client cancellation, message size limits."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from steadyserve.protocol.grpc_gen import grpc_predict_v2_pb2 as pb
from steadyserve.protocol.grpc_gen import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.helpers import ServerProcess, make_repository, wait_for

MAX_MESSAGE = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = make_repository(tmp_path_factory.mktemp("repo"))
    with ServerProcess(
        "--model_repository",
        str(repo),
        "--grpc_max_message_bytes",
        str(MAX_MESSAGE),
        grpc=True,
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[Any]:
    options = [
        ("grpc.max_send_message_length", 8 << 20),
        ("grpc.max_receive_message_length", 8 << 20),
    ]
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=options) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def scaler_request(x: np.ndarray, raw: bool = False, **kwargs: Any) -> Any:
    msg = pb.ModelInferRequest(model_name="scaler", **kwargs)
    tensor = msg.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    if raw:
        msg.raw_input_contents.append(x.astype("<f4").tobytes())
    else:
        tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    return msg


def faulty_request(text: str) -> Any:
    msg = pb.ModelInferRequest(model_name="faulty")
    msg.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        text.encode()
    )
    return msg


def assert_good(stub: Any) -> None:
    x = np.array([[1, 2], [3, 4]], dtype=np.float32)
    resp = stub.ModelInfer(scaler_request(x), timeout=30)
    assert list(resp.outputs[0].contents.fp32_contents) == [2, 4, 6, 8]


def code_of(call: Any, *args: Any, **kwargs: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    err = info.value
    return err.code(), err.details()  # type: ignore[attr-defined]


def test_health_and_metadata(stub: Any) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest()).live is True
    assert stub.ServerReady(pb.ServerReadyRequest()).ready is True
    assert stub.ModelReady(pb.ModelReadyRequest(name="scaler")).ready is True
    meta = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "steadyserve" and "binary_tensor_data" in meta.extensions
    model = stub.ModelMetadata(pb.ModelMetadataRequest(name="scaler"))
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("x", "FP32", [-1, -1])]
    assert model.outputs[0].name == "y"
    assert list(model.versions) == ["1"]  # declares none: serves "1" (and no version)


def test_infer_typed_and_raw(stub: Any) -> None:
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    typed = stub.ModelInfer(scaler_request(x, id="abc", model_version="1"))
    assert typed.id == "abc" and typed.model_version == "1" and typed.model_name == "scaler"
    assert list(typed.outputs[0].shape) == [3, 2]
    assert list(typed.outputs[0].contents.fp32_contents) == (x * 2).reshape(-1).tolist()
    raw = stub.ModelInfer(scaler_request(x, raw=True))
    assert not raw.outputs[0].HasField("contents")
    out = np.frombuffer(raw.raw_output_contents[0], dtype="<f4").reshape(3, 2)
    assert out.tolist() == (x * 2).tolist()
    text = stub.ModelInfer(faulty_request("hello"))
    assert list(text.outputs[0].contents.bytes_contents) == [b"HELLO"]


def _bad_shape() -> Any:
    return scaler_request(np.zeros(3, dtype=np.float32))


def _lying_raw() -> Any:
    msg = scaler_request(np.zeros((1, 2), dtype=np.float32), raw=True)
    msg.raw_input_contents[0] = b"\0" * 5
    return msg


def _fp16_typed() -> Any:
    msg = pb.ModelInferRequest(model_name="scaler")
    msg.inputs.add(name="x", datatype="FP16", shape=[1, 1]).contents.fp32_contents.append(1.0)
    return msg


def _classification() -> Any:
    msg = scaler_request(np.ones((1, 2), dtype=np.float32))
    msg.outputs.add(name="y").parameters["classification"].int64_param = 2
    return msg


def _binary_data_not_bool() -> Any:
    msg = scaler_request(np.ones((1, 2), dtype=np.float32))
    msg.outputs.add(name="y").parameters["binary_data"].string_param = "yes"
    return msg


@pytest.mark.parametrize(
    ("build", "code", "needle"),
    [
        (lambda: pb.ModelInferRequest(model_name="nope"), grpc.StatusCode.NOT_FOUND, "nope"),
        (
            lambda: scaler_request(np.ones((1, 2), dtype=np.float32), model_version="7"),
            grpc.StatusCode.NOT_FOUND,
            "model scaler has no version '7'; its versions: 1",
        ),
        (_classification, grpc.StatusCode.INVALID_ARGUMENT, "parameter 'classification'"),
        (_binary_data_not_bool, grpc.StatusCode.INVALID_ARGUMENT, "must be a boolean"),
        (
            lambda: pb.ModelInferRequest(model_name="scaler"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "inputs",
        ),
        (_bad_shape, grpc.StatusCode.INVALID_ARGUMENT, "shape"),
        (_lying_raw, grpc.StatusCode.INVALID_ARGUMENT, "needs 8 bytes"),
        (_fp16_typed, grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents"),
        (lambda: faulty_request("raise"), grpc.StatusCode.INTERNAL, "boom"),
        (lambda: faulty_request("bad-input"), grpc.StatusCode.INVALID_ARGUMENT, "refused"),
    ],
)
def test_errors_then_good(stub: Any, build: Any, code: grpc.StatusCode, needle: str) -> None:
    got, details = code_of(stub.ModelInfer, build(), timeout=30)
    assert got == code and needle in details, details
    assert "Traceback" not in details
    assert_good(stub)


def test_metadata_errors(stub: Any) -> None:
    assert (
        code_of(stub.ModelMetadata, pb.ModelMetadataRequest(name="nope"))[0]
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        code_of(stub.ModelReady, pb.ModelReadyRequest(name="nope"))[0] == grpc.StatusCode.NOT_FOUND
    )
    for call, msg in [
        (stub.ModelMetadata, pb.ModelMetadataRequest(name="scaler", version="7")),
        (stub.ModelReady, pb.ModelReadyRequest(name="scaler", version="7")),
    ]:
        code, details = code_of(call, msg)
        assert code == grpc.StatusCode.NOT_FOUND and "its versions: 1" in details
    assert stub.ModelReady(pb.ModelReadyRequest(name="scaler", version="1")).ready is True
    assert_good(stub)


@pytest.mark.parametrize(
    ("body", "msg", "status", "code"),
    [
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2, 3]}]},
            _bad_shape,
            400,
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["raise"]}]},
            lambda: faulty_request("raise"),
            500,
            grpc.StatusCode.INTERNAL,
        ),
        (
            {
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 1]}],
                "outputs": [{"name": "y", "parameters": {"classification": 2}}],
            },
            _classification,
            400,
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ],
)
def test_same_error_same_status_on_rest_and_grpc(
    server: ServerProcess,
    stub: Any,
    body: dict[str, Any],
    msg: Any,
    status: int,
    code: grpc.StatusCode,
) -> None:
    model = "scaler" if body["inputs"][0]["name"] == "x" else "faulty"
    rest = httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=30)
    grpc_code, grpc_details = code_of(stub.ModelInfer, msg(), timeout=30)
    assert rest.status_code == status and grpc_code == code
    assert rest.json()["error"] == grpc_details


def faulty_in_flight(server: ServerProcess) -> int:
    return int(server.debug()["models"]["faulty"]["in_flight"])


def test_client_deadline_reaches_the_engine(server: ServerProcess, stub: Any) -> None:
    started = time.monotonic()
    code, _ = code_of(stub.ModelInfer, faulty_request("sleep:5"), timeout=0.5)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3
    wait_for(lambda: faulty_in_flight(server) == 0, timeout=2)
    assert_good(stub)


def test_client_cancellation_aborts_the_request(server: ServerProcess, stub: Any) -> None:
    call = stub.ModelInfer.future(faulty_request("sleep:5"), timeout=30)
    wait_for(lambda: faulty_in_flight(server) == 1, timeout=5)
    call.cancel()
    started = time.monotonic()
    wait_for(lambda: faulty_in_flight(server) == 0, timeout=3)
    assert time.monotonic() - started < 3  # well before the 5 s sleep would have ended
    assert_good(stub)


def test_oversize_message_is_resource_exhausted(stub: Any) -> None:
    big = np.zeros((1, (MAX_MESSAGE // 4) + 1024), dtype=np.float32)
    code, _ = code_of(stub.ModelInfer, scaler_request(big, raw=True), timeout=30)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_good(stub)
    ok = np.ones((1, 1000), dtype=np.float32)
    resp = stub.ModelInfer(scaler_request(ok, raw=True), timeout=30)
    assert np.frombuffer(resp.raw_output_contents[0], dtype="<f4").sum() == 2000


def test_tls_and_api_key(tmp_path: Path) -> None:
    """With --ssl_certfile/--ssl_keyfile the gRPC port speaks TLS (and plaintext fails); with an
    API key every RPC but health needs ``authorization: Bearer <key>``."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    repo = make_repository(tmp_path / "repo", scaler=_example())
    with ServerProcess(
        "--model_repository",
        str(repo),
        "--ssl_certfile",
        str(cert),
        "--ssl_keyfile",
        str(key),
        grpc=True,
        wait_ready=False,
        env={"STEADYSERVE_API_KEY": "k1,k2"},
    ) as srv:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"localhost:{srv.grpc_port}", creds) as channel:
            secure = pb_grpc.GRPCInferenceServiceStub(channel)

            def ready() -> bool:
                try:
                    return bool(secure.ServerReady(pb.ServerReadyRequest(), timeout=2).ready)
                except grpc.RpcError:
                    return False

            wait_for(ready, timeout=60, interval=0.2)
            x = np.ones((1, 2), dtype=np.float32)
            for metadata, needle in (
                (None, "missing"),
                ((("authorization", "Bearer nope"),), "invalid"),
            ):
                code, details = code_of(
                    secure.ModelInfer, scaler_request(x), metadata=metadata, timeout=10
                )
                assert code == grpc.StatusCode.UNAUTHENTICATED and needle in details
            code, _ = code_of(
                secure.RepositoryModelUnload,
                pb.RepositoryModelUnloadRequest(model_name="scaler"),
                timeout=10,
            )
            assert code == grpc.StatusCode.UNAUTHENTICATED
            resp = secure.ModelInfer(
                scaler_request(x), metadata=(("authorization", "Bearer k2"),), timeout=30
            )
            assert list(resp.outputs[0].contents.fp32_contents) == [2, 2]
        with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as plain:
            code, _ = code_of(
                pb_grpc.GRPCInferenceServiceStub(plain).ServerLive,
                pb.ServerLiveRequest(),
                timeout=5,
            )
            assert code == grpc.StatusCode.UNAVAILABLE


def _example() -> str:
    from tests.helpers import EXAMPLE

    return EXAMPLE


def test_busy_grpc_port_fails_start_up_with_one_line() -> None:
    import socket

    from tests.helpers import EXAMPLE, free_port, run_cli

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_cli(
            "serve",
            "--host",
            "127.0.0.1",
            "--http_port",
            str(free_port()),
            "--grpc_port",
            str(port),
            "--enable_grpc",
            "--model_class",
            EXAMPLE,
        )
    # checked with the rest of the configuration, before any worker starts: exit 2, one line
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert f"--grpc_port={port}" in done.stderr and "cannot listen" in done.stderr


def test_grpc_calls_are_counted_logged_and_carry_a_request_id(
    server: ServerProcess, stub: Any
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def count(code: str) -> float:
        text = httpx.get(server.url + "/metrics").text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if (
                    s.name == "steadyserve_requests_total"
                    and s.labels.get("method") == "gRPC"
                    and s.labels["route"] == "/inference.GRPCInferenceService/ModelInfer"
                    and s.labels["code"] == code
                ):
                    return float(s.value)
        return 0.0

    ok, missing = count("200"), count("404")
    _, call = stub.ModelInfer.with_call(
        scaler_request(np.ones((1, 2), np.float32)), metadata=(("x-request-id", "grpc-id-1"),)
    )
    assert dict(call.trailing_metadata())["x-request-id"] == "grpc-id-1"
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(pb.ModelInferRequest(model_name="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(dict(info.value.trailing_metadata())["x-request-id"]) == 32  # generated
    assert count("200") == ok + 1 and count("404") == missing + 1
    wait_for(lambda: "gRPC /inference.GRPCInferenceService/ModelInfer 200" in server.logs())
    assert_good(stub)

"""Limits: 413 for bodies over --max_request_body_bytes (at once from Content-Length; while a
chunked body streams in, before it ends), 431 for too many / too large headers - each followed by
a good request; CORS off by default and on with --cors_origins; HTTPS with a self-signed cert."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import EXAMPLE, ServerProcess

LIMIT = 4096
PREDICT = "/v1/models/scaler:predict"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(
        "--model_class",
        EXAMPLE,
        "--model_name",
        "scaler",
        "--max_request_body_bytes",
        str(LIMIT),
    ) as srv:
        yield srv


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def assert_good(client: httpx.Client) -> None:
    r = client.post(PREDICT, json={"instances": [[1, 2]]})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [[2.0, 4.0]]}


def read_response(sock: socket.socket, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response (headers + Content-Length body) from a raw socket."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def raw(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def test_content_length_too_large_is_413_before_any_body(
    server: ServerProcess, client: httpx.Client
) -> None:
    with raw(server) as sock:
        started = time.monotonic()
        sock.sendall(
            f"POST {PREDICT} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {500 * 1024 * 1024}\r\n\r\n".encode()
        )
        # not one body byte sent: the server answers from the header alone
        status, headers, body = read_response(sock)
        assert status == 413
        assert time.monotonic() - started < 3
        assert headers["connection"] == "close"
        assert "x-request-id" in headers
        assert str(LIMIT) in json.loads(body)["error"]
    assert_good(client)


def test_streamed_chunked_body_is_413_while_it_streams(
    server: ServerProcess, client: httpx.Client
) -> None:
    with raw(server) as sock:
        sock.sendall(
            f"POST {PREDICT} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        chunk = b"[" + b"1," * 511 + b"1"  # 1 KiB of a JSON array that never closes
        for _ in range(6):  # 6 KiB > 4 KiB, and the terminating 0-chunk is never sent
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        status, headers, body = read_response(sock)
        assert status == 413, body
        assert "exceeds" in json.loads(body)["error"]
        assert "x-request-id" in headers
    assert_good(client)


def test_chunked_body_under_the_limit_is_fine(client: httpx.Client) -> None:
    payload = json.dumps({"instances": [[1, 2]] * 100}).encode()
    assert len(payload) < LIMIT

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(payload), 300):
            yield payload[i : i + 300]

    r = client.post(PREDICT, content=pieces(), headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 100


def test_openai_shape_on_413(client: httpx.Client) -> None:
    r = client.post("/openai/v1/completions", content=b"x" * (LIMIT + 1))
    assert r.status_code == 413
    assert r.json()["error"]["message"].startswith("request body exceeds")
    assert_good(client)


def test_header_limits(server: ServerProcess, client: httpx.Client) -> None:
    many = {f"X-H{i}": "v" for i in range(150)}
    r = client.get("/v2/health/ready", headers=many)
    assert r.status_code == 431
    assert "x-request-id" in r.headers
    assert_good(client)
    with raw(server) as sock:
        sock.sendall(
            b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
        )
        status, _, _ = read_response(sock)
        assert status in (400, 431)
    assert_good(client)
    # a header block over the 64 KiB bound that arrives in one read is refused too, with an id
    for size in (70_000, 100_000):
        with raw(server) as sock:
            sock.sendall(
                b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
            )
            status, headers, body = read_response(sock)
            assert status == 431 and "x-request-id" in headers
            assert json.loads(body)["error"]
        assert_good(client)
    # just under the bound is fine
    r = client.get("/v2/health/ready", headers={"X-Big": "a" * 60_000})
    assert r.status_code == 200


def test_cors_off_by_default(client: httpx.Client) -> None:
    r = client.get("/v2/health/ready", headers={"Origin": "https://evil.example"})
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers


# ---- TLS + CORS on --------------------------------------------------------------------------
def make_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_https_and_cors(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    with ServerProcess(
        "--model_class",
        EXAMPLE,
        "--model_name",
        "scaler",
        "--ssl_certfile",
        str(cert),
        "--ssl_keyfile",
        str(key),
        "--cors_origins",
        "https://app.example,https://other.example",
        wait_ready=False,
    ) as srv:
        url = f"https://127.0.0.1:{srv.port}"
        context = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=url, verify=context, timeout=10) as c:
            deadline = time.monotonic() + 90
            while True:
                assert srv.proc is not None and srv.proc.poll() is None, srv.logs()
                try:
                    if c.get("/v2/health/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, srv.logs()
                time.sleep(0.2)
            assert_good(c)
            # CORS: allowed origin gets the header (and may read X-Request-ID), others do not
            r = c.get("/v2/health/ready", headers={"Origin": "https://app.example"})
            assert r.headers["access-control-allow-origin"] == "https://app.example"
            assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
            r = c.get("/v2/health/ready", headers={"Origin": "https://evil.example"})
            assert "access-control-allow-origin" not in r.headers
            r = c.options(
                PREDICT,
                headers={
                    "Origin": "https://other.example",
                    "Access-Control-Request-Method": "POST",
                },
            )
            assert r.status_code == 200
            assert r.headers["access-control-allow-origin"] == "https://other.example"
        # the TLS port does not speak plain HTTP
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{srv.port}/v2/health/ready", timeout=3).raise_for_status()


def _predict_encoded(client: httpx.Client, body: bytes, encoding: str) -> httpx.Response:
    return client.post(
        PREDICT,
        content=body,
        headers={"content-type": "application/json", "content-encoding": encoding},
    )


def test_gzip_and_deflate_request_bodies(client: httpx.Client) -> None:
    """tritonclient's request_compression_algorithm: bodies are decompressed as they stream in."""
    import gzip
    import zlib

    body = json.dumps({"instances": [[1, 2]]}).encode()
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        r = _predict_encoded(client, packed, encoding)
        assert r.status_code == 200, r.text
        assert r.json() == {"predictions": [[2.0, 4.0]]}


def test_bad_compressed_bodies_then_good(client: httpx.Client) -> None:
    import gzip

    bomb = gzip.compress(b'{"instances": [' + b" " * (LIMIT * 50) + b"[1]]}")
    assert len(bomb) < LIMIT  # small on the wire, far over the limit once expanded
    cases = [
        (gzip.compress(b'{"instances": [[1, 2]]}')[:-6], "gzip", 400),  # truncated
        (b"not gzip at all", "gzip", 400),
        (bomb, "gzip", 413),
        (b'{"instances": [[1, 2]]}', "br", 415),
    ]
    for body, encoding, expected in cases:
        r = _predict_encoded(client, body, encoding)
        assert r.status_code == expected, (encoding, r.text)
        assert "error" in r.json() and "Traceback" not in r.text
        assert_good(client)

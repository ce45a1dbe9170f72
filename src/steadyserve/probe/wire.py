"""A small HTTP/1.1 client over asyncio streams, for the requests whose connection matters.

httpx pools and silently replaces connections, which hides the very faults the probe looks for: a
server that drops the connection after an error, or closes a keep-alive connection without
saying so. Here one :class:`Connection` is one TCP (or TLS) connection: a case is sent on it and
the good follow-up request goes on the *same* socket, or the fault is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

#: the most of a body that is kept (the rest is read and dropped): bounded memory
MAX_KEPT_BODY = 4 * 1024 * 1024
USER_AGENT = "steadyserve-probe"


class WireError(Exception):
    """The exchange did not complete."""


class Dropped(WireError):
    """The server closed or reset the connection before a full answer."""


class Refused(Dropped):
    """The server closed or reset the connection while the request body was still being
    sent, before an answer could be read (an early rejection of a large body)."""


class TimedOut(WireError):
    """No (full) answer within the time allowed."""


@dataclass(frozen=True)
class Target:
    """Where the probe sends traffic: one scheme/host/port (+ path prefix), and the headers
    every request carries (API key, ``-H``). The headers are never printed."""

    url: str
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def parts(self) -> tuple[str, str, int, str]:
        split = urlsplit(self.url)
        scheme = split.scheme or "http"
        port = split.port or (443 if scheme == "https" else 80)
        return scheme, split.hostname or "", port, split.path.rstrip("/")

    @property
    def base(self) -> str:
        return self.url.rstrip("/")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str | None = "application/json"

    @staticmethod
    def post_json(path: str, payload: Any, **kw: Any) -> Request:
        return Request("POST", path, json.dumps(payload).encode(), **kw)

    def describe(self, limit: int = 200) -> str:
        """What was sent, for the report (never the shared headers: they may hold a key)."""
        text = f"{self.method} {self.path}"
        if self.body:
            excerpt = self.body[:limit].decode("utf-8", "backslashreplace")
            more = f" … ({len(self.body):,} bytes)" if len(self.body) > limit else ""
            text += f" {excerpt}{more}"
        return text


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    latency_s: float = 0.0

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def excerpt(self, limit: int = 300) -> str:
        text = self.body[:limit].decode("utf-8", "backslashreplace").strip()
        return f"{self.status} {text}" + (" …" if len(self.body) > limit else "")


class Connection:
    """One connection to the target. ``async with Connection(target) as conn``."""

    def __init__(self, target: Target, rcvbuf: int | None = None) -> None:
        self.target = target
        self.rcvbuf = rcvbuf
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        #: the server said ``Connection: close`` (so a closed socket is no fault)
        self.server_closes = False

    async def open(self, timeout: float) -> None:
        scheme, host, port, _ = self.target.parts
        ctx = ssl.create_default_context() if scheme == "https" else None
        sock = None
        if self.rcvbuf is not None:
            # A small receive window: a client that never reads fills it fast.
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
            family, kind, proto, _, addr = infos[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, addr), timeout)
            except BaseException:
                sock.close()
                raise
            coro = asyncio.open_connection(
                sock=sock, ssl=ctx, server_hostname=host if ctx else None, limit=1 << 20
            )
        else:
            coro = asyncio.open_connection(host, port, ssl=ctx, limit=1 << 20)
        try:
            self.reader, self.writer = await asyncio.wait_for(coro, timeout)
        except asyncio.TimeoutError as exc:
            raise TimedOut(f"no connection within {timeout:g}s") from exc
        except OSError as exc:
            raise Dropped(f"cannot connect: {exc}") from exc

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.abort()

    @property
    def is_open(self) -> bool:
        return self.writer is not None and not self.writer.is_closing()

    def abort(self) -> None:
        """Close at once (a client that goes away): no goodbye, no waiting."""
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.transport.abort()
            self.writer = None

    def _head(self, req: Request) -> bytes:
        scheme, host, port, prefix = self.target.parts
        default = 443 if scheme == "https" else 80
        lines = [
            f"{req.method} {prefix}{req.path} HTTP/1.1",
            f"Host: {host}" + ("" if port == default else f":{port}"),
            f"User-Agent: {USER_AGENT}",
            "Accept: */*",
        ]
        if req.body or req.method == "POST":
            lines.append(f"Content-Length: {len(req.body)}")
            if req.content_type:
                lines.append(f"Content-Type: {req.content_type}")
        lines += [f"{k}: {v}" for k, v in (*self.target.headers, *req.headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")

    async def send(self, req: Request, timeout: float) -> Response:
        """Send ``req`` and read the whole answer (``timeout`` covers all of it)."""
        start = time.monotonic()
        try:
            resp = await asyncio.wait_for(self._exchange(req, head_only=False), timeout)
        except asyncio.TimeoutError as exc:
            self.abort()
            raise TimedOut(f"no full answer within {timeout:g}s") from exc
        resp.latency_s = time.monotonic() - start
        return resp

    async def start(self, req: Request, timeout: float) -> Response:
        """Send ``req`` and read only the status line and headers (a stream follows)."""
        start = time.monotonic()
        try:
            resp = await asyncio.wait_for(self._exchange(req, head_only=True), timeout)
        except asyncio.TimeoutError as exc:
            self.abort()
            raise TimedOut(f"no answer within {timeout:g}s") from exc
        resp.latency_s = time.monotonic() - start
        return resp

    async def read_some(self, timeout: float) -> bytes:
        """The next bytes of a streamed body (b"" at its end)."""
        assert self.reader is not None
        try:
            return await asyncio.wait_for(self.reader.read(65536), timeout)
        except asyncio.TimeoutError as exc:
            raise TimedOut(f"no stream data within {timeout:g}s") from exc
        except OSError as exc:
            raise Dropped(f"stream broken: {exc}") from exc

    async def _exchange(self, req: Request, head_only: bool) -> Response:
        if self.writer is None:
            await self.open(timeout=30)
        assert self.reader is not None and self.writer is not None
        writer, reader = self.writer, self.reader

        async def write() -> None:
            writer.write(self._head(req))
            for i in range(0, len(req.body), 1 << 20):
                writer.write(req.body[i : i + (1 << 20)])
                await writer.drain()
            await writer.drain()

        # Write and read at once: a server may answer (413) before reading the whole body.
        sender = asyncio.ensure_future(write())
        try:
            resp = await self._read_head(reader)
            if not head_only:
                resp.body = await self._read_body(reader, resp, req.method)
        except (asyncio.IncompleteReadError, OSError) as exc:
            self.abort()
            if not sender.done() or isinstance(sender.exception(), OSError):
                raise Refused(
                    f"the server closed the connection while the {len(req.body):,}-byte body "
                    f"was being sent, before an answer could be read ({exc!r})"
                ) from exc
            raise Dropped(f"connection closed or reset before a full answer ({exc!r})") from exc
        finally:
            unsent = not sender.done()
            if unsent:
                sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
            if unsent:  # answered before the body was all sent: the connection is spent
                self.abort()
        self.server_closes = resp.closes
        return resp

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> Response:
        while True:
            raw = await reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                raise Dropped(f"not an HTTP answer: {lines[0][:80]!r}")
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if ":" in line:
                    key, _, value = line.partition(":")
                    headers[key.strip().lower()] = value.strip()
            status = int(parts[1])
            if status != 100:
                return Response(status=status, headers=headers)

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader, resp: Response, method: str) -> bytes:
        if method == "HEAD" or resp.status in (204, 304):
            return b""
        kept = bytearray()

        def keep(data: bytes) -> None:
            room = MAX_KEPT_BODY - len(kept)
            if room > 0:
                kept.extend(data[:room])

        if "chunked" in resp.headers.get("transfer-encoding", "").lower():
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    return bytes(kept)
                keep(await reader.readexactly(size))
                await reader.readexactly(2)
        length = resp.headers.get("content-length")
        if length is not None:
            left = int(length)
            while left > 0:
                chunk = await reader.readexactly(min(left, 1 << 20))
                keep(chunk)
                left -= len(chunk)
            return bytes(kept)
        while chunk := await reader.read(1 << 20):  # until the server closes
            keep(chunk)
        resp.headers["connection"] = "close"
        return bytes(kept)


async def exchange(target: Target, req: Request, timeout: float) -> Response:
    """One request on a fresh connection, closed afterwards."""
    conn = Connection(target)
    try:
        await conn.open(timeout)
        return await conn.send(req, timeout)
    finally:
        conn.abort()

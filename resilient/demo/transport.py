"""A small HTTP/1.1 transport for httpx, for the demo's loopback load.

Why not httpx's own: httpcore's connection pool re-scans every connection
for every connection on each request (quadratic in the pool size), so when
the upstream slows down and connections pile up the *load generator* burns
the CPU and its event loop lags by seconds, which would be reported as the
upstream's latency. This transport keeps a plain stack of idle keep-alive
connections: O(1) per request. It speaks just enough HTTP/1.1 for the
demo's upstream (Content-Length or chunked bodies), honours httpx's timeout
extension and raises httpx's exception types, so policies judge its
failures exactly as they would httpx's. ``resilient demo --httpcore``
uses httpx's default transport instead.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx

__all__ = ["LoopbackTransport"]

_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class LoopbackTransport(httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` over asyncio streams with a LIFO keep-alive pool.

    Args:
        max_connections: connections open at once; more requests wait for one.
        max_idle: idle connections kept for reuse.
    """

    def __init__(self, *, max_connections: int = 1000, max_idle: int = 200) -> None:
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._slots = asyncio.Semaphore(max_connections)
        self._max_idle = max_idle
        self._open: set[asyncio.StreamWriter] = set()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send one request on an idle or new connection and read the whole answer."""
        if self._closed:
            raise httpx.ConnectError("the transport is closed", request=request)
        url = request.url
        origin = (url.host, url.port or (443 if url.scheme == "https" else 80))
        timeouts = request.extensions.get("timeout") or {}
        budget = max((v for v in timeouts.values() if v is not None), default=None)
        body = request.content if isinstance(request.stream, httpx.ByteStream) else await request.aread()
        async with self._slots:
            conn: _Conn | None = None
            try:
                async with asyncio.timeout(budget):
                    conn = await self._connection(origin, request)
                    status, headers, content, keep = await self._exchange(conn, request, body)
            except TimeoutError:
                self._discard(conn)
                raise httpx.ReadTimeout("timed out waiting for the upstream", request=request) from None
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
                self._discard(conn)
                raise httpx.RemoteProtocolError(
                    f"server disconnected or sent garbage: {exc!r}", request=request
                ) from None
            except BaseException:
                self._discard(conn)
                raise
            if keep and len(self._idle.get(origin, ())) < self._max_idle:
                self._idle.setdefault(origin, []).append(conn)
            else:
                self._discard(conn)
        return httpx.Response(status, headers=headers, content=content, request=request)

    async def _connection(self, origin: tuple[str, int], request: httpx.Request) -> _Conn:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if not conn[0].at_eof() and not conn[1].is_closing():
                return conn
            self._discard(conn)
        try:
            reader, writer = await asyncio.open_connection(origin[0], origin[1], limit=1 << 20)
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {origin[0]}:{origin[1]}: {exc}", request=request) from None
        self._open.add(writer)
        return reader, writer

    async def _exchange(
        self, conn: _Conn, request: httpx.Request, body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
        reader, writer = conn
        url = request.url
        lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode(), url.raw_path)]
        for name, value in request.headers.raw:
            lines.append(b"%s: %s\r\n" % (name, value))
        if body and "content-length" not in request.headers:
            lines.append(b"content-length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        if body:
            lines.append(body)
        writer.write(b"".join(lines))
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head[:-4].split(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ValueError(f"bad status line {status_line[:80]!r}")
        status = int(parts[1])
        headers: list[tuple[bytes, bytes]] = []
        length: int | None = None
        chunked = False
        keep = parts[0] == b"HTTP/1.1"
        for line in header_lines:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip()
            headers.append((name, value))
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                keep = value.lower() != b"close"
        if request.method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            content = b""
        elif chunked:
            content = await _read_chunked(reader)
            headers = [(n, v) for n, v in headers if n != b"transfer-encoding"]
        elif length is not None:
            content = await reader.readexactly(length)
        else:
            content, keep = await reader.read(), False
        return status, headers, content, keep

    def _discard(self, conn: _Conn | None) -> None:
        if conn is None:
            return
        writer = conn[1]
        self._open.discard(writer)
        with contextlib.suppress(Exception):
            writer.close()

    async def aclose(self) -> None:
        """Close every connection."""
        self._closed = True
        self._idle.clear()
        writers, self._open = list(self._open), set()
        for writer in writers:
            with contextlib.suppress(Exception):
                writer.close()
        for writer in writers:
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            # Trailers, if any, end with an empty line.
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return bytes(out)
        out += await reader.readexactly(size)
        await reader.readexactly(2)

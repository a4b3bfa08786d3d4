"""A real uvicorn server on 127.0.0.1 whose endpoints fail on command.

Importable by any test (and the examples and benchmarks):

    with running_server() as server:        # or the ``flaky_server`` fixture
        httpx.get(server.url("/status?code=503&retry_after=1"))
        server.count("key")

Endpoints (every method; the request body is read and counted):

* ``/ok``: 200 ``ok``.
* ``/status?code=503&retry_after=...``: that status, with that Retry-After
  header when given (any string: garbage, huge, dates).
* ``/flaky?key=k&fail=2&code=503&retry_after=...``: the first ``fail``
  requests of ``key`` get ``code``, the next ones 200.
* ``/slow?delay=0.5``: sleeps, then 200. With ``key`` and ``fail``, only the
  first ``fail`` requests of ``key`` are slow.
* ``/drop?key=k&fail=1``: the first ``fail`` requests of ``key`` see their
  connection closed without a response (``fail=-1``: always).
* ``/big?code=503&size=100000``: a large body with that status.
* ``/stream?key=k&code=503&size=100000&chunk=65536``: a large body with that
  status, streamed in chunks without a ``Content-Length``; the bytes the
  server managed to send are counted in ``server.sent(key)``.
* ``/trickle?key=k&code=200&count=100&interval=0.02``: the headers, then a
  body of ``count`` bytes, one every ``interval`` seconds, until the client
  goes away; each byte sent is counted in ``server.sent(key)``.
* ``/headers``: 200 and JSON of the headers received (to check the
  deadline header).
* ``/count?key=k``: JSON ``{"count": n}``, the number of requests of ``key``.

Every request is counted under its ``key`` (default: its path), and
``server.count(key)`` reads that counter directly.

:func:`header_trickler` is a raw-socket server for what ASGI cannot do:
response *headers* sent one byte at a time.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs

import uvicorn

from resilient.asgi._common import serve_lifespan

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class FlakyApp:
    """The ASGI app; ``counts`` holds the requests seen per key."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self.bodies: dict[str, bytes] = {}
        self.lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path: str = scope["path"]
        query = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode("latin-1")).items()}
        key = query.get("key", path)
        with self.lock:
            self.counts[key] += 1
            seen = self.counts[key]
            self.bodies[key] = body
        fail = int(query.get("fail", "-1"))
        failing = fail < 0 or seen <= fail

        if path == "/ok":
            await _respond(send, 200, b"ok")
        elif path == "/status" or path == "/flaky":
            code = int(query.get("code", "503"))
            if path == "/flaky" and not failing:
                await _respond(send, 200, b"ok")
                return
            headers = []
            if "retry_after" in query:
                headers.append((b"retry-after", query["retry_after"].encode("latin-1")))
            await _respond(send, code, f"status {code}".encode(), headers)
        elif path == "/slow":
            if failing and not await _sleep_unless_gone(receive, float(query.get("delay", "0.5"))):
                return  # the client gave up (a timeout): nobody to answer
            await _respond(send, 200, b"slow ok")
        elif path == "/drop":
            if failing:
                await _drop(receive, send)
                return
            await _respond(send, 200, b"ok")
        elif path == "/big":
            code = int(query.get("code", "503"))
            await _respond(send, code, b"x" * int(query.get("size", "100000")))
        elif path == "/stream":
            await self._stream(send, key, query)
        elif path == "/trickle":
            await self._trickle(receive, send, key, query)
        elif path == "/headers":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            await _respond(send, 200, json.dumps(headers).encode(), [(b"content-type", b"application/json")])
        elif path == "/count":
            with self.lock:
                n = self.counts[query.get("key", "")]
            await _respond(send, 200, json.dumps({"count": n}).encode(), [(b"content-type", b"application/json")])
        else:
            await _respond(send, 404, b"not found")

    async def _stream(self, send: Send, key: str, query: dict[str, str]) -> None:
        code, size, chunk = (
            int(query.get("code", "503")),
            int(query.get("size", "100000")),
            int(query.get("chunk", "65536")),
        )
        await send({"type": "http.response.start", "status": code, "headers": []})
        left = size
        while left > 0:
            n = min(chunk, left)
            left -= n
            # uvicorn's send waits while the client is not reading (flow control).
            await send({"type": "http.response.body", "body": b"x" * n, "more_body": left > 0})
            with self.lock:
                self.sent[key] += n

    async def _trickle(self, receive: Receive, send: Send, key: str, query: dict[str, str]) -> None:
        code, count, interval = (
            int(query.get("code", "200")),
            int(query.get("count", "100")),
            float(query.get("interval", "0.02")),
        )
        await send({"type": "http.response.start", "status": code, "headers": []})
        for _ in range(count):
            if not await _sleep_unless_gone(receive, interval):
                return
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            with self.lock:
                self.sent[key] += 1
        await send({"type": "http.response.body", "body": b""})


async def _sleep_unless_gone(receive: Receive, delay: float) -> bool:
    """Sleep ``delay`` seconds; False if the client disconnected meanwhile."""
    sleeper = asyncio.ensure_future(asyncio.sleep(delay))
    waiter = asyncio.ensure_future(receive())  # the body is read: this only returns on disconnect
    done, pending = await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return sleeper in done


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    raw = [(b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _drop(receive: Receive, send: Send) -> None:
    # uvicorn's `send` is a bound method of the request cycle, which holds the
    # asyncio transport: aborting it drops the connection with no response.
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:  # pragma: no cover - another server
        raise RuntimeError("cannot drop the connection on this server")
    transport.abort()
    # Wait for uvicorn to notice, so that it does not log "returned without
    # starting response".
    await receive()


class RunningServer:
    """A uvicorn server running in a background thread."""

    def __init__(self, app: FlakyApp, server: uvicorn.Server, thread: threading.Thread, port: int) -> None:
        self.app = app
        self.server = server
        self.thread = thread
        self.port = port
        #: ``http://127.0.0.1:<port>``
        self.base_url = f"http://127.0.0.1:{port}"

    def url(self, path: str) -> str:
        """The absolute URL of ``path``."""
        return self.base_url + path

    def count(self, key: str) -> int:
        """Requests seen under ``key`` so far."""
        with self.app.lock:
            return self.app.counts[key]

    def sent(self, key: str) -> int:
        """Bytes sent so far by ``/stream`` or ``/trickle`` under ``key``."""
        with self.app.lock:
            return self.app.sent[key]

    def reset(self) -> None:
        """Forget every counter."""
        with self.app.lock:
            self.app.counts.clear()
            self.app.sent.clear()

    def stop(self) -> None:
        """Stop the server and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(timeout=10)


def fast_pipeline(**overrides: Any) -> Any:
    """A standard pipeline for tests: tiny backoffs, a breaker that never opens, no overload budget."""
    from resilient.httpx import standard_pipeline

    options: dict[str, Any] = {
        "base_delay": 0.001,
        "max_delay": 0.05,
        "minimum_throughput": 10_000,
        "consecutive_failures": None,
        # A small connection pool makes attempts wait for a connection, which the overload signal
        # reads as a slow (queueing) host on a loaded machine: not what these tests are about.
        "overload_retry_ratio": None,
    }
    options.update(overrides)
    return standard_pipeline(**options)


def free_socket() -> socket.socket:
    """A listening-ready TCP socket bound to 127.0.0.1 on a free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def start_server(app: Any = None) -> RunningServer:
    """Start ``app`` (default: a new :class:`FlakyApp`) on a free port; call ``stop()`` after."""
    app = app if app is not None else FlakyApp()
    sock = free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"uvicorn-{port}")
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    return RunningServer(app, server, thread, port)


@contextmanager
def running_server(app: Any = None) -> Iterator[RunningServer]:
    """A context manager around :func:`start_server`."""
    handle = start_server(app)
    try:
        yield handle
    finally:
        handle.stop()


class HeaderTrickler:
    """A raw HTTP/1.1 server on 127.0.0.1 that sends its response headers one byte at a time.

    Each connection gets ``HTTP/1.1 200 OK``, then a header line of
    ``count`` bytes, one every ``interval`` seconds, then an empty body.
    ``sent`` counts the header bytes written so far, over all connections.
    """

    def __init__(self, count: int, interval: float) -> None:
        self.count = count
        self.interval = interval
        self.sent = 0
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = free_socket()
        self._listener.listen(16)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True, name=f"trickler-{self.port}")
        self._accepting.start()

    def url(self, path: str = "/") -> str:
        """The absolute URL of ``path``."""
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            received = b""
            try:
                while b"\r\n\r\n" not in received:
                    data = conn.recv(65536)
                    if not data:
                        return
                    received += data
                conn.sendall(b"HTTP/1.1 200 OK\r\nx-trickle: ")
                for _ in range(self.count):
                    if self._stop.wait(self.interval):
                        return
                    conn.sendall(b"a")
                    with self.lock:
                        self.sent += 1
                conn.sendall(b"\r\ncontent-length: 2\r\n\r\nok")
            except OSError:  # the client went away
                return

    def stop(self) -> None:
        """Stop accepting and end every connection."""
        self._stop.set()
        self._listener.close()
        self._accepting.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)


@contextmanager
def header_trickler(count: int = 100, interval: float = 0.02) -> Iterator[HeaderTrickler]:
    """A running :class:`HeaderTrickler`, stopped on exit."""
    server = HeaderTrickler(count, interval)
    try:
        yield server
    finally:
        server.stop()

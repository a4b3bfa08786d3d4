"""Helpers for the ASGI tests: a real uvicorn server in a thread, a Starlette app, raw ASGI drivers."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from resilient import Timeout
from resilient.asgi import ASGIApp, Message, Scope
from resilient.deadline import remaining


class Probe:
    """What the app saw: concurrency, cleanups, (thread-safe: the server runs in another thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls = 0
        self.cleaned_up = threading.Event()
        self.slow_started = threading.Event()
        self.release = threading.Event()

    def enter(self) -> None:
        with self.lock:
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1


def make_app(probe: Probe) -> Starlette:
    """A Starlette app with endpoints that are slow, hold, report the deadline, echo websockets."""

    async def work(request: Request) -> Response:
        probe.enter()
        try:
            await asyncio.sleep(float(request.query_params.get("delay", "0")))
        finally:
            probe.leave()
        return PlainTextResponse("ok")

    async def hold(request: Request) -> Response:
        probe.enter()
        try:
            while not probe.release.is_set():
                await asyncio.sleep(0.01)
        finally:
            probe.leave()
        return PlainTextResponse("released")

    async def slow(request: Request) -> Response:
        probe.slow_started.set()
        try:
            await asyncio.sleep(30)
        finally:
            probe.cleaned_up.set()
        return PlainTextResponse("too late")  # pragma: no cover

    async def deadline(request: Request) -> Response:
        return JSONResponse({"remaining": remaining()})

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("healthy")

    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        text = await ws.receive_text()
        await ws.send_text(f"echo:{text}")
        await ws.close()

    return Starlette(
        routes=[
            Route("/work", work),
            Route("/hold", hold),
            Route("/slow", slow),
            Route("/deadline", deadline),
            Route("/healthz", healthz),
            WebSocketRoute("/ws", echo),
        ]
    )


class AfterStart:
    """What code running after the response started saw: a streaming body and a background task.

    ``seen[label]`` is ``"ok"`` when a call through a resilient ``Timeout(5)``
    went through, ``"timeout"`` when it raised ``TimeoutError``;
    ``seen[label + ".remaining"]`` is ``resilient.remaining()`` at that moment.
    Each part waits for ``release`` (set by the test) before it looks, and
    ``done`` is set when the background task has looked.
    """

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}
        self.release = threading.Event()
        self.done = threading.Event()

    def reset(self) -> None:
        self.seen.clear()
        self.release.clear()
        self.done.clear()

    async def _look(self, label: str) -> None:
        for _ in range(1000):  # bounded: the test sets release within seconds
            if self.release.is_set():
                break
            await asyncio.sleep(0.01)
        self.seen[f"{label}.remaining"] = remaining()
        try:
            await Timeout(5).run(asyncio.sleep, 0)
        except TimeoutError:
            self.seen[label] = "timeout"
        else:
            self.seen[label] = "ok"

    def app(self) -> Starlette:
        """``/stream``: a StreamingResponse with a BackgroundTask; ``/plain``: a response with one."""

        async def body() -> Any:
            yield b"first\n"
            await self._look("stream")
            yield b"second\n"

        async def background() -> None:
            try:
                await self._look("background")
            finally:
                self.done.set()

        async def stream(request: Request) -> Response:
            return StreamingResponse(body(), background=BackgroundTask(background))

        async def plain(request: Request) -> Response:
            return PlainTextResponse("ok", background=BackgroundTask(background))

        return Starlette(routes=[Route("/stream", stream), Route("/plain", plain)])


@contextmanager
def serve(app: ASGIApp) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 and a free port; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # proxy_headers=False: uvicorn would otherwise rewrite scope["client"]
    # from X-Forwarded-For itself (it trusts 127.0.0.1 by default), and the
    # middleware's own reading of forwarded headers would go untested.
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        ws="websockets-sansio",
        timeout_graceful_shutdown=2,
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


class ForwardingProxy:
    """A minimal HTTP/1.1 reverse proxy on 127.0.0.1 that records the peer in a forwarded header.

    It does what a real proxy in front of the app does with ``header``
    (``x-forwarded-for`` or ``forwarded``): ``style="append"`` adds a header
    line of its own after the client's (HAProxy's ``option forwardfor`` /
    ``option forwarded``), ``style="merge"`` joins the client's lines and its
    own entry into one line (nginx's ``$proxy_add_x_forwarded_for``). One
    request per connection (it asks the upstream to close); the upstream sees
    every request coming from 127.0.0.1.
    """

    def __init__(self, upstream: str, *, header: str, style: Literal["append", "merge"]) -> None:
        self.upstream_host, _, port = upstream.rpartition(":")
        self.upstream_port = int(port)
        self.header = header.lower().encode("ascii")
        self.style = style
        # Connections being served: cancelled when the proxy stops, so that no
        # handler is left pending when its loop closes (an unraisable warning).
        self._tasks: set[asyncio.Task[None]] = set()

    def _rewrite(self, head: bytes, peer: str) -> bytes:
        request_line, *lines = head.split(b"\r\n")
        own = peer.encode("ascii") if self.header == b"x-forwarded-for" else b"for=" + peer.encode("ascii")
        kept: list[bytes] = []
        theirs: list[bytes] = []
        for line in lines:
            name, _, value = line.partition(b":")
            lowered = name.strip().lower()
            if lowered == b"connection":
                continue
            if lowered == self.header:
                theirs.append(value.strip())
                if self.style == "merge":
                    continue
            kept.append(line)
        if self.style == "merge":
            kept.append(self.header + b": " + b", ".join([*theirs, own]))
        else:
            kept.append(self.header + b": " + own)
        kept.append(b"connection: close")
        return b"\r\n".join([request_line, *kept]) + b"\r\n\r\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            peer = writer.get_extra_info("peername")[0]
            up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
            up_writer.write(self._rewrite(head[:-4], peer))
            await up_writer.drain()
            while chunk := await up_reader.read(65536):
                writer.write(chunk)
                await writer.drain()
            up_writer.close()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    @contextmanager
    def running(self) -> Iterator[str]:
        """Serve on 127.0.0.1 and a free port in a thread; yields ``host:port``."""
        loop = asyncio.new_event_loop()
        started: list[Any] = []
        ready = threading.Event()

        async def start() -> None:
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=64 * 1024)
            started.append(server)
            ready.set()

        def run() -> None:
            loop.run_until_complete(start())
            loop.run_forever()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        if not ready.wait(10):
            raise RuntimeError("the proxy did not start")
        server = started[0]
        port = server.sockets[0].getsockname()[1]
        try:
            yield f"127.0.0.1:{port}"
        finally:

            async def stop() -> None:
                server.close()
                pending = list(self._tasks)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                await server.wait_closed()

            asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()


async def call(app: ASGIApp, scope: Scope, messages: list[Message] | None = None) -> list[Message]:
    """Drive ``app`` with raw ASGI; returns what it sent."""
    sent: list[Message] = []
    inbox = list(messages or [{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> Message:
        if inbox:
            return inbox.pop(0)
        await asyncio.Event().wait()  # pragma: no cover - never answered
        return {}  # pragma: no cover

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def http_scope(path: str = "/", *, client: Any = ("127.0.0.1", 5000), headers: Any = (), method: str = "GET") -> Scope:
    """A minimal HTTP scope."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "client": client,
        "server": ("127.0.0.1", 8000),
    }


def status_of(sent: list[Message]) -> int | None:
    """The status of the (first) response start sent."""
    for m in sent:
        if m["type"] == "http.response.start":
            return int(m["status"])
    return None


def headers_of(sent: list[Message]) -> dict[str, str]:
    """The response headers, decoded (last wins)."""
    for m in sent:
        if m["type"] == "http.response.start":
            return {k.decode(): v.decode() for k, v in m["headers"]}
    return {}


def body_of(sent: list[Message]) -> bytes:
    """The response body, joined."""
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")

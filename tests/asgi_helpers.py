"""Helpers for the ASGI tests: a real uvicorn server in a thread, a Starlette app, raw ASGI drivers."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

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


@contextmanager
def serve(app: ASGIApp) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 and a free port; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", ws="websockets-sansio", timeout_graceful_shutdown=2
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

"""ASGI middleware cases: one request through each middleware, called directly (no server).

The app is a trivial ASGI app that sends a two-message response to a no-op
``send``; the bare case is that app alone. benchmarks/asgi_throughput.py
measures the same middleware under uvicorn with real HTTP load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.cases import Case

_SCOPE: dict[str, Any] = {
    "type": "http",
    "path": "/",
    "method": "GET",
    "headers": [(b"host", b"bench"), (b"x-resilient-deadline", b"30")],
    "client": ("127.0.0.1", 50000),
}
_START = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
_BODY = {"type": "http.response.body", "body": b"ok"}


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send(_START)
    await send(_BODY)


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b""}


async def _send(message: Any) -> None:
    return None


def _priority(scope: Any) -> str:
    return "critical" if scope["path"].startswith("/checkout") else "default"


def _request(app: Any) -> Callable[[], Any]:
    def call() -> Any:
        return app(_SCOPE, _receive, _send)

    return call


def _wrapped(name: str) -> Callable[[], Callable[[], Any]]:
    def factory() -> Callable[[], Any]:
        from resilient.asgi import DeadlinePropagation, LoadShedding, RateLimit, RequestTimeout, ResilienceMiddleware

        apps: dict[str, Any] = {
            "DeadlinePropagation": lambda: DeadlinePropagation(_app),
            "RateLimit": lambda: RateLimit(_app, rate=1e9, burst=10**9, name=None),
            "LoadShedding": lambda: LoadShedding(_app, max_concurrent=1024, max_queued=64, name=None),
            "LoadShedding(priority=...)": lambda: LoadShedding(
                _app, max_concurrent=1024, max_queued=64, name=None, priority=_priority
            ),
            "RequestTimeout": lambda: RequestTimeout(_app, seconds=30),
            "ResilienceMiddleware(all)": lambda: ResilienceMiddleware(
                _app,
                max_concurrent=1024,
                max_queued=64,
                queue_timeout=5,
                rate=1e9,
                burst=10**9,
                timeout=30,
                name="bench",
            ),
        }
        return _request(apps[name]())

    return factory


CASES = [
    Case("ASGI app, bare", "asgi", lambda: _request(_app)),
    *(
        Case(f"asgi {name}", "asgi", _wrapped(name), ours=True)
        for name in (
            "DeadlinePropagation",
            "RateLimit",
            "LoadShedding",
            "LoadShedding(priority=...)",
            "RequestTimeout",
            "ResilienceMiddleware(all)",
        )
    ),
]

"""Cloud throttle signals: millisecond Retry-After headers, and pacing from rate-limit headers.

Run: python examples/throttle_pacing.py

It starts a small uvicorn server on 127.0.0.1 (a free port) with a quota of
5 requests per half second, announced in the IETF draft's ``RateLimit``
header; past the quota it answers 429 with Azure's ``x-ms-retry-after-ms``.
The same 15 requests go out twice: without pacing (429s, each retried after
the milliseconds the server asked for) and with ``HeaderPacing`` (no 429 at
all: the client waits for the window to reset before the server has to say
so).
"""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
from collections import Counter
from typing import Any

import httpx
import uvicorn

from resilient import Pipeline
from resilient.httpx import AsyncResilientTransport, HeaderPacing, deadline_timeout, http_retry
from resilient.testing import recording

LIMIT, WINDOW = 5, 0.5


class QuotaApp:
    """``LIMIT`` requests per fixed window of ``WINDOW`` seconds; 429 past it."""

    def __init__(self) -> None:
        self.window_end = -math.inf
        self.used = 0
        self.answers: Counter[int] = Counter()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        now = time.monotonic()
        if now >= self.window_end:
            self.window_end, self.used = now + WINDOW, 0
        reset = self.window_end - now
        if self.used >= LIMIT:
            status, headers = 429, [(b"x-ms-retry-after-ms", str(math.ceil(reset * 1000)).encode())]
        else:
            self.used += 1
            status = 200
            quota = f"limit={LIMIT}, remaining={LIMIT - self.used}, reset={reset:.3f}"
            headers = [(b"ratelimit", quota.encode()), (b"ratelimit-policy", f"{LIMIT};w={WINDOW}".encode())]
        self.answers[status] += 1
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok" if status == 200 else b"over quota"})


def start_server(app: QuotaApp) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


async def run(base: str, app: QuotaApp, *, pace: bool) -> None:
    def per_host(host: str) -> Pipeline:
        parts: list[Any] = [deadline_timeout(10.0), http_retry(3, max_delay=2.0)]
        if pace:
            # Inside the retry: every attempt is paced, and every answer's headers are read.
            parts.append(HeaderPacing(name=f"pacing {host}"))
        return Pipeline(*parts)

    app.answers.clear()
    async with httpx.AsyncClient(transport=AsyncResilientTransport(per_host), base_url=base) as client:
        with recording() as events:
            start = time.perf_counter()
            statuses = [(await client.get("/")).status_code for _ in range(15)]
            took = time.perf_counter() - start
    label = "with HeaderPacing" if pace else "without pacing   "
    waits = [f"{e.duration:.2f}" for e in events.of("retry")]
    print(
        f"{label}: client got {dict(Counter(statuses))} in {took:.2f} s; the server answered "
        f"{dict(app.answers)}; retries waited [{', '.join(waits)}] s"
    )


def main() -> None:
    app = QuotaApp()
    server, thread, base = start_server(app)
    try:
        asyncio.run(run(base, app, pace=False))
        time.sleep(WINDOW)  # a fresh window for the second run
        asyncio.run(run(base, app, pace=True))
    finally:
        server.should_exit = True
        thread.join(timeout=5)


if __name__ == "__main__":
    main()

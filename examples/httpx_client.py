"""A resilient httpx client in one line, against a flaky local server.

Run: python examples/httpx_client.py

It starts a tiny uvicorn server on 127.0.0.1 (a free port) whose endpoints
fail on purpose, calls it through ``AsyncResilientTransport`` with the
standard pipeline (delays shrunk so that the demo takes a second), prints
what happened, and stops the server.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from typing import Any

import httpx
import uvicorn

from resilient import CircuitOpenError, deadline
from resilient.httpx import AsyncResilientTransport, standard_pipeline
from resilient.testing import recording

hits: Counter[str] = Counter()


async def flaky_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/flaky/<n>``: 503 for the first n calls of that path, then 200; ``/down``: always 503."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    hits[path] += 1
    status, headers = 200, [(b"content-type", b"text/plain")]
    if path == "/down":
        status = 503
    elif path.startswith("/flaky/") and hits[path] <= int(path.rsplit("/", 1)[1]):
        status = 503
        headers.append((b"retry-after", b"0.05"))  # the server asks for 50 ms
    elif path == "/deadline":
        received = dict(scope["headers"]).get(b"x-resilient-deadline", b"-").decode()
        body = f"deadline seen by the server: {received} s".encode()
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": f"{status} after {hits[path]} call(s)".encode()})


def start_server() -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(flaky_app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


async def demo(base: str) -> None:
    # The standard pipeline, with demo-sized numbers: retries after ~10 ms
    # (Retry-After wins when present), a breaker that judges after 8 calls.
    pipeline = standard_pipeline(base_delay=0.01, max_delay=0.1, minimum_throughput=8, attempt_timeout=2.0)
    async with httpx.AsyncClient(transport=AsyncResilientTransport(pipeline), base_url=base) as client:
        with recording() as events:
            r = await client.get("/flaky/2")
            print(f"GET  /flaky/2  -> {r.status_code} ({r.text}); retries: {len(events.of('retry'))}")
            waits = [f"{e.duration:.3f} s" for e in events.of("retry")]
            print(f"     waited {', '.join(waits)} between attempts (the server's Retry-After)")

            r = await client.post("/flaky/1", json={"order": 42})
            print(f"POST /flaky/1  -> {r.status_code}: not retried, a POST is not idempotent")
            r = await client.post("/flaky/1", json={"order": 42}, headers={"Idempotency-Key": "order-42"})
            print(f"POST /flaky/1  -> {r.status_code} with an Idempotency-Key: retried")

            with deadline(1.5):
                r = await client.get("/deadline")
            print(f"GET  /deadline -> {r.text} (sent by the transport)")

            events.clear()
            outcomes: Counter[str] = Counter()
            for _ in range(6):
                try:
                    r = await client.get("/down")
                    outcomes[str(r.status_code)] += 1
                except CircuitOpenError:
                    outcomes["circuit open"] += 1
            print(f"GET  /down x6  -> {dict(outcomes)}; the server saw only {hits['/down']} requests:")
            print("     the breaker sees every attempt; with half of them failed, it opened and the")
            print("     calls now fail fast with CircuitOpenError instead of loading the server")
            opened = events.of("circuit_opened")
            if opened:
                extras = dict(opened[0].extras)
                print(f"     breaker opened for {extras['server.address']}:{extras['server.port']} (events: {extras})")


def main() -> None:
    server, thread, base = start_server()
    try:
        asyncio.run(demo(base))
    finally:
        server.should_exit = True
        thread.join(timeout=5)


if __name__ == "__main__":
    main()

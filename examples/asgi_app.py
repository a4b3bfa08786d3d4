"""A Starlette app behind ResilienceMiddleware, under a burst it cannot serve in full.

Starts uvicorn on a free 127.0.0.1 port, sends a burst of 40 concurrent
requests, and prints what each client got: 200 for the requests admitted,
429 for those over the client's rate, 503 for those shed because the app was
already running ``max_concurrent`` requests; then a request whose caller's
deadline has passed (504 before any work), a handler that is too slow (504,
cancelled), and the status endpoint. Runs in a couple of seconds.

    python examples/asgi_app.py
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from resilient.asgi import ResilienceMiddleware

in_flight = 0
max_in_flight = 0
cancelled_handlers = 0


async def work(request: Request) -> PlainTextResponse:
    global in_flight, max_in_flight
    in_flight += 1
    max_in_flight = max(max_in_flight, in_flight)
    try:
        await asyncio.sleep(0.2)
    finally:
        in_flight -= 1
    return PlainTextResponse("done")


async def slow(request: Request) -> PlainTextResponse:
    global cancelled_handlers
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        cancelled_handlers += 1
        raise
    return PlainTextResponse("never")


app = Starlette(routes=[Route("/work", work), Route("/slow", slow)])
app.add_middleware(
    ResilienceMiddleware,
    rate=30,  # per client, per second (bucket of 30)
    max_concurrent=4,  # the app runs at most 4 requests at once...
    max_queued=4,  # ...4 more may wait for a slot...
    queue_timeout=1.0,  # ...for up to 1 s
    timeout=0.5,  # 504 if the response has not started after 0.5 s
    status_path="/_resilience",  # opt-in and sensitive: internal use only
    name="example",
)


async def main_async() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.01)
    try:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=5) as client:
            burst = await asyncio.gather(*(client.get("/work") for _ in range(40)))
            counts = Counter(r.status_code for r in burst)
            print("burst of 40 concurrent requests (rate 30/s, max_concurrent 4, max_queued 4):")
            for status, label in ((200, "served"), (429, "rate limited"), (503, "shed (overloaded)")):
                print(f"  {status} {label:<18} {counts.get(status, 0):>3}")
            print(f"  most requests the app ever ran at once: {max_in_flight}")
            shed = next(r for r in burst if r.status_code == 503)
            print(f"  a 503 says: {shed.json()} Retry-After: {shed.headers['retry-after']}")
            limited = next(r for r in burst if r.status_code == 429)
            print(f"  a 429 says: {limited.json()} RateLimit: {limited.headers['ratelimit']}")

            await asyncio.sleep(1.1)  # let the client's bucket refill
            expired = await client.get("/work", headers={"x-resilient-deadline": "0"})
            print(f"caller's deadline already passed: {expired.status_code} {expired.json()}")
            too_slow = await client.get("/slow")
            print(
                f"handler too slow: {too_slow.status_code} {too_slow.json()}, handlers cancelled: {cancelled_handlers}"
            )

            status = (await client.get("/_resilience")).json()
            for policy in status["policies"]:
                if policy["name"] and policy["name"].startswith("example."):
                    print(f"status {policy['name']}: {policy['status']}")
    finally:
        server.should_exit = True
        await serving


def main() -> None:
    asyncio.run(main_async())


if __name__ == "__main__":
    main()

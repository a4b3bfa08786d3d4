"""Edge limits rolled out safely: priority shedding, a rate limit in shadow mode, one quota for two replicas.

Starts two uvicorn "replicas" of one Starlette app on free 127.0.0.1 ports,
behind the ASGI parts composed by hand (``ResilienceMiddleware`` builds the
same chain, with one ``enforce`` switch for both limits):

* priority classes: ``/checkout`` is critical, ``/recommendations`` is
  sheddable, so under overload the recommendations are shed first;
* a per-client rate limit in shadow mode (``enforce=``, read on every
  request): first it only reports what it would refuse (``would_reject``
  events), then the flag turns it on;
* one keyed limiter shared by both replicas (``rate_limiter=``), so that a
  client has one quota, not one per replica. In production that limiter is
  a ``resilient.redis.KeyedRedisRateLimiter`` every replica builds with the
  same name; here both replicas run in this process and share a local
  ``KeyedRateLimiter``.

Runs in a few seconds and prints what each phase did.

    python examples/asgi_edge_rollout.py
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from resilient import KeyedRateLimiter
from resilient.asgi import LoadShedding, RateLimit
from resilient.events import EXTRA_HTTP_STATUS, WOULD_REJECT, ResilienceEvent, add_listener, remove_listener


async def work(request: Request) -> PlainTextResponse:
    await asyncio.sleep(0.05)  # the app serves 4 requests at a time (max_concurrent), 50 ms each
    return PlainTextResponse("ok")


def priority(scope: Any) -> str:
    return "critical" if scope["path"] == "/checkout" else "sheddable"


flags = {"enforce_rate_limit": False}
shared_quota = KeyedRateLimiter(20, 60.0, mode="reject", name="edge.quota")  # 20 requests a minute per client


def replica() -> Any:
    app: Any = Starlette(routes=[Route("/checkout", work), Route("/recommendations", work)])
    app = LoadShedding(app, max_concurrent=4, max_queued=16, priority=priority, name=None)
    return RateLimit(app, limiter=shared_quota, enforce=lambda: flags["enforce_rate_limit"])


async def start(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.01)
    return server, task, f"http://{host}:{port}"


async def main_async() -> None:
    would: Counter[int] = Counter()

    def on_event(event: ResilienceEvent) -> None:
        if event.name == WOULD_REJECT:
            would[int(event.extras[EXTRA_HTTP_STATUS])] += 1

    add_listener(on_event)
    servers = [await start(replica()) for _ in range(2)]
    urls = [url for _, _, url in servers]
    try:
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=100)) as client:
            # 1. Overload, in shadow mode for the rate limit: 3 waves of 4 checkouts + 12 recommendations.
            got: dict[str, Counter[int]] = {"/checkout": Counter(), "/recommendations": Counter()}
            for _ in range(3):
                paths = ["/checkout"] * 4 + ["/recommendations"] * 12
                responses = await asyncio.gather(*(client.get(urls[0] + p) for p in paths))
                for p, r in zip(paths, responses, strict=True):
                    got[p][r.status_code] += 1
            print("overload (4 slots, 3 waves of 16 requests, the rate limit in shadow mode):")
            for p, counts in got.items():
                print(f"  {p:<17} {dict(sorted(counts.items()))}")
            print(f"  the rate limit would have answered {dict(would)} (would_reject events), and refused nothing")
            assert got["/checkout"][200] == 12, got
            assert got["/recommendations"][503] > 0, got

        # 2. Turn the limit on: a new client, alternating between the two replicas, has one quota of 20.
        flags["enforce_rate_limit"] = True
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(timeout=10, transport=transport) as client:
            statuses: Counter[int] = Counter()
            for i in range(30):
                statuses[(await client.get(urls[i % 2] + "/checkout")).status_code] += 1
            print(f"enforced: 30 requests from one client over both replicas: {dict(sorted(statuses.items()))}")
            assert statuses == {200: 20, 429: 10}, statuses
    finally:
        remove_listener(on_event)
        for server, task, _ in servers:
            server.should_exit = True
            await task


if __name__ == "__main__":
    asyncio.run(main_async())

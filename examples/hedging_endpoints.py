"""Hedging over endpoints: a slow tail cut off, a dead endpoint skipped, a POST sent once.

Starts two uvicorn upstreams on free 127.0.0.1 ports (one answers in 2 ms but
takes 1 s for 10 % of its answers; the other always answers in 2 ms) and
names a third endpoint where nothing listens. A client with
``standard_hedging_pipeline(endpoints=[...])`` sends 200 GETs: a slow first
attempt is hedged to another endpoint after the observed p99, the dead one
fails over at once and its circuit opens. Then one POST: never hedged.

Runs in a few seconds and prints what happened.

    python examples/hedging_endpoints.py
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections import Counter
from typing import Any

import httpx
import uvicorn

from resilient.httpx import AsyncResilientTransport, standard_hedging_pipeline

served: Counter[str] = Counter()


def upstream(name: str, slow_share: float) -> Any:
    """An ASGI app answering its name, slowly for ``slow_share`` of the requests."""
    rng = random.Random(name)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await asyncio.sleep(1.0 if rng.random() < slow_share else 0.002)
        served[f"{name} {scope['method']}"] += 1
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(name))]})
        await send({"type": "http.response.body", "body": name.encode()})

    return app


async def start(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.01)
    return server, task, f"http://127.0.0.1:{sock.getsockname()[1]}"


def nowhere() -> str:
    with socket.socket() as s:  # a port nothing listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def main() -> None:
    servers = [await start(upstream("a", 0.10)), await start(upstream("b", 0.0))]
    endpoints = [servers[0][2], servers[1][2], nowhere()]
    pipeline = standard_hedging_pipeline(endpoints=endpoints, minimum_throughput=5)
    logging.getLogger("resilient").setLevel(logging.ERROR)  # the dead endpoint's circuit opening is expected here
    async with httpx.AsyncClient(transport=AsyncResilientTransport(pipeline), base_url="http://prices") as client:
        took = []
        for i in range(200):
            start_at = time.perf_counter()
            response = await client.get(f"/price/{i}")
            took.append(time.perf_counter() - start_at)
            assert response.status_code == 200
        took.sort()
        print(
            f"200 GETs: p50 {took[99] * 1000:.0f} ms, p99 {took[197] * 1000:.0f} ms, slowest {took[-1] * 1000:.0f} ms"
        )
        print(f"answers served by each upstream: {dict(sorted(served.items()))}")
        print("endpoints:", ", ".join(f"{e['url'][-5:]} {e['state']}" for e in pipeline.status()["endpoints"]))
        served.clear()
        response = await client.post("/orders", content=b'{"sku": 1}')
        print(f"one POST: answered by {response.text!r}, sent {sum(served.values())} time(s) in all")
    for server, task, _ in servers:
        server.should_exit = True
        await task


if __name__ == "__main__":
    asyncio.run(main())

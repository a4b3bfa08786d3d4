"""Requests per second through httpx.AsyncClient: standard_pipeline() vs plain.

Usage::

    .venv/bin/python -m benchmarks.httpx_throughput            # ~20 s
    .venv/bin/python -m benchmarks.httpx_throughput --quick    # smoke run, a few seconds

A fast endpoint (a raw ASGI app answering ``ok``) runs under uvicorn in a
subprocess on 127.0.0.1 and a free port. In this process, ``--concurrency``
tasks send requests through two clients with the same connection limits:
a plain ``httpx.AsyncClient`` and one whose transport is
``AsyncResilientTransport()`` with the default standard pipeline
(concurrency limit, total timeout, retry, per-host circuit breaker, attempt
timeout, deadline header). The rounds alternate between the two clients so
that machine load hits both alike; the median of the rounds is reported,
with the ratio resilient / plain (the target is >= 0.97): from wall-clock
requests per second, and from this process's CPU time per request, which
load from other processes disturbs much less.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import httpx

from resilient.asgi._common import serve_lifespan
from resilient.httpx import AsyncResilientTransport


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The fast endpoint: ``200 ok`` for every HTTP request."""
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def serve(fd: int) -> None:
    """Run the endpoint on the listening socket ``fd`` (in the subprocess)."""
    import uvicorn

    sock = socket.socket(fileno=fd)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    """Start the endpoint in a subprocess; returns it and its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    code = f"import benchmarks.httpx_throughput as b; b.serve({sock.fileno()})"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=[sock.fileno()], cwd=root)
    sock.close()
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 15
    while True:
        try:
            httpx.get(url, timeout=1.0)
            return proc, url
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the benchmark server did not start") from None
            time.sleep(0.05)


async def run_round(client: httpx.AsyncClient, url: str, requests: int, concurrency: int) -> tuple[float, float]:
    """Send ``requests`` GETs with ``concurrency`` workers.

    Returns requests per second (wall clock) and this process's CPU
    microseconds per request (the server runs in another process).
    """
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            response = await client.get(url)
            if response.status_code != 200:
                raise RuntimeError(f"unexpected status {response.status_code}")

    start = time.perf_counter()
    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu = time.process_time() - cpu
    return requests / (time.perf_counter() - start), cpu / requests * 1e6


async def measure(url: str, requests: int, rounds: int, concurrency: int) -> dict[str, list[tuple[float, float]]]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    # Both clients get the same explicitly built inner transport, so that the
    # only difference is the resilient wrapper.
    plain = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(limits=limits))
    resilient = httpx.AsyncClient(transport=AsyncResilientTransport(inner=httpx.AsyncHTTPTransport(limits=limits)))
    results: dict[str, list[tuple[float, float]]] = {"plain": [], "resilient": []}
    async with plain, resilient:
        # Warm up: open the connections, fill caches.
        await run_round(plain, url, concurrency * 4, concurrency)
        await run_round(resilient, url, concurrency * 4, concurrency)
        for i in range(rounds):
            order = [("plain", plain), ("resilient", resilient)]
            if i % 2:
                order.reverse()
            for name, client in order:
                results[name].append(await run_round(client, url, requests, concurrency))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: few requests, two rounds")
    parser.add_argument("--requests", type=int, default=3000, help="requests per round (default 3000)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per client (default 6)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent requests (default 32)")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.rounds = 300, 2
    proc, url = start_server()
    try:
        results = asyncio.run(measure(url, args.requests, args.rounds, args.concurrency))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(f"httpx throughput, {args.rounds} rounds x {args.requests} requests, concurrency {args.concurrency}")
    print(f"python {platform.python_version()}, httpx {httpx.__version__}, {os.cpu_count()} CPUs")
    print(f"{'client':<28} {'median req/s':>12} {'client CPU us/req':>18}   rounds (req/s)")
    for name, label in (("plain", "plain AsyncClient"), ("resilient", "AsyncResilientTransport()")):
        rps = statistics.median(r for r, _ in results[name])
        cpu = statistics.median(c for _, c in results[name])
        rounds = " ".join(f"{r:.0f}" for r, _ in results[name])
        print(f"{label:<28} {rps:>12.0f} {cpu:>18.1f}   {rounds}")
    # Paired rounds (run back to back) cancel slow drifts in machine load.
    wall = statistics.median(r[0] / p[0] for p, r in zip(results["plain"], results["resilient"], strict=True))
    cpu = statistics.median(p[1] / r[1] for p, r in zip(results["plain"], results["resilient"], strict=True))
    print(f"ratio resilient / plain, median of paired rounds: {wall:.3f} wall-clock req/s, {cpu:.3f} by client CPU")
    print("(target >= 0.97; the CPU ratio is the one that other processes on the machine disturb least)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

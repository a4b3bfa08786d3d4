"""Concurrency limits against a server that slows down as it fills up: goodput and tail latency.

Usage::

    .venv/bin/python benchmarks/concurrency.py            # full run, about 1.5 minutes
    .venv/bin/python benchmarks/concurrency.py --quick    # smoke run (the tests use it)
    .venv/bin/python benchmarks/concurrency.py --markdown

The server is an ASGI app called in-process (no socket, nothing leaves this
process): it serves ``--capacity`` requests at once in ``--base`` seconds,
and beyond that every request in it slows down in proportion (service time
``base * max(1, inflight / capacity)``: the queueing a saturated backend
shows). Its capacity is ``capacity / base`` requests per second. Open-loop
Poisson arrivals drive it at ``--load`` times that, through
:class:`~resilient.asgi.LoadShedding` holding each limiter in turn: none, a
fixed limit too low (half the capacity), one too high (five times it),
AIMD (without and with a hand-set latency threshold) and the gradient limit
(the default of :class:`~resilient.AdaptiveConcurrency`). Refused requests
get a 503 at once.

For each: goodput (200 responses per second, after a warm-up) as a share of
the capacity, and the p50 / p99 latency of the served requests as multiples
of the unloaded latency (the median at a tenth of the load, no limit).
Target for the gradient limit: goodput within 10 % of the capacity with a
p99 within 2x the unloaded latency.

Last, the gradient limit's own cost: ``Gradient2.update`` alone, and an
``AdaptiveConcurrency()`` wrapper's success-path overhead over a bare await
(beside a ``Bulkhead``), as in ``benchmarks/overhead.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `resilient` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resilient import AdaptiveConcurrency, Bulkhead
from resilient.asgi import LoadShedding
from resilient.concurrency import Gradient2

Scope = dict[str, Any]
Message = dict[str, Any]
App = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

_SCOPE: Scope = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/work",
    "raw_path": b"/work",
    "query_string": b"",
    "root_path": "",
    "headers": [],
    "client": ("127.0.0.1", 5000),
    "server": ("127.0.0.1", 8000),
}
_REQUEST: Message = {"type": "http.request", "body": b"", "more_body": False}


@dataclass
class Row:
    name: str
    goodput: float  # served per second / capacity
    p50: float  # served latency / unloaded latency
    p99: float
    shed: float  # share of arrivals answered 503
    limit: str  # the limit at the end


def server(capacity: int, base: float) -> App:
    """An ASGI app whose service time grows with the requests inside it."""
    inflight = 0

    async def app(
        scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        nonlocal inflight
        inflight += 1
        try:
            await asyncio.sleep(base * max(1.0, inflight / capacity))
        finally:
            inflight -= 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


async def drive(app: App, rate: float, seconds: float, warmup: float, seed: int) -> tuple[list[float], int, int, int]:
    """Poisson arrivals at ``rate`` per second for ``seconds``, measured after ``warmup``.

    Returns the latencies of the measured requests served (however late),
    the measured arrivals, those answered 503, and the requests served
    within the measured span (the goodput's count).
    """
    loop = asyncio.get_running_loop()
    rnd = random.Random(seed)
    served: list[float] = []
    counts = [0, 0, 0]  # arrivals and 503s after the warm-up; served within the measured span
    tasks: set[asyncio.Task[None]] = set()
    t0 = loop.time()
    end = t0 + seconds

    async def receive() -> Message:
        return _REQUEST

    async def one(measured: bool) -> None:
        status = 0

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        start = loop.time()
        await app(_SCOPE, receive, send)
        finish = loop.time()
        if status == 200 and t0 + warmup <= finish <= end:
            counts[2] += 1
        if measured:
            if status == 200:
                served.append(finish - start)
            else:
                counts[1] += 1

    due = t0 + rnd.expovariate(rate)
    while True:
        now = loop.time()
        if now >= end:
            break
        while due <= now:
            measured = due - t0 >= warmup
            counts[0] += measured
            task = loop.create_task(one(measured))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            due += rnd.expovariate(rate)
        await asyncio.sleep(min(0.001, max(0.0, due - now)))
    await asyncio.gather(*tasks)
    return served, counts[0], counts[1], counts[2]


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def scenarios(args: argparse.Namespace) -> tuple[float, float, list[Row]]:
    capacity, base = args.capacity, args.base
    rate_capacity = capacity / base
    # The unloaded latency: a tenth of the load, no limit.
    served, _, _, _ = await drive(
        server(capacity, base), rate_capacity * args.load / 10, args.warmup + 2, args.warmup, 0
    )
    unloaded = statistics.median(served)
    unloaded_p99 = _quantile(served, 0.99)

    cases: list[tuple[str, Callable[[], Any]]] = [
        ("no limit", lambda: None),
        (f"fixed, too low (Bulkhead({capacity // 2}))", lambda: Bulkhead(capacity // 2)),
        (f"fixed, too high (Bulkhead({capacity * 5}))", lambda: Bulkhead(capacity * 5)),
        ("AIMD (no latency threshold)", lambda: AdaptiveConcurrency(algorithm="aimd")),
        (
            "AIMD (latency_threshold = 2x base)",
            lambda: AdaptiveConcurrency(algorithm="aimd", latency_threshold=2 * base),
        ),
        ("gradient (AdaptiveConcurrency())", lambda: AdaptiveConcurrency()),
    ]
    rows = []
    for i, (name, make) in enumerate(cases, start=1):
        limiter = make()
        app = server(capacity, base)
        front: App = app if limiter is None else LoadShedding(app, limiter=limiter)
        served, arrivals, shed, done = await drive(
            front, rate_capacity * args.load, args.seconds + args.warmup, args.warmup, i
        )
        rows.append(
            Row(
                name,
                goodput=done / args.seconds / rate_capacity,
                p50=_quantile(served, 0.5) / unloaded,
                p99=_quantile(served, 0.99) / unloaded,
                shed=shed / max(1, arrivals),
                limit="-" if limiter is None else str(limiter.max_concurrent),
            )
        )
    return unloaded, unloaded_p99, rows


# -- per-call cost ---------------------------------------------------------------


def gradient_update_cost(number: int, repeat: int) -> float:
    """Seconds per ``Gradient2.update`` (its windows closing as at 10k calls/s)."""
    best = float("inf")
    for _ in range(repeat):
        g = Gradient2()
        update = g.update
        gc.disable()
        start = time.perf_counter()
        for i in range(number):
            update(20.0, i * 1e-4, 0.01, 20, False)
        elapsed = time.perf_counter() - start
        gc.enable()
        best = min(best, elapsed / number)
    return best


async def wrapper_costs(number: int, repeat: int) -> list[tuple[str, float]]:
    """Seconds per call: a bare await, a Bulkhead, AdaptiveConcurrency with each algorithm."""

    async def target() -> int:
        return 1

    cases: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("bare await", target),
        ("Bulkhead(10)", Bulkhead(10)(target)),
        ("AdaptiveConcurrency(algorithm='aimd')", AdaptiveConcurrency(algorithm="aimd")(target)),
        ("AdaptiveConcurrency() (gradient)", AdaptiveConcurrency()(target)),
    ]
    out = []
    for name, fn in cases:
        best = float("inf")
        for _ in range(repeat):
            gc.disable()
            start = time.perf_counter()
            for _ in range(number):
                await fn()
            elapsed = time.perf_counter() - start
            gc.enable()
            best = min(best, elapsed / number)
        out.append((name, best))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: short scenarios, few iterations")
    parser.add_argument("--capacity", type=int, default=16, help="requests the server serves at once at full speed")
    parser.add_argument("--base", type=float, default=0.02, help="unloaded service time, in seconds")
    parser.add_argument("--load", type=float, default=2.0, help="arrival rate, as a multiple of the capacity")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring (the limits settle)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = parser.parse_args(argv)
    number, repeat = 20_000, 7
    if args.quick:
        args.seconds, args.warmup, number, repeat = 0.5, 0.25, 500, 2

    unloaded, unloaded_p99, rows = asyncio.run(scenarios(args))
    rate_capacity = args.capacity / args.base
    print(
        f"python {platform.python_version()} on {platform.machine()}; server: {args.capacity} at once in "
        f"{1000 * args.base:g} ms (capacity {rate_capacity:.0f} req/s), driven at {args.load:g}x for "
        f"{args.seconds:g} s after {args.warmup:g} s of warm-up; unloaded latency {1000 * unloaded:.1f} ms "
        f"(p99 {1000 * unloaded_p99:.1f} ms)"
    )
    header = ("limiter", "goodput / capacity", "p50 / unloaded", "p99 / unloaded", "shed", "final limit")
    lines = [
        (r.name, f"{r.goodput:.2f}", f"{r.p50:.2f}", f"{r.p99:.2f}", f"{100 * r.shed:.0f} %", r.limit) for r in rows
    ]
    _table(header, lines, args.markdown)

    print()
    per_update = gradient_update_cost(number * 5, repeat)
    costs = asyncio.run(wrapper_costs(number, repeat))
    bare = costs[0][1]
    cost_lines = [("Gradient2.update alone [sync]", f"{1e6 * per_update:.2f}", "-")]
    cost_lines += [(name, f"{1e6 * t:.2f}", f"{1e6 * (t - bare):.2f}") for name, t in costs]
    _table(("per call", "us/call", "overhead us"), cost_lines, args.markdown)


def _table(header: tuple[str, ...], lines: list[tuple[str, ...]], markdown: bool) -> None:
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for line in lines:
            print("| " + " | ".join(line) + " |")
        return
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))


if __name__ == "__main__":
    main()

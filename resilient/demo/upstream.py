"""The flaky upstream: a raw ASGI app with scripted fault phases.

One server process hosts many independent *instances* of the upstream, one
per (scenario, client configuration) run, so that several configurations can
be driven at the same time without sharing fault state: instance ``X``
answers under ``/X/item/<key>`` and has its own clock, capacity, rate limit
and counters. The phases of a scenario are driven by the time since the
instance was started (``POST /__start``), as fractions of the run's
duration, so a short run and a long run have the same shape.

It runs in a subprocess (``python -m resilient.demo.upstream``) so that the
client's event loop measures only the client: the server binds the port,
prints ``PORT <n>`` on its first line of output (or ``ERROR <message>`` and
exits with status 3), then serves with uvicorn until it is terminated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import socket
import sys
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

__all__ = ["SCENARIOS", "Instance", "Phase", "Scenario", "UpstreamApp", "main"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Latency of a healthy answer, seconds (uniform between the two).
HEALTHY_LATENCY = (0.004, 0.012)


@dataclass(frozen=True)
class Phase:
    """A stretch of a scenario, from ``start`` to ``end`` as fractions of the run."""

    start: float
    end: float
    label: str


@dataclass(frozen=True)
class Scenario:
    """A named fault script; ``fault`` is the phase in which the upstream misbehaves."""

    name: str
    title: str
    description: str
    fault: Phase
    #: What the report tells the reader to look at.
    look_for: str = ""


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "outage",
            "Outage",
            "Healthy, then every request fails for 30% of the run (fast 503s, then connections dropped "
            "mid-answer for the last third of the outage), then healthy again.",
            Phase(0.25, 0.55, "503s, then dropped connections"),
            "naive retries triple the load on a dead upstream; the breakers open and calls made while they are "
            "open fail in milliseconds (the upstream chart drops to zero); the stale cache keeps answering. The 5 s "
            "break outlives the end of a short outage: in a 15 s run that costs a visible share of calls, in a real "
            "outage of minutes it does not.",
        ),
        Scenario(
            "brownout",
            "Brownout (30% 503)",
            "30% of the requests fail with 503 for most of the run.",
            Phase(0.15, 0.85, "30% 503"),
            "why the default failure ratio is 0.5 and not Microsoft's 0.1: the breaker sits inside the retry and "
            "sees every attempt; 30% of attempts fail, above 0.1, so the Microsoft preset opens and fails calls "
            "that the retries would have saved, while at 0.5 the breaker stays closed and the retries bring success "
            "close to 100% for about 1.3x the load.",
        ),
        Scenario(
            "slow-tail",
            "Slow tail",
            "5% of the answers take 1.5 s instead of ~8 ms for most of the run.",
            Phase(0.15, 0.85, "5% take 1.5 s"),
            "retries and breakers do nothing for answers that are slow but below every timeout: the p99 is the slow "
            "answer for every configuration but the cache (hedging is the policy for this).",
        ),
        Scenario(
            "overload",
            "Overload",
            "The upstream loses capacity (to 75% of the offered rate): requests queue, latency grows "
            "and requests that waited more than 0.5 s are shed with 503.",
            Phase(0.25, 0.6, "capacity 75% of load"),
            "retries add load to a saturated upstream. Immediate ones pile up while it sheds; backed-off ones "
            "without a budget arrive later and keep its queue long after the capacity is back (a metastable "
            "failure: see the standard pipeline's requests and latency after the shaded band). A retry budget caps "
            "the extra load at 10% and the upstream recovers with the trigger.",
        ),
        Scenario(
            "rate-limited",
            "Rate-limited upstream",
            "The upstream admits 75% of the offered rate and answers 429 with Retry-After: 1 beyond it.",
            Phase(0.15, 0.85, "limit 75% of rate"),
            "the requests chart: immediate retries of 429s are a retry storm; Retry-After spaces them out but the "
            "retries still land on a limit that is already full. A breaker that counts 429s as failures (the "
            "Microsoft preset) opens on a rate limit, which is not an outage. The resilient preset keeps 429 out of "
            "its breaker and pays for 429 retries from a 10% budget: the extra load stays under 10%.",
        ),
    )
}

BROWNOUT_SHARE = 0.30
SLOW_SHARE = 0.05
SLOW_SECONDS = 1.5
OVERLOAD_SERVICE = 0.020  # seconds of work per request in the overload scenario
OVERLOAD_QUEUE_TIMEOUT = 0.5
LIMIT_SHARE = 0.75
#: Seconds per counter slot.
SLOT = 0.1
#: The pseudo status of an answer cut short by dropping the connection.
DROP = -1


class _Dropped(Exception):
    """Raised by the app to make uvicorn drop the connection (logged at ERROR, which is silenced)."""


class Instance:
    """One upstream: its scenario, its clock and what it received, per :data:`SLOT` seconds."""

    def __init__(self, name: str, scenario: Scenario, duration: float, rate: float, seed: int) -> None:
        self.name = name
        self.scenario = scenario
        self.duration = duration
        self.rate = rate
        self.rng = random.Random(seed ^ zlib.crc32(name.encode()))
        self.t0 = time.monotonic()
        slots = math.ceil((duration + 60) / SLOT)
        self.received = [0] * slots
        self.ok = [0] * slots
        self.errors = [0] * slots  # 5xx
        self.limited = [0] * slots  # 429
        self.dropped = [0] * slots  # connections dropped mid-answer
        self.inflight = 0
        self.max_inflight = 0
        # Overload: `workers` requests are served at a time, each costing
        # OVERLOAD_SERVICE seconds; healthy capacity is 4x the offered rate.
        self.workers = max(1, round(4 * rate * OVERLOAD_SERVICE))
        self.busy = 0
        self.waiters: list[asyncio.Future[None]] = []
        self.degraded = max(1, round(LIMIT_SHARE * rate * OVERLOAD_SERVICE))
        # Rate limit: a token bucket of LIMIT_SHARE * rate per second, a 0.1 s burst.
        self.limit_rate = LIMIT_SHARE * rate
        self.tokens = self.limit_rate * 0.1
        self.tokens_at = self.t0

    def slot(self, now: float) -> int:
        """The index of the slot ``now`` falls into (clamped to the counters)."""
        return min(int((now - self.t0) / SLOT), len(self.received) - 1)

    def in_fault(self, now: float) -> bool:
        """Whether the fault phase is on at ``now``."""
        frac = (now - self.t0) / self.duration
        return self.scenario.fault.start <= frac < self.scenario.fault.end

    def take_token(self, now: float) -> bool:
        """Take one token from the rate limit's bucket, or say there is none."""
        capacity = max(1.0, self.limit_rate * 0.1)
        self.tokens = min(capacity, self.tokens + (now - self.tokens_at) * self.limit_rate)
        self.tokens_at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    async def acquire_worker(self, now: float) -> bool:
        """Wait for a free worker (overload); False when the wait was too long (shed)."""
        limit = self.degraded if self.in_fault(now) else self.workers
        if self.busy < limit and not self.waiters:
            self.busy += 1
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), OVERLOAD_QUEUE_TIMEOUT)
        except TimeoutError:
            if fut.done() and not fut.cancelled():
                self.release_worker()  # handed a worker just as we gave up
            else:
                fut.cancel()
                self.waiters.remove(fut)
            return False
        return True

    def release_worker(self) -> None:
        """Give the worker to the next waiter, if the current capacity allows."""
        self.busy -= 1
        limit = self.degraded if self.in_fault(time.monotonic()) else self.workers
        while self.waiters and self.busy < limit:
            fut = self.waiters.pop(0)
            if not fut.done():
                self.busy += 1
                fut.set_result(None)

    def stats(self) -> dict[str, Any]:
        """What the instance received, per slot since its start."""
        last = max(self.slot(time.monotonic()) + 1, 1)
        return {
            "name": self.name,
            "scenario": self.scenario.name,
            "slot": SLOT,
            "received": self.received[:last],
            "ok": self.ok[:last],
            "errors": self.errors[:last],
            "limited": self.limited[:last],
            "dropped": self.dropped[:last],
            "total": sum(self.received),
            "max_inflight": self.max_inflight,
        }


_JSON = [(b"content-type", b"application/json")]


class UpstreamApp:
    """The ASGI app: ``POST /__start`` (JSON: name, scenario, duration, rate, seed),
    ``GET /__stats?name=...``, ``GET /__health`` and ``GET /<name>/item/<key>``."""

    def __init__(self) -> None:
        self.instances: dict[str, Instance] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path.startswith("/__"):
            await self._control(scope, receive, send, path)
            return
        parts = path.split("/")
        inst = self.instances.get(parts[1]) if len(parts) == 4 and parts[2] == "item" else None
        if inst is None:
            await _respond(send, 404, b'{"error":"no such instance"}')
            return
        await self._serve(inst, parts[3], send)

    async def _serve(self, inst: Instance, key: str, send: Send) -> None:
        now = time.monotonic()
        sec = inst.slot(now)
        inst.received[sec] += 1
        inst.inflight += 1
        inst.max_inflight = max(inst.max_inflight, inst.inflight)
        try:
            status, headers, delay = await self._decide(inst, now)
            if delay > 0:
                await asyncio.sleep(delay)
        finally:
            inst.inflight -= 1
        if status == DROP:
            inst.dropped[sec] += 1
            # Promise a body and never send it: uvicorn closes the connection
            # when the app fails after the response has started.
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"64")]})
            raise _Dropped
        if status == 200:
            inst.ok[sec] += 1
            body = b'{"key":"%s","value":%d}' % (key.encode()[:32], inst.received[sec])
        elif status == 429:
            inst.limited[sec] += 1
            body = b'{"error":"rate limited"}'
        else:
            inst.errors[sec] += 1
            body = b'{"error":"unavailable"}'
        await _respond(send, status, body, headers)

    async def _decide(self, inst: Instance, now: float) -> tuple[int, list[tuple[bytes, bytes]], float]:
        """The status, extra headers and delay of one answer."""
        rng = inst.rng
        healthy = rng.uniform(*HEALTHY_LATENCY)
        name = inst.scenario.name
        if name == "overload":
            if not await inst.acquire_worker(now):
                return 503, [], 0.0
            try:
                # Congestion makes the work itself slower (thrashing): up to 3x.
                queued = len(inst.waiters)
                await asyncio.sleep(OVERLOAD_SERVICE * min(3.0, 1.0 + queued / (4.0 * inst.workers)))
            finally:
                inst.release_worker()
            return 200, [], 0.0
        if not inst.in_fault(now):
            return 200, [], healthy
        if name == "outage":
            # The first two thirds answer 503; the last third drops the
            # connection mid-answer (a crashing process): a transport error.
            frac = ((now - inst.t0) / inst.duration - inst.scenario.fault.start) / (
                inst.scenario.fault.end - inst.scenario.fault.start
            )
            return (DROP if frac >= 2 / 3 else 503), [], 0.001
        if name == "brownout":
            return (503 if rng.random() < BROWNOUT_SHARE else 200), [], healthy
        if name == "slow-tail":
            return 200, [], SLOW_SECONDS if rng.random() < SLOW_SHARE else healthy
        if name == "rate-limited":
            if inst.take_token(now):
                return 200, [], healthy
            return 429, [(b"retry-after", b"1")], 0.001
        return 200, [], healthy

    async def _control(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        if path == "/__health":
            await _respond(send, 200, b'{"ok":true}')
        elif path == "/__start" and scope["method"] == "POST":
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            try:
                spec = json.loads(body)
                inst = Instance(
                    str(spec["name"]),
                    SCENARIOS[spec["scenario"]],
                    float(spec["duration"]),
                    float(spec["rate"]),
                    int(spec.get("seed", 0)),
                )
            except (ValueError, KeyError, TypeError) as exc:
                await _respond(send, 400, json.dumps({"error": repr(exc)}).encode())
                return
            self.instances[inst.name] = inst
            await _respond(send, 200, b'{"started":true}')
        elif path == "/__stats":
            query = scope.get("query_string", b"").decode()
            name = query.partition("name=")[2].partition("&")[0]
            found = self.instances.get(name)
            if found is None:
                await _respond(send, 404, b'{"error":"no such instance"}')
            else:
                await _respond(send, 200, json.dumps(found.stats()).encode())
        else:
            await _respond(send, 404, b'{"error":"not found"}')


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON, *(headers or ()), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def bind(host: str, port: int) -> socket.socket:
    """Bind a listening TCP socket (``port=0``: a free one)."""
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets
    # only when the listening socket says TCP, and without it every answer
    # (headers and body are two writes) waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(4096)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    """Serve the upstream: print ``PORT <n>`` once listening, then run until terminated."""
    parser = argparse.ArgumentParser(prog="python -m resilient.demo.upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        print(f"ERROR cannot bind {args.host}:{args.port}: {exc.strerror or exc}", flush=True)
        return 3
    import uvicorn

    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        UpstreamApp(),
        # "critical": uvicorn logs every dropped connection (an exception
        # raised on purpose) as an error.
        log_level="critical",
        access_log=False,
        lifespan="off",
        http="h11",
        loop="asyncio",
        timeout_keep_alive=60,
        server_header=False,
        date_header=False,
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What sharing state through Redis costs per call, against a bare PING.

Starts its own redis-server on a free port of 127.0.0.1 and measures, with
one redis-py asyncio client:

* ``PING``: the floor, one round trip;
* ``RedisRateLimiter.atry_acquire()``: one GCRA script run;
* the limiter as a policy around a trivial coroutine;
* ``CircuitBreaker(store=RedisBreakerStore(...))`` around a trivial
  coroutine: successes batched (the default ``sync_interval=0.1``) and
  strict (``sync_interval=0``: one round trip per success);
* a failure recorded by the breaker store (one round trip);
* a ``GET`` of a cached value (the floor of a shared cache hit), and a
  ``StaleCache`` fresh hit on a ``RedisCacheStore``: with ``near_ttl=0``
  (every hit reads Redis; target <= 1.5x the ``GET``) and with the default
  near tier (most hits answered in process);

then the throughput of shared decisions across 4 processes.

    python -m benchmarks.redis_overhead [--quick]

Figures are per call, the best of several rounds (the machine may be busy).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from resilient.breaker import CircuitBreaker  # noqa: E402
from resilient.cache import StaleCache  # noqa: E402
from resilient.redis import RedisBreakerStore, RedisCacheStore, RedisRateLimiter  # noqa: E402
from tests.redis_helpers import REDIS_SERVER, running_redis  # noqa: E402


async def _per_call(fn: Callable[[], Awaitable[Any]], number: int, rounds: int) -> float:
    for _ in range(min(200, number)):
        await fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(number):
            await fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best * 1e6


async def target() -> int:
    return 1


async def latency(url: str, number: int, rounds: int) -> list[tuple[str, float]]:
    limiter = RedisRateLimiter(url, rate=1e9, burst=10**9, name="bench", timeout=1.0)
    client = limiter.store._conn.aclient()
    guarded_limit = limiter(target)
    batched = CircuitBreaker(name="bench-batched", store=RedisBreakerStore(url, timeout=1.0))(target)
    strict_store = RedisBreakerStore(url, timeout=1.0, sync_interval=0)
    strict = CircuitBreaker(name="bench-strict", store=strict_store)(target)
    fail_store = RedisBreakerStore(url, timeout=1.0)
    CircuitBreaker(name="bench-fail", failure_ratio=1.0, minimum_throughput=10**9, store=fail_store)
    # A store admits its first call through acquire() (it asks Redis); that permit stays current.
    permit, _ = await fail_store.aacquire(time.monotonic())
    assert permit is not None

    async def record_failure() -> None:
        await fail_store.arecord_failure(permit)

    far_store = RedisCacheStore(url, name="bench-far", timeout=1.0, near_ttl=0)
    near_store = RedisCacheStore(url, name="bench-near", timeout=1.0)

    async def price() -> dict[str, float]:
        return {"price": 12.5, "fx": 1.07}

    far_hit = StaleCache(3600, store=far_store)(price)
    near_hit = StaleCache(3600, store=near_store)(price)
    await far_hit()
    await near_hit()
    cached_key = (await client.keys("resilient:cache:bench-far:*"))[0]

    async def get_cached() -> Any:
        return await client.get(cached_key)

    cases: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("bare await (no Redis)", target),
        ("PING (floor: one round trip)", client.ping),
        ("RedisRateLimiter.atry_acquire()", limiter.atry_acquire),
        ("RedisRateLimiter policy around a coroutine", guarded_limit),
        ("breaker, Redis store, success (batched)", batched),
        ("breaker, Redis store, success (sync_interval=0)", strict),
        ("breaker store: record a failure", record_failure),
        ("GET of a cached value (floor of a shared hit)", get_cached),
        ("StaleCache hit, RedisCacheStore(near_ttl=0)", far_hit),
        ("StaleCache hit, RedisCacheStore (near tier)", near_hit),
    ]
    out = []
    for label, fn in cases:
        out.append((label, await _per_call(fn, number, rounds)))
    await limiter.aclose()
    await far_store.aclose()
    await near_store.aclose()
    return out


WORKER = """
import asyncio, sys, time
from resilient.breaker import CircuitBreaker
from resilient.redis import RedisBreakerStore, RedisRateLimiter

async def main(kind, url, start_at, duration):
    if kind == "limiter":
        lim = RedisRateLimiter(url, rate=1e9, burst=10**9, name="fleet", timeout=1.0)
        op = lim.atry_acquire
    else:
        async def target():
            return 1
        op = CircuitBreaker(name="fleet", store=RedisBreakerStore(url, timeout=1.0, sync_interval=0))(target)
    await op()
    while time.time() < start_at:
        await asyncio.sleep(0.001)
    n = 0
    end = start_at + duration
    while time.time() < end:
        await op()
        n += 1
    print(n)

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
"""


def throughput(url: str, kind: str, procs: int, duration: float) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start_at = time.time() + 1.5
    ps = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, kind, url, str(start_at), str(duration)],
            stdout=subprocess.PIPE,
            env=env,
        )
        for _ in range(procs)
    ]
    total = 0
    for p in ps:
        out, _ = p.communicate(timeout=120)
        total += int(out)
    return total / duration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer calls and a shorter throughput run")
    parser.add_argument("--number", type=int, default=None, help="calls per round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (the best one counts)")
    args = parser.parse_args()
    number = args.number or (500 if args.quick else 3000)
    rounds = args.rounds or (3 if args.quick else 7)
    duration = 1.0 if args.quick else 3.0
    if REDIS_SERVER is None or not shutil.which(REDIS_SERVER):
        print("redis-server is not installed; nothing to measure")
        return
    with running_redis() as server:
        results = asyncio.run(latency(server.url, number, rounds))
        ping = dict(results)["PING (floor: one round trip)"]
        print(f"Per call, best of {rounds} rounds of {number} (cpus: {os.cpu_count()}, load: {os.getloadavg()[0]:.1f})")
        print(f"{'case':52} {'us/call':>9} {'x PING':>7}")
        for label, us in results:
            print(f"{label:52} {us:9.1f} {us / ping:7.2f}")
        get = dict(results)["GET of a cached value (floor of a shared hit)"]
        far = dict(results)["StaleCache hit, RedisCacheStore(near_ttl=0)"]
        print(f"RedisCacheStore hit read from Redis: {far / get:.2f}x a GET (target <= 1.5x)")
        print()
        print(f"Throughput across 4 processes, {duration:g} s, one shared key:")
        for kind in ("limiter", "breaker"):
            label = "RedisRateLimiter.atry_acquire" if kind == "limiter" else "breaker success, sync_interval=0"
            print(f"  {label:40} {throughput(server.url, kind, 4, duration):10.0f} decisions/s")


if __name__ == "__main__":
    main()

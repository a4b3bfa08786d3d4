"""Two processes, one circuit: a breaker whose state lives in Redis.

Starts its own redis-server on a free port of 127.0.0.1 (no persistence),
then runs two "replicas" as separate processes. Replica A calls a dependency
that is down until its failures open the shared circuit; replica B, started
afterwards, fails fast on its very first call without touching the
dependency. Finally the break ends and exactly one replica gets the probe.

If redis-server is not installed, it says so and exits 0.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

from _local_redis import local_redis  # a throwaway redis-server for the example

from resilient.breaker import CircuitBreaker
from resilient.errors import CircuitOpenError
from resilient.redis import RedisBreakerStore


def make_breaker(url: str) -> CircuitBreaker:
    """The same breaker in every replica: same name, same options, one Redis."""
    return CircuitBreaker(
        name="payments",
        consecutive_failures=3,
        break_duration=1.0,
        store=RedisBreakerStore(url, prefix="example:"),
    )


async def replica_a(url: str) -> None:
    cb = make_breaker(url)

    @cb
    async def charge() -> str:
        raise ConnectionError("payments API is down")

    for i in range(1, 5):
        try:
            await charge()
        except ConnectionError:
            print(f"  A: call {i} failed (the dependency is down)")
        except CircuitOpenError as exc:
            print(f"  A: call {i} rejected: circuit {cb.state.value}, retry after {exc.retry_after:.2f} s")


async def replica_b(url: str) -> None:
    cb = make_breaker(url)
    touched = 0

    @cb
    async def charge() -> str:
        nonlocal touched
        touched += 1
        return "charged"

    try:
        await charge()
    except CircuitOpenError as exc:
        print(f"  B: first call rejected at once (circuit {cb.state.value}, retry after {exc.retry_after:.2f} s)")
    print(f"  B: calls that reached the dependency: {touched}")


async def prober(url: str, start_at: float) -> None:
    cb = make_breaker(url)

    @cb
    async def charge() -> str:
        await asyncio.sleep(0.2)
        return "charged"

    # Every replica calls at the same wall-clock moment.
    await asyncio.sleep(max(0.0, start_at - time.time()))
    try:
        await charge()
        print("  probe admitted and succeeded: the circuit is", cb.state.value)
    except CircuitOpenError:
        print("  rejected: another replica holds the probe lease")


def run_replica(role: str, url: str, *extra: str) -> str:
    out = subprocess.run(
        [sys.executable, __file__, role, url, *extra], capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout


def main() -> None:
    if len(sys.argv) > 2:  # a replica process
        role, url = sys.argv[1], sys.argv[2]
        if role == "a":
            asyncio.run(replica_a(url))
        elif role == "b":
            asyncio.run(replica_b(url))
        else:
            asyncio.run(prober(url, float(sys.argv[3])))
        return

    with local_redis() as url:
        if url is None:
            return
        print(f"redis-server on {url}")
        print("Replica A (process 1) calls a dependency that is down:")
        print(run_replica("a", url), end="")
        print("Replica B (process 2) starts after A opened the shared circuit:")
        print(run_replica("b", url), end="")
        print("The break ends; three replicas call at the same moment:")
        start_at = time.time() + 1.5
        procs = [
            subprocess.Popen([sys.executable, __file__, "probe", url, str(start_at)], stdout=subprocess.PIPE, text=True)
            for _ in range(3)
        ]
        for p in procs:
            out, _ = p.communicate(timeout=60)
            print(out, end="")


if __name__ == "__main__":
    main()

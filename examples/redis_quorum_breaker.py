"""Quorum mode: the fleet's circuit opens only when enough replicas say so.

A shared breaker (``RedisBreakerStore``) lets one replica's failures open the
circuit for every replica; when the failures come from that replica alone
(its network path, a full pool, a bad deploy), that takes the whole fleet
off a dependency that works. ``RedisBreakerStore(..., quorum=2)`` keeps a
circuit per replica, which protects that replica, and opens it for the
fleet only while at least two replicas' own circuits are open.

Starts its own redis-server on a free port of 127.0.0.1 (no persistence) and
runs three replicas (three breakers with distinct replica ids) in this
process. If redis-server is not installed, it says so and exits 0.
"""

from __future__ import annotations

import asyncio

from _local_redis import local_redis  # a throwaway redis-server for the example

from resilient.breaker import CircuitBreaker
from resilient.errors import CircuitOpenError
from resilient.redis import RedisBreakerStore

BREAK = 0.5


def replica(url: str, name: str) -> CircuitBreaker:
    """The same breaker in every replica; ``replica=`` names its vote (default: host, pid, random)."""
    return CircuitBreaker(
        "payments",
        consecutive_failures=3,
        break_duration=BREAK,
        store=RedisBreakerStore(url, prefix="example:", quorum=2, replica=name, sync_interval=0),
    )


async def call(cb: CircuitBreaker, name: str, healthy: bool) -> str:
    async def charge() -> str:
        if not healthy:
            raise ConnectionError("payments API unreachable")
        return "charged"

    try:
        return await cb(charge)()
    except ConnectionError:
        return "failed"
    except CircuitOpenError:
        return "rejected"


async def round_(replicas: dict[str, CircuitBreaker], sick: set[str], label: str) -> None:
    outcomes = {name: [await call(cb, name, name not in sick) for _ in range(4)] for name, cb in replicas.items()}
    print(label)
    for name, cb in replicas.items():
        votes = cb.store.votes  # type: ignore[attr-defined]
        print(f"  {name}: {', '.join(outcomes[name]):<40} state {cb.state.value:<9} votes for open {votes} (quorum 2)")


async def scenario(url: str) -> None:
    replicas = {name: replica(url, name) for name in ("r1", "r2", "r3")}
    await round_(replicas, set(), "All three replicas reach the dependency:")
    await round_(replicas, {"r1"}, "r1 alone is sick (its own network path): it opens its own circuit only")
    await round_(replicas, {"r1", "r2"}, "r2 fails too: two votes, the circuit opens for the fleet (r3 fails fast)")
    await asyncio.sleep(BREAK)
    await round_(replicas, set(), "The dependency is back; after the break the probes succeed and the votes go:")
    for cb in replicas.values():
        await cb.store.aclose()  # type: ignore[attr-defined]
        cb.store.close()  # type: ignore[attr-defined]


def main() -> None:
    with local_redis() as url:
        if url is not None:
            asyncio.run(scenario(url))


if __name__ == "__main__":
    main()

"""Bulkhead basics: cap concurrency on a slow dependency, queue a few, shed the rest.

Run: python examples/bulkhead_basics.py
"""

from __future__ import annotations

import asyncio
import time

from resilient import BulkheadFullError
from resilient.concurrency import Bulkhead

# At most 3 calls to the "database" at once; 2 more may wait up to 0.3 s.
db = Bulkhead(3, max_queued=2, queue_timeout=0.3, name="db")

in_flight = 0
peak = 0


@db
async def query(i: int) -> str:
    """A slow query: 0.1 s."""
    global in_flight, peak
    in_flight += 1
    peak = max(peak, in_flight)
    try:
        await asyncio.sleep(0.1)
        return f"row {i}"
    finally:
        in_flight -= 1


async def main_async() -> None:
    start = time.perf_counter()
    results = await asyncio.gather(*(query(i) for i in range(10)), return_exceptions=True)
    elapsed = time.perf_counter() - start
    served = [r for r in results if isinstance(r, str)]
    shed = [r for r in results if isinstance(r, BulkheadFullError)]
    print(f"10 concurrent calls in {elapsed:.2f} s: {len(served)} served, {len(shed)} rejected at once")
    print(f"peak concurrency on the database: {peak} (limit {db.max_concurrent})")
    print(f"first rejection: {shed[0]}")
    print(f"status: {db.status()}")

    # The same slots, without a wrapped function (what the ASGI load-shedding middleware does).
    async with db.acquire():
        print(f"inside acquire(): running={db.running}")
    print(f"after: running={db.running}, queued={db.queued}")


def main() -> None:
    asyncio.run(main_async())


if __name__ == "__main__":
    main()

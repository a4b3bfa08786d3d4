"""Total and per-attempt timeouts under a deadline, with a fallback.

Run: python examples/timeout_deadline.py
"""

from __future__ import annotations

import asyncio

import resilient
from resilient import Fallback, Pipeline, Retry, Timeout, constant, deadline, remaining

calls = 0


async def search(query: str) -> list[str]:
    """The first attempt hangs; the second answers quickly."""
    global calls
    calls += 1
    if calls == 1:
        await asyncio.sleep(10)
    return [f"{query}-result"]


guard = Pipeline(
    Fallback([]),  # outermost: whatever is left becomes an empty answer
    Timeout(1.0),  # total
    Retry(attempts=3, backoff=constant(0.01), on=TimeoutError),
    Timeout(0.05),  # per attempt
    name="search",
)


async def main() -> None:
    guarded = guard(search)
    print(f"results: {await guarded('shoes')} after {calls} attempts")

    # A deadline set at the edge bounds everything below it: the 1 s total
    # timeout is clamped to what is left.
    with deadline(0.03):
        print(f"time left: {remaining():.3f} s")
        try:
            await Timeout(1.0)(asyncio.sleep)(5)
        except resilient.TimeoutError as exc:
            print(f"deadline hit: {exc}")


if __name__ == "__main__":
    asyncio.run(main())

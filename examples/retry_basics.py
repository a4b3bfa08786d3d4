"""Retry with jittered exponential backoff, on exceptions and on results.

Run: python examples/retry_basics.py
"""

from __future__ import annotations

import asyncio
import random

from resilient import Retry, exponential

rng = random.Random(3)


class FlakyInventory:
    """Fails the first two calls with ConnectionError, then answers."""

    def __init__(self) -> None:
        self.calls = 0

    async def stock(self, sku: str) -> int:
        self.calls += 1
        if self.calls <= 2:
            raise ConnectionError(f"inventory unreachable (call {self.calls})")
        return 42


async def main() -> None:
    inventory = FlakyInventory()
    retry = Retry(
        attempts=4,
        backoff=exponential(0.01, jitter="decorrelated", random=rng.random),
        on=ConnectionError,
        name="inventory",
    )
    stock = retry(inventory.stock)
    print(f"stock of ABC-1 = {await stock('ABC-1')} after {inventory.calls} calls")

    # Results can be failures too: here a 503 status is retried, and the
    # last result is returned when the attempts run out.
    statuses = iter([503, 503, 200])

    @Retry(attempts=3, on_result=lambda status: status >= 500, backoff=exponential(0.001))
    async def ping() -> int:
        return next(statuses)

    print(f"ping status = {await ping()}")

    # When the attempts run out, the last exception is re-raised as itself,
    # with a note telling what the retry did.
    @Retry(attempts=2, backoff=exponential(0.001), name="always-down")
    async def down() -> None:
        raise ConnectionError("still down")

    try:
        await down()
    except ConnectionError as exc:
        print(f"gave up: {exc!r}; note: {exc.__notes__[0]}")


if __name__ == "__main__":
    asyncio.run(main())

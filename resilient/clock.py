"""The one source of time for every policy.

Policies read time through a :class:`Clock` so that tests can replace it with
:class:`resilient.testing.FakeClock` and run a 30 s backoff in microseconds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """A monotonic clock that can also sleep, synchronously or not."""

    def now(self) -> float:
        """Seconds on a monotonic scale; only differences are meaningful."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic`, :func:`time.sleep`, :func:`asyncio.sleep`."""

    __slots__ = ()

    def now(self) -> float:
        """Return :func:`time.monotonic`."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Sleep with :func:`time.sleep`."""
        time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        """Sleep with :func:`asyncio.sleep`."""
        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


#: The process-wide real clock, the default of every policy.
SYSTEM_CLOCK: Clock = SystemClock()

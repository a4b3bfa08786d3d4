"""Helpers for deterministic tests, for resilient's own tests and for users'.

:class:`FakeClock` replaces the real clock in any policy (``clock=``) so
that time-dependent logic is tested without sleeping. :class:`RecordingListener`
collects the events policies emit.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from resilient import events as _events
from resilient.events import ResilienceEvent

__all__ = ["FakeClock", "RecordingListener", "recording"]


class FakeClock:
    """A clock that moves only when told to (or, with ``auto_advance``, when slept on).

    * ``now()`` returns the fake time (starting at ``start``).
    * ``advance(seconds)`` moves time forward and wakes every async sleeper
      whose wake-up time has come.
    * ``await asleep(s)`` waits until ``advance`` reaches its wake-up time;
      with ``auto_advance=True`` it moves time forward by ``s`` itself and
      returns at once, so a retry with 30 s of backoff runs in microseconds.
    * ``sleep(s)`` (sync) always advances time by ``s``: a single thread
      cannot be woken by another ``advance``.

    ``sleeps`` records every duration slept, in order.
    """

    def __init__(self, start: float = 0.0, *, auto_advance: bool = False) -> None:
        self._now = float(start)
        self.auto_advance = auto_advance
        #: Every duration passed to ``sleep``/``asleep``, in call order.
        self.sleeps: list[float] = []
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def now(self) -> float:
        """The fake time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake the sleepers that are due."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        with self._lock:
            self._now += seconds
            due: list[asyncio.Future[None]] = []
            while self._sleepers and self._sleepers[0][0] <= self._now:
                due.append(heapq.heappop(self._sleepers)[2])
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for fut in due:
            if fut.done():
                continue
            loop = fut.get_loop()
            if loop is running:
                # Same thread: wake now, so one `await asyncio.sleep(0)` in the
                # test lets the sleeper run.
                fut.set_result(None)
            else:
                loop.call_soon_threadsafe(_wake, fut)

    def set(self, now: float) -> None:
        """Jump to the absolute time ``now`` (never backwards)."""
        self.advance(max(0.0, now - self._now))

    def sleep(self, seconds: float) -> None:
        """Advance time by ``seconds`` (a synchronous sleep cannot be woken)."""
        self.sleeps.append(seconds)
        self.advance(max(0.0, seconds))

    async def asleep(self, seconds: float) -> None:
        """Wait until fake time reaches now + ``seconds``."""
        self.sleeps.append(seconds)
        if self.auto_advance or seconds <= 0:
            self.advance(max(0.0, seconds))
            # Yield like a real sleep would, so that other tasks run.
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    @property
    def sleepers(self) -> int:
        """How many async sleepers are waiting."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now}, auto_advance={self.auto_advance})"


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class RecordingListener:
    """An event listener that keeps every event it receives."""

    def __init__(self) -> None:
        #: The events received, in order.
        self.events: list[ResilienceEvent] = []

    def __call__(self, event: ResilienceEvent) -> None:
        """Record ``event``."""
        self.events.append(event)

    def names(self) -> list[str]:
        """The names of the events received, in order."""
        return [e.name for e in self.events]

    def of(self, name: str) -> list[ResilienceEvent]:
        """The events called ``name``."""
        return [e for e in self.events if e.name == name]

    def clear(self) -> None:
        """Forget every event."""
        self.events.clear()


@contextmanager
def recording() -> Iterator[RecordingListener]:
    """Record every event emitted in the block (a global listener)."""
    listener = RecordingListener()
    _events.add_listener(listener)
    try:
        yield listener
    finally:
        _events.remove_listener(listener)

"""Helpers for deterministic tests, for resilient's own tests and for users'.

:class:`FakeClock` replaces the real clock in any policy (``clock=``) so
that time-dependent logic is tested without sleeping. :class:`RecordingListener`
collects the events policies emit.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import heapq
import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from resilient import events as _events
from resilient.events import ResilienceEvent
from resilient.validate import check_bool, check_int

__all__ = ["TEST_MODE", "FakeClock", "FakeTimer", "RecordingListener", "TestMode", "recording", "set_testing"]


class TestMode:
    """The process-wide test mode that :func:`set_testing` switches (read by every :class:`~resilient.Retry`)."""

    __slots__ = ("active", "attempts")

    def __init__(self) -> None:
        #: Whether test mode is on.
        self.active = False
        #: The most attempts any retry makes while it is on.
        self.attempts = 1

    def __repr__(self) -> str:
        return f"TestMode(active={self.active}, attempts={self.attempts})"


#: The test mode in force. Retries read it only after a failure, so it costs
#: the success path nothing.
TEST_MODE = TestMode()


class _Restore:
    """What :func:`set_testing` returns: used as a context manager, it restores the previous mode."""

    __slots__ = ("_previous",)

    def __init__(self, previous: tuple[bool, int]) -> None:
        self._previous = previous

    def __enter__(self) -> TestMode:
        return TEST_MODE

    def __exit__(self, *exc: object) -> None:
        TEST_MODE.active, TEST_MODE.attempts = self._previous


def set_testing(testing: bool, *, attempts: int = 1) -> _Restore:
    """Switch test mode on or off, process-wide (stamina's ``set_testing``).

    While it is on, every :class:`~resilient.Retry` makes at most
    ``attempts`` attempts and never waits between them, whatever its own
    options say: a test of a service that retries a failing dependency gets
    its answer at once. ``set_testing(False)`` turns it off. Used as a
    context manager, it is on for the block and the previous mode comes back
    after it::

        with set_testing(True, attempts=2):
            ...

    The pytest plugin's ``resilient_testing`` fixture does this for one test.

    Raises:
        TypeError, ValueError: ``testing`` is not a bool, ``attempts`` not an int >= 1.
    """
    check_bool(testing, "testing")
    check_int(attempts, "attempts", minimum=1)
    previous = (TEST_MODE.active, TEST_MODE.attempts)
    TEST_MODE.active = testing
    TEST_MODE.attempts = attempts
    return _Restore(previous)


class FakeTimer:
    """A timer armed on a :class:`FakeClock`; it fires from :meth:`FakeClock.advance`."""

    __slots__ = ("callback", "loop", "when")

    def __init__(self, when: float, callback: Callable[[], object], loop: asyncio.AbstractEventLoop | None) -> None:
        #: The fake time it fires at.
        self.when = when
        self.callback: Callable[[], object] | None = callback
        self.loop = loop

    @property
    def cancelled(self) -> bool:
        """Whether it was cancelled or has already fired."""
        return self.callback is None

    def cancel(self) -> None:
        """Stop the timer (no error if it already fired)."""
        # Drop the callback at once, as SystemClock's timers do not keep
        # what they refer to alive once cancelled.
        self.callback = None

    def __repr__(self) -> str:
        state = "pending" if self.callback is not None else "done"
        return f"FakeTimer(when={self.when}, {state})"


class FakeClock:
    """A clock that moves only when told to (or, with ``auto_advance``, when slept on).

    * ``now()`` returns the fake time (starting at ``start``).
    * ``advance(seconds)`` moves time forward and fires, in time order,
      every timer that comes due (waking the async sleepers among them).
    * ``await asleep(s)`` waits until ``advance`` reaches its wake-up time;
      with ``auto_advance=True`` it moves time forward by ``s`` itself and
      returns at once, so a retry with 30 s of backoff runs in microseconds.
    * ``sleep(s)`` (sync) always advances time by ``s``: a single thread
      cannot be woken by another ``advance``.
    * ``call_at(when, callback)`` arms a timer, as every policy that times
      out does: :class:`~resilient.Timeout`, :class:`~resilient.Hedge`,
      :class:`~resilient.Bulkhead`'s queue timeout, the ASGI request
      timeout. It fires when ``advance`` reaches ``when``: at once when
      ``advance`` runs on the thread of the loop that armed it (so the next
      ``await asyncio.sleep(0)`` lets the affected task run), through
      ``call_soon_threadsafe`` for another loop's thread. It fires in an
      empty :class:`contextvars.Context`, like the real clock's timers.

    ``sleeps`` records every duration slept, in order; ``pending_timers``
    counts the timers not fired nor cancelled.
    """

    def __init__(self, start: float = 0.0, *, auto_advance: bool = False) -> None:
        self._now = float(start)
        self.auto_advance = auto_advance
        #: Every duration passed to ``sleep``/``asleep``, in call order.
        self.sleeps: list[float] = []
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._sleepers: set[asyncio.Future[None]] = set()
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def now(self) -> float:
        """The fake time."""
        return self._now

    def call_at(self, when: float, callback: Callable[[], object], *, threaded: bool = False) -> FakeTimer:
        """Arm a timer firing when fake time reaches ``when`` (see the class docs).

        With ``threaded=True`` (or outside a loop) it fires on the thread
        that calls :meth:`advance`.
        """
        loop: asyncio.AbstractEventLoop | None = None
        if not threaded:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        timer = FakeTimer(float(when), callback, loop)
        with self._lock:
            heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing every timer that comes due, in order.

        Time steps to each timer's moment before its callback runs, so a
        callback that reads ``now()`` or arms another timer within the
        advanced span sees what a real clock would have shown.
        """
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        target = self._now + seconds
        while True:
            with self._lock:
                timers = self._timers
                while timers and timers[0][2].callback is None:
                    heapq.heappop(timers)
                if not timers or timers[0][0] > target:
                    self._now = target
                    return
                timer = heapq.heappop(timers)[2]
                if timer.when > self._now:
                    self._now = timer.when
            callback = timer.callback
            timer.callback = None
            if callback is None:  # pragma: no cover - cancelled by another thread just now
                continue
            loop = timer.loop
            if loop is None or loop is running:
                contextvars.Context().run(callback)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(callback, context=contextvars.Context())

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
        timer = self.call_at(self._now + seconds, functools.partial(_wake, fut))
        self._sleepers.add(fut)
        try:
            await fut
        finally:
            self._sleepers.discard(fut)
            timer.cancel()

    @property
    def sleepers(self) -> int:
        """How many async sleepers are waiting."""
        return sum(1 for f in self._sleepers if not f.done())

    @property
    def pending_timers(self) -> int:
        """How many timers (sleepers included) have neither fired nor been cancelled."""
        with self._lock:
            return sum(1 for _, _, t in self._timers if t.callback is not None)

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

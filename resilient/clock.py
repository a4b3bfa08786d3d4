"""The one source of time, and of timers, for every policy.

Policies read time, sleep and arm timers through a :class:`Clock`, so that
tests can replace it with :class:`resilient.testing.FakeClock` and run a
30 s backoff, a 10 s timeout or a queue timeout in microseconds, without a
real sleep.

Timers run their callback in an *empty* :class:`contextvars.Context`: a
timer armed during a request must never keep that request's context (and
with it the request, the response or anything else a contextvar holds)
alive until it fires.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock", "TimerHandle"]

logger = logging.getLogger("resilient.clock")


@runtime_checkable
class TimerHandle(Protocol):
    """What :meth:`Clock.call_at` returns: a timer that can be cancelled."""

    def cancel(self) -> None:
        """Stop the timer; its callback will not run (no error if it already ran)."""
        ...


@runtime_checkable
class Clock(Protocol):
    """A monotonic clock that can sleep (synchronously or not) and arm timers.

    Every policy that waits or times out takes ``clock=`` and uses only
    this interface, so one fake clock drives all of them.
    """

    def now(self) -> float:
        """Seconds on a monotonic scale; only differences are meaningful."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...

    def call_at(self, when: float, callback: Callable[[], object], *, threaded: bool = False) -> TimerHandle:
        """Run ``callback()`` once the clock reaches ``when`` (a :meth:`now` value).

        The callback runs in an empty :class:`contextvars.Context`. Armed
        from a running event loop, it runs on that loop's thread. With
        ``threaded=True``, or with no running loop, it runs on a timer
        thread instead, so it must be quick and thread-safe (set a
        :class:`threading.Event`); synchronous code that blocks while it
        waits for the timer must ask for that, since it blocks the loop it
        runs in. A callback that raises is logged and otherwise ignored.
        """
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic`, :func:`time.sleep`, :func:`asyncio.sleep`.

    Timers armed from a running event loop are that loop's timers
    (``loop.call_at``); timers armed from a thread without a loop share one
    daemon timer thread.
    """

    __slots__ = ()

    #: :func:`time.monotonic` itself, not a method calling it: policies bind
    #: ``clock.now`` once and call it on hot paths.
    now = staticmethod(time.monotonic)

    def sleep(self, seconds: float) -> None:
        """Sleep with :func:`time.sleep`."""
        time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        """Sleep with :func:`asyncio.sleep`."""
        await asyncio.sleep(seconds)

    def call_at(self, when: float, callback: Callable[[], object], *, threaded: bool = False) -> TimerHandle:
        """Arm a timer for the monotonic time ``when``: on the running loop, or on the timer thread."""
        if threaded:
            return _thread_timers().call_at(when, callback)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return _thread_timers().call_at(when, callback)
        # The loop's clock need not be time.monotonic() (uvloop caches its
        # own); translate the delay, not the absolute time.
        return loop.call_at(loop.time() + (when - time.monotonic()), callback, context=contextvars.Context())

    def __repr__(self) -> str:
        return "SystemClock()"


#: The process-wide real clock, the default of every policy.
SYSTEM_CLOCK: Clock = SystemClock()


class _ThreadTimer:
    """A timer of the shared timer thread."""

    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], object]) -> None:
        self.callback: Callable[[], object] | None = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        # Drop the callback at once: a cancelled timer must not keep what it
        # refers to alive until its time comes.
        self.callback = None


class _ThreadTimers:
    """One daemon thread running the system clock's timers for code without an event loop.

    Sync policies need timers only on slow paths (a queued call's timeout),
    so one thread with a heap serves the process, instead of one
    :class:`threading.Timer` thread per wait.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, _ThreadTimer]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def call_at(self, when: float, callback: Callable[[], object]) -> _ThreadTimer:
        timer = _ThreadTimer(callback)
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), timer))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="resilient-timers", daemon=True)
                self._thread.start()
            self._cond.notify()
        return timer

    def _run(self) -> None:
        heap = self._heap
        while True:
            with self._cond:
                while True:
                    while heap and heap[0][2].cancelled:
                        heapq.heappop(heap)
                    if not heap:
                        self._cond.wait()
                        continue
                    delay = heap[0][0] - time.monotonic()
                    if delay <= 0:
                        timer = heapq.heappop(heap)[2]
                        break
                    self._cond.wait(delay)
            callback = timer.callback
            timer.callback = None
            if callback is None:
                continue
            try:
                contextvars.Context().run(callback)
            except Exception:  # a timer must never kill the thread serving the others
                logger.exception("resilient: timer callback %r raised", callback)


_timers_lock = threading.Lock()
_thread_timers_instance: _ThreadTimers | None = None


def _thread_timers() -> _ThreadTimers:
    global _thread_timers_instance
    if _thread_timers_instance is None:
        with _timers_lock:
            if _thread_timers_instance is None:
                _thread_timers_instance = _ThreadTimers()
    return _thread_timers_instance

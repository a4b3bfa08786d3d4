"""Cancel-on-expiry timers for calls in flight, shared by every policy that times out.

A timeout is a timer that cancels the task running a call. Arming and
cancelling one timer per call (``loop.call_at`` + ``cancel`` + the loop's
clean-up of cancelled handles) is the largest part of what
:func:`asyncio.timeout` costs. When every call shares one duration, as all
calls of one :class:`~resilient.Timeout` or one ASGI request timeout do,
their expiries come in the order the calls started: a FIFO queue holds
them and a single clock timer is armed for the oldest running one
(:class:`TimerQueue`). A call then costs a deque append and a state change.

A call whose limit is shorter than the shared one (a deadline cut it) would
break the FIFO order; it gets a timer of its own (:func:`arm`).

Both fire through the same entry (:data:`Expiry`): ``fired`` says whether
the timer, and not something else, cancelled the task, which is what turns a
cancellation into a timeout (with :meth:`asyncio.Task.cancelling` /
:meth:`~asyncio.Task.uncancel`, as :func:`asyncio.timeout` does).

Every timer runs in an empty context (see :mod:`resilient.clock`), and an
entry drops its task as soon as the call is over, so no timer keeps a
finished call's objects alive.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from typing import Any, Final

from resilient.clock import Clock, TimerHandle

__all__ = ["FIRED", "TASK", "WHEN", "Expiry", "LoopQueues", "TimerQueue", "arm", "expiry", "fire"]

# A timer may run up to one clock tick early (asyncio does); entries due
# within that slack fire with it, rather than re-arming a timer for a moment
# that has, for the loop, already come.
_SLACK = time.get_clock_info("monotonic").resolution


#: An expiry entry is a 3-item list ``[when, task, fired]`` (a list, not an
#: object: this is every timed call's only allocation, and a list literal is
#: several times cheaper than an instance): ``when`` is the clock time it
#: expires at; ``task`` the task to cancel, set to ``None`` once the call is
#: over or the timer fired, so the entry never keeps the task alive;
#: ``fired`` whether the timer fired and cancelled the task.
Expiry = list[Any]

WHEN: Final = 0
TASK: Final = 1
FIRED: Final = 2


def expiry(when: float, task: asyncio.Task[Any]) -> Expiry:
    """A new expiry entry for ``task`` at clock time ``when`` (see :data:`Expiry`)."""
    return [when, task, False]


def fire(entry: Expiry) -> None:
    """Cancel the entry's task if its call is still running, and mark the entry fired."""
    task = entry[TASK]
    if task is not None:
        entry[TASK] = None
        entry[FIRED] = True
        task.cancel()


def arm(clock: Clock, entry: Expiry) -> TimerHandle:
    """Give ``entry`` a timer of its own; cancel the returned handle when the call ends."""
    return clock.call_at(entry[WHEN], functools.partial(fire, entry))


class TimerQueue:
    """One clock timer for the expiries of every in-flight call sharing one duration on one loop.

    ``push`` an :data:`Expiry` when a call starts; ``done`` it when the call
    ends, however it ends. Entries must be pushed in expiry order (they are,
    when calls share a duration and a clock); :meth:`push` refuses one that
    would expire before the tail, and the caller then :func:`arm`-s it.
    Calls finishing out of order leave entries behind; they are dropped from
    the head as soon as the head is done, and the queue is compacted when
    more than half of it is dead, so memory follows the calls in flight.
    """

    __slots__ = ("__weakref__", "clock", "entries", "handle", "live", "loop")

    def __init__(self, clock: Clock, loop: asyncio.AbstractEventLoop | None = None) -> None:
        #: The clock the expiries are on.
        self.clock = clock
        #: The loop whose tasks this queue cancels (a queue serves one loop).
        self.loop = loop
        self.entries: deque[Expiry] = deque()
        self.handle: TimerHandle | None = None
        self.live = 0

    def push(self, entry: Expiry) -> bool:
        """Queue ``entry``; ``False`` if it expires before the tail (then :func:`arm` it)."""
        entries = self.entries
        if entries and entry[0] < entries[-1][0]:
            return False
        entries.append(entry)
        self.live += 1
        if self.handle is None:
            self.handle = self.clock.call_at(entry[0], self._fire)
        return True

    def done(self, entry: Expiry) -> None:
        """The call of ``entry`` is over: it will not fire, and its entry goes."""
        if entry[1] is not None:
            entry[1] = None
            self.live -= 1
        entries = self.entries
        if len(entries) == 1 and entries[0] is entry:
            # The common case: a lone call finished before its timer.
            entries.clear()
            return
        while entries and entries[0][1] is None:
            entries.popleft()
        if len(entries) > 2 * self.live + 64:
            self.entries = deque(e for e in entries if e[1] is not None)

    def _fire(self) -> None:
        self.handle = None
        clock = self.clock
        now = clock.now() + _SLACK
        entries = self.entries
        while entries:
            entry = entries[0]
            if entry[1] is None:
                entries.popleft()
                continue
            if entry[0] > now:
                self.handle = clock.call_at(entry[0], self._fire)
                return
            entries.popleft()
            self.live -= 1
            fire(entry)

    def __len__(self) -> int:
        """Calls in flight with an entry in the queue."""
        return self.live

    def __repr__(self) -> str:
        return f"TimerQueue(live={self.live}, entries={len(self.entries)}, armed={self.handle is not None})"


class LoopQueues:
    """The :class:`TimerQueue` of each event loop, for one policy (a queue serves one loop).

    A policy owns one (not each function it wraps), so one-off calls do not
    leave a timer each behind. The hot path reads :attr:`last` and checks
    its ``loop``; :meth:`get` is the slow path (first call on a loop)::

        queue = queues.last
        if queue is None or queue.loop is not loop:
            queue = queues.get(loop)
    """

    __slots__ = ("by_loop", "clock", "last")

    def __init__(self, clock: Clock) -> None:
        #: The clock every queue's expiries are on.
        self.clock = clock
        #: The queue used last (the running loop's, as a rule).
        self.last: TimerQueue | None = None
        #: Each loop's queue. Not weak keys: a queue refers to its loop (and its
        #: armed timer does), so a weak key would never die; the queues of closed
        #: loops are dropped instead whenever a new loop comes.
        self.by_loop: dict[asyncio.AbstractEventLoop, TimerQueue] = {}

    def get(self, loop: asyncio.AbstractEventLoop) -> TimerQueue:
        """The queue of ``loop`` (created on first use); it becomes :attr:`last`.

        A loop that closed is let go when the next new loop comes (one
        ``asyncio.run`` after another, say), so a policy that outlives its
        loops keeps at most the last one.
        """
        by_loop = self.by_loop
        queue = by_loop.get(loop)
        if queue is None:
            # list(): another thread's loop may add its queue meanwhile.
            for old in [each for each in list(by_loop) if each.is_closed()]:
                by_loop.pop(old, None)
            queue = by_loop[loop] = TimerQueue(self.clock, loop)
        self.last = queue
        return queue

    def find(self, loop: asyncio.AbstractEventLoop) -> TimerQueue | None:
        """The queue of ``loop`` if a call ever ran on it (introspection, tests)."""
        return self.by_loop.get(loop)

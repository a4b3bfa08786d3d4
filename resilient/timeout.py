"""Timeout: bound how long an awaited call may take.

``Timeout(2.0)`` cancels the inner call when it has not finished after two
seconds and raises :class:`resilient.TimeoutError` (a subclass of the
builtin :class:`TimeoutError`). The timeout is clamped to the current
deadline (:func:`resilient.deadline`), and a call made when the deadline has
already passed is not started at all.

It keeps :func:`asyncio.timeout`'s cancellation semantics (an outer
``task.cancel()`` is never turned into a timeout, ``Task.cancelling()`` and
``uncancel()`` are balanced) at a quarter of its cost: no context-manager
object and no timer handle per call (see ``_TimerQueue``).

Synchronous functions cannot be interrupted safely in Python, so wrapping
one raises :class:`TypeError` at wrap time.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections import deque
from collections.abc import Iterable
from typing import Any

from resilient.clock import SYSTEM_CLOCK
from resilient.deadline import Deadline
from resilient.deadline import _current as _current_deadline
from resilient.errors import TimeoutError
from resilient.events import TIMEOUT, EventSite, Listener, Severity
from resilient.policy import AsyncFn, AsyncWrapped, Policy, SyncFn

__all__ = ["Timeout"]


def _fire(task: asyncio.Task[Any], fired: list[bool]) -> None:
    fired.append(True)
    task.cancel()


# Deadlines set by Timeout are on the system clock, like the loop's timers.
_now = SYSTEM_CLOCK.now

# Entry states in a _TimerQueue.
_RUNNING, _DONE, _FIRED = 0, 1, 2
# asyncio runs a timer up to one clock tick early; so do we, to avoid
# rescheduling a timer for a moment that has, for the loop, already come.
_SLACK = time.get_clock_info("monotonic").resolution


class _TimerQueue:
    """One event-loop timer for every in-flight call of one Timeout on one loop.

    All calls of a Timeout share its duration, so their expiry times are
    ordered like their start times: a FIFO queue holds them, and a single
    ``loop.call_at`` handle is armed for the oldest running entry. A call
    then costs a deque append and a state change instead of a ``TimerHandle``
    allocation, a heap push and a cancellation (about 1.3 us on CPython).
    Calls finishing out of order leave entries behind; they are dropped from
    the head as soon as the head is done, and the queue is compacted when
    more than half of it is dead.
    """

    __slots__ = ("__weakref__", "entries", "handle", "live", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.entries: deque[list[Any]] = deque()
        self.handle: asyncio.TimerHandle | None = None
        self.live = 0

    def done(self, entry: list[Any]) -> None:
        """Retire ``entry`` (any state) and drop dead entries from the head."""
        if entry[2] == _RUNNING:
            entry[2] = _DONE
        self.live -= 1
        entries = self.entries
        while entries and entries[0][2] != _RUNNING:
            entries.popleft()
        if len(entries) > 2 * self.live + 64:
            self.entries = deque(e for e in entries if e[2] == _RUNNING)

    def _fire(self) -> None:
        self.handle = None
        now = self.loop.time() + _SLACK
        entries = self.entries
        while entries:
            entry = entries[0]
            if entry[2] != _RUNNING:
                entries.popleft()
                continue
            if entry[0] > now:
                self.handle = self.loop.call_at(entry[0], self._fire)
                return
            entries.popleft()
            entry[2] = _FIRED
            entry[1].cancel()


class Timeout(Policy):
    """Cancel the awaited call after ``seconds`` and raise :class:`resilient.TimeoutError`.

    Args:
        seconds: the time limit, > 0 and finite.
        name: shown in errors, events and status.
        listeners: event listeners for this policy only.

    Put one outside :class:`~resilient.Retry` for a total limit and one
    inside it for a per-attempt limit.

    With ``set_deadline=True`` the call also runs under
    ``deadline(seconds)``, so that what is inside sees the limit: a
    :class:`~resilient.Retry` inside never starts a backoff that would
    outlive it, and the httpx transport sends it downstream. (When an
    earlier deadline is already in force, that one stays.)
    """

    policy_type = "timeout"

    def __init__(
        self,
        seconds: float,
        *,
        set_deadline: bool = False,
        name: str | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        super().__init__(name=name, listeners=listeners)
        if not isinstance(set_deadline, bool):
            raise TypeError(f"set_deadline must be a bool, got {set_deadline!r}")
        self.set_deadline = set_deadline
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError(f"seconds must be a number, got {seconds!r}")
        if math.isnan(seconds) or math.isinf(seconds) or seconds <= 0:
            raise ValueError(f"seconds must be a finite number > 0, got {seconds!r}")
        self.seconds = float(seconds)

    def _wrap_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        raise TypeError(
            f"{self._label()} can only wrap async functions: a running synchronous call cannot be "
            "interrupted safely in Python. Make the function async, or give the blocking client "
            "its own timeout (socket/HTTP timeouts)."
        )

    def _wrap_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        seconds = self.seconds
        set_deadline = self.set_deadline
        current = _current_deadline
        get_loop = asyncio.get_running_loop
        current_task = asyncio.current_task
        queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _TimerQueue] = weakref.WeakKeyDictionary()
        # The queue of the loop seen last: one attribute check per call instead
        # of a weak-dictionary lookup.
        last: list[_TimerQueue | None] = [None]

        async def clamped_call(limit: float, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            # A deadline shortened this call's limit, so it cannot join the
            # FIFO queue: give it a timer of its own.
            loop = get_loop()
            task = current_task(loop)
            if task is None:  # pragma: no cover - awaited outside a task
                raise RuntimeError("Timeout must be awaited inside an asyncio task")
            cancelling = task.cancelling()
            fired: list[bool] = []
            handle = loop.call_at(loop.time() + limit, _fire, task, fired)
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                handle.cancel()
                if fired and task.uncancel() <= cancelling and isinstance(exc, asyncio.CancelledError):
                    raise self._expired(site, limit, by_deadline=True) from exc
                raise
            handle.cancel()
            if fired:
                task.uncancel()
            return result

        async def timeout_call(*args: Any, **kwargs: Any) -> Any:
            d = current.get()
            if d is not None:
                left = d.expires_at - d.clock.now()
                if left < seconds:
                    if left <= 0:
                        raise self._expired(site, 0.0, by_deadline=True)
                    return await clamped_call(left, args, kwargs)
            task = current_task()
            if task is None:  # pragma: no cover - awaited outside a task
                raise RuntimeError("Timeout must be awaited inside an asyncio task")
            loop = task.get_loop()
            queue = last[0]
            if queue is None or queue.loop is not loop:
                queue = queues.get(loop)
                if queue is None:
                    queue = queues[loop] = _TimerQueue(loop)
                last[0] = queue
            cancelling = task.cancelling()
            # queue.push(), inlined: this is the whole per-call cost.
            entry: list[Any] = [loop.time() + seconds, task, _RUNNING]
            queue.entries.append(entry)
            queue.live += 1
            if queue.handle is None:
                queue.handle = loop.call_at(entry[0], queue._fire)
            # Our limit is the nearest one (a nearer deadline took the clamped
            # path): publish it to what runs inside.
            token = current.set(Deadline(_now() + seconds)) if set_deadline else None
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                if token is not None:
                    current.reset(token)
                fired = entry[2] == _FIRED
                queue.done(entry)
                # Only a cancellation that we requested, with no other request
                # pending, becomes a timeout; an outer cancel always wins.
                if fired and task.uncancel() <= cancelling and isinstance(exc, asyncio.CancelledError):
                    raise self._expired(site, seconds, by_deadline=False) from exc
                raise
            if token is not None:
                current.reset(token)
            if entry[2] == _RUNNING:
                # queue.done(), inlined for the common case: the call finished
                # first in line, before its timer.
                entry[2] = _DONE
                queue.live -= 1
                entries = queue.entries
                if entries[0] is entry and len(entries) == 1:
                    entries.popleft()
                else:
                    queue.live += 1
                    queue.done(entry)
                return result
            # The timer fired but the call finished anyway (it swallowed the
            # cancellation): balance the cancel request we made.
            task.uncancel()
            queue.done(entry)
            return result

        return timeout_call

    def _expired(self, site: EventSite, limit: float, *, by_deadline: bool) -> TimeoutError:
        self._emit(site, TIMEOUT, Severity.WARNING, duration=limit, extras={"deadline": by_deadline})
        if by_deadline:
            msg = f"{self._label()}: the deadline expired" + (f" after {limit:.3g} s" if limit > 0 else "")
        else:
            msg = f"{self._label()} expired after {limit:.3g} s"
        return TimeoutError(msg, timeout=limit, policy=self.name)

    def __repr__(self) -> str:
        extra = ", set_deadline=True" if self.set_deadline else ""
        return f"Timeout({self.seconds}{extra}, name={self.name!r})"

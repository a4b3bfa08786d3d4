"""Timeout: bound how long an awaited call may take.

``Timeout(2.0)`` cancels the inner call when it has not finished after two
seconds and raises :class:`resilient.TimeoutError` (a subclass of the
builtin :class:`TimeoutError`). The timeout is clamped to the current
deadline (:func:`resilient.deadline`), and a call made when the deadline has
already passed is not started at all.

It keeps :func:`asyncio.timeout`'s cancellation semantics (an outer
``task.cancel()`` is never turned into a timeout, ``Task.cancelling()`` and
``uncancel()`` are balanced) at a quarter of its cost: no context-manager
object and no timer handle per call (one :class:`resilient.timers.TimerQueue`
per policy and event loop). Its timers are its ``clock``'s, so
:class:`resilient.testing.FakeClock` drives it in tests.

Synchronous functions cannot be interrupted safely in Python, so wrapping
one raises :class:`TypeError` at wrap time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from resilient.clock import Clock
from resilient.deadline import current_deadline, limit_for, narrow_deadline, reset_deadline
from resilient.errors import TimeoutError
from resilient.events import EXTRA_DEADLINE, TIMEOUT, EventSite, Listener, Severity
from resilient.policy import AsyncFn, AsyncWrapped, Policy, SyncFn
from resilient.timers import FIRED, LoopQueues, arm
from resilient.validate import check_bool, check_clock, check_number

__all__ = ["Timeout"]


class Timeout(Policy):
    """Cancel the awaited call after ``seconds`` and raise :class:`resilient.TimeoutError`.

    Args:
        seconds: the time limit, > 0 and finite.
        set_deadline: also run the call under ``deadline(seconds)`` (see below).
        name: shown in errors, events and status.
        clock: the clock its timers run on (tests pass a ``FakeClock``).
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
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        super().__init__(name=name, listeners=listeners)
        self.set_deadline = check_bool(set_deadline, "set_deadline")
        self.seconds = check_number(seconds, "seconds")
        self.clock: Clock = check_clock(clock)
        # One queue per event loop, shared by every function this policy
        # wraps and every run().
        self._queues = LoopQueues(self.clock)

    def build_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        raise TypeError(
            f"{self.label()} can only wrap async functions: a running synchronous call cannot be "
            "interrupted safely in Python. Make the function async, or give the blocking client "
            "its own timeout (socket/HTTP timeouts)."
        )

    def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        seconds = self.seconds
        set_deadline = self.set_deadline
        clock = self.clock
        now = clock.now
        current = current_deadline
        current_task = asyncio.current_task
        queues = self._queues

        async def clamped_call(limit: float, task: asyncio.Task[Any], args: Any, kwargs: Any) -> Any:
            # A deadline shortened this call's limit, so it cannot join the
            # FIFO queue: it gets a timer of its own.
            cancelling = task.cancelling()
            entry = [now() + limit, task, False]
            handle = arm(clock, entry)
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                handle.cancel()
                entry[1] = None
                if entry[FIRED] and task.uncancel() <= cancelling and isinstance(exc, asyncio.CancelledError):
                    raise self._expired(site, limit, by_deadline=True) from exc
                raise
            handle.cancel()
            entry[1] = None
            if entry[FIRED]:
                task.uncancel()
            return result

        async def timeout_call(*args: Any, **kwargs: Any) -> Any:
            task = current_task()
            if task is None:  # pragma: no cover - awaited outside a task
                raise RuntimeError("Timeout must be awaited inside an asyncio task")
            if current() is not None:  # no deadline costs one lookup; with one, does it cut our limit?
                left, by_deadline = limit_for(seconds)
                if by_deadline:
                    if left <= 0:
                        raise self._expired(site, 0.0, by_deadline=True)
                    return await clamped_call(left, task, args, kwargs)
            loop = task.get_loop()
            queue = queues.last
            if queue is None or queue.loop is not loop:
                queue = queues.get(loop)
            cancelling = task.cancelling()
            # timers.expiry(), inlined: the one allocation of a timed call.
            entry = [now() + seconds, task, False]
            if not queue.push(entry):  # pragma: no cover - a clock that went backwards
                return await clamped_call(seconds, task, args, kwargs)
            # Our limit is the nearest one (a nearer deadline took the clamped
            # path): publish it to what runs inside.
            token = narrow_deadline(seconds, clock) if set_deadline else None
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                if token is not None:
                    reset_deadline(token)
                queue.done(entry)
                # Only a cancellation that we requested, with no other request
                # pending, becomes a timeout; an outer cancel always wins.
                if entry[FIRED] and task.uncancel() <= cancelling and isinstance(exc, asyncio.CancelledError):
                    raise self._expired(site, seconds, by_deadline=False) from exc
                raise
            if token is not None:
                reset_deadline(token)
            entries = queue.entries
            if len(entries) == 1 and entries[0] is entry:
                # TimerQueue.done()'s common case, inlined (a lone call that
                # finished before its timer): it is most of a call's cost.
                entries.clear()
                queue.live -= 1
                return result
            queue.done(entry)
            if entry[FIRED]:
                # The timer fired but the call finished anyway (it swallowed
                # the cancellation): balance the cancel request we made.
                task.uncancel()
            return result

        return timeout_call

    def _expired(self, site: EventSite, limit: float, *, by_deadline: bool) -> TimeoutError:
        self.emit(site, TIMEOUT, Severity.WARNING, duration=limit, extras={EXTRA_DEADLINE: by_deadline})
        if by_deadline:
            msg = f"{self.label()}: the deadline expired" + (f" after {limit:.3g} s" if limit > 0 else "")
        else:
            msg = f"{self.label()} expired after {limit:.3g} s"
        return TimeoutError(msg, timeout=limit, policy=self.name)

    def __repr__(self) -> str:
        extra = ", set_deadline=True" if self.set_deadline else ""
        return f"Timeout({self.seconds}{extra}, name={self.name!r})"

"""Timeout: bound how long an awaited call may take.

``Timeout(2.0)`` cancels the inner call when it has not finished after two
seconds and raises :class:`resilient.TimeoutError` (a subclass of the
builtin :class:`TimeoutError`). The timeout is clamped to the current
deadline (:func:`resilient.deadline`), and a call made when the deadline has
already passed is not started at all.

It keeps :func:`asyncio.timeout`'s cancellation semantics (an outer
``task.cancel()`` is never turned into a timeout, ``Task.cancelling()`` and
``uncancel()`` are balanced) at half its cost: one ``loop.call_at`` and no
context-manager object per call.

Synchronous functions cannot be interrupted safely in Python, so wrapping
one raises :class:`TypeError` at wrap time.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from typing import Any

from resilient.deadline import _current as _current_deadline
from resilient.errors import TimeoutError
from resilient.events import TIMEOUT, EventSite, Listener, Severity
from resilient.policy import AsyncFn, AsyncWrapped, Policy, SyncFn

__all__ = ["Timeout"]


def _fire(task: asyncio.Task[Any], fired: list[bool]) -> None:
    fired.append(True)
    task.cancel()


class Timeout(Policy):
    """Cancel the awaited call after ``seconds`` and raise :class:`resilient.TimeoutError`.

    Args:
        seconds: the time limit, > 0 and finite.
        name: shown in errors, events and status.
        listeners: event listeners for this policy only.

    Put one outside :class:`~resilient.Retry` for a total limit and one
    inside it for a per-attempt limit.
    """

    policy_type = "timeout"

    def __init__(self, seconds: float, *, name: str | None = None, listeners: Iterable[Listener] = ()) -> None:
        super().__init__(name=name, listeners=listeners)
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
        current = _current_deadline
        get_loop = asyncio.get_running_loop
        current_task = asyncio.current_task

        async def timeout_call(*args: Any, **kwargs: Any) -> Any:
            limit = seconds
            d = current.get()
            if d is not None:
                left = d.expires_at - d.clock.now()
                if left < limit:
                    if left <= 0:
                        raise self._expired(site, 0.0, by_deadline=True)
                    limit = left
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
                # Only a cancellation that we requested, with no other request
                # pending, becomes a timeout; an outer cancel always wins.
                if fired and task.uncancel() <= cancelling and isinstance(exc, asyncio.CancelledError):
                    raise self._expired(site, limit, by_deadline=limit < seconds) from exc
                raise
            handle.cancel()
            if fired:
                # The timer fired but the call finished anyway (it swallowed the
                # cancellation): balance the cancel request we made.
                task.uncancel()
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
        return f"Timeout({self.seconds}, name={self.name!r})"

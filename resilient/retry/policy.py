"""The :class:`Retry` policy: its options, and the sync and async shells over the engine."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from resilient.backoff import Backoff, exponential
from resilient.clock import SYSTEM_CLOCK, Clock
from resilient.events import EventSite, Listener
from resilient.policy import (
    AsyncFn,
    AsyncWrapped,
    OnArg,
    Policy,
    SyncFn,
    exception_predicate,
    is_async_callable,
    operation_name,
    result_predicate,
)
from resilient.retry import _shell_async, _shell_sync
from resilient.retry.engine import DelayHint, GiveUp, RetryBudgetLike
from resilient.validate import check_callable, check_int, check_seconds

__all__ = ["GiveUpHook", "Retry"]

logger = logging.getLogger("resilient.retry")

#: ``Retry(on_give_up=...)``: a function or an ``async def`` taking a :class:`~resilient.retry.GiveUp`.
GiveUpHook = Callable[[GiveUp], "Awaitable[object] | object"]


class Retry(Policy):
    """Call again on handled failures, up to ``attempts`` calls in all.

    Args:
        attempts: total calls, the first included (``attempts=3``: two retries).
        backoff: a :class:`~resilient.backoff.Backoff`, a callable
            ``(retry_number) -> seconds``, or a tenacity ``wait_*`` object.
            Default: ``exponential(0.1, jitter="full")``.
        on: exceptions to retry: a type, a tuple of types or a predicate.
            Default: ``Exception``.
        on_result: predicate flagging results to retry (e.g. a 503 response).
        max_delay: cap on any single delay, backoff or hint (seconds);
            with ``max_hint`` set, on the backoff only. ``None``: no cap; an
            infinite delay is then ignored as garbage.
        max_elapsed: give up instead of sleeping past this many seconds
            since the start of the first attempt.
        delay_hint: ``(result_or_exception) -> seconds | None``; a number
            overrides the backoff for that retry (``Retry-After``), capped by
            ``max_delay`` (or judged by ``max_hint``); ``None`` or garbage
            falls back to the backoff.
        max_hint: the longest hint the retry waits for (seconds). ``None``
            (the default): a hint is clamped to ``max_delay``, as any delay,
            so the next attempt may come *before* the server said.
            A number: a hint up to ``max_hint`` is waited in full, even past
            ``max_delay``; a longer one is not shortened: the retry gives up
            at once, with a note (reason ``"hint"``; the ``GiveUp`` record's
            ``retry_after`` says when the server expects the call again).
        budget: a shared :class:`~resilient.RetryBudget`.
        on_give_up: called once, with a :class:`~resilient.retry.GiveUp`
            record (outcome, attempts, elapsed time, reason, the call's
            arguments), when the retry gives up on a retryable failure:
            attempts exhausted (test mode included), budget spent,
            ``max_elapsed`` or the deadline reached, a hint longer than
            ``max_hint``. Not called on a success, nor for an outcome that
            is not retried at all (an exception ``on`` does not match,
            cancellation): that one was never the retry's to give up. A
            function or an ``async def`` (awaited; async functions only: a
            synchronous function's retry refuses an ``async def`` hook at
            wrap time). What it raises is logged on ``resilient.retry`` and
            does not replace the outcome, which is returned or re-raised
            after it. With a hook, the retry reads the clock when the first
            attempt starts (as with ``max_elapsed``), so that ``elapsed`` is
            the whole time.
        clock: time source for sleeping (tests: ``FakeClock``).
        name: shown in notes, events and status.
        listeners: event listeners for this policy only.

    A retry is never started when the current deadline
    (:func:`resilient.deadline`) would expire during its backoff: the last
    outcome is returned or re-raised at once, with a note.
    """

    policy_type = "retry"

    def __init__(
        self,
        attempts: int = 3,
        *,
        backoff: Backoff | Callable[[int], float] | Any | None = None,
        on: OnArg | None = Exception,
        on_result: Callable[[Any], bool] | None = None,
        max_delay: float | None = 30.0,
        max_elapsed: float | None = None,
        delay_hint: DelayHint | None = None,
        max_hint: float | None = None,
        budget: RetryBudgetLike | None = None,
        on_give_up: GiveUpHook | None = None,
        clock: Clock | None = None,
        name: str | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        super().__init__(name=name, listeners=listeners)
        self.attempts = check_int(attempts, "attempts")
        if backoff is None:
            backoff = exponential(0.1, jitter="full")
        elif not (isinstance(backoff, Backoff) or callable(backoff)):
            raise TypeError(
                f"backoff must be a Backoff, a callable (retry) -> seconds or a tenacity wait, got {backoff!r}"
            )
        self.backoff = backoff
        self._on = exception_predicate(on)
        self._on_result = result_predicate(on_result)
        self.max_delay = check_seconds(max_delay, "max_delay", allow_zero=True, allow_none=True)
        self.max_elapsed = check_seconds(max_elapsed, "max_elapsed", allow_zero=True, allow_none=True)
        self.delay_hint = check_callable(delay_hint, "delay_hint", allow_none=True)
        self.max_hint = check_seconds(max_hint, "max_hint", allow_zero=True, allow_none=True)
        if budget is not None and not (hasattr(budget, "record_request") and hasattr(budget, "try_spend")):
            raise TypeError(f"budget must be a RetryBudget, got {budget!r}")
        self.budget = budget
        self.on_give_up: GiveUpHook | None = check_callable(
            on_give_up, "on_give_up", "a callable taking a GiveUp record", allow_none=True
        )
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        self._budget_warned_at = -float("inf")

    # -- the shells: call, hand the outcome to the engine, sleep what it says --

    def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        """The async shell over :class:`~resilient.retry.engine.RetryEngine` (``retry/_shell_async.py``)."""
        return _shell_async.build_async(self, fn, site)

    def build_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        """The sync shell, generated from the async one: the same, with ``clock.sleep`` for the waits."""
        return _shell_sync.build_sync(self, fn, site)

    def _prelude(self) -> tuple[Callable[[], float | None] | None, bool]:
        """What each call does before its first attempt, and whether it reads the start time.

        The prelude counts the call in the budget and reads the start of the
        first attempt (``max_elapsed`` and a give-up hook's ``elapsed`` count
        from it): ``None`` for a plain retry, whose success path then costs
        one truth test (``pre and pre()``); the budget's own
        ``record_request`` (its result ignored: ``timed`` is False) when only
        the budget has work to do.
        """
        budget = self.budget
        # Bound once (the system clock's now is time.monotonic itself), and only when something reads it.
        now = self.clock.now if self.max_elapsed is not None or self.on_give_up is not None else None
        if budget is None:
            return now, now is not None
        if now is None:
            return budget.record_request, False
        record, read = budget.record_request, now

        def count_and_start() -> float:
            record()
            return read()

        return count_and_start, True

    def build(self, fn: Callable[..., Any], site: EventSite, is_async: bool) -> Callable[..., Any]:
        """See :meth:`Policy.build`; refuses an ``async def`` ``on_give_up`` for a synchronous function.

        Raises:
            TypeError: ``fn`` is synchronous and ``on_give_up`` is async: the
                retry of a synchronous call has no event loop to await it on.
        """
        if not is_async and self.on_give_up is not None and is_async_callable(self.on_give_up):
            raise TypeError(
                f"{self.label()}: on_give_up={self.on_give_up!r} is async, but "
                f"{operation_name(fn)!r} is a synchronous function: its retry cannot await the hook; "
                "pass a synchronous on_give_up"
            )
        return super().build(fn, site, is_async)

    def __repr__(self) -> str:
        return f"Retry(attempts={self.attempts}, backoff={self.backoff!r}, name={self.name!r})"

"""Retry: call again when a call fails, after a backoff delay.

The success path is one ``await`` inside a ``try``: the backoff iterator,
the clock and the event objects are created only after a failure.

Outcomes:

* an exception matched by ``on`` is retried; when the attempts run out the
  last exception is re-raised as itself, with a note saying how many
  attempts were made;
* a result flagged by ``on_result`` is retried; when the attempts run out
  the last result is *returned* (an HTTP 503 response stays a response);
* anything else (other exceptions, cancellation, ``KeyboardInterrupt``) goes
  straight through, never retried.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar, Token
from time import perf_counter
from typing import Any, Protocol

from resilient.backoff import Backoff, exponential
from resilient.clock import SYSTEM_CLOCK, Clock, SystemClock
from resilient.deadline import remaining as _remaining
from resilient.events import BUDGET_EXHAUSTED, RETRY, EventSite, Listener, Severity, _duration_listeners
from resilient.policy import (
    AsyncFn,
    AsyncWrapped,
    OnArg,
    Outcome,
    Policy,
    SyncFn,
    exception_predicate,
    result_predicate,
)
from resilient.testing import TEST_MODE

__all__ = ["Retry", "RetryBudgetLike", "current_attempt"]

logger = logging.getLogger("resilient.retry")

_attempt: ContextVar[int] = ContextVar("resilient_attempt", default=1)
# How many retries are past their first attempt right now, process-wide. While
# none is, no code runs inside a retried attempt, so the first attempt of a
# call can leave _attempt alone (it reads 1); the hot path tests only this.
_retrying = [0]
_retrying_lock = threading.Lock()
_BUDGET_WARNING_INTERVAL = 10.0


def current_attempt() -> int:
    """The attempt number of the innermost retry running this code (1 = first)."""
    return _attempt.get()


class RetryBudgetLike(Protocol):
    """What :class:`Retry` needs of a budget (see :class:`resilient.RetryBudget`)."""

    def record_request(self) -> None:
        """Count one call."""
        ...

    def try_spend(self) -> bool:
        """Take one retry, or say there is none left."""
        ...


DelayHint = Callable[[Any], "float | None"]


class _TenacityOutcome:
    """Just enough of a ``concurrent.futures.Future`` for tenacity's waits."""

    __slots__ = ("_outcome",)

    def __init__(self, outcome: Outcome[Any]) -> None:
        self._outcome = outcome

    @property
    def failed(self) -> bool:
        return self._outcome.exception is not None

    def exception(self) -> BaseException | None:
        return self._outcome.exception

    def result(self) -> Any:
        if self._outcome.exception is not None:
            raise self._outcome.exception
        return self._outcome.result


class _TenacityState:
    """Just enough of tenacity's ``RetryCallState`` for its wait strategies."""

    __slots__ = ("attempt_number", "idle_for", "outcome", "outcome_timestamp", "seconds_since_start", "start_time")

    def __init__(self, attempt: int, outcome: Outcome[Any], elapsed: float, idle: float) -> None:
        self.attempt_number = attempt
        self.outcome = _TenacityOutcome(outcome)
        self.seconds_since_start = elapsed
        self.idle_for = idle
        self.start_time = 0.0
        self.outcome_timestamp = elapsed


def _is_tenacity_wait(obj: object) -> bool:
    return type(obj).__module__.split(".", 1)[0] == "tenacity"


def _finite_delay(value: Any, max_delay: float | None) -> float | None:
    """A delay from a user callable or a hint: ignore what is not a sane number.

    An infinite delay is clamped to ``max_delay`` like any huge one; with no
    ``max_delay`` it is ignored like NaN (it would sleep forever, or make
    ``time.sleep`` raise ``OverflowError``).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        delay = float(value)
    except OverflowError:  # an int too large for a float: as good as infinite
        delay = math.inf
    if math.isnan(delay) or delay < 0:
        return None
    if math.isinf(delay):
        return max_delay
    return delay


def _check_seconds(value: float | None, param: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{param} must be a number of seconds or None, got {value!r}")
    if math.isnan(value) or value < 0 or math.isinf(value):
        raise ValueError(f"{param} must be a finite number >= 0, got {value!r}")
    return float(value)


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
        max_delay: cap on any single delay, backoff or hint (seconds).
            ``None``: no cap; an infinite delay is then ignored as garbage.
        max_elapsed: give up instead of sleeping past this many seconds
            since the start of the first attempt.
        delay_hint: ``(result_or_exception) -> seconds | None``; a number
            overrides the backoff for that retry (``Retry-After``), capped by
            ``max_delay``; ``None`` or garbage falls back to the backoff.
        budget: a shared :class:`~resilient.RetryBudget`.
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
        budget: RetryBudgetLike | None = None,
        clock: Clock | None = None,
        name: str | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        super().__init__(name=name, listeners=listeners)
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            raise TypeError(f"attempts must be an int >= 1, got {attempts!r}")
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts!r}")
        self.attempts = attempts
        if backoff is None:
            backoff = exponential(0.1, jitter="full")
        elif not (isinstance(backoff, Backoff) or callable(backoff)):
            raise TypeError(
                f"backoff must be a Backoff, a callable (retry) -> seconds or a tenacity wait, got {backoff!r}"
            )
        self.backoff = backoff
        self._on = exception_predicate(on)
        self._on_result = result_predicate(on_result)
        self.max_delay = _check_seconds(max_delay, "max_delay")
        self.max_elapsed = _check_seconds(max_elapsed, "max_elapsed")
        if delay_hint is not None and not callable(delay_hint):
            raise TypeError(f"delay_hint must be a callable or None, got {delay_hint!r}")
        self.delay_hint = delay_hint
        if budget is not None and not (hasattr(budget, "record_request") and hasattr(budget, "try_spend")):
            raise TypeError(f"budget must be a RetryBudget, got {budget!r}")
        self.budget = budget
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        self._budget_warned_at = -math.inf

    # -- wrappers ------------------------------------------------------------

    def _wrap_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        on = self._on
        on_result = self._on_result
        budget = self.budget
        durations = _duration_listeners
        retrying = _retrying
        now = _now_of(self.clock)
        timed = self.max_elapsed is not None

        async def slow(first: Outcome[Any], start: float | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            run = _Run(self, site, first, start)
            try:
                while (delay := run.next_delay()) is not None:
                    if delay > 0:
                        await self.clock.asleep(delay)
                    t0 = run.begin_attempt()
                    try:
                        result = await fn(*args, **kwargs)
                    except BaseException as exc:
                        if not run.failed_with(exc, t0):
                            raise
                        continue
                    if not run.failed_with_result(result, t0):
                        return result
                return run.give_up()
            finally:
                run.close()

        if self.attempts == 1 and budget is None:
            return _passthrough_async(fn)

        async def careful_first(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            """The first attempt when the fast path is not enough: timed, inside a retried attempt, or max_elapsed."""
            start = now() if timed else None
            # Inside another retry's later attempt, this call's first attempt is attempt 1.
            token = _attempt.set(1) if _attempt.get() != 1 else None
            try:
                t0 = perf_counter() if durations else 0.0
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    if durations:
                        site.record_duration("attempt", perf_counter() - t0, "failure")
                    if not isinstance(exc, Exception) or not on(exc):
                        raise
                    outcome: Outcome[Any] = Outcome(exception=exc)
                else:
                    failed = on_result is not None and on_result(result)
                    if durations:
                        site.record_duration("attempt", perf_counter() - t0, "failure" if failed else "success")
                    if not failed:
                        return result
                    outcome = Outcome(result=result)
                return await slow(outcome, start, args, kwargs)
            finally:
                if token is not None:
                    _attempt.reset(token)

        if timed:
            # max_elapsed counts from the start of the first attempt: the one
            # clock read that plain retries spare their success path.

            async def timed_retry_call(*args: Any, **kwargs: Any) -> Any:
                if budget is not None:
                    budget.record_request()
                if durations or retrying[0]:
                    return await careful_first(args, kwargs)
                start = now()
                try:
                    result = await fn(*args, **kwargs)
                except Exception as exc:
                    if not on(exc):
                        raise
                    outcome: Outcome[Any] = Outcome(exception=exc)
                else:
                    if on_result is None or not on_result(result):
                        return result
                    outcome = Outcome(result=result)
                return await slow(outcome, start, args, kwargs)

            return timed_retry_call

        async def retry_call(*args: Any, **kwargs: Any) -> Any:
            if budget is not None:
                budget.record_request()
            if durations or retrying[0]:
                return await careful_first(args, kwargs)
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                if not on(exc):
                    raise
                outcome: Outcome[Any] = Outcome(exception=exc)
            else:
                if on_result is None or not on_result(result):
                    return result
                outcome = Outcome(result=result)
            # Outside the except block, so that a re-raised exception does not
            # carry itself as its own context.
            return await slow(outcome, None, args, kwargs)

        return retry_call

    def _wrap_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        on = self._on
        on_result = self._on_result
        budget = self.budget
        durations = _duration_listeners
        retrying = _retrying
        now = _now_of(self.clock)
        timed = self.max_elapsed is not None

        def slow(first: Outcome[Any], start: float | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            run = _Run(self, site, first, start)
            try:
                while (delay := run.next_delay()) is not None:
                    if delay > 0:
                        self.clock.sleep(delay)
                    t0 = run.begin_attempt()
                    try:
                        result = fn(*args, **kwargs)
                    except BaseException as exc:
                        if not run.failed_with(exc, t0):
                            raise
                        continue
                    if not run.failed_with_result(result, t0):
                        return result
                return run.give_up()
            finally:
                run.close()

        if self.attempts == 1 and budget is None:
            return fn

        def careful_first(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            """The first attempt when the fast path is not enough (see the async one)."""
            start = now() if timed else None
            token = _attempt.set(1) if _attempt.get() != 1 else None
            try:
                t0 = perf_counter() if durations else 0.0
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    if durations:
                        site.record_duration("attempt", perf_counter() - t0, "failure")
                    if not isinstance(exc, Exception) or not on(exc):
                        raise
                    outcome: Outcome[Any] = Outcome(exception=exc)
                else:
                    failed = on_result is not None and on_result(result)
                    if durations:
                        site.record_duration("attempt", perf_counter() - t0, "failure" if failed else "success")
                    if not failed:
                        return result
                    outcome = Outcome(result=result)
                return slow(outcome, start, args, kwargs)
            finally:
                if token is not None:
                    _attempt.reset(token)

        if timed:

            def timed_retry_call(*args: Any, **kwargs: Any) -> Any:
                if budget is not None:
                    budget.record_request()
                if durations or retrying[0]:
                    return careful_first(args, kwargs)
                start = now()
                try:
                    result = fn(*args, **kwargs)
                except Exception as exc:
                    if not on(exc):
                        raise
                    outcome: Outcome[Any] = Outcome(exception=exc)
                else:
                    if on_result is None or not on_result(result):
                        return result
                    outcome = Outcome(result=result)
                return slow(outcome, start, args, kwargs)

            return timed_retry_call

        def retry_call(*args: Any, **kwargs: Any) -> Any:
            if budget is not None:
                budget.record_request()
            if durations or retrying[0]:
                return careful_first(args, kwargs)
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                if not on(exc):
                    raise
                outcome: Outcome[Any] = Outcome(exception=exc)
            else:
                if on_result is None or not on_result(result):
                    return result
                outcome = Outcome(result=result)
            return slow(outcome, None, args, kwargs)

        return retry_call

    def __repr__(self) -> str:
        return f"Retry(attempts={self.attempts}, backoff={self.backoff!r}, name={self.name!r})"


def _now_of(clock: Clock) -> Callable[[], float]:
    """The clock's ``now``; the system clock's is read straight from time.monotonic (one call less)."""
    return time.monotonic if type(clock) is SystemClock else clock.now


def _passthrough_async(fn: AsyncFn) -> AsyncWrapped:
    async def retry_call(*args: Any, **kwargs: Any) -> Any:
        return await fn(*args, **kwargs)

    return retry_call


class _Run:
    """The state of one call after its first failure, shared by the sync and async loops.

    Created only on the failure path, so its cost never touches a success.
    """

    __slots__ = (
        "attempt",
        "delays",
        "elapsed",
        "from_start",
        "idle",
        "outcome",
        "policy",
        "reason",
        "site",
        "start",
        "token",
    )

    def __init__(self, policy: Retry, site: EventSite, first: Outcome[Any], start: float | None) -> None:
        self.policy = policy
        self.site = site
        self.outcome = first
        # The start of the first attempt when it was read (max_elapsed needs
        # it); otherwise the first failure: the fast path reads no clock.
        self.from_start = start is not None
        self.start = start if start is not None else policy.clock.now()
        backoff = policy.backoff
        self.delays: Iterator[float] | None = backoff.delays() if isinstance(backoff, Backoff) else None
        self.attempt = 1
        self.idle = 0.0
        self.elapsed = 0.0
        self.reason: str | None = None
        self.token: Token[int] | None = None

    def next_delay(self) -> float | None:
        """The delay before the next attempt, or None when the retry must give up."""
        policy = self.policy
        self.elapsed = policy.clock.now() - self.start
        delay = self._delay()
        if TEST_MODE.active:
            # set_testing(): no waiting, and at most TEST_MODE.attempts attempts.
            delay = 0.0
            if self.attempt >= TEST_MODE.attempts:
                self.reason = f"gave up after {self.attempt} attempt{'s' if self.attempt > 1 else ''} (test mode)"
                return None
        self.reason = self._give_up_reason(delay)
        if self.reason is not None:
            return None
        policy._emit(
            self.site, RETRY, Severity.INFO, attempt=self.attempt + 1, duration=delay, exception=self.outcome.exception
        )
        self.idle += delay
        return delay

    def begin_attempt(self) -> float:
        """Count the attempt, publish its number, and return its start time if durations are recorded."""
        self.attempt += 1
        if self.token is None:
            self.token = _attempt.set(self.attempt)
            with _retrying_lock:
                _retrying[0] += 1
        else:
            _attempt.set(self.attempt)
        return perf_counter() if _duration_listeners else 0.0

    def failed_with(self, exc: BaseException, t0: float) -> bool:
        """Record a raised exception; True when it is to be retried."""
        if _duration_listeners:
            self.site.record_duration("attempt", perf_counter() - t0, "failure")
        if not isinstance(exc, Exception) or not self.policy._on(exc):
            return False
        self.outcome = Outcome(exception=exc)
        return True

    def failed_with_result(self, result: Any, t0: float) -> bool:
        """Record a returned result; True when it is flagged for a retry."""
        on_result = self.policy._on_result
        failed = on_result is not None and on_result(result)
        if _duration_listeners:
            self.site.record_duration("attempt", perf_counter() - t0, "failure" if failed else "success")
        if failed:
            self.outcome = Outcome(result=result)
        return failed

    def give_up(self) -> Any:
        """Return the last result or re-raise the last exception, with a note."""
        policy = self.policy
        reason = self.reason or "gave up"
        outcome = self.outcome
        if reason.endswith("budget is spent"):
            # A storm exhausts the budget on every call: warn once per interval, not per call.
            now = time.monotonic()
            if now - policy._budget_warned_at >= _BUDGET_WARNING_INTERVAL:
                policy._budget_warned_at = now
                logger.warning("resilient: %s: retry budget exhausted; retries are being skipped", policy._label())
            policy._emit(
                self.site, BUDGET_EXHAUSTED, Severity.WARNING, attempt=self.attempt, exception=outcome.exception
            )
        exc = outcome.exception
        if exc is not None:
            if self.from_start:
                exc.add_note(f"resilient: {policy._label()} {reason} in {self.elapsed:.2f} s")
            else:
                exc.add_note(f"resilient: {policy._label()} {reason}, {self.elapsed:.2f} s after the first failure")
            raise exc
        return outcome.result

    def close(self) -> None:
        """Restore the caller's attempt number."""
        if self.token is not None:
            _attempt.reset(self.token)
            with _retrying_lock:
                _retrying[0] -= 1

    def _delay(self) -> float:
        policy = self.policy
        outcome = self.outcome
        delay: float | None = None
        if policy.delay_hint is not None:
            value = outcome.exception if outcome.exception is not None else outcome.result
            try:
                delay = _finite_delay(policy.delay_hint(value), policy.max_delay)
            except Exception:  # a broken hint must not turn a retry into a crash
                logger.debug("resilient: delay_hint raised; using the backoff", exc_info=True)
                delay = None
        if delay is None:
            backoff: Any = policy.backoff
            if self.delays is not None:
                delay = next(self.delays)
            elif _is_tenacity_wait(backoff):
                state = _TenacityState(self.attempt, outcome, self.elapsed, self.idle)
                delay = _finite_delay(backoff(state), policy.max_delay) or 0.0
            else:
                delay = _finite_delay(backoff(self.attempt), policy.max_delay) or 0.0
        if policy.max_delay is not None and delay > policy.max_delay:
            delay = policy.max_delay
        return delay

    def _give_up_reason(self, delay: float) -> str | None:
        """Why the next retry must not happen, or None. The budget is asked last, so it is spent only on a retry."""
        policy = self.policy
        attempt = self.attempt
        plural = "s" if attempt > 1 else ""
        if attempt >= policy.attempts:
            return f"gave up after {attempt} attempt{plural}"
        if policy.max_elapsed is not None and self.elapsed + delay > policy.max_elapsed:
            return f"gave up after {attempt} attempt{plural}: the next delay ({delay:.3g} s) would exceed max_elapsed"
        rem = _remaining()
        if rem is not None and rem <= delay:
            return (
                f"gave up after {attempt} attempt{plural}: "
                f"the deadline leaves {max(rem, 0.0):.3g} s, less than the next delay ({delay:.3g} s)"
            )
        if policy.budget is not None and not policy.budget.try_spend():
            return f"gave up after {attempt} attempt{plural}: the retry budget is spent"
        return None

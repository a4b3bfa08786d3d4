"""The retry engine: every decision of one retried call, with no I/O and no awaits.

A :class:`RetryEngine` is created when a call's first attempt fails (or,
on the careful path, before it starts) and lives until the call ends. It
decides whether an outcome is retried, how long to wait before the next
attempt (backoff, delay hint, ``max_delay``, ``max_hint``, test mode),
whether to give up instead (attempts, ``max_elapsed``, the deadline, the
budget, a hint longer than ``max_hint``), and what the give-up note says.
The sync and async wrappers of :class:`~resilient.Retry` only call the
function, hand the outcome here and sleep what they are told.

Nothing here is created on a success: the success path of a retry is one
call inside a ``try``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any, Literal, Protocol

from resilient.backoff import Backoff
from resilient.deadline import remaining
from resilient.events import BUDGET_EXHAUSTED, EXTRA_RETRY_AFTER, RETRY, EventSite, Severity, duration_listeners
from resilient.policy import Outcome
from resilient.testing import TEST_MODE

if TYPE_CHECKING:
    from resilient.retry.policy import Retry

__all__ = ["GiveUp", "GiveUpReason", "RetryBudgetLike", "RetryEngine", "current_attempt"]

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

#: Why a retry gave up on a retryable failure: its attempts ran out (``"attempts"``,
#: or ``"test_mode"`` under :func:`~resilient.testing.set_testing`), the delay hint
#: asked for longer than ``max_hint`` (``"hint"``), the next delay would pass
#: ``max_elapsed`` (``"max_elapsed"``) or the deadline (``"deadline"``), or the
#: budget refused the retry (``"budget"``).
GiveUpReason = Literal["attempts", "test_mode", "hint", "max_elapsed", "deadline", "budget"]


@dataclass(frozen=True, slots=True)
class GiveUp:
    """What ``Retry(on_give_up=...)`` receives when the retry gives up on a retryable failure.

    Hand it to a dead-letter queue, reschedule the work for ``retry_after``,
    count it. ``args`` and ``kwargs`` are those of the call, so the hook
    knows *what* failed (the event, the request).

    Attributes:
        outcome: the last attempt's outcome: the exception it raised (which the
            retry re-raises after the hook) or the flagged result it returned
            (which the retry returns).
        attempts: attempts made, the first included.
        elapsed: seconds since the first attempt started.
        reason: why it gave up (see :data:`GiveUpReason`).
        note: the note added to the exception (the same text for a result).
        retry_after: the last outcome's delay hint in seconds (``Retry-After``,
            an open breaker's ``retry_after``), as read, when there was one.
        args: the positional arguments of the call.
        kwargs: the keyword arguments of the call.
        policy: the retry's name.
        operation: the operation the retry guards (the wrapped function's name).
    """

    outcome: Outcome[Any]
    attempts: int
    elapsed: float
    reason: GiveUpReason
    note: str
    retry_after: float | None
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    policy: str | None
    operation: str | None

    @property
    def exception(self) -> Exception | None:
        """The exception the last attempt raised, or ``None`` when it returned a flagged result."""
        return self.outcome.exception

    @property
    def result(self) -> Any:
        """The flagged result the last attempt returned (``None`` when it raised)."""
        return self.outcome.result


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


def is_tenacity_wait(obj: object) -> bool:
    """Whether ``obj`` is one of tenacity's ``wait_*`` strategies (checked without importing tenacity)."""
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


class RetryEngine:
    """The decisions of one retried call of a :class:`~resilient.Retry`.

    The wrappers drive it in a loop::

        while (delay := engine.next_delay()) is not None:   # None: give up
            sleep(delay)
            t0 = engine.begin_attempt()
            call, then engine.failed_with(exc, t0) / engine.failed_with_result(result, t0)
        record = engine.give_up()                            # note, events; GiveUp for on_give_up
        return engine.finish()                               # the last result, or raise
        ...
        engine.close()                                       # in a finally

    It calls the user's predicates, backoff and delay hint, and emits
    events, but never sleeps, awaits or calls ``on_give_up``: the wrappers do.

    ``outcome=None`` starts before the first attempt (the careful path:
    attempt durations are recorded, or the call runs inside another retry's
    later attempt); otherwise the first attempt has already failed with
    ``outcome``. ``start`` is when the first attempt started, when it was
    read (``max_elapsed`` and ``on_give_up`` need it).
    """

    __slots__ = (
        "args",
        "attempt",
        "counted",
        "delays",
        "elapsed",
        "from_start",
        "hint",
        "idle",
        "kwargs",
        "outcome",
        "policy",
        "reason",
        "site",
        "start",
        "token",
        "why",
    )

    def __init__(
        self,
        policy: Retry,
        site: EventSite,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        start: float | None,
        outcome: Outcome[Any] | None = None,
    ) -> None:
        self.policy = policy
        self.site = site
        self.args = args
        self.kwargs = kwargs
        #: The last outcome that was retried (``None`` before the first attempt).
        self.outcome: Outcome[Any] = outcome if outcome is not None else _NOTHING
        self.attempt = 0 if outcome is None else 1
        # The start of the first attempt when it was read (max_elapsed and
        # on_give_up need it); otherwise the first failure: the fast path reads no clock.
        self.from_start = start is not None
        self.start = start
        self.delays: Iterator[float] | None = None
        self.idle = 0.0
        self.elapsed = 0.0
        #: The last outcome's delay hint, as read (not capped), or None.
        self.hint: float | None = None
        #: Why the retry gave up: a code (``"attempts"``, ``"budget"``...) and the note's text.
        self.reason: GiveUpReason | None = None
        self.why = ""
        self.token: Token[int] | None = None
        #: Whether this call is counted in ``_retrying``.
        self.counted = False

    # -- the loop ------------------------------------------------------------

    def next_delay(self) -> float | None:
        """The delay before the next attempt, or None when the retry must give up."""
        if self.attempt == 0:
            return 0.0
        policy = self.policy
        now = policy.clock.now()
        if self.start is None:
            self.start = now
        self.elapsed = now - self.start
        delay = self._delay()
        if TEST_MODE.active:
            # set_testing(): no waiting, and at most TEST_MODE.attempts attempts.
            delay = 0.0
            if self.attempt >= TEST_MODE.attempts:
                self._stop("test_mode", f"gave up after {self._attempts()} (test mode)")
                return None
        if self._must_stop(delay):
            return None
        policy.emit(
            self.site,
            RETRY,
            Severity.INFO,
            attempt=self.attempt + 1,
            duration=delay,
            exception=self.outcome.exception,
            # The hint as read: a reader can tell a Retry-After clamped to max_delay.
            extras=None if self.hint is None else {EXTRA_RETRY_AFTER: self.hint},
        )
        self.idle += delay
        return delay

    def begin_attempt(self) -> float:
        """Count the attempt, publish its number, and return its start time if durations are recorded."""
        self.attempt += 1
        if self.attempt == 1:
            # The first attempt, inside another retry's later attempt: it is attempt 1 here.
            if _attempt.get() != 1:
                self.token = _attempt.set(1)
        elif not self.counted:
            self.counted = True
            with _retrying_lock:
                _retrying[0] += 1
            if self.token is None:
                self.token = _attempt.set(self.attempt)
            else:
                _attempt.set(self.attempt)
        else:
            _attempt.set(self.attempt)
        return perf_counter() if duration_listeners else 0.0

    def failed_with(self, exc: BaseException, t0: float) -> bool:
        """Record a raised exception; True when it is to be retried."""
        if duration_listeners:
            self.site.record_duration("attempt", perf_counter() - t0, "failure")
        if not isinstance(exc, Exception) or not self.policy._on(exc):
            return False
        self.outcome = Outcome(exception=exc)
        return True

    def failed_with_result(self, result: Any, t0: float) -> bool:
        """Record a returned result; True when it is flagged for a retry."""
        on_result = self.policy._on_result
        failed = on_result is not None and on_result(result)
        if duration_listeners:
            self.site.record_duration("attempt", perf_counter() - t0, "failure" if failed else "success")
        if failed:
            self.outcome = Outcome(result=result)
        return failed

    def give_up(self) -> GiveUp | None:
        """Add the note to the last exception and report a spent budget.

        Returns the record for ``on_give_up``, when the policy has one.
        """
        policy = self.policy
        outcome = self.outcome
        if self.reason == "budget":
            # A storm exhausts the budget on every call: warn once per interval, not per call.
            now = policy.clock.now()
            if now - policy._budget_warned_at >= _BUDGET_WARNING_INTERVAL:
                policy._budget_warned_at = now
                logger.warning("resilient: %s: retry budget exhausted; retries are being skipped", policy.label())
            policy.emit(
                self.site, BUDGET_EXHAUSTED, Severity.WARNING, attempt=self.attempt, exception=outcome.exception
            )
        note = self.note()
        if outcome.exception is not None:
            outcome.exception.add_note(note)
        if policy.on_give_up is None:
            return None
        return GiveUp(
            outcome,
            self.attempt,
            self.elapsed,
            self.reason or "attempts",
            note,
            self.hint,
            self.args,
            self.kwargs,
            policy.name,
            self.site.operation,
        )

    def note(self) -> str:
        """The give-up note: who gave up, why, and after how long."""
        why = self.why or "gave up"
        if self.from_start:
            return f"resilient: {self.policy.label()} {why} in {self.elapsed:.2f} s"
        return f"resilient: {self.policy.label()} {why}, {self.elapsed:.2f} s after the first failure"

    def finish(self) -> Any:
        """Return the last result or re-raise the last exception."""
        exc = self.outcome.exception
        if exc is not None:
            raise exc
        return self.outcome.result

    def close(self) -> None:
        """Restore the caller's attempt number."""
        if self.token is not None:
            _attempt.reset(self.token)
        if self.counted:
            with _retrying_lock:
                _retrying[0] -= 1

    # -- decisions -----------------------------------------------------------

    def _delay(self) -> float:
        policy = self.policy
        outcome = self.outcome
        max_delay = policy.max_delay
        delay: float | None = None
        self.hint = None
        if policy.delay_hint is not None:
            value = outcome.exception if outcome.exception is not None else outcome.result
            try:
                # With max_hint, an infinite hint stays infinite: longer than max_hint, it gives up.
                delay = self.hint = _finite_delay(
                    policy.delay_hint(value), max_delay if policy.max_hint is None else math.inf
                )
            except Exception:  # a broken hint must not turn a retry into a crash
                logger.debug("resilient: delay_hint raised; using the backoff", exc_info=True)
                delay = None
            if delay is not None and policy.max_hint is not None:
                # Waited in full, past max_delay: retrying before the server said only earns another refusal.
                return delay
        if delay is None:
            backoff: Any = policy.backoff
            if isinstance(backoff, Backoff):
                if self.delays is None:
                    self.delays = backoff.delays()
                delay = next(self.delays)
            elif is_tenacity_wait(backoff):
                state = _TenacityState(self.attempt, outcome, self.elapsed, self.idle)
                delay = _finite_delay(backoff(state), max_delay) or 0.0
            else:
                delay = _finite_delay(backoff(self.attempt), max_delay) or 0.0
        if max_delay is not None and delay > max_delay:
            delay = max_delay
        return delay

    def _attempts(self) -> str:
        return f"{self.attempt} attempt{'s' if self.attempt > 1 else ''}"

    def _stop(self, reason: GiveUpReason, why: str) -> None:
        self.reason = reason
        self.why = why

    def _must_stop(self, delay: float) -> bool:
        """Whether the next retry must not happen. The budget is asked last, so it is spent only on a retry.

        (``delay`` is 0 in test mode: a hint longer than ``max_hint`` still gives up, on the hint itself.)
        """
        policy = self.policy
        if self.attempt >= policy.attempts:
            self._stop("attempts", f"gave up after {self._attempts()}")
        elif policy.max_hint is not None and self.hint is not None and self.hint > policy.max_hint:
            self._stop(
                "hint",
                f"gave up after {self._attempts()}: "
                f"the delay hint ({self.hint:.3g} s) is longer than max_hint ({policy.max_hint:.3g} s)",
            )
        elif policy.max_elapsed is not None and self.elapsed + delay > policy.max_elapsed:
            self._stop(
                "max_elapsed",
                f"gave up after {self._attempts()}: the next delay ({delay:.3g} s) would exceed max_elapsed",
            )
        elif (rem := remaining()) is not None and rem <= delay:
            self._stop(
                "deadline",
                f"gave up after {self._attempts()}: "
                f"the deadline leaves {max(rem, 0.0):.3g} s, less than the next delay ({delay:.3g} s)",
            )
        elif policy.budget is not None and not policy.budget.try_spend():
            self._stop("budget", f"gave up after {self._attempts()}: the retry budget is spent")
        else:
            return False
        return True


# The outcome of a call whose first attempt has not run yet.
_NOTHING: Outcome[Any] = Outcome()

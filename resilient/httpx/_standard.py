"""The standard pipeline (Microsoft's standard handler defaults) and deadline-setting timeouts."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

from resilient.backoff import Backoff, exponential
from resilient.breaker import BreakDuration, CircuitBreaker, GrowingBreak
from resilient.budget import RetryBudget
from resilient.clock import SYSTEM_CLOCK, Clock
from resilient.concurrency import Bulkhead
from resilient.deadline import narrow_deadline, reset_deadline
from resilient.events import EventSite, Listener
from resilient.httpx._pacing import HeaderPacing
from resilient.httpx._rules import (
    TRANSIENT_STATUSES,
    _check_statuses,
    _current_call,
    http_retry,
    is_transient_error,
)
from resilient.policy import AsyncFn, AsyncWrapped, Pipeline, Policy, SyncFn
from resilient.ratelimit import RateLimiter
from resilient.retry import RetryBudgetLike
from resilient.timeout import Timeout
from resilient.validate import check_bool, check_number, check_switch

# -- deadline scope ---------------------------------------------------------------


class _DeadlineScope(Policy):
    """Runs a synchronous call under ``deadline(seconds)``, so that what is inside sees it.

    The synchronous standard pipeline's stand-in for a timeout (a blocking
    call cannot be interrupted): the retry never starts a backoff that
    outlives it, and the transport caps httpx's own timeouts to it. Async
    pipelines use ``Timeout(seconds, set_deadline=True)`` instead.
    """

    policy_type = "deadline"

    def __init__(self, seconds: float, *, clock: Clock | None = None) -> None:
        super().__init__()
        self.seconds = float(seconds)
        self.clock = clock if clock is not None else SYSTEM_CLOCK

    def build_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        seconds = self.seconds
        clock = self.clock

        def scoped(*args: Any, **kwargs: Any) -> Any:
            token = narrow_deadline(seconds, clock)
            try:
                return fn(*args, **kwargs)
            finally:
                reset_deadline(token)

        return scoped

    def __repr__(self) -> str:
        return f"_DeadlineScope({self.seconds})"


def deadline_timeout(seconds: float, *, name: str | None = None, clock: Clock | None = None) -> Timeout:
    """A :class:`~resilient.Timeout` that also sets the deadline of what runs inside it.

    Use it instead of ``Timeout`` in custom pipelines under a resilient
    transport: the attempt then sends the time its caller will really wait
    in the deadline header (the standard pipeline does this already), and a
    retry inside it never starts a backoff that would outlive it. It is
    ``Timeout(seconds, set_deadline=True)``; ``clock`` is its time source
    (tests: ``FakeClock``).
    """
    return Timeout(seconds, set_deadline=True, name=name, clock=clock)


# -- the standard pipeline --------------------------------------------------------

#: What ``preset="microsoft"`` changes: Microsoft.Extensions.Http.Resilience's
#: standard handler values, applied to every option the caller leaves out.
_MICROSOFT: dict[str, Any] = {
    "base_delay": 2.0,
    "failure_ratio": 0.1,
    "consecutive_failures": None,
    "break_duration": 5.0,
    "breaker_statuses": TRANSIENT_STATUSES,
    "throttle_retry_ratio": None,
    "overload_retry_ratio": None,
}
_PRESETS = ("resilient", "microsoft")

#: A failed attempt slower than this many times the host's usual answer (and
#: than SLOW_FAILURE_FLOOR) is taken as a sign that the host is queueing.
SLOW_FAILURE_FACTOR = 4.0
#: Retries of slow failures always allowed per second and host (the overload budget's floor).
OVERLOAD_RETRY_FLOOR = 0.2
#: Seconds: below this, a failure is never called slow (event-loop noise).
SLOW_FAILURE_FLOOR = 0.05
# The usual answer time is an EWMA that follows a faster answer quickly and a
# slower one slowly, and never grows faster than _CREEP per second whatever
# the traffic: a minute of queueing at 150 answers a second must not become
# "usual" (it grows 3x in a minute, 2 % in a second).
_FASTER, _SLOWER, _CREEP = 0.05, 0.01, 0.02


class _HostSignals(Policy):
    """One host's retry budgets, and the signal that tells an overloaded host from random errors.

    As a policy it sits inside the retry, around each attempt, and times it
    (with the pipeline's clock). As the retry's budget it decides whether a
    retry may go:

    * a 429 says "over quota": its retries spend from ``throttled`` (a small
      share of recent calls), or a retry storm keeps the client over quota;
    * a failure that took much longer than the host's usual answer
      (``SLOW_FAILURE_FACTOR`` times, at least ``SLOW_FAILURE_FLOOR``) says
      the host is queueing: its retries spend from ``overloaded``, so that
      retries do not add load where it hurts (a metastable overload);
    * a quick failure (a brownout's random 503, a reset connection) retries
      freely: that is what absorbs a brownout;
    * the user's ``retry_budget``, if any, is asked as well.
    """

    policy_type = "host_signals"

    def __init__(
        self,
        inner: RetryBudgetLike | None,
        throttled: RetryBudget | None,
        overloaded: RetryBudget | None,
        failure_statuses: frozenset[int],
        clock: Clock | None,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.throttled = throttled
        self.overloaded = overloaded
        self.failure_statuses = failure_statuses
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        #: The host's usual answer time, seconds (None until the first good answer).
        self.usual: float | None = None
        self._learned_at = 0.0
        # Outside a transport (no call in flight to note it on): the last judgement.
        self._last_slow = False

    # -- the meter --------------------------------------------------------------

    def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        now, observe = self.clock.now, self._observe

        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = now()
            try:
                result = await fn(*args, **kwargs)
            except Exception:
                observe(None, start, True)
                raise
            return observe(result, start, False)

        return timed

    def build_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        now, observe = self.clock.now, self._observe

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = now()
            try:
                result = fn(*args, **kwargs)
            except Exception:
                observe(None, start, True)
                raise
            return observe(result, start, False)

        return timed

    def _observe(self, result: Any, start: float, raised: bool) -> Any:
        """One attempt ended: judge a failure, learn from a good answer; returns ``result``."""
        end = self.clock.now()
        if raised or getattr(result, "status_code", None) in self.failure_statuses:
            self._judge(end - start)
        else:
            self._learn(end - start, end)
        return result

    def _learn(self, took: float, at: float) -> None:
        usual = self.usual
        if usual is None:
            self.usual = took
        elif took < usual:
            self.usual = usual + _FASTER * (took - usual)
        else:
            self.usual = usual + min(_SLOWER * (took - usual), _CREEP * usual * max(0.0, at - self._learned_at))
        self._learned_at = at

    def slow_limit(self) -> float:
        """Seconds: a failure that took longer says the host is queueing.

        Infinite until the host has answered well once: with nothing to
        compare with, no failure is called slow.
        """
        usual = self.usual
        return math.inf if usual is None else max(SLOW_FAILURE_FLOOR, SLOW_FAILURE_FACTOR * usual)

    def _judge(self, took: float) -> None:
        slow = took > self.slow_limit()
        call = _current_call.get()
        if call is not None:
            call.slow_failure = slow
        else:
            self._last_slow = slow

    # -- the budget -------------------------------------------------------------

    def record_request(self) -> None:
        """Count one call in every budget."""
        if self.throttled is not None:
            self.throttled.record_request()
        if self.overloaded is not None:
            self.overloaded.record_request()
        if self.inner is not None:
            self.inner.record_request()

    def try_spend(self) -> bool:
        """Whether the retry about to start may go (see the class docstring)."""
        call = _current_call.get()
        if call is not None:
            throttled, slow = call.status == 429, call.slow_failure
        else:
            throttled, slow = False, self._last_slow
        if throttled:
            if self.throttled is not None and not self.throttled.try_spend():
                return False
        elif slow and self.overloaded is not None and not self.overloaded.try_spend():
            return False
        return self.inner is None or self.inner.try_spend()

    def __repr__(self) -> str:
        return f"_HostSignals(usual={self.usual!r})"


def _status_in(statuses: frozenset[int]) -> Callable[[Any], bool]:
    def failed(response: Any) -> bool:
        return getattr(response, "status_code", None) in statuses

    return failed


def _breaker_failure(statuses: frozenset[int]) -> Callable[[Any], bool]:
    """The breaker's ``on_result``: a failure status, but not a 503 that a queueing host shed.

    A 503 that came after much longer than the host's usual answer is an
    overloaded host shedding its queue: it is alive, and opening the circuit
    would leave it idle while its queue drains (fewer calls served, not
    more). Any other failure counts, a slow 504 included (a gateway waiting
    for a dead upstream).
    """

    def failed(response: Any) -> bool:
        status = getattr(response, "status_code", None)
        if status not in statuses:
            return False
        if status == 503:
            call = _current_call.get()
            return call is None or not call.slow_failure
        return True

    return failed


class StandardPipeline:
    """A factory of per-host pipelines: the defaults of the zero-configuration client.

    Pass it (or :func:`standard_pipeline`'s result) as ``pipeline=`` to a
    resilient transport: the transport calls it once per host key (see
    :func:`authority`) and keeps at most ``max_hosts`` pipelines, least
    recently used first out. Each host gets, outermost first:

    | part | default (`preset="resilient"`) | keyword(s) |
    |---|---|---|
    | concurrency limit | 1000 running, 0 queued | `max_concurrent`, `max_queued` |
    | total timeout | 30 s | `total_timeout` |
    | rate limit (token bucket) | off | `rate`, `per`, `burst`, `rate_mode` |
    | retry | 3 retries, exponential from 25 ms with jitter, Retry-After | `max_retries`, `base_delay`... |
    | retries of 429 | at most 4 % of recent calls (+1/s) per host | `throttle_retry_ratio` |
    | retries of slow failures | at most 1 per 5 s per host | `overload_retry_ratio` |
    | circuit breaker | 20 failures in a row, or ratio 0.5 (30 s, 100 calls) | `consecutive_failures`, `failure_ratio` |
    | breaks | 0.1 s, x2 per failed probe up to 0.25 s; 429 not counted | `break_duration`, `breaker_statuses` |
    | attempt timeout | 10 s | `attempt_timeout` |

    The retry also takes `backoff`, `max_delay` (30 s, caps `Retry-After`
    too), `statuses`, `honour_retry_after` and `retry_budget`; the breaker
    `sampling_duration`, `minimum_throughput` and `breaker_statuses`.
    ``pace=True`` adds :class:`HeaderPacing` (off by default): each host's
    requests are spaced to what its rate-limit headers say is left.
    ``enforce=False`` (or a callable read on every decision) is shadow mode
    for the parts that reject (concurrency limit, rate limit, breaker): they
    decide as they would and report ``would_reject``, and the request goes
    through, so the defaults can be rolled out watching what they would do.

    Why these values (the httpx page's "Defaults and why" has the
    measurements): Microsoft's standard handler values are right for
    Microsoft's preset, and wrong for a Python service answering users.

    * **Fail fast on an outage, recover at once.** A run of 20 failed
      attempts opens the circuit (at 30 % random errors a run of 20 has a
      probability of 3e-11, so a brownout never trips it), without waiting
      for 100 calls in a window that a healthy period filled with
      successes. The first break is 0.1 s and grows (x2, up to 0.25 s) only
      while probes keep failing (:class:`~resilient.breaker.GrowingBreak`):
      a fixed 5 s break outlives a short outage.
    * **Ride out a brownout.** The failure ratio is 0.5, not 0.1: the
      breaker sits inside the retry and sees every attempt, so at 30 %
      errors a 0.1 ratio fails calls that three retries would have saved.
      Retries wait tens of milliseconds (25 ms, decorrelated jitter), not
      seconds: a user is waiting.
    * **Do not feed an overload.** A failure that took much longer than the
      host's usual answer means the host is queueing; retrying it adds load
      where it hurts, and its answer comes after another wait in the
      queue. Such retries spend from a budget of one per 5 seconds
      (``overload_retry_ratio=0.0`` plus the floor); quick failures retry
      freely.
    * **Respect a quota.** A 429 is not a breaker failure, and its retries
      spend from a budget of 4 % of recent calls (``throttle_retry_ratio``),
      after the ``Retry-After`` the server asked for.

    ``preset="microsoft"`` gives Microsoft's exact values instead, for every
    option you leave out: base delay 2 s, failure ratio 0.1 and no
    consecutive-failure trip, a fixed 5 s break, 429 counted by the breaker,
    no throttle or overload budgets.

    The concurrency limit rejects with :class:`~resilient.BulkheadFullError`
    when full (Microsoft's ``ConcurrencyLimiter`` with no queue); the rate
    limit, when set, waits for a token (``rate_mode="reject"``: raises
    :class:`~resilient.RateLimitedError`), bounded by the total timeout.

    Set a part's keyword to ``None`` (``max_retries=0`` for the retry; both
    ``failure_ratio`` and ``consecutive_failures`` for the breaker) to leave
    that part out. Synchronous clients get the same pipeline without the
    two timeout policies (a blocking call cannot be interrupted): the
    timeouts become deadlines that stop retries that would outlive them and
    cap every socket operation of an ``httpx.HTTPTransport`` to what is left
    (see :class:`ResilientTransport` for the exact bound).

    Args:
        preset: ``"resilient"`` (default) or ``"microsoft"``.
        statuses: statuses to retry; ``None``: 408, 429 and 5xx.
        breaker_statuses: statuses the breaker counts as failures; ``None``:
            the retried statuses but 429 (``"microsoft"``: 429 too).
        name: prefix of the policies' names (``"httpx http://host:80 breaker"``).
        clock: time source of every part (tests: ``FakeClock``).
        listeners: event listeners attached to every host's pipeline.

    Raises:
        ValueError, TypeError: an option out of range, or options that
            contradict each other, naming them.
    """

    _given: frozenset[str] = frozenset()

    def __new__(cls, *args: Any, **kwargs: Any) -> StandardPipeline:
        self = super().__new__(cls)
        # The options the caller gave: a preset changes only the others.
        self._given = frozenset(kwargs)
        return self

    def __init__(
        self,
        preset: Literal["resilient", "microsoft"] = "resilient",
        *,
        max_concurrent: int | None = 1000,
        max_queued: int = 0,
        rate: float | None = None,
        per: float = 1.0,
        burst: int | None = None,
        rate_mode: Literal["wait", "reject"] = "wait",
        total_timeout: float | None = 30.0,
        max_retries: int = 3,
        backoff: Backoff | Callable[[int], float] | Any | None = None,
        base_delay: float = 0.025,
        max_delay: float | None = 30.0,
        statuses: Iterable[int] | None = None,
        honour_retry_after: bool = True,
        retry_budget: RetryBudgetLike | None = None,
        throttle_retry_ratio: float | None = 0.04,
        overload_retry_ratio: float | None = 0.0,
        failure_ratio: float | None = 0.5,
        consecutive_failures: int | None = 20,
        breaker_statuses: Iterable[int] | None = None,
        sampling_duration: float = 30.0,
        minimum_throughput: int = 100,
        break_duration: float | BreakDuration = GrowingBreak(0.1, maximum=0.25),  # noqa: B008 - immutable
        attempt_timeout: float | None = 10.0,
        pace: bool = False,
        name: str = "httpx",
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
        enforce: bool | Callable[[], bool] = True,
    ) -> None:
        if preset not in _PRESETS:
            raise ValueError(f"preset must be one of {_PRESETS}, got {preset!r}")
        self.preset = preset
        if preset == "microsoft":
            values = {k: v for k, v in _MICROSOFT.items() if k not in self._given}
            base_delay = values.get("base_delay", base_delay)
            failure_ratio = values.get("failure_ratio", failure_ratio)
            consecutive_failures = values.get("consecutive_failures", consecutive_failures)
            break_duration = values.get("break_duration", break_duration)
            breaker_statuses = values.get("breaker_statuses", breaker_statuses)
            throttle_retry_ratio = values.get("throttle_retry_ratio", throttle_retry_ratio)
            overload_retry_ratio = values.get("overload_retry_ratio", overload_retry_ratio)
        self.throttle_retry_ratio = check_number(
            throttle_retry_ratio, "throttle_retry_ratio", strict=False, allow_none=True
        )
        self.overload_retry_ratio = check_number(
            overload_retry_ratio, "overload_retry_ratio", strict=False, allow_none=True
        )
        if max_concurrent is not None and (isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int)):
            raise TypeError(f"max_concurrent must be an int >= 1 or None, got {max_concurrent!r}")
        if max_concurrent is not None and max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1 or None, got {max_concurrent!r}")
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.rate = check_number(rate, "rate", allow_none=True)
        self.per = check_number(per, "per")
        self.burst = burst
        if rate_mode not in ("wait", "reject"):
            raise ValueError(f"rate_mode must be 'wait' or 'reject', got {rate_mode!r}")
        self.rate_mode = rate_mode
        self.total_timeout = check_number(total_timeout, "total_timeout", allow_none=True)
        self.attempt_timeout = check_number(attempt_timeout, "attempt_timeout", allow_none=True)
        if (
            self.total_timeout is not None
            and self.attempt_timeout is not None
            and self.attempt_timeout > self.total_timeout
        ):
            if "attempt_timeout" not in self._given:
                # Only total_timeout was lowered: the default attempt timeout could never fire.
                self.attempt_timeout = None
            else:
                raise ValueError(
                    f"attempt_timeout ({attempt_timeout!r} s) must not exceed total_timeout ({total_timeout!r} s): "
                    "no attempt could ever use it; lower attempt_timeout or raise total_timeout"
                )
        self.max_retries = max_retries
        self.backoff = backoff
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.statuses = TRANSIENT_STATUSES if statuses is None else _check_statuses(statuses)
        if breaker_statuses is None:
            breaker_statuses = self.statuses - {429}
        self.breaker_statuses = _check_statuses(breaker_statuses, "breaker_statuses")
        self.honour_retry_after = honour_retry_after
        self.retry_budget = retry_budget
        self.failure_ratio = failure_ratio
        self.consecutive_failures = consecutive_failures
        self.sampling_duration = sampling_duration
        self.minimum_throughput = minimum_throughput
        self.break_duration = break_duration
        self.pace = check_bool(pace, "pace")
        #: Shadow mode for the parts that reject (concurrency limit, rate limit, breaker): see ``enforce=``.
        self.enforce = check_switch(enforce, "enforce")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {name!r}")
        self.name = name
        self.clock = clock
        self.listeners = tuple(listeners)
        # Build once now, so that bad values fail here and not at the first request.
        self.build("validation", sync=False, _named=False)
        self.build("validation", sync=True, _named=False)

    def __call__(self, host_key: str) -> Pipeline:
        """The async pipeline for one host."""
        return self.build(host_key, sync=False)

    def build(self, host_key: str, *, sync: bool = False, _named: bool = True) -> Pipeline:
        """Build the pipeline of one host (``sync=True``: without the timeout policies)."""

        def nm(part: str) -> str | None:
            return f"{self.name} {host_key} {part}" if _named else None

        clock = self.clock
        policies: list[Policy] = []
        if self.max_concurrent is not None:
            policies.append(
                Bulkhead(
                    self.max_concurrent,
                    max_queued=self.max_queued,
                    name=nm("concurrency"),
                    clock=clock,
                    enforce=self.enforce,
                )
            )
        if self.total_timeout is not None:
            if sync:
                policies.append(_DeadlineScope(self.total_timeout, clock=clock))
            else:
                policies.append(Timeout(self.total_timeout, set_deadline=True, name=nm("total timeout"), clock=clock))
        if self.rate is not None:
            # Inside the total timeout, so that waiting for a token is bounded by it.
            policies.append(
                RateLimiter(
                    self.rate,
                    self.per,
                    burst=self.burst,
                    mode=self.rate_mode,
                    name=nm("rate"),
                    clock=clock,
                    enforce=self.enforce,
                )
            )
        signals: _HostSignals | None = None
        if self.max_retries:
            backoff = self.backoff
            if backoff is None:
                cap = self.max_delay if self.max_delay is not None else 30.0
                backoff = exponential(self.base_delay, max_delay=cap, jitter="decorrelated")
            budget = self.retry_budget
            # One set of budgets per host: a quota, and a queue, are per host too.
            throttled = overloaded = None
            if self.throttle_retry_ratio is not None and 429 in self.statuses:
                throttled = RetryBudget(self.throttle_retry_ratio, min_per_second=1.0, window=10.0, clock=clock)
            if self.overload_retry_ratio is not None:
                # A floor of one retry per 5 s: enough for a quiet client's rare timeout, while at
                # 200 calls/s the retried calls (each a second in the queue) stay below the p99.
                overloaded = RetryBudget(
                    self.overload_retry_ratio, min_per_second=OVERLOAD_RETRY_FLOOR, window=10.0, clock=clock
                )
            if throttled is not None or overloaded is not None:
                signals = _HostSignals(budget, throttled, overloaded, self.statuses, clock)
                budget = signals
            policies.append(
                http_retry(
                    self.max_retries,
                    backoff=backoff,
                    max_delay=self.max_delay,
                    statuses=self.statuses,
                    honour_retry_after=self.honour_retry_after,
                    budget=budget,
                    clock=clock,
                    name=nm("retry"),
                )
            )
        elif isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {self.max_retries!r}")
        if self.failure_ratio is not None or self.consecutive_failures is not None:
            statuses = self.breaker_statuses
            on_result = _breaker_failure(statuses) if signals is not None else _status_in(statuses)
            policies.append(
                CircuitBreaker(
                    nm("breaker"),
                    failure_ratio=self.failure_ratio,
                    consecutive_failures=self.consecutive_failures,
                    sampling_duration=self.sampling_duration,
                    minimum_throughput=self.minimum_throughput,
                    break_duration=self.break_duration,
                    on=is_transient_error,
                    on_result=on_result,
                    clock=clock,
                    enforce=self.enforce,
                )
            )
        if signals is not None:
            # Inside the breaker: the attempt is judged before the breaker reads its outcome.
            policies.append(signals)
        if self.pace:
            # Innermost but the attempt timeout: a request paced out (RateLimitedError) is not
            # retried and never reaches the breaker's counts as a failure of the host.
            policies.append(HeaderPacing(clock=clock, name=nm("pacing")))
        if self.attempt_timeout is not None:
            if sync:
                policies.append(_DeadlineScope(self.attempt_timeout, clock=clock))
            else:
                policies.append(
                    Timeout(self.attempt_timeout, set_deadline=True, name=nm("attempt timeout"), clock=clock)
                )
        return Pipeline(*policies, name=f"{self.name} {host_key}" if _named else None, listeners=self.listeners)

    def __repr__(self) -> str:
        return (
            f"StandardPipeline(preset={self.preset!r}, max_concurrent={self.max_concurrent}, "
            f"total_timeout={self.total_timeout}, max_retries={self.max_retries}, "
            f"failure_ratio={self.failure_ratio}, consecutive_failures={self.consecutive_failures}, "
            f"attempt_timeout={self.attempt_timeout})"
        )


def standard_pipeline(preset: Literal["resilient", "microsoft"] = "resilient", **overrides: Any) -> StandardPipeline:
    """The standard pipeline: the zero-configuration client's defaults, per host.

    ``standard_pipeline()`` is what a transport uses when given no pipeline;
    ``standard_pipeline("microsoft")`` uses Microsoft's exact values
    (failure ratio 0.1, 2 s backoff, 5 s breaks); any part can be changed by keyword, e.g.
    ``standard_pipeline(attempt_timeout=2.0, max_retries=2)``. See
    :class:`StandardPipeline` for the table of defaults.
    """
    return StandardPipeline(preset, **overrides)

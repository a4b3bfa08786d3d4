"""The standard pipeline (Microsoft's standard handler defaults) and deadline-setting timeouts."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from types import EllipsisType
from typing import Any, Literal, cast

from resilient.backoff import Backoff, exponential
from resilient.breaker import CircuitBreaker
from resilient.budget import RetryBudget
from resilient.bulkhead import Bulkhead
from resilient.clock import SYSTEM_CLOCK, Clock
from resilient.deadline import narrow_deadline, reset_deadline
from resilient.events import EventSite, Listener
from resilient.httpx._rules import (
    TRANSIENT_STATUSES,
    _check_statuses,
    _current_call,
    http_retry,
    is_transient_error,
)
from resilient.policy import Pipeline, Policy, SyncFn
from resilient.ratelimit import RateLimiter
from resilient.retry import RetryBudgetLike
from resilient.timeout import Timeout

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


def deadline_timeout(seconds: float, *, name: str | None = None) -> Timeout:
    """A :class:`~resilient.Timeout` that also sets the deadline of what runs inside it.

    Use it instead of ``Timeout`` in custom pipelines under a resilient
    transport: the attempt then sends the time its caller will really wait
    in the deadline header (the standard pipeline does this already), and a
    retry inside it never starts a backoff that would outlive it. It is
    ``Timeout(seconds, set_deadline=True)``.
    """
    return Timeout(seconds, set_deadline=True, name=name)


# -- the standard pipeline --------------------------------------------------------

_PRESETS: dict[str, dict[str, Any]] = {
    # 429 means "over your quota", not "broken": the resilient preset keeps it
    # out of the breaker and pays for its retries from a small budget.
    "resilient": {"failure_ratio": 0.5, "breaker_statuses": TRANSIENT_STATUSES - {429}, "throttle_retry_ratio": 0.1},
    "microsoft": {"failure_ratio": 0.1, "breaker_statuses": TRANSIENT_STATUSES, "throttle_retry_ratio": None},
}


class _ThrottleAwareBudget:
    """Retries of 429 answers spend from their own budget; other retries only from the user's.

    A 429 says the client is over its quota: retrying every one of them
    (even after ``Retry-After``) keeps the client over the quota and
    multiplies the load on the limiter, a retry storm. Transient failures
    (5xx, transport errors) keep the full retries that absorb a brownout.
    """

    __slots__ = ("inner", "throttled")

    def __init__(self, inner: RetryBudgetLike | None, throttled: RetryBudget) -> None:
        self.inner = inner
        self.throttled = throttled

    def record_request(self) -> None:
        self.throttled.record_request()
        if self.inner is not None:
            self.inner.record_request()

    def try_spend(self) -> bool:
        call = _current_call.get()
        if call is not None and call.status == 429 and not self.throttled.try_spend():
            return False
        return self.inner is None or self.inner.try_spend()


def _positive(value: Any, param: str, *, allow_none: bool = True) -> float | None:
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{param} must be a number > 0, got None")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{param} must be a number > 0{' or None' if allow_none else ''}, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{param} must be a finite number > 0{' or None' if allow_none else ''}, got {value!r}")
    return float(value)


class StandardPipeline:
    """A factory of per-host pipelines with Microsoft's standard handler defaults.

    Pass it (or :func:`standard_pipeline`'s result) as ``pipeline=`` to a
    resilient transport: the transport calls it once per host key (see
    :func:`authority`) and keeps at most ``max_hosts`` pipelines, least
    recently used first out. Each host gets, outermost first:

    | part | default | keyword(s) |
    |---|---|---|
    | concurrency limit | 1000 running, 0 queued | `max_concurrent`, `max_queued` |
    | total timeout | 30 s | `total_timeout` |
    | rate limit (token bucket) | off | `rate`, `per`, `burst`, `rate_mode` |
    | retry | 3 retries (4 attempts), exponential from 2 s, jitter, Retry-After | `max_retries`, `base_delay`... |
    | retries of 429 | at most 10 % of recent calls (+1/s) per host | `throttle_retry_ratio` |
    | circuit breaker | ratio 0.5 over 30 s, min 100 calls, break 5 s; no 429 | `failure_ratio`, `breaker_statuses` |
    | attempt timeout | 10 s | `attempt_timeout` |

    The retry also takes `backoff`, `max_delay` (30 s, caps `Retry-After`
    too), `statuses`, `honour_retry_after` and `retry_budget`; the breaker
    `sampling_duration` and `minimum_throughput`.

    Deliberate deviations from Microsoft (``preset="microsoft"`` restores
    its exact values):

    * ``failure_ratio`` is 0.5, not 0.1. The breaker sits inside the retry,
      so it sees every attempt: during a 30 % brownout a 0.1 ratio opens the
      circuit (and fails every call) although three retries would have
      absorbed it; 0.5 opens only when most attempts fail.
    * A 429 is not a breaker failure (``breaker_statuses`` leaves it out),
      and retries of 429 answers spend from a per-host budget of 10 % of
      recent calls (``throttle_retry_ratio``). A 429 says "over quota", not
      "broken": opening the circuit on it fails calls the quota would have
      admitted, and retrying every 429 keeps the client over its quota (a
      retry storm). Other retries are not budgeted, unless you pass
      ``retry_budget``.

    The concurrency limit rejects with :class:`~resilient.BulkheadFullError`
    when full (Microsoft's ``ConcurrencyLimiter`` with no queue); the rate
    limit, when set, waits for a token (``rate_mode="reject"``: raises
    :class:`~resilient.RateLimitedError`), bounded by the total timeout.

    Set a part's keyword to ``None`` (``max_retries=0`` for the retry) to
    leave that part out. Synchronous clients get the same pipeline without
    the two timeout policies (a blocking call cannot be interrupted): the
    timeouts become deadlines that stop retries that would outlive them and
    cap every socket operation of an ``httpx.HTTPTransport`` to what is left
    (see :class:`ResilientTransport` for the exact bound).

    Args:
        preset: ``"resilient"`` (default) or ``"microsoft"`` (failure ratio 0.1,
            429 counted by the breaker, 429 retries not budgeted).
        name: prefix of the policies' names (``"httpx http://host:80 breaker"``).
        clock: time source of every part (tests: ``FakeClock``).
        listeners: event listeners attached to every host's pipeline.
    """

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
        base_delay: float = 2.0,
        max_delay: float | None = 30.0,
        statuses: Iterable[int] = TRANSIENT_STATUSES,
        honour_retry_after: bool = True,
        retry_budget: RetryBudgetLike | None = None,
        throttle_retry_ratio: float | EllipsisType | None = ...,
        failure_ratio: float | EllipsisType | None = ...,
        breaker_statuses: Iterable[int] | EllipsisType = ...,
        sampling_duration: float = 30.0,
        minimum_throughput: int = 100,
        break_duration: float = 5.0,
        attempt_timeout: float | None = 10.0,
        name: str = "httpx",
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        if preset not in _PRESETS:
            raise ValueError(f"preset must be one of {tuple(_PRESETS)}, got {preset!r}")
        self.preset = preset
        defaults = _PRESETS[preset]
        if isinstance(failure_ratio, EllipsisType):
            failure_ratio = cast(float, defaults["failure_ratio"])
        if isinstance(breaker_statuses, EllipsisType):
            breaker_statuses = cast(frozenset[int], defaults["breaker_statuses"])
        if isinstance(throttle_retry_ratio, EllipsisType):
            throttle_retry_ratio = cast("float | None", defaults["throttle_retry_ratio"])
        if throttle_retry_ratio is not None and (
            isinstance(throttle_retry_ratio, bool)
            or not isinstance(throttle_retry_ratio, int | float)
            or not 0 <= throttle_retry_ratio < math.inf
        ):
            raise ValueError(f"throttle_retry_ratio must be a number >= 0 or None, got {throttle_retry_ratio!r}")
        self.throttle_retry_ratio = throttle_retry_ratio
        if max_concurrent is not None and (isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int)):
            raise TypeError(f"max_concurrent must be an int >= 1 or None, got {max_concurrent!r}")
        if max_concurrent is not None and max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1 or None, got {max_concurrent!r}")
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.rate = _positive(rate, "rate")
        self.per = cast(float, _positive(per, "per", allow_none=False))
        self.burst = burst
        if rate_mode not in ("wait", "reject"):
            raise ValueError(f"rate_mode must be 'wait' or 'reject', got {rate_mode!r}")
        self.rate_mode = rate_mode
        self.total_timeout = _positive(total_timeout, "total_timeout")
        self.attempt_timeout = _positive(attempt_timeout, "attempt_timeout")
        self.max_retries = max_retries
        self.backoff = backoff
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.statuses = _check_statuses(statuses)
        self.breaker_statuses = _check_statuses(breaker_statuses, "breaker_statuses")
        self.honour_retry_after = honour_retry_after
        self.retry_budget = retry_budget
        self.failure_ratio = failure_ratio
        self.sampling_duration = sampling_duration
        self.minimum_throughput = minimum_throughput
        self.break_duration = break_duration
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
            policies.append(Bulkhead(self.max_concurrent, max_queued=self.max_queued, name=nm("concurrency")))
        if self.total_timeout is not None:
            if sync:
                policies.append(_DeadlineScope(self.total_timeout, clock=clock))
            else:
                policies.append(Timeout(self.total_timeout, set_deadline=True, name=nm("total timeout")))
        if self.rate is not None:
            # Inside the total timeout, so that waiting for a token is bounded by it.
            policies.append(
                RateLimiter(self.rate, self.per, burst=self.burst, mode=self.rate_mode, name=nm("rate"), clock=clock)
            )
        if self.max_retries:
            backoff = self.backoff
            if backoff is None:
                cap = self.max_delay if self.max_delay is not None else 30.0
                backoff = exponential(self.base_delay, max_delay=cap, jitter="decorrelated")
            budget = self.retry_budget
            if self.throttle_retry_ratio is not None and 429 in self.statuses:
                # One throttle budget per host: a quota is per host too.
                throttled = RetryBudget(self.throttle_retry_ratio, min_per_second=1.0, window=10.0, clock=clock)
                budget = _ThrottleAwareBudget(budget, throttled)
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
        if self.failure_ratio is not None:
            statuses = self.breaker_statuses
            policies.append(
                CircuitBreaker(
                    nm("breaker"),
                    failure_ratio=self.failure_ratio,
                    sampling_duration=self.sampling_duration,
                    minimum_throughput=self.minimum_throughput,
                    break_duration=self.break_duration,
                    on=is_transient_error,
                    on_result=lambda r: getattr(r, "status_code", None) in statuses,
                    clock=clock,
                )
            )
        if self.attempt_timeout is not None:
            if sync:
                policies.append(_DeadlineScope(self.attempt_timeout, clock=clock))
            else:
                policies.append(Timeout(self.attempt_timeout, set_deadline=True, name=nm("attempt timeout")))
        return Pipeline(*policies, name=f"{self.name} {host_key}" if _named else None, listeners=self.listeners)

    def __repr__(self) -> str:
        return (
            f"StandardPipeline(preset={self.preset!r}, max_concurrent={self.max_concurrent}, "
            f"total_timeout={self.total_timeout}, max_retries={self.max_retries}, "
            f"failure_ratio={self.failure_ratio}, attempt_timeout={self.attempt_timeout})"
        )


def standard_pipeline(preset: Literal["resilient", "microsoft"] = "resilient", **overrides: Any) -> StandardPipeline:
    """The standard pipeline: Microsoft's standard handler's defaults, per host.

    ``standard_pipeline()`` is what a transport uses when given no pipeline;
    ``standard_pipeline("microsoft")`` uses Microsoft's exact values
    (failure ratio 0.1); any part can be changed by keyword, e.g.
    ``standard_pipeline(attempt_timeout=2.0, max_retries=2)``. See
    :class:`StandardPipeline` for the table of defaults.
    """
    return StandardPipeline(preset, **overrides)

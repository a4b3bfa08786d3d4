"""Hedging: when a call is slow, start another one and take the first good answer.

A tail-latency weapon (Dean and Barroso, "The Tail at Scale"; Polly's
hedging strategy). ``Hedge(delay=0.05)`` starts the call; if no good
outcome has arrived after 50 ms it starts a second, identical call, and so
on up to ``max_hedged`` extra calls. The first good outcome wins and the
other calls are cancelled. A call that fails (with an exception matched by
``on`` or a result flagged by ``on_result``) starts the next hedge at once
instead of waiting for the delay.

The delay can follow the dependency instead of being a hand-set number:
``Hedge(delay="p95")`` (or ``delay=LatencyQuantile(0.95, window=200,
floor=0.005)``) hedges once a call has been slower than 95 % of the recent
attempts, with a floor and a fixed fallback until enough attempts were
seen. ``delay=0`` starts every call at once (parallel requests). A shared
``budget=`` (a :class:`~resilient.RetryBudget`, the same one the retries
use) bounds the extra calls to a share of the traffic.

Only hedge idempotent operations: every hedge is a real extra call. The
httpx transport hedges only idempotent requests.

Hedging needs concurrent calls, so it is async only, and each call runs in
its own task: the success path costs a task creation (a few microseconds),
unlike the other policies.
"""

from __future__ import annotations

import asyncio
import functools
import re
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from resilient.clock import Clock
from resilient.events import HEDGE_FIRED, EventSite, Listener, Severity
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
from resilient.validate import check_clock, check_fraction, check_int, check_seconds

if TYPE_CHECKING:
    from resilient.retry import RetryBudgetLike

__all__ = ["Hedge", "LatencyQuantile"]

_QUANTILE_NAME = re.compile(r"p(\d{1,3}(?:\.\d+)?)")


class LatencyQuantile:
    """A hedging delay that follows an observed quantile of recent attempt latencies.

    Args:
        quantile: the quantile of the recent latencies to wait for, in (0, 1)
            (0.95: hedge a call once it is slower than 95 % of recent attempts).
        window: how many recent attempt latencies are kept (a sliding window of
            samples, the oldest dropped first).
        floor: the delay is never below this many seconds, so that a very fast
            dependency is not hedged on noise.
        fallback: the delay used until ``min_samples`` latencies were seen.
        min_samples: latencies needed before the quantile is trusted.

    :class:`Hedge` feeds it the latency of every attempt that answered well
    and, for an attempt cancelled because another won, the time it had been
    running: a lower bound of its latency, which keeps the slow tail in the
    window (dropping it would shrink the quantile after every hedge won).
    One instance may be shared by several hedges calling the same dependency.
    """

    __slots__ = (
        "_cached",
        "_count",
        "_lock",
        "_next",
        "_refresh_every",
        "_samples",
        "_since_refresh",
        "fallback",
        "floor",
        "min_samples",
        "quantile",
        "window",
    )

    def __init__(
        self,
        quantile: float = 0.95,
        *,
        window: int = 200,
        floor: float = 0.001,
        fallback: float = 0.05,
        min_samples: int = 20,
    ) -> None:
        self.quantile = check_fraction(quantile, "quantile")
        if self.quantile >= 1.0:
            raise ValueError(f"quantile must be < 1, got {quantile!r}")
        self.window = check_int(window, "window", minimum=2)
        self.floor = check_seconds(floor, "floor", allow_zero=True)
        self.fallback = check_seconds(fallback, "fallback", allow_zero=True)
        self.min_samples = check_int(min_samples, "min_samples", minimum=1, maximum=self.window)
        self._samples: list[float] = []
        self._next = 0
        self._count = 0
        # Sorting the window on every call would cost more than the call:
        # the quantile is recomputed every 1/20 of a window of new samples.
        self._refresh_every = max(1, self.window // 20)
        self._since_refresh = 0
        self._cached = max(self.fallback, self.floor)
        self._lock = threading.Lock()

    @classmethod
    def parse(cls, name: str, param: str = "delay") -> LatencyQuantile:
        """``"p95"`` -> ``LatencyQuantile(0.95)``; ``"p99.9"`` -> ``LatencyQuantile(0.999)``."""
        match = _QUANTILE_NAME.fullmatch(name.strip().lower())
        if match is None:
            raise TypeError(f"{param} must be seconds, 'pNN' (such as 'p95') or a LatencyQuantile, got {name!r}")
        if not 0 < float(match.group(1)) < 100:
            raise ValueError(f"{param} must be a quantile between p0 and p100 (exclusive), got {name!r}")
        return cls(float(match.group(1)) / 100)

    def observe(self, seconds: float) -> None:
        """Record one attempt's latency (seconds); negative or non-finite values are ignored."""
        if not 0.0 <= seconds < float("inf"):
            return
        with self._lock:
            if len(self._samples) < self.window:
                self._samples.append(seconds)
            else:
                self._samples[self._next] = seconds
                self._next = (self._next + 1) % self.window
            self._count += 1
            self._since_refresh += 1
            if self._count >= self.min_samples and (
                self._since_refresh >= self._refresh_every or self._count == self.min_samples
            ):
                self._since_refresh = 0
                ordered = sorted(self._samples)
                index = min(len(ordered) - 1, int(self.quantile * len(ordered)))
                self._cached = max(self.floor, ordered[index])

    def current(self) -> float:
        """The delay to use now, in seconds."""
        return self._cached

    @property
    def samples(self) -> int:
        """How many latencies were observed so far (not capped by the window)."""
        return self._count

    def __repr__(self) -> str:
        return (
            f"LatencyQuantile({self.quantile}, window={self.window}, floor={self.floor}, "
            f"fallback={self.fallback}, min_samples={self.min_samples})"
        )


def _complete(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _consume(task: asyncio.Future[Any]) -> None:
    # A loser may still finish with an exception after we stopped caring:
    # retrieve it so asyncio does not log "exception was never retrieved".
    if not task.cancelled():
        task.exception()


class Hedge(Policy):
    """Start up to ``max_hedged`` extra calls when the first is slow; first good outcome wins.

    Args:
        delay: seconds to wait for a good outcome before starting the next
            call (>= 0; ``0`` starts every call at once), or an observed
            latency quantile: ``"p95"`` or a :class:`LatencyQuantile`. A
            failed call starts the next one at once.
        max_hedged: extra calls allowed (>= 1).
        on: exceptions that make an outcome bad (type, tuple or predicate).
        on_result: predicate flagging bad results.
        budget: bounds the extra calls (a :class:`~resilient.RetryBudget`,
            shared with the retries calling the same dependency): every call
            is recorded, every hedge must be spent from it, and a refused
            hedge is not started (the calls in flight go on).
        name: shown in events and status.
        clock: the clock the hedging delay and attempt latencies are
            measured on (tests pass a ``FakeClock``).
        listeners: event listeners for this policy only.

    When every call fails, the last outcome is returned (a result) or
    re-raised (an exception) with a note. An exception ``on`` does not match
    propagates at once, and the other calls are cancelled.
    """

    policy_type = "hedge"

    def __init__(
        self,
        delay: float | str | LatencyQuantile,
        *,
        max_hedged: int = 1,
        on: OnArg | None = Exception,
        on_result: Callable[[Any], bool] | None = None,
        budget: RetryBudgetLike | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        super().__init__(name=name, listeners=listeners)
        self.clock: Clock = check_clock(clock)
        if isinstance(delay, str):
            delay = LatencyQuantile.parse(delay)
        self.quantile: LatencyQuantile | None = delay if isinstance(delay, LatencyQuantile) else None
        self.delay: float = (
            self.quantile.current() if self.quantile is not None else check_seconds(delay, "delay", allow_zero=True)
        )
        self.max_hedged = check_int(max_hedged, "max_hedged", minimum=1)
        if budget is not None and not (
            callable(getattr(budget, "try_spend", None)) and callable(getattr(budget, "record_request", None))
        ):
            raise TypeError(f"budget must have record_request() and try_spend() (a RetryBudget), got {budget!r}")
        self.budget = budget
        self._on = exception_predicate(on)
        self._on_result = result_predicate(on_result)

    def build_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        raise TypeError(f"{self.label()} can only wrap async functions: hedged calls must run concurrently")

    def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        on = self._on
        on_result = self._on_result
        fixed_delay = self.delay
        quantile = self.quantile
        max_hedged = self.max_hedged
        budget = self.budget
        clock = self.clock

        async def hedge_call(*args: Any, **kwargs: Any) -> Any:
            loop = asyncio.get_running_loop()
            if budget is not None:
                budget.record_request()
            delay = quantile.current() if quantile is not None else fixed_delay
            # Attempt start times, kept only when latencies feed a quantile.
            starts: dict[asyncio.Future[Any], float] | None = {} if quantile is not None else None
            first = asyncio.ensure_future(fn(*args, **kwargs), loop=loop)
            tasks: set[asyncio.Future[Any]] = {first}
            if starts is not None:
                starts[first] = clock.now()
            hedges_left = max_hedged
            started = 1
            last: Outcome[Any] | None = None
            try:
                while True:
                    if hedges_left > 0 and delay > 0:
                        # The hedging delay, on the policy's clock: a future
                        # that its timer completes.
                        tick: asyncio.Future[None] = loop.create_future()
                        handle = clock.call_at(clock.now() + delay, functools.partial(_complete, tick))
                        try:
                            done, _ = await asyncio.wait({*tasks, tick}, return_when=asyncio.FIRST_COMPLETED)
                        finally:
                            handle.cancel()
                            tick.cancel()
                        done.discard(tick)
                    elif hedges_left > 0:
                        # delay=0: start the next call without waiting.
                        done = set()
                    else:
                        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    launch_now = not done
                    for task in done:
                        tasks.discard(task)
                        exc = task.exception()
                        if exc is not None:
                            if not isinstance(exc, Exception) or not on(exc):
                                raise exc
                            last = Outcome(exception=exc)
                            launch_now = True
                            continue
                        result = task.result()
                        if on_result is not None and on_result(result):
                            last = Outcome(result=result)
                            launch_now = True
                            continue
                        if starts is not None and quantile is not None:
                            quantile.observe(clock.now() - starts[task])
                        return result
                    if launch_now and hedges_left > 0:
                        if budget is not None and not budget.try_spend():
                            # Out of budget: no more hedges for this call;
                            # the calls in flight may still answer.
                            hedges_left = 0
                        else:
                            hedges_left -= 1
                            started += 1
                            self.emit(site, HEDGE_FIRED, Severity.INFO, attempt=started)
                            hedge = asyncio.ensure_future(fn(*args, **kwargs), loop=loop)
                            tasks.add(hedge)
                            if starts is not None:
                                starts[hedge] = clock.now()
                            continue
                    if not tasks:
                        assert last is not None
                        if last.exception is not None:
                            last.exception.add_note(f"resilient: {self.label()}: all {started} hedged calls failed")
                            raise last.exception
                        return last.result
            finally:
                if starts is not None and quantile is not None and tasks:
                    # A loser ran at least this long: a lower bound that
                    # keeps the slow tail visible to the quantile.
                    now = clock.now()
                    for task in tasks:
                        quantile.observe(now - starts[task])
                for task in tasks:
                    task.cancel()
                    task.add_done_callback(_consume)

        return hedge_call

    def __repr__(self) -> str:
        delay = self.quantile if self.quantile is not None else self.delay
        return f"Hedge(delay={delay!r}, max_hedged={self.max_hedged}, name={self.name!r})"

"""AdaptiveConcurrency: a bulkhead whose limit follows the backend (Netflix concurrency-limits).

The limiter is a :class:`~resilient.concurrency.Bulkhead` (same queue, same
:class:`~resilient.BulkheadFullError`, same ``acquire()``) that, after every
call, hands what the call saw to a limit algorithm
(:mod:`resilient.concurrency.limits`) and resizes itself to the limit it
returns. It drives the bulkhead through its public steps only:
:meth:`~resilient.concurrency.Bulkhead.enter`,
:meth:`~resilient.concurrency.Bulkhead.leave` and
:meth:`~resilient.concurrency.Bulkhead.resize`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from resilient.clock import Clock
from resilient.concurrency.bulkhead import Admission, Bulkhead
from resilient.concurrency.limits import AIMD, Gradient2, LimitAlgorithm
from resilient.events import EventSite, Listener
from resilient.policy import AsyncFn, AsyncWrapped, OnArg, SyncFn, exception_predicate, result_predicate
from resilient.validate import check_int

__all__ = ["AdaptiveConcurrency"]

# The algorithms ``algorithm=`` names, each built with its defaults.
_ALGORITHMS: dict[str, type[Gradient2] | type[AIMD]] = {"aimd": AIMD, "gradient2": Gradient2}


class AdaptiveConcurrency(Bulkhead):
    """A bulkhead whose limit adapts to the backend (Netflix concurrency-limits).

    The limit starts at ``initial_limit`` and, after every call, moves as its
    algorithm says, never below ``min_limit`` nor above ``max_limit``:

    * ``"gradient2"`` (the default, :class:`~resilient.concurrency.Gradient2`):
      latency driven. Calls are averaged per short window and compared with
      a learned long-term baseline; while latency stays at the baseline the
      limit grows, once queueing pushes it above the limit shrinks. No
      latency threshold to set.
    * ``"aimd"`` (:class:`~resilient.concurrency.AIMD`): a call that succeeds
      while at least half the limit is in use raises it by one (additive
      increase); a call that fails (``on`` / ``on_result``) or takes longer
      than ``latency_threshold`` multiplies it by ``backoff_ratio``
      (multiplicative decrease).
    * any object with the :class:`~resilient.concurrency.LimitAlgorithm`
      protocol.

    Calls over the limit queue or are rejected exactly as with
    :class:`Bulkhead` (``BulkheadFullError``), and :meth:`acquire` works the
    same way, so the ASGI load-shedding middleware takes either.

    Args:
        algorithm: ``"gradient2"``, ``"aimd"`` or a
            :class:`~resilient.concurrency.LimitAlgorithm`. ``None``:
            ``"gradient2"``, unless ``backoff_ratio`` or ``latency_threshold``
            is given (they are AIMD's: ``"aimd"`` then, as before the
            gradient became the default).
        initial_limit: the starting limit (between ``min_limit`` and ``max_limit``).
        min_limit: the lowest limit (>= 1).
        max_limit: the highest limit (>= ``min_limit``).
        backoff_ratio: AIMD's factor applied on a drop, in (0, 1); ``None``: 0.9.
        latency_threshold: AIMD's seconds (> 0) above which a successful call
            also counts as a drop; ``None``: only failures do.
        on: exceptions that count as drops (default any exception).
        on_result: predicate flagging results that count as drops.
        max_queued: as :class:`Bulkhead`.
        queue_timeout: as :class:`Bulkhead`.
        name: as :class:`Bulkhead`.
        clock: as :class:`Bulkhead`.
        listeners: as :class:`Bulkhead`.
        enforce: as :class:`Bulkhead` (shadow mode). A call run without a
            slot that would have queued adapts the limit as a call at full
            use (it would have run once a slot freed); one that would have
            been rejected does not adapt it.

    ``acquire_sync()`` holds a slot without adapting the limit (no outcome is
    reported); wrapped sync functions do adapt it.
    """

    policy_type = "adaptive_concurrency"

    def __init__(
        self,
        *,
        algorithm: str | LimitAlgorithm | None = None,
        initial_limit: int = 20,
        min_limit: int = 1,
        max_limit: int = 1000,
        backoff_ratio: float | None = None,
        latency_threshold: float | None = None,
        on: OnArg | None = Exception,
        on_result: Callable[[Any], bool] | None = None,
        max_queued: int = 0,
        queue_timeout: float | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
        enforce: bool | Callable[[], bool] = True,
    ) -> None:
        check_int(initial_limit, "initial_limit")
        check_int(min_limit, "min_limit")
        check_int(max_limit, "max_limit")
        if max_limit < min_limit:
            raise ValueError(f"max_limit must be >= min_limit ({min_limit}), got {max_limit!r}")
        if not min_limit <= initial_limit <= max_limit:
            raise ValueError(f"initial_limit must be between min_limit and max_limit, got {initial_limit!r}")
        #: The limit algorithm (:mod:`resilient.concurrency.limits`).
        self.algorithm: LimitAlgorithm = _algorithm(algorithm, backoff_ratio, latency_threshold)
        super().__init__(
            initial_limit,
            max_queued=max_queued,
            queue_timeout=queue_timeout,
            name=name,
            clock=clock,
            listeners=listeners,
            enforce=enforce,
        )
        self.min_limit = min_limit
        self.max_limit = max_limit
        aimd = self.algorithm if isinstance(self.algorithm, AIMD) else None
        #: AIMD's factor on a drop (``None`` with another algorithm).
        self.backoff_ratio = None if aimd is None else aimd.backoff_ratio
        #: AIMD's latency threshold (``None`` without one, or with another algorithm).
        self.latency_threshold = None if aimd is None else aimd.latency_threshold
        self._on = exception_predicate(on)
        self._on_result = result_predicate(on_result)
        # An exact float limit, so that repeated small steps are not lost to rounding.
        self._limit = float(initial_limit)
        # The whole limit last given to resize(), so that an unchanged one costs no lock.
        self._applied = initial_limit

    @property
    def limit(self) -> int:
        """The current concurrency limit."""
        return self.max_concurrent

    def status(self) -> dict[str, Any]:
        """The bulkhead's snapshot plus the adaptive limit, its bounds and its algorithm's class name."""
        out = super().status()
        out.update(limit=self.max_concurrent, min_limit=self.min_limit, max_limit=self.max_limit)
        out["algorithm"] = type(self.algorithm).__name__
        return out

    def resize(self, max_concurrent: int) -> None:
        """Set the limit now (between ``min_limit`` and ``max_limit``); the algorithm goes on from there."""
        limit = check_int(max_concurrent, "max_concurrent")
        if not self.min_limit <= limit <= self.max_limit:
            raise ValueError(f"max_concurrent must be between min_limit and max_limit, got {max_concurrent!r}")
        super().resize(limit)
        self._limit = float(limit)
        self._applied = limit

    def acquire(self) -> _AdaptiveSlot:  # type: ignore[override]
        """An async context manager holding one slot; its outcome and latency adapt the limit."""
        return _AdaptiveSlot(self)

    # -- the engine's hand-offs: after enter(), after the call ------------------

    def _done(self, how: Admission, start: float, dropped: bool, result: Any = None) -> Any:
        """Give the slot back; then, for a call an enforcing limiter would have run, adapt the limit.

        Returns ``result``, so that a wrapper hands off and returns in one step.
        """
        # In flight as it ends, itself included; shadow mode, no slot: a call that would have queued
        # would have run at full use.
        inflight = self.max_concurrent if how else self.running
        if not self.leave(how):
            return result
        now = self.clock.now()
        new = self.algorithm.update(self._limit, now, now - start, inflight, dropped)
        if new == self._limit:
            return result
        low = self.min_limit
        if not new >= low:  # NaN too
            new = float(low)
        elif new > self.max_limit:
            new = float(self.max_limit)
        self._limit = new
        if int(new) != self._applied:
            self._applied = int(new)
            super().resize(self._applied)
        return result

    def _failed(self, how: Admission, start: float, exc: BaseException) -> None:
        if isinstance(exc, Exception):
            self._done(how, start, self._on(exc))
        else:  # cancelled, interrupted: says nothing about the backend
            self.leave(how)

    # -- wrappers: enter, the call, one hand-off --------------------------------

    def _shell_parts(self) -> tuple[Any, ...]:
        """What both wrappers bind once, as locals of their closures."""
        return self.clock.now, self._failed, self._done, self._on_result

    def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        """The closure guarding each call of the async ``fn`` (:meth:`~resilient.Policy.build_async`)."""
        enter = self.enter
        now, failed, done, on_result = self._shell_parts()

        async def adaptive_call(*args: Any, **kwargs: Any) -> Any:
            how = await enter(site)
            start = now()
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                failed(how, start, exc)
                raise
            return done(how, start, on_result is not None and on_result(result), result)

        return adaptive_call

    def build_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        """The closure guarding each call of the synchronous ``fn`` (:meth:`~resilient.Policy.build_sync`)."""
        enter = self.enter_sync
        now, failed, done, on_result = self._shell_parts()

        def adaptive_call(*args: Any, **kwargs: Any) -> Any:
            how = enter(site)
            start = now()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                failed(how, start, exc)
                raise
            return done(how, start, on_result is not None and on_result(result), result)

        return adaptive_call

    def __repr__(self) -> str:
        return (
            f"AdaptiveConcurrency(limit={self.max_concurrent}, min_limit={self.min_limit}, "
            f"max_limit={self.max_limit}, algorithm={self.algorithm!r}, name={self.name!r})"
        )


def _algorithm(algorithm: Any, backoff_ratio: float | None, latency_threshold: float | None) -> LimitAlgorithm:
    """The algorithm ``algorithm=`` names (AIMD's two options only go with AIMD)."""
    aimd_options = [
        name
        for name, value in (("backoff_ratio", backoff_ratio), ("latency_threshold", latency_threshold))
        if value is not None
    ]
    if algorithm is None:
        algorithm = "aimd" if aimd_options else "gradient2"
    if algorithm == "aimd":
        return AIMD(backoff_ratio=0.9 if backoff_ratio is None else backoff_ratio, latency_threshold=latency_threshold)
    if aimd_options:
        raise TypeError(
            f"{', '.join(aimd_options)} given with algorithm={algorithm!r}: they are options of algorithm='aimd' "
            "(configure another algorithm on its own object)"
        )
    if isinstance(algorithm, str):
        if algorithm not in _ALGORITHMS:
            raise ValueError(f"algorithm must be one of {sorted(_ALGORITHMS)} or a LimitAlgorithm, got {algorithm!r}")
        return _ALGORITHMS[algorithm]()
    if not callable(getattr(algorithm, "update", None)) or isinstance(algorithm, type):
        raise TypeError(
            f"algorithm must be one of {sorted(_ALGORITHMS)} or an object with an update() method "
            f"(LimitAlgorithm), got {algorithm!r}"
        )
    return algorithm  # type: ignore[no-any-return]


class _AdaptiveSlot:
    """``async with limiter.acquire():`` for :class:`AdaptiveConcurrency` (one per block)."""

    __slots__ = ("_how", "_limiter", "_start")

    def __init__(self, limiter: AdaptiveConcurrency) -> None:
        self._limiter = limiter
        self._start = 0.0
        self._how = Admission.SLOT

    async def __aenter__(self) -> None:
        lim = self._limiter
        self._how = await lim.enter()
        self._start = lim.clock.now()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        lim = self._limiter
        if exc is None:
            lim._done(self._how, self._start, False)
        else:
            lim._failed(self._how, self._start, exc)

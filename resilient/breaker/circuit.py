"""The :class:`CircuitBreaker` policy: judges outcomes, admits or rejects calls, reports transitions.

The state itself (window, counters, probe slots, transitions) lives in the
:class:`~resilient.breaker.BreakerStore`; this module decides what an
outcome *is* and tells people about what the store did.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from types import MappingProxyType, TracebackType
from typing import Any, Final, cast

from resilient.breaker import _shell_async, _shell_local, _shell_sync
from resilient.breaker.state import (
    BreakDuration,
    BreakerConfig,
    BreakerMetrics,
    BreakerSnapshot,
    CircuitState,
    StateChange,
)
from resilient.breaker.store import AsyncBreakerStore, BreakerStore, InMemoryBreakerStore
from resilient.breaker.verdict import DROPPED, FAILURE, NEITHER, SHADOW, SUCCESS
from resilient.clock import Clock
from resilient.errors import CircuitOpenError
from resilient.events import (
    CIRCUIT_CLOSED,
    CIRCUIT_HALF_OPENED,
    CIRCUIT_OPENED,
    EXTRA_FAILED_PROBES,
    EXTRA_FROM_STATE,
    EXTRA_MANUAL,
    EXTRA_REASON,
    EXTRA_RETRY_AFTER,
    EXTRA_STATE,
    EXTRA_TO_STATE,
    REJECTED,
    WOULD_REJECT,
    EventSite,
    Listener,
    Severity,
    notify,
)
from resilient.policy import (
    AsyncFn,
    AsyncWrapped,
    OnArg,
    Policy,
    ShadowMode,
    SyncFn,
    exception_predicate,
    result_predicate,
)
from resilient.validate import check_clock, check_fraction, check_int, check_seconds

__all__ = ["BreakerGuard", "CircuitBreaker"]

logger = logging.getLogger("resilient.breaker")

_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN
_ISOLATED = CircuitState.ISOLATED

StateListener = Callable[[StateChange], Any]

# A rejection event's extras, by the state that rejects (built once: rejections run while a circuit is open).
_REJECTIONS: Final = {
    state: MappingProxyType({EXTRA_REASON: "circuit_open", EXTRA_STATE: state.value}) for state in CircuitState
}
_OPEN_REJECTION: Final = _REJECTIONS[_OPEN]

# The shadow-mode permit and the engine's verdicts on an outcome (CircuitBreaker._verdict)
# live in resilient.breaker.verdict, which the shells share.
_SHADOW: Final = SHADOW
_SUCCESS: Final = SUCCESS
_FAILURE: Final = FAILURE
_NEITHER: Final = NEITHER
_DROPPED: Final = DROPPED

# What the engine's admission gives: a permit, a rejection to raise, or None (the store decides a probe).
_Admission = BreakerSnapshot | CircuitOpenError | None


def _listener(value: Any, param: str) -> StateListener | None:
    if value is not None and not callable(value):
        raise TypeError(f"{param} must be a callable taking a StateChange, or None, got {value!r}")
    return value  # type: ignore[no-any-return]


class CircuitBreaker(ShadowMode, Policy):
    """Fail fast while a dependency is failing; probe it; recover by itself.

    Args:
        name: shown in errors, events, logs and the status endpoint.
        failure_ratio: ratio mode (the default, as Polly v8): open when, over
            the last ``sampling_duration`` seconds, at least
            ``minimum_throughput`` calls were made and this fraction of them
            failed. In (0, 1]; ``None`` (the default) means 0.5, unless
            ``consecutive_failures`` alone is given.
        sampling_duration: the sliding window, seconds (> 0), kept in 10 time buckets.
        minimum_throughput: calls the window must hold before the circuit may open (>= 1).
        consecutive_failures: set it alone to switch to consecutive mode: open
            after this many failures in a row (pybreaker's ``fail_max``). Set
            it together with ``failure_ratio`` and whichever is reached first
            opens the circuit: a long run of failures (a dead dependency)
            opens it at once, without waiting for ``minimum_throughput``
            calls, while the ratio still judges scattered failures.
        slow_call_duration: calls lasting at least this many seconds count as
            failures, even when they succeed (Resilience4j's slow calls).
        break_duration: how long the circuit stays open before a probe, in
            seconds; or a callable ``(failed_probes, last_duration) ->
            seconds``, where ``failed_probes`` counts the failed probes since
            the circuit opened from closed (0 on the first opening), to grow
            the break (``lambda n, _: min(5 * 2**n, 60)``).
        half_open_max_calls: probes admitted at the same time while half-open (>= 1).
        half_open_successes: successful probes needed to close (>= 1).
        on: exceptions that are failures (type, tuple, or predicate). Other
            exceptions count as successes: the dependency answered.
        on_result: predicate flagging results that are failures (an HTTP 503).
        ignore: exceptions that count as neither failure nor success
            (a cancelled probe is treated the same way).
        on_open: state listener called on opening: a sync or async callable
            taking a :class:`~resilient.breaker.StateChange`. One that raises
            is logged once and never breaks a call.
        on_close: the same, called on closing.
        on_half_open: the same, called on half-opening.
        store: where the state lives (default: a new :class:`InMemoryBreakerStore`).
        clock: time source (tests: :class:`~resilient.testing.FakeClock`).
        listeners: event listeners for this policy only.
        enforce: ``False`` (or a callable returning it, read only when a call
            would be rejected) is shadow mode: the breaker decides exactly as
            usual, counts (:attr:`would_reject`) and emits ``would_reject``
            with the :class:`~resilient.CircuitOpenError` it would have
            raised, and lets the call through. Such a call's outcome is not
            counted (the enforcing breaker would not have made it), so the
            circuit moves exactly as an enforcing one would.

    While open, calls raise :class:`~resilient.CircuitOpenError` (with
    ``retry_after``) without calling the function. A half-open probe that
    runs longer than the break duration is given up: another probe is
    admitted and the late outcome is ignored (as Polly does).

    Raises:
        ValueError, TypeError: an option out of range, naming it.
    """

    policy_type = "circuit_breaker"

    def __init__(
        self,
        name: str | None = None,
        *,
        failure_ratio: float | None = None,
        sampling_duration: float = 30.0,
        minimum_throughput: int = 100,
        consecutive_failures: int | None = None,
        slow_call_duration: float | None = None,
        break_duration: float | BreakDuration = 5.0,
        half_open_max_calls: int = 1,
        half_open_successes: int = 1,
        on: OnArg | None = Exception,
        on_result: Callable[[Any], bool] | None = None,
        ignore: OnArg | None = (),
        on_open: StateListener | None = None,
        on_close: StateListener | None = None,
        on_half_open: StateListener | None = None,
        store: BreakerStore | None = None,
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
        enforce: bool | Callable[[], bool] = True,
    ) -> None:
        super().__init__(name=name, listeners=listeners)
        self.set_enforce(enforce)
        ratio = 0.5 if failure_ratio is None else check_fraction(failure_ratio, "failure_ratio")
        sampling = check_seconds(sampling_duration, "sampling_duration")
        throughput = check_int(minimum_throughput, "minimum_throughput")
        consecutive = check_int(consecutive_failures, "consecutive_failures", allow_none=True)
        slow = check_seconds(slow_call_duration, "slow_call_duration", allow_none=True)
        if not callable(break_duration):
            break_duration = check_seconds(break_duration, "break_duration")
        elif isinstance(break_duration, type):
            raise TypeError(
                f"break_duration must be seconds or a callable (failed_probes, last) -> seconds, got {break_duration!r}"
            )
        self.clock: Clock = check_clock(clock)
        self._on = exception_predicate(on)
        self._on_result = result_predicate(on_result)
        self._ignore = None if ignore is None or ignore == () else exception_predicate(ignore, param="ignore")
        self._on_open = _listener(on_open, "on_open")
        self._on_close = _listener(on_close, "on_close")
        self._on_half_open = _listener(on_half_open, "on_half_open")
        #: The validated options, as the store sees them.
        self.config = BreakerConfig(
            name=name,
            failure_ratio=ratio,
            sampling_duration=sampling,
            minimum_throughput=throughput,
            consecutive_failures=consecutive,
            slow_call_duration=slow,
            break_duration=break_duration,
            half_open_max_calls=check_int(half_open_max_calls, "half_open_max_calls"),
            half_open_successes=check_int(half_open_successes, "half_open_successes"),
            clock=self.clock,
            both_thresholds=consecutive is not None and failure_ratio is not None,
        )
        if store is None:
            store = InMemoryBreakerStore()
        elif not isinstance(store, BreakerStore):
            raise TypeError(f"store must implement BreakerStore, got {store!r}")
        store.bind(self.config)
        #: Where the state lives.
        self.store: BreakerStore = store
        self._async_store: AsyncBreakerStore | None = store if isinstance(store, AsyncBreakerStore) else None
        # The same store, typed for the async hand-offs, which run only when _async_store is set.
        self._astore: AsyncBreakerStore = cast(AsyncBreakerStore, store)
        self._now: Callable[[], float] = self.clock.now
        self._site = EventSite()
        self._label_text = self.label()

    # -- inspection and manual control ---------------------------------------

    @property
    def state(self) -> CircuitState:
        """The stored state (OPEN past its break still reads OPEN until a call probes); see :attr:`effective_state`."""
        return self.store.snapshot.state

    @property
    def effective_state(self) -> CircuitState:
        """The state the next call meets: OPEN past its break reads HALF_OPEN (a call would probe).

        What the status endpoint and gauges show; :attr:`state` is the
        stored state, which moves only when a call probes.
        """
        snap = self.store.snapshot
        if snap.state is _OPEN and self._now() >= snap.until:
            return _HALF_OPEN
        return snap.state

    @property
    def metrics(self) -> BreakerMetrics:
        """Window counts, failure ratio, probes; see :class:`~resilient.breaker.BreakerMetrics`."""
        return self.store.metrics(self._now())

    def isolate(self) -> None:
        """Hold the circuit open (every call rejected) until :meth:`reset`."""
        snap = self.store.transition(_ISOLATED, self._now())
        self._transitioned(snap, self._site, None)

    def reset(self) -> None:
        """Close the circuit and clear its counters (also ends :meth:`isolate`)."""
        snap = self.store.transition(_CLOSED, self._now())
        self._transitioned(snap, self._site, None)

    def trip(self) -> None:
        """Open the circuit now, for one break duration (then it probes as usual)."""
        snap = self.store.transition(_OPEN, self._now())
        self._transitioned(snap, self._site, None)

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot for the status endpoint."""
        cfg = self.config
        snap = self.store.snapshot
        out: dict[str, Any] = {
            "type": self.policy_type,
            "name": self.name,
            "mode": "ratio or consecutive" if cfg.both_thresholds else "ratio" if cfg.ratio_mode else "consecutive",
            "state_for": max(0.0, self._now() - snap.since),
            "break_duration": snap.break_duration,
            "failed_probes": snap.failed_probes,
            "store": type(self.store).__name__,
        }
        out.update(self.metrics.as_dict())
        out["state"] = self.effective_state.value
        out["enforcing"] = self.enforcing
        out["would_reject"] = self._would_reject
        threshold: dict[str, Any] = {}
        if cfg.ratio_mode:
            threshold["failure_ratio"] = cfg.failure_ratio
            threshold["sampling_duration"] = cfg.sampling_duration
            threshold["minimum_throughput"] = cfg.minimum_throughput
        if cfg.consecutive_failures is not None:
            threshold["consecutive_failures"] = cfg.consecutive_failures
        out["threshold"] = threshold
        return out

    # -- low-level API (integrations) ----------------------------------------

    def allow(self) -> BreakerSnapshot:
        """Admit one call or raise :class:`~resilient.CircuitOpenError`.

        Returns the permit to hand back to exactly one of
        :meth:`record_success`, :meth:`record_failure`,
        :meth:`record_exception`, :meth:`record_result` or :meth:`release`.
        In shadow mode a call that would be rejected gets a permit whose
        outcome is not counted.
        """
        permit = self.store.snapshot
        if permit.state is not _CLOSED:
            permit = self._admit(self._site)
        return permit

    async def aallow(self) -> BreakerSnapshot:
        """:meth:`allow`, awaiting the store when it does I/O."""
        permit = self.store.snapshot
        if permit.state is not _CLOSED:
            permit = await self._aadmit(self._site) if self._async_store else self._admit(self._site)
        return permit

    def record_success(self, permit: BreakerSnapshot, duration: float | None = None) -> None:
        """The call admitted with ``permit`` succeeded (slow if ``duration >= slow_call_duration``)."""
        self._settle(permit, None, False, None, self._site, duration)

    def record_failure(self, permit: BreakerSnapshot, duration: float | None = None) -> None:
        """The call admitted with ``permit`` failed."""
        self._settle(permit, None, True, None, self._site, duration)

    def record_exception(self, permit: BreakerSnapshot, exc: BaseException, duration: float | None = None) -> None:
        """Judge ``exc`` with ``on``/``ignore`` and record it (a non-``Exception`` releases the permit)."""
        self._settle(permit, exc, False, None, self._site, duration)

    def record_result(self, permit: BreakerSnapshot, result: Any, duration: float | None = None) -> None:
        """Judge ``result`` with ``on_result`` and record it."""
        failed = self._on_result is not None and self._on_result(result)
        self._settle(permit, None, failed, None, self._site, duration)

    def release(self, permit: BreakerSnapshot) -> None:
        """The call ended with nothing to count (cancelled, ignored): free its probe slot."""
        if permit is not _SHADOW:
            self.store.release(permit)

    def guard(self) -> BreakerGuard:
        """A context manager (``with`` or ``async with``) around one call.

        ``with breaker.guard() as g: ...``: entering admits (or raises
        :class:`~resilient.CircuitOpenError`); leaving records the exception
        (judged by ``on``/``ignore``) or a success; ``g.failed()`` marks a
        result-based failure before leaving.
        """
        return BreakerGuard(self)

    # -- the engine: every decision, no I/O, no awaits -----------------------
    #
    # What a call meets (_gate), what the store's answer to a probe means
    # (_admitted), what an outcome is (_verdict), what a rejection raises
    # (_reject) and what a transition tells people (_transitioned). The
    # adapters below only move permits and outcomes between the engine and
    # the store.

    def _gate(self, now: float, site: EventSite) -> _Admission:
        """The permit of a call the snapshot admits; ``None``: a probe, which the store decides; or a rejection."""
        snap = self.store.snapshot
        state = snap.state
        if state is _CLOSED:
            return snap
        if state is _OPEN and now < snap.until:
            return self._reject_open(snap.until - now, site)
        if state is _ISOLATED:
            return self._reject(snap, now, site)
        return None

    def _admitted(
        self, acquired: tuple[BreakerSnapshot | None, BreakerSnapshot | None], now: float, site: EventSite
    ) -> BreakerSnapshot | CircuitOpenError:
        """The store's answer to a probe: report the transition it made, then admit or reject."""
        permit, moved = acquired
        if moved is not None:
            self._transitioned(moved, site, None)
        if permit is None:
            return self._reject(self.store.snapshot, now, site)
        return permit

    def _verdict(self, permit: BreakerSnapshot, exc: BaseException | None, failed: bool, duration: float | None) -> int:
        """What an outcome does to the circuit: ``_FAILURE``, ``_SUCCESS``, ``_NEITHER`` or ``_DROPPED``."""
        if permit is _SHADOW:
            return _DROPPED
        if exc is not None:
            if not isinstance(exc, Exception):
                return _NEITHER  # cancelled: the call says nothing about the dependency
            try:
                if self._ignore is not None and self._ignore(exc):
                    return _NEITHER
                if self._on(exc):
                    return _FAILURE
            except Exception:  # a broken predicate: count the call as failed rather than crash
                logger.exception("resilient: %s: the on=/ignore= predicate raised; counting a failure", self.label())
                return _FAILURE
        elif failed:
            return _FAILURE
        slow = self.config.slow_call_duration
        return _FAILURE if slow is not None and duration is not None and duration >= slow else _SUCCESS

    def _reject(self, snap: BreakerSnapshot, now: float, site: EventSite) -> BreakerSnapshot | CircuitOpenError:
        """Refuse the call: the :class:`~resilient.CircuitOpenError` to raise, or, in shadow mode, report it.

        The error is returned, not raised: the hand-off raises it, so that its
        traceback holds no frame of the engine's.
        """
        retry_after = snap.retry_after(now)
        if snap.state is _ISOLATED:
            msg = f"{self.label()} is isolated (held open until reset())"
        elif snap.state is _HALF_OPEN:
            msg = f"{self.label()} is half-open and its probe slots are taken"
        else:
            msg = f"{self.label()} is open; retry after {retry_after:.3g} s"
        err = CircuitOpenError(msg, policy=self.name, retry_after=retry_after)
        if self._enforce is not True and self.shadowed():
            return self._shadowed(err, snap.state, retry_after, site)
        if site.enabled(self.listeners):
            extras = _REJECTIONS[snap.state]
            self.emit(site, REJECTED, Severity.INFO, duration=retry_after, exception=CircuitOpenError, extras=extras)
        return err

    def _reject_open(self, retry_after: float, site: EventSite) -> BreakerSnapshot | CircuitOpenError:
        # The common rejection, kept lean: it runs for every call while the circuit is open.
        err = CircuitOpenError(
            f"{self._label_text} is open; retry after {retry_after:.3g} s", policy=self.name, retry_after=retry_after
        )
        if self._enforce is not True and self.shadowed():
            return self._shadowed(err, _OPEN, retry_after, site)
        if site.enabled(self.listeners):
            self.emit(
                site, REJECTED, Severity.INFO, duration=retry_after, exception=CircuitOpenError, extras=_OPEN_REJECTION
            )
        return err

    def _shadowed(
        self, err: CircuitOpenError, state: CircuitState, retry_after: float | None, site: EventSite
    ) -> BreakerSnapshot:
        """Shadow mode: count and report the rejection, and hand out the permit whose outcome is dropped."""
        self._would_reject += 1
        if site.enabled(self.listeners):
            extras: dict[str, str | float] = {EXTRA_REASON: "circuit_open", EXTRA_STATE: state.value}
            if retry_after is not None:
                extras[EXTRA_RETRY_AFTER] = retry_after
            self.emit(site, WOULD_REJECT, Severity.INFO, exception=err, extras=extras)
        return _SHADOW

    # -- the hand-offs: engine <-> store ---------------------------------------
    #
    # Written once, in breaker/_shell_async.py (for a store that does I/O);
    # the sync ones are generated from it by scripts/unasync.py.

    _admit = _shell_sync.admit
    _aadmit = _shell_async.aadmit
    _settle = _shell_sync.settle
    _asettle = _shell_async.asettle

    # -- transitions: events, logs, listeners --------------------------------

    def _transitioned(self, snap: BreakerSnapshot, site: EventSite, exc: BaseException | None) -> None:
        state = snap.state
        previous = snap.previous.value if snap.previous is not None else "none"
        extras: dict[str, str | int | float | bool] = {
            EXTRA_FROM_STATE: previous,
            EXTRA_TO_STATE: state.value,
            EXTRA_MANUAL: snap.manual,
        }
        if state is _OPEN or state is _ISOLATED:
            if state is _ISOLATED:
                logger.warning("resilient: %s isolated (held open until reset())", self.label())
            else:
                logger.warning(
                    "resilient: %s opened (from %s) for %.3g s%s",
                    self.label(),
                    previous,
                    snap.break_duration,
                    f" after {snap.failed_probes} failed probes" if snap.failed_probes else "",
                )
                if exc is not None and isinstance(exc, Exception):
                    exc.add_note(f"resilient: this failure opened {self.label()} for {snap.break_duration:.3g} s")
            extras[EXTRA_FAILED_PROBES] = snap.failed_probes
            self.emit(
                site, CIRCUIT_OPENED, Severity.WARNING, duration=snap.break_duration, exception=exc, extras=extras
            )
            listener = self._on_open
        elif state is _HALF_OPEN:
            logger.info("resilient: %s half-open: probing", self.label())
            self.emit(site, CIRCUIT_HALF_OPENED, Severity.INFO, extras=extras)
            listener = self._on_half_open
        else:
            if snap.previous is not _CLOSED:
                logger.info("resilient: %s closed", self.label())
                self.emit(site, CIRCUIT_CLOSED, Severity.INFO, extras=extras)
            listener = self._on_close if snap.previous is not _CLOSED else None
        if listener is not None:
            # The one delivery path of every user callback: called now, or scheduled when async; a
            # raising listener is logged once and never breaks the call or the state machine.
            notify(listener, StateChange(self.name, snap.previous, state, snap, exc), log=logger)

    # -- the shells: a fast-path check, the call, one hand-off ---------------
    #
    # The fast-path check after the call: a success that ``on_result`` did
    # not flag and that was quicker than ``slow_call_duration`` (the same
    # threshold _verdict applies; tests/test_breaker_shells.py checks that
    # they agree) goes straight to the store's ``record_success``; every
    # other outcome goes to ``settle``. The three shells are one text,
    # breaker/_shell_async.py (a store with I/O), from which
    # scripts/unasync.py generates the sync one and the async one over a
    # local store (only the call awaited).

    def _shell(self) -> tuple[BreakerStore, Callable[[], float], bool, float, Callable[[Any], bool] | None, Any]:
        slow = self.config.slow_call_duration
        timed = slow is not None
        return self.store, self._now, timed, slow if slow is not None else math.inf, self._on_result, self._transitioned

    def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        """The closure guarding each call of the async ``fn`` (:meth:`~resilient.Policy.build_async`)."""
        if self._async_store is not None:
            return _shell_async.build_async(self, fn, site)
        return _shell_local.build_async(self, fn, site)

    def build_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        """The closure guarding each call of the synchronous ``fn`` (:meth:`~resilient.Policy.build_sync`)."""
        return _shell_sync.build_sync(self, fn, site)

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self.name!r}, state={self.state.value!r})"


class BreakerGuard:
    """One call guarded by a breaker, as a (sync or async) context manager; see :meth:`CircuitBreaker.guard`."""

    __slots__ = ("_breaker", "_failed", "_permit", "_start")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._permit: BreakerSnapshot | None = None
        self._failed = False
        self._start = 0.0

    @property
    def permit(self) -> BreakerSnapshot | None:
        """The permit, once admitted."""
        return self._permit

    def failed(self) -> None:
        """Count this call as a failure even if the block ends normally (e.g. a 503 response)."""
        self._failed = True

    def _take(self) -> BreakerSnapshot | None:
        # Leaving twice (or without having entered) hands nothing over.
        permit, self._permit = self._permit, None
        return permit

    def __enter__(self) -> BreakerGuard:
        self._permit = self._breaker.allow()
        self._start = self._breaker._now()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        permit = self._take()
        if permit is not None:
            breaker = self._breaker
            breaker._settle(permit, exc, self._failed, self._start, breaker._site)

    async def __aenter__(self) -> BreakerGuard:
        self._permit = await self._breaker.aallow()
        self._start = self._breaker._now()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        permit = self._take()
        if permit is not None:
            breaker = self._breaker
            if breaker._async_store is None:  # a local store never blocks: the sync hand-off will do
                breaker._settle(permit, exc, self._failed, self._start, breaker._site)
            else:
                await breaker._asettle(permit, exc, self._failed, self._start, breaker._site)

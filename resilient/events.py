"""Telemetry events: what policies report when something notable happens.

Nothing here runs on the success path. A policy builds a
:class:`ResilienceEvent` only after it has checked that somebody listens
(:meth:`EventSite.enabled`), so with no listener registered the cost of
telemetry is one truth test on the failure path and nothing on success.

Listeners are plain callables taking one event. They are registered
globally (:func:`add_listener`), per pipeline (``Pipeline(listeners=...)``)
or per policy (``Retry(listeners=...)``). An ``async def`` listener is
scheduled on the running loop and never awaited by the call. A listener
that raises is logged once (per listener) and otherwise ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import threading
import warnings
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, Protocol, TypeVar, cast

__all__ = [
    "BUDGET_EXHAUSTED",
    "CACHE_REFRESH_FAILED",
    "CACHE_STALE_HIT",
    "CIRCUIT_CLOSED",
    "CIRCUIT_HALF_OPENED",
    "CIRCUIT_OPENED",
    "EXECUTION_ATTEMPT",
    "EXTRA_ACCEPTS",
    "EXTRA_BACKEND",
    "EXTRA_DEADLINE",
    "EXTRA_FAILED_PROBES",
    "EXTRA_FROM_STATE",
    "EXTRA_HTTP_METHOD",
    "EXTRA_HTTP_STATUS",
    "EXTRA_LIMIT",
    "EXTRA_MANUAL",
    "EXTRA_OUTCOME",
    "EXTRA_PROBABILITY",
    "EXTRA_QUEUED",
    "EXTRA_REASON",
    "EXTRA_REQUESTS",
    "EXTRA_RETRY_AFTER",
    "EXTRA_RUNNING",
    "EXTRA_SERVER_ADDRESS",
    "EXTRA_SERVER_PORT",
    "EXTRA_STATE",
    "EXTRA_TO_STATE",
    "EXTRA_WHERE",
    "FALLBACK_USED",
    "HEDGE_FIRED",
    "PIPELINE_EXECUTED",
    "REJECTED",
    "RETRY",
    "STORE_FAILED_OPEN",
    "STORE_RECOVERED",
    "TIMEOUT",
    "WOULD_REJECT",
    "DurationListener",
    "EventSite",
    "Listener",
    "LoggingListener",
    "ResilienceEvent",
    "Severity",
    "add_duration_listener",
    "add_listener",
    "duration_listeners",
    "durations_enabled",
    "notify",
    "remove_duration_listener",
    "remove_listener",
]

logger = logging.getLogger("resilient.events")

# Stable event names: part of the public contract (dashboards depend on them).
RETRY: Final = "retry"
CIRCUIT_OPENED: Final = "circuit_opened"
CIRCUIT_CLOSED: Final = "circuit_closed"
CIRCUIT_HALF_OPENED: Final = "circuit_half_opened"
REJECTED: Final = "rejected"
TIMEOUT: Final = "timeout"
FALLBACK_USED: Final = "fallback_used"
CACHE_STALE_HIT: Final = "cache_stale_hit"
CACHE_REFRESH_FAILED: Final = "cache_refresh_failed"
HEDGE_FIRED: Final = "hedge_fired"
BUDGET_EXHAUSTED: Final = "budget_exhausted"
STORE_FAILED_OPEN: Final = "store_failed_open"
STORE_RECOVERED: Final = "store_recovered"
#: A policy in shadow mode (``enforce=False``) would have rejected this call and let it through.
WOULD_REJECT: Final = "would_reject"
#: Duration events (see :func:`add_listener`'s ``durations=``): one per attempt a retry made...
EXECUTION_ATTEMPT: Final = "execution_attempt"
#: ...and one per call through a pipeline; ``duration`` holds the seconds, ``extras`` the outcome.
PIPELINE_EXECUTED: Final = "pipeline_executed"

# Extras keys: the one vocabulary producers write and listeners (resilient.otel)
# read. A producer never spells a key as a string literal; it imports these.
#: Why a call was rejected (``"rate_limited"``, ``"bulkhead_full"``, ``"circuit_open"``...).
EXTRA_REASON: Final = "reason"
#: Seconds after which the rejected call may succeed.
EXTRA_RETRY_AFTER: Final = "retry_after"
#: A circuit's state when it rejected a call.
EXTRA_STATE: Final = "state"
#: A circuit's state before and after a transition.
EXTRA_FROM_STATE: Final = "from"
EXTRA_TO_STATE: Final = "to"
#: Whether a transition was made by hand (isolate/reset/trip).
EXTRA_MANUAL: Final = "manual"
#: Failed half-open probes since the circuit opened from closed.
EXTRA_FAILED_PROBES: Final = "failed_probes"
#: Calls holding a slot, and waiting for one, when a bulkhead rejected.
EXTRA_RUNNING: Final = "running"
EXTRA_QUEUED: Final = "queued"
#: A concurrency limit (adaptive limits report their new value).
EXTRA_LIMIT: Final = "limit"
#: Whether a timeout was the deadline's rather than the policy's own.
EXTRA_DEADLINE: Final = "deadline"
#: Client-side throttling: rejection probability, requests and accepts in its window.
EXTRA_PROBABILITY: Final = "probability"
EXTRA_REQUESTS: Final = "requests"
EXTRA_ACCEPTS: Final = "accepts"
#: A store backend (``"redis"``) and where it failed.
EXTRA_BACKEND: Final = "backend"
EXTRA_WHERE: Final = "where"
#: The outcome of an attempt or a pipeline call: ``"success"`` or ``"failure"``.
EXTRA_OUTCOME: Final = "outcome"
#: HTTP calls (OpenTelemetry semantic-convention names).
EXTRA_HTTP_METHOD: Final = "http.request.method"
EXTRA_SERVER_ADDRESS: Final = "server.address"
EXTRA_SERVER_PORT: Final = "server.port"
EXTRA_HTTP_STATUS: Final = "http.response.status_code"


class Severity(StrEnum):
    """How much an event matters; maps onto logging levels (:attr:`logging_level`)."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def logging_level(self) -> int:
        """The matching :mod:`logging` level (``Severity.WARNING`` -> ``logging.WARNING``)."""
        return _LEVELS[self]


_LEVELS: Final = {
    Severity.DEBUG: logging.DEBUG,
    Severity.INFO: logging.INFO,
    Severity.WARNING: logging.WARNING,
    Severity.ERROR: logging.ERROR,
}


ExtraValue = str | int | float | bool


@dataclass(frozen=True, slots=True)
class ResilienceEvent:
    """One notable thing a policy did.

    Attributes are low-cardinality by design: ``extras`` holds safe values
    only (a status code, a host), never URLs with queries, credentials or
    header values.
    """

    #: A stable name such as ``"retry"``; see the module constants.
    name: str
    #: How much it matters.
    severity: Severity
    #: The kind of policy that emitted it (``"retry"``, ``"circuit_breaker"``...).
    policy_type: str
    #: The policy's name, if it was given one.
    policy: str | None = None
    #: The name of the pipeline the policy ran in, if any.
    pipeline: str | None = None
    #: The operation: the guarded function's qualified name by default.
    operation: str | None = None
    #: The attempt number the event concerns (1 = the first call), if any.
    attempt: int | None = None
    #: A duration in seconds (the delay before a retry, the timeout...), if any.
    duration: float | None = None
    #: The qualified name of the exception type involved, if any.
    exception: str | None = None
    #: A few safe extra attributes.
    extras: Mapping[str, ExtraValue] = field(default_factory=dict)


Listener = Callable[[ResilienceEvent], Any]
# Shared by events without extras; read-only so no listener can change it for the others.
_NO_EXTRAS: Final[Mapping[str, ExtraValue]] = MappingProxyType({})
_SUCCESS: Final[Mapping[str, ExtraValue]] = MappingProxyType({EXTRA_OUTCOME: "success"})
_FAILURE: Final[Mapping[str, ExtraValue]] = MappingProxyType({EXTRA_OUTCOME: "failure"})
L = TypeVar("L", bound=Callable[[ResilienceEvent], Any])
T = TypeVar("T")


class DurationListener(Protocol):
    """The first wave's duration listener shape, ``(kind, site, seconds, outcome)``.

    Deprecated: durations are events now (:data:`EXECUTION_ATTEMPT`,
    :data:`PIPELINE_EXECUTED`), delivered to listeners registered with
    ``add_listener(listener, durations=True)`` or
    :func:`add_duration_listener`. A callable of this shape given to
    :func:`add_duration_listener` still works, through an adapter.
    """

    def __call__(self, kind: str, site: EventSite, seconds: float, outcome: str) -> None:
        """Record one duration."""
        ...


_global_listeners: list[Listener] = []
#: The listeners that receive duration events. Read-only for everyone but this
#: module: pipelines and retries test its truth on every call to decide whether
#: to read the clock at all.
duration_listeners: Final[list[Listener]] = []
_duration_listeners = duration_listeners
# Listeners that already raised once: their later failures are not logged.
# Compared by value, so that a bound method, recreated on each attribute
# access, is recognised (an id could be reused by a new object). Held weakly
# where the listener allows it (a WeakMethod for a bound method), so that a
# listener that failed never keeps its object alive (a breaker's on_open is
# often a method of the object that owns the breaker), and at most
# _MAX_FAILED_LISTENERS of them: past that a listener may be logged again.
_failed_listeners: list[Callable[[], object]] = []
_MAX_FAILED_LISTENERS: Final = 1024
# Listeners fail on any thread: the trim and the append must not lose each other's entries.
_failed_lock = threading.Lock()
# Async listeners' tasks: the loop keeps only weak references to tasks.
_background: set[asyncio.Task[Any]] = set()


def add_listener(listener: L, *, durations: bool = False) -> L:
    """Register ``listener`` for every event of every policy in the process.

    With ``durations=True`` it also receives the duration events
    (:data:`EXECUTION_ATTEMPT` for each attempt a retry makes,
    :data:`PIPELINE_EXECUTED` for each call through a pipeline) through the
    same delivery; while any listener takes those, pipelines and retries
    read the clock around each call, and with none they do not.

    Returns the listener, so this works as a decorator too. A listener may be
    an ``async def`` function: it is then scheduled as a task on the running
    loop and the call that emitted the event does not wait for it.
    """
    if not callable(listener):
        raise TypeError(f"listener must be callable, got {listener!r}")
    if not isinstance(durations, bool):
        raise TypeError(f"durations must be a bool, got {durations!r}")
    _global_listeners.append(listener)
    if durations:
        duration_listeners.append(listener)
    return listener


def remove_listener(listener: Listener) -> None:
    """Unregister a listener added with :func:`add_listener` (no error if absent), durations included."""
    with contextlib.suppress(ValueError):
        _global_listeners.remove(listener)
    remove_duration_listener(listener)


class _LegacyDurations:
    """Delivers duration events to a first-wave ``(kind, site, seconds, outcome)`` callable."""

    __slots__ = ("__weakref__", "fn")  # weakly referable: a failed one must not be kept alive

    def __init__(self, fn: DurationListener) -> None:
        self.fn = fn

    def __call__(self, event: ResilienceEvent) -> None:
        kind = "attempt" if event.name == EXECUTION_ATTEMPT else "pipeline"
        outcome = str(event.extras.get(EXTRA_OUTCOME, "success"))
        self.fn(kind, EventSite(event.operation, event.pipeline), event.duration or 0.0, outcome)

    def __eq__(self, other: object) -> bool:
        # Equal to what it adapts, so removing and counting by the original work.
        return other is self or other == self.fn

    def __hash__(self) -> int:
        return hash(self.fn)

    def __repr__(self) -> str:
        return repr(self.fn)


def _takes_four_arguments(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) == 4


def add_duration_listener(listener: Listener | DurationListener) -> None:
    """Register ``listener`` for the duration events only (not the other events).

    ``add_listener(listener, durations=True)`` registers for both. A
    first-wave ``(kind, site, seconds, outcome)`` callable is still accepted
    (deprecated): it is called through an adapter.
    """
    if not callable(listener):
        raise TypeError(f"listener must be callable, got {listener!r}")
    if _takes_four_arguments(listener):
        warnings.warn(
            "a (kind, site, seconds, outcome) duration listener is deprecated: take one ResilienceEvent "
            "(name EXECUTION_ATTEMPT or PIPELINE_EXECUTED, duration, extras['outcome'])",
            DeprecationWarning,
            stacklevel=2,
        )
        duration_listeners.append(_LegacyDurations(cast(DurationListener, listener)))
        return
    duration_listeners.append(cast(Listener, listener))


def remove_duration_listener(listener: Listener | DurationListener) -> None:
    """Stop delivering duration events to ``listener`` (no error if absent)."""
    with contextlib.suppress(ValueError):
        duration_listeners.remove(cast(Listener, listener))


def durations_enabled() -> bool:
    """Whether any listener takes the duration events."""
    return bool(duration_listeners)


def _report_failure(listener: object, exc: BaseException, what: str = "raised", log: logging.Logger = logger) -> None:
    """Log a listener's failure, once per listener: a broken listener must not flood the logs."""
    # The scan calls the listeners' __eq__ (user code): over a snapshot, with no lock held.
    for ref in tuple(_failed_listeners):
        known = ref()
        if known is not None and _same(listener, known):
            return
    with _failed_lock:
        if len(_failed_listeners) >= _MAX_FAILED_LISTENERS:
            # Forget the dead, then all but the newest half of the living.
            live = [ref for ref in _failed_listeners if ref() is not None]
            _failed_listeners[:] = live[-(_MAX_FAILED_LISTENERS // 2) :]
        _failed_listeners.append(_weak(listener))
    log.error(
        "resilient: listener %r %s %s; what it was given is dropped for it, calls are not affected, "
        "and further failures of this listener are not logged",
        listener,
        what,
        type(exc).__name__,
        exc_info=exc,
    )


def _weak(listener: object) -> Callable[[], object]:
    """A reference to ``listener`` that does not keep it alive (a strong one if it cannot be weak)."""
    try:
        if inspect.ismethod(listener):
            return weakref.WeakMethod(listener)
        return weakref.ref(listener)
    except TypeError:  # not weakly referable (a builtin, a __slots__ class): bounded by the list's size
        return lambda: listener


def _same(a: object, b: object) -> bool:
    # Equality, not identity: ``obj.method`` is a new bound-method object on
    # each access but compares equal. A hostile __eq__ only costs a log line.
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:
        return False


def notify(listener: Callable[[T], Any], payload: T, *, log: logging.Logger | None = None) -> None:
    """Call a user's callback the way every listener is called, and never let it break the caller.

    The one delivery path for events and for other user callbacks that
    report something (a circuit breaker's ``on_open``): a sync callback is
    called now; one that returns an awaitable (an ``async def``) is
    scheduled as a task on the running loop and not waited for; one that
    raises is logged once (per callback) on ``log`` (by default
    ``resilient.events``; a policy passes its own logger) and otherwise
    ignored. Call it with no lock held.
    """
    log = logger if log is None else log
    try:
        result = listener(payload)
        if result is not None and inspect.isawaitable(result):
            _schedule(listener, result, log)
    except Exception as exc:  # a listener must never break a call
        _report_failure(listener, exc, log=log)


_deliver = notify


def _schedule(listener: Callable[..., Any], awaitable: Awaitable[Any], log: logging.Logger = logger) -> None:
    """Run an async listener's awaitable as a task; the emitting call never waits for it."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        # A synchronous caller outside any loop cannot run it: close it (no
        # "never awaited" warning) and say so, once.
        if inspect.iscoroutine(awaitable):
            awaitable.close()
        _report_failure(
            listener, RuntimeError("no running event loop"), "is async but the event was emitted outside a loop:", log
        )
        return
    coro = awaitable if inspect.iscoroutine(awaitable) else _await(awaitable)
    task = loop.create_task(coro)
    _background.add(task)
    task.add_done_callback(functools.partial(_on_task_done, listener, log))


def _on_task_done(listener: Callable[..., Any], log: logging.Logger, task: asyncio.Task[Any]) -> None:
    _background.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        _report_failure(listener, exc, log=log)


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class LoggingListener:
    """A listener that writes each event as one log line, at the event's severity.

    ``add_listener(LoggingListener())`` logs every event of the process on
    the ``resilient.events`` logger; ``min_severity`` drops the chattier
    ones. The policies' own loggers (``resilient.retry``,
    ``resilient.breaker``...) already warn on the events that need a human
    (a circuit opening, a spent retry budget); this listener is for a full
    trail, e.g. in development or when no metrics backend is set up.
    """

    def __init__(self, logger: logging.Logger | None = None, min_severity: Severity = Severity.DEBUG) -> None:
        self.logger = logger if logger is not None else logging.getLogger("resilient.events")
        self.min_level = Severity(min_severity).logging_level

    def __call__(self, event: ResilienceEvent) -> None:
        """Log ``event`` (nothing is formatted unless the logger is enabled for its level)."""
        level = event.severity.logging_level if isinstance(event.severity, Severity) else logging.INFO
        if level < self.min_level or not self.logger.isEnabledFor(level):
            return
        self.logger.log(level, "resilient: %s", _describe(event), extra={"resilience_event": event})

    def __repr__(self) -> str:
        return f"LoggingListener(logger={self.logger.name!r}, min_level={logging.getLevelName(self.min_level)})"


def _describe(event: ResilienceEvent) -> str:
    policy = f"{event.policy_type} {event.policy!r}" if event.policy else event.policy_type
    parts = [f"{event.name} by {policy}"]
    if event.pipeline:
        parts.append(f"in pipeline {event.pipeline!r}")
    if event.operation:
        parts.append(f"for {event.operation}")
    if event.attempt is not None:
        parts.append(f"attempt {event.attempt}")
    if event.duration is not None:
        parts.append(f"{event.duration:.3g} s")
    if event.exception:
        parts.append(f"after {event.exception}")
    if event.extras:
        parts.append(" ".join(f"{k}={v}" for k, v in event.extras.items()))
    return ", ".join(parts)


class EventSite:
    """Where a policy runs: its pipeline, operation and pipeline listeners.

    Built once per wrapped function (at wrap time), never per call.
    """

    __slots__ = ("listeners", "operation", "pipeline")

    def __init__(
        self,
        operation: str | None = None,
        pipeline: str | None = None,
        listeners: tuple[Listener, ...] = (),
    ) -> None:
        self.operation = operation
        self.pipeline = pipeline
        self.listeners = listeners

    def enabled(self, policy_listeners: tuple[Listener, ...]) -> bool:
        """Whether an event emitted here would reach anybody."""
        return bool(_global_listeners or self.listeners or policy_listeners)

    def emit(
        self,
        policy_listeners: tuple[Listener, ...],
        name: str,
        severity: Severity,
        policy_type: str,
        policy: str | None,
        *,
        attempt: int | None = None,
        duration: float | None = None,
        exception: BaseException | type[BaseException] | None = None,
        extras: Mapping[str, ExtraValue] | None = None,
    ) -> None:
        """Build one event and hand it to every listener, if there is any."""
        if not (_global_listeners or self.listeners or policy_listeners):
            return
        extras = self.context_extras(extras)
        exc_name = None
        if exception is not None:
            exc_type = exception if isinstance(exception, type) else type(exception)
            exc_name = _qualname(exc_type)
        # Positional: half the cost of keywords for a frozen dataclass. The
        # order is the field order (tests compare against a keyword build).
        event = ResilienceEvent(
            name,
            severity,
            policy_type,
            policy,
            self.pipeline,
            self.operation,
            attempt,
            duration,
            exc_name,
            extras if extras is not None else _NO_EXTRAS,
        )
        for listener in (*policy_listeners, *self.listeners, *_global_listeners):
            _deliver(listener, event)

    def context_extras(self, extras: Mapping[str, ExtraValue] | None) -> Mapping[str, ExtraValue] | None:
        """The extras of an event emitted here: ``extras`` as the policy gave them.

        An integration's site overrides it to add what its context knows (the
        httpx transport adds the request's method, host, port and status).
        Called only for an event that somebody will receive.
        """
        return extras

    def record_duration(self, kind: str, seconds: float, outcome: str, attempt: int | None = None) -> None:
        """Deliver one duration event (``kind`` ``"attempt"`` or ``"pipeline"``) to the duration listeners.

        Called only while :data:`duration_listeners` is not empty; the event
        goes through the same delivery as every other (async listeners
        scheduled, a failing listener logged once).
        """
        attempt_kind = kind == "attempt"
        event = ResilienceEvent(
            EXECUTION_ATTEMPT if attempt_kind else PIPELINE_EXECUTED,
            Severity.DEBUG,
            "retry" if attempt_kind else "pipeline",
            None,
            self.pipeline,
            self.operation,
            attempt,
            seconds,
            None,
            _SUCCESS if outcome == "success" else _FAILURE,
        )
        for listener in tuple(duration_listeners):
            _deliver(listener, event)

    def child(self, pipeline: str | None, listeners: Iterable[Listener]) -> EventSite:
        """The site seen by policies inside a (nested) pipeline."""
        return EventSite(
            operation=self.operation,
            pipeline=pipeline if pipeline is not None else self.pipeline,
            listeners=(*tuple(listeners), *self.listeners),
        )

    def __repr__(self) -> str:
        return f"EventSite(operation={self.operation!r}, pipeline={self.pipeline!r})"


def _qualname(exc_type: type[BaseException]) -> str:
    module = exc_type.__module__
    if module in ("builtins", "__main__"):
        return exc_type.__qualname__
    return f"{module}.{exc_type.__qualname__}"

"""The OpenTelemetry event and duration listener; see :mod:`resilient.otel`."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, Final

from resilient.extras import MissingExtraError

# The extra's packages first: without them, the error names the extra to install.
try:
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import CallbackOptions, Histogram, MeterProvider, NoOpMeterProvider, Observation
    from opentelemetry.trace import NoOpTracerProvider, TracerProvider
except ModuleNotFoundError as exc:
    raise MissingExtraError("resilient.otel", "otel", exc.name) from exc

from resilient import events as _events
from resilient.events import (
    EXECUTION_ATTEMPT,
    EXTRA_DEADLINE,
    EXTRA_FROM_STATE,
    EXTRA_HTTP_METHOD,
    EXTRA_HTTP_STATUS,
    EXTRA_MANUAL,
    EXTRA_OUTCOME,
    EXTRA_REASON,
    EXTRA_SERVER_ADDRESS,
    EXTRA_SERVER_PORT,
    EXTRA_STATE,
    EXTRA_TO_STATE,
    PIPELINE_EXECUTED,
    EventSite,
    ResilienceEvent,
)

__all__ = [
    "ATTEMPT_DURATION",
    "DURATION_BUCKETS",
    "EVENTS_COUNTER",
    "PIPELINE_DURATION",
    "SAFE_EXTRAS",
    "SCOPE",
    "OpenTelemetryListener",
    "event_attributes",
    "instrument",
    "instrumented",
    "uninstrument",
]

logger = logging.getLogger("resilient.otel")

#: The instrumentation scope (meter) name.
SCOPE: Final = "resilient"
#: Counter of events.
EVENTS_COUNTER: Final = "resilience.events"
#: Histogram of attempt durations, in seconds.
ATTEMPT_DURATION: Final = "resilience.attempt.duration"
#: Histogram of pipeline call durations, in seconds.
PIPELINE_DURATION: Final = "resilience.pipeline.duration"

#: Bucket boundaries (seconds) advised for the duration histograms: the
#: semantic conventions' HTTP duration buckets, with two finer ones below
#: 5 ms for in-process calls and one for long retries.
DURATION_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    30.0,
)

# Attribute keys, in the semantic conventions' style.
EVENT_NAME: Final = "resilience.event.name"
EVENT_SEVERITY: Final = "resilience.event.severity"
PIPELINE_NAME: Final = "resilience.pipeline.name"
POLICY_NAME: Final = "resilience.policy.name"
POLICY_TYPE: Final = "resilience.policy.type"
OPERATION_NAME: Final = "resilience.operation.name"
OUTCOME: Final = "resilience.outcome"
ERROR_TYPE: Final = "error.type"
ATTEMPT_NUMBER: Final = "resilience.attempt.number"
EVENT_DURATION: Final = "resilience.event.duration"

AttributeValue = str | bool | int | float

_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*\.?")
_IPV6 = re.compile(r"\[?[0-9A-Fa-f:.]{2,45}\]?")
_TOKEN = re.compile(r"[a-z][a-z0-9_]{0,31}")
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"})


def _status_code(value: object) -> AttributeValue | None:
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return value
    return None


def _host(value: object) -> AttributeValue | None:
    # A bare host name or IP address only: anything with a scheme, a path, a
    # query, a port or user info ("user:pw@host") is refused, not cleaned.
    if not isinstance(value, str) or len(value) > 253:
        return None
    if _HOSTNAME.fullmatch(value):
        return value.lower()
    if value.count(":") >= 2 and _IPV6.fullmatch(value):
        return value.strip("[]").lower()
    return None


def _port(value: object) -> AttributeValue | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536:
        return value
    return None


def _method(value: object) -> AttributeValue | None:
    if not isinstance(value, str):
        return None
    # The semantic conventions' rule: unknown methods become "_OTHER", so a
    # client sending garbage methods cannot blow up the cardinality.
    upper = value.upper()
    return upper if upper in _METHODS else "_OTHER"


def _flag(value: object) -> AttributeValue | None:
    return value if isinstance(value, bool) else None


def _token(value: object) -> AttributeValue | None:
    # A short lower-case identifier such as a circuit state ("half_open").
    return value if isinstance(value, str) and _TOKEN.fullmatch(value) else None


#: The event extras copied to attributes: extra key -> (attribute key, check).
#: Anything else in ``ResilienceEvent.extras`` is dropped, and so is a value
#: that fails its check. Policies put only safe values in extras; this is the
#: second line of defence.
SAFE_EXTRAS: Final[Mapping[str, tuple[str, Callable[[object], AttributeValue | None]]]] = {
    # The keys producers write (resilient.events' EXTRA_* constants)...
    EXTRA_HTTP_STATUS: ("http.response.status_code", _status_code),
    EXTRA_HTTP_METHOD: ("http.request.method", _method),
    EXTRA_SERVER_ADDRESS: ("server.address", _host),
    EXTRA_SERVER_PORT: ("server.port", _port),
    EXTRA_DEADLINE: ("resilience.timeout.deadline", _flag),
    EXTRA_STATE: ("resilience.circuit.state", _token),
    EXTRA_TO_STATE: ("resilience.circuit.state", _token),
    EXTRA_FROM_STATE: ("resilience.circuit.previous_state", _token),
    EXTRA_MANUAL: ("resilience.circuit.manual", _flag),
    EXTRA_REASON: ("resilience.rejection.reason", _token),
    # ...and the short spellings of the first wave, for events of your own.
    "status_code": ("http.response.status_code", _status_code),
    "method": ("http.request.method", _method),
    "host": ("server.address", _host),
    "port": ("server.port", _port),
    "previous_state": ("resilience.circuit.previous_state", _token),
}


def event_attributes(event: ResilienceEvent) -> dict[str, AttributeValue]:
    """The metric attributes of ``event``: low-cardinality and safe."""
    attrs: dict[str, AttributeValue] = {
        EVENT_NAME: event.name,
        EVENT_SEVERITY: str(event.severity.value) if hasattr(event.severity, "value") else str(event.severity),
        POLICY_TYPE: event.policy_type,
    }
    if event.pipeline is not None:
        attrs[PIPELINE_NAME] = event.pipeline
    if event.policy is not None:
        attrs[POLICY_NAME] = event.policy
    if event.operation is not None:
        attrs[OPERATION_NAME] = event.operation
    if event.exception is not None:
        attrs[ERROR_TYPE] = event.exception
    if event.extras:
        for key, value in event.extras.items():
            spec = SAFE_EXTRAS.get(key)
            if spec is None:
                continue
            checked = spec[1](value)
            if checked is not None:
                attrs[spec[0]] = checked
    return attrs


class _EventCounts:
    """The cumulative event counts of one meter provider, observed by its SDK."""

    __slots__ = ("__weakref__", "counts", "lock")

    def __init__(self) -> None:
        # attribute-set key -> [count, attributes]
        self.counts: dict[Hashable, list[Any]] = {}
        self.lock = threading.Lock()

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self.lock:
            entries = [(n, attrs) for n, attrs in self.counts.values()]
        return [Observation(n, attrs) for n, attrs in entries]


# One table (and one observable counter) per meter provider: the SDK keeps
# only the first callback registered under an instrument name, so a second
# instrument() on the same provider must count into the same table.
_tables: weakref.WeakKeyDictionary[object, _EventCounts] = weakref.WeakKeyDictionary()
_tables_lock = threading.Lock()


def _event_counts(provider: MeterProvider, meter: metrics.Meter) -> _EventCounts:
    with _tables_lock:
        try:
            table = _tables.get(provider)
        except TypeError:  # pragma: no cover - a provider that cannot be weakly referenced
            table = None
        if table is None:
            table = _EventCounts()
            meter.create_observable_counter(
                EVENTS_COUNTER,
                callbacks=[table.observe],
                unit="{event}",
                description="Events emitted by resilience policies.",
            )
            with contextlib.suppress(TypeError):
                _tables[provider] = table
        return table


def _is_noop_meter_provider(provider: object) -> bool:
    # The API's proxy stays a no-op until an SDK provider is set globally;
    # its class is private, hence the name test.
    return isinstance(provider, NoOpMeterProvider) or type(provider).__name__ == "_ProxyMeterProvider"


def _resolve_meter_provider(provider: MeterProvider | None) -> tuple[MeterProvider, bool]:
    """The provider to use and whether it is global (so may become real later)."""
    if provider is None or type(provider).__name__ == "_ProxyMeterProvider":
        return metrics.get_meter_provider(), True
    return provider, False


class OpenTelemetryListener:
    """An event listener and a duration listener that record to OpenTelemetry.

    Args:
        meter_provider: where metrics go; default: the global provider.
        tracer_provider: default: the global one. Span events go to the
            current span whoever created it; pass ``NoOpTracerProvider()``
            to switch span events off.
        span_events: ``True`` (default) for every event, ``False`` for
            none, or the event names to add to spans.
        durations: ``False`` to record no duration histograms at all (with
            the Python SDK each record costs a few microseconds per call).

    :func:`instrument` creates one and registers it globally. It can also
    be given to one pipeline or policy (``Pipeline(..., listeners=[l])``);
    durations are recorded only by a listener registered with
    :meth:`install` (or :func:`instrument`).
    """

    def __init__(
        self,
        meter_provider: MeterProvider | None = None,
        tracer_provider: TracerProvider | None = None,
        *,
        span_events: bool | Iterable[str] = True,
        durations: bool = True,
    ) -> None:
        from resilient import __version__

        provider, self._global_provider = _resolve_meter_provider(meter_provider)
        meter = provider.get_meter(SCOPE, __version__)
        # The events counter is aggregated here and observed by the SDK at
        # collection time: an SDK ``Counter.add`` costs several microseconds
        # in Python, a dict increment a fraction of one.
        table = _event_counts(provider, meter)
        self._counts = table.counts
        self._counts_lock = table.lock
        self._attempt = self._histogram(meter, ATTEMPT_DURATION, "Duration of each attempt made by a retry.")
        self._pipeline = self._histogram(meter, PIPELINE_DURATION, "Duration of each call through a pipeline.")
        if not isinstance(durations, bool):
            raise TypeError(f"durations must be a bool, got {durations!r}")
        self._want_durations = durations
        #: Whether durations are recorded: asked for, and a real SDK behind the meter.
        self.records_durations = durations and not _is_noop_meter_provider(provider)
        self._installed = False
        self._durations_registered = False
        self._lock = threading.Lock()
        self._duration_attrs: dict[tuple[str | None, str | None, str], dict[str, AttributeValue]] = {}
        if isinstance(tracer_provider, NoOpTracerProvider) or span_events is False:
            self._span_events: frozenset[str] | None = frozenset()
        elif span_events is True:
            self._span_events = None  # every event
        else:
            if isinstance(span_events, str):
                raise TypeError("span_events must be a bool or a collection of event names, not a str")
            self._span_events = frozenset(span_events)

    @staticmethod
    def _histogram(meter: metrics.Meter, name: str, description: str) -> Histogram:
        try:
            return meter.create_histogram(
                name, unit="s", description=description, explicit_bucket_boundaries_advisory=DURATION_BUCKETS
            )
        except TypeError:  # pragma: no cover - opentelemetry-api < 1.23 has no advisory
            return meter.create_histogram(name, unit="s", description=description)

    # -- registration ----------------------------------------------------------

    def install(self) -> None:
        """Register as a global event listener, and as a duration listener when an SDK is behind it."""
        with self._lock:
            if self._installed:
                return
            self._installed = True
            _events.add_listener(self, durations=self.records_durations)
            self._durations_registered = self.records_durations

    def uninstall(self) -> None:
        """Undo :meth:`install`."""
        with self._lock:
            self._installed = False
            _events.remove_listener(self)  # from the duration events too
            self._durations_registered = False

    def _register_durations(self) -> None:
        if not self._durations_registered:
            self._durations_registered = True
            _events.add_duration_listener(self)

    def _recheck_provider(self) -> None:
        """The global SDK provider may have been set since we were created."""
        if self._want_durations and not _is_noop_meter_provider(metrics.get_meter_provider()):
            # The proxy instruments we hold now delegate to the SDK.
            self.records_durations = True
            with self._lock:
                if self._installed:
                    self._register_durations()

    # -- listeners ---------------------------------------------------------------

    def __call__(self, event: ResilienceEvent) -> None:
        """Record a duration event in its histogram; count any other ``event`` and add it to the current span."""
        name = event.name
        if name is EXECUTION_ATTEMPT or name is PIPELINE_EXECUTED or name in _DURATION_EVENTS:
            if self.records_durations and event.duration is not None:
                outcome = str(event.extras.get(EXTRA_OUTCOME, "success"))
                self._record(name == EXECUTION_ATTEMPT, event.pipeline, event.operation, event.duration, outcome)
            return
        if not self.records_durations and self._global_provider:
            self._recheck_provider()
        attrs = event_attributes(event)
        self._count(attrs)
        wanted = self._span_events
        if wanted is None or event.name in wanted:
            span = trace.get_current_span()
            if span.is_recording():
                span_attrs = dict(attrs)  # the table may hold ``attrs`` itself
                if event.attempt is not None:
                    span_attrs[ATTEMPT_NUMBER] = event.attempt
                if event.duration is not None:
                    span_attrs[EVENT_DURATION] = event.duration
                span.add_event(f"resilience.{event.name}", span_attrs)

    def _count(self, attrs: dict[str, AttributeValue]) -> None:
        """Add one to the count of the attribute set ``attrs`` (or to the overflow set, past the limit)."""
        # Keyed on the exported attributes, not on the raw event: extras such
        # as a float retry_after or a bulkhead's queue length are not exported,
        # and keying on them would fill the table (and the SDK's cardinality
        # limit) with copies of one attribute set.
        key: Hashable = frozenset(attrs.items())
        with self._counts_lock:
            entry = self._counts.get(key)
            if entry is None:
                if len(self._counts) >= _MAX_ATTRIBUTE_SETS:
                    key = _OVERFLOW_KEY
                    entry = self._counts.get(key)
                if entry is None:
                    entry = [0, dict(_OVERFLOW) if key is _OVERFLOW_KEY else attrs]
                    self._counts[key] = entry
            entry[0] += 1

    def record_duration(self, kind: str, site: EventSite, seconds: float, outcome: str) -> None:
        """Record an attempt's (``kind="attempt"``) or a pipeline call's duration directly."""
        self._record(kind == "attempt", site.pipeline, site.operation, seconds, outcome)

    def _record(self, attempt: bool, pipeline: str | None, operation: str | None, seconds: float, outcome: str) -> None:
        key = (pipeline, operation, outcome)
        attrs = self._duration_attrs.get(key)
        if attrs is None:
            attrs = {OUTCOME: outcome}
            if pipeline is not None:
                attrs[PIPELINE_NAME] = pipeline
            if operation is not None:
                attrs[OPERATION_NAME] = operation
            # Bounded: names come from code, but a process that creates
            # functions dynamically must not grow this without end.
            if len(self._duration_attrs) < 4096:
                self._duration_attrs[key] = attrs
        (self._attempt if attempt else self._pipeline).record(seconds, attrs)

    def __repr__(self) -> str:
        return f"OpenTelemetryListener(records_durations={self.records_durations}, installed={self._installed})"


_DURATION_EVENTS: Final = frozenset({EXECUTION_ATTEMPT, PIPELINE_EXECUTED})

# Past this many distinct attribute sets, events are counted under one
# overflow set, as the SDK's own cardinality limit does.
_MAX_ATTRIBUTE_SETS: Final = 2000
_OVERFLOW: Final[Mapping[str, AttributeValue]] = {"otel.metric.overflow": True}
_OVERFLOW_KEY: Final = ("otel.metric.overflow",)

_current: OpenTelemetryListener | None = None
_current_lock = threading.Lock()


def instrument(
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
    *,
    span_events: bool | Iterable[str] = True,
    durations: bool = True,
) -> OpenTelemetryListener:
    """Send every policy's events and durations to OpenTelemetry; returns the listener.

    Calling it again replaces the previous instrumentation. With no SDK
    configured it costs nothing on the success path (no duration listener
    is registered). See the module documentation for the instruments.
    """
    global _current
    with _current_lock:
        if _current is not None:
            _current.uninstall()
        listener = OpenTelemetryListener(meter_provider, tracer_provider, span_events=span_events, durations=durations)
        listener.install()
        _current = listener
    if not listener.records_durations:
        logger.debug("resilient: no OpenTelemetry SDK meter provider yet; durations are not recorded for now")
    return listener


def uninstrument() -> None:
    """Undo :func:`instrument` (no error if it was not called)."""
    global _current
    with _current_lock:
        if _current is not None:
            _current.uninstall()
            _current = None


def instrumented() -> OpenTelemetryListener | None:
    """The listener installed by :func:`instrument`, if any."""
    return _current

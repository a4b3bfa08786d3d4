"""OpenTelemetry: resilient's events as metrics and span events.

Install the ``otel`` extra (it needs only ``opentelemetry-api`` at run time;
the application brings the SDK and exporters), then::

    import resilient.otel

    resilient.otel.instrument()          # the global providers
    # or: instrument(meter_provider=provider, tracer_provider=tracer_provider)

What is recorded (instrumentation scope ``resilient``):

* ``resilience.events`` (counter, unit ``{event}``): one per event, with the
  attributes ``resilience.event.name``, ``resilience.event.severity``,
  ``resilience.pipeline.name``, ``resilience.policy.name``,
  ``resilience.policy.type``, ``resilience.operation.name``, ``error.type``
  and the allow-listed extras (:data:`SAFE_EXTRAS`);
* ``resilience.attempt.duration`` (histogram, ``s``): each attempt a
  :class:`~resilient.Retry` makes;
* ``resilience.pipeline.duration`` (histogram, ``s``): each call through a
  :class:`~resilient.Pipeline`; both with ``resilience.pipeline.name``,
  ``resilience.operation.name`` and ``resilience.outcome``
  (``success``/``failure``);
* a span event ``resilience.<event name>`` (``resilience.retry``,
  ``resilience.circuit_opened``, ``resilience.rejected``...) on the current
  span, when it is recording, with the counter's attributes plus
  ``resilience.attempt.number`` and ``resilience.event.duration``.

Attribute values are low-cardinality: event extras are copied only when
their key is in :data:`SAFE_EXTRAS` and their value passes its check (a
status code, a bare host name, a standard method...), so URLs, query
strings, credentials, header values and user ids never reach a backend.

State gauges (:func:`instrument_gauges`): observable instruments read at
collection time, so they cost nothing per call: ``resilience.circuit.state``,
``resilience.circuit.failure_ratio``, ``resilience.bulkhead.running``,
``resilience.bulkhead.queued``, ``resilience.ratelimit.tokens``,
``resilience.concurrency.limit``, ``resilience.cache.entries`` and the
counter ``resilience.cache.lookups``; see :mod:`resilient.otel.gauges`.

Cost: with no SDK configured (the API's no-op or proxy providers),
:func:`instrument` registers no duration listener, so the success path
does not even read the clock. Events (failures) go through the API's no-op
instruments. When the global SDK provider is set *after* ``instrument()``,
durations start being recorded at the first event seen after that;
configure the SDK first to record them from the first call.
"""

from resilient.otel.gauges import (
    BULKHEAD_QUEUED,
    BULKHEAD_RUNNING,
    CACHE_ENTRIES,
    CACHE_LOOKUPS,
    CIRCUIT_FAILURE_RATIO,
    CIRCUIT_STATE,
    CIRCUIT_STATE_VALUES,
    CONCURRENCY_LIMIT,
    KEY,
    LOOKUP_RESULT,
    RATELIMIT_TOKENS,
    PolicyGauges,
    effective_state,
    instrument_gauges,
    uninstrument_gauges,
)
from resilient.otel.listener import (
    ATTEMPT_DURATION,
    DURATION_BUCKETS,
    EVENTS_COUNTER,
    PIPELINE_DURATION,
    SAFE_EXTRAS,
    SCOPE,
    OpenTelemetryListener,
    event_attributes,
    instrument,
    instrumented,
    uninstrument,
)

__all__ = [
    "ATTEMPT_DURATION",
    "BULKHEAD_QUEUED",
    "BULKHEAD_RUNNING",
    "CACHE_ENTRIES",
    "CACHE_LOOKUPS",
    "CIRCUIT_FAILURE_RATIO",
    "CIRCUIT_STATE",
    "CIRCUIT_STATE_VALUES",
    "CONCURRENCY_LIMIT",
    "DURATION_BUCKETS",
    "EVENTS_COUNTER",
    "KEY",
    "LOOKUP_RESULT",
    "PIPELINE_DURATION",
    "RATELIMIT_TOKENS",
    "SAFE_EXTRAS",
    "SCOPE",
    "OpenTelemetryListener",
    "PolicyGauges",
    "effective_state",
    "event_attributes",
    "instrument",
    "instrument_gauges",
    "instrumented",
    "uninstrument",
    "uninstrument_gauges",
]

"""Telemetry cases: the cost of OpenTelemetry on the success path and per retried call.

Listener registration is process-wide, and the harness builds every case
before timing any, so these cases do not register anything at build time:
each call puts its listeners in place (in-place ``append``/``pop`` on the
lists the policies read) and takes them out again. The ``harness only``
case pays that same bookkeeping with no listener, so it is the baseline to
subtract from the others:

* ``instrument() no SDK`` - ``harness only`` = what ``instrument()`` with the
  API's no-op providers adds to a success (nothing is registered for
  durations, so it should be ~0);
* ``SDK success`` - ``harness only`` = an SDK-backed attempt and pipeline
  duration per call (two histogram records, two clock reads);
* ``retried call SDK`` - ``retried call harness`` = the telemetry of a call
  that fails once and succeeds on the retry: one event (counter + span
  check), three histogram records. Polly reports 272 ns per event;
* ``retried call SDK durations=False`` - ``retried call harness`` = the cost
  of that one event alone (built, delivered, counted, span checked);
* ``stateful pipeline instrument_gauges()`` - ``stateful pipeline`` = what
  the state gauges add to a success through a breaker, a bulkhead and a
  limiter they observe (they are read at collection time only: ~0).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from benchmarks.cases import Case, target
from resilient import Bulkhead, CircuitBreaker, Pipeline, RateLimiter, Retry, constant
from resilient import events as _events


def _have_otel() -> bool:
    return importlib.util.find_spec("opentelemetry") is not None


def _harnessed(fn: Callable[[], Any], listener: Any = None, durations: Any = None) -> Callable[[], Any]:
    """Run ``fn`` with ``listener``/``durations`` registered for the call only.

    Without them, the same list operations go to private lists, so every
    case pays the same bookkeeping.
    """
    glob: list[Any] = _events._global_listeners if listener is not None else []
    dur: list[Any] = _events._duration_listeners if durations is not None else []
    item = listener if listener is not None else object()
    dur_item = durations if durations is not None else object()

    async def call() -> Any:
        glob.append(item)
        dur.append(dur_item)
        try:
            return await fn()
        finally:
            glob.pop()
            dur.pop()

    return call


def _flaky_once() -> Callable[[], Any]:
    """Fails every other call, so each guarded call retries exactly once."""
    state = [0]

    async def call() -> int:
        state[0] += 1
        if state[0] & 1:
            raise ConnectionError
        return 1

    return call


def _pipeline(fn: Callable[[], Any]) -> Callable[[], Any]:
    return Pipeline(Retry(3, backoff=constant(0)), name="bench")(fn)  # type: ignore[no-any-return]


def _otel_noop() -> Any:
    from resilient.otel import OpenTelemetryListener

    # What instrument() builds with no SDK configured (the global proxy).
    listener = OpenTelemetryListener()
    assert not listener.records_durations, "a global SDK meter provider is set; this case needs none"
    return listener


def _otel_sdk(durations: bool = True) -> Any:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from resilient.otel import OpenTelemetryListener

    listener = OpenTelemetryListener(MeterProvider(metric_readers=[InMemoryMetricReader()]), durations=durations)
    assert listener.records_durations is durations
    return listener


def _success_harness() -> Callable[[], Any]:
    return _harnessed(_pipeline(target))


def _retry_harness() -> Callable[[], Any]:
    return _harnessed(Retry(3)(target))


def _retry_noop() -> Callable[[], Any]:
    listener = _otel_noop()
    return _harnessed(Retry(3)(target), listener, listener.record_duration if listener.records_durations else None)


def _success_noop() -> Callable[[], Any]:
    listener = _otel_noop()
    return _harnessed(_pipeline(target), listener, listener.record_duration if listener.records_durations else None)


def _success_sdk() -> Callable[[], Any]:
    listener = _otel_sdk()
    return _harnessed(_pipeline(target), listener, listener.record_duration)


def _retried_harness() -> Callable[[], Any]:
    return _harnessed(_pipeline(_flaky_once()))


def _retried_sdk() -> Callable[[], Any]:
    listener = _otel_sdk()
    return _harnessed(_pipeline(_flaky_once()), listener, listener.record_duration)


def _retried_events_only() -> Callable[[], Any]:
    return _harnessed(_pipeline(_flaky_once()), _otel_sdk(durations=False))


def _stateful() -> Pipeline:
    return Pipeline(
        CircuitBreaker("bench-breaker"),
        Bulkhead(1000, name="bench-bulkhead"),
        RateLimiter(1e9, burst=1_000_000_000, mode="reject", name="bench-limiter"),
        name="bench-stateful",
    )


def _stateful_plain() -> Callable[[], Any]:
    return _stateful()(target)


def _stateful_gauges() -> Callable[[], Any]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from resilient.otel import instrument_gauges

    pipeline = _stateful()
    reader = InMemoryMetricReader()
    instrument_gauges(MeterProvider(metric_readers=[reader]), policies=[pipeline])
    data = reader.get_metrics_data()  # collected once: the gauges see these very policies
    assert data is not None, "the gauges observed nothing"
    assert data.resource_metrics, "the gauges observed nothing"
    return pipeline(target)


CASES: list[Case] = [
    Case("stateful pipeline", "telemetry", _stateful_plain, ours=True),
    Case("Retry(3) harness only", "telemetry", _retry_harness, ours=True),
    Case("Pipeline(Retry) harness only", "telemetry", _success_harness, ours=True),
    Case("Pipeline(Retry) retried call harness", "telemetry", _retried_harness, ours=True),
]
if _have_otel():
    CASES += [
        Case("Retry(3) instrument() no SDK", "telemetry", _retry_noop, ours=True),
        Case("Pipeline(Retry) instrument() no SDK", "telemetry", _success_noop, ours=True),
        Case("Pipeline(Retry) SDK success", "telemetry", _success_sdk, ours=True),
        Case("Pipeline(Retry) retried call SDK", "telemetry", _retried_sdk, ours=True),
        Case("Pipeline(Retry) retried call SDK durations=False", "telemetry", _retried_events_only, ours=True),
        Case("stateful pipeline instrument_gauges()", "telemetry", _stateful_gauges, ours=True),
    ]

"""The OpenTelemetry listener against the real SDK (in-memory reader and exporter)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider

from resilient import (
    BulkheadFullError,
    CircuitBreaker,
    Pipeline,
    RateLimitedError,
    RateLimiter,
    Retry,
    Timeout,
    constant,
    otel,
)
from resilient import events as ev
from resilient.cache import StaleCache
from resilient.errors import CircuitOpenError
from resilient.events import EventSite, Severity
from resilient.testing import FakeClock
from tests.clock_helpers import after


class Telemetry:
    """An SDK meter and tracer provider wired to in-memory sinks, instrumented."""

    def __init__(self, **kwargs: Any) -> None:
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.tracer_provider.get_tracer("test")
        self.listener = otel.instrument(self.meter_provider, self.tracer_provider, **kwargs)

    def metrics(self) -> dict[str, Any]:
        data = self.reader.get_metrics_data()
        found: dict[str, Any] = {}
        if data is None:
            return found
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                assert sm.scope.name == "resilient"
                for metric in sm.metrics:
                    found[metric.name] = metric
        return found

    def points(self, name: str) -> list[Any]:
        return list(self.metrics()[name].data.data_points)

    def span_events(self) -> list[tuple[str, dict[str, Any]]]:
        return [(e.name, dict(e.attributes or {})) for s in self.exporter.get_finished_spans() for e in s.events]

    def all_attribute_values(self) -> list[Any]:
        values: list[Any] = []
        for metric in self.metrics().values():
            for point in metric.data.data_points:
                values += list(point.attributes.values())
        for _, attrs in self.span_events():
            values += list(attrs.values())
        return values


@pytest.fixture
def tel() -> Iterator[Telemetry]:
    t = Telemetry()
    yield t
    otel.uninstrument()
    t.meter_provider.shutdown()
    t.tracer_provider.shutdown()


def flaky(failures: int, exc: type[Exception] = ConnectionError) -> Any:
    calls = {"n": 0}

    async def call() -> str:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise exc("boom")
        return "ok"

    return call


# -- a retrying call ---------------------------------------------------------------


async def test_retrying_call_records_events_durations_and_span_events(tel: Telemetry) -> None:
    fn = flaky(2)
    op = fn.__qualname__
    guarded = Pipeline(Retry(3, backoff=constant(0), name="r"), name="p")(fn)
    with tel.tracer.start_as_current_span("request"):
        assert await guarded() == "ok"

    found = tel.metrics()
    assert sorted(found) == ["resilience.attempt.duration", "resilience.events", "resilience.pipeline.duration"]
    assert found["resilience.events"].unit == "{event}"
    assert found["resilience.attempt.duration"].unit == "s"
    assert found["resilience.pipeline.duration"].unit == "s"
    assert found["resilience.events"].data.is_monotonic

    (point,) = tel.points("resilience.events")
    assert point.value == 2
    assert dict(point.attributes) == {
        "resilience.event.name": "retry",
        "resilience.event.severity": "info",
        "resilience.policy.type": "retry",
        "resilience.policy.name": "r",
        "resilience.pipeline.name": "p",
        "resilience.operation.name": op,
        "error.type": "ConnectionError",
    }

    attempts = {p.attributes["resilience.outcome"]: p for p in tel.points("resilience.attempt.duration")}
    assert {k: v.count for k, v in attempts.items()} == {"failure": 2, "success": 1}
    for outcome, p in attempts.items():
        assert dict(p.attributes) == {
            "resilience.pipeline.name": "p",
            "resilience.operation.name": op,
            "resilience.outcome": outcome,
        }
        assert tuple(p.explicit_bounds) == otel.DURATION_BUCKETS
        assert 0 <= p.sum < 1

    (pipe,) = tel.points("resilience.pipeline.duration")
    assert pipe.count == 1
    assert dict(pipe.attributes) == {
        "resilience.pipeline.name": "p",
        "resilience.operation.name": op,
        "resilience.outcome": "success",
    }

    span_events = tel.span_events()
    assert [name for name, _ in span_events] == ["resilience.retry", "resilience.retry"]
    assert [a["resilience.attempt.number"] for _, a in span_events] == [2, 3]
    assert all(a["resilience.event.duration"] == 0.0 for _, a in span_events)
    assert all(a["error.type"] == "ConnectionError" and a["resilience.policy.name"] == "r" for _, a in span_events)


async def test_a_retry_that_gives_up_records_failures(tel: Telemetry) -> None:
    guarded = Pipeline(Retry(2, backoff=constant(0)), name="p")(flaky(5))
    with pytest.raises(ConnectionError):
        await guarded()
    (pipe,) = tel.points("resilience.pipeline.duration")
    assert pipe.attributes["resilience.outcome"] == "failure"
    (att,) = tel.points("resilience.attempt.duration")
    assert (att.attributes["resilience.outcome"], att.count) == ("failure", 2)
    (point,) = tel.points("resilience.events")
    assert "resilience.policy.name" not in point.attributes  # unnamed policy: no attribute, not ""


def test_sync_retry_records_attempts(tel: Telemetry) -> None:
    n = {"i": 0}

    def call() -> int:
        n["i"] += 1
        if n["i"] == 1:
            raise OSError
        return 1

    assert Pipeline(Retry(2, backoff=constant(0)), name="s").run_sync(call) == 1
    assert sorted(p.count for p in tel.points("resilience.attempt.duration")) == [1, 1]
    assert tel.points("resilience.pipeline.duration")[0].count == 1


# -- a rejection -------------------------------------------------------------------


async def test_rejection_counts_and_adds_a_span_event(tel: Telemetry) -> None:
    from resilient import Bulkhead

    fn = flaky(0)
    bulkhead = Bulkhead(1, name="pool")
    guarded = Pipeline(bulkhead, name="p")(fn)
    gate = asyncio.Event()
    holder = asyncio.create_task(bulkhead.run(gate.wait))  # takes the only slot
    await asyncio.sleep(0)
    with tel.tracer.start_as_current_span("request"), pytest.raises(BulkheadFullError):
        await guarded()
    gate.set()
    await holder
    (point,) = tel.points("resilience.events")
    assert point.value == 1
    expected = {
        "resilience.event.name": "rejected",
        "resilience.event.severity": "warning",
        "resilience.policy.type": "bulkhead",
        "resilience.policy.name": "pool",
        "resilience.pipeline.name": "p",
        "resilience.operation.name": fn.__qualname__,
        "error.type": "resilient.errors.BulkheadFullError",
        "resilience.rejection.reason": "bulkhead_full",
    }
    assert dict(point.attributes) == expected
    assert tel.span_events() == [("resilience.rejected", expected)]
    (pipe,) = tel.points("resilience.pipeline.duration")
    assert pipe.attributes["resilience.outcome"] == "failure"
    # No Retry in the pipeline: no attempt durations.
    assert "resilience.attempt.duration" not in tel.metrics()


# -- a timeout ---------------------------------------------------------------------


async def test_timeout_counts_and_adds_a_span_event(tel: Telemetry) -> None:
    clock = FakeClock()

    async def slow() -> None:
        await clock.asleep(5)

    guarded = Pipeline(Timeout(0.01, name="t", clock=clock), name="p")(slow)
    with tel.tracer.start_as_current_span("request"), pytest.raises(TimeoutError):
        await after(clock, 0.01, guarded())
    (point,) = tel.points("resilience.events")
    expected = {
        "resilience.event.name": "timeout",
        "resilience.event.severity": "warning",
        "resilience.policy.type": "timeout",
        "resilience.policy.name": "t",
        "resilience.pipeline.name": "p",
        "resilience.operation.name": slow.__qualname__,
        "resilience.timeout.deadline": False,
    }
    assert dict(point.attributes) == expected
    ((name, attrs),) = tel.span_events()
    assert name == "resilience.timeout"
    assert attrs == {**expected, "resilience.event.duration": pytest.approx(0.01)}
    (pipe,) = tel.points("resilience.pipeline.duration")
    assert pipe.attributes["resilience.outcome"] == "failure"


# -- events from other real policies: a per-host breaker, a stale cache ------------


async def test_breaker_opening(tel: Telemetry) -> None:
    httpx = pytest.importorskip("httpx")
    from resilient.httpx import AsyncResilientTransport, standard_pipeline

    def upstream(request: Any) -> Any:
        return httpx.Response(503)

    clock = FakeClock(auto_advance=True)
    pipeline = standard_pipeline(clock=clock, consecutive_failures=2, max_retries=0)
    transport = AsyncResilientTransport(pipeline, inner=httpx.MockTransport(upstream))
    async with httpx.AsyncClient(transport=transport) as client:
        with tel.tracer.start_as_current_span("request"):
            for _ in range(2):
                assert (await client.get("http://users.internal:8443/u/1")).status_code == 503
    expected = {
        "resilience.event.name": "circuit_opened",
        "resilience.event.severity": "warning",
        "resilience.policy.type": "circuit_breaker",
        "resilience.policy.name": "httpx http://users.internal:8443 breaker",
        "resilience.pipeline.name": "httpx http://users.internal:8443",
        "resilience.operation.name": "http",
        "resilience.circuit.state": "open",
        "resilience.circuit.previous_state": "closed",
        "resilience.circuit.manual": False,
        "http.request.method": "GET",
        "server.address": "users.internal",
        "server.port": 8443,
        "http.response.status_code": 503,
    }
    (opened,) = _exported(tel, "circuit_opened")
    assert opened == expected
    assert tel.span_events() == [("resilience.circuit_opened", {**expected, "resilience.event.duration": 0.1})]


async def test_stale_hit(tel: Telemetry) -> None:
    clock = FakeClock()
    answers: list[str | Exception] = ["v1", TimeoutError(), TimeoutError(), TimeoutError()]

    async def get_prices() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    cached = StaleCache(10, stale_ttl=300, refresh="inline", name="prices", clock=clock)(get_prices)
    assert await cached() == "v1"
    clock.advance(60)
    with tel.tracer.start_as_current_span("request"):
        for _ in range(3):
            assert await cached() == "v1"  # the upstream times out: the stale value answers
    (point,) = tel.points("resilience.events")
    assert point.value == 3
    assert dict(point.attributes) == {
        "resilience.event.name": "cache_stale_hit",
        "resilience.event.severity": "warning",  # served because the upstream failed
        "resilience.policy.type": "stale_cache",
        "resilience.policy.name": "prices",
        "resilience.operation.name": get_prices.__qualname__,
        "error.type": "TimeoutError",
        "resilience.rejection.reason": "error",
    }
    assert [n for n, _ in tel.span_events()] == ["resilience.cache_stale_hit"] * 3


async def test_every_event_name_is_handled(tel: Telemetry) -> None:
    # Every event but the duration events, which go to the histograms (tested below).
    names = [
        getattr(ev, n)
        for n in ev.__all__
        if n.isupper() and not n.startswith("EXTRA_") and n not in ("EXECUTION_ATTEMPT", "PIPELINE_EXECUTED")
    ]
    site = EventSite("op", "p")
    with tel.tracer.start_as_current_span("request"):
        for name in names:
            site.emit((), name, Severity.INFO, "policy", None)
    counted = {p.attributes["resilience.event.name"]: p.value for p in tel.points("resilience.events")}
    assert counted == dict.fromkeys(names, 1)
    assert sorted(n for n, _ in tel.span_events()) == sorted(f"resilience.{n}" for n in names)


# -- safety: nothing secret or high-cardinality in attributes ----------------------

SECRETS = ("SECRET", "?", "://", "@", "Bearer", "token=", "/")


async def test_no_url_query_credential_or_header_value_reaches_attributes(tel: Telemetry) -> None:
    site = EventSite("call", "p")
    hostile: list[dict[str, Any]] = [
        {"url": "https://user:SECRET@api.example.com/v1/users/42?token=SECRET"},
        {"host": "api.example.com/?q=SECRET"},
        {"host": "user:SECRET@api.example.com"},
        {"host": "api.example.com:8443"},
        {"host": "https://api.example.com"},
        {"authorization": "Bearer SECRET", "cookie": "session=SECRET", "x-api-key": "SECRET"},
        {"headers": {"authorization": "Bearer SECRET"}},
        {"user_id": "SECRET-42", "query": "a=SECRET", "path": "/users/SECRET"},
        {"method": "SECRET /admin?x=1"},
        {"status_code": "503 SECRET"},
        {"state": "open?SECRET"},
        {"deadline": "SECRET"},
    ]
    with tel.tracer.start_as_current_span("request"):
        for extras in hostile:
            site.emit((), ev.RETRY, Severity.INFO, "retry", "r", extras=extras)
    values = tel.all_attribute_values()
    assert values
    for value in values:
        text = str(value)
        assert not any(s in text for s in SECRETS), text
    keys = {k for p in tel.points("resilience.events") for k in p.attributes}
    assert keys <= {
        "resilience.event.name",
        "resilience.event.severity",
        "resilience.policy.type",
        "resilience.policy.name",
        "resilience.pipeline.name",
        "resilience.operation.name",
        "http.request.method",
    }
    # The unknown method became the semantic conventions' "_OTHER".
    assert {p.attributes.get("http.request.method") for p in tel.points("resilience.events")} == {None, "_OTHER"}


TRICKY = st.sampled_from(
    ["a.b", "a.b?x=1", "u:p@h", "h:80", "[::1]", "::1", "::1/path", "GET", "get /x", "open", "x" * 300, "a b", ""]
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=300)
@given(
    st.dictionaries(
        st.sampled_from([*otel.SAFE_EXTRAS, "url", "authorization", "user", "x"]),
        st.one_of(TRICKY, st.text(), st.integers(), st.booleans(), st.floats(allow_nan=False), st.none()),
    )
)
def test_extras_become_only_checked_low_cardinality_values(extras: dict[str, Any]) -> None:
    event = ev.ResilienceEvent("retry", Severity.INFO, "retry", extras=extras)
    attrs = otel.event_attributes(event)
    allowed = {key for key, _ in otel.SAFE_EXTRAS.values()}
    for key, value in attrs.items():
        if key.startswith("resilience.event") or key == "resilience.policy.type":
            continue
        assert key in allowed
        assert isinstance(value, str | int | bool)
        if isinstance(value, str):
            assert len(value) <= 253
            assert not set(value) & set("/?@#&=% \t\r\n\"'<>\\")


@pytest.mark.parametrize(
    ("extras", "expected"),
    [
        ({"host": "API.Example.com"}, {"server.address": "api.example.com"}),
        ({"host": "10.0.0.1"}, {"server.address": "10.0.0.1"}),
        ({"host": "[::1]"}, {"server.address": "::1"}),
        ({"host": "a.b:80"}, {}),
        ({"port": 8443}, {"server.port": 8443}),
        ({"port": 0}, {}),
        ({"method": "patch"}, {"http.request.method": "PATCH"}),
        ({"status_code": 429}, {"http.response.status_code": 429}),
        ({"status_code": True}, {}),
        ({"status_code": 9999}, {}),
        ({"deadline": True}, {"resilience.timeout.deadline": True}),
        ({"state": "half_open"}, {"resilience.circuit.state": "half_open"}),
    ],
)
def test_safe_extras_mapping(extras: dict[str, Any], expected: dict[str, Any]) -> None:
    attrs = otel.event_attributes(ev.ResilienceEvent("retry", Severity.INFO, "retry", extras=extras))
    base = {"resilience.event.name": "retry", "resilience.event.severity": "info", "resilience.policy.type": "retry"}
    assert attrs == {**base, **expected}


async def test_attribute_sets_beyond_the_limit_are_counted_as_overflow(
    tel: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(otel.listener, "_MAX_ATTRIBUTE_SETS", 2)
    with tel.tracer.start_as_current_span("request"):
        for i in range(5):
            EventSite(f"op{i}", "p").emit((), ev.RETRY, Severity.INFO, "retry", None)
    counts = sorted(
        (p.value, p.attributes.get("resilience.operation.name", "overflow")) for p in tel.points("resilience.events")
    )
    assert counts == [(1, "op0"), (1, "op1"), (3, "overflow")]
    overflow = [p for p in tel.points("resilience.events") if "otel.metric.overflow" in p.attributes]
    assert dict(overflow[0].attributes) == {"otel.metric.overflow": True}
    # Span events keep the real attributes.
    assert [a["resilience.operation.name"] for _, a in tel.span_events()] == [f"op{i}" for i in range(5)]


def test_durations_false_records_no_histograms() -> None:
    mp = MeterProvider(metric_readers=[InMemoryMetricReader()])
    listener = otel.instrument(mp, durations=False)
    try:
        assert not listener.records_durations
        assert ev._duration_listeners == []
    finally:
        otel.uninstrument()
    with pytest.raises(TypeError, match="durations"):
        otel.OpenTelemetryListener(mp, durations="yes")  # type: ignore[arg-type]


# -- span events: only on recording spans, configurable ----------------------------


async def test_no_current_span_is_fine_and_counts_anyway(tel: Telemetry) -> None:
    await Retry(2, backoff=constant(0))(flaky(1))()
    assert tel.span_events() == []
    assert tel.points("resilience.events")[0].value == 1


async def test_span_events_can_be_limited_to_some_names() -> None:
    t = Telemetry(span_events={ev.RETRY})
    try:
        clock = FakeClock()

        async def slow() -> None:
            await clock.asleep(5)

        with t.tracer.start_as_current_span("request"):
            await Retry(2, backoff=constant(0))(flaky(1))()
            with pytest.raises(TimeoutError):
                await after(clock, 0.01, Timeout(0.01, clock=clock)(slow)())
        assert [n for n, _ in t.span_events()] == ["resilience.retry"]
        assert {p.attributes["resilience.event.name"] for p in t.points("resilience.events")} == {"retry", "timeout"}
    finally:
        otel.uninstrument()


async def test_noop_tracer_provider_switches_span_events_off() -> None:
    t = Telemetry()
    otel.instrument(t.meter_provider, NoOpTracerProvider())
    try:
        with t.tracer.start_as_current_span("request"):
            await Retry(2, backoff=constant(0))(flaky(1))()
        assert t.span_events() == []
    finally:
        otel.uninstrument()


def test_span_events_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError, match="span_events"):
        otel.OpenTelemetryListener(NoOpMeterProvider(), span_events="retry")


# -- registration and cost -----------------------------------------------------------


def test_instrument_replaces_and_uninstrument_removes() -> None:
    before = (list(ev._global_listeners), list(ev._duration_listeners))
    mp = MeterProvider(metric_readers=[InMemoryMetricReader()])
    first = otel.instrument(mp)
    second = otel.instrument(mp)
    assert otel.instrumented() is second
    assert first not in ev._global_listeners
    assert ev._global_listeners.count(second) == 1
    assert ev._duration_listeners.count(second) == 1
    otel.uninstrument()
    otel.uninstrument()
    assert otel.instrumented() is None
    assert (ev._global_listeners, ev._duration_listeners) == before


def test_instrument_again_on_the_same_provider_keeps_counting() -> None:
    # The SDK keeps the first callback of an instrument name: a second
    # instrument() must count into the same cumulative table.
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader])
    site = EventSite("op", "p")
    try:
        otel.instrument(mp)
        site.emit((), ev.RETRY, Severity.INFO, "retry", None)
        otel.instrument(mp)
        site.emit((), ev.RETRY, Severity.INFO, "retry", None)
        site.emit((), ev.RETRY, Severity.INFO, "retry", None)
    finally:
        otel.uninstrument()
    data = reader.get_metrics_data()
    assert data is not None
    (metric,) = [m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
    assert [p.value for p in metric.data.data_points] == [3]


def test_no_sdk_means_no_duration_listener() -> None:
    listener = otel.instrument(NoOpMeterProvider())
    try:
        assert not listener.records_durations
        assert listener in ev._global_listeners
        assert ev._duration_listeners == []
        assert not ev.durations_enabled()
        # Events still go through the no-op instruments without error.
        EventSite("op", "p").emit((), ev.RETRY, Severity.INFO, "retry", None, exception=OSError())
    finally:
        otel.uninstrument()


async def test_a_pipeline_listener_records_events_but_not_durations() -> None:
    reader = InMemoryMetricReader()
    listener = otel.OpenTelemetryListener(MeterProvider(metric_readers=[reader]))
    await Pipeline(Retry(2, backoff=constant(0)), name="p", listeners=[listener])(flaky(1))()
    data = reader.get_metrics_data()
    assert data is not None
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert names == {"resilience.events"}


def test_global_proxy_provider_costs_nothing_until_an_sdk_is_set() -> None:
    # The global meter provider can be set once per process: a subprocess.
    code = textwrap.dedent(
        """
        import asyncio
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from resilient import Pipeline, Retry, constant, events
        import resilient.otel

        listener = resilient.otel.instrument()
        assert not listener.records_durations and events._duration_listeners == [], "no SDK: no durations"
        n = {"i": 0}
        async def call():
            n["i"] += 1
            if n["i"] % 2:
                raise OSError
            return 1
        guarded = Pipeline(Retry(2, backoff=constant(0)), name="p")(call)
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        asyncio.run(guarded())  # one retry: an event, which notices the SDK
        assert listener.records_durations and events._duration_listeners, "SDK set: durations on"
        asyncio.run(guarded())
        found = {m.name: m for rm in reader.get_metrics_data().resource_metrics
                 for sm in rm.scope_metrics for m in sm.metrics}
        print(sorted(found))
        print(sum(p.value for p in found["resilience.events"].data.data_points))
        """
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("OTEL_PYTHON_METER_PROVIDER", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "['resilience.attempt.duration', 'resilience.events', 'resilience.pipeline.duration']"
    assert lines[1] == "2"


# -- cardinality: the table is keyed on what is exported (issue 14, item 4) ------


async def test_thousands_of_limiter_rejections_do_not_push_other_events_into_overflow(tel: Telemetry) -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, 1.0, burst=1, mode="reject", name="quota", clock=clock)

    async def ok() -> str:
        return "ok"

    limited = limiter(ok)
    await limited()
    rejections = 3000
    for _ in range(rejections):
        # Each rejection carries a different float retry_after, which is not exported.
        clock.advance(0.0001)
        with pytest.raises(RateLimitedError):
            await limited()

    breaker = CircuitBreaker("db", consecutive_failures=2, clock=clock)

    async def down() -> None:
        raise ConnectionError("down")

    guarded = breaker(down)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await guarded()
    with pytest.raises(CircuitOpenError):
        await guarded()

    retried = Retry(2, backoff=constant(0), name="fetch retry", clock=clock)(flaky(1))
    assert await retried() == "ok"

    points = tel.points("resilience.events")
    assert not [p for p in points if "otel.metric.overflow" in p.attributes]
    by_event = {(p.attributes["resilience.policy.type"], p.attributes["resilience.event.name"]): p for p in points}
    rejected = by_event[("rate_limiter", "rejected")]
    assert rejected.value == rejections
    assert rejected.attributes["resilience.policy.name"] == "quota"
    assert by_event[("circuit_breaker", "circuit_opened")].attributes["resilience.policy.name"] == "db"
    assert by_event[("circuit_breaker", "rejected")].value == 1
    assert by_event[("retry", "retry")].attributes["resilience.policy.name"] == "fetch retry"
    # One point per exported attribute set: nothing identical is reported twice.
    assert len({frozenset(p.attributes.items()) for p in points}) == len(points)


# -- events from real producers: what each policy's event exports -----------------


def _exported(tel: Telemetry, name: str) -> list[dict[str, Any]]:
    points = tel.points("resilience.events")
    return [dict(p.attributes) for p in points if p.attributes["resilience.event.name"] == name]


async def test_a_real_breaker_opening_exports_its_new_and_previous_state(tel: Telemetry) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("users-api", consecutive_failures=2, clock=clock)
    guarded = Pipeline(breaker, name="users")(flaky(5))
    with tel.tracer.start_as_current_span("request"):
        for _ in range(2):
            with pytest.raises(ConnectionError):
                await guarded()
        with pytest.raises(CircuitOpenError):
            await guarded()
    (opened,) = _exported(tel, "circuit_opened")
    assert opened["resilience.circuit.state"] == "open"
    assert opened["resilience.circuit.previous_state"] == "closed"
    assert opened["resilience.circuit.manual"] is False
    assert opened["error.type"] == "ConnectionError"
    assert opened["resilience.policy.name"] == "users-api"
    (rejected,) = _exported(tel, "rejected")
    assert rejected["resilience.circuit.state"] == "open"
    assert rejected["error.type"] == "resilient.errors.CircuitOpenError"
    breaker.reset()
    (closed,) = _exported(tel, "circuit_closed")
    assert closed["resilience.circuit.previous_state"] == "open"
    assert closed["resilience.circuit.state"] == "closed"
    assert closed["resilience.circuit.manual"] is True


async def test_a_real_httpx_retry_exports_method_host_port_and_status(tel: Telemetry) -> None:
    httpx = pytest.importorskip("httpx")
    from resilient.httpx import AsyncResilientTransport, standard_pipeline

    answers = iter([503, 200])

    def upstream(request: Any) -> Any:
        return httpx.Response(next(answers))

    clock = FakeClock(auto_advance=True)
    transport = AsyncResilientTransport(standard_pipeline(clock=clock), inner=httpx.MockTransport(upstream))
    async with httpx.AsyncClient(transport=transport) as client:
        with tel.tracer.start_as_current_span("request"):
            response = await client.get("http://inventory.internal:8080/items/1?token=SECRET")
    assert response.status_code == 200
    (retry,) = _exported(tel, "retry")
    assert retry["http.request.method"] == "GET"
    assert retry["server.address"] == "inventory.internal"
    assert retry["server.port"] == 8080
    assert retry["http.response.status_code"] == 503
    assert "SECRET" not in repr(tel.all_attribute_values())


async def test_a_real_limiter_rejection_exports_its_reason(tel: Telemetry) -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, 1.0, mode="reject", name="api", clock=clock)
    guarded = limiter(flaky(0))
    await guarded()
    with pytest.raises(RateLimitedError):
        await guarded()
    (rejected,) = _exported(tel, "rejected")
    assert rejected["resilience.rejection.reason"] == "rate_limited"
    assert rejected["resilience.policy.type"] == "rate_limiter"
    assert rejected["error.type"] == "resilient.errors.RateLimitedError"
    # The float retry_after is not exported (it would make every set distinct).
    assert not any(isinstance(v, float) for v in rejected.values())


async def test_a_real_bulkhead_rejection_exports_its_reason(tel: Telemetry) -> None:
    from resilient import Bulkhead

    bulkhead = Bulkhead(1, name="pool")
    gate = asyncio.Event()

    async def hold() -> None:
        await gate.wait()

    holder = asyncio.create_task(bulkhead.run(hold))
    await asyncio.sleep(0)
    with pytest.raises(BulkheadFullError):
        await bulkhead.run(hold)
    gate.set()
    await holder
    (rejected,) = _exported(tel, "rejected")
    assert rejected["resilience.rejection.reason"] == "bulkhead_full"
    assert rejected["error.type"] == "resilient.errors.BulkheadFullError"


# -- the ASGI middleware's answers ---------------------------------------------------


async def test_the_asgi_middlewares_503_and_504_are_exported(tel: Telemetry) -> None:
    # Real parts, real events: a shed request and a request timeout.
    from resilient.asgi import ResilienceMiddleware
    from tests.asgi_helpers import call, http_scope, status_of

    clock = FakeClock()
    gate = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = ResilienceMiddleware(app, max_concurrent=1, timeout=5, clock=clock, name="edge")
    first = asyncio.create_task(call(mw, http_scope()))
    for _ in range(10):
        await asyncio.sleep(0)
    assert status_of(await call(mw, http_scope())) == 503
    clock.advance(5)
    assert status_of(await first) == 504
    points = {
        (p.attributes["resilience.policy.type"], p.attributes["resilience.event.name"]): dict(p.attributes)
        for p in tel.points("resilience.events")
    }
    shed = points[("asgi.load_shedding", "rejected")]
    assert shed["resilience.policy.name"] == "edge.load_shedding"
    assert shed["resilience.rejection.reason"] == "overloaded"
    assert shed["http.response.status_code"] == 503
    timed_out = points[("asgi.request_timeout", "timeout")]
    assert timed_out["resilience.policy.name"] == "edge.request_timeout"
    assert timed_out["http.response.status_code"] == 504
    assert timed_out["resilience.timeout.deadline"] is False

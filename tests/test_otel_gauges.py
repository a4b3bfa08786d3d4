"""State gauges against the real SDK (in-memory reader), driving real policies."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
import sys
import textwrap
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from resilient import (
    AdaptiveConcurrency,
    Bulkhead,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    Keyed,
    Pipeline,
    RateLimiter,
    Registry,
    Retry,
    StaleCache,
    otel,
)
from resilient import events as ev
from resilient.otel import gauges as gauges_module
from resilient.testing import FakeClock

ROOT = Path(__file__).resolve().parents[1]

Points = dict[frozenset[tuple[str, Any]], float]


class Gauges:
    """An SDK meter provider with an in-memory reader and the gauges on it."""

    def __init__(self, **kwargs: Any) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.gauges = otel.instrument_gauges(self.provider, **kwargs)

    def collect(self) -> dict[str, Points]:
        data = self.reader.get_metrics_data()
        found: dict[str, Points] = {}
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                assert scope.scope.name == "resilient"
                for metric in scope.metrics:
                    points = found.setdefault(metric.name, {})
                    for point in metric.data.data_points:
                        points[frozenset(point.attributes.items())] = point.value
        return found

    def value(self, metric: str, **attrs: Any) -> float | None:
        """The one point of ``metric`` whose attributes include ``attrs``."""
        wanted = {k.replace("__", "."): v for k, v in attrs.items()}
        matches = [v for key, v in self.collect().get(metric, {}).items() if wanted.items() <= dict(key).items()]
        assert len(matches) <= 1, matches
        return matches[0] if matches else None


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    # Policies of earlier tests must not show up among the live ones.
    gc.collect()
    yield
    gc.collect()


def _fail() -> None:
    raise ConnectionError("down")


def _attrs(name: str, kind: str) -> dict[str, str]:
    return {"resilience.policy.name": name, "resilience.policy.type": kind}


def test_the_circuit_state_is_the_effective_one(clock: FakeClock) -> None:
    breaker = CircuitBreaker("payments", failure_ratio=0.5, minimum_throughput=4, break_duration=10.0, clock=clock)
    g = Gauges(policies=[breaker])
    attrs = _attrs("payments", "circuit_breaker")
    assert g.value(otel.CIRCUIT_STATE, **attrs) == 0
    assert g.value(otel.CIRCUIT_FAILURE_RATIO, **attrs) == 0.0

    guarded = breaker(_fail)
    ok = breaker(lambda: "ok")
    ok()
    for _ in range(3):
        with pytest.raises(ConnectionError):
            guarded()
    assert breaker.state is CircuitState.OPEN
    assert g.value(otel.CIRCUIT_STATE, **attrs) == 1
    assert g.value(otel.CIRCUIT_FAILURE_RATIO, **attrs) == pytest.approx(0.75)
    with pytest.raises(CircuitOpenError):
        ok()

    # The break is over: no call has probed, so the breaker still says OPEN,
    # but a call arriving now would be a probe.
    clock.advance(10.0)
    assert breaker.state is CircuitState.OPEN
    assert g.value(otel.CIRCUIT_STATE, **attrs) == 2

    breaker.isolate()
    assert g.value(otel.CIRCUIT_STATE, **attrs) == 3
    breaker.reset()
    assert g.value(otel.CIRCUIT_STATE, **attrs) == 0


async def test_bulkhead_running_and_queued_while_full() -> None:
    bulkhead = Bulkhead(2, max_queued=2, name="db")
    g = Gauges(policies=[bulkhead])
    release = asyncio.Event()

    @bulkhead
    async def hold() -> None:
        await release.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(3)]
    for _ in range(5):
        await asyncio.sleep(0)
    attrs = _attrs("db", "bulkhead")
    assert g.value(otel.BULKHEAD_RUNNING, **attrs) == 2
    assert g.value(otel.BULKHEAD_QUEUED, **attrs) == 1
    release.set()
    await asyncio.gather(*tasks)
    assert g.value(otel.BULKHEAD_RUNNING, **attrs) == 0
    assert g.value(otel.BULKHEAD_QUEUED, **attrs) == 0


def test_rate_limiter_tokens_available_now(clock: FakeClock) -> None:
    limiter = RateLimiter(10, 1.0, burst=10, mode="reject", name="api", clock=clock)
    g = Gauges(policies=[limiter])
    attrs = _attrs("api", "rate_limiter")
    assert g.value(otel.RATELIMIT_TOKENS, **attrs) == pytest.approx(10)
    call = limiter(lambda: None)
    for _ in range(4):
        call()
    assert g.value(otel.RATELIMIT_TOKENS, **attrs) == pytest.approx(6)
    clock.advance(0.2)  # two tokens come back
    assert g.value(otel.RATELIMIT_TOKENS, **attrs) == pytest.approx(8)


def test_adaptive_concurrency_limit_moves_with_drops() -> None:
    adaptive = AdaptiveConcurrency(initial_limit=10, min_limit=2, backoff_ratio=0.5, name="upstream")
    g = Gauges(policies=[adaptive])
    attrs = _attrs("upstream", "adaptive_concurrency")
    assert g.value(otel.CONCURRENCY_LIMIT, **attrs) == 10
    assert g.value(otel.BULKHEAD_RUNNING, **attrs) == 0  # it is a bulkhead too
    guarded = adaptive(_fail)
    with pytest.raises(ConnectionError):
        guarded()
    assert g.value(otel.CONCURRENCY_LIMIT, **attrs) == 5


def test_cache_entries_and_lookups(clock: FakeClock) -> None:
    cache = StaleCache(10.0, stale_ttl=60.0, refresh="inline", name="users", clock=clock)
    g = Gauges(policies=[cache])
    get = cache(lambda user: {"id": user})
    get(1)  # miss
    get(1)  # hit
    get(2)  # miss
    attrs = _attrs("users", "stale_cache")
    assert g.value(otel.CACHE_ENTRIES, **attrs) == 2
    assert g.value(otel.CACHE_LOOKUPS, resilience__cache__result="hit", **attrs) == 1
    assert g.value(otel.CACHE_LOOKUPS, resilience__cache__result="miss", **attrs) == 2
    assert g.value(otel.CACHE_LOOKUPS, resilience__cache__result="stale", **attrs) == 0


def test_a_stale_answer_is_counted_as_stale(clock: FakeClock) -> None:
    cache = StaleCache(10.0, stale_ttl=60.0, refresh="inline", name="profiles", clock=clock)
    g = Gauges(policies=[cache])
    calls = [lambda: "fresh", _fail]

    @cache
    def load() -> str:
        return calls[0]()  # type: ignore[no-untyped-call]

    load()
    calls.pop(0)
    clock.advance(20.0)  # stale now; the refresh fails, so the stale value is served
    assert load() == "fresh"
    attrs = _attrs("profiles", "stale_cache")
    assert g.value(otel.CACHE_LOOKUPS, resilience__cache__result="stale", **attrs) == 1


def test_live_named_policies_are_reported_and_dropped_ones_are_collected(clock: FakeClock) -> None:
    g = Gauges()
    breaker = CircuitBreaker("inventory", clock=clock)
    CircuitBreaker(clock=clock)  # unnamed: not reported (and collected at once)
    points = g.collect()[otel.CIRCUIT_STATE]
    ours = [dict(k) for k in points if dict(k).get("resilience.policy.name") == "inventory"]
    assert ours == [_attrs("inventory", "circuit_breaker")]
    assert all("resilience.policy.name" in dict(k) for k in points)

    ref = weakref.ref(breaker)
    del breaker
    gc.collect()
    assert ref() is None, "the gauges must not keep a policy alive"
    points = g.collect().get(otel.CIRCUIT_STATE, {})
    assert not [k for k in points if dict(k).get("resilience.policy.name") == "inventory"]


def test_members_of_a_named_pipeline_carry_its_name(clock: FakeClock) -> None:
    g = Gauges()
    pipeline = Pipeline(Retry(), CircuitBreaker(clock=clock), Bulkhead(3), name="checkout")
    state = g.value(otel.CIRCUIT_STATE, resilience__pipeline__name="checkout")
    assert state == 0
    assert g.value(otel.BULKHEAD_RUNNING, resilience__pipeline__name="checkout") == 0
    del pipeline


def test_a_registry_reports_its_pipelines(clock: FakeClock) -> None:
    registry = Registry(
        {
            "payments": [
                {"type": "circuit_breaker", "failure_ratio": 0.5, "minimum_throughput": 2},
                {"type": "bulkhead", "max_concurrent": 4},
            ]
        }
    )
    g = Gauges(policies=[registry])
    assert g.value(otel.CIRCUIT_STATE, resilience__pipeline__name="payments") == 0
    assert g.value(otel.BULKHEAD_RUNNING, resilience__pipeline__name="payments") == 0
    registry.configure({"orders": [{"type": "rate_limiter", "rate": 5, "burst": 5}]})
    found = g.collect()
    assert otel.CIRCUIT_STATE not in found or not found[otel.CIRCUIT_STATE]
    assert g.value(otel.RATELIMIT_TOKENS, resilience__pipeline__name="orders") == pytest.approx(5)


def test_keyed_reports_a_bounded_number_of_keys_worst_first(clock: FakeClock) -> None:
    keyed = Keyed(
        lambda endpoint: CircuitBreaker(f"sub-{endpoint}", consecutive_failures=1, clock=clock),
        key=lambda endpoint: endpoint,
        name="subscribers",
    )
    g = Gauges(keys_per_policy=3)
    deliver = keyed(lambda endpoint: None)
    fail = keyed(lambda endpoint: _fail())
    for i in range(50):
        deliver(f"e{i}")
    for i in (7, 23):
        with pytest.raises(ConnectionError):
            fail(f"e{i}")

    points = g.collect()[otel.CIRCUIT_STATE]
    keyed_points = {dict(k).get("resilience.key"): v for k, v in points.items() if "resilience.key" in dict(k)}
    assert len(keyed_points) == 3
    assert keyed_points["'e7'"] == 1
    assert keyed_points["'e23'"] == 1
    for key in points:
        attrs = dict(key)
        # The per-key breakers' own names never become attributes (nor separate series).
        assert not str(attrs.get("resilience.policy.name", "")).startswith("sub-")
        if "resilience.key" in attrs:
            assert attrs["resilience.policy.name"] == "subscribers"
            assert attrs["resilience.policy.type"] == "circuit_breaker"


def test_a_policy_that_cannot_be_read_is_skipped_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Bulkhead):
        @property
        def running(self) -> int:
            raise RuntimeError("no state")

    broken, fine = Broken(1, name="broken"), Bulkhead(1, name="fine")
    g = Gauges(policies=[broken, fine])
    with caplog.at_level(logging.WARNING, logger="resilient.otel"):
        for _ in range(3):
            found = g.collect()
            running = {dict(k)["resilience.policy.name"]: v for k, v in found[otel.BULKHEAD_RUNNING].items()}
            assert running == {"fine": 0}
            queued = {dict(k)["resilience.policy.name"] for k in found[otel.BULKHEAD_QUEUED]}
            assert queued == {"broken", "fine"}  # what can be read still is
    warnings = [r for r in caplog.records if "broken" in r.getMessage()]
    assert len(warnings) == 1


def test_a_failing_source_never_raises_into_the_collection(caplog: pytest.LogCaptureFixture) -> None:
    def source() -> list[Any]:
        raise RuntimeError("registry gone")

    g = Gauges(policies=source)
    with caplog.at_level(logging.WARNING, logger="resilient.otel"):
        for _ in range(2):
            found = g.collect()
            assert all(not points for points in found.values())
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1


def test_a_second_call_replaces_the_first_and_uninstrument_stops(clock: FakeClock) -> None:
    a, b = CircuitBreaker("a", clock=clock), CircuitBreaker("b", clock=clock)
    g = Gauges(policies=[a])
    assert g.value(otel.CIRCUIT_STATE, resilience__policy__name="a") == 0
    second = otel.instrument_gauges(g.provider, policies=[b])
    assert not g.gauges.active
    assert second.active
    names = {dict(k)["resilience.policy.name"] for k in g.collect()[otel.CIRCUIT_STATE]}
    assert names == {"b"}
    otel.uninstrument_gauges(g.provider)
    assert not g.collect().get(otel.CIRCUIT_STATE)


def test_gauges_add_no_listener_to_the_call_path(clock: FakeClock) -> None:
    before = (list(ev.duration_listeners), ev.durations_enabled())
    g = Gauges()
    assert (list(ev.duration_listeners), ev.durations_enabled()) == before
    # Wrapping after instrumenting builds the same closure as before: nothing was added to it.
    breaker = CircuitBreaker("hot", clock=clock)
    call = breaker(lambda: 1)
    assert call() == 1
    assert g.value(otel.CIRCUIT_STATE, resilience__policy__name="hot") == 0


def test_bad_arguments_fail_at_construction() -> None:
    with pytest.raises(TypeError, match=r"policies\[1\]"):
        otel.instrument_gauges(MeterProvider(), policies=[Bulkhead(1), "breaker"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="keys_per_policy"):
        otel.instrument_gauges(MeterProvider(), keys_per_policy=-1)


def test_the_state_numbers_are_resilience4js() -> None:
    assert dict(otel.CIRCUIT_STATE_VALUES) == {
        CircuitState.CLOSED: 0,
        CircuitState.OPEN: 1,
        CircuitState.HALF_OPEN: 2,
        CircuitState.ISOLATED: 3,
    }
    assert gauges_module.effective_state is otel.effective_state


def test_keyed_worst_ranks_open_breakers_first_and_never_builds(clock: FakeClock) -> None:
    built: list[str] = []

    def factory(key: str) -> CircuitBreaker:
        built.append(key)
        return CircuitBreaker(consecutive_failures=1, clock=clock)

    keyed = Keyed(factory, key=lambda key: key)
    call = keyed(lambda key: None)
    fail = keyed(lambda key: _fail())
    for key in "abcd":
        call(key)
    with pytest.raises(ConnectionError):
        fail("c")
    assert keyed.worst(2)[0][0] == "'c'"
    assert len(keyed.worst(None)) == 4
    assert keyed.worst(0) == []
    assert built == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="limit"):
        keyed.worst(-1)


def test_keyed_pipelines_report_each_member_per_key(clock: FakeClock) -> None:
    keyed = Keyed(
        lambda tenant: Pipeline(CircuitBreaker(clock=clock), Bulkhead(2)),
        key=lambda tenant: tenant,
        name="tenants",
    )
    g = Gauges(policies=[Pipeline(Retry(), keyed, name="api")], keys_per_policy=5)
    call = keyed(lambda tenant: None)
    for tenant in ("acme", "initech"):
        call(tenant)
    found = g.collect()
    for metric, kind in ((otel.CIRCUIT_STATE, "circuit_breaker"), (otel.BULKHEAD_RUNNING, "bulkhead")):
        assert sorted(dict(k)["resilience.key"] for k in found[metric]) == ["'acme'", "'initech'"]
        for key in found[metric]:
            assert dict(key)["resilience.policy.type"] == kind
            assert dict(key)["resilience.policy.name"] == "tenants"
            assert dict(key)["resilience.pipeline.name"] == "api"
    g0 = Gauges(policies=[keyed], keys_per_policy=0)
    assert not g0.collect().get(otel.CIRCUIT_STATE)


def test_the_global_provider_set_later_is_picked_up() -> None:
    code = textwrap.dedent(
        """
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        import resilient.otel
        from resilient import CircuitBreaker

        breaker = CircuitBreaker("late")
        resilient.otel.instrument_gauges()  # the API's proxy provider for now
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        breaker.trip()
        resilient.otel.instrument_gauges(policies=[breaker])  # replaces the first, on the same instruments
        data = reader.get_metrics_data()
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == "resilience.circuit.state":
                        for p in m.data.data_points:
                            print(p.attributes.get("resilience.policy.name"), p.value)
        resilient.otel.uninstrument_gauges()
        data = reader.get_metrics_data()
        scopes = [] if data is None else [sm for rm in data.resource_metrics for sm in rm.scope_metrics]
        print(sum(len(m.data.data_points) for sm in scopes for m in sm.metrics))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OTEL_PYTHON_METER_PROVIDER", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["late 1", "0"]

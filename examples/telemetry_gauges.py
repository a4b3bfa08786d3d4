"""OpenTelemetry state gauges: what a breaker, a bulkhead and a limiter hold now.

An upstream goes down: its breaker opens, the bulkhead in front of a slow
database fills, a rate limiter spends its tokens. The gauges read all of
that when the SDK collects (here: an in-memory reader, read twice), adding
nothing to any call. Swap in a ``PeriodicExportingMetricReader`` with an
OTLP exporter in a real service.

    python examples/telemetry_gauges.py
"""

from __future__ import annotations

import asyncio
import contextlib

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import resilient.otel
from resilient import Bulkhead, CircuitBreaker, CircuitOpenError, RateLimiter
from resilient.testing import FakeClock


def show(reader: InMemoryMetricReader, title: str) -> dict[tuple[str, str], float]:
    """Print the gauges; return them as {(instrument, policy name): value}."""
    print(f"\n{title}")
    seen: dict[tuple[str, str], float] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    name = str(point.attributes.get("resilience.policy.name"))
                    seen[(metric.name, name)] = point.value
                    print(f"  {metric.name:36} {name:10} {point.value:g}")
    return seen


async def main() -> None:
    """Drive three real policies and print the gauges before and during the outage."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    clock = FakeClock()
    breaker = CircuitBreaker("payments", consecutive_failures=3, break_duration=30.0, clock=clock)
    bulkhead = Bulkhead(2, max_queued=4, name="orders-db")
    limiter = RateLimiter(100, 1.0, burst=100, mode="reject", name="public-api", clock=clock)
    # Or no policies=: every named policy alive in the process, held weakly.
    resilient.otel.instrument_gauges(provider, policies=[breaker, bulkhead, limiter])

    before = show(reader, "all quiet:")
    assert before[(resilient.otel.CIRCUIT_STATE, "payments")] == 0

    @breaker
    async def charge() -> None:
        raise ConnectionError("payments upstream is down")

    for _ in range(4):
        with contextlib.suppress(ConnectionError, CircuitOpenError):
            await charge()

    release = asyncio.Event()

    @bulkhead
    async def query() -> None:
        await release.wait()

    queries = [asyncio.create_task(query()) for _ in range(5)]
    await asyncio.sleep(0.01)

    spend = limiter(lambda: None)
    for _ in range(60):
        spend()

    during = show(reader, "during the outage:")
    assert during[(resilient.otel.CIRCUIT_STATE, "payments")] == 1  # open
    assert during[(resilient.otel.BULKHEAD_RUNNING, "orders-db")] == 2
    assert during[(resilient.otel.BULKHEAD_QUEUED, "orders-db")] == 3
    assert round(during[(resilient.otel.RATELIMIT_TOKENS, "public-api")]) == 40

    clock.advance(30.0)  # the break is over: the next call would probe
    after = show(reader, "30 s later, no call yet:")
    assert after[(resilient.otel.CIRCUIT_STATE, "payments")] == 2  # half-open, effectively

    release.set()
    await asyncio.gather(*queries)
    provider.shutdown()


if __name__ == "__main__":
    asyncio.run(main())

"""OpenTelemetry: metrics and span events from a retrying, timing-out pipeline.

Runs a few calls to a flaky coroutine through ``Pipeline(Timeout, Retry)``
with the OpenTelemetry SDK wired to in-memory sinks (swap in
``ConsoleMetricExporter``/``ConsoleSpanExporter`` or an OTLP exporter in a
real service), then prints the instruments, their attributes and the span
events that ``resilient.otel`` produced.

    python examples/telemetry_otel.py
"""

from __future__ import annotations

import asyncio

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import resilient.otel
from resilient import Pipeline, Retry, Timeout, constant


async def main() -> None:
    """Instrument, make a few calls, print what OpenTelemetry received."""
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    resilient.otel.instrument(meter_provider=meter_provider, tracer_provider=tracer_provider)

    calls = 0

    async def fetch_quote(symbol: str) -> float:
        nonlocal calls
        calls += 1
        if calls % 3 == 1:  # one call in three fails: a retry absorbs it
            raise ConnectionError("upstream reset the connection")
        if symbol == "SLOW":
            await asyncio.sleep(1)
        return 42.0

    guarded = Pipeline(
        Timeout(0.05, name="quotes-total"),
        Retry(3, backoff=constant(0.01), name="quotes-retry"),
        name="quotes",
    )(fetch_quote)

    tracer = tracer_provider.get_tracer("example")
    for symbol in ["ACME", "INIT", "SLOW", "ACME"]:
        with tracer.start_as_current_span(f"GET /quote/{{symbol}} ({symbol})"):
            try:
                print(f"{symbol}: {await guarded(symbol)}")
            except TimeoutError as exc:
                print(f"{symbol}: {type(exc).__name__}: {exc}")

    print("\nmetrics:")
    data = reader.get_metrics_data()
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                print(f"  {metric.name} [{metric.unit}]")
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    shown = f"count={point.count} sum={point.sum:.4f}s" if value is None else f"value={value}"
                    attrs = ", ".join(f"{k}={v}" for k, v in sorted(point.attributes.items()))
                    print(f"    {shown}  {attrs}")

    print("\nspan events:")
    for span in spans.get_finished_spans():
        for event in span.events:
            attrs = event.attributes or {}
            print(f"  {span.name}: {event.name} attempt={attrs.get('resilience.attempt.number', '-')}")

    resilient.otel.uninstrument()
    meter_provider.shutdown()
    tracer_provider.shutdown()


if __name__ == "__main__":
    asyncio.run(main())

"""Writing your own policy with public names only: latency percentiles per operation.

``LatencyRecorder`` records how long each call takes (successes and
failures alike) in a bounded reservoir per wrapped function, reports
p50/p95/p99 in ``status()`` (so the ASGI status endpoint shows it), and
emits a ``slow_call`` event when a call is slower than a threshold. It works
on async and sync functions, in pipelines, and with a ``FakeClock``.

Run: python examples/custom_policy.py
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Iterable
from typing import Any

from resilient import Pipeline, Policy, Retry, Severity, constant
from resilient.clock import Clock
from resilient.events import EventSite, Listener
from resilient.policy import AsyncFn, AsyncWrapped, SyncFn
from resilient.testing import FakeClock, recording
from resilient.validate import check_clock, check_int, check_seconds

SLOW_CALL = "slow_call"


class LatencyRecorder(Policy):
    """Record call latencies; ``status()`` gives percentiles; slow calls emit ``slow_call``."""

    policy_type = "latency_recorder"

    def __init__(
        self,
        *,
        slow: float = 1.0,
        keep: int = 1000,
        name: str | None = None,
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        super().__init__(name=name, listeners=listeners)
        self.slow = check_seconds(slow, "slow")
        self.keep = check_int(keep, "keep", minimum=1)
        self.clock = check_clock(clock)
        self.samples: dict[str, deque[float]] = {}

    def _record_into(self, site: EventSite) -> deque[float]:
        # One reservoir per operation, created at wrap time, never per call.
        return self.samples.setdefault(site.operation or "?", deque(maxlen=self.keep))

    def _observe(self, site: EventSite, samples: deque[float], seconds: float) -> None:
        samples.append(seconds)
        if seconds >= self.slow:
            self.emit(site, SLOW_CALL, Severity.WARNING, duration=seconds)

    def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        now = self.clock.now
        samples = self._record_into(site)
        observe = self._observe

        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = now()
            try:
                return await fn(*args, **kwargs)
            finally:
                observe(site, samples, now() - start)

        return timed

    def build_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        now = self.clock.now
        samples = self._record_into(site)
        observe = self._observe

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = now()
            try:
                return fn(*args, **kwargs)
            finally:
                observe(site, samples, now() - start)

        return timed

    def percentiles(self, operation: str) -> dict[str, float]:
        """p50, p95 and p99 (nearest rank) of the kept samples of ``operation``, in seconds."""
        ordered = sorted(self.samples.get(operation, ()))
        n = len(ordered)
        return {f"p{q}": ordered[max(0, math.ceil(q * n / 100) - 1)] for q in (50, 95, 99)} if n else {}

    def status(self) -> dict[str, Any]:
        """Percentiles per operation, for the status endpoint."""
        return {
            "type": self.policy_type,
            "name": self.name,
            "operations": {op: self.percentiles(op) for op in self.samples},
        }


async def main() -> None:
    clock = FakeClock()
    recorder = LatencyRecorder(slow=0.5, name="catalog-latency", clock=clock)
    latencies = iter([0.01] * 90 + [0.2] * 8 + [0.9] * 2)

    @recorder
    async def fetch(item: int) -> str:
        clock.advance(next(latencies))  # stands for the time the call takes
        return f"item {item}"

    with recording() as events:
        for i in range(100):
            await fetch(i)
    stats = recorder.percentiles(fetch.__qualname__)
    slow_calls = len(events.of(SLOW_CALL))
    print(f"p50={stats['p50']:.2f}s p95={stats['p95']:.2f}s p99={stats['p99']:.2f}s, slow calls: {slow_calls}")
    assert {k: round(v, 6) for k, v in stats.items()} == {"p50": 0.01, "p95": 0.2, "p99": 0.9}
    assert len(events.of(SLOW_CALL)) == 2

    # Sync too, and inside a pipeline (outermost: it times the retries as one call).
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        clock.advance(0.1)
        if calls < 3:
            raise ConnectionError
        return "ok"

    guarded = Pipeline(recorder, Retry(3, backoff=constant(0), on=ConnectionError, clock=clock), name="p")(flaky)
    assert guarded() == "ok"
    (whole,) = recorder.samples[flaky.__qualname__]
    print(f"a call with {calls} attempts took {whole:.1f}s in all")
    assert abs(whole - 0.3) < 1e-9
    print(recorder.status()["name"], "ok")


asyncio.run(main())

"""AdaptiveConcurrency's latency-driven default (Gradient2), ``algorithm=``, ``LoadShedding(adaptive=True)``."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from resilient import AdaptiveConcurrency, Bulkhead, BulkheadFullError, Pipeline, Retry, Timeout
from resilient.asgi import LoadShedding
from resilient.concurrency import AIMD, Gradient2, LimitAlgorithm
from resilient.testing import FakeClock
from tests.asgi_helpers import call, http_scope, status_of

# -- the algorithm alone: windows, baseline, gradient ---------------------------


def _window(g: Gradient2, limit: float, now: float, rtt: float, inflight: int) -> float:
    """One call that closes a window (min_samples=1, the window's time has come)."""
    return g.update(limit, now, rtt, inflight, False)


def test_steady_latency_grows_the_limit_by_smoothing_times_queue_size() -> None:
    g = Gradient2(min_samples=1, window=1.0)
    assert g.baseline is None
    limit = _window(g, 10.0, 0.0, 0.1, 10)
    assert limit == pytest.approx(10.8)  # 10 + 0.2 * (10 * 1.0 + 4 - 10)
    assert g.baseline == pytest.approx(0.1)
    assert g.update(limit, 0.5, 0.1, 10, False) == limit  # inside the window: only counted
    assert _window(g, limit, 1.0, 0.1, 10) == pytest.approx(11.6)


def test_latency_above_the_baseline_pulls_the_limit_down_by_at_most_half() -> None:
    g = Gradient2(min_samples=1, window=1.0)
    _window(g, 10.0, 0.0, 0.1, 10)
    # Four times the baseline: the gradient is clamped to 0.5.
    assert _window(g, 10.0, 1.0, 0.4, 10) == pytest.approx(10 + 0.2 * (5 + 4 - 10))
    assert g.latency == pytest.approx(0.4)


def test_a_mostly_idle_limit_is_left_alone() -> None:
    g = Gradient2(min_samples=1, window=1.0)
    assert _window(g, 10.0, 0.0, 0.1, 4) == 10.0  # fewer than half the slots in use
    assert g.baseline == pytest.approx(0.1)  # the baseline still learns


def test_the_baseline_falls_fast_and_rises_slowly() -> None:
    g = Gradient2(min_samples=1, window=1.0, baseline_window=600.0)
    _window(g, 10.0, 0.0, 0.2, 10)
    _window(g, 10.0, 1.0, 0.1, 10)
    assert g.baseline == pytest.approx(0.2 + (2 / 11) * (0.1 - 0.2))
    before = g.baseline
    assert before is not None
    _window(g, 10.0, 2.0, 1.0, 10)
    assert g.baseline == pytest.approx(before + (2 / 601) * (1.0 - before))


def test_a_window_needs_its_time_and_its_samples() -> None:
    g = Gradient2(min_samples=3, window=1.0)
    assert g.update(10.0, 5.0, 0.1, 10, False) == 10.0
    assert g.update(10.0, 5.0, 0.1, 10, False) == 10.0
    assert g.update(10.0, 5.0, 0.1, 10, False) == pytest.approx(10.8)  # third sample closes it
    for now in (5.5, 5.6, 5.9):  # three samples, but the window lasts until 6.0
        assert g.update(10.8, now, 0.1, 10, False) == 10.8
    assert g.update(10.8, 6.0, 0.1, 10, False) == pytest.approx(11.6)


def test_failures_do_not_move_the_gradient_limit() -> None:
    g = Gradient2(min_samples=1, window=1.0)
    assert g.update(10.0, 0.0, 0.1, 10, True) == pytest.approx(10.8)


def test_queue_size_may_be_a_function_of_the_limit() -> None:
    g = Gradient2(min_samples=1, queue_size=math.sqrt)
    assert _window(g, 16.0, 0.0, 0.1, 16) == pytest.approx(16 + 0.2 * 4)
    assert "sqrt" in repr(g)


@pytest.mark.parametrize(
    ("kwargs", "param", "error"),
    [
        ({"smoothing": 0}, "smoothing", ValueError),
        ({"smoothing": 1.5}, "smoothing", ValueError),
        ({"queue_size": -1}, "queue_size", ValueError),
        ({"queue_size": "4"}, "queue_size", TypeError),
        ({"window": 0}, "window", ValueError),
        ({"min_samples": 0}, "min_samples", ValueError),
        ({"baseline_window": 0.05}, "baseline_window", ValueError),
        ({"window": 2.0, "baseline_window": 1.0}, "baseline_window", ValueError),
    ],
)
def test_gradient_bad_config(kwargs: dict[str, Any], param: str, error: type[Exception]) -> None:
    with pytest.raises(error, match=param):
        Gradient2(**kwargs)


# -- AdaptiveConcurrency(algorithm=...) ------------------------------------------


def test_the_gradient_is_the_default_and_aimd_options_still_mean_aimd() -> None:
    assert isinstance(AdaptiveConcurrency().algorithm, Gradient2)
    assert isinstance(AdaptiveConcurrency(algorithm="gradient2").algorithm, Gradient2)
    aimd = AdaptiveConcurrency(latency_threshold=0.5)  # an AIMD option: AIMD, as before
    assert isinstance(aimd.algorithm, AIMD)
    assert (aimd.backoff_ratio, aimd.latency_threshold) == (0.9, 0.5)
    assert AdaptiveConcurrency(algorithm="aimd").backoff_ratio == 0.9
    assert AdaptiveConcurrency().backoff_ratio is None
    assert AdaptiveConcurrency().status()["algorithm"] == "Gradient2"
    assert "Gradient2(" in repr(AdaptiveConcurrency())


def test_an_algorithm_object_is_used_as_given() -> None:
    class Halve:
        def update(self, limit: float, now: float, rtt: float, inflight: int, dropped: bool) -> float:
            return limit / 2

    algo = Halve()
    assert isinstance(algo, LimitAlgorithm)
    ac = AdaptiveConcurrency(algorithm=algo, initial_limit=8, min_limit=3)
    assert ac.algorithm is algo
    ac.run_sync(lambda: None)
    assert ac.limit == 4
    ac.run_sync(lambda: None)
    assert ac.limit == 3  # never below min_limit


def test_a_nan_limit_reads_min_limit() -> None:
    class Broken:
        def update(self, limit: float, now: float, rtt: float, inflight: int, dropped: bool) -> float:
            return math.nan

    ac = AdaptiveConcurrency(algorithm=Broken(), initial_limit=8, min_limit=2)
    ac.run_sync(lambda: None)
    assert ac.limit == 2


@pytest.mark.parametrize(
    ("kwargs", "param", "error"),
    [
        ({"algorithm": "vegas"}, "algorithm", ValueError),
        ({"algorithm": 3}, "algorithm", TypeError),
        ({"algorithm": Gradient2}, "algorithm", TypeError),  # the class, not an instance
        ({"algorithm": "gradient2", "backoff_ratio": 0.5}, "backoff_ratio", TypeError),
        ({"algorithm": Gradient2(), "latency_threshold": 1.0}, "latency_threshold", TypeError),
    ],
)
def test_algorithm_bad_config(kwargs: dict[str, Any], param: str, error: type[Exception]) -> None:
    with pytest.raises(error, match=param):
        AdaptiveConcurrency(**kwargs)


async def test_the_limit_follows_latency_on_a_fake_clock() -> None:
    clock = FakeClock()
    ac = AdaptiveConcurrency(
        initial_limit=10, max_limit=40, clock=clock, algorithm=Gradient2(min_samples=1, window=1.0)
    )

    async def wave(latency: float) -> None:
        """As many calls as the limit allows, all taking ``latency`` seconds."""
        slots = [ac.acquire() for _ in range(ac.limit)]
        for slot in slots:
            await slot.__aenter__()
        with pytest.raises(BulkheadFullError):
            await ac.run(asyncio.sleep, 0)
        clock.advance(latency)
        for slot in slots:
            await slot.__aexit__(None, None, None)

    for _ in range(8):
        await wave(1.0)  # latency at the baseline: the limit probes upward
    grown = ac.limit
    assert grown >= 14
    for _ in range(8):
        await wave(4.0)  # queueing: latency far above the baseline, the limit backs off
    assert ac.limit < grown
    assert ac.running == 0


# -- LoadShedding(adaptive=True) --------------------------------------------------


async def test_load_shedding_adaptive_creates_a_gradient_limiter() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = LoadShedding(app, adaptive=True, max_concurrent=50, max_queued=5, name="edge")
    limiter = mw.limiter
    assert isinstance(limiter, AdaptiveConcurrency)
    assert isinstance(limiter, Bulkhead)
    assert isinstance(limiter.algorithm, Gradient2)
    assert (limiter.limit, limiter.max_limit, limiter.max_queued) == (20, 50, 5)
    assert status_of(await call(mw, http_scope())) == 200
    assert limiter.running == 0
    assert LoadShedding(app, adaptive=True).limiter.max_limit == 1000  # type: ignore[attr-defined]
    assert LoadShedding(app, adaptive=True, max_concurrent=8).limiter.limit == 8  # type: ignore[attr-defined]


def test_load_shedding_adaptive_bad_config() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None: ...

    with pytest.raises(TypeError, match="adaptive"):
        LoadShedding(app, adaptive=True, limiter=Bulkhead(2))
    with pytest.raises(TypeError, match="adaptive"):
        LoadShedding(app, max_concurrent=2, adaptive="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_concurrent"):
        LoadShedding(app)


async def test_in_a_client_pipeline() -> None:
    clock = FakeClock(auto_advance=True)
    limiter = AdaptiveConcurrency(clock=clock, initial_limit=4)
    calls: list[int] = []

    async def fetch(i: int) -> int:
        await clock.asleep(0.01)
        calls.append(i)
        return i

    pipeline = Pipeline(Retry(2, clock=clock), limiter, Timeout(1.0, clock=clock))
    assert await asyncio.gather(*(pipeline.run(fetch, i) for i in range(4))) == [0, 1, 2, 3]
    assert limiter.running == 0
    assert sorted(calls) == [0, 1, 2, 3]


def test_a_window_of_calls_that_took_no_time_teaches_nothing() -> None:
    g = Gradient2(min_samples=1, window=1.0)
    assert _window(g, 10.0, 0.0, 0.0, 10) == 10.0  # a clock that did not move
    assert g.baseline is None
    _window(g, 10.0, 1.0, 0.1, 10)
    assert _window(g, 10.0, 2.0, 0.0, 10) == 10.0
    assert g.baseline == pytest.approx(0.1)


def test_threads_share_the_gradient_limit_without_losing_slots() -> None:
    import threading
    import time

    limiter = AdaptiveConcurrency(initial_limit=4, max_limit=16, max_queued=64, algorithm=Gradient2(min_samples=2))
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                limiter.run_sync(time.sleep, 0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert (limiter.running, limiter.queued) == (0, 0)
    assert 1 <= limiter.limit <= 16

"""Chaos injectors: rates, enabled flags, determinism."""

from __future__ import annotations

import random

import pytest

from resilient import Fault, Latency, Pipeline, ResultInjection, Retry, constant
from resilient.testing import FakeClock


async def ok() -> str:
    return "ok"


async def test_fault_rate_is_respected_with_seeded_random() -> None:
    fault = Fault(0.3, ConnectionError, random=random.Random(1).random)
    guarded = fault(ok)
    failures: list[ConnectionError] = []
    for _ in range(1000):
        try:
            await guarded()
        except ConnectionError as exc:
            failures.append(exc)
    assert 250 < len(failures) < 350
    assert all("injected" in exc.__notes__[0] for exc in failures)
    assert fault.injected == len(failures)


def test_fault_sync_and_disabled() -> None:
    flag = {"on": False}
    fault = Fault(1.0, ValueError("boom"), enabled=lambda: flag["on"])
    guarded = fault(lambda: "ok")
    assert guarded() == "ok"
    flag["on"] = True
    with pytest.raises(ValueError, match="boom"):
        guarded()


async def test_retry_absorbs_injected_faults() -> None:
    clock = FakeClock(auto_advance=True)
    rnd = iter([0.0, 0.0, 0.9])
    guarded = Pipeline(Retry(3, backoff=constant(0), clock=clock), Fault(0.5, random=lambda: next(rnd)))(ok)
    assert await guarded() == "ok"


async def test_latency_uses_the_clock() -> None:
    clock = FakeClock(auto_advance=True)
    guarded = Latency(1.0, 2.5, clock=clock)(ok)
    assert await guarded() == "ok"
    assert clock.sleeps == [2.5]
    sync_guarded = Latency(1.0, 1.0, clock=clock)(lambda: 1)
    assert sync_guarded() == 1
    assert clock.now() == 3.5


async def test_result_injection() -> None:
    guarded = ResultInjection(1.0, 503)(ok)
    assert await guarded() == 503
    counter = iter(range(10))
    made = ResultInjection(1.0, lambda: next(counter), factory=True)(lambda: -1)
    assert made() == 0
    assert made() == 1
    assert ResultInjection(0.0, 503).status()["injected"] == 0


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_bad_rate(rate: float) -> None:
    with pytest.raises(ValueError, match="rate must be in"):
        Fault(rate)


def test_bad_config() -> None:
    with pytest.raises(TypeError, match="rate"):
        Fault("x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="enabled"):
        Fault(0.1, enabled="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="exception"):
        Fault(0.1, exception=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="delay"):
        Latency(0.1, -1)
    with pytest.raises(TypeError, match="factory"):
        ResultInjection(0.1, 3, factory=True)

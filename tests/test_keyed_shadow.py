"""Keyed(enforce=...): one shadow-mode switch for every key's policies."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import pytest

from resilient import (
    Bulkhead,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    Keyed,
    Pipeline,
    Retry,
)
from resilient.events import WOULD_REJECT
from resilient.testing import FakeClock, recording


def _keyed(enforce: Any, own: Any = True) -> Keyed:
    clock = FakeClock()

    def factory(key: Hashable) -> Pipeline:
        breaker = CircuitBreaker(consecutive_failures=1, break_duration=60, clock=clock, enforce=own, name=str(key))
        return Pipeline(Retry(1), breaker)

    return Keyed(factory, key=lambda k: k, enforce=enforce, clock=clock)


def _fail(keyed: Keyed, key: str) -> None:
    @keyed
    def call(k: str) -> None:
        raise OSError("down")

    with pytest.raises(OSError):
        call(key)


def test_enforce_is_validated() -> None:
    with pytest.raises(TypeError, match="enforce"):
        Keyed(lambda k: CircuitBreaker(), key=lambda k: k, enforce="no")  # type: ignore[arg-type]


def test_shadow_keys_decide_as_usual_and_let_the_call_through() -> None:
    keyed = _keyed(enforce=False)
    _fail(keyed, "a")
    policy = keyed.get("a")
    assert isinstance(policy, Pipeline)
    breaker = policy[1]
    assert isinstance(breaker, CircuitBreaker)
    assert breaker.state is CircuitState.OPEN  # it decided: the circuit opened

    @keyed
    def ok(k: str) -> str:
        return "ok"

    with recording() as seen:
        assert ok("a") == "ok"  # an enforcing breaker would have raised CircuitOpenError
    assert [e.name for e in seen.events] == [WOULD_REJECT]
    assert seen.events[0].exception == "resilient.errors.CircuitOpenError"
    assert keyed.would_reject == 1
    status = keyed.status()
    assert (status["enforcing"], status["would_reject"]) == (False, 1)


def test_enforcing_keys_reject() -> None:
    keyed = _keyed(enforce=True)
    _fail(keyed, "a")

    @keyed
    def ok(k: str) -> str:
        return "ok"

    with pytest.raises(CircuitOpenError):
        ok("a")
    assert keyed.status()["would_reject"] == 0


def test_a_flag_switches_every_key_at_once() -> None:
    flag = {"on": False}
    keyed = _keyed(enforce=lambda: flag["on"])

    @keyed
    def ok(k: str) -> str:
        return "ok"

    for key in ("a", "b"):
        _fail(keyed, key)
        assert ok(key) == "ok"
    flag["on"] = True
    for key in ("a", "b"):
        with pytest.raises(CircuitOpenError):
            ok(key)
    assert keyed.enforcing


@pytest.mark.parametrize(("keyed_switch", "own", "enforces"), [(True, False, False), (False, True, False)])
def test_both_switches_must_say_enforce(keyed_switch: bool, own: bool, enforces: bool) -> None:
    keyed = _keyed(enforce=keyed_switch, own=own)
    _fail(keyed, "a")

    @keyed
    def ok(k: str) -> str:
        return "ok"

    assert ok("a") == "ok"
    assert keyed.would_reject == 1


def test_combined_callables_read_both() -> None:
    flags = {"keyed": True, "own": True}
    keyed = _keyed(enforce=lambda: flags["keyed"], own=lambda: flags["own"])
    _fail(keyed, "a")

    @keyed
    def ok(k: str) -> str:
        return "ok"

    with pytest.raises(CircuitOpenError):
        ok("a")
    flags["own"] = False
    assert ok("a") == "ok"
    flags["own"], flags["keyed"] = True, False
    assert ok("a") == "ok"


async def test_shadow_bulkhead_per_key_async() -> None:
    keyed = Keyed(lambda k: Bulkhead(1, max_queued=0), key=lambda k: k, enforce=False)
    import asyncio

    gate = asyncio.Event()

    @keyed
    async def hold(k: str) -> str:
        await gate.wait()
        return "done"

    first = asyncio.ensure_future(hold("t"))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(hold("t"))  # no free slot: shadow mode runs it anyway
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(first, second) == ["done", "done"]
    assert keyed.would_reject == 1

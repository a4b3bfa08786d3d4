"""Chaos injectors: rates, enabled flags, determinism."""

from __future__ import annotations

import random
import traceback
from typing import Any

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
    with pytest.raises(ValueError, match=r"rate must be a finite number in \[0, 1\]"):
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


# -- an exception instance is never mutated (issue 14, item 18) --------------


class _NeedsKeyword(Exception):
    """An exception whose __init__ cannot be called again from its args."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code


def _raised(call: Any, times: int) -> list[BaseException]:
    out: list[BaseException] = []
    for _ in range(times):
        try:
            call()
        except Exception as exc:
            out.append(exc)
    return out


@pytest.mark.parametrize(
    "template",
    [ConnectionError("down"), _NeedsKeyword("teapot", code=418), OSError(111, "Connection refused")],
    ids=["builtin", "custom-init", "oserror"],
)
def test_an_exception_instance_is_raised_as_a_fresh_copy_each_time(template: Exception) -> None:
    template.add_note("set by the test")
    fault = Fault(1.0, exception=template, name="boom")
    raised = _raised(fault(lambda: None), 500)
    assert len({id(e) for e in raised}) == 500
    assert template not in raised
    # The shared instance is untouched: no notes piled up, no traceback grown.
    assert template.__notes__ == ["set by the test"]
    assert template.__traceback__ is None
    last = raised[-1]
    assert type(last) is type(template)
    assert last.args == template.args
    assert vars(last) == {**vars(template), "__notes__": ["set by the test", "resilient: injected by Fault 'boom'"]}
    assert len(traceback.extract_tb(last.__traceback__)) < 5


async def test_an_exception_instance_is_raised_fresh_on_the_async_path_too() -> None:
    template = ConnectionError("down")
    guarded = Fault(1.0, exception=template)(ok)
    raised: list[BaseException] = []
    for _ in range(200):
        with pytest.raises(ConnectionError) as info:
            await guarded()
        raised.append(info.value)
    assert all(e is not template for e in raised)
    assert not hasattr(template, "__notes__")
    assert raised[-1].__notes__ == ["resilient: injected by Fault"]


def test_an_exception_that_cannot_be_copied_is_reset_before_each_raise() -> None:
    class Stubborn(Exception):
        made = False

        def __new__(cls, *args: Any) -> Stubborn:
            if cls.made:
                raise TypeError("no copies")
            cls.made = True
            return super().__new__(cls, *args)

        def __reduce__(self) -> Any:
            raise TypeError("no copies")

    template = Stubborn("made once")
    raised = _raised(Fault(1.0, exception=template)(lambda: None), 300)
    # The documented equivalent: the same instance, but each raise starts afresh.
    assert all(e is template for e in raised)
    assert template.__notes__ == ["resilient: injected by Fault"]
    assert len(traceback.extract_tb(template.__traceback__)) < 5

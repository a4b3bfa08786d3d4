"""FailOpen, the switch every Redis store uses: no user code (a custom clock) under its lock."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("redis")

from resilient.redis._common import FailOpen
from resilient.testing import FakeClock


class NestingClock(FakeClock):
    """A custom clock whose first now() records a failure on the switch itself (it takes the switch's lock)."""

    def __init__(self) -> None:
        super().__init__()
        self.switch: FailOpen | None = None

    def now(self) -> float:
        switch, self.switch = self.switch, None
        if switch is not None:
            switch.failed(ConnectionError("nested"))
        return super().now()


def test_a_custom_clock_is_never_read_under_the_switchs_lock() -> None:
    clock = NestingClock()
    switch = FailOpen(kind="rate_limiter", name="x", where="127.0.0.1:1", interval=1.0, clock=clock, listeners=())
    clock.switch = switch
    thread = threading.Thread(target=switch.failed, args=(ConnectionError("down"),), daemon=True)
    thread.start()
    thread.join(5)  # bounded: a deadlock fails the test instead of hanging it
    assert not thread.is_alive(), "FailOpen.failed() read the clock while holding its lock"
    assert not switch.healthy

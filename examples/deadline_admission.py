"""A policy of your own that rejects, with shadow mode: don't start work the deadline cannot fit.

``NeedsTime(seconds)`` refuses a call (``RejectedError``) when the current
deadline leaves less than the call needs: better to fail at once than to
start work that a timeout will cut off halfway. It is written with public
names only: ``limit_for()`` says what the deadline leaves, ``ShadowMode``
gives it ``enforce=`` (shadow mode reports ``would_reject`` and lets the
call through) and ``record_would_reject()`` counts and reports those calls.

Run: python examples/deadline_admission.py
"""

from __future__ import annotations

import asyncio
from typing import Any

from resilient import Policy, RejectedError, deadline
from resilient.deadline import limit_for
from resilient.events import EXTRA_REASON, EventSite
from resilient.policy import AsyncFn, AsyncWrapped, ShadowMode
from resilient.testing import FakeClock, recording
from resilient.validate import check_seconds


class NeedsTime(ShadowMode, Policy):
    """Reject a call when the current deadline leaves less than ``seconds``."""

    policy_type = "needs_time"

    def __init__(self, seconds: float, *, name: str | None = None, enforce: bool = True) -> None:
        super().__init__(name=name)
        self.set_enforce(enforce)
        self.seconds = check_seconds(seconds, "seconds")

    def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        seconds = self.seconds

        async def call(*args: Any, **kwargs: Any) -> Any:
            left, by_deadline = limit_for(seconds)  # (seconds, False) while the deadline leaves enough
            if by_deadline:
                msg = f"{self.label()}: the deadline leaves {left:.3g} of {seconds:g} s"
                err = RejectedError(msg, policy=self.name)
                if not self.shadowed():
                    raise err
                self.record_would_reject(site, err, {EXTRA_REASON: "deadline_too_short"})
            return await fn(*args, **kwargs)

        return call


async def main() -> None:
    clock = FakeClock()

    async def report() -> str:
        return "report built"

    guarded = NeedsTime(2.0, name="report")(report)
    with deadline(5.0, clock=clock):
        print("5 s left:", await guarded())
        clock.advance(4.0)
        try:
            await guarded()
        except RejectedError as exc:
            print("1 s left:", exc)

    shadow = NeedsTime(2.0, name="report-shadow", enforce=False)
    with recording() as events, deadline(1.0, clock=clock):
        print("shadow mode, 1 s left:", await shadow(report)())
    assert shadow.would_reject == 1
    print("reported:", events.names())


if __name__ == "__main__":
    asyncio.run(main())

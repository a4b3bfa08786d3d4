"""Hedging: when a call is slow, start another one and take the first good answer.

A tail-latency weapon (Dean and Barroso, "The Tail at Scale"; Polly's
hedging strategy). ``Hedge(delay=0.05)`` starts the call; if no good
outcome has arrived after 50 ms it starts a second, identical call, and so
on up to ``max_hedged`` extra calls. The first good outcome wins and the
other calls are cancelled. A call that fails (with an exception matched by
``on`` or a result flagged by ``on_result``) starts the next hedge at once
instead of waiting for the delay.

Only hedge idempotent operations: every hedge is a real extra call. The
httpx transport hedges only idempotent requests.

Hedging needs concurrent calls, so it is async only, and each call runs in
its own task: the success path costs a task creation (a few microseconds),
unlike the other policies.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable
from typing import Any

from resilient.clock import Clock
from resilient.events import HEDGE_FIRED, EventSite, Listener, Severity
from resilient.policy import (
    AsyncFn,
    AsyncWrapped,
    OnArg,
    Outcome,
    Policy,
    SyncFn,
    exception_predicate,
    result_predicate,
)
from resilient.validate import check_clock, check_int, check_seconds

__all__ = ["Hedge"]


def _complete(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _consume(task: asyncio.Future[Any]) -> None:
    # A loser may still finish with an exception after we stopped caring:
    # retrieve it so asyncio does not log "exception was never retrieved".
    if not task.cancelled():
        task.exception()


class Hedge(Policy):
    """Start up to ``max_hedged`` extra calls when the first is slow; first good outcome wins.

    Args:
        delay: seconds to wait for a good outcome before starting the next
            call (> 0). A failed call starts the next one at once.
        max_hedged: extra calls allowed (>= 1).
        on: exceptions that make an outcome bad (type, tuple or predicate).
        on_result: predicate flagging bad results.
        name: shown in events and status.
        clock: the clock the hedging delay is measured on (tests pass a
            ``FakeClock``).
        listeners: event listeners for this policy only.

    When every call fails, the last outcome is returned (a result) or
    re-raised (an exception) with a note. An exception ``on`` does not match
    propagates at once, and the other calls are cancelled.
    """

    policy_type = "hedge"

    def __init__(
        self,
        delay: float,
        *,
        max_hedged: int = 1,
        on: OnArg | None = Exception,
        on_result: Callable[[Any], bool] | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        super().__init__(name=name, listeners=listeners)
        self.clock: Clock = check_clock(clock)
        self.delay = check_seconds(delay, "delay")
        self.max_hedged = check_int(max_hedged, "max_hedged", minimum=1)
        self._on = exception_predicate(on)
        self._on_result = result_predicate(on_result)

    def build_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        raise TypeError(f"{self.label()} can only wrap async functions: hedged calls must run concurrently")

    def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        on = self._on
        on_result = self._on_result
        delay = self.delay
        max_hedged = self.max_hedged
        clock = self.clock

        async def hedge_call(*args: Any, **kwargs: Any) -> Any:
            loop = asyncio.get_running_loop()
            tasks: set[asyncio.Future[Any]] = {asyncio.ensure_future(fn(*args, **kwargs), loop=loop)}
            hedges_left = max_hedged
            started = 1
            last: Outcome[Any] | None = None
            try:
                while True:
                    if hedges_left > 0:
                        # The hedging delay, on the policy's clock: a future
                        # that its timer completes.
                        tick: asyncio.Future[None] = loop.create_future()
                        handle = clock.call_at(clock.now() + delay, functools.partial(_complete, tick))
                        try:
                            done, _ = await asyncio.wait({*tasks, tick}, return_when=asyncio.FIRST_COMPLETED)
                        finally:
                            handle.cancel()
                            tick.cancel()
                        done.discard(tick)
                    else:
                        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    launch_now = not done
                    for task in done:
                        tasks.discard(task)
                        exc = task.exception()
                        if exc is not None:
                            if not isinstance(exc, Exception) or not on(exc):
                                raise exc
                            last = Outcome(exception=exc)
                            launch_now = True
                            continue
                        result = task.result()
                        if on_result is not None and on_result(result):
                            last = Outcome(result=result)
                            launch_now = True
                            continue
                        return result
                    if launch_now and hedges_left > 0:
                        hedges_left -= 1
                        started += 1
                        self.emit(site, HEDGE_FIRED, Severity.INFO, attempt=started)
                        tasks.add(asyncio.ensure_future(fn(*args, **kwargs), loop=loop))
                        continue
                    if not tasks:
                        assert last is not None
                        if last.exception is not None:
                            last.exception.add_note(f"resilient: {self.label()}: all {started} hedged calls failed")
                            raise last.exception
                        return last.result
            finally:
                for task in tasks:
                    task.cancel()
                    task.add_done_callback(_consume)

        return hedge_call

    def __repr__(self) -> str:
        return f"Hedge(delay={self.delay}, max_hedged={self.max_hedged}, name={self.name!r})"

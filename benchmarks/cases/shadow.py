"""Shadow mode (``enforce=False``) against enforcing: the decision costs the same.

Each pair makes the same decision on every call (an open breaker, an empty
bucket). Enforcing raises and the timed callable catches; shadow mode counts,
would emit ``would_reject`` (nobody listens here, as on a quiet production
path) and runs the call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.cases import Case, target
from resilient import CircuitBreaker, RateLimiter, ResilienceError


def _open_breaker(enforce: bool) -> Callable[[], Any]:
    breaker = CircuitBreaker(consecutive_failures=5, break_duration=3600, enforce=enforce)
    breaker.trip()
    return _catching(breaker(target))


def _empty_bucket(enforce: bool) -> Callable[[], Any]:
    # 1 per hour, burst 1: the first call takes the token, every later one is refused.
    return _catching(RateLimiter(1, per=3600, mode="reject", enforce=enforce)(target))


def _catching(guarded: Callable[[], Any]) -> Callable[[], Any]:
    async def call() -> None:
        try:  # noqa: SIM105 - suppress() would add its own cost to the timing
            await guarded()
        except ResilienceError:
            pass

    return call


CASES = [
    Case("CircuitBreaker open: reject + catch (enforcing)", "shadow", lambda: _open_breaker(True), ours=True),
    Case("CircuitBreaker open, enforce=False: call through", "shadow", lambda: _open_breaker(False), ours=True),
    Case("RateLimiter empty: reject + catch (enforcing)", "shadow", lambda: _empty_bucket(True), ours=True),
    Case("RateLimiter empty, enforce=False: call through", "shadow", lambda: _empty_bucket(False), ours=True),
]

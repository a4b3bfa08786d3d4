"""The rate limiter's sync waiting steps are its async ones without ``await``.

A call the fast path refused waits its turn (``_await_turn`` / ``_wait_turn``:
the bound, the reserved turn, the sleep, the turn given back when the sleep
is cancelled, the refusal) and ``acquire()`` enters through
``_acquire_async`` / ``_acquire_sync``. Both twins are hand-written; as for
the breaker's and the bulkhead's (tests/test_breaker_shells.py), the async
text is turned into the sync one and the syntax trees are compared, so that
a fix made to one twin and not the other fails here. The async store steps
(``_atake``, ``_try_async``, ``_arefund``) are not twins: over a store with no
I/O they call the sync step itself.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from resilient.ratelimit import KeyedRateLimiter, RateLimiter
from tests.shells_helpers import POLICY_UNASYNC, unasync
from tests.shells_helpers import syntax_tree as _tree

UNASYNC = [
    *POLICY_UNASYNC,
    ("def _await_turn(", "def _wait_turn("),
    ("self._await_turn(", "self._wait_turn("),
    ("def _acquire_async(", "def _acquire_sync("),
    ("self._acquire_async(", "self._acquire_sync("),
    ("self._atake(", "self._take("),
    ("self._arefund(", "self._refund("),
    ("self._need_async()", "self._need_sync()"),
    ("self.clock.asleep(", "self.clock.sleep("),
    ("def acquire(", "def acquire_sync("),
]

PAIRS: list[tuple[Callable[..., Any], Callable[..., Any]]] = [
    (RateLimiter._await_turn, RateLimiter._wait_turn),
    (RateLimiter._acquire_async, RateLimiter._acquire_sync),
    (RateLimiter.acquire, RateLimiter.acquire_sync),
    (KeyedRateLimiter.acquire, KeyedRateLimiter.acquire_sync),
]


@pytest.mark.parametrize(("async_twin", "sync_twin"), PAIRS, ids=lambda f: f.__qualname__)
def test_the_sync_twin_is_the_async_one_without_await(
    async_twin: Callable[..., Any], sync_twin: Callable[..., Any]
) -> None:
    assert _tree(unasync(inspect.getsource(async_twin), UNASYNC)) == _tree(inspect.getsource(sync_twin))


def test_the_check_would_see_a_drift() -> None:
    """The comparison is not vacuous: a one-token change in a twin is a different tree."""
    sync = inspect.getsource(RateLimiter._wait_turn)
    assert "if wait <= bound:" in sync
    drifted = sync.replace("if wait <= bound:", "if wait < bound:")
    assert _tree(unasync(inspect.getsource(RateLimiter._await_turn), UNASYNC)) != _tree(drifted)

"""The breaker's sync shells are its async shells without ``await``: checked, so that the twins cannot drift.

Every decision of :class:`~resilient.CircuitBreaker` lives in its engine
methods (``_gate``, ``_admitted``, ``_verdict``, ``_reject``,
``_transitioned``: no I/O, no awaits). What is left around them is moving
permits and outcomes: the admission and settling hand-offs (sync, and async
for a store that does I/O) and the three call shells (sync; async over a
local store; async over a store that does I/O). This test turns each async
text into its sync form (unasync-style replacements) and compares syntax
trees, docstrings left out: a fix made to one twin and not to the other
fails here. The same holds for the twins of :class:`RedisBreakerStore`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from resilient.breaker import CircuitBreaker, CircuitState
from resilient.events import EventSite
from tests.shells_helpers import syntax_tree as _tree

# Applied in order to the async source.
UNASYNC = [
    ("async def ", "def "),
    ("await ", ""),
    ("_aadmit", "_admit"),
    ("_asettle", "_settle"),
    ("self._astore.aacquire(", "self.store.acquire("),
    ("store = self._astore", "store = self.store"),
    (".arecord_", ".record_"),
    (".arelease(", ".release("),
]


def _unasync(source: str) -> str:
    for old, new in UNASYNC:
        source = source.replace(old, new)
    return source


class _AsyncStore:
    """Enough of an AsyncBreakerStore for the breaker to build its I/O shell (never called)."""

    def __init__(self) -> None:
        from resilient.breaker import InMemoryBreakerStore

        self._inner = InMemoryBreakerStore()

    @property
    def snapshot(self) -> Any:
        return self._inner.snapshot

    def bind(self, config: Any) -> None:
        self._inner.bind(config)

    def acquire(self, now: float) -> Any:
        return self._inner.acquire(now)

    def record_success(self, permit: Any, now: float | None = None) -> Any:
        return self._inner.record_success(permit, now)

    def record_failure(self, permit: Any, now: float | None = None) -> Any:
        return self._inner.record_failure(permit, now)

    def release(self, permit: Any) -> None:
        self._inner.release(permit)

    def transition(self, to: Any, now: float) -> Any:
        return self._inner.transition(to, now)

    def metrics(self, now: float) -> Any:
        return self._inner.metrics(now)

    async def aacquire(self, now: float) -> Any:
        return self._inner.acquire(now)

    async def arecord_success(self, permit: Any, now: float | None = None) -> Any:
        return self._inner.record_success(permit, now)

    async def arecord_failure(self, permit: Any, now: float | None = None) -> Any:
        return self._inner.record_failure(permit, now)

    async def arelease(self, permit: Any) -> None:
        self._inner.release(permit)


async def _afn() -> None:
    return None


def _fn() -> None:
    return None


def _shells() -> dict[str, Callable[..., Any]]:
    site = EventSite()
    local = CircuitBreaker("local")
    remote = CircuitBreaker("remote", store=_AsyncStore())  # type: ignore[arg-type]
    assert remote._async_store is not None
    return {
        "sync": local.build_sync(_fn, site),
        "async, local store": local.build_async(_afn, site),
        "async, store with I/O": remote.build_async(_afn, site),
    }


@pytest.mark.parametrize("kind", ["async, local store", "async, store with I/O"])
def test_the_sync_call_shell_is_the_async_one_without_await(kind: str) -> None:
    shells = _shells()
    assert _tree(_unasync(inspect.getsource(shells[kind]))) == _tree(inspect.getsource(shells["sync"]))


@pytest.mark.parametrize(("sync", "async_"), [("_admit", "_aadmit"), ("_settle", "_asettle")])
def test_the_sync_hand_offs_are_the_async_ones_without_await(sync: str, async_: str) -> None:
    source = _unasync(inspect.getsource(getattr(CircuitBreaker, async_)))
    assert _tree(source) == _tree(inspect.getsource(getattr(CircuitBreaker, sync)))


def test_the_engine_does_no_io_and_never_awaits() -> None:
    """The decisions are plain methods: no coroutine among them, and none touches a store's I/O method."""
    for name in ("_gate", "_admitted", "_verdict", "_reject", "_reject_open", "_shadowed", "_transitioned"):
        method = getattr(CircuitBreaker, name)
        assert not inspect.iscoroutinefunction(method), name
        source = inspect.getsource(method)
        for io in ("acquire(", "record_success(", "record_failure(", "release(", "await "):
            assert io not in source, (name, io)


def test_the_check_would_see_a_drift() -> None:
    """The comparison is not vacuous: a one-token change in a shell is a different tree."""
    sync = inspect.getsource(_shells()["sync"])
    assert "settle(permit, None, True, None, site)" in sync
    drifted = sync.replace("settle(permit, None, True, None, site)", "settle(permit, None, False, None, site)")
    assert _tree(sync) != _tree(drifted)


@pytest.mark.parametrize("kind", ["sync", "async, local store"])
def test_the_shells_fast_path_and_the_engine_agree_on_a_slow_call(kind: str) -> None:
    """A call lasting exactly ``slow_call_duration`` is slow for the shells' fast-path check and for the engine."""
    from resilient.testing import FakeClock

    clock = FakeClock()
    direct = CircuitBreaker(consecutive_failures=1, slow_call_duration=2.0, clock=clock)
    direct.record_success(direct.allow(), duration=2.0)
    assert direct.state is CircuitState.OPEN

    wrapped = CircuitBreaker(consecutive_failures=1, slow_call_duration=2.0, clock=clock)

    def slow() -> str:
        clock.advance(2.0)
        return "late"

    async def aslow() -> str:
        return slow()

    if kind == "sync":
        assert wrapped(slow)() == "late"
    else:
        assert asyncio.run(wrapped(aslow)()) == "late"
    assert wrapped.state is CircuitState.OPEN
    quick = CircuitBreaker(consecutive_failures=1, slow_call_duration=2.0, clock=clock)
    quick.record_success(quick.allow(), duration=1.5)
    assert quick.state is CircuitState.CLOSED


# RedisBreakerStore: every protocol method has an async twin; each sync one is the async one without ``await``.
REDIS_UNASYNC = [
    ("async def ", "def "),
    ("await ", ""),
    ("def aacquire", "def acquire"),
    ("def arecord_", "def record_"),
    ("def arelease", "def release"),
    ("def arefresh", "def refresh"),
    ("def _asend", "def _send"),
    ("def _aprobe", "def _probe"),
    ("self._asend(", "self._send("),
    ("self._arun(", "self._run("),
    ("self._local_async()", "self._local_sync()"),
]

REDIS_TWINS = [
    ("acquire", "aacquire"),
    ("record_success", "arecord_success"),
    ("record_failure", "arecord_failure"),
    ("release", "arelease"),
    ("refresh", "arefresh"),
    ("_send", "_asend"),
    ("_probe", "_aprobe"),
]


@pytest.mark.parametrize(("sync", "async_"), REDIS_TWINS)
def test_the_redis_store_sync_methods_are_the_async_ones_without_await(sync: str, async_: str) -> None:
    from resilient.redis import RedisBreakerStore

    source = inspect.getsource(getattr(RedisBreakerStore, async_))
    for old, new in REDIS_UNASYNC:
        source = source.replace(old, new)
    assert _tree(source) == _tree(inspect.getsource(getattr(RedisBreakerStore, sync)))


QUORUM_TWINS = [
    ("acquire", "aacquire"),
    ("record_success", "arecord_success"),
    ("record_failure", "arecord_failure"),
    ("refresh", "arefresh"),
]


@pytest.mark.parametrize(("sync", "async_"), QUORUM_TWINS)
def test_the_quorum_store_sync_methods_are_the_async_ones_without_await(sync: str, async_: str) -> None:
    from resilient.redis import RedisBreakerStore

    quorum = type(RedisBreakerStore("redis://127.0.0.1:1/0", quorum=2))
    assert quorum is not RedisBreakerStore
    source = inspect.getsource(getattr(quorum, async_))
    for old, new in [*REDIS_UNASYNC, ("self._acast(", "self._cast(")]:
        source = source.replace(old, new)
    assert _tree(source) == _tree(inspect.getsource(getattr(quorum, sync)))

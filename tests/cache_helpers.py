"""Fixtures shared by the StaleCache tests."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from resilient.cache import AsyncCacheStore, CacheEntry, CacheStore


async def settle(rounds: int = 10) -> None:
    """Let every ready task run a few steps (refresh tasks, waiters)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class Upstream:
    """A controllable async dependency: counts calls, can fail or block."""

    def __init__(self) -> None:
        self.calls = 0
        self.value: Any = "v1"
        self.error: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.cancelled = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self.started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.error is not None:
            raise self.error
        return self.value


@pytest.fixture
def no_task_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail when asyncio reports a task exception that nobody retrieved."""
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        yield
        gc.collect()
    bad = [r for r in caplog.records if r.name == "asyncio" and "never retrieved" in r.getMessage()]
    assert not bad, bad


class DictStore(CacheStore):
    """A minimal synchronous CacheStore (a plain dict)."""

    def __init__(self) -> None:
        self.data: dict[Any, CacheEntry] = {}

    def get(self, key: Any) -> CacheEntry | None:
        return self.data.get(key)

    def set(self, key: Any, entry: CacheEntry) -> None:
        self.data[key] = entry

    def delete(self, key: Any) -> None:
        self.data.pop(key, None)

    def clear(self) -> None:
        self.data.clear()


class AsyncDictStore(AsyncCacheStore):
    """A minimal AsyncCacheStore that yields to the loop on every operation."""

    def __init__(self) -> None:
        self.data: dict[Any, CacheEntry] = {}
        self.fail = False

    async def get(self, key: Any) -> CacheEntry | None:
        await asyncio.sleep(0)
        if self.fail:
            raise ConnectionError("store down")
        return self.data.get(key)

    async def set(self, key: Any, entry: CacheEntry) -> None:
        await asyncio.sleep(0)
        if self.fail:
            raise ConnectionError("store down")
        self.data[key] = entry

    async def delete(self, key: Any) -> None:
        await asyncio.sleep(0)
        self.data.pop(key, None)

    async def clear(self) -> None:
        await asyncio.sleep(0)
        self.data.clear()

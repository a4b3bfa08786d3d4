"""StaleCache fresh hits against cachetools (``cached`` + a lock), and aiocache/cashews if installed.

Every cache is primed by the first timed call, so the loop measures fresh
hits. cachetools' ``cached`` does not support coroutine functions, so the
async peer is the same TTLCache + lock written out by hand.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from typing import Any

import cachetools
import cachetools.keys

from benchmarks.cases import Case, sync_target, target
from resilient.cache import StaleCache


async def _target1(x: int) -> int:
    return x


def _sync_target1(x: int) -> int:
    return x


def _ours_arg() -> Callable[[], Any]:
    cached = StaleCache(60, stale_ttl=600)(_target1)
    return lambda: cached(42)


def _ours_arg_sync() -> Callable[[], Any]:
    cached = StaleCache(60, stale_ttl=600)(_sync_target1)
    return lambda: cached(42)


def _cachetools_async() -> Callable[[], Any]:
    cache: cachetools.TTLCache[Any, Any] = cachetools.TTLCache(1024, 60)
    lock = threading.Lock()
    hashkey = cachetools.keys.hashkey

    async def cached(x: int) -> int:
        k = hashkey(x)
        with lock:
            try:
                return cache[k]  # type: ignore[no-any-return]
            except KeyError:
                pass
        v = await _target1(x)
        with lock:
            cache[k] = v
        return v

    return lambda: cached(42)


def _cachetools_sync() -> Callable[[], Any]:
    cached = cachetools.cached(cachetools.TTLCache(1024, 60), lock=threading.Lock())(_sync_target1)
    return lambda: cached(42)


def _aiocache() -> Callable[[], Any]:
    import aiocache  # type: ignore[import-not-found]

    cached = aiocache.cached(ttl=60)(_target1)
    return lambda: cached(42)


def _cashews() -> Callable[[], Any]:
    from cashews import cache  # type: ignore[import-not-found]

    cache.setup("mem://")
    cached = cache(ttl="60s")(_target1)
    return lambda: cached(42)


CASES: list[Case] = [
    Case("StaleCache fresh hit, no args", "cache", lambda: StaleCache(60, stale_ttl=600)(target), ours=True),
    Case("StaleCache fresh hit, 1 arg", "cache", _ours_arg, ours=True),
    Case(
        "StaleCache fresh hit, no args (sync)",
        "cache",
        lambda: StaleCache(60, stale_ttl=600)(sync_target),
        kind="sync",
        ours=True,
    ),
    Case("StaleCache fresh hit, 1 arg (sync)", "cache", _ours_arg_sync, kind="sync", ours=True),
    Case("cachetools TTLCache + lock, 1 arg", "cache", _cachetools_async, note="hand-written async wrapper"),
    Case("cachetools cached(TTLCache) + lock, 1 arg (sync)", "cache", _cachetools_sync, kind="sync"),
]
if importlib.util.find_spec("aiocache") is not None:
    CASES.append(Case("aiocache cached, 1 arg", "cache", _aiocache))
if importlib.util.find_spec("cashews") is not None:
    CASES.append(Case("cashews mem://, 1 arg", "cache", _cashews))

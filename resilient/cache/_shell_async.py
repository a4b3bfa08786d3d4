"""The stale cache's fresh-hit path: one of three shells written as one text.

A fresh hit calls nothing but the store's ``get``; everything past it is
:class:`~resilient.cache.StaleCache`'s slow path. Only ``_shell_async.py``
(the coroutine wrapper over a store that does I/O) is written by hand;
``scripts/unasync.py`` generates from it ``_shell_local.py`` (the coroutine
wrapper over a local store, where only the slow path is a coroutine) and
``_shell_sync.py`` (the plain-function wrapper), and ``make lint`` fails when
one is out of date. Edit ``_shell_async.py``, then run the script.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resilient.cache.lookup import FRESH, _key_prefixes, _last
from resilient.events import EventSite
from resilient.policy import AsyncFn, AsyncWrapped

if TYPE_CHECKING:
    from resilient.cache.stale import StaleCache


def build_async(cache: StaleCache, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
    """The closure guarding each call of the async ``fn`` (see :meth:`~resilient.Policy.build_async`)."""
    ttl = cache.ttl
    keyfn = cache.key
    prefix, prefix_kw = _key_prefixes(site.operation)
    get = cache.store.get
    now = cache._now
    set_last = _last.set
    slow = cache._slow_async
    lookup_failed = cache._lookup_failed

    async def stale_cache_call(*args: Any, **kwargs: Any) -> Any:
        if keyfn is not None:
            k = keyfn(*args, **kwargs)
        elif kwargs:
            try:
                k = (prefix_kw, args, frozenset(kwargs.items()))
            except TypeError as exc:
                raise cache._unhashable(site.operation, exc) from exc
        else:
            k = prefix + args
        try:
            entry = await get(k)
        except Exception as exc:
            entry = lookup_failed(site.operation, k, exc)
        if entry is not None:
            age = now() - entry.stored_at
            if age < ttl:
                cache._hits += 1
                set_last((FRESH, age))
                return entry.value
        return await slow(fn, site, k, entry, args, kwargs)

    return stale_cache_call

"""StaleCache: fresh TTL, stale-while-revalidate, stale-if-error, single flight.

Each entry lives through three windows, measured from when it was stored::

    stored                 ttl                          stale_ttl
      |---- fresh ----------|---------- stale ---------------|---- gone
      served, no call        served at once + one refresh      never served
                             (or, on failure, served instead
                              of the error)

See :class:`StaleCache` and ``docs/policies/stale-cache.md``.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import math
import threading
from collections.abc import Callable, Hashable, Iterable
from types import MappingProxyType, TracebackType
from typing import Any, Final, Literal

from resilient.cache import _shell_async, _shell_local, _shell_sync
from resilient.cache.lookup import FRESH, MISS, STALE, _key_prefixes, _last
from resilient.cache.store import CacheEntry, MemoryStore, SharedCacheStore, store_kind
from resilient.clock import Clock
from resilient.deadline import clear_deadline
from resilient.errors import RejectedError, TimeoutError
from resilient.events import CACHE_REFRESH_FAILED, CACHE_STALE_HIT, EXTRA_REASON, EventSite, Listener, Severity
from resilient.policy import (
    AsyncFn,
    AsyncWrapped,
    OnArg,
    Policy,
    SyncFn,
    exception_predicate,
    operation_name,
    result_predicate,
)
from resilient.validate import check_clock, check_seconds

__all__ = ["CACHE_REFRESH_FAILED", "StaleCache"]

logger = logging.getLogger("resilient.cache")

#: Event emitted when a background refresh fails (the stale value stays).

# Failures that always count as failures, whatever ``on`` says: an inner
# breaker, bulkhead, limiter or timeout refusing the call is exactly when a
# stale value beats an error.
_ALWAYS_FAILURES = (RejectedError, TimeoutError)

# How a shared call ended: (kind, result or exception, traceback).
_OK: Final = 0
_FAILED: Final = 1  # an exception that counts as a failure: serve stale if possible
_BAD_RESULT: Final = 2  # a result flagged by on_result: serve stale if possible, else return it
_RAISED: Final = 3  # an exception that does not count: propagate it as is
_Outcome = tuple[int, Any, TracebackType | None]

# Shared, read-only: a stale hit must not allocate a dict per call.
_REVALIDATE: Final = MappingProxyType({EXTRA_REASON: "revalidate"})
_ON_ERROR: Final = MappingProxyType({EXTRA_REASON: "error"})
_BACKING_OFF: Final = MappingProxyType({EXTRA_REASON: "backoff"})
# The longest a rejection's retry_after holds back refreshes when stale_ttl
# is infinite (a retry_after may come from another process: never trusted blindly).
_MAX_BACKOFF: Final = 3600.0


class _Flight:
    """One call in flight for one key (async), shared by every caller of that key."""

    __slots__ = ("background", "task", "waiters")

    def __init__(self, background: bool) -> None:
        self.background = background
        self.waiters = 0
        self.task: asyncio.Task[_Outcome]


class _SyncFlight:
    """One call in flight for one key (threads)."""

    __slots__ = ("done", "outcome", "owner")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.outcome: _Outcome | None = None
        self.owner = threading.get_ident()


class StaleCache(Policy):
    """Serve recent results from a cache, stale ones when the call fails, one call per key at a time.

    Args:
        ttl: seconds an entry is **fresh**: returned without calling the
            function. Finite, > 0.
        stale_ttl: seconds (from when it was stored, so >= ``ttl``) an entry
            may still be served **stale**; older entries are never served.
            ``None`` (the default) means ``ttl``: no stale window, the policy
            is then a TTL cache with request coalescing. ``math.inf`` keeps
            entries until they are evicted.
        max_entries: the bound of the default in-memory LRU store (>= 1);
            not used when ``store`` is given (bound that store instead).
        key: ``key(*args, **kwargs) -> Hashable``. Default: the function's
            qualified name and its arguments (keyword order does not
            matter); arguments must then be hashable. A custom key is used as
            is, so a policy guarding several functions needs keys that say
            which function they belong to.
        on: exceptions that count as failures (type, tuple or predicate);
            default ``Exception``. :class:`~resilient.RejectedError`
            (open breaker, full bulkhead, rate limited) and
            :class:`resilient.TimeoutError` always count.
        on_result: predicate flagging results that are failures (never cached).
        store: a :class:`~resilient.cache.CacheStore` or
            :class:`~resilient.cache.AsyncCacheStore`; default a
            :class:`~resilient.cache.MemoryStore` of ``max_entries``.
        refresh: what happens to an async call that finds a stale entry.
            ``"background"`` (default, stale-while-revalidate): the stale
            value is returned at once and one refresh per key runs in a
            background task. ``"inline"``: the first such caller makes the
            call and gets the new value, or the stale one if the call fails
            (stale-if-error); callers arriving meanwhile get the stale value
            at once. Synchronous functions always refresh inline.
        name: shown in events and on the status endpoint.
        clock: time source (``FakeClock`` in tests). A store shared between
            processes needs a wall clock here.
        listeners: event listeners for this policy only.

    Failures are never cached. A failure with no entry younger than
    ``stale_ttl`` propagates unchanged (a flagged result is returned as is).
    Concurrent misses of one key make a single call whose outcome they all
    get; cancelling one caller does not cancel it for the others (the call
    is cancelled only when every caller waiting for it has gone).
    """

    policy_type = "stale_cache"

    def __init__(
        self,
        ttl: float,
        *,
        stale_ttl: float | None = None,
        max_entries: int = 1024,
        key: Callable[..., Hashable] | None = None,
        on: OnArg | None = Exception,
        on_result: Callable[[Any], bool] | None = None,
        store: Any = None,
        refresh: Literal["background", "inline"] = "background",
        name: str | None = None,
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        super().__init__(name=name, listeners=listeners)
        #: Seconds an entry is fresh.
        self.ttl = check_seconds(ttl, "ttl")
        if stale_ttl is None:
            stale = self.ttl
        else:
            stale = check_seconds(stale_ttl, "stale_ttl", allow_inf=True)
            if stale < self.ttl:
                raise ValueError(f"stale_ttl must be >= ttl ({self.ttl!r}), got {stale_ttl!r}")
        #: Seconds after which an entry is never served.
        self.stale_ttl = stale
        if key is not None and (isinstance(key, type) or not callable(key)):
            raise TypeError(f"key must be a callable (*args, **kwargs) -> hashable key, or None, got {key!r}")
        #: The key function, or ``None`` for the default key.
        self.key = key
        if refresh not in ("background", "inline"):
            raise ValueError(f"refresh must be 'background' or 'inline', got {refresh!r}")
        #: ``"background"`` or ``"inline"``.
        self.refresh = refresh
        self._clock: Clock = check_clock(clock)
        # Bound once: the system clock's now is time.monotonic itself, so the hit path calls it directly.
        self._now: Callable[[], float] = self._clock.now
        default_store = MemoryStore(max_entries)  # validates max_entries even when unused
        if store is None:
            store = default_store
        #: The store holding the entries.
        self.store = store
        # By type (CacheStore or AsyncCacheStore), once: the hit path only reads this bool.
        self._store_async = store_kind(store) == "async"
        # A store shared by processes: one call per key across them (its lease), entries it expires itself.
        self._shared: SharedCacheStore | None = store if isinstance(store, SharedCacheStore) else None
        if self._shared is not None:
            self._shared.bind(self.ttl, self.stale_ttl, self._clock)
        user_on = exception_predicate(on)
        self._failed: Callable[[Exception], bool] = lambda exc: isinstance(exc, _ALWAYS_FAILURES) or user_on(exc)
        self._on_result = result_predicate(on_result)
        self._flights: dict[Hashable, _Flight] = {}
        # key -> clock time before which no refresh starts: the retry_after of
        # the rejection (open breaker, rate limit) that the last one met.
        self._backoff: dict[Hashable, float] = {}
        self._max_backoffs = max_entries
        self._sync_flights: dict[Hashable, _SyncFlight] = {}
        self._lock = threading.Lock()
        # Strong references to running tasks: the loop keeps only weak ones.
        self._tasks: set[asyncio.Task[Any]] = set()
        self._store_failing = False
        self._on_broken = False
        # Counters for status(); approximate when threads race.
        self._hits = 0
        self._stale_hits = 0
        self._stale_on_error = 0
        self._misses = 0
        self._coalesced = 0
        self._refreshes = 0
        self._refresh_failures = 0
        self._backed_off = 0
        self._last_refresh_error: str | None = None

    # -- public API ----------------------------------------------------------

    def key_for(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Hashable:
        """The key this policy uses for ``fn(*args, **kwargs)`` (for :meth:`invalidate`)."""
        if self.key is not None:
            return self.key(*args, **kwargs)
        prefix, prefix_kw = _key_prefixes(operation_name(inspect.unwrap(fn)))
        if kwargs:
            return (prefix_kw, args, frozenset(kwargs.items()))
        return prefix + args

    def invalidate(self, key: Hashable) -> None:
        """Forget ``key``: it is not served again, and a call in flight for it does not store its result.

        Callers already waiting for that call still get its result. With an
        :class:`~resilient.cache.AsyncCacheStore` use :meth:`ainvalidate`.
        """
        if self._store_async:
            raise TypeError(f"{self.label()} has an async store: use `await ainvalidate(key)`")
        with self._lock:
            self._detach(key)
        # The store is user code: called with the lock released. A call that
        # was in flight re-checks after its write and undoes it (see _put).
        self.store.delete(key)

    async def ainvalidate(self, key: Hashable) -> None:
        """:meth:`invalidate` for any store (awaits an async store's ``delete``)."""
        with self._lock:
            self._detach(key)
        if not self._store_async:
            self.store.delete(key)
            return
        await self.store.delete(key)

    def clear(self) -> None:
        """Forget every entry; calls in flight do not store their results."""
        if self._store_async:
            raise TypeError(f"{self.label()} has an async store: use `await aclear()`")
        with self._lock:
            self._flights.clear()
            self._sync_flights.clear()
            self._backoff.clear()
        self.store.clear()

    async def aclear(self) -> None:
        """:meth:`clear` for any store."""
        with self._lock:
            self._flights.clear()
            self._sync_flights.clear()
            self._backoff.clear()
        if not self._store_async:
            self.store.clear()
            return
        await self.store.clear()

    def status(self) -> dict[str, Any]:
        """Counters and configuration, JSON-able."""
        store = self.store
        return {
            "type": self.policy_type,
            "name": self.name,
            "ttl": self.ttl,
            "stale_ttl": self.stale_ttl if math.isfinite(self.stale_ttl) else None,
            "refresh": self.refresh,
            "entries": len(store) if hasattr(store, "__len__") else None,
            "max_entries": store.max_entries if isinstance(store, MemoryStore) else None,
            "in_flight": len(self._flights) + len(self._sync_flights),
            "hits": self._hits,
            "stale_hits": self._stale_hits,
            "stale_on_error": self._stale_on_error,
            "misses": self._misses,
            "coalesced": self._coalesced,
            "refreshes": self._refreshes,
            "refresh_failures": self._refresh_failures,
            "backed_off": self._backed_off,
            "last_refresh_error": self._last_refresh_error,
        }

    # -- async ---------------------------------------------------------------
    #
    # The fresh-hit path is written out in each shell for speed (no call
    # beyond the store's get), once by hand in cache/_shell_async.py (an
    # async store); scripts/unasync.py generates the shell over a local store
    # (_shell_local.py) and the sync one (_shell_sync.py) from it.

    def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        """The closure guarding each call of the async ``fn`` (:meth:`~resilient.Policy.build_async`)."""
        if self._store_async:
            return _shell_async.build_async(self, fn, site)
        return _shell_local.build_async(self, fn, site)

    async def _slow_async(
        self, fn: AsyncFn, site: EventSite, k: Hashable, entry: CacheEntry | None, args: Any, kwargs: Any
    ) -> Any:
        if entry is not None:
            age = self._now() - entry.stored_at
            if age < self.stale_ttl:
                flight = self._flights.get(k)
                if flight is None and self._backoff and self._backing_off(k):
                    return self._serve(site, entry, age, None, backoff=True)
                if flight is not None or self.refresh == "background":
                    if flight is None:
                        self._refreshes += 1
                        self._start(k, fn, site, args, kwargs, background=True)
                    return self._serve(site, entry, age, None)
                # refresh="inline": this caller makes the call; stale-if-error below.
            else:
                await self._delete_quietly(k)
                entry = None
        self._misses += 1
        flight = self._flights.get(k)
        if flight is None:
            flight = self._start(k, fn, site, args, kwargs, background=False)
        else:
            self._coalesced += 1
        kind, value, tb = await self._wait(k, flight)
        newest = None
        if kind in (_FAILED, _BAD_RESULT):
            # Read again: the entry may have been invalidated, replaced or aged meanwhile.
            try:
                newest = self.store.get(k)
                if self._store_async:
                    newest = await newest
            except Exception as exc:
                newest = self._lookup_failed(site.operation, k, exc)
        return self._conclude(site, kind, value, tb, newest)

    def _start(self, k: Hashable, fn: AsyncFn, site: EventSite, args: Any, kwargs: Any, *, background: bool) -> _Flight:
        flight = _Flight(background)
        loop = asyncio.get_running_loop()
        coro = self._call(k, fn, site, args, kwargs, flight)
        if background:
            # A refresh serves no particular request: the caller's deadline must not cut it short.
            ctx = contextvars.copy_context()
            ctx.run(clear_deadline)
            task = loop.create_task(coro, name=f"resilient StaleCache refresh of {site.operation}", context=ctx)
        else:
            task = loop.create_task(coro, name=f"resilient StaleCache call of {site.operation}")
        flight.task = task
        self._flights[k] = flight
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return flight

    async def _wait(self, k: Hashable, flight: _Flight) -> _Outcome:
        task = flight.task
        flight.waiters += 1
        try:
            # shield: cancelling this caller must not cancel the call the others wait for.
            return await asyncio.shield(task)
        finally:
            flight.waiters -= 1
            if not flight.waiters and not flight.background and not task.done():
                # Every caller has gone (cancelled): stop the call instead of
                # running it for nobody, and let the next caller start afresh.
                if self._flights.get(k) is flight:
                    del self._flights[k]
                task.cancel()

    async def _call(
        self, k: Hashable, fn: AsyncFn, site: EventSite, args: Any, kwargs: Any, flight: _Flight
    ) -> _Outcome:
        # Runs as a task and never raises an Exception (only cancellation), so
        # no "exception was never retrieved" whoever is (not) waiting.
        leased = False
        try:
            if self._shared is not None:
                found, leased = await self._shared_flight(k)
                if found is not None:
                    # Another process made the call and stored its value: ours is not needed.
                    return (_OK, found.value, None)
            try:
                result = await fn(*args, **kwargs)
                bad = self._on_result is not None and self._on_result(result)
            except Exception as exc:
                self._note_rejection(k, exc)
                if flight.background:
                    self._refresh_failed(site, exc)
                return (_FAILED if self._is_failure(exc) else _RAISED, exc, exc.__traceback__)
            if bad:
                if flight.background:
                    self._refresh_failed(site, None)
                return (_BAD_RESULT, result, None)
            entry = CacheEntry(result, self._now())
            # Only the current flight of the key may store: an invalidate()
            # or clear() meanwhile detached this one.
            if self._store_async:
                if self._flights.get(k) is flight:
                    await self._aput(k, entry, flight)
            else:
                self._put(k, entry, lambda: self._flights.get(k) is flight)
            return (_OK, result, None)
        finally:
            if self._flights.get(k) is flight:
                del self._flights[k]
            if leased:
                await self._release_quietly(k)

    async def _shared_flight(self, k: Hashable) -> tuple[CacheEntry | None, bool]:
        """Take the key's lease, or wait for the process holding it: ``(entry it stored, None)`` or ``(None, leased)``.

        ``(None, False)`` means "call, without a lease" (the store failed).
        The wait ends with the value the holder stores (an entry newer than
        the one this process had, or a fresh one), with the lease (the holder gave up or
        died), or after ``lease_seconds``.
        """
        shared = self._shared
        assert shared is not None
        seconds = shared.lease_seconds
        try:
            if await shared.lease(k, seconds):
                return None, True
            known = await shared.get(k)
        except Exception as exc:
            self._store_error("lease", exc)
            return None, False
        if known is not None and self._now() - known.stored_at < self.ttl:
            # The holder stored between its refusal and this read: its value, not ours to wait for.
            return known, False
        before = known.stored_at if known is not None else None
        clock = self._clock
        until = clock.now() + seconds
        while clock.now() < until:
            await clock.asleep(shared.poll_interval)
            try:
                entry = await shared.get(k)
                if entry is None or (before is not None and entry.stored_at <= before):
                    if not await shared.lease(k, seconds):
                        continue
                    # The holder may have stored and released between the two looks.
                    entry = await shared.get(k)
                    if entry is None or (before is not None and entry.stored_at <= before):
                        return None, True
                    await shared.release(k)
                return entry, False
            except Exception as exc:
                self._store_error("lease", exc)
                return None, False
        return None, False

    async def _release_quietly(self, k: Hashable) -> None:
        shared = self._shared
        assert shared is not None
        try:
            await shared.release(k)
        except Exception as exc:
            self._store_error("release", exc)

    async def _aput(self, k: Hashable, entry: CacheEntry, flight: _Flight) -> None:
        try:
            await self.store.set(k, entry)
        except Exception as exc:
            self._store_error("set", exc)
        else:
            self._written(k)
            if self._flights.get(k) is not flight:
                # Invalidated while the write was in flight: undo it (best effort on a remote store).
                await self._delete_quietly(k)

    async def _delete_quietly(self, k: Hashable) -> None:
        try:
            result = self.store.delete(k)
            if self._store_async:
                await result
        except Exception as exc:
            self._store_error("delete", exc)

    # -- sync ----------------------------------------------------------------

    def build_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        """The closure guarding each call of the synchronous ``fn`` (:meth:`~resilient.Policy.build_sync`)."""
        if self._store_async:
            raise TypeError(f"{self.label()} has an async store and cannot guard the synchronous function {fn!r}")
        return _shell_sync.build_sync(self, fn, site)

    def _slow_sync(
        self, fn: SyncFn, site: EventSite, k: Hashable, entry: CacheEntry | None, args: Any, kwargs: Any
    ) -> Any:
        age = 0.0
        if entry is not None:
            age = self._now() - entry.stored_at
            if age >= self.stale_ttl:
                self.store.delete(k)
                entry = None
            elif self._backoff and self._backing_off(k):
                return self._serve(site, entry, age, None, backoff=True)
        with self._lock:
            flight = self._sync_flights.get(k)
            leader = flight is None
            if flight is None:
                flight = self._sync_flights[k] = _SyncFlight()
        if not leader:
            if entry is not None:
                # Another thread is refreshing this key: the stale value now beats waiting.
                return self._serve(site, entry, age, None)
            if flight.owner == threading.get_ident():
                # The call asks for its own key (recursion): waiting would deadlock.
                return fn(*args, **kwargs)
            self._misses += 1
            self._coalesced += 1
            flight.done.wait()
            outcome = flight.outcome
            if outcome is None:  # the leader was interrupted (KeyboardInterrupt...): call directly
                return fn(*args, **kwargs)
        else:
            self._misses += 1
            try:
                outcome = flight.outcome = self._call_sync(k, fn, args, kwargs, flight)
            finally:
                with self._lock:
                    if self._sync_flights.get(k) is flight:
                        del self._sync_flights[k]
                flight.done.set()
        kind, value, tb = outcome
        newest = None
        if kind in (_FAILED, _BAD_RESULT):
            try:
                newest = self.store.get(k)
            except Exception as exc:
                newest = self._lookup_failed(site.operation, k, exc)
        return self._conclude(site, kind, value, tb, newest)

    def _call_sync(self, k: Hashable, fn: SyncFn, args: Any, kwargs: Any, flight: _SyncFlight) -> _Outcome:
        try:
            result = fn(*args, **kwargs)
            bad = self._on_result is not None and self._on_result(result)
        except Exception as exc:
            self._note_rejection(k, exc)
            return (_FAILED if self._is_failure(exc) else _RAISED, exc, exc.__traceback__)
        if bad:
            return (_BAD_RESULT, result, None)
        entry = CacheEntry(result, self._now())
        self._put(k, entry, lambda: self._sync_flights.get(k) is flight)
        return (_OK, result, None)

    # -- shared --------------------------------------------------------------

    def _conclude(
        self, site: EventSite, kind: int, value: Any, tb: TracebackType | None, newest: CacheEntry | None
    ) -> Any:
        """What the caller of a finished call gets: its result, the newest stale entry, or its error.

        ``newest`` is the key's entry read again after a failure (``None``
        after a success or an exception that does not count).
        """
        if kind == _OK:
            _last.set((MISS, 0.0))
            return value
        if newest is not None:
            age = self._now() - newest.stored_at
            if age < self.stale_ttl:
                return self._serve(site, newest, age, value if kind == _FAILED else None)
        _last.set((MISS, 0.0))
        if kind == _BAD_RESULT:
            return value
        if kind == _FAILED:
            self._note_no_stale(value)
        raise value.with_traceback(tb)

    def _put(self, k: Hashable, entry: CacheEntry, current: Callable[[], bool]) -> None:
        """Store ``entry`` for the flight that ``current()`` says is still the key's (synchronous store).

        The store is user code, so it is not called under the lock; an
        invalidation that lands between the check and the write is caught
        by the second check, and the write undone.
        """
        with self._lock:
            if not current():
                return
        try:
            self.store.set(k, entry)
        except Exception as exc:
            self._store_error("set", exc)
            return
        self._written(k)
        with self._lock:
            still = current()
        if not still:
            try:
                self.store.delete(k)
            except Exception as exc:
                self._store_error("delete", exc)

    def _detach(self, key: Hashable) -> None:
        self._flights.pop(key, None)
        self._sync_flights.pop(key, None)
        self._backoff.pop(key, None)

    def _note_rejection(self, k: Hashable, exc: Exception) -> None:
        """Hold back the key's next refresh for the ``retry_after`` of a rejection (open breaker, rate limit).

        During an outage every stale hit would otherwise start a refresh
        that an open breaker rejects at once (and report it): the policy
        that rejected says when trying again makes sense, so wait that long.
        """
        if not isinstance(exc, RejectedError):
            return
        wait = exc.retry_after
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not wait > 0:
            return  # unknown (None), zero, negative or NaN: nothing to wait for
        wait = min(float(wait), self.stale_ttl if math.isfinite(self.stale_ttl) else _MAX_BACKOFF)
        until = self._now() + wait
        with self._lock:
            backoff = self._backoff
            backoff.pop(k, None)
            backoff[k] = until  # insertion order = age: the oldest goes first when full
            if len(backoff) > self._max_backoffs:
                del backoff[next(iter(backoff))]

    def _backing_off(self, k: Hashable) -> bool:
        """Whether the key's refresh is held back by a rejection's ``retry_after`` (forgets it once over)."""
        now = self._now()
        with self._lock:
            until = self._backoff.get(k)
            if until is None:
                return False
            if now < until:
                return True
            del self._backoff[k]
            return False

    def _serve(
        self, site: EventSite, entry: CacheEntry, age: float, exc: Exception | None, *, backoff: bool = False
    ) -> Any:
        if age < self.ttl:  # stored by another call meanwhile: it is fresh
            self._hits += 1
            _last.set((FRESH, age))
            return entry.value
        self._stale_hits += 1
        _last.set((STALE, age))
        if backoff:
            self._backed_off += 1
            self.emit(site, CACHE_STALE_HIT, Severity.INFO, duration=age, extras=_BACKING_OFF)
        elif exc is None:
            self.emit(site, CACHE_STALE_HIT, Severity.INFO, duration=age, extras=_REVALIDATE)
        else:
            self._stale_on_error += 1
            self.emit(site, CACHE_STALE_HIT, Severity.WARNING, duration=age, exception=exc, extras=_ON_ERROR)
        return entry.value

    def _note_no_stale(self, exc: BaseException) -> None:
        if self.stale_ttl <= self.ttl:
            return  # no stale window: nothing to explain
        note = f"resilient: {self.label()} had no value younger than stale_ttl={self.stale_ttl:g} s to serve instead"
        # One exception object is shared by every coalesced caller: add the note once.
        if note not in getattr(exc, "__notes__", ()):
            exc.add_note(note)

    def _is_failure(self, exc: Exception) -> bool:
        """Whether ``exc`` counts as a failure; a raising ``on=`` predicate makes it one.

        Called where nothing may raise (a refresh task, the single-flight
        call): a bug in the predicate must not replace the call's own
        exception, nor the stale value that beats it.
        """
        try:
            return self._failed(exc)
        except Exception as bug:
            # Once at WARNING, then at DEBUG: a failing dependency calls this on every failure.
            level = logging.DEBUG if self._on_broken else logging.WARNING
            self._on_broken = True
            logger.log(
                level,
                "resilient: %s: the on= predicate raised %s (%s) for %r; counting the exception as a failure",
                self.label(),
                type(bug).__name__,
                bug,
                exc,
                exc_info=bug,
            )
            return True

    def _refresh_failed(self, site: EventSite, exc: Exception | None) -> None:
        self._refresh_failures += 1
        self._last_refresh_error = type(exc).__name__ if exc is not None else "on_result"
        logger.debug("resilient: %s: background refresh of %s failed: %r", self.label(), site.operation, exc)
        self.emit(site, CACHE_REFRESH_FAILED, Severity.WARNING, exception=exc)

    def _lookup_failed(self, operation: str | None, k: Hashable, exc: Exception) -> CacheEntry | None:
        if isinstance(exc, TypeError):
            try:
                hash(k)
            except TypeError:
                raise self._unhashable(operation, exc) from exc
        # A broken or unreachable store is a miss: the function is still there.
        self._store_error("get", exc)
        return None

    def _written(self, k: Hashable) -> None:
        """A write of ``k`` landed: the store works, and the key's refresh backoff is over."""
        self._store_failing = False
        with self._lock:
            self._backoff.pop(k, None)

    def _store_error(self, op: str, exc: Exception) -> None:
        if not self._store_failing:
            self._store_failing = True
            logger.warning(
                "resilient: %s: store %s failed (%s: %s); serving from the function until it recovers",
                self.label(),
                op,
                type(exc).__name__,
                exc,
            )
        else:
            logger.debug("resilient: %s: store %s failed: %r", self.label(), op, exc)

    def _unhashable(self, operation: str | None, exc: TypeError) -> TypeError:
        what = operation or "the function"
        if self.key is None:
            return TypeError(
                f"{self.label()} cannot cache {what}(): its arguments are not hashable ({exc}); "
                "pass key= to StaleCache to build a hashable key from them, "
                "e.g. key=lambda ids: tuple(ids)"
            )
        return TypeError(f"{self.label()}: key= returned an unhashable key for {what}() ({exc})")

    def __repr__(self) -> str:
        return f"StaleCache(ttl={self.ttl}, stale_ttl={self.stale_ttl}, name={self.name!r})"

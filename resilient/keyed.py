"""Keyed policies: one policy per key, built on first use, memory bounded.

A pub/sub broker delivering to thousands of subscriber endpoints wants one
circuit breaker per endpoint, a multi-tenant backend one bulkhead per
tenant, a partitioned consumer a whole pipeline per partition::

    per_subscriber = Keyed(
        lambda url: CircuitBreaker(consecutive_failures=5, break_duration=30),
        key=lambda event, url: url,
        max_keys=10_000,
        idle_ttl=3600,
        name="deliveries",
    )

    @per_subscriber
    async def deliver(event: Event, url: str) -> None: ...

``key(*args, **kwargs)`` gives each call's key; ``factory(key)`` builds that
key's policy the first time the key is seen. At most ``max_keys`` keys are
kept, the least recently used going first, and a key idle for longer than
``idle_ttl`` seconds is forgotten; a forgotten key's state goes with it (its
breaker closes, its tokens refill), and it comes back with a fresh policy.

A key is never forgotten while a call holds it: a half-open probe, a
bulkhead slot or a queued waiter always finishes on the policy it started
on. So the number of keys held is at most ``max_keys``, or the number of
keys with a call in flight when that is larger (each such call holds its
own memory anyway).

How it works: :class:`_Table` is the engine. Keys live in a dict indexed by
their hash (an ``int``, so the dict never runs user code); the key's own
``__hash__`` runs once per call and its ``__eq__`` when comparing with the
entry found, both outside any lock, so a key that is unhashable or raises
fails with :class:`PolicyKeyError` and no lock is ever held by it. The
success path takes no lock at all; adding and forgetting keys takes one,
under which no user code (key, factory, policy, clock) runs.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from resilient.breaker import CircuitBreaker, CircuitState
from resilient.clock import Clock
from resilient.errors import ResilienceError
from resilient.events import EventSite
from resilient.policy import AsyncFn, AsyncWrapped, Pipeline, Policy, SyncFn
from resilient.validate import check_callable, check_clock, check_int, check_seconds

__all__ = ["Keyed", "PolicyKeyError"]

# Closures kept per key (one per wrapped function); past this the cache is
# dropped and rebuilt on demand, so that re-wrapping (registry reloads,
# ``run()``) cannot grow a hot key's memory without bound.
_MAX_CALLS_PER_KEY = 32
# The longest key repr shown in errors and in status(): keys are untrusted.
_MAX_KEY_REPR = 80
# Status ranks: what makes a key "worse" than another.
# Expired keys looked at per new key: the sweep keeps pace with arrivals.
_SWEEP_STEP = 4
_RANK = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 2, CircuitState.OPEN: 3, CircuitState.ISOLATED: 3}


class PolicyKeyError(ResilienceError):
    """A :class:`Keyed` policy could not use a call's key; the call was not made.

    Raised when the key function raises, or returns a value that is not
    hashable, or whose ``__hash__`` or ``__eq__`` raises. ``reason`` says
    which: ``"key_function"``, ``"unhashable"`` or ``"key_error"``. The
    original exception is the ``__cause__``. No lock is held when it is
    raised, and the key is not kept.
    """

    def __init__(self, message: str, *, policy: str | None = None, reason: str = "key_function") -> None:
        super().__init__(message)
        #: The name of the keyed policy.
        self.policy = policy
        #: ``"key_function"``, ``"unhashable"`` or ``"key_error"``.
        self.reason = reason


def describe_key(key: Any) -> str:
    """``repr(key)`` cut to a readable length, even when the key's ``__repr__`` raises."""
    try:
        text = repr(key)
    except Exception:
        return f"<{type(key).__name__} object>"
    if not isinstance(text, str):  # pragma: no cover - repr() enforces str
        return f"<{type(key).__name__} object>"
    return text if len(text) <= _MAX_KEY_REPR else text[: _MAX_KEY_REPR - 3] + "..."


class _Entry:
    """One key: its policy, the closures built over it, and who holds it."""

    __slots__ = ("alive", "calls", "hash", "holders", "key", "last", "policy", "serial")

    def __init__(self, key: Any, hash_: int, policy: Policy, serial: int) -> None:
        self.key = key
        self.hash = hash_
        self.policy = policy
        self.serial = serial
        # One item per call in flight. A list, because append() and pop() are
        # atomic: the success path counts its callers without a lock.
        self.holders: list[None] = []
        # False once evicted: a caller that found it a moment before looks again.
        self.alive = True
        # When the last call finished (clock time; only kept with idle_ttl).
        self.last = 0.0
        self.calls: dict[int, Callable[..., Any]] = {}

    def bind(self, build_id: int, fn: Callable[..., Any], site: EventSite, is_async: bool) -> Callable[..., Any]:
        """The closure of this key's policy around ``fn``, built once per wrapped function."""
        call = self.policy.build(fn, site, is_async)
        calls = self.calls
        if len(calls) >= _MAX_CALLS_PER_KEY:
            calls.clear()
        calls[build_id] = call
        return call


class _Table:
    """The engine: which entry serves a key, and which entries to forget.

    No I/O, no awaits. The success path (:attr:`acquire` / :attr:`release`,
    closures over locals) takes no lock: it finds the entry by the key's
    hash, announces itself in ``entry.holders`` and then checks that the
    entry is still alive; an evictor does the mirror image (marks the entry
    dead, then checks that nobody holds it, and revives it if somebody
    does), so an entry is never forgotten while a call holds it. Adding and
    evicting entries happens under ``lock``, which guards integer-keyed
    dicts only: no user code (key, factory, policy, clock) runs under it.
    """

    def __init__(
        self,
        build: Callable[[Any], Policy],
        max_keys: int,
        idle_ttl: float | None,
        clock: Clock,
        bad_key: Callable[[Any, Exception], PolicyKeyError],
    ) -> None:
        self.max_keys = max_keys
        self.idle_ttl = idle_ttl
        self.lock = threading.Lock()
        # hash -> the entry, or a tuple of the entries whose keys share that hash.
        self.slots: dict[int, _Entry | tuple[_Entry, ...]] = {}
        # serial -> entry, least recently used first.
        self.lru: OrderedDict[int, _Entry] = OrderedDict()
        self.evicted = 0
        self.built = 0
        self._serials = itertools.count()
        self._build = build
        self._bad_key = bad_key
        self._now = clock.now
        self.acquire = self._make_acquire()
        self.release = self._make_release()

    # -- the success path ----------------------------------------------------

    def _make_acquire(self) -> Callable[[Any], _Entry]:
        slots_get = self.slots.get
        ttl = self.idle_ttl
        now_fn = self._now
        bad_key = self._bad_key
        slow = self._acquire_slow

        def acquire(key: Any) -> _Entry:
            """The entry for ``key``, held until :func:`release`."""
            try:
                h = hash(key)
                seen = slots_get(h)
                found = seen if type(seen) is _Entry and (seen.key is key or seen.key == key) else None
            except Exception as exc:
                raise bad_key(key, exc) from exc
            if found is not None:
                holders = found.holders
                holders.append(None)
                if found.alive and (ttl is None or len(holders) > 1 or now_fn() - found.last <= ttl):
                    return found
                holders.pop()
            return slow(key, h)

        return acquire

    def _make_release(self) -> Callable[[_Entry], None]:
        lru = self.lru
        ttl = self.idle_ttl
        now_fn = self._now
        max_keys = self.max_keys
        trim = self.trim

        def release(entry: _Entry) -> None:
            """Hand back an entry taken by :func:`acquire` (exactly once)."""
            if ttl is not None:
                entry.last = now_fn()
            # Still held here, so no evictor removes it from the LRU order.
            lru.move_to_end(entry.serial)
            entry.holders.pop()
            if len(lru) > max_keys:
                trim()

        return release

    # -- the slow path -------------------------------------------------------

    def _find(self, seen: _Entry | tuple[_Entry, ...] | None, key: Any) -> _Entry | None:
        """The entry in ``seen`` whose key equals ``key``; runs the key's ``__eq__`` (no lock held)."""
        if seen is None:
            return None
        try:
            if type(seen) is _Entry:
                return seen if seen.key is key or seen.key == key else None
            for entry in seen:  # type: ignore[union-attr]
                if entry.key is key or entry.key == key:
                    return entry
        except Exception as exc:
            raise self._bad_key(key, exc) from exc
        return None

    def _acquire_slow(self, key: Any, h: int) -> _Entry:
        """A new key, an expired one, or a race with an eviction: look again, build if need be."""
        lock = self.lock
        ttl = self.idle_ttl
        policy: Policy | None = None
        victims: list[_Entry] = []
        while True:
            now = self._now() if ttl is not None else 0.0
            seen = self.slots.get(h)
            found = self._find(seen, key)
            if found is not None:
                holders = found.holders
                holders.append(None)
                if found.alive and (ttl is None or len(holders) > 1 or now - found.last <= ttl):
                    return found
                holders.pop()
                if found.alive:
                    with lock:  # idle too long: its state goes with it
                        if found.alive and self._evict_locked(found):
                            victims.append(found)
                continue  # look again
            if policy is None:
                # The factory is user code: outside the lock. Two threads racing
                # on a new key may both build; the first to insert wins.
                policy = self._build(key)
            with lock:
                if self.slots.get(h) is not seen:
                    continue  # the slot changed while we looked: look again
                entry = _Entry(key, h, policy, next(self._serials))
                entry.holders.append(None)
                if seen is None:
                    self.slots[h] = entry
                elif type(seen) is _Entry:
                    self.slots[h] = (seen, entry)
                else:
                    self.slots[h] = (*seen, entry)  # type: ignore[misc]
                self.lru[entry.serial] = entry
                self.built += 1
                victims += self._trim_locked(now, _SWEEP_STEP)
                return entry

    def _evict_locked(self, entry: _Entry) -> bool:
        """Forget ``entry`` unless a call holds it; whether it was forgotten."""
        if entry.holders:
            return False
        entry.alive = False
        if entry.holders:  # a caller arrived between the two checks: it keeps the entry
            entry.alive = True
            return False
        del self.lru[entry.serial]
        slot = self.slots[entry.hash]
        if slot is entry:
            del self.slots[entry.hash]
        else:
            rest = tuple(e for e in slot if e is not entry)  # type: ignore[union-attr]
            self.slots[entry.hash] = rest[0] if len(rest) == 1 else rest
        self.evicted += 1
        return True

    def _oldest(self) -> _Entry:
        # The success path moves entries without the lock: an iterator made
        # in the instant of a move complains; just make another.
        while True:
            try:
                return next(iter(self.lru.values()))
            except RuntimeError:
                continue

    def _trim_locked(self, now: float, ttl_steps: int) -> list[_Entry]:
        """Forget up to ``ttl_steps`` expired idle entries, then idle ones past ``max_keys``, oldest first.

        Entries in use are passed over (moved to the recent end: they are in
        use, so recent). Returns the victims, for the caller to drop once the
        lock is released (freeing a policy must not run under it).
        """
        lru = self.lru
        victims: list[_Entry] = []
        ttl = self.idle_ttl
        if ttl is not None:
            for _ in range(min(ttl_steps, len(lru))):
                oldest = self._oldest()
                if oldest.holders:
                    lru.move_to_end(oldest.serial)
                elif now - oldest.last > ttl and self._evict_locked(oldest):
                    victims.append(oldest)
                else:
                    break  # idle entries are in the order of their last use
        passed = 0
        while len(lru) > self.max_keys and passed < len(lru):
            oldest = self._oldest()
            if self._evict_locked(oldest):
                victims.append(oldest)
            else:
                lru.move_to_end(oldest.serial)
                passed += 1
        return victims

    def trim(self) -> None:
        """Forget what has overflowed ``max_keys``, and a few expired keys (the success path's slow branch)."""
        now = self._now() if self.idle_ttl is not None else 0.0
        with self.lock:
            victims = self._trim_locked(now, _SWEEP_STEP)
        del victims

    # -- inspection ----------------------------------------------------------

    def sweep(self) -> None:
        """Forget every expired or overflowing key now (the success path does it lazily)."""
        now = self._now() if self.idle_ttl is not None else 0.0
        with self.lock:
            victims = self._trim_locked(now, len(self.lru))
        del victims

    def entries(self) -> list[_Entry]:
        """The live entries, least recently used first (a snapshot)."""
        with self.lock:
            while True:
                try:
                    return list(self.lru.values())
                except RuntimeError:  # moved by the success path meanwhile
                    continue

    def get(self, key: Any) -> _Entry | None:
        """The live entry of ``key``, without taking it."""
        try:
            h = hash(key)
        except Exception as exc:
            raise self._bad_key(key, exc) from exc
        found = self._find(self.slots.get(h), key)
        return found if found is not None and found.alive else None


class Keyed(Policy):
    """One policy per key, built by ``factory(key)`` on the key's first call.

    Args:
        factory: ``factory(key) -> Policy``: builds the policy of a new key
            (a :class:`~resilient.CircuitBreaker`, a
            :class:`~resilient.Bulkhead`, a whole
            :class:`~resilient.Pipeline`...). Called outside any lock; two
            threads racing on a new key may both call it, and one result is
            kept. If it raises, the exception propagates as it is (with a
            note naming the key), nothing is kept and the call is not made.
        key: ``key(*args, **kwargs) -> Hashable``, called with the wrapped
            function's arguments, e.g. ``lambda event, url: url``. Keys are
            treated as untrusted: any hashable value works; one that is not
            hashable, or a key function that raises, fails the call with
            :class:`PolicyKeyError`.
        max_keys: keys held at most (>= 1); the least recently used idle key
            is forgotten when a new one arrives. Keys with a call in flight
            are never forgotten, so the table exceeds ``max_keys`` only while
            more than ``max_keys`` keys have a call in flight.
        idle_ttl: seconds (> 0) after which a key with no call is
            forgotten, or ``None`` (default) to keep keys until ``max_keys``
            pushes them out. Measured on ``clock``.
        name: shown in errors, events and the status endpoint.
        clock: the clock ``idle_ttl`` runs on (tests pass a ``FakeClock``).

    A forgotten key's state goes with it: the next call of that key builds a
    fresh policy. Events come from the policies the factory builds (name
    them after the key if you want it in events); :meth:`status` shows the
    worst keys.
    """

    policy_type = "keyed"

    def __init__(
        self,
        factory: Callable[[Any], Policy],
        *,
        key: Callable[..., Hashable],
        max_keys: int = 10_000,
        idle_ttl: float | None = None,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name=name)
        if isinstance(factory, Policy):
            # A policy is callable (it wraps functions), so check_callable would let it by.
            raise TypeError(
                f"factory must be a callable key -> Policy that builds a new policy per key, got the policy "
                f"{factory!r}: pass e.g. lambda key: {type(factory).__name__}(...)"
            )
        #: ``factory(key) -> Policy``.
        self.factory: Callable[[Any], Policy] = check_callable(
            factory, "factory", "a callable key -> Policy", allow_class=True
        )
        #: ``key(*args, **kwargs) -> Hashable``.
        self.key: Callable[..., Hashable] = check_callable(key, "key", "a callable (*args, **kwargs) -> hashable")
        #: Keys held at most (see the class documentation).
        self.max_keys = check_int(max_keys, "max_keys", minimum=1)
        #: Seconds after which an idle key is forgotten, or ``None``.
        self.idle_ttl = check_seconds(idle_ttl, "idle_ttl", allow_none=True)
        #: The clock ``idle_ttl`` runs on.
        self.clock = check_clock(clock)
        self._table = _Table(self._build_policy, self.max_keys, self.idle_ttl, self.clock, self._bad_key)
        self._build_ids = itertools.count()

    # -- errors --------------------------------------------------------------

    def _bad_key(self, key: Any, exc: Exception) -> PolicyKeyError:
        if isinstance(exc, TypeError) and "unhashable" in str(exc):
            what, reason = f"the key {describe_key(key)} is not hashable", "unhashable"
        else:
            what = f"the key {describe_key(key)} raised {type(exc).__name__}: {exc} when hashed or compared"
            reason = "key_error"
        return PolicyKeyError(f"{self.label()}: {what}; the call was not made", policy=self.name, reason=reason)

    def _key_function_error(self, exc: Exception) -> PolicyKeyError:
        return PolicyKeyError(
            f"{self.label()}: the key function raised {type(exc).__name__}: {exc}; the call was not made",
            policy=self.name,
            reason="key_function",
        )

    def _build_policy(self, key: Any) -> Policy:
        try:
            policy = self.factory(key)
        except Exception as exc:
            exc.add_note(
                f"resilient: {self.label()}: factory({describe_key(key)}) raised; "
                "nothing was kept for that key and the call was not made"
            )
            raise
        if not isinstance(policy, Policy):
            raise TypeError(
                f"{self.label()}: factory must return a Policy, got {policy!r} for the key {describe_key(key)}"
            )
        return policy

    # -- inspection ----------------------------------------------------------

    def __len__(self) -> int:
        """Keys held now (expired ones are dropped first)."""
        self._table.sweep()
        return len(self._table.lru)

    def get(self, key: Hashable) -> Policy | None:
        """The policy held for ``key``, or ``None``; never builds one, never refreshes its use.

        Raises:
            PolicyKeyError: ``key`` is not hashable, or raises when hashed or compared.
        """
        entry = self._table.get(key)
        return entry.policy if entry is not None else None

    @property
    def evicted(self) -> int:
        """Keys forgotten so far (pushed out by ``max_keys`` or idle past ``idle_ttl``)."""
        return self._table.evicted

    def status(self, limit: int = 10) -> dict[str, Any]:
        """A JSON-able snapshot: counts, and the ``limit`` worst keys with their policies' status.

        Worst first: open (or isolated) breakers, then half-open ones, then
        the keys whose policies rejected the most calls. A pipeline ranks as
        its worst member. Costs O(keys held); meant for a status endpoint,
        not for every call.
        """
        table = self._table
        table.sweep()
        entries = table.entries()
        ranked = [(_rank(e.policy), -i, e) for i, e in enumerate(reversed(entries))]
        worst = heapq.nlargest(limit, ranked, key=lambda r: (r[0], r[1]))
        return {
            "type": self.policy_type,
            "name": self.name,
            "keys": len(entries),
            "max_keys": self.max_keys,
            "idle_ttl": self.idle_ttl,
            "in_use": sum(1 for e in entries if e.holders),
            "open": sum(1 for r in ranked if r[0][0] >= _RANK[CircuitState.OPEN]),
            "built": table.built,
            "evicted": table.evicted,
            "worst": [
                {"key": describe_key(e.key), "in_use": len(e.holders), "status": _status(e.policy)} for _, _, e in worst
            ],
        }

    # -- the adapters --------------------------------------------------------

    def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        """Each call: take the key's entry, run its policy's closure around ``fn``, hand the entry back."""
        key_fn = self.key
        key_error = self._key_function_error
        acquire = self._table.acquire
        release = self._table.release
        build_id = next(self._build_ids)

        async def keyed_call(*args: Any, **kwargs: Any) -> Any:
            try:
                key = key_fn(*args, **kwargs)
            except Exception as exc:
                raise key_error(exc) from exc
            entry = acquire(key)
            try:
                call = entry.calls.get(build_id)
                if call is None:
                    call = entry.bind(build_id, fn, site, True)
                return await call(*args, **kwargs)
            finally:
                release(entry)

        return keyed_call

    def build_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        """The same as :meth:`build_async`, for synchronous functions (threads included)."""
        key_fn = self.key
        key_error = self._key_function_error
        acquire = self._table.acquire
        release = self._table.release
        build_id = next(self._build_ids)

        def keyed_call(*args: Any, **kwargs: Any) -> Any:
            try:
                key = key_fn(*args, **kwargs)
            except Exception as exc:
                raise key_error(exc) from exc
            entry = acquire(key)
            try:
                call = entry.calls.get(build_id)
                if call is None:
                    call = entry.bind(build_id, fn, site, False)
                return call(*args, **kwargs)
            finally:
                release(entry)

        return keyed_call

    def __repr__(self) -> str:
        return f"Keyed(max_keys={self.max_keys}, idle_ttl={self.idle_ttl!r}, name={self.name!r})"


def _rank(policy: Policy) -> tuple[int, int]:
    """How bad a key looks: (breaker state rank, failures counted or calls rejected)."""
    if isinstance(policy, Pipeline):
        return max((_rank(p) for p in policy), default=(0, 0))
    if isinstance(policy, CircuitBreaker):
        metrics = policy.metrics
        return _RANK.get(metrics.state, 0), metrics.failures
    rejected = getattr(policy, "rejected", 0)
    return 0, rejected if isinstance(rejected, int) else 0


def _status(policy: Policy) -> Any:
    if isinstance(policy, Pipeline):
        return [p.status() or {"type": p.policy_type} for p in policy]
    return policy.status() or {"type": policy.policy_type}

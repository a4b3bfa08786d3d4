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
kept, one not used for long going first (the CLOCK approximation of least
recently used), and a key idle for longer than
``idle_ttl`` seconds is forgotten; a forgotten key's state goes with it (its
breaker closes, its tokens refill), and it comes back with a fresh policy.

A key is never forgotten while a call holds it: a half-open probe, a
bulkhead slot or a queued waiter always finishes on the policy it started
on. So the number of keys held is at most ``max_keys``, or the number of
keys with a call in flight when that is larger (each such call holds its
own memory anyway).

How it works: :class:`_Table` is the engine. ``str``, ``int`` and ``bytes``
keys index a dict directly (their hash and equality are the interpreter's);
any other key is filed under its hash (an ``int``), so that no dict
operation ever runs user code: the key's own ``__hash__`` runs once per call
and its ``__eq__`` when comparing with the entry found, both outside any
lock, so a key that is unhashable or raises fails with
:class:`PolicyKeyError` and no lock is ever held by it. The
success path takes no lock at all; adding and forgetting keys takes one,
under which no user code (key, factory, policy, clock) runs.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, cast

from resilient.breaker import CircuitBreaker, CircuitState
from resilient.clock import Clock
from resilient.errors import ResilienceError
from resilient.events import EventSite
from resilient.policy import AsyncFn, AsyncWrapped, Pipeline, Policy, ShadowMode, SyncFn
from resilient.validate import check_callable, check_clock, check_int, check_seconds, check_switch, read_switch

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


def _describe_key(key: Any) -> str:
    """``repr(key)`` cut to a readable length, even when the key's ``__repr__`` raises."""
    try:
        text = repr(key)
    except Exception:
        return f"<{type(key).__name__} object>"
    if not isinstance(text, str):  # pragma: no cover - repr() enforces str
        return f"<{type(key).__name__} object>"
    return text if len(text) <= _MAX_KEY_REPR else text[: _MAX_KEY_REPR - 3] + "..."


# Key types whose hash and equality are the interpreter's own (C code): such
# keys index the table directly. Any other key is indexed by its hash (an
# int), so that no dict operation under the lock runs a user's __eq__.
_DIRECT_TYPES = (str, int, bytes)
# Items every entry's holder list keeps, so that taking and giving back an
# entry never resizes the list (a list emptied by pop() frees its storage).
_BASE = 2


def _unbound(*_args: Any, **_kwargs: Any) -> Any:  # pragma: no cover - first_id -1 never matches a build
    raise AssertionError("resilient: a keyed entry ran a closure it never bound")


class _Entry(list[None]):
    """One key: its policy, the closures built over it, and who holds it.

    The entry is itself the list of its holders: ``_BASE`` placeholder items
    plus one per call in flight. ``append()`` and ``pop()`` are atomic, so
    the success path counts its callers without a lock, on the object it
    already holds.
    """

    __slots__ = ("alive", "calls", "direct", "first_call", "first_id", "key", "last", "policy", "used", "where")

    def __init__(self, key: Any, where: Any, direct: bool, policy: Policy) -> None:
        super().__init__((None,) * (_BASE + 1))  # born held by the call that built it
        self.key = key
        # Where the table files it: the key itself (direct) or its hash.
        self.where = where
        self.direct = direct
        self.policy = policy
        # False once evicted: a caller that found it a moment before looks again.
        self.alive = True
        # Set by every call that finds the entry, cleared when the evictor
        # passes it over: the "second chance" of the CLOCK algorithm.
        self.used = False
        # When the last call finished (clock time; only kept with idle_ttl).
        self.last = 0.0
        # The closure of the first function wrapped (written once, under the
        # table's lock, call before id), then the others' by build id.
        self.first_id = -1
        self.first_call: Callable[..., Any] = _unbound
        self.calls: dict[int, Callable[..., Any]] | None = None

    def bind(
        self, build_id: int, fn: Callable[..., Any], site: EventSite, is_async: bool, lock: threading.Lock
    ) -> Callable[..., Any]:
        """The closure of this key's policy around ``fn``, built once per wrapped function.

        The first function's closure is read by the adapters themselves
        (``first_id``/``first_call``); the others' come from here.
        """
        calls = self.calls
        if calls is not None and (call := calls.get(build_id)) is not None:
            return call
        call = self.policy.build(fn, site, is_async)  # user code (a custom policy): no lock
        with lock:
            if self.first_id == -1:
                self.first_call = call
                self.first_id = build_id
                return call
        if calls is None or len(calls) >= _MAX_CALLS_PER_KEY:
            calls = self.calls = {}
        calls[build_id] = call
        return call


class _Table:
    """The engine: which entry serves a key, and which entries to forget.

    No I/O, no awaits. The success path (:attr:`acquire` / :attr:`release`,
    closures over locals) takes no lock: it finds the entry, announces
    itself in the entry's holders and then checks that the entry is still
    alive; an evictor does the mirror image (marks the entry dead, then
    checks that nobody holds it, and revives it if somebody does), so an
    entry is never forgotten while a call holds it. Adding and evicting
    entries happens under ``lock``, over dicts whose keys are ints or
    builtin keys: no user code (key, factory, policy, clock) runs under it.

    Which idle key goes first is decided by the CLOCK algorithm (the
    second-chance approximation of least-recently-used that page caches
    use): entries wait in a ring in arrival order; the evictor looks at the
    oldest, and one used since it was last looked at gets moved to the back
    instead of evicted. The success path only sets a flag: it never
    reorders anything.
    """

    def __init__(
        self,
        key: Callable[..., Hashable],
        key_error: Callable[[Exception], PolicyKeyError],
        build: Callable[[Any], Policy],
        max_keys: int,
        idle_ttl: float | None,
        clock: Clock,
        bad_key: Callable[[Any, Exception], PolicyKeyError],
    ) -> None:
        self.max_keys = max_keys
        self.idle_ttl = idle_ttl
        self.lock = threading.Lock()
        # Builtin keys -> their entry.
        self.direct: dict[Any, _Entry] = {}
        # Other keys: hash -> the entry, or a tuple of the entries whose keys share that hash.
        self.hashed: dict[int, _Entry | tuple[_Entry, ...]] = {}
        # id(entry) -> entry: the CLOCK ring, oldest first. Changed under the lock only.
        self.ring: OrderedDict[int, _Entry] = OrderedDict()
        self.evicted = 0
        self.built = 0
        self._key = key
        self._key_error = key_error
        self._build = build
        self._bad_key = bad_key
        self._now = clock.now  # SystemClock.now is time.monotonic itself: no wrapper on the hot path
        self.acquire = self._make_acquire()
        self.release = self._make_release()

    # -- the success path ----------------------------------------------------

    def _make_acquire(self) -> Callable[[tuple[Any, ...], dict[str, Any]], _Entry]:
        key_fn = self._key
        key_error = self._key_error
        direct_get = self.direct.get
        hashed_get = self.hashed.get
        ttl = self.idle_ttl
        now_fn = self._now
        bad_key = self._bad_key
        slow = self._acquire_slow
        busy = _BASE + 1  # len() of an entry held by one call

        def acquire(args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Entry:
            """The entry of the call's key, held until :func:`release`."""
            try:
                key = key_fn(*args, **kwargs)
            except Exception as exc:
                raise key_error(exc) from exc
            kind = type(key)
            if kind is str or kind is int or kind is bytes:
                found = direct_get(key)
            else:
                try:
                    seen = hashed_get(hash(key))
                    found = seen if type(seen) is _Entry and (seen.key is key or seen.key == key) else None
                except Exception as exc:
                    raise bad_key(key, exc) from exc
            if found is not None:
                found.append(None)
                if found.alive and (ttl is None or len(found) > busy or now_fn() - found.last <= ttl):
                    found.used = True
                    return found
                found.pop()
            return slow(key)

        return acquire

    def _make_release(self) -> Callable[[_Entry], None]:
        ring = self.ring
        ttl = self.idle_ttl
        now_fn = self._now
        max_keys = self.max_keys
        trim = self.trim

        def release(entry: _Entry) -> None:
            """Hand back an entry taken by :func:`acquire` (exactly once)."""
            if ttl is not None:
                entry.last = now_fn()  # before the pop: an evictor that sees it idle sees this too
            entry.pop()
            if len(ring) > max_keys:
                trim()

        return release

    # -- the slow path -------------------------------------------------------

    def _look(self, key: Any) -> tuple[bool, Any, _Entry | tuple[_Entry, ...] | None, _Entry | None]:
        """(direct, index, what the table files there, the entry of ``key``); no lock, runs the key's code."""
        if type(key) in _DIRECT_TYPES:
            entry = self.direct.get(key)
            return True, key, entry, entry
        try:
            index = hash(key)
            seen = self.hashed.get(index)
            found = None
            if type(seen) is _Entry:
                found = seen if seen.key is key or seen.key == key else None
            elif seen is not None:
                found = next((e for e in cast("tuple[_Entry, ...]", seen) if e.key is key or e.key == key), None)
        except Exception as exc:
            raise self._bad_key(key, exc) from exc
        return False, index, seen, found

    def _acquire_slow(self, key: Any) -> _Entry:
        """A new key, an expired one, or a race with an eviction: look again, build if need be."""
        lock = self.lock
        ttl = self.idle_ttl
        policy: Policy | None = None
        victims: list[_Entry] = []
        while True:
            now = self._now() if ttl is not None else 0.0
            direct, index, seen, found = self._look(key)
            if found is not None:
                found.append(None)
                if found.alive and (ttl is None or len(found) > _BASE + 1 or now - found.last <= ttl):
                    found.used = True
                    return found
                found.pop()
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
                table: dict[Any, Any] = self.direct if direct else self.hashed
                if table.get(index) is not seen:
                    continue  # changed while we looked: look again
                entry = _Entry(key, index, direct, policy)
                if seen is None:
                    table[index] = entry
                elif type(seen) is _Entry:
                    table[index] = (seen, entry)
                else:
                    table[index] = (*seen, entry)
                self.ring[id(entry)] = entry
                self.built += 1
                victims += self._trim_locked(now, _SWEEP_STEP)
                return entry

    def _evict_locked(self, entry: _Entry) -> bool:
        """Forget ``entry`` unless a call holds it; whether it was forgotten."""
        if len(entry) > _BASE:
            return False
        entry.alive = False
        if len(entry) > _BASE:  # a caller arrived between the two checks: it keeps the entry
            entry.alive = True
            return False
        del self.ring[id(entry)]
        table: dict[Any, Any] = self.direct if entry.direct else self.hashed
        slot = table[entry.where]
        if slot is entry:
            del table[entry.where]
        else:
            rest = tuple(e for e in slot if e is not entry)
            table[entry.where] = rest[0] if len(rest) == 1 else rest
        self.evicted += 1
        return True

    def _trim_locked(self, now: float, ttl_steps: int) -> list[_Entry]:
        """Forget up to ``ttl_steps`` looks' worth of expired idle entries, then idle ones past ``max_keys``.

        Returns the victims, for the caller to drop once the lock is
        released (freeing a policy must not run under it).
        """
        ring = self.ring
        victims: list[_Entry] = []
        ttl = self.idle_ttl
        if ttl is not None:
            for _ in range(min(ttl_steps, len(ring))):
                oldest = next(iter(ring.values()))
                if len(oldest) == _BASE and now - oldest.last > ttl and self._evict_locked(oldest):
                    victims.append(oldest)
                else:
                    ring.move_to_end(id(oldest))  # keeps its "used" flag: this look was about time
        looked = 0
        # Each entry is looked at most twice: once to take its second chance, once more to go.
        while len(ring) > self.max_keys and looked < 2 * len(ring):
            oldest = next(iter(ring.values()))
            looked += 1
            if not oldest.used and self._evict_locked(oldest):
                victims.append(oldest)
            else:
                oldest.used = False
                ring.move_to_end(id(oldest))
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
            victims = self._trim_locked(now, len(self.ring))
        del victims

    def entries(self) -> list[_Entry]:
        """The live entries, oldest first (a snapshot)."""
        with self.lock:
            return list(self.ring.values())

    def get(self, key: Any) -> _Entry | None:
        """The live entry of ``key``, without taking it."""
        found = self._look(key)[3]
        return found if found is not None and found.alive else None


def _shadowable(policy: Policy) -> list[ShadowMode]:
    """The policies with an ``enforce=`` switch in ``policy`` (itself, or inside its pipelines)."""
    if isinstance(policy, Pipeline):
        return [part for inner in policy for part in _shadowable(inner)]
    return [policy] if isinstance(policy, ShadowMode) else []


def _add_switch(policy: ShadowMode, switch: bool | Callable[[], bool]) -> None:
    """Make ``policy`` enforce only while its own switch and ``switch`` both say so."""
    own = policy.enforce_switch
    if own is True:
        policy.set_enforce(switch)
    elif switch is False or own is False:
        policy.set_enforce(False)
    else:
        policy.set_enforce(lambda: read_switch(own) and read_switch(switch))


def _holders(entry: _Entry) -> int:
    """Calls in flight through ``entry``."""
    return len(entry) - _BASE


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
        enforce: shadow mode for every key at once: ``True`` (default), or
            ``False`` or a callable returning a bool (a feature flag, read at
            each would-be rejection). Every policy with an ``enforce=``
            switch that the factory builds (the policy itself, or inside its
            pipeline) enforces only while both its own switch and this one
            say so; otherwise it decides as usual, emits ``would_reject``
            and lets the call through. :meth:`status` sums their
            ``would_reject`` counts.

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
        enforce: bool | Callable[[], bool] = True,
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
        #: The shadow-mode switch applied to every policy built (see the class documentation).
        self.enforce: bool | Callable[[], bool] = check_switch(enforce, "enforce")
        self._table = _Table(
            self.key,
            self._key_function_error,
            self._build_policy,
            self.max_keys,
            self.idle_ttl,
            self.clock,
            self._bad_key,
        )
        self._build_ids = itertools.count()

    # -- errors --------------------------------------------------------------

    def _bad_key(self, key: Any, exc: Exception) -> PolicyKeyError:
        if isinstance(exc, TypeError) and "unhashable" in str(exc):
            what, reason = f"the key {_describe_key(key)} is not hashable", "unhashable"
        else:
            what = f"the key {_describe_key(key)} raised {type(exc).__name__}: {exc} when hashed or compared"
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
                f"resilient: {self.label()}: factory({_describe_key(key)}) raised; "
                "nothing was kept for that key and the call was not made"
            )
            raise
        if not isinstance(policy, Policy):
            raise TypeError(
                f"{self.label()}: factory must return a Policy, got {policy!r} for the key {_describe_key(key)}"
            )
        if self.enforce is not True:
            for part in _shadowable(policy):
                _add_switch(part, self.enforce)
        return policy

    # -- inspection ----------------------------------------------------------

    def __len__(self) -> int:
        """Keys held now (expired ones are dropped first)."""
        self._table.sweep()
        return len(self._table.ring)

    def get(self, key: Hashable) -> Policy | None:
        """The policy held for ``key``, or ``None``; never builds one, never refreshes its use.

        Raises:
            PolicyKeyError: ``key`` is not hashable, or raises when hashed or compared.
        """
        entry = self._table.get(key)
        return entry.policy if entry is not None else None

    @property
    def enforcing(self) -> bool:
        """Whether this keyed policy's ``enforce`` switch says enforce now."""
        return read_switch(self.enforce)

    @property
    def would_reject(self) -> int:
        """Calls the held keys' policies let through in shadow mode but would have rejected."""
        return sum(part.would_reject for e in self._table.entries() for part in _shadowable(e.policy))

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
            "in_use": sum(1 for e in entries if _holders(e)),
            "open": sum(1 for r in ranked if r[0][0] >= _RANK[CircuitState.OPEN]),
            "built": table.built,
            "evicted": table.evicted,
            "enforcing": read_switch(self.enforce),
            "would_reject": sum(part.would_reject for e in entries for part in _shadowable(e.policy)),
            "worst": [
                {"key": _describe_key(e.key), "in_use": _holders(e), "status": _status(e.policy)} for _, _, e in worst
            ],
        }

    def worst(self, limit: int | None = 10) -> list[tuple[str, Policy]]:
        """The ``limit`` worst keys (``None``: all), worst first, as ``(key text, policy)`` pairs.

        The ranking of :meth:`status`; the key text is its ``repr``, cut to
        a readable length. Never builds a policy nor refreshes a key's use,
        so telemetry reading it does not keep idle keys alive. Costs
        O(keys held).
        """
        entries = self._table.entries()
        limit = len(entries) if limit is None else check_int(limit, "limit", minimum=0)
        ranked = [(_rank(e.policy), -i, e) for i, e in enumerate(reversed(entries))]
        worst = heapq.nlargest(limit, ranked, key=lambda r: (r[0], r[1]))
        return [(_describe_key(e.key), e.policy) for _, _, e in worst]

    # -- the adapters --------------------------------------------------------

    def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        """Each call: take the key's entry, run its policy's closure around ``fn``, hand the entry back."""
        acquire, release, lock = self._table.acquire, self._table.release, self._table.lock
        build_id = next(self._build_ids)

        async def keyed_call(*args: Any, **kwargs: Any) -> Any:
            entry = acquire(args, kwargs)
            try:
                call = entry.first_call if entry.first_id == build_id else entry.bind(build_id, fn, site, True, lock)
                return await call(*args, **kwargs)
            finally:
                release(entry)

        return keyed_call

    def build_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        """The same as :meth:`build_async`, for synchronous functions (threads included)."""
        acquire, release, lock = self._table.acquire, self._table.release, self._table.lock
        build_id = next(self._build_ids)

        def keyed_call(*args: Any, **kwargs: Any) -> Any:
            entry = acquire(args, kwargs)
            try:
                call = entry.first_call if entry.first_id == build_id else entry.bind(build_id, fn, site, False, lock)
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

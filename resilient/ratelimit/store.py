"""Where a limiter's buckets live: the :class:`RateStore` protocol and the in-memory default.

The policy (:class:`~resilient.ratelimit.RateLimiter`,
:class:`~resilient.ratelimit.KeyedRateLimiter`) decides what a refusal
means (wait, reject, or, in shadow mode, let through) and reports it; the
store owns the buckets and the one GCRA step that moves them. A remote store
(:class:`resilient.redis.RedisRateStore`) does each step in one atomic
round trip without the policy changing.

The GCRA step (the "generic cell rate algorithm" of ATM networks, also used
by redis-cell): a bucket is one float, the *theoretical arrival time* (TAT),
the time at which it would be full again. A call costing ``cost`` seconds of
the timeline (``tokens * interval``), arriving at ``now``, would have to wait
``wait = max(TAT, now) + cost - now - tau``. ``wait <= 0``: it goes now and
the TAT moves to ``max(TAT, now) + cost``. ``0 < wait <= max_wait``: it
*reserves* its turn (the TAT moves the same) and the caller sleeps ``wait``.
Otherwise the call is refused and nothing changes; ``wait`` is its
``retry_after``. This step is written once here and once in Lua
(:data:`resilient.redis.GCRA_SCRIPT`); ``tests/test_ratelimit_model.py``
checks both against the same reference model.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any, Protocol, runtime_checkable

from cachetools import LRUCache

from resilient.ratelimit.engine import EPS, RateConfig, RateDecision
from resilient.validate import check_int

__all__ = ["AsyncRateStore", "InMemoryRateStore", "RateStore"]

_NEG_INF = float("-inf")


@runtime_checkable
class RateStore(Protocol):
    """The buckets of one limiter and the GCRA step that moves them.

    Contract (what :class:`~resilient.ratelimit.RateLimiter` and
    :class:`~resilient.ratelimit.KeyedRateLimiter` rely on):

    * One store instance serves one limiter; :meth:`bind` is called once, in
      the limiter's constructor, before anything else.
    * ``key`` is ``None`` for a :class:`~resilient.ratelimit.RateLimiter`'s
      one bucket, else the caller's key (any hashable; a remote store
      encodes ``str(key)``). A missing bucket is a full one. If looking the
      key up raises (its ``__hash__``, ``__eq__`` or ``__str__``), that
      exception comes out as it is, with no lock held: the limiter turns it
      into :class:`~resilient.ratelimit.RateLimitKeyError`.
    * ``cost`` is in seconds of the bucket's timeline (``tokens *
      config.interval``); ``now`` is the limiter's clock reading. A remote
      store may use its own time instead (Redis ``TIME``: the replicas'
      clocks then never matter).
    * :meth:`acquire` is the GCRA step (see the module docs): it returns
      ``0.0`` when the call goes now, ``wait`` with ``0 < wait <= max_wait``
      when it reserved a turn ``wait`` seconds away, and ``wait > max_wait``
      when it refused (nothing changed; ``wait`` is the ``retry_after``).
      The limiter asks with ``max_wait=0.0`` first (the fast path), and
      again with its real bound only when the call may wait.
    * :meth:`refund` gives back a reservation whose waiter will not run
      (cancelled): the store may hand the freed turn to the next caller in
      place (:class:`InMemoryRateStore`) or give the capacity back at the
      end of the queue (Redis); either way no turn is handed out twice and
      the calls that run conform to the bucket.
    * Methods never raise for a store failure: a remote store that cannot
      reach its backend fails open to local state and logs it.
    * Thread-safety: the methods can be called from several threads. No user
      code runs under a store's lock except the key's own hash and equality.
    """

    @property
    def backend(self) -> str:
        """Where the decisions are made now: ``"memory"``, ``"redis"``, ``"local"`` (failed open)."""
        ...

    def bind(self, config: RateConfig) -> None:
        """Take the limiter's bucket options; called once, before any other method.

        Raises:
            RuntimeError: the store is already bound to another limiter.
            ValueError: the store cannot serve these options (e.g. a remote
                store without a name to derive its key from).
        """
        ...

    def acquire(self, key: Hashable, cost: float, now: float, max_wait: float) -> float:
        """The GCRA step: ``0.0`` (go), a reserved wait ``<= max_wait``, or a refusal's ``retry_after``."""
        ...

    def refund(self, key: Hashable, cost: float, now: float, wait: float) -> None:
        """Give back the turn that ``acquire(key, cost, now, max_wait)`` reserved ``wait`` seconds away."""
        ...

    def try_acquire(self, key: Hashable, cost: float, now: float) -> RateDecision:
        """:meth:`acquire` with ``max_wait=0.0``, answered as a :class:`RateDecision` (for headers)."""
        ...

    def tokens(self, key: Hashable, now: float) -> float:
        """Tokens in ``key``'s bucket now, with no I/O (a remote store: from its last decision)."""
        ...

    def status(self) -> dict[str, Any]:
        """JSON-able facts for the limiter's ``status()`` (keys held, backend health...)."""
        ...


@runtime_checkable
class AsyncRateStore(RateStore, Protocol):
    """A store with I/O: async twins of the per-call methods.

    The limiter's async paths (wrapped coroutines, :meth:`acquire`,
    :meth:`atry_acquire`) await these; its sync paths call the blocking
    ones. Same contract as :class:`RateStore`.
    """

    @property
    def has_sync(self) -> bool:
        """Whether the blocking methods can be used (a sync client is there)."""
        ...

    @property
    def has_async(self) -> bool:
        """Whether the async methods can be used (an async client is there)."""
        ...

    async def aacquire(self, key: Hashable, cost: float, now: float, max_wait: float) -> float:
        """Async :meth:`RateStore.acquire`."""
        ...

    async def arefund(self, key: Hashable, cost: float, now: float, wait: float) -> None:
        """Async :meth:`RateStore.refund`."""
        ...

    async def atry_acquire(self, key: Hashable, cost: float, now: float) -> RateDecision:
        """Async :meth:`RateStore.try_acquire`."""
        ...


class _Buckets(LRUCache[Hashable, list[float]]):
    """Per-key buckets, least recently used evicted first; a miss creates a full bucket."""

    def __missing__(self, key: Hashable) -> list[float]:
        state = [_NEG_INF]
        self[key] = state
        return state


class InMemoryRateStore:
    """The default store: buckets in this process, one lock, O(1) per call.

    Args:
        max_keys: buckets kept for a keyed limiter (>= 1). The least recently
            used bucket is dropped when a new key arrives, so a flood of
            distinct keys cannot grow memory; a dropped key comes back with
            a full bucket. The ``None`` key (a plain limiter's bucket) is
            kept apart and never dropped.

    A bucket is a list: the TAT first, then the freed turns (holes) left by
    waiters cancelled in the middle of the queue, flattened as start, end,
    start, end... in order. While a hole exists a waiter is still queued
    behind it, so the bucket is too far ahead for the fast path to admit
    anyone; a later caller that can still use the freed turn in time takes
    it, so no turn is lost and none is handed out twice.
    """

    __slots__ = ("_buckets", "_config", "_lock", "_single", "_tau", "_tau_eps", "max_keys")

    backend = "memory"

    def __init__(self, *, max_keys: int = 10_000) -> None:
        #: Buckets kept for keyed use.
        self.max_keys: int = check_int(max_keys, "max_keys")
        self._lock = threading.Lock()
        self._single: list[float] = [_NEG_INF]
        self._buckets = _Buckets(maxsize=self.max_keys)
        self._config: RateConfig | None = None
        self._tau = 0.0
        self._tau_eps = 0.0

    def bind(self, config: RateConfig) -> None:
        """Take the limiter's bucket options (once)."""
        if self._config is not None:
            raise RuntimeError("this InMemoryRateStore is already bound to a limiter; give each limiter its own")
        self._config = config
        self._tau = config.tau
        self._tau_eps = config.tau + EPS

    @property
    def config(self) -> RateConfig:
        """The options given to :meth:`bind`."""
        if self._config is None:
            raise RuntimeError("this InMemoryRateStore is not bound to a limiter yet")
        return self._config

    @property
    def keys(self) -> int:
        """Keyed buckets held now (<= ``max_keys``)."""
        return len(self._buckets)

    # The one GCRA step in Python. Called with the lock held, on a bucket
    # that holds only floats: nothing here can raise.
    def _step(self, state: list[float], cost: float, now: float, max_wait: float) -> float:
        tat = state[0]
        if tat < now:
            tat = now
        new = tat + cost
        if new - now <= self._tau_eps:
            state[0] = new
            return 0.0
        tau = self._tau
        wait = new - now - tau
        hole, start = _find_hole(state, cost, now, tau)
        if hole:
            wait = start + cost - now - tau
            if wait <= EPS:  # a freed turn that is due now
                _fill_hole(state, hole, start, cost)
                return 0.0
            if wait <= max_wait:
                _fill_hole(state, hole, start, cost)
            return wait
        if wait <= max_wait:
            state[0] = new  # reserve our turn, in arrival order
        return wait

    def _fits_now(self) -> tuple[threading.Lock, list[float], _Buckets, float]:
        """The lock, the single bucket, the keyed ones and ``tau`` + EPS: what a shell inlines a call that fits with.

        :meth:`_step`'s first case (the bucket has room: take it) is the
        whole success path of a local limiter; a shell that inlines it calls
        :meth:`acquire` for everything else. Only for this exact class (a
        subclass may override :meth:`acquire`).
        """
        return self._lock, self._single, self._buckets, self._tau_eps

    def acquire(self, key: Hashable, cost: float, now: float, max_wait: float) -> float:
        """The GCRA step on ``key``'s bucket (see :class:`RateStore`)."""
        with self._lock:
            return self._step(self._single if key is None else self._buckets[key], cost, now, max_wait)

    def refund(self, key: Hashable, cost: float, now: float, wait: float) -> None:
        """Free the reservation ending at ``now + wait + tau``, in place."""
        end = now + wait + self._tau
        with self._lock:
            # A bucket evicted meanwhile took its reservation with it: nothing to give back.
            state = self._single if key is None else self._buckets.get(key)
            if state is not None:
                _give_back(state, end - cost, end)

    def try_acquire(self, key: Hashable, cost: float, now: float) -> RateDecision:
        """Take ``cost`` now or refuse; never reserves."""
        with self._lock:
            state = self._single if key is None else self._buckets[key]
            wait = self._step(state, cost, now, 0.0)
            tat = state[0]
        return self.config.decision(wait, tat - now)

    def tokens(self, key: Hashable, now: float) -> float:
        """Tokens in ``key``'s bucket now; reading does not create or refresh a bucket."""
        if key is None:
            tat = self._single[0]
        else:
            with self._lock:
                state = self._buckets.get(key)
            if state is None:
                return float(self.config.burst)
            tat = state[0]
        return self.config.tokens(tat - now)

    def status(self) -> dict[str, Any]:
        """Nothing to add: the limiter shows its keys and options itself."""
        return {}

    def __repr__(self) -> str:
        return f"InMemoryRateStore(max_keys={self.max_keys})"


# Freed turns. ``state[1:]`` holds (start, end) pairs of the bucket's virtual
# timeline left free by cancelled waiters, in order, never adjacent. A call
# of cost c taking the part (x, x + c) of a hole runs at x + c - tau, which
# must not be in the past: x >= now + tau - c. Taking it then is exactly as
# if the cancelled waiter (or a smaller part of it) had run, so the rate holds.


def _find_hole(state: list[float], cost: float, now: float, tau: float) -> tuple[int, float]:
    """The first freed turn that a call of ``cost`` arriving at ``now`` fits in: (its index, where the call starts).

    ``(0, 0.0)`` when there is none. Drops the freed turns that have gone by
    (nobody can use them any more).
    """
    i = 1
    while i < len(state):
        end = state[i + 1]
        if now + tau > end + EPS:
            del state[i : i + 2]
            continue
        start = max(state[i], now + tau - cost)
        if start + cost <= end + EPS:
            return i, start
        i += 2
    return 0, 0.0


def _fill_hole(state: list[float], i: int, start: float, cost: float) -> None:
    """Reserve ``(start, start + cost)`` in the freed turn at ``i``."""
    end = start + cost
    if state[i + 1] - end > EPS:
        # What is left before ``start`` can never be used (see _find_hole); what is after can.
        state[i] = end
    else:
        del state[i : i + 2]


def _give_back(state: list[float], start: float, end: float) -> None:
    """Free the reservation ``(start, end)`` of a waiter that will not run."""
    if end >= state[0] - EPS:
        # The last reservation: the bucket simply moves back, over a freed turn just before it too.
        # Never forward: a bucket that is already behind has no such reservation left to give.
        if start < state[0]:
            state[0] = start
            if len(state) > 1 and state[-1] >= start - EPS:
                state[0] = state[-2]
                del state[-2:]
        return
    holes = [(state[i], state[i + 1]) for i in range(1, len(state), 2)]
    holes.append((start, end))
    holes.sort()
    merged: list[list[float]] = []
    for s, e in holes:
        if merged and s <= merged[-1][1] + EPS:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    state[1:] = [bound for pair in merged for bound in pair]

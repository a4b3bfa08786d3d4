"""Where a circuit's state lives: the :class:`BreakerStore` protocol and the in-memory default.

The policy (:class:`~resilient.breaker.CircuitBreaker`) decides *what* an
outcome is (failure, success, neither) and fires events and listeners; the
store owns *all* the state and the window math: the current
:class:`~resilient.breaker.BreakerSnapshot`, the counters, the probe slots
and every transition. That split lets a remote store (Redis, issue 10) do
each decision in one atomic round trip (a Lua script using Redis ``TIME``)
without the policy changing.

Call protocol, per call:

1. The breaker reads :attr:`BreakerStore.snapshot` (local, no I/O). CLOSED:
   the call is admitted and the snapshot is its permit. ISOLATED, or OPEN
   with ``now < until``: rejected locally, no store call.
2. Otherwise (OPEN past ``until``, or HALF_OPEN) it calls
   :meth:`BreakerStore.acquire`, which atomically admits a probe (moving
   OPEN to HALF_OPEN if needed) or refuses.
3. After the call, exactly one of :meth:`~BreakerStore.record_success`,
   :meth:`~BreakerStore.record_failure` or :meth:`~BreakerStore.release`
   (cancelled, or an ``ignore=`` exception) with the permit.

So: one store call per outcome, plus one per probe admission; none to
admit in CLOSED or to reject in OPEN/ISOLATED.
"""

from __future__ import annotations

import math
import threading
from typing import Protocol, runtime_checkable

from resilient.breaker.state import BreakerConfig, BreakerMetrics, BreakerSnapshot, CircuitState
from resilient.validate import check_int

__all__ = ["AsyncBreakerStore", "BreakerStore", "InMemoryBreakerStore"]

_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN
_ISOLATED = CircuitState.ISOLATED


@runtime_checkable
class BreakerStore(Protocol):
    """The state of one circuit: snapshot, counters, probe slots, transitions.

    Contract (what :class:`~resilient.breaker.CircuitBreaker` relies on):

    * One store instance serves one breaker; :meth:`bind` is called once, in
      the breaker's constructor, before anything else.
    * :attr:`snapshot` is a plain read with no I/O and no lock; a remote
      store returns its last known snapshot. It is replaced (never mutated)
      on every transition, with a new ``epoch``.
    * A *permit* is the snapshot current when the call was admitted (or the
      one :meth:`acquire` returned). Outcomes with a permit whose ``epoch`` is
      not current are ignored: the call started before the last transition.
      While HALF_OPEN every admitted call is a probe, so a HALF_OPEN permit
      means "probe".
    * ``record_*`` return the new snapshot when *this* outcome caused a
      transition (so the breaker fires events and listeners exactly once per
      transition), otherwise ``None``.
    * ``now`` is the breaker's clock reading at the end of the call, or
      ``None`` when the breaker did not read it (consecutive mode without
      slow-call detection): read ``config.clock`` only if you need time.
    * Methods never raise for a store failure: a remote store that cannot
      reach its backend fails open to local state and logs it.
    * Thread-safety: the sync methods can be called from several threads.
    * No user code under a lock: ``config.break_duration_for`` (a user's
      callable) and ``config.clock`` may read the breaker
      (``breaker.metrics``), so a store calls them with no lock held.

    Semantics (the reference is :class:`InMemoryBreakerStore`; the
    hypothesis model in ``tests/test_breaker_model.py`` checks it):

    * CLOSED, ratio mode: a bucketed sliding window over
      ``sampling_duration``; after a failure, if ``calls >=
      minimum_throughput`` and ``failures / calls >= failure_ratio``, OPEN.
      Consecutive mode: after ``consecutive_failures`` failures in a row, OPEN.
      Both (``config.both_thresholds``): whichever of the two is reached first.
      Opening sets ``until = now + config.break_duration_for(failed_probes,
      last_break)``.
    * OPEN past ``until``: :meth:`acquire` moves to HALF_OPEN (new epoch,
      ``until = now + break_duration`` of the opening) and admits a probe.
    * HALF_OPEN: :meth:`acquire` admits while fewer than
      ``half_open_max_calls`` probes are in flight; past ``until`` it gives up
      the probes in flight (new HALF_OPEN epoch) and admits. A probe success
      counts; ``half_open_successes`` of them close the circuit (window and
      counters cleared). A probe failure reopens it with ``failed_probes + 1``.
      :meth:`release` frees a probe slot.
    """

    @property
    def snapshot(self) -> BreakerSnapshot:
        """The current (or, for a remote store, last known) snapshot."""
        ...

    def bind(self, config: BreakerConfig) -> None:
        """Take the breaker's options; called once, before any other method.

        Raises:
            RuntimeError: the store is already bound to another breaker.
        """
        ...

    def acquire(self, now: float) -> tuple[BreakerSnapshot | None, BreakerSnapshot | None]:
        """Try to admit a call when :attr:`snapshot` is not CLOSED.

        Returns ``(permit, transition)``: ``permit`` is ``None`` when the call
        is rejected; ``transition`` is the new snapshot when this call moved
        the circuit (OPEN to HALF_OPEN), else ``None``. If the circuit turned
        out to be CLOSED, the permit is the CLOSED snapshot.
        """
        ...

    def record_success(self, permit: BreakerSnapshot, now: float | None = None) -> BreakerSnapshot | None:
        """Count a successful call; return the new snapshot if it closed the circuit."""
        ...

    def record_failure(self, permit: BreakerSnapshot, now: float | None = None) -> BreakerSnapshot | None:
        """Count a failed call; return the new snapshot if it opened the circuit."""
        ...

    def release(self, permit: BreakerSnapshot) -> None:
        """The call ended with no outcome to count (cancelled, ignored): free its probe slot."""
        ...

    def transition(self, to: CircuitState, now: float) -> BreakerSnapshot:
        """Manual control: move to CLOSED (reset, counters cleared), OPEN or ISOLATED.

        Always starts a new epoch (even CLOSED to CLOSED, which clears the
        counters) and returns the new snapshot, ``manual=True``.

        Raises:
            ValueError: ``to`` is HALF_OPEN (only time leads there).
        """
        ...

    def metrics(self, now: float) -> BreakerMetrics:
        """The counters, with the window advanced to ``now``."""
        ...


@runtime_checkable
class AsyncBreakerStore(BreakerStore, Protocol):
    """A store with I/O: async twins of the per-call methods.

    When a store has these, the breaker's async path awaits them instead of
    calling the blocking ones (which the sync path and manual control still
    use). Same contract as the sync methods.
    """

    async def aacquire(self, now: float) -> tuple[BreakerSnapshot | None, BreakerSnapshot | None]:
        """Async :meth:`BreakerStore.acquire`."""
        ...

    async def arecord_success(self, permit: BreakerSnapshot, now: float | None = None) -> BreakerSnapshot | None:
        """Async :meth:`BreakerStore.record_success`."""
        ...

    async def arecord_failure(self, permit: BreakerSnapshot, now: float | None = None) -> BreakerSnapshot | None:
        """Async :meth:`BreakerStore.record_failure`."""
        ...

    async def arelease(self, permit: BreakerSnapshot) -> None:
        """Async :meth:`BreakerStore.release`."""
        ...


class InMemoryBreakerStore:
    """The default store: state in this process, O(1) per call, no allocation.

    Ratio mode keeps a sliding window of ``buckets`` time buckets (10 by
    default, as Polly) of ``sampling_duration / buckets`` seconds each: the
    window covers between ``(buckets - 1)/buckets`` and all of
    ``sampling_duration``. Old buckets expire when the clock passes them;
    there is no timer.

    A success in CLOSED state takes no lock: it bumps a counter (and, in
    ratio mode, rolls the bucket when its time is up). Under threads a
    concurrent increment can be lost, which skews a 100-call window by a
    call at worst; failures, probes and transitions take the lock and are
    exact.
    """

    def __init__(self, *, buckets: int = 10) -> None:
        self._buckets = check_int(buckets, "buckets")
        self._lock = threading.Lock()
        self._bound = False
        #: The current snapshot (read-only for everyone but the store).
        self.snapshot = BreakerSnapshot(_CLOSED, 0, 0.0)
        # The CLOSED snapshot, or None: the success fast path compares identity.
        self._closed: BreakerSnapshot | None = self.snapshot
        self._epoch = 0
        self._ratio = True
        # Window: the current bucket's counts plus a ring of past buckets.
        self._cur_calls = 0
        self._cur_failures = 0
        self._past_calls = 0
        self._past_failures = 0
        self._ring_calls = [0] * (buckets - 1)
        self._ring_failures = [0] * (buckets - 1)
        self._ring_pos = 0
        self._width = math.inf
        self._bucket_end = math.inf
        self._consecutive = 0
        self._in_flight = 0
        self._probe_successes = 0

    def bind(self, config: BreakerConfig) -> None:
        """Take the breaker's options (once)."""
        if self._bound:
            raise RuntimeError("this InMemoryBreakerStore is already bound to a breaker; give each breaker its own")
        self._bound = True
        self._config = config
        clock = config.clock
        self._now = clock.now
        self._ratio = config.ratio_mode
        self._width = config.sampling_duration / self._buckets
        now = self._now()
        self.snapshot = BreakerSnapshot(_CLOSED, 0, now)
        self._closed = self.snapshot
        self._bucket_end = now + self._width if self._ratio else math.inf

    # -- the window ----------------------------------------------------------

    def _roll(self, now: float) -> None:
        """Move the current bucket into the ring and expire old ones (under the lock)."""
        with self._lock:
            end = self._bucket_end
            if now < end:
                return  # another thread rolled it
            width = self._width
            steps = int((now - end) // width) + 1
            ring_c = self._ring_calls
            ring_f = self._ring_failures
            size = len(ring_c)
            if steps > size:
                # Even the current bucket has left the window.
                for i in range(size):
                    ring_c[i] = 0
                    ring_f[i] = 0
                self._past_calls = 0
                self._past_failures = 0
            else:
                pos = self._ring_pos
                calls, failures = self._cur_calls, self._cur_failures
                for _ in range(steps):
                    self._past_calls += calls - ring_c[pos]
                    self._past_failures += failures - ring_f[pos]
                    ring_c[pos] = calls
                    ring_f[pos] = failures
                    pos = (pos + 1) % size
                    calls = failures = 0
                self._ring_pos = pos
            self._cur_calls = 0
            self._cur_failures = 0
            self._bucket_end = end + steps * width

    def _clear_counts(self) -> None:
        for i in range(len(self._ring_calls)):
            self._ring_calls[i] = 0
            self._ring_failures[i] = 0
        self._past_calls = self._past_failures = 0
        self._cur_calls = self._cur_failures = 0
        self._consecutive = 0

    # -- transitions (under the lock) ----------------------------------------

    def _set(self, snap: BreakerSnapshot) -> BreakerSnapshot:
        self.snapshot = snap
        self._closed = snap if snap.state is _CLOSED else None
        self._in_flight = 0
        self._probe_successes = 0
        return snap

    def _open(self, now: float, failed_probes: int, duration: float, manual: bool = False) -> BreakerSnapshot:
        prev = self.snapshot
        self._epoch += 1
        return self._set(
            BreakerSnapshot(_OPEN, self._epoch, now, now + duration, failed_probes, duration, prev.state, manual)
        )

    def _close(self, now: float, manual: bool = False) -> BreakerSnapshot:
        prev = self.snapshot
        self._clear_counts()
        if self._ratio:
            self._bucket_end = now + self._width
        self._epoch += 1
        return self._set(
            BreakerSnapshot(_CLOSED, self._epoch, now, math.inf, 0, prev.break_duration, prev.state, manual)
        )

    def _half_open(self, now: float) -> BreakerSnapshot:
        prev = self.snapshot
        self._epoch += 1
        snap = self._set(
            BreakerSnapshot(
                _HALF_OPEN,
                self._epoch,
                now,
                now + prev.break_duration,
                prev.failed_probes,
                prev.break_duration,
                prev.state,
            )
        )
        self._in_flight = 1
        return snap

    # -- the protocol --------------------------------------------------------

    def acquire(self, now: float) -> tuple[BreakerSnapshot | None, BreakerSnapshot | None]:
        """Admit a probe, or refuse; see :meth:`BreakerStore.acquire`."""
        with self._lock:
            snap = self.snapshot
            state = snap.state
            if state is _CLOSED:
                return snap, None
            if state is _OPEN:
                if now < snap.until:
                    return None, None
                new = self._half_open(now)
                return new, new
            if state is _HALF_OPEN:
                if self._in_flight < self._config.half_open_max_calls:
                    self._in_flight += 1
                    return snap, None
                if now >= snap.until:
                    new = self._half_open(now)
                    return new, new
            return None, None

    def record_success(self, permit: BreakerSnapshot, now: float | None = None) -> BreakerSnapshot | None:
        """Count a success; see :meth:`BreakerStore.record_success`."""
        if permit is self._closed:
            if self._ratio:
                if now is None:
                    now = self._now()
                if now >= self._bucket_end:
                    self._roll(now)
            self._consecutive = 0
            self._cur_calls += 1
            return None
        return self._success_slow(permit, now)

    def _success_slow(self, permit: BreakerSnapshot, now: float | None) -> BreakerSnapshot | None:
        if now is None:
            now = self._now()  # a custom clock is user code: read it before taking the lock
        with self._lock:
            snap = self.snapshot
            if permit is not snap or snap.state is not _HALF_OPEN:
                return None  # stale: admitted before the last transition
            self._in_flight = max(0, self._in_flight - 1)
            self._probe_successes += 1
            if self._probe_successes >= self._config.half_open_successes:
                return self._close(now)
            return None

    def record_failure(self, permit: BreakerSnapshot, now: float | None = None) -> BreakerSnapshot | None:
        """Count a failure; see :meth:`BreakerStore.record_failure`."""
        if now is None:
            now = self._now()
        if self._ratio and permit is self._closed and now >= self._bucket_end:
            self._roll(now)
        with self._lock:
            snap = self.snapshot
            if permit is not snap:
                return None
            if snap.state is _HALF_OPEN:
                failed = snap.failed_probes + 1
            elif snap.state is not _CLOSED:
                return None
            else:
                self._cur_calls += 1
                self._cur_failures += 1
                self._consecutive += 1
                cfg = self._config
                limit = cfg.consecutive_failures
                if limit is None or self._consecutive < limit:
                    if not self._ratio:
                        return None
                    calls = self._past_calls + self._cur_calls
                    if calls < cfg.minimum_throughput or (self._past_failures + self._cur_failures) / calls < (
                        cfg.failure_ratio
                    ):
                        return None
                failed = 0
        # This failure opens the circuit. The break duration may be a user's callable, which may read
        # this breaker (``breaker.metrics``): it runs outside the (non-reentrant) lock, and the
        # transition happens only if nothing moved the circuit meanwhile.
        duration = self._config.break_duration_for(failed, snap.break_duration)
        with self._lock:
            if self.snapshot is not snap:
                return None  # another outcome or a manual transition got there first
            return self._open(now, failed, duration)

    def release(self, permit: BreakerSnapshot) -> None:
        """Free a probe slot; see :meth:`BreakerStore.release`."""
        if permit is self._closed:
            return
        with self._lock:
            if permit is self.snapshot and permit.state is _HALF_OPEN and self._in_flight > 0:
                self._in_flight -= 1

    def transition(self, to: CircuitState, now: float) -> BreakerSnapshot:
        """Manual control; see :meth:`BreakerStore.transition`."""
        if to is _OPEN:
            # The break duration may be user code: compute it outside the lock, for the snapshot
            # that is still current when the lock is taken again.
            while True:
                snap = self.snapshot
                failed = snap.failed_probes if snap.state is not _CLOSED else 0
                duration = self._config.break_duration_for(failed, snap.break_duration)
                with self._lock:
                    if self.snapshot is snap:
                        return self._open(now, failed, duration, manual=True)
        with self._lock:
            if to is _CLOSED:
                return self._close(now, manual=True)
            if to is _ISOLATED:
                prev = self.snapshot
                self._epoch += 1
                return self._set(
                    BreakerSnapshot(_ISOLATED, self._epoch, now, math.inf, 0, prev.break_duration, prev.state, True)
                )
            raise ValueError(f"to must be CLOSED, OPEN or ISOLATED, got {to!r}")

    def metrics(self, now: float) -> BreakerMetrics:
        """Counters; see :meth:`BreakerStore.metrics`."""
        if self._ratio and now >= self._bucket_end:
            self._roll(now)
        with self._lock:
            snap = self.snapshot
            calls = self._past_calls + self._cur_calls
            failures = self._past_failures + self._cur_failures
            return BreakerMetrics(
                state=snap.state,
                calls=calls,
                failures=failures,
                failure_ratio=failures / calls if calls else 0.0,
                consecutive_failures=self._consecutive,
                probes_in_flight=self._in_flight,
                probe_successes=self._probe_successes,
                retry_after=snap.retry_after(now),
            )

    def __repr__(self) -> str:
        return f"InMemoryBreakerStore(state={self.snapshot.state.value!r}, epoch={self.snapshot.epoch})"

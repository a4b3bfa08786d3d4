"""Bulkhead: bound how many calls run at once, with a short FIFO queue.

A bulkhead isolates one dependency's calls from the rest of the service: when
that dependency slows down, at most ``max_concurrent`` calls pile up on it,
``max_queued`` more wait their turn for at most ``queue_timeout`` seconds, and
every other call is rejected at once with :class:`~resilient.BulkheadFullError`
instead of tying up a worker, a connection or memory (Polly's and
Resilience4j's bulkhead).

One bulkhead object is one compartment, shared by every function it wraps and
by async and sync callers alike (the sync side is for threads)::

    db = Bulkhead(10, max_queued=20, queue_timeout=0.5, name="db")

    @db
    async def query(sql: str) -> list[Row]: ...

    async with db.acquire():       # the same slots, without a wrapped function
        ...

The success path is a counter under an uncontended lock (cheaper than
:class:`asyncio.Semaphore`); waiters are handed a slot directly when one frees
up, in arrival order. A waiter or runner that is cancelled, times out or
raises always gives its slot back.

Shadow mode (``enforce=False``) decides as usual but never refuses nor holds
a call back: a call that finds no free slot runs at once *without* one (so it
never blocks a later call), as if queued while there is room in the queue
(counted in :attr:`Bulkhead.shadow_queued`), as a ``would_reject`` beyond.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any

from resilient.clock import SYSTEM_CLOCK, Clock
from resilient.deadline import remaining as deadline_remaining
from resilient.errors import BulkheadFullError
from resilient.events import (
    EXTRA_QUEUED,
    EXTRA_REASON,
    EXTRA_RUNNING,
    REJECTED,
    WOULD_REJECT,
    EventSite,
    Listener,
    Severity,
)
from resilient.policy import AsyncFn, AsyncWrapped, Policy, ShadowMode, SyncFn

__all__ = ["Bulkhead"]

# Waiter states. A waiter leaves WAITING exactly once, under the bulkhead's lock.
_WAITING = 0
_GRANTED = 1  # a slot was handed to it: it owns one `running` slot
_ABANDONED = 2  # timed out or cancelled while queued: it owns nothing

# How an admitted call runs. _SLOT is 0 so that "has no slot" is one truth test.
_SLOT = 0  # it holds one `running` slot
_SHADOW_QUEUED = 1  # shadow mode: no slot; an enforcing bulkhead would have queued it
_SHADOW_REJECTED = 2  # shadow mode: no slot; an enforcing bulkhead would have rejected it
_QUEUE = 3  # (internal) enforcing: wait in the queue
_REJECT = 4  # (internal) enforcing: rejected


class _Waiter:
    """One queued call: an asyncio future or a threading event to wake it."""

    __slots__ = ("event", "fut", "loop", "state", "thread")

    def __init__(
        self,
        fut: asyncio.Future[None] | None,
        loop: asyncio.AbstractEventLoop | None,
        event: threading.Event | None,
    ) -> None:
        self.state = _WAITING
        self.fut = fut
        self.loop = loop
        self.event = event
        self.thread = threading.get_ident()

    def wake(self) -> None:
        """Wake the waiting task or thread (caller holds the bulkhead's lock)."""
        if self.event is not None:
            self.event.set()
            return
        fut = self.fut
        assert fut is not None
        assert self.loop is not None
        if threading.get_ident() == self.thread:
            if not fut.done():
                fut.set_result(None)
        else:
            with contextlib.suppress(RuntimeError):  # loop closed: nobody is left to wake
                self.loop.call_soon_threadsafe(_set_if_pending, fut)


def _async_waiter() -> _Waiter:
    loop = asyncio.get_running_loop()
    return _Waiter(loop.create_future(), loop, None)


def _thread_waiter() -> _Waiter:
    return _Waiter(None, None, threading.Event())


def _set_if_pending(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _check_count(value: Any, param: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{param} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{param} must be an int >= {minimum}, got {value!r}")
    return value


class Bulkhead(ShadowMode, Policy):
    """At most ``max_concurrent`` calls at once; ``max_queued`` more may wait.

    Args:
        max_concurrent: calls allowed to run at the same time (>= 1).
        max_queued: calls allowed to wait for a slot, in FIFO order (>= 0;
            0 means reject as soon as every slot is taken).
        queue_timeout: longest wait for a slot, in seconds (> 0), or
            ``None`` to wait as long as it takes. A queued async call never
            waits past the current :func:`~resilient.deadline` either.
        name: shown in errors, events and the status endpoint.
        clock: the clock the queue timeout runs on, for async callers and
            threads alike (tests pass a ``FakeClock``).
        listeners: event listeners for this policy only.
        enforce: ``False`` (or a callable returning it, read only when a call
            finds no free slot) is shadow mode: a call that would queue or be
            rejected runs at once without taking a slot; one that would be
            rejected is counted (:attr:`would_reject`) and emits
            ``would_reject`` with the :class:`~resilient.BulkheadFullError`
            it would have raised.

    A call that finds no slot and no room in the queue, or whose wait
    times out, raises :class:`~resilient.BulkheadFullError` (with
    ``running`` and ``queued`` counts) and emits a ``rejected`` event.
    """

    policy_type = "bulkhead"

    def __init__(
        self,
        max_concurrent: int,
        *,
        max_queued: int = 0,
        queue_timeout: float | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
        enforce: bool | Callable[[], bool] = True,
    ) -> None:
        super().__init__(name=name, listeners=listeners)
        self.set_enforce(enforce)
        self._shadow_queued = 0
        self.max_concurrent = _check_count(max_concurrent, "max_concurrent", 1)
        self.max_queued = _check_count(max_queued, "max_queued", 0)
        if queue_timeout is not None:
            if isinstance(queue_timeout, bool) or not isinstance(queue_timeout, int | float):
                raise TypeError(f"queue_timeout must be a number of seconds > 0 or None, got {queue_timeout!r}")
            if math.isnan(queue_timeout) or queue_timeout <= 0:
                raise ValueError(f"queue_timeout must be a number of seconds > 0 or None, got {queue_timeout!r}")
            if math.isinf(queue_timeout):
                queue_timeout = None
        self.queue_timeout: float | None = None if queue_timeout is None else float(queue_timeout)
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        self._lock = threading.Lock()
        self._running = 0
        self._waiters: deque[_Waiter] = deque()
        self._rejected = 0
        self._site = EventSite(operation=name or "bulkhead")
        self._async_slot = _AsyncSlot(self, self._site)
        self._sync_slot = _SyncSlot(self, self._site)

    # -- introspection -------------------------------------------------------

    @property
    def running(self) -> int:
        """Calls holding a slot now."""
        return self._running

    @property
    def queued(self) -> int:
        """Calls waiting for a slot now."""
        return len(self._waiters)

    @property
    def rejected(self) -> int:
        """Calls rejected since the bulkhead was created."""
        return self._rejected

    @property
    def available(self) -> int:
        """Free slots now."""
        return self.max_concurrent - self._running

    @property
    def shadow_queued(self) -> int:
        """Calls running now without a slot (shadow mode) that an enforcing bulkhead would have queued."""
        return self._shadow_queued

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot: limits and current counts (and shadow mode's, when ``enforce`` is not ``True``)."""
        out: dict[str, Any] = {
            "max_concurrent": self.max_concurrent,
            "max_queued": self.max_queued,
            "queue_timeout": self.queue_timeout,
            "running": self._running,
            "queued": len(self._waiters),
            "rejected": self._rejected,
        }
        if self._enforce is not True:
            out.update(would_reject=self._would_reject, shadow_queued=self._shadow_queued, enforcing=self.enforcing)
        return out

    # -- slots, for direct use -----------------------------------------------

    def acquire(self) -> _AsyncSlot:
        """An async context manager holding one slot for the block.

        ``async with bulkhead.acquire(): ...`` waits (if queueing is allowed)
        or raises :class:`~resilient.BulkheadFullError`; the slot is released
        when the block exits, however it exits. The object returned is
        reusable and shared: it holds no per-call state (in shadow mode, a
        new one per call, which remembers whether the block holds a slot).
        """
        return self._async_slot if self._enforce is True else _AsyncSlot(self, self._site)

    def acquire_sync(self) -> _SyncSlot:
        """A context manager holding one slot for the block, for threads."""
        return self._sync_slot if self._enforce is True else _SyncSlot(self, self._site)

    # -- the slot machinery --------------------------------------------------

    def _reject(self, site: EventSite, reason: str) -> BulkheadFullError:
        # Called with the lock held; the event is emitted after it is released.
        self._rejected += 1
        return self._full(reason)

    def _full(self, reason: str) -> BulkheadFullError:
        running = self._running
        queued = len(self._waiters) + self._shadow_queued
        msg = (
            f"{self._label()} is full ({running}/{self.max_concurrent} running, "
            f"{queued}/{self.max_queued} queued): {reason}"
        )
        return BulkheadFullError(msg, policy=self.name, running=running, queued=queued)

    def _emit_rejected(self, site: EventSite, err: BulkheadFullError, event: str = REJECTED) -> None:
        self._emit(
            site,
            event,
            Severity.WARNING if event is REJECTED else Severity.INFO,
            exception=err,
            extras={EXTRA_REASON: "bulkhead_full", EXTRA_RUNNING: err.running, EXTRA_QUEUED: err.queued},
        )

    def _no_slot_locked(self, shadow: bool) -> tuple[int, BulkheadFullError | None]:
        """Under the lock, for a call that saw no free slot: how it goes (and the error, if refused)."""
        if self._running < self.max_concurrent and not self._waiters:
            self._running += 1
            return _SLOT, None
        reason = "no slot and no room in the queue"
        if not shadow:
            if len(self._waiters) < self.max_queued:
                return _QUEUE, None
            return _REJECT, self._reject(self._site, reason)
        # Shadow mode: the calls it runs without a slot in place of queueing them hold their place in
        # the queue while they run, so the queue fills up as an enforcing one would.
        if len(self._waiters) + self._shadow_queued < self.max_queued:
            self._shadow_queued += 1
            return _SHADOW_QUEUED, None
        self._would_reject += 1
        return _SHADOW_REJECTED, self._full(reason)

    def _no_slot(self, site: EventSite, waiter: Callable[[], _Waiter]) -> tuple[int, _Waiter | None, float | None]:
        """A call saw no free slot: ``(how, None, _)`` it runs now, or ``(_, waiter, timeout)`` to wait; or raise."""
        shadow = self.shadowed()  # user code: before the lock
        w = None
        with self._lock:
            how, err = self._no_slot_locked(shadow)
            if how == _QUEUE:
                w = waiter()
                self._waiters.append(w)
        if w is None:
            if how == _SHADOW_REJECTED:
                assert err is not None
                self._emit_rejected(site, err, WOULD_REJECT)
            elif err is not None:
                self._emit_rejected(site, err)
                raise err
            return how, None, None
        timeout = self.queue_timeout
        rem = deadline_remaining()
        if rem is not None and (timeout is None or rem < timeout):
            timeout = max(rem, 0.0)
        return how, w, timeout

    def _left_unslotted(self, how: int) -> bool:
        """A call that ran without a slot (shadow mode) ended; whether an enforcing bulkhead would have run it."""
        if how == _SHADOW_QUEUED:
            with self._lock:
                self._shadow_queued -= 1
            return True
        return False

    def _timed_out(self, site: EventSite, timeout: float | None) -> int:
        """A queued call's wait ran out: raise, or, if the switch now says shadow mode, let it through."""
        reason = f"waited {timeout:.3g} s in the queue"
        if self.shadowed():
            with self._lock:
                self._would_reject += 1
                err = self._full(reason)
            self._emit_rejected(site, err, WOULD_REJECT)
            return _SHADOW_REJECTED
        with self._lock:
            err = self._reject(site, reason)
        self._emit_rejected(site, err)
        raise err

    async def _run_unslotted_async(self, how: int, call: Awaitable[Any]) -> Any:
        try:
            return await call
        finally:
            self._left_unslotted(how)

    def _release(self) -> None:
        """Give one slot back: hand it to the first live waiter, or free it."""
        with self._lock:
            self._release_locked()

    def _release_locked(self) -> None:
        if self._running > self.max_concurrent:
            # The limit was lowered below the calls running (AdaptiveConcurrency): shrink.
            self._running -= 1
            return
        waiters = self._waiters
        while waiters:
            w = waiters.popleft()
            fut = w.fut
            if fut is not None and fut.cancelled():
                # Its task is being cancelled and will clean up after itself.
                w.state = _ABANDONED
                continue
            w.state = _GRANTED  # the slot changes hands: `running` is unchanged
            w.wake()
            return
        self._running -= 1

    def _grant_locked(self) -> None:
        """Hand free slots to waiters (after the limit was raised)."""
        waiters = self._waiters
        while waiters and self._running < self.max_concurrent:
            w = waiters.popleft()
            fut = w.fut
            if fut is not None and fut.cancelled():
                w.state = _ABANDONED
                continue
            w.state = _GRANTED
            self._running += 1
            w.wake()

    def _abandon_locked(self, w: _Waiter) -> None:
        """The waiter gives up (timeout, cancellation): drop it or give back its slot."""
        if w.state == _WAITING:
            w.state = _ABANDONED
            with contextlib.suppress(ValueError):  # already popped by a release
                self._waiters.remove(w)
        elif w.state == _GRANTED:
            w.state = _ABANDONED
            self._release_locked()

    async def _enter_async(self, site: EventSite) -> int:
        """Take a slot, waiting in the queue if allowed; how the call runs (``_SLOT``: with one)."""
        with self._lock:
            if self._running < self.max_concurrent and not self._waiters:
                self._running += 1
                return _SLOT
        how, w, timeout = self._no_slot(site, _async_waiter)
        if w is None:
            return how
        try:
            await self._wait(w, timeout)
        except BaseException:
            with self._lock:
                self._abandon_locked(w)
            raise
        if w.state == _GRANTED:
            return _SLOT
        # The timer fired first (under the lock, so the state is final).
        return self._timed_out(site, timeout)

    async def _wait(self, w: _Waiter, limit: float | None) -> None:
        fut = w.fut
        assert fut is not None
        if limit is None:
            await fut
            return
        clock = self.clock
        handle = clock.call_at(clock.now() + limit, functools.partial(self._expire, w))
        try:
            await fut
        finally:
            handle.cancel()

    def _expire(self, w: _Waiter) -> None:
        with self._lock:
            if w.state != _WAITING:
                return
            w.state = _ABANDONED
            with contextlib.suppress(ValueError):
                self._waiters.remove(w)
            w.wake()

    def _enter_sync(self, site: EventSite) -> int:
        with self._lock:
            if self._running < self.max_concurrent and not self._waiters:
                self._running += 1
                return _SLOT
        how, w, timeout = self._no_slot(site, _thread_waiter)
        if w is None:
            return how
        assert w.event is not None
        # The queue timeout is a timer on the policy's clock (on a timer
        # thread: this thread blocks), which wakes the event as a grant does.
        clock = self.clock
        handle = (
            None
            if timeout is None
            else clock.call_at(clock.now() + timeout, functools.partial(self._expire, w), threaded=True)
        )
        try:
            w.event.wait()
        except BaseException:  # KeyboardInterrupt in the waiting thread
            with self._lock:
                self._abandon_locked(w)
            raise
        finally:
            if handle is not None:
                handle.cancel()
        with self._lock:
            if w.state == _GRANTED:
                return _SLOT
            self._abandon_locked(w)
        return self._timed_out(site, timeout)

    # -- wrappers ------------------------------------------------------------

    def _wrap_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        lock = self._lock
        limit = self.max_concurrent
        enter = self._enter_async
        release = self._release
        unslotted = self._run_unslotted_async

        async def bulkhead_call(*args: Any, **kwargs: Any) -> Any:
            lock.acquire()
            if self._running < limit and not self._waiters:
                self._running += 1
                lock.release()
            else:
                lock.release()
                if how := await enter(site):  # shadow mode: runs without a slot
                    return await unslotted(how, fn(*args, **kwargs))
            try:
                return await fn(*args, **kwargs)
            finally:
                release()

        return bulkhead_call

    def _wrap_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        lock = self._lock
        limit = self.max_concurrent
        enter = self._enter_sync
        release = self._release
        left = self._left_unslotted

        def bulkhead_call(*args: Any, **kwargs: Any) -> Any:
            lock.acquire()
            if self._running < limit and not self._waiters:
                self._running += 1
                lock.release()
            else:
                lock.release()
                if how := enter(site):  # shadow mode: runs without a slot
                    try:
                        return fn(*args, **kwargs)
                    finally:
                        left(how)
            try:
                return fn(*args, **kwargs)
            finally:
                release()

        return bulkhead_call

    def __repr__(self) -> str:
        return (
            f"Bulkhead(max_concurrent={self.max_concurrent}, max_queued={self.max_queued}, "
            f"queue_timeout={self.queue_timeout}, name={self.name!r})"
        )


class _Slot:
    """What the two context managers share: shared and stateless when enforcing; one per block in shadow mode."""

    __slots__ = ("_bulkhead", "_how", "_site")

    def __init__(self, bulkhead: Bulkhead, site: EventSite) -> None:
        self._bulkhead = bulkhead
        self._site = site
        self._how = _SLOT  # only ever changed on an instance made for one block (shadow mode)

    def _leave_unslotted(self) -> None:
        how = self._how
        self._how = _SLOT
        self._bulkhead._left_unslotted(how)


class _AsyncSlot(_Slot):
    """``async with bulkhead.acquire():``."""

    __slots__ = ()

    async def __aenter__(self) -> None:
        bh = self._bulkhead
        lock = bh._lock
        lock.acquire()
        if bh._running < bh.max_concurrent and not bh._waiters:
            bh._running += 1
            lock.release()
            return
        lock.release()
        how = await bh._enter_async(self._site)
        if how:
            self._how = how

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._how:
            self._leave_unslotted()
        else:
            self._bulkhead._release()


class _SyncSlot(_Slot):
    """``with bulkhead.acquire_sync():``."""

    __slots__ = ()

    def __enter__(self) -> None:
        how = self._bulkhead._enter_sync(self._site)
        if how:
            self._how = how

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._how:
            self._leave_unslotted()
        else:
            self._bulkhead._release()

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

Every decision (who runs, who waits, who is refused, who gets a freed slot)
is taken by one engine with no I/O and no awaits; the async and sync slots
and wrappers are thin shells around it, the sync shell being the async one
without ``await`` (a test compares them). A policy built on a bulkhead
(:class:`~resilient.concurrency.AdaptiveConcurrency`) uses its public
:meth:`Bulkhead.enter`, :meth:`Bulkhead.leave` and :meth:`Bulkhead.resize`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections import deque
from collections.abc import Callable, Iterable
from enum import IntEnum
from typing import Any, TypeVar

from resilient.clock import Clock
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
from resilient.validate import check_clock, check_int, check_seconds

__all__ = ["Admission", "Bulkhead"]


class Admission(IntEnum):
    """How :meth:`Bulkhead.enter` let a call in; hand it back to :meth:`Bulkhead.leave`.

    ``SLOT`` is 0, so ``if how:`` reads "ran without a slot (shadow mode)".
    """

    #: The call holds one slot.
    SLOT = 0
    #: Shadow mode: no slot; an enforcing bulkhead would have queued the call (then run it).
    SHADOW_QUEUED = 1
    #: Shadow mode: no slot; an enforcing bulkhead would have rejected the call.
    SHADOW_REJECTED = 2


_SLOT = Admission.SLOT
_SHADOW_QUEUED = Admission.SHADOW_QUEUED
_SHADOW_REJECTED = Admission.SHADOW_REJECTED
# The engine's two other answers, never returned by enter(): wait in the queue; refused.
_QUEUE = 3
_REJECT = 4

# Waiter states. A waiter leaves WAITING exactly once, under the engine's lock.
_WAITING = 0
_GRANTED = 1  # a slot was handed to it: it owns one `running` slot
_ABANDONED = 2  # timed out or cancelled while queued: it owns nothing


class _Waiter:
    """One queued call; the subclass says how it is woken and how it waits."""

    __slots__ = ("state", "timeout")

    def __init__(self) -> None:
        self.state = _WAITING
        #: The longest wait, in seconds (``None``: no limit), set when it joins the queue.
        self.timeout: float | None = None

    def cancelled(self) -> bool:
        """Whether its caller is already being cancelled (it cleans up after itself)."""
        return False

    def wake(self) -> None:
        """Wake the waiting task or thread (called under the engine's lock)."""
        raise NotImplementedError


class _TaskWaiter(_Waiter):
    """A queued coroutine: an asyncio future, woken from its loop's thread or any other."""

    __slots__ = ("fut", "loop", "thread")

    def __init__(self) -> None:
        super().__init__()
        self.loop = loop = asyncio.get_running_loop()
        self.fut: asyncio.Future[None] = loop.create_future()
        self.thread = threading.get_ident()

    def cancelled(self) -> bool:
        return self.fut.cancelled()

    def wake(self) -> None:
        if threading.get_ident() == self.thread:
            _set_if_pending(self.fut)
        else:
            with contextlib.suppress(RuntimeError):  # loop closed: nobody is left to wake
                self.loop.call_soon_threadsafe(_set_if_pending, self.fut)

    async def wait(self, clock: Clock, expire: Callable[[_Waiter], None]) -> None:
        """Wait until woken; the queue timeout is a timer on the policy's clock that expires the waiter."""
        limit = self.timeout
        if limit is None:
            await self.fut
            return
        handle = clock.call_at(clock.now() + limit, functools.partial(expire, self))
        try:
            await self.fut
        finally:
            handle.cancel()


class _ThreadWaiter(_Waiter):
    """A queued thread: a threading event."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def wake(self) -> None:
        self.event.set()

    def wait(self, clock: Clock, expire: Callable[[_Waiter], None]) -> None:
        """Block until woken; the timeout timer runs on a timer thread, since this one blocks."""
        limit = self.timeout
        handle = None
        if limit is not None:
            handle = clock.call_at(clock.now() + limit, functools.partial(expire, self), threaded=True)
        try:
            self.event.wait()
        finally:
            if handle is not None:
                handle.cancel()


_W = TypeVar("_W", _TaskWaiter, _ThreadWaiter)


def _set_if_pending(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Engine:
    """The bulkhead's counts and decisions: no I/O, no awaits, no user code.

    Every method runs with ``lock`` held (the callers take it), but
    :meth:`release_now` and :meth:`expire` (a timer's callback), which take
    it themselves; waking a waiter only schedules it.
    """

    __slots__ = ("limit", "lock", "max_queued", "rejected", "running", "shadow_queued", "waiters", "would_reject")

    def __init__(self, limit: int, max_queued: int) -> None:
        self.lock = threading.Lock()
        self.limit = limit
        self.max_queued = max_queued
        self.running = 0
        self.waiters: deque[_Waiter] = deque()
        self.shadow_queued = 0
        self.rejected = 0
        self.would_reject = 0

    def admit(self, shadow: bool) -> int:
        """A call arrives: a slot (``_SLOT``), the queue (``_QUEUE``), refused (``_REJECT``), or a shadow answer."""
        if self.running < self.limit and not self.waiters:
            self.running += 1
            return _SLOT
        if not shadow:
            if len(self.waiters) < self.max_queued:
                return _QUEUE
            self.rejected += 1
            return _REJECT
        # Shadow mode: the calls it runs without a slot in place of queueing them hold their place in
        # the queue while they run, so the queue fills up as an enforcing one would.
        if len(self.waiters) + self.shadow_queued < self.max_queued:
            self.shadow_queued += 1
            return _SHADOW_QUEUED
        self.would_reject += 1
        return _SHADOW_REJECTED

    def timed_out(self, w: _Waiter, shadow: bool) -> int:
        """A waiter's wait ended: ``_SLOT`` if it was granted one, else refused (or a shadow rejection)."""
        if w.state == _GRANTED:
            return _SLOT
        self.abandon(w)
        if shadow:
            self.would_reject += 1
            return _SHADOW_REJECTED
        self.rejected += 1
        return _REJECT

    def release(self) -> None:
        """Give one slot back: hand it to the first live waiter, or free it."""
        if self.running > self.limit:
            # The limit was lowered below the calls running (resize): shrink.
            self.running -= 1
            return
        waiters = self.waiters
        while waiters:
            w = waiters.popleft()
            if w.cancelled():
                w.state = _ABANDONED
                continue
            w.state = _GRANTED  # the slot changes hands: `running` is unchanged
            w.wake()
            return
        self.running -= 1

    def release_now(self) -> None:
        """:meth:`release`, taking the lock: a wrapped call gives its slot back."""
        with self.lock:
            self.release()

    def leave(self, how: int) -> bool:
        """A call admitted as ``how`` ended; whether an enforcing bulkhead would have run it."""
        if how == _SLOT:
            self.release()
            return True
        if how == _SHADOW_QUEUED:
            self.shadow_queued -= 1
            return True
        return False

    def resize(self, limit: int) -> None:
        """A new limit: waiters get the slots it frees (a lower one takes effect as calls end)."""
        self.limit = limit
        waiters = self.waiters
        while waiters and self.running < limit:
            w = waiters.popleft()
            if w.cancelled():
                w.state = _ABANDONED
                continue
            w.state = _GRANTED
            self.running += 1
            w.wake()

    def abandon(self, w: _Waiter) -> None:
        """The waiter gives up (timeout, cancellation): drop it or give back its slot."""
        if w.state == _WAITING:
            w.state = _ABANDONED
            with contextlib.suppress(ValueError):  # already popped by a release
                self.waiters.remove(w)
        elif w.state == _GRANTED:
            w.state = _ABANDONED
            self.release()

    def expire(self, w: _Waiter) -> None:
        """The queue timeout fired: the waiter leaves the queue and is woken to be refused."""
        with self.lock:
            if w.state != _WAITING:
                return
            w.state = _ABANDONED
            with contextlib.suppress(ValueError):
                self.waiters.remove(w)
            w.wake()


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
        self._engine = _Engine(
            check_int(max_concurrent, "max_concurrent"), check_int(max_queued, "max_queued", minimum=0)
        )
        timeout = check_seconds(queue_timeout, "queue_timeout", allow_inf=True, allow_none=True)
        self.queue_timeout: float | None = None if timeout == float("inf") else timeout
        self.clock = check_clock(clock)
        self._site = EventSite(operation=name or "bulkhead")
        self._async_slot = _AsyncSlot(self, self._site)
        self._sync_slot = _SyncSlot(self, self._site)

    # -- introspection -------------------------------------------------------

    @property
    def max_concurrent(self) -> int:
        """Calls allowed to run at the same time now (setting it is :meth:`resize`)."""
        return self._engine.limit

    @max_concurrent.setter
    def max_concurrent(self, value: int) -> None:
        self.resize(value)

    @property
    def max_queued(self) -> int:
        """Calls allowed to wait for a slot."""
        return self._engine.max_queued

    @max_queued.setter
    def max_queued(self, value: int) -> None:
        self._engine.max_queued = check_int(value, "max_queued", minimum=0)

    @property
    def running(self) -> int:
        """Calls holding a slot now."""
        return self._engine.running

    @property
    def queued(self) -> int:
        """Calls waiting for a slot now."""
        return len(self._engine.waiters)

    @property
    def rejected(self) -> int:
        """Calls rejected since the bulkhead was created."""
        return self._engine.rejected

    @property
    def available(self) -> int:
        """Free slots now."""
        return self._engine.limit - self._engine.running

    @property
    def shadow_queued(self) -> int:
        """Calls running now without a slot (shadow mode) that an enforcing bulkhead would have queued."""
        return self._engine.shadow_queued

    @property
    def would_reject(self) -> int:
        """Calls that shadow mode (``enforce`` false) let through but would have rejected."""
        return self._engine.would_reject

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot: limits and current counts (and shadow mode's, when ``enforce`` is not ``True``)."""
        e = self._engine
        out: dict[str, Any] = {
            "max_concurrent": e.limit,
            "max_queued": e.max_queued,
            "queue_timeout": self.queue_timeout,
            "running": e.running,
            "queued": len(e.waiters),
            "rejected": e.rejected,
        }
        if self._enforce is not True:
            out.update(would_reject=e.would_reject, shadow_queued=e.shadow_queued, enforcing=self.enforcing)
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

    # -- the public steps, for policies built on a bulkhead -------------------

    async def enter(self, site: EventSite | None = None) -> Admission:
        """Take a slot, waiting in the queue if allowed; how the call was let in.

        Raises :class:`~resilient.BulkheadFullError` (and emits ``rejected``)
        when refused. In shadow mode a call that finds no slot is let in
        without one (:attr:`Admission.SHADOW_QUEUED` or
        :attr:`Admission.SHADOW_REJECTED`). Whatever it returns must be handed
        to :meth:`leave` exactly once, when the call ends; a cancelled wait
        gives its place back by itself. ``site`` names the call in events.
        """
        got = self._admit(site, _TaskWaiter)
        if isinstance(got, Admission):
            return got
        try:
            await got.wait(self.clock, self._engine.expire)
        except BaseException:
            self._abandon(got)
            raise
        return self._waited(site, got)

    def enter_sync(self, site: EventSite | None = None) -> Admission:
        """:meth:`enter` for threads: blocks this thread while queued."""
        got = self._admit(site, _ThreadWaiter)
        if isinstance(got, Admission):
            return got
        try:
            got.wait(self.clock, self._engine.expire)
        except BaseException:
            self._abandon(got)
            raise
        return self._waited(site, got)

    def leave(self, how: Admission) -> bool:
        """The call that :meth:`enter` let in as ``how`` ended: give back what it held.

        Returns whether an enforcing bulkhead would have run that call
        (``False`` only for :attr:`Admission.SHADOW_REJECTED`), so that a
        policy built on top learns only from calls it would have made.
        """
        e = self._engine
        with e.lock:
            if how is _SLOT:
                e.release()
                return True
            return e.leave(how)

    def resize(self, max_concurrent: int) -> None:
        """Set a new limit at once: waiters get the slots a higher one frees.

        A lower limit interrupts nothing: the running calls finish, and the
        limit takes effect as they do.
        """
        limit = check_int(max_concurrent, "max_concurrent")
        e = self._engine
        with e.lock:
            e.resize(limit)

    # -- the shells' steps ---------------------------------------------------

    def _admit(self, site: EventSite | None, waiter: type[_W]) -> Admission | _W:
        """How the call runs now, or the waiter it waits on (its ``timeout`` set); or raise."""
        e = self._engine
        with e.lock:
            if e.running < e.limit and not e.waiters:
                e.running += 1
                return _SLOT
        shadow = self.shadowed()  # user code: before the lock
        w = None
        err = None
        with e.lock:
            how = e.admit(shadow)
            if how == _QUEUE:
                w = waiter()
                e.waiters.append(w)
            elif how >= _SHADOW_REJECTED:
                err = self._full("no slot and no room in the queue")
        if w is None:
            if err is not None:
                self._refused(site, err, how)
            return Admission(how)
        timeout = self.queue_timeout
        rem = deadline_remaining()
        if rem is not None and (timeout is None or rem < timeout):
            timeout = max(rem, 0.0)
        w.timeout = timeout
        return w

    def _waited(self, site: EventSite | None, w: _Waiter) -> Admission:
        """A wait ended: the slot granted, or the timeout's refusal (let through if the switch now says shadow)."""
        e = self._engine
        with e.lock:
            if w.state == _GRANTED:
                return _SLOT
        shadow = self.shadowed()  # user code: before the lock
        with e.lock:
            how = e.timed_out(w, shadow)
            if how == _SLOT:  # granted after all, between the two looks
                return _SLOT
            err = self._full(f"waited {w.timeout:.3g} s in the queue")
        self._refused(site, err, how)
        return _SHADOW_REJECTED

    def _abandon(self, w: _Waiter) -> None:
        e = self._engine
        with e.lock:
            e.abandon(w)

    def _full(self, reason: str) -> BulkheadFullError:
        # Called with the lock held: the counts are those of the decision.
        e = self._engine
        running = e.running
        queued = len(e.waiters) + e.shadow_queued
        msg = f"{self.label()} is full ({running}/{e.limit} running, {queued}/{e.max_queued} queued): {reason}"
        return BulkheadFullError(msg, policy=self.name, running=running, queued=queued)

    def _refused(self, site: EventSite | None, err: BulkheadFullError, how: int) -> None:
        """Report a refusal (after the lock is released); raise it unless shadow mode let the call through."""
        shadow = how == _SHADOW_REJECTED
        self.emit(
            site or self._site,
            WOULD_REJECT if shadow else REJECTED,
            Severity.INFO if shadow else Severity.WARNING,
            exception=err,
            extras={EXTRA_REASON: "bulkhead_full", EXTRA_RUNNING: err.running, EXTRA_QUEUED: err.queued},
        )
        if not shadow:
            raise err

    async def _run_unslotted(self, how: Admission, fn: AsyncFn, args: Any, kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        finally:
            self.leave(how)

    def _run_unslotted_sync(self, how: Admission, fn: SyncFn, args: Any, kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            self.leave(how)

    # -- wrappers: a fast path, the call, one hand-off -------------------------

    def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        """The closure guarding each call of the async ``fn`` (:meth:`~resilient.Policy.build_async`)."""
        e, lock, release = self._engine, self._engine.lock, self._engine.release_now
        enter, unslotted = self.enter, self._run_unslotted

        async def bulkhead_call(*args: Any, **kwargs: Any) -> Any:
            lock.acquire()
            if e.running >= e.limit or e.waiters:
                lock.release()
                if how := await enter(site):  # shadow mode: runs without a slot
                    return await unslotted(how, fn, args, kwargs)
            else:
                e.running += 1
                lock.release()
            try:
                return await fn(*args, **kwargs)
            finally:
                release()

        return bulkhead_call

    def build_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        """The closure guarding each call of the synchronous ``fn`` (:meth:`~resilient.Policy.build_sync`)."""
        e, lock, release = self._engine, self._engine.lock, self._engine.release_now
        enter, unslotted = self.enter_sync, self._run_unslotted_sync

        def bulkhead_call(*args: Any, **kwargs: Any) -> Any:
            lock.acquire()
            if e.running >= e.limit or e.waiters:
                lock.release()
                if how := enter(site):  # shadow mode: runs without a slot
                    return unslotted(how, fn, args, kwargs)
            else:
                e.running += 1
                lock.release()
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

    __slots__ = ("_bulkhead", "_engine", "_how", "_site")

    def __init__(self, bulkhead: Bulkhead, site: EventSite) -> None:
        self._bulkhead = bulkhead
        self._engine = bulkhead._engine
        self._site = site
        self._how = _SLOT  # only ever changed on an instance made for one block (shadow mode)

    def _leave(self) -> None:
        how = self._how
        self._how = _SLOT
        self._bulkhead.leave(how)


class _AsyncSlot(_Slot):
    """``async with bulkhead.acquire():``."""

    __slots__ = ()

    async def __aenter__(self) -> None:
        e = self._engine
        lock = e.lock
        lock.acquire()
        if e.running < e.limit and not e.waiters:
            e.running += 1
            lock.release()
            return
        lock.release()
        if how := await self._bulkhead.enter(self._site):
            self._how = how

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._how:
            self._leave()
        else:
            self._engine.release_now()


class _SyncSlot(_Slot):
    """``with bulkhead.acquire_sync():``."""

    __slots__ = ()

    def __enter__(self) -> None:
        if how := self._bulkhead.enter_sync(self._site):
            self._how = how

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._how:
            self._leave()
        else:
            self._engine.release_now()

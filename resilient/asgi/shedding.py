"""LoadShedding: a concurrency limit at the edge, 503 for the excess."""

from __future__ import annotations

import asyncio
import logging
import math
import sys
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, runtime_checkable

from resilient.asgi._common import (
    DEADLINE_EXCEEDED,
    DEADLINE_SLACK,
    DEFAULT_EXEMPT_PATHS,
    ASGIApp,
    EdgePart,
    Message,
    PartEvents,
    Receive,
    Scope,
    ScopePredicate,
    Send,
    Switch,
    enforcing,
    json_response,
    retry_after_seconds,
    send_messages,
)
from resilient.clock import Clock
from resilient.concurrency import AdaptiveConcurrency, Bulkhead
from resilient.deadline import remaining
from resilient.errors import RejectedError
from resilient.events import EXTRA_REASON, EXTRA_RETRY_AFTER, REJECTED, WOULD_REJECT
from resilient.validate import check_callable, check_int, check_number, check_seconds

__all__ = ["PRIORITY_CLASSES", "ConcurrencyLimiter", "LoadShedding"]

logger = logging.getLogger("resilient.asgi")

#: The priority classes of :class:`LoadShedding` (``priority=``), highest first.
PRIORITY_CLASSES: tuple[str, ...] = ("critical", "default", "sheddable")
_DEFAULT_RESERVED: Mapping[str, float] = {"critical": 0.2, "default": 0.2}

# While a request waits for a slot we read its body to notice a disconnect;
# past this many bytes we stop reading (and stop watching) rather than buffer
# an upload for a request that may be refused anyway.
_MAX_BUFFERED = 64 * 1024


@runtime_checkable
class ConcurrencyLimiter(Protocol):
    """What :class:`LoadShedding` needs from its limiter (a :class:`~resilient.Bulkhead` has it).

    ``acquire()`` returns an async context manager that holds one slot for its
    block; entering it either succeeds (possibly after waiting in a queue) or
    raises :class:`~resilient.errors.RejectedError` (``BulkheadFullError``).
    Cancelling a waiting ``__aenter__`` must give the queue position back.
    An adaptive limiter plugs in through the same protocol; it receives the
    app's exception (if any) in ``__aexit__``.
    """

    def acquire(self) -> AbstractAsyncContextManager[Any]:
        """A context manager that holds one slot."""
        ...


class _QueueWatch:
    """Notices a client disconnect while its request waits for a slot.

    Started by a ``call_soon`` callback that only runs if entering the limiter
    actually suspended (the fast path cancels the callback before it runs), so
    a request admitted at once pays for one scheduled handle and nothing else.
    """

    __slots__ = ("buffered", "disconnected", "done", "receive", "task", "watcher")

    def __init__(self, receive: Receive, task: asyncio.Task[Any]) -> None:
        self.receive = receive
        self.task = task
        self.buffered: deque[Message] = deque()
        self.disconnected = False
        self.done = False
        self.watcher: asyncio.Task[None] | None = None

    def start(self) -> None:
        if not self.done:
            self.watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        size = 0
        while True:
            message = await self.receive()
            self.buffered.append(message)
            if message["type"] == "http.disconnect":
                self.disconnected = True
                if not self.done:
                    self.task.cancel()
                return
            size += len(message.get("body", b""))
            if size > _MAX_BUFFERED:
                return

    async def stop(self) -> None:
        self.done = True
        watcher = self.watcher
        if watcher is not None and not watcher.done():
            watcher.cancel()
            await asyncio.wait((watcher,))

    def replay(self) -> Receive:
        buffered = self.buffered
        receive = self.receive

        async def replay_receive() -> Message:
            if buffered:
                return buffered.popleft()
            return await receive()

        return replay_receive


class LoadShedding(EdgePart):
    """Admit at most ``max_concurrent`` requests at a time; the excess gets ``503``.

    Requests beyond the limit wait in a queue of at most ``max_queued`` for at
    most ``queue_timeout`` seconds; when the queue is full (or the wait times
    out) the client gets ``503 Service Unavailable`` with ``Retry-After`` and a
    small JSON body ``{"error": "overloaded", "retry_after": 1}``, before the
    app sees the request. The wait is also cut to the request's deadline (see
    :class:`~resilient.asgi.DeadlinePropagation`); a request whose deadline passes while
    it waits gets ``504`` and ``{"error": "deadline_exceeded"}`` instead, as
    an expired deadline does everywhere else. A client that disconnects while
    queued gives its queue position back at once.

    Args:
        app: the ASGI application.
        max_concurrent: requests the app may run at once (a
            :class:`~resilient.Bulkhead` is created for it). Give
            either this or ``limiter``.
        max_queued: requests allowed to wait for a slot (0: reject at once).
        queue_timeout: the longest wait for a slot, in seconds (``None``: no limit
            but the queue's length).
        retry_after: the ``Retry-After`` value sent with a 503, in seconds.
        exempt_paths: exact paths never shed (health checks by default).
        exempt: a predicate on the scope; ``True`` means "never shed this one".
        limiter: any object with the :class:`ConcurrencyLimiter` protocol (a
            shared ``Bulkhead``, an ``AdaptiveConcurrency``), instead of
            ``max_concurrent``/``max_queued``/``queue_timeout``.
        name: the name of the bulkhead created (shown by the status endpoint),
            and of the events this middleware emits.
        clock: the clock of the bulkhead created (tests).
        enforce: ``False`` (or a callable returning ``False``, read on every
            request) for shadow mode: the request is never refused nor made
            to wait; where it would have been refused, a ``would_reject``
            event says what it would have got (status 503, or 504 for an
            expired deadline) and the request goes through.
        priority: a function of the scope giving the request's class,
            ``"critical"``, ``"default"`` or ``"sheddable"``
            (:data:`PRIORITY_CLASSES`); one that raises or gives anything
            else puts the request in ``"default"`` (logged once). Needs the
            bulkhead created here or a ``Bulkhead`` as ``limiter``.
        reserved: the share of the concurrency kept for each class above
            ``"sheddable"`` (default: ``{"critical": 0.2, "default": 0.2}``):
            a class may use the slots not reserved for the classes above it,
            so under overload ``sheddable`` requests are shed first (at 60 %
            of ``max_concurrent`` by default), then ``default`` ones (at
            80 %), and a ``critical`` request only when every slot is taken
            and the queue is full. Only a ``critical`` request waits in the
            queue for a slot held by others; the lower classes are answered
            at once when over their share.
        adaptive: ``True``: the limit created here adapts to the app's
            latency (an :class:`~resilient.concurrency.AdaptiveConcurrency`
            with its default gradient algorithm, Netflix's ``Gradient2Limit``);
            ``max_concurrent`` is then its ceiling (optional, default 1000)
            and it starts at ``min(20, max_concurrent)``. Pass an
            ``AdaptiveConcurrency`` as ``limiter`` to configure it further.

    Every ``503`` (and ``504`` for a deadline that passed in the queue) emits
    a ``rejected`` event (extras: ``reason`` ``"overloaded"`` or
    ``"deadline_exceeded"``, ``http.response.status_code``, ``retry_after``);
    the bulkhead's own ``rejected`` event (reason ``bulkhead_full``) fires too.

    In shadow mode with the bulkhead created here (or a ``Bulkhead`` given as
    ``limiter``), a request takes a slot if one is free; otherwise it runs
    without one, and counts as queued while fewer than ``max_queued``
    requests run over the limit, as refused (``would_reject``) beyond that;
    queue timeouts are not simulated. Another ``limiter`` is entered as
    usual (it may make the request wait); only its refusal is not answered.

    Only ``http`` scopes are limited; ``lifespan`` and ``websocket`` pass through.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_concurrent: int | None = None,
        max_queued: int = 0,
        queue_timeout: float | None = None,
        retry_after: float = 1,
        exempt_paths: Iterable[str] = DEFAULT_EXEMPT_PATHS,
        exempt: ScopePredicate | None = None,
        limiter: ConcurrencyLimiter | None = None,
        name: str | None = "asgi.load_shedding",
        clock: Clock | None = None,
        enforce: Switch = True,
        priority: Callable[[Scope], str] | None = None,
        reserved: Mapping[str, float] | None = None,
        adaptive: bool = False,
    ) -> None:
        self._edge(app, exempt_paths, exempt, enforce)
        max_queued = check_int(max_queued, "max_queued", minimum=0)
        check_seconds(queue_timeout, "queue_timeout", allow_none=True)
        ra = check_seconds(retry_after, "retry_after", allow_zero=True)
        if not isinstance(adaptive, bool):
            raise TypeError(f"adaptive must be a bool, got {adaptive!r}")
        if limiter is None:
            if max_concurrent is None and not adaptive:
                raise TypeError("LoadShedding needs max_concurrent (an int >= 1) or limiter")
            if adaptive:
                ceiling = 1000 if max_concurrent is None else check_int(max_concurrent, "max_concurrent", minimum=1)
                limiter = AdaptiveConcurrency(
                    initial_limit=min(20, ceiling),
                    max_limit=ceiling,
                    max_queued=max_queued,
                    queue_timeout=queue_timeout,
                    name=name,
                    clock=clock,
                )
            else:
                limiter = Bulkhead(
                    check_int(max_concurrent, "max_concurrent", minimum=1),
                    max_queued=max_queued,
                    queue_timeout=queue_timeout,
                    name=name,
                    clock=clock,
                )
            can_queue = max_queued > 0
            bulkhead: Bulkhead | None = limiter
        else:
            if max_concurrent is not None:
                raise TypeError("pass either max_concurrent or limiter to LoadShedding, not both")
            if adaptive:
                raise TypeError("adaptive=True creates the limiter: pass an AdaptiveConcurrency as limiter instead")
            given = [
                param
                for param, set_ in (
                    ("max_queued", max_queued != 0),
                    ("queue_timeout", queue_timeout is not None),
                    ("clock", clock is not None),
                )
                if set_
            ]
            if given:
                raise TypeError(
                    f"{', '.join(given)} given with limiter: they configure the bulkhead that "
                    "max_concurrent creates; the limiter given has its own"
                )
            if not callable(getattr(limiter, "acquire", None)):
                raise TypeError(
                    f"limiter must have an acquire() method returning an async context manager, got {limiter!r}"
                )
            # A foreign limiter may queue (an adaptive one usually does).
            can_queue = True
            bulkhead = limiter if isinstance(limiter, Bulkhead) else None
        #: The limiter holding the slots (a :class:`~resilient.Bulkhead` unless given).
        self.limiter: ConcurrencyLimiter = limiter
        self._can_queue = can_queue
        self._bulkhead = bulkhead
        self.retry_after = ra
        seconds = retry_after_seconds(ra)
        self._retry_after_header = seconds
        self._reject_messages = json_response(
            503,
            {"error": "overloaded", "retry_after": seconds},
            [(b"retry-after", str(seconds).encode("ascii"))],
        )
        self._events = PartEvents("asgi.load_shedding", name)
        self._max_queued = bulkhead.max_queued if bulkhead is not None else 0
        #: ``priority=``: the function of the scope giving the request's class, if any.
        self.priority: Callable[[Scope], str] | None = check_callable(
            priority, "priority", "a callable taking the ASGI scope", allow_none=True
        )
        if reserved is not None and priority is None:
            raise TypeError("reserved given without priority: the shares would be ignored")
        if priority is not None and bulkhead is None:
            raise TypeError("priority needs max_concurrent or a Bulkhead as limiter (it reads the slots in use)")
        #: The share of the concurrency reserved for each class above ``"sheddable"``.
        self.reserved: Mapping[str, float] = _check_reserved(_DEFAULT_RESERVED if reserved is None else reserved)
        # For each class below "critical": the share reserved for the classes above it.
        self._above = {
            "default": self.reserved.get("critical", 0.0),
            "sheddable": self.reserved.get("critical", 0.0) + self.reserved.get("default", 0.0),
        }
        self._bad_priority_logged = False
        self._caps: dict[str, int] = {}
        self._caps_limit = -1
        # Shadow mode: requests running over the limit (without a slot) now.
        self._over = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app for this connection, or shed it."""
        if (
            scope["type"] != "http"
            or scope["path"] in self._exempt_paths
            or (self._exempt is not None and self._exempt(scope))
        ):
            await self.app(scope, receive, send)
            return
        enforce = self.enforce
        if enforce is True or enforcing(enforce):
            if self.priority is not None and self._over_share(scope):
                await self._reject(send)
                return
            cm = self.limiter.acquire()
            bulkhead = self._bulkhead
            if not self._can_queue or (bulkhead is not None and bulkhead.available > 0 and not bulkhead.queued):
                # Entering cannot suspend: no queue to wait in, or a free slot now.
                try:
                    await cm.__aenter__()
                except (RejectedError, TimeoutError):
                    await self._reject(send)
                    return
            else:
                queued_receive = await self._queue(cm, receive, send)
                if queued_receive is None:
                    return
                receive = queued_receive
        else:
            shadow_cm = await self._shadow_admit(scope)
            if shadow_cm is None:  # it runs over the limit, without a slot
                self._over += 1
                try:
                    await self.app(scope, receive, send)
                finally:
                    self._over -= 1
                return
            cm = shadow_cm
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            if not await cm.__aexit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            await cm.__aexit__(None, None, None)

    async def _queue(self, cm: AbstractAsyncContextManager[Any], receive: Receive, send: Send) -> Receive | None:
        """Wait for a slot, watching for a disconnect: the receive to use, or ``None`` when answered/gone."""
        task = asyncio.current_task()
        assert task is not None
        watch = _QueueWatch(receive, task)
        cancelling = task.cancelling()
        handle = asyncio.get_running_loop().call_soon(watch.start)
        try:
            await cm.__aenter__()
        except asyncio.CancelledError:
            handle.cancel()
            await watch.stop()
            # Our own cancel (the client went away while queued) with no
            # other cancel pending: the limiter has given the position back,
            # and nobody is left to answer.
            if watch.disconnected and task.uncancel() <= cancelling:
                return None
            raise
        except (RejectedError, TimeoutError):
            handle.cancel()
            await watch.stop()
            await self._reject(send)
            return None
        handle.cancel()
        if watch.watcher is None:
            watch.done = True
            return receive
        await watch.stop()
        return watch.replay()

    async def _shadow_admit(self, scope: Scope) -> AbstractAsyncContextManager[Any] | None:
        """Shadow mode: decide as usual, but never refuse nor hold the request back; the slot taken, if any."""
        if self.priority is not None and self._over_share(scope):
            self._would_reject()
            return None
        bulkhead = self._bulkhead
        if bulkhead is None:
            cm = self.limiter.acquire()
            try:
                await cm.__aenter__()
            except (RejectedError, TimeoutError):
                self._would_reject()
                return None
            return cm
        if bulkhead.available > 0 and not bulkhead.queued:
            cm = bulkhead.acquire()
            await cm.__aenter__()  # a free slot: entering cannot wait
            return cm
        if self._over >= self._max_queued:
            self._would_reject()
        return None

    def _bad_priority(self, what: str) -> None:
        if not self._bad_priority_logged:
            self._bad_priority_logged = True
            logger.warning(
                "resilient: the priority function of %r %s; such requests are in the 'default' class (logged once)",
                self,
                what,
            )

    def _over_share(self, scope: Scope) -> bool:
        """Whether this request's class has used all the slots it may (a critical request may use every one).

        A function that raises or gives something else than a class puts
        the request in ``"default"``.
        """
        assert self.priority is not None
        bulkhead = self._bulkhead
        assert bulkhead is not None
        caps = self._caps
        if self._caps_limit != bulkhead.max_concurrent:  # first use, or the limit moved (adaptive)
            self._caps_limit = bulkhead.max_concurrent
            caps = self._caps = self._caps_for(bulkhead.max_concurrent)
        try:
            cls = self.priority(scope)
        except Exception as exc:
            self._bad_priority(f"raised {type(exc).__name__}: {exc}")
            cls = "default"
        try:
            cap = caps[cls]
        except Exception:  # not a class (possibly not even hashable)
            self._bad_priority(f"returned {cls!r}, not one of {PRIORITY_CLASSES}")
            cap = caps["default"]
        # In shadow mode the requests running over the limit hold no slot but count.
        return bulkhead.running + self._over >= cap

    def _caps_for(self, limit: int) -> dict[str, int]:
        """The slots each class may use out of ``limit``: what the classes above it do not reserve."""
        above = self._above
        return {
            # Never over its share: the bulkhead alone decides for it (a slot, the queue, or 503).
            "critical": sys.maxsize,
            "default": limit - math.ceil(above["default"] * limit - 1e-9),
            "sheddable": limit - math.ceil(above["sheddable"] * limit - 1e-9),
        }

    def _would_reject(self) -> None:
        self.would_reject += 1
        self._report(WOULD_REJECT)

    def _report(self, event: str) -> tuple[Message, Message]:
        """Emit the event of a refusal (or, in shadow mode, of a refusal not made); the answer it takes."""
        # A wait that ended because the caller's deadline passed (the limiter
        # cuts its queue wait to the deadline) is not overload: 504, as an
        # expired deadline gets everywhere else.
        left = remaining()
        if left is not None and left <= DEADLINE_SLACK:
            self._events.emit(event, 504, {EXTRA_REASON: "deadline_exceeded"})
            return DEADLINE_EXCEEDED
        self._events.emit(event, 503, {EXTRA_REASON: "overloaded", EXTRA_RETRY_AFTER: float(self._retry_after_header)})
        return self._reject_messages

    async def _reject(self, send: Send) -> None:
        await send_messages(send, self._report(REJECTED))

    def __repr__(self) -> str:
        return f"LoadShedding(limiter={self.limiter!r})"


def _check_reserved(reserved: Mapping[str, float]) -> Mapping[str, float]:
    """Validate ``reserved=``: shares in [0, 1) of the classes above ``"sheddable"``, summing below 1."""
    if not isinstance(reserved, Mapping):
        raise TypeError(f"reserved must be a mapping of priority class to share, got {reserved!r}")
    out: dict[str, float] = {}
    for cls, share in reserved.items():
        if cls not in ("critical", "default"):
            raise ValueError(f"reserved must map 'critical' and/or 'default' to a share, got the key {cls!r}")
        out[cls] = check_number(share, f"reserved[{cls!r}]", minimum=0.0, strict=False, maximum=1.0)
    if sum(out.values()) >= 1.0:
        raise ValueError(f"reserved shares must sum to less than 1 (sheddable requests need a share), got {reserved!r}")
    return out

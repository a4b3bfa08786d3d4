"""LoadShedding: a concurrency limit at the edge, 503 for the excess."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, runtime_checkable

from resilient.asgi._common import (
    DEADLINE_EXCEEDED,
    DEADLINE_SLACK,
    DEFAULT_EXEMPT_PATHS,
    ASGIApp,
    Message,
    Receive,
    Scope,
    ScopePredicate,
    Send,
    check_app,
    check_int,
    check_number,
    check_optional_number,
    check_predicate,
    exempt_set,
    json_response,
    retry_after_seconds,
    send_messages,
)
from resilient.bulkhead import Bulkhead
from resilient.clock import Clock
from resilient.deadline import remaining
from resilient.errors import RejectedError

__all__ = ["ConcurrencyLimiter", "LoadShedding"]

# While a request waits for a slot we read its body to notice a disconnect;
# past this many bytes we stop reading (and stop watching) rather than buffer
# an upload for a request that may be refused anyway.
_MAX_BUFFERED = 64 * 1024


@runtime_checkable
class ConcurrencyLimiter(Protocol):
    """What :class:`LoadShedding` needs from its limiter (a :class:`~resilient.bulkhead.Bulkhead` has it).

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


class LoadShedding:
    """Admit at most ``max_concurrent`` requests at a time; the excess gets ``503``.

    Requests beyond the limit wait in a queue of at most ``max_queued`` for at
    most ``queue_timeout`` seconds; when the queue is full (or the wait times
    out) the client gets ``503 Service Unavailable`` with ``Retry-After`` and a
    small JSON body ``{"error": "overloaded", "retry_after": 1}``, before the
    app sees the request. The wait is also cut to the request's deadline (see
    :class:`~resilient.asgi.Deadline`); a request whose deadline passes while
    it waits gets ``504`` and ``{"error": "deadline_exceeded"}`` instead, as
    an expired deadline does everywhere else. A client that disconnects while
    queued gives its queue position back at once.

    Args:
        app: the ASGI application.
        max_concurrent: requests the app may run at once (a
            :class:`~resilient.bulkhead.Bulkhead` is created for it). Give
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
        name: the name of the bulkhead created (shown by the status endpoint).
        clock: the clock of the bulkhead created (tests).

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
    ) -> None:
        self.app = check_app(app)
        max_queued = check_int(max_queued, "max_queued", minimum=0)
        check_optional_number(queue_timeout, "queue_timeout")
        ra = check_number(retry_after, "retry_after", strict=False)
        if limiter is None:
            if max_concurrent is None:
                raise TypeError("LoadShedding needs max_concurrent (an int >= 1) or limiter")
            check_int(max_concurrent, "max_concurrent", minimum=1)
            limiter = Bulkhead(
                max_concurrent, max_queued=max_queued, queue_timeout=queue_timeout, name=name, clock=clock
            )
            can_queue = max_queued > 0
            bulkhead: Bulkhead | None = limiter
        else:
            if max_concurrent is not None:
                raise TypeError("pass either max_concurrent or limiter to LoadShedding, not both")
            if not callable(getattr(limiter, "acquire", None)):
                raise TypeError(
                    f"limiter must have an acquire() method returning an async context manager, got {limiter!r}"
                )
            # A foreign limiter may queue (an adaptive one usually does).
            can_queue = True
            bulkhead = limiter if isinstance(limiter, Bulkhead) else None
        #: The limiter holding the slots (a :class:`~resilient.bulkhead.Bulkhead` unless given).
        self.limiter: ConcurrencyLimiter = limiter
        self._can_queue = can_queue
        self._bulkhead = bulkhead
        self.retry_after = ra
        self._exempt_paths = exempt_set(exempt_paths)
        self._exempt = check_predicate(exempt, "exempt")
        seconds = retry_after_seconds(ra)
        self._reject_messages = json_response(
            503,
            {"error": "overloaded", "retry_after": seconds},
            [(b"retry-after", str(seconds).encode("ascii"))],
        )

    def _exempted(self, scope: Scope) -> bool:
        return scope["path"] in self._exempt_paths or (self._exempt is not None and self._exempt(scope))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app for this connection, or shed it."""
        if scope["type"] != "http" or self._exempted(scope):
            await self.app(scope, receive, send)
            return
        admitted = await self._admit(receive, send)
        if admitted is None:
            return
        cm, receive = admitted
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            if not await cm.__aexit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            await cm.__aexit__(None, None, None)

    async def _admit(self, receive: Receive, send: Send) -> tuple[AbstractAsyncContextManager[Any], Receive] | None:
        """Take a slot: the entered context manager and the receive to use, or ``None`` when answered/gone."""
        cm = self.limiter.acquire()
        bulkhead = self._bulkhead
        if not self._can_queue or (bulkhead is not None and bulkhead.available > 0 and not bulkhead.queued):
            # Entering cannot suspend: no queue to wait in, or a free slot now.
            try:
                await cm.__aenter__()
            except (RejectedError, TimeoutError):
                await self._reject(send)
                return None
            return cm, receive
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
            return cm, receive
        await watch.stop()
        return cm, watch.replay()

    async def _reject(self, send: Send) -> None:
        # A wait that ended because the caller's deadline passed (the limiter
        # cuts its queue wait to the deadline) is not overload: 504, as an
        # expired deadline gets everywhere else.
        left = remaining()
        if left is not None and left <= DEADLINE_SLACK:
            await send_messages(send, DEADLINE_EXCEEDED)
            return
        await send_messages(send, self._reject_messages)

    def __repr__(self) -> str:
        return f"LoadShedding(limiter={self.limiter!r})"

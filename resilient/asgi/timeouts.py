"""RequestTimeout and Deadline: time limits that reach the handler."""

from __future__ import annotations

import asyncio
import contextvars
import re
from collections import deque
from typing import Any

from resilient.asgi._common import (
    DEADLINE_EXCEEDED,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    check_app,
    check_number,
    send_json,
    send_messages,
)
from resilient.clock import SYSTEM_CLOCK, Clock
from resilient.deadline import Deadline as _DeadlineValue
from resilient.deadline import _current as _current_deadline

__all__ = ["DEFAULT_DEADLINE_HEADER", "Deadline", "RequestTimeout", "parse_deadline"]

#: The header the httpx transport sends the remaining deadline in.
DEFAULT_DEADLINE_HEADER = "x-resilient-deadline"

# Seconds, optionally with a gRPC-style unit (grpc-timeout: H M S m u n).
_DEADLINE_RE = re.compile(rb"\s*(-?\d{1,12}(?:\.\d{1,9})?)\s*([HMSmun]?)\s*")
_UNITS = {b"": 1.0, b"S": 1.0, b"H": 3600.0, b"M": 60.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def parse_deadline(value: bytes | str) -> float | None:
    """Seconds from a remaining-time header value, or ``None`` if it is garbage.

    Accepts a decimal number of seconds (``"2.5"``) or a gRPC-style value
    with a unit (``"2500m"``, ``"1S"``, ``"3M"``). A negative value means
    "already expired" and is returned as is.
    """
    if isinstance(value, str):
        try:
            value = value.encode("ascii")
        except UnicodeEncodeError:
            return None
    if value.isdigit() and len(value) <= 12:
        return float(value)
    if len(value) > 40:
        return None
    m = _DEADLINE_RE.fullmatch(value)
    if m is None:
        return None
    return float(m.group(1)) * _UNITS[m.group(2)]


# How far off a deadline is once it no longer limits anything. Finite, so that
# every wait derived from it is one that timers, threads and sockets accept
# (they refuse an infinite one), and far beyond any request.
_NO_LIMIT = 1e9

# Where a request's response deadline is kept in its scope, so that the
# Deadline and RequestTimeout of one request share it (and those of a request
# made in-process from inside a handler do not).
_SCOPE_KEY = "resilient.response_deadline"

_FINAL_BODY = frozenset(("http.response.body", "http.response.zerocopysend"))


class _ResponseDeadline(_DeadlineValue):
    """The deadline of one request's handler, lifted as its response goes out.

    Until ``http.response.start`` the nearest of the request timeout, the
    caller's deadline and any deadline in force outside the middleware (the
    ``floor``) applies; once the response has started, the caller's
    deadline and the floor; once it is complete, the floor only, so that
    background tasks run free of the request's limits. It is changed in
    place, not replaced, because tasks the app started while the request ran
    (a framework's streaming task) hold copies of the context that refer to
    this object; where nothing limits any more it reads as a far-off expiry,
    and in the context that sent the message it is replaced by the floor's
    deadline (``None`` as a rule), so ``remaining()`` there says ``None``.
    """

    __slots__ = ("complete", "end", "floor", "outer", "shadowed", "started", "token")

    def __init__(self, clock: Clock, outer: _DeadlineValue | None, start: float, end: float) -> None:
        """Limits in seconds from now: ``start`` to the response's start, ``end`` to its end."""
        now = clock.now()
        floor = now + _NO_LIMIT
        if outer is not None:
            left = outer.expires_at - outer.clock.now()
            if left < _NO_LIMIT:
                floor = now + left
        end_at = now + end
        if end_at > floor:
            end_at = floor
        start_at = now + start
        # Deadline.__init__'s two fields, set here: this runs once per request.
        self.clock = clock
        self.expires_at = start_at if start_at < end_at else end_at
        self.floor = floor
        self.end = end_at
        self.outer = outer
        self.started = False
        self.complete = False
        self.token: Any = None
        self.shadowed: Any = None

    def limit_start(self, seconds: float) -> None:
        """Limit the time to the start of the response (the request timeout)."""
        at = self.clock.now() + seconds
        if not self.started and at < self.expires_at:
            self.expires_at = at

    def limit_end(self, seconds: float) -> None:
        """Limit the time to the end of the response (the caller's deadline)."""
        at = self.clock.now() + seconds
        if not self.complete and at < self.end:
            self.end = at
            if at < self.expires_at:
                self.expires_at = at

    def advance(self, message: Message) -> None:
        """Follow the response: lift the limits that ``message`` ends."""
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                return
            self.started = True
            self.expires_at = self.end
        elif kind == "http.response.pathsend" or (kind in _FINAL_BODY and not message.get("more_body", False)):
            self.started = self.complete = True
            self.expires_at = self.end = self.floor
        else:
            return
        if self.expires_at >= self.floor and _current_deadline.get() is self:
            _current_deadline.set(self.outer)


def _start_deadline(scope: Scope, clock: Clock, start: float, end: float) -> _ResponseDeadline:
    """Put a new response deadline in force for this request; undo it with :func:`_end_deadline`."""
    rd = _ResponseDeadline(clock, _current_deadline.get(), start, end)
    rd.token = _current_deadline.set(rd)
    rd.shadowed = scope.get(_SCOPE_KEY)
    scope[_SCOPE_KEY] = rd
    return rd


def _end_deadline(scope: Scope, rd: _ResponseDeadline) -> None:
    _current_deadline.reset(rd.token)
    if rd.shadowed is None:
        scope.pop(_SCOPE_KEY, None)
    else:
        scope[_SCOPE_KEY] = rd.shadowed


def _joined(scope: Scope) -> _ResponseDeadline | None:
    """The response deadline a part outside put in force for this very request, if any."""
    rd = scope.get(_SCOPE_KEY)
    if rd is not None and rd is _current_deadline.get() and isinstance(rd, _ResponseDeadline):
        return rd
    return None


def _advancing(send: Send, rd: _ResponseDeadline) -> Send:
    """``send``, letting ``rd`` follow the response."""

    async def send_advancing(message: Message) -> None:
        if not rd.complete:
            rd.advance(message)
        await send(message)

    return send_advancing


class Deadline:
    """Propagate the caller's deadline: the incoming remaining-time header sets :func:`resilient.deadline`.

    A request carrying ``x-resilient-deadline: 1.5`` runs its handler under
    ``deadline(1.5)``, so every :class:`~resilient.Timeout` and every call made
    through the httpx transport inside it is cut to what the caller has left.
    The caller's deadline bounds the whole response, a streaming body
    included (the caller stops reading then), and stops applying once the
    response is complete: what runs after it (Starlette's background tasks)
    is not the caller's work. A request whose deadline has already passed is refused with ``504`` and
    ``{"error": "deadline_exceeded"}`` before any work. Values that cannot be
    parsed are ignored; values above ``max`` are clamped to it (a client may
    not keep a server busy for longer than you allow).

    Args:
        app: the ASGI application.
        header: the header name (case-insensitive).
        max: the largest deadline honoured, in seconds.
        clock: the clock the deadline is measured on (tests).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        header: str = DEFAULT_DEADLINE_HEADER,
        max: float = 300.0,  # noqa: A002 - the documented option name
        clock: Clock | None = None,
    ) -> None:
        self.app = check_app(app)
        if not isinstance(header, str) or not header or not header.isascii() or any(c in header for c in " :\r\n"):
            raise ValueError(f"header must be a non-empty ASCII header name, got {header!r}")
        self.header = header.lower()
        self._header = self.header.encode("ascii")
        m = check_number(max, "max")
        self.max = m
        self.clock = clock if clock is not None else SYSTEM_CLOCK

    def _incoming(self, scope: Scope) -> float | None:
        """The caller's remaining seconds, clamped to ``max`` (<= 0: expired), or ``None``."""
        name = self._header
        for key, value in scope["headers"]:
            if key == name:
                seconds = parse_deadline(value)
                if seconds is None:
                    return None
                return seconds if seconds < self.max else self.max
        return None

    async def _refuse(self, send: Send) -> None:
        await send_messages(send, DEADLINE_EXCEEDED)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app under the caller's deadline, or refuse an expired request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seconds = self._incoming(scope)
        if seconds is None:
            await self.app(scope, receive, send)
            return
        if seconds <= 0:
            await self._refuse(send)
            return
        rd = _joined(scope)
        if rd is not None:  # a RequestTimeout outside follows the response
            rd.limit_end(seconds)
            await self.app(scope, receive, send)
            return
        rd = _start_deadline(scope, self.clock, _NO_LIMIT, seconds)
        try:
            await self.app(scope, receive, _advancing(send, rd))
        finally:
            _end_deadline(scope, rd)

    def __repr__(self) -> str:
        return f"Deadline(header={self.header!r}, max={self.max:g})"


class _TimeoutState:
    """One request's timer entry; ``task`` is dropped once the timer no longer matters."""

    __slots__ = ("expires", "fired", "started", "task")

    def __init__(self, task: asyncio.Task[Any], expires: float) -> None:
        self.task: asyncio.Task[Any] | None = task
        self.expires = expires
        self.started = False
        self.fired = False

    def fire(self) -> None:
        task = self.task
        self.task = None
        # Once the response has started a 504 is impossible: let the stream finish.
        if task is not None and not self.started:
            self.fired = True
            task.cancel()


# The timer may run this much before an entry's expiry (the event loop runs
# timers up to its clock resolution early); a request timeout does not care.
_EARLY = 1e-3


class _Timers:
    """The request timers of one :class:`RequestTimeout` on one event loop.

    Requests share one duration, so they expire in the order they arrive: a
    FIFO with a single ``call_at`` for its head replaces a timer per request
    (``call_at`` + ``cancel`` + the loop's clean-up of cancelled timers were
    the largest cost of the middleware). An entry that would expire before
    the tail (its limit was cut by a deadline) gets its own ``call_at``.

    Every timer runs in an empty context: armed in the request's, it would
    keep that request's context (and all it refers to) alive until it fires,
    and the shared one re-arms itself from its own callback, so under steady
    load for good; a cancelled timer stays in the loop's heap with its
    context until its time.
    """

    __slots__ = ("handle", "live", "loop", "queue")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: deque[_TimeoutState] = deque()
        self.handle: asyncio.TimerHandle | None = None
        self.live = 0

    def add(self, st: _TimeoutState) -> bool:
        """Queue ``st``; ``False`` if it expires before the tail (the caller times it alone)."""
        queue = self.queue
        if queue and st.expires < queue[-1].expires:
            return False
        queue.append(st)
        self.live += 1
        if self.handle is None:
            self.handle = self.loop.call_at(st.expires, self._fire, context=contextvars.Context())
        elif len(queue) > 2 * self.live + 256:
            # Finished entries stuck behind a long-running head: compact, so
            # memory follows the requests in flight, not the throughput.
            self.queue = deque(e for e in queue if e.task is not None)
        return True

    def finish(self, st: _TimeoutState) -> None:
        """The request is over: its entry is skipped (and dropped) from now on."""
        if st.task is not None:
            st.task = None
            self.live -= 1

    def _fire(self) -> None:
        self.handle = None
        queue = self.queue
        now = self.loop.time() + _EARLY
        while queue:
            st = queue[0]
            if st.task is None:
                queue.popleft()
                continue
            if st.expires > now:
                self.handle = self.loop.call_at(st.expires, self._fire, context=contextvars.Context())
                return
            queue.popleft()
            self.live -= 1
            st.fire()


def _limit(seconds: float) -> float:
    """``seconds``, cut to the deadline in force (never below 0)."""
    d = _current_deadline.get()
    if d is not None:
        left = d.expires_at - d.clock.now()
        if left < seconds:
            return left if left > 0.0 else 0.0
    return seconds


class RequestTimeout:
    """Answer ``504`` when the app has not started its response within ``seconds``.

    The handler is cancelled (its ``finally`` blocks and context managers run)
    and the client gets ``504 Gateway Timeout`` with
    ``{"error": "timeout", "timeout": 5.0}``. The limit is on the *start* of
    the response: once the app has sent ``http.response.start`` the middleware
    never sends a second one, and a streaming response is left to finish.

    The handler also runs under ``deadline(seconds)``
    (:func:`resilient.deadline.deadline`, keeping an earlier deadline set by
    :class:`Deadline`), so timeouts and httpx calls inside it are cut to the
    time left, until it starts its response: once ``http.response.start`` has
    been sent, the request timeout no longer limits anything, neither the rest
    of a streaming body nor background tasks (the caller's deadline, if the
    request carried one, still bounds the body; see :class:`Deadline`). Where
    no deadline applies any more, :func:`resilient.remaining` returns ``None``
    (or, in a task started before the response did, a value so large it
    limits nothing). ``set_deadline=False`` turns the deadline off.

    An outer cancellation (the server shutting down) is never turned into a
    504: it propagates.

    Args:
        app: the ASGI application.
        seconds: the time limit, > 0.
        set_deadline: run the handler under a matching deadline.
        clock: the clock of that deadline (tests; the timer itself uses the
            event loop's clock).
    """

    def __init__(self, app: ASGIApp, *, seconds: float, set_deadline: bool = True, clock: Clock | None = None) -> None:
        self.app = check_app(app)
        s = check_number(seconds, "seconds")
        self.seconds = s
        self.set_deadline = bool(set_deadline)
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        self._timers: _Timers | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app with a time limit on the start of its response."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self.set_deadline:
            await self._run(scope, receive, send, _limit(self.seconds), None)
            return
        rd = _joined(scope)
        if rd is not None:
            # Deadline, outside, set it: the caller's deadline may cut the limit.
            rd.limit_start(self.seconds)
            limit = rd.expires_at - rd.clock.now()
            await self._run(scope, receive, send, limit if limit > 0.0 else 0.0, rd)
            return
        rd = _start_deadline(scope, self.clock, self.seconds, _NO_LIMIT)
        limit = rd.expires_at - rd.clock.now()
        try:
            await self._run(scope, receive, send, limit if limit > 0.0 else 0.0, rd)
        finally:
            _end_deadline(scope, rd)

    async def _run(
        self, scope: Scope, receive: Receive, send: Send, limit: float, rd: _ResponseDeadline | None
    ) -> None:
        """Run the app; cancel it and answer 504 if it has not started responding after ``limit`` s.

        ``rd``, the request's response deadline, follows the response (whoever
        put it in force ends it).
        """
        task = asyncio.current_task()
        assert task is not None
        loop = task.get_loop()
        state = _TimeoutState(task, loop.time() + limit)

        async def send_tracking_start(message: Message) -> None:
            if message["type"] == "http.response.start":
                state.started = True
            if rd is not None and not rd.complete:
                rd.advance(message)
            await send(message)

        cancelling = task.cancelling()
        timers = self._timers
        if timers is None or timers.loop is not loop:
            timers = self._timers = _Timers(loop)
        handle = None if timers.add(state) else loop.call_at(state.expires, state.fire, context=contextvars.Context())
        try:
            await self.app(scope, receive, send_tracking_start)
        except BaseException as exc:
            self._finish(timers, state, handle)
            # Ours only if we fired and no other cancellation is pending.
            if (
                state.fired
                and task.uncancel() <= cancelling
                and not state.started
                and isinstance(exc, asyncio.CancelledError)
            ):
                await send_json(send, 504, {"error": "timeout", "timeout": round(limit, 3)})
                return
            raise
        # The success path: drop the timer entry inline (no calls).
        if handle is None:
            if state.task is not None:
                state.task = None
                timers.live -= 1
        else:
            handle.cancel()
            state.task = None
        if state.fired:
            # The app swallowed our cancellation and returned: balance it, and
            # answer if it never did.
            task.uncancel()
            if not state.started:
                await send_json(send, 504, {"error": "timeout", "timeout": round(limit, 3)})

    @staticmethod
    def _finish(timers: _Timers, state: _TimeoutState, handle: asyncio.TimerHandle | None) -> None:
        if handle is None:
            timers.finish(state)
        else:
            handle.cancel()
            state.task = None

    def __repr__(self) -> str:
        return f"RequestTimeout(seconds={self.seconds:g})"

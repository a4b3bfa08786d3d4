"""DeadlinePropagation and RequestTimeout: time limits that reach the handler.

Both are built on the core: the deadline scope of :mod:`resilient.deadline`
(``narrow_deadline`` keeps an earlier deadline, :meth:`Deadline.lift
<resilient.deadline.Deadline.lift>` ends one as the response goes out) and
the shared timer queue of :mod:`resilient.timers`, on the part's ``clock``.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from resilient.asgi._common import (
    DEADLINE_EXCEEDED,
    ASGIApp,
    Message,
    PartEvents,
    Receive,
    Scope,
    Send,
    check_app,
    send_json,
    send_messages,
)
from resilient.clock import Clock
from resilient.deadline import Deadline as _CoreDeadline
from resilient.deadline import current_deadline, limit_for, narrow_deadline, reset_deadline
from resilient.events import EXTRA_DEADLINE, EXTRA_REASON, REJECTED, TIMEOUT
from resilient.timers import FIRED, TASK, LoopQueues, TimerQueue, arm
from resilient.validate import check_bool, check_clock, check_number

__all__ = ["DEFAULT_DEADLINE_HEADER", "DeadlinePropagation", "RequestTimeout", "parse_deadline"]

#: The header the httpx transport sends the remaining deadline in.
DEFAULT_DEADLINE_HEADER = "x-resilient-deadline"

# Seconds, optionally with a gRPC-style unit (grpc-timeout: H M S m u n).
_DEADLINE_RE = re.compile(rb"\s*(-?\d{1,12}(?:\.\d{1,9})?)\s*([HMSmun]?)\s*")
_UNITS = {b"": 1.0, b"S": 1.0, b"H": 3600.0, b"M": 60.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}

_START = "http.response.start"
_FINAL_BODY = frozenset(("http.response.body", "http.response.zerocopysend"))


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


class DeadlinePropagation:
    """Propagate the caller's deadline: the incoming remaining-time header sets :func:`resilient.deadline`.

    A request carrying ``x-resilient-deadline: 1.5`` runs its handler under
    ``deadline(1.5)``, so every :class:`~resilient.Timeout` and every call made
    through the httpx transport inside it is cut to what the caller has left.
    The caller's deadline bounds the whole response, a streaming body
    included (the caller stops reading then), and stops applying once the
    response is complete: what runs after it (Starlette's background tasks)
    is not the caller's work. A request whose deadline has already passed is
    refused with ``504`` and ``{"error": "deadline_exceeded"}`` before any
    work (and a ``rejected`` event, reason ``deadline_exceeded``). Values
    that cannot be parsed are ignored; values above ``max`` are clamped to it
    (a client may not keep a server busy for longer than you allow).

    Formerly ``resilient.asgi.Deadline`` (a deprecated alias), renamed so
    that it is not mistaken for :class:`resilient.Deadline`, the deadline
    value itself.

    Args:
        app: the ASGI application.
        header: the header name (case-insensitive).
        max: the largest deadline honoured, in seconds.
        clock: the clock the deadline is measured on (tests).
        name: the name its events carry.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        header: str = DEFAULT_DEADLINE_HEADER,
        max: float = 300.0,  # noqa: A002 - the documented option name
        clock: Clock | None = None,
        name: str | None = "asgi.deadline",
    ) -> None:
        self.app = check_app(app)
        if not isinstance(header, str) or not header or not header.isascii() or any(c in header for c in " :\r\n"):
            raise ValueError(f"header must be a non-empty ASCII header name, got {header!r}")
        #: The header read, lower-case.
        self.header = header.lower()
        self._header = self.header.encode("ascii")
        #: The largest deadline honoured, in seconds.
        self.max = check_number(max, "max", unit="seconds")
        #: The clock the deadline is measured on.
        self.clock = check_clock(clock)
        self._events = PartEvents("asgi.deadline", name)

    def incoming(self, scope: Scope) -> float | None:
        """The caller's remaining seconds, clamped to ``max`` (<= 0: expired), or ``None`` (no usable header)."""
        name = self._header
        for key, value in scope["headers"]:
            if key == name:
                seconds = parse_deadline(value)
                if seconds is None:
                    return None
                return seconds if seconds < self.max else self.max
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app under the caller's deadline, or refuse an expired request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        name = self._header
        for key, value in scope["headers"]:
            if key == name:
                # parse_deadline's common case (whole seconds), inlined.
                seconds = float(value) if value.isdigit() and len(value) <= 12 else parse_deadline(value)
                break
        else:
            seconds = None
        if seconds is None:
            await self.app(scope, receive, send)
            return
        if seconds > self.max:
            seconds = self.max
        elif seconds <= 0:
            self._events.emit(REJECTED, 504, {EXTRA_REASON: "deadline_exceeded"})
            await send_messages(send, DEADLINE_EXCEEDED)
            return
        outer = current_deadline()
        token = narrow_deadline(seconds, self.clock)
        mine = current_deadline()
        try:
            if mine is outer:  # an earlier deadline is in force: it stays, and it is not ours to lift
                await self.app(scope, receive, send)
                return
            assert mine is not None

            async def send_lifting(message: Message) -> None:
                # After the server took the message: a part inside lifts its
                # own deadline to ours once it has sent, so it sees ours lifted.
                try:
                    await send(message)
                finally:
                    kind = message["type"]
                    if kind == "http.response.pathsend" or (
                        kind in _FINAL_BODY and not message.get("more_body", False)
                    ):
                        mine.lift(outer)

            await self.app(scope, receive, send_lifting)
        finally:
            reset_deadline(token)

    def __repr__(self) -> str:
        return f"DeadlinePropagation(header={self.header!r}, max={self.max:g})"


class RequestTimeout:
    """Answer ``504`` when the app has not started its response within ``seconds``.

    The handler is cancelled (its ``finally`` blocks and context managers run)
    and the client gets ``504 Gateway Timeout`` with
    ``{"error": "timeout", "timeout": 5.0}`` (and a ``timeout`` event). The
    limit is on the *start* of the response: once the app has sent
    ``http.response.start`` the middleware never sends a second one, and a
    streaming response is left to finish.

    The handler also runs under ``deadline(seconds)``
    (:func:`resilient.deadline.deadline`, keeping an earlier deadline set by
    :class:`DeadlinePropagation`), so timeouts and httpx calls inside it are
    cut to the time left, until it starts its response: once
    ``http.response.start`` has been sent, the request timeout no longer
    limits anything, neither the rest of a streaming body nor background
    tasks (the caller's deadline, if the request carried one, still bounds
    the body; see :class:`DeadlinePropagation`). Where no deadline applies
    any more, :func:`resilient.remaining` returns ``None``.
    ``set_deadline=False`` turns the deadline off.

    An outer cancellation (the server shutting down) is never turned into a
    504: it propagates.

    Args:
        app: the ASGI application.
        seconds: the time limit, > 0.
        set_deadline: run the handler under a matching deadline.
        clock: the clock of the timer and of that deadline (tests pass a
            :class:`~resilient.testing.FakeClock`).
        name: the name its events carry.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        seconds: float,
        set_deadline: bool = True,
        clock: Clock | None = None,
        name: str | None = "asgi.request_timeout",
    ) -> None:
        self.app = check_app(app)
        #: The time limit on the start of the response, in seconds.
        self.seconds = check_number(seconds, "seconds", unit="seconds")
        #: Whether the handler runs under a matching deadline.
        self.set_deadline = check_bool(set_deadline, "set_deadline")
        #: The clock of the timer and the deadline.
        self.clock = check_clock(clock)
        self._events = PartEvents("asgi.request_timeout", name)
        # One timer queue per event loop (requests share one duration, so they
        # expire in the order they arrive: one clock timer for all of them).
        self._queues = LoopQueues(self.clock)

    def timers(self) -> TimerQueue | None:
        """The timer queue of the running loop's requests, if any request ran on it (tests, introspection)."""
        try:
            return self._queues.find(asyncio.get_running_loop())
        except RuntimeError:
            return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app with a time limit on the start of its response."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None
        seconds = self.seconds
        clock = self.clock
        now = clock.now()
        outer = current_deadline()
        limit, by_deadline = limit_for(seconds) if outer is not None else (seconds, False)
        queues = self._queues
        queue = queues.last
        loop = task.get_loop()
        if queue is None or queue.loop is not loop:
            queue = queues.get(loop)
        entry = [now + limit, task, False]
        # A limit cut by the caller's deadline still joins the queue when it
        # keeps the queue's order (the callers' deadlines mostly do); the
        # queue refuses it otherwise, and it gets a timer of its own.
        handle = None if queue.push(entry) else arm(clock, entry)
        mine: _CoreDeadline | None = None
        token = None
        if self.set_deadline and not by_deadline:
            token = narrow_deadline(seconds, clock)
            mine = current_deadline()
            if mine is outer:
                mine = None
        started = False

        async def send_timed(message: Message) -> None:
            nonlocal started
            if message["type"] == _START and not started:
                # From here on a 504 is impossible: the timer no longer matters.
                started = True
                if handle is None:
                    queue.done(entry)
                else:
                    handle.cancel()
                    entry[TASK] = None
            try:
                await send(message)
            finally:
                if mine is not None and started:
                    # Ours ends at the start; then it follows the deadline
                    # outside (lifted in its turn once the response is complete).
                    mine.lift(outer)

        cancelling = task.cancelling()
        try:
            await self.app(scope, receive, send_timed)
        except BaseException as exc:
            self._finish(queue, entry, handle, token)
            # Ours only if we fired and no other cancellation is pending.
            if (
                entry[FIRED]
                and task.uncancel() <= cancelling
                and not started
                and isinstance(exc, asyncio.CancelledError)
            ):
                await self._expired(send, limit, by_deadline)
                return
            raise
        if token is not None:
            reset_deadline(token)
        if entry[TASK] is not None:  # not done at the response's start already (the usual case)
            if handle is None:
                queue.done(entry)
            else:
                handle.cancel()
                entry[TASK] = None
        if entry[FIRED]:
            # The app swallowed our cancellation and returned: balance it, and
            # answer if it never did.
            task.uncancel()
            if not started:
                await self._expired(send, limit, by_deadline)

    @staticmethod
    def _finish(queue: TimerQueue, entry: list[Any], handle: Any, token: Any) -> None:
        if token is not None:
            reset_deadline(token)
        if handle is None:
            queue.done(entry)
        else:
            handle.cancel()
            entry[TASK] = None

    async def _expired(self, send: Send, limit: float, by_deadline: bool) -> None:
        self._events.emit(TIMEOUT, 504, {EXTRA_REASON: "timeout", EXTRA_DEADLINE: by_deadline}, duration=limit)
        await send_json(send, 504, {"error": "timeout", "timeout": round(limit, 3)})

    def __repr__(self) -> str:
        return f"RequestTimeout(seconds={self.seconds:g})"

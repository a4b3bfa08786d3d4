"""Deadlines that travel with the call, through every policy and integration.

``with deadline(2.0):`` says "whatever happens below must be done within two
seconds". The deadline lives in a :mod:`contextvars` variable, so it follows
the task (and the threads started with ``contextvars.copy_context``). Every
:class:`~resilient.Timeout` clamps itself to it, :class:`~resilient.Retry`
does not start a backoff that would outlive it, the httpx transport sends
what is left downstream in a header, and the ASGI middleware sets it from
that header.

Nested deadlines keep the earliest: an inner ``deadline(10)`` under an outer
``deadline(1)`` still ends after one second.

A deadline that stops applying before its context ends (the ASGI request
timeout, once the response has started) is lifted in place
(:meth:`Deadline.lift`), so that tasks started under it see it lifted too; a
deadline lifted to nothing never expires, and :func:`remaining` then says
``None``, as where no deadline was ever set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

from resilient.clock import SYSTEM_CLOCK, Clock
from resilient.validate import check_number

__all__ = [
    "Deadline",
    "DeadlineToken",
    "clear_deadline",
    "current_deadline",
    "deadline",
    "limit_for",
    "narrow_deadline",
    "remaining",
    "reset_deadline",
]


class Deadline:
    """An absolute point in time on a clock's scale."""

    __slots__ = ("clock", "expires_at")

    def __init__(self, expires_at: float, clock: Clock = SYSTEM_CLOCK) -> None:
        #: When it expires, in ``clock.now()`` units.
        self.expires_at = expires_at
        #: The clock it is measured on.
        self.clock = clock

    def remaining(self) -> float:
        """Seconds left; negative once expired."""
        return self.expires_at - self.clock.now()

    @property
    def expired(self) -> bool:
        """Whether no time is left."""
        return self.remaining() <= 0.0

    def lift(self, to: Deadline | None = None) -> None:
        """From now on, limit no more than ``to`` does (nothing at all when ``None``), everywhere.

        For the code that put this deadline in force (with
        :func:`narrow_deadline`) when its limit ends before the work it
        bounds: the ASGI request timeout stops applying once the response has
        started, but the tasks the handler started (a framework's streaming
        task) and the code that runs after the response (background tasks)
        hold this very object in their copies of the context. It is changed
        in place, so all of them see it lifted; call it again to follow
        ``to`` after ``to`` itself changed. Never lift a deadline that you did
        not create: :func:`narrow_deadline` may keep (and so hand you) an
        earlier one that belongs to your caller.
        """
        if to is None:
            self.expires_at = _INF
        else:
            self.expires_at = to.expires_at
            self.clock = to.clock

    def __repr__(self) -> str:
        return f"Deadline(remaining={self.remaining():.3f})"


_INF = math.inf


_current: ContextVar[Deadline | None] = ContextVar("resilient_deadline", default=None)

#: What :func:`narrow_deadline` returns and :func:`reset_deadline` takes.
DeadlineToken = Token[Deadline | None]


def narrow_deadline(seconds: float, clock: Clock = SYSTEM_CLOCK) -> DeadlineToken:
    """Put a deadline ``seconds`` from now in force, unless an earlier one already is.

    The one place where "narrow the deadline, keep an earlier one" is
    decided: :func:`deadline`, :class:`~resilient.Timeout` with
    ``set_deadline=True``, the ASGI middleware and the httpx transport all
    come here. Undo it with :func:`reset_deadline` (in a ``finally``). The
    caller validates ``seconds``; this is the hot path of middleware.
    """
    outer = _current.get()
    if outer is not None and outer.expires_at - outer.clock.now() <= seconds:
        return _current.set(outer)
    return _current.set(Deadline(clock.now() + seconds, clock))


def reset_deadline(token: DeadlineToken) -> None:
    """Restore the deadline that was in force before :func:`narrow_deadline` returned ``token``."""
    _current.reset(token)


@contextmanager
def deadline(seconds: float, *, clock: Clock | None = None) -> Iterator[Deadline]:
    """Run the block under a deadline ``seconds`` from now.

    If an earlier deadline is already in force, that one is kept (and
    yielded): a callee can never extend its caller's deadline.

    Raises:
        TypeError: ``seconds`` is not a number.
        ValueError: ``seconds`` is NaN or negative.
    """
    check_number(seconds, "seconds", strict=False, allow_inf=True, unit="seconds")
    token = narrow_deadline(seconds, clock if clock is not None else SYSTEM_CLOCK)
    try:
        d = _current.get()
        assert d is not None
        yield d
    finally:
        _current.reset(token)


#: ``current_deadline()``: the deadline in force, or ``None``. (The context
#: variable's own ``get``, not a function calling it: every timeout reads it
#: on every call.)
current_deadline: Callable[[], Deadline | None] = _current.get


def clear_deadline() -> DeadlineToken:
    """Lift every deadline for what runs next in this context, until :func:`reset_deadline`.

    For work that outlives the call that started it (a background cache
    refresh): it must not inherit a caller's deadline that has nothing to do
    with it.
    """
    return _current.set(None)


def limit_for(seconds: float) -> tuple[float, bool]:
    """The limit of a timeout of ``seconds`` under the current deadline: ``(limit, by_deadline)``.

    ``(seconds, False)`` with no deadline, or one that leaves at least
    ``seconds``; else what the deadline leaves (never below 0) and ``True``,
    so that the timeout, when it fires, names the deadline as its cause. A
    lifted deadline (:meth:`Deadline.lift`) is none. :class:`~resilient.Timeout`
    and the ASGI request timeout cut their limits with it. As
    :func:`narrow_deadline`, the caller validates ``seconds`` (a hot path).
    """
    d = _current.get()
    if d is not None:
        left = d.expires_at - d.clock.now()
        if left < seconds:
            return (left if left > 0.0 else 0.0), True
    return seconds, False


def remaining() -> float | None:
    """Seconds left before the current deadline, ``None`` when there is none.

    The value is negative once the deadline has passed. A deadline lifted to
    nothing (:meth:`Deadline.lift`) is none.
    """
    d = _current.get()
    if d is None:
        return None
    left = d.expires_at - d.clock.now()
    return None if left == _INF else left

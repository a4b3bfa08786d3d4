"""ResilienceMiddleware: the edge policies in one, in the documented order."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from resilient.asgi._common import (
    DEFAULT_EXEMPT_PATHS,
    ASGIApp,
    Receive,
    Scope,
    ScopePredicate,
    Send,
    Switch,
    check_app,
)
from resilient.asgi.client import IPAddress, IPNetwork
from resilient.asgi.ratelimit import KeyedLimiter, KeyFunc, RateLimit
from resilient.asgi.shedding import ConcurrencyLimiter, LoadShedding
from resilient.asgi.status import PolicySource, status_app
from resilient.asgi.timeouts import DEFAULT_DEADLINE_HEADER, DeadlinePropagation, RequestTimeout
from resilient.clock import Clock

__all__ = ["ResilienceMiddleware"]


class ResilienceMiddleware:
    """Deadline propagation, rate limiting, load shedding and a request timeout, in one middleware.

    Each part is on only when its option is given (deadline propagation is on
    by default; ``deadline_header=None`` turns it off), and is the
    middleware of the same name wrapping the next one, as if composed by
    hand (:attr:`parts` lists them). From the outside in:

    1. status endpoint (``status_path``): answered before anything else, so it
       works under overload. Opt-in and **sensitive**.
    2. :class:`DeadlinePropagation`: refuses a request whose caller has already given up
       (504) before it costs anything, and sets the deadline for the rest.
    3. :class:`RateLimit` (``rate`` or ``rate_limiter``): refuses a client over its quota (429)
       before it takes a concurrency slot that a well-behaved client needs.
    4. :class:`LoadShedding` (``max_concurrent`` or ``limiter``): holds at most
       that many requests in the app, queues a few, refuses the rest (503).
    5. :class:`RequestTimeout` (``timeout``): 504 if the app has not started
       its response in time; queue time is bounded by ``queue_timeout``
       instead, so a slow queue never eats the handler's budget. Its deadline
       ends when the response starts, the caller's when it is complete.

    ``exempt_paths`` and ``exempt`` apply to rate limiting and load shedding,
    and so does ``enforce`` (``False``, or a callable returning it, for
    shadow mode: see :class:`RateLimit` and :class:`LoadShedding`).
    ``priority`` and ``reserved`` are :class:`LoadShedding`'s (priority
    classes: ``sheddable`` requests are shed first). ``rate_limiter`` is
    :class:`RateLimit`'s ``limiter`` (a keyed limiter,
    e.g. one shared through Redis); ``limiter`` is :class:`LoadShedding`'s.
    An option of a part that is off (``max_queued`` without
    ``max_concurrent``, ``trusted_proxies`` without ``rate``...) is a
    mistake and raises :class:`TypeError` naming it.
    ``name`` prefixes the names of the bulkhead and limiter created
    (``"asgi.load_shedding"``, ``"asgi.rate_limit"``), as the status endpoint
    shows them; give each app its own when a process serves several.
    See the individual middleware for what each option means.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_concurrent: int | None = None,
        max_queued: int = 0,
        queue_timeout: float | None = None,
        retry_after: float = 1,
        limiter: ConcurrencyLimiter | None = None,
        rate: float | None = None,
        per: float = 1.0,
        burst: int | None = None,
        key: KeyFunc | None = None,
        trusted_proxies: Iterable[str | IPNetwork | IPAddress] = (),
        max_keys: int = 10_000,
        headers_on_success: bool = False,
        timeout: float | None = None,
        deadline_header: str | None = DEFAULT_DEADLINE_HEADER,
        max_deadline: float = 300.0,
        exempt_paths: Iterable[str] = DEFAULT_EXEMPT_PATHS,
        exempt: ScopePredicate | None = None,
        status_path: str | None = None,
        status_policies: PolicySource | None = None,
        name: str = "asgi",
        clock: Clock | None = None,
        rate_limiter: KeyedLimiter | None = None,
        enforce: Switch = True,
        priority: Callable[[Scope], str] | None = None,
        reserved: Mapping[str, float] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        inner: ASGIApp = check_app(app)
        if isinstance(trusted_proxies, str):
            trusted_proxies = (trusted_proxies,)
        trusted_proxies = tuple(trusted_proxies)
        shedding = max_concurrent is not None or limiter is not None
        limiting = rate is not None or rate_limiter is not None
        _refuse_orphans(
            "max_concurrent or limiter",
            shedding,
            (
                ("max_queued", max_queued != 0),
                ("queue_timeout", queue_timeout is not None),
                ("retry_after", retry_after != 1),
                ("priority", priority is not None),
                ("reserved", reserved is not None),
            ),
        )
        _refuse_orphans(
            "rate or rate_limiter",
            limiting,
            (
                ("per", per != 1.0),
                ("burst", burst is not None),
                ("key", key is not None),
                ("trusted_proxies", bool(trusted_proxies)),
                ("max_keys", max_keys != 10_000),
                ("headers_on_success", headers_on_success is not False),
            ),
        )
        _refuse_orphans("deadline_header", deadline_header is not None, (("max_deadline", max_deadline != 300.0),))
        _refuse_orphans(
            "max_concurrent, limiter, rate or rate_limiter", shedding or limiting, (("enforce", enforce is not True),)
        )
        if status_path is not None and (not isinstance(status_path, str) or not status_path.startswith("/")):
            raise ValueError(f"status_path must be a path starting with '/' or None, got {status_path!r}")
        #: The wrapped application.
        self.app = inner
        # What both limits share: which requests they leave alone, and shadow mode.
        edge: dict[str, Any] = {"exempt_paths": tuple(exempt_paths), "exempt": exempt, "enforce": enforce}
        #: The parts in use, outermost first; each wraps the next (the last wraps :attr:`app`).
        self.parts: list[object] = []
        if timeout is not None:
            inner = RequestTimeout(inner, seconds=timeout, clock=clock, name=f"{name}.request_timeout")
            self.parts.insert(0, inner)
        if shedding:
            inner = LoadShedding(
                inner,
                max_concurrent=max_concurrent,
                max_queued=max_queued,
                queue_timeout=queue_timeout,
                retry_after=retry_after,
                limiter=limiter,
                name=f"{name}.load_shedding",
                clock=clock if limiter is None else None,
                priority=priority,
                reserved=reserved,
                **edge,
            )
            self.parts.insert(0, inner)
        if limiting:
            inner = RateLimit(
                inner,
                rate=rate,
                per=per,
                burst=burst,
                key=key,
                trusted_proxies=trusted_proxies,
                max_keys=max_keys,
                headers_on_success=headers_on_success,
                name=f"{name}.rate_limit",
                clock=clock if rate_limiter is None else None,
                limiter=rate_limiter,
                **edge,
            )
            self.parts.insert(0, inner)
        if deadline_header is not None:
            inner = DeadlinePropagation(
                inner, header=deadline_header, max=max_deadline, clock=clock, name=f"{name}.deadline"
            )
            self.parts.insert(0, inner)
        #: The outermost part (the app itself when no part is on).
        self.chain: ASGIApp = inner
        #: The path of the status endpoint, if any.
        self.status_path = status_path
        self._status = status_app(status_policies) if status_path is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route the connection through the enabled parts (or to the status endpoint)."""
        if self._status is not None and scope["type"] == "http" and scope["path"] == self.status_path:
            await self._status(scope, receive, send)
            return
        await self.chain(scope, receive, send)

    def __repr__(self) -> str:
        return f"ResilienceMiddleware({', '.join(repr(p) for p in self.parts)})"


def _refuse_orphans(part: str, on: bool, options: Iterable[tuple[str, bool]]) -> None:
    """Refuse options given to a part that is off: a silently ignored option is a limit nobody enforces."""
    if on:
        return
    given = [param for param, set_ in options if set_]
    if given:
        plural = "s" if len(given) > 1 else ""
        raise TypeError(f"{', '.join(given)} given without {part}: the option{plural} would be ignored")

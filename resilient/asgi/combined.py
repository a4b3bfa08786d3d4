"""ResilienceMiddleware: the edge policies in one, in the documented order."""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from resilient.asgi._common import (
    DEFAULT_EXEMPT_PATHS,
    ASGIApp,
    Receive,
    Scope,
    ScopePredicate,
    Send,
    check_app,
    exempt_set,
)
from resilient.asgi.client import ClientIP, IPAddress, IPNetwork
from resilient.asgi.ratelimit import KeyFunc, RateLimit
from resilient.asgi.shedding import ConcurrencyLimiter, LoadShedding
from resilient.asgi.status import PolicySource, status_app
from resilient.asgi.timeouts import (
    _NO_LIMIT,
    DEFAULT_DEADLINE_HEADER,
    Deadline,
    RequestTimeout,
    _advancing,
    _end_deadline,
    _limit,
    _ResponseDeadline,
    _start_deadline,
    parse_deadline,
)
from resilient.clock import SYSTEM_CLOCK, Clock
from resilient.errors import RejectedError

__all__ = ["ResilienceMiddleware"]


class ResilienceMiddleware:
    """Deadline propagation, rate limiting, load shedding and a request timeout, in one middleware.

    Each part is on only when its option is given (deadline propagation is on
    by default; ``deadline_header=None`` turns it off). From the outside in:

    1. status endpoint (``status_path``): answered before anything else, so it
       works under overload. Opt-in and **sensitive**.
    2. :class:`Deadline`: refuses a request whose caller has already given up
       (504) before it costs anything, and sets the deadline for the rest.
    3. :class:`RateLimit` (``rate``): refuses a client over its quota (429)
       before it takes a concurrency slot that a well-behaved client needs.
    4. :class:`LoadShedding` (``max_concurrent`` or ``limiter``): holds at most
       that many requests in the app, queues a few, refuses the rest (503).
    5. :class:`RequestTimeout` (``timeout``): 504 if the app has not started
       its response in time; queue time is bounded by ``queue_timeout``
       instead, so a slow queue never eats the handler's budget. Its deadline
       ends when the response starts, the caller's when it is complete.

    ``exempt_paths`` and ``exempt`` apply to rate limiting and load shedding.
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
    ) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        inner: ASGIApp = check_app(app)
        #: The wrapped application.
        self.app = inner
        exempt_paths = tuple(exempt_paths)
        #: The parts in use, outermost first (for inspection and tests).
        self.parts: list[object] = []
        if timeout is not None:
            inner = RequestTimeout(inner, seconds=timeout, clock=clock)
            self.parts.insert(0, inner)
        if max_concurrent is not None or limiter is not None:
            inner = LoadShedding(
                inner,
                max_concurrent=max_concurrent,
                max_queued=max_queued,
                queue_timeout=queue_timeout,
                retry_after=retry_after,
                exempt_paths=exempt_paths,
                exempt=exempt,
                limiter=limiter,
                name=f"{name}.load_shedding",
                clock=clock,
            )
            self.parts.insert(0, inner)
        if rate is not None:
            inner = RateLimit(
                inner,
                rate=rate,
                per=per,
                burst=burst,
                key=key,
                trusted_proxies=trusted_proxies,
                max_keys=max_keys,
                headers_on_success=headers_on_success,
                exempt_paths=exempt_paths,
                exempt=exempt,
                name=f"{name}.rate_limit",
                clock=clock,
            )
            self.parts.insert(0, inner)
        if deadline_header is not None:
            inner = Deadline(inner, header=deadline_header, max=max_deadline, clock=clock)
            self.parts.insert(0, inner)
        self._chain = inner
        if status_path is not None and (not isinstance(status_path, str) or not status_path.startswith("/")):
            raise ValueError(f"status_path must be a path starting with '/' or None, got {status_path!r}")
        self.status_path = status_path
        self._status = status_app(status_policies) if status_path is not None else None
        # The HTTP path runs the parts' steps inline, in the chain's order,
        # instead of awaiting four nested middleware: one frame and one send
        # wrapper per request instead of four, and no method call where an
        # attribute will do. The behaviour is the chain's (the tests run the
        # same scenarios against both).
        dl = next((p for p in self.parts if isinstance(p, Deadline)), None)
        rl = next((p for p in self.parts if isinstance(p, RateLimit)), None)
        shed = next((p for p in self.parts if isinstance(p, LoadShedding)), None)
        self._deadline = dl
        self._deadline_header = dl._header if dl is not None else None
        self._max_deadline = dl.max if dl is not None else 0.0
        self._rate = rl
        self._rate_limiter = rl.limiter if rl is not None else None
        self._rate_headers = rl is not None and rl.headers_on_success
        key = rl.key if rl is not None else None
        # The default key with no proxy to trust: an IPv4 peer is its own key.
        self._plain_ip_key = isinstance(key, ClientIP) and not key.trusted_proxies
        self._shed = shed
        self._shed_can_queue = shed is not None and shed._can_queue
        self._shed_bulkhead = shed._bulkhead if shed is not None else None
        self._timeout = next((p for p in self.parts if isinstance(p, RequestTimeout)), None)
        self._exempt_paths = exempt_set(exempt_paths)
        self._exempt = exempt
        self._clock = clock if clock is not None else SYSTEM_CLOCK

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route the connection through the enabled parts."""
        if scope["type"] != "http":
            await self._chain(scope, receive, send)
            return
        path = scope["path"]
        if path == self.status_path and self._status is not None:
            await self._status(scope, receive, send)
            return
        rd: _ResponseDeadline | None = None
        name = self._deadline_header
        if name is not None:
            for k, v in scope["headers"]:
                if k == name:
                    seconds = float(v) if v.isdigit() and len(v) <= 12 else parse_deadline(v)
                    if seconds is not None:
                        if seconds <= 0:
                            await self._deadline._refuse(send)  # type: ignore[union-attr]
                            return
                        if seconds > self._max_deadline:
                            seconds = self._max_deadline
                        # Set before admission, as the chain does: a queued
                        # request never waits past its caller's deadline.
                        rd = _start_deadline(scope, self._clock, _NO_LIMIT, seconds)
                    break
        try:
            exempt = path in self._exempt_paths or (self._exempt is not None and self._exempt(scope))
            limiter = self._rate_limiter
            if limiter is not None and not exempt:
                rl = self._rate
                assert rl is not None
                client = scope.get("client")
                if self._plain_ip_key and client and client[0] and ":" not in client[0]:
                    key: Hashable | None = client[0]
                else:
                    key = rl.key(scope)
                if key is not None:
                    decision = limiter.try_acquire(key)
                    if not decision.allowed:
                        await rl._refuse(scope, receive, send, decision)
                        return
                    if self._rate_headers:
                        send = rl._send_with_headers(send, decision)
            shed = self._shed
            if shed is None or exempt:
                cm = None
            else:
                bulkhead = self._shed_bulkhead
                if not self._shed_can_queue or (
                    bulkhead is not None and bulkhead.available > 0 and not bulkhead.queued
                ):
                    cm = shed.limiter.acquire()
                    try:
                        await cm.__aenter__()
                    except (RejectedError, TimeoutError):
                        await shed._reject(send)
                        return
                else:
                    admitted = await shed._admit(receive, send)
                    if admitted is None:
                        return
                    cm, receive = admitted
            rt = self._timeout
            if rt is None:
                limit = 0.0
                if rd is not None:
                    send = _advancing(send, rd)
            elif rt.set_deadline:
                if rd is None:
                    rd = _start_deadline(scope, self._clock, rt.seconds, _NO_LIMIT)
                else:
                    rd.limit_start(rt.seconds)
                # Time spent queued counts against the caller's deadline.
                limit = rd.expires_at - rd.clock.now()
                if limit < 0.0:
                    limit = 0.0
            else:
                limit = _limit(rt.seconds)
                if rd is not None:
                    send = _advancing(send, rd)
            if cm is None:
                if rt is None:
                    await self.app(scope, receive, send)
                else:
                    await rt._run(scope, receive, send, limit, rd if rt.set_deadline else None)
                return
            try:
                if rt is None:
                    await self.app(scope, receive, send)
                else:
                    await rt._run(scope, receive, send, limit, rd if rt.set_deadline else None)
            except BaseException as exc:
                if not await cm.__aexit__(type(exc), exc, exc.__traceback__):
                    raise
            else:
                await cm.__aexit__(None, None, None)
        finally:
            if rd is not None:
                _end_deadline(scope, rd)

    def __repr__(self) -> str:
        return f"ResilienceMiddleware({', '.join(repr(p) for p in self.parts)})"

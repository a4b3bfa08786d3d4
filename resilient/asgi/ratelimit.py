"""RateLimit: per-client token buckets at the edge, 429 for the excess."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from resilient.asgi._common import (
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
)
from resilient.asgi.client import ClientIP, IPAddress, IPNetwork
from resilient.asgi.limits import Bucket, Chains, Limits, Route, policy_id, quota_window
from resilient.clock import Clock
from resilient.events import EXTRA_REASON, EXTRA_RETRY_AFTER, REJECTED, WOULD_REJECT
from resilient.policy import is_async_callable
from resilient.ratelimit import KeyedRateLimiter, RateDecision, RateStore
from resilient.validate import check_int, check_number

__all__ = ["KeyedLimiter", "RateLimit"]

KeyFunc = Callable[[Scope], Hashable | None]


@runtime_checkable
class KeyedLimiter(Protocol):
    """What :class:`RateLimit` needs from ``limiter=``: a keyed limiter's public decision.

    :class:`~resilient.ratelimit.KeyedRateLimiter` has it (whatever store
    holds its buckets), and so does the Redis-backed
    :class:`~resilient.redis.KeyedRedisRateLimiter`, whose buckets every
    replica shares. ``try_acquire(key)`` takes one token from ``key``'s
    bucket if it is there now and never waits; it returns a
    :class:`~resilient.ratelimit.RateDecision`, or an awaitable of one when
    it is an ``async def`` (it is then awaited). A limiter that also has an
    ``async def atry_acquire(key)`` is asked through that one (a remote
    store must not block the event loop). ``rate`` and ``per`` give the
    quota advertised in ``RateLimit-Policy``.
    """

    @property
    def rate(self) -> float:
        """Tokens per ``per`` seconds."""
        ...

    @property
    def per(self) -> float:
        """The period of ``rate``, in seconds."""
        ...

    def try_acquire(self, key: Any, tokens: int = 1) -> Any:
        """A :class:`~resilient.ratelimit.RateDecision` for one request of ``key`` (or an awaitable of it)."""
        ...


class RateLimit(EdgePart):
    """Limit each client to ``rate`` requests per ``per`` seconds; the excess gets ``429``.

    Each client key has a token bucket of ``burst`` tokens refilled at
    ``rate / per`` per second (a :class:`~resilient.ratelimit.KeyedRateLimiter`,
    whose memory is bounded by ``max_keys``: the least recently seen keys are
    forgotten first), or the buckets of the keyed limiter given as
    ``limiter`` (a Redis-backed one shares them between the replicas of a
    service, so that the edge quota is one quota, not one per replica). A
    refused request gets ``429 Too Many Requests`` with ``Retry-After``, the
    IETF ``RateLimit-Policy`` and ``RateLimit`` header fields
    (draft-ietf-httpapi-ratelimit-headers), and the JSON body
    ``{"error": "rate_limited", "retry_after": 2}``; the app never sees it.
    Each refusal emits a ``rejected`` event (extras ``reason``
    ``"rate_limited"``, ``http.response.status_code`` 429, ``retry_after``),
    besides the limiter's own.

    Args:
        app: the ASGI application.
        rate: requests allowed per ``per`` seconds, > 0 (not with ``limiter``).
        per: the period of ``rate`` in seconds.
        burst: the bucket size (requests a client may send at once); the
            limiter's default when ``None``.
        key: a function of the scope giving the client key; returning ``None``
            exempts the request. The default is :class:`ClientIP` (the peer
            address; forwarded headers only from ``trusted_proxies``).
        trusted_proxies: CIDRs of your reverse proxies, for the default key.
        max_keys: how many client keys to remember at most.
        headers_on_success: also add ``RateLimit-Policy``/``RateLimit`` to the
            app's own responses (this wraps ``send``).
        websockets: limit ``websocket`` handshakes too (refused with a 429
            denial response where the server supports it, else closed with
            code 1008 before the handshake completes).
        exempt_paths: exact paths never limited (health checks by default).
        exempt: a predicate on the scope; ``True`` means "never limit this one".
        policy_name: the quota policy's identifier in the headers.
        name: the name of the limiter created (shown by the status endpoint),
            and of the events this middleware emits.
        clock: the clock of the limiter (tests).
        limiter: a keyed limiter (see :class:`KeyedLimiter`) deciding instead
            of one created here from ``rate``/``per``/``burst``/``max_keys``
            (give either).
        enforce: ``False`` (or a callable returning ``False``, read on every
            request) for shadow mode: a request over its quota is not
            refused; a ``would_reject`` event (status 429) says it would have
            been, and the app serves it.
        limits: instead of ``rate``: a :class:`~resilient.asgi.Rate`, a
            chain of them that must all admit a request (``[Rate(10),
            Rate(1000, per=3600)]``), or :class:`~resilient.asgi.Tiers` (a
            key's chain from a function: tenant plans, allow-lists); for the
            requests no route matches (``None`` with ``routes``: those are
            not limited).
        routes: :class:`~resilient.asgi.Route` s, first match wins, each with
            its own limits and buckets (``Route("/search", Rate(2))``).
        store: with ``limits``/``routes``: a callable making the store of
            each limit (``lambda: RedisRateStore(client)`` shares them
            between replicas); the in-memory store when ``None``.

    With ``limits``/``routes``, the ``RateLimit-Policy`` header lists every
    limit of the request's chain and ``RateLimit`` describes the one closest
    to denial (the fewest requests left; on a refusal, the refusing one). A
    chain is checked in order and stops at the first refusal; the limits
    before it have counted the request (as ASP.NET Core's chained limiters
    do), so list the scarcest first.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        rate: float | None = None,
        per: float = 1.0,
        burst: int | None = None,
        key: KeyFunc | None = None,
        trusted_proxies: Iterable[str | IPNetwork | IPAddress] = (),
        max_keys: int = 10_000,
        headers_on_success: bool = False,
        websockets: bool = False,
        exempt_paths: Iterable[str] = DEFAULT_EXEMPT_PATHS,
        exempt: ScopePredicate | None = None,
        policy_name: str = "default",
        name: str | None = "asgi.rate_limit",
        clock: Clock | None = None,
        limiter: KeyedLimiter | None = None,
        enforce: Switch = True,
        limits: Limits | None = None,
        routes: Sequence[Route] = (),
        store: Callable[[], RateStore] | None = None,
    ) -> None:
        self._edge(app, exempt_paths, exempt, enforce)
        own: KeyedRateLimiter | None = None
        #: With ``limits``/``routes``: which limits each request meets.
        self.chains: Chains | None = None
        if limits is not None or routes:
            if rate is not None or limiter is not None or burst is not None or per != 1.0:
                raise TypeError("pass either limits/routes or rate/per/burst/limiter to RateLimit, not both")
            max_keys = check_int(max_keys, "max_keys", minimum=1)
            self.chains = Chains(limits, routes, name=name, max_keys=max_keys, clock=clock, store=store)
            # The first limit stands for the whole in `limiter`, `rate` and `per` (status, repr).
            first = next(iter(self.chains.limiters()), None)
            own = first if first is not None else KeyedRateLimiter(1, max_keys=1, clock=clock)
            limiter = own
            r, p = own.rate, own.per
        elif store is not None:
            raise TypeError("store applies to limits/routes; with rate=, pass limiter=KeyedRateLimiter(..., store=...)")
        elif limiter is None:
            if rate is None:
                raise TypeError("RateLimit needs rate (a number > 0) or limiter (a keyed limiter)")
            r = check_number(rate, "rate")
            p = check_number(per, "per", unit="seconds")
            max_keys = check_int(max_keys, "max_keys", minimum=1)
            limiter = own = KeyedRateLimiter(
                rate, per, burst=burst, mode="reject", max_keys=max_keys, name=name, clock=clock
            )
        else:
            given = [
                param
                for param, value, default in (
                    ("rate", rate, None),
                    ("per", per, 1.0),
                    ("burst", burst, None),
                    ("max_keys", max_keys, 10_000),
                    ("clock", clock, None),
                )
                if value != default
            ]
            if given:
                raise TypeError(
                    f"pass either limiter or {', '.join(given)} to RateLimit, not both: "
                    "the limiter given has its own rate, bucket and clock"
                )
            if not callable(getattr(limiter, "try_acquire", None)):
                raise TypeError(
                    f"limiter must be a keyed limiter with try_acquire(key) -> RateDecision, got {limiter!r}"
                )
            r = check_number(getattr(limiter, "rate", None), "limiter.rate")
            p = check_number(getattr(limiter, "per", None), "limiter.per", unit="seconds")
        # The default key with no proxy to trust: an IPv4 peer is its own key,
        # read inline (ClientIP's own fast path, without the call).
        self._peer_is_key = key is None and not tuple(trusted_proxies)
        if key is None:
            key = ClientIP(trusted_proxies)
        else:
            if not callable(key):
                raise TypeError(f"key must be a callable taking the ASGI scope, got {key!r}")
            if tuple(trusted_proxies):
                raise TypeError(
                    "trusted_proxies applies to the default key only; pass ClientIP(trusted_proxies) as key"
                )
        #: The keyed limiter deciding (a :class:`~resilient.ratelimit.KeyedRateLimiter` unless given).
        self.limiter: KeyedLimiter = limiter
        # A given limiter's async decision is preferred (a remote store must
        # not block the event loop); the in-memory one created here decides
        # synchronously, without a coroutine per request.
        decide = getattr(limiter, "atry_acquire", None) if own is None else None
        if decide is None or not is_async_callable(decide):
            decide = limiter.try_acquire
        self._try_acquire = decide
        self._async = is_async_callable(decide)
        #: The function of the scope giving the client key.
        self.key = key
        #: The quota, as advertised in ``RateLimit-Policy``.
        self.rate = r
        self.per = p
        self.headers_on_success = bool(headers_on_success)
        self.websockets = bool(websockets)
        self._policy_id = policy_id(policy_name, "policy_name")
        self._policy_cache: dict[int, bytes] = {}
        self._events = PartEvents("asgi.rate_limit", name)

    def _policy_header(self, limit: int) -> bytes:
        value = self._policy_cache.get(limit)
        if value is None:
            q, w = quota_window(limit, self.rate, self.per)
            value = f"{self._policy_id};q={q};w={w}".encode("ascii")
            if len(self._policy_cache) < 64:
                self._policy_cache[limit] = value
        return value

    def _headers(self, decision: RateDecision) -> list[tuple[bytes, bytes]]:
        return _rate_headers(decision, self._policy_header(int(decision.limit)), self._policy_id)

    def _send_with_headers(self, send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        return send_with_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app for this connection, or refuse it."""
        kind = scope["type"]
        if kind != "http" and (kind != "websocket" or not self.websockets):
            await self.app(scope, receive, send)
            return
        if scope["path"] in self._exempt_paths or (self._exempt is not None and self._exempt(scope)):
            await self.app(scope, receive, send)
            return
        if self._peer_is_key:
            peer = scope.get("client")
            host = peer[0] if peer else None
            client = host if host.__class__ is str and host and ":" not in host else self.key(scope)
        else:
            client = self.key(scope)
        if client is None:
            await self.app(scope, receive, send)
            return
        if self.chains is not None:
            await self._limit_chain(scope, receive, send, client)
            return
        decision: RateDecision = self._try_acquire(client)
        if self._async:
            decision = await decision  # type: ignore[misc]
        if not decision.allowed:
            enforce = self.enforce
            if enforce is True or enforcing(enforce):
                await self._refuse(scope, receive, send, decision, self._headers(decision))
                return
            self.would_reject += 1
            self._report(WOULD_REJECT, decision)
        elif self.headers_on_success and kind == "http":
            send = self._send_with_headers(send, self._headers(decision))
        await self.app(scope, receive, send)

    async def _limit_chain(self, scope: Scope, receive: Receive, send: Send, client: Hashable) -> None:
        # Every limit of the chain must admit the request; the first refusal ends it.
        assert self.chains is not None
        chain = self.chains.chain(scope, client)
        if chain is None:
            await self.app(scope, receive, send)
            return
        closest: tuple[Bucket, RateDecision] | None = None
        for bucket in chain:
            decision = await bucket.atry_acquire(client) if bucket.remote else bucket.try_acquire(client)
            if not decision.allowed:
                closest = (bucket, decision)
                break
            if closest is None or decision.remaining < closest[1].remaining:
                closest = (bucket, decision)
        assert closest is not None
        bucket, decision = closest
        if not decision.allowed:
            headers = _rate_headers(decision, _chain_policy(chain), bucket.policy_id)
            enforce = self.enforce
            if enforce is True or enforcing(enforce):
                await self._refuse(scope, receive, send, decision, headers)
                return
            self.would_reject += 1
            self._report(WOULD_REJECT, decision)
        elif self.headers_on_success and scope["type"] == "http":
            send = self._send_with_headers(send, _rate_headers(decision, _chain_policy(chain), bucket.policy_id))
        await self.app(scope, receive, send)

    def _report(self, event: str, decision: RateDecision) -> int:
        seconds = retry_after_seconds(decision.retry_after, minimum=1)
        self._events.emit(event, 429, {EXTRA_REASON: "rate_limited", EXTRA_RETRY_AFTER: decision.retry_after})
        return seconds

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, decision: RateDecision, headers: list[tuple[bytes, bytes]]
    ) -> None:
        seconds = self._report(REJECTED, decision)
        start, body = json_response(
            429,
            {"error": "rate_limited", "retry_after": seconds},
            [(b"retry-after", str(seconds).encode("ascii")), *headers],
        )
        if scope["type"] == "http":
            await send(start)
            await send(body)
            return
        # A websocket handshake: answer with an HTTP denial response when the
        # server supports it, otherwise refuse the handshake (the server then
        # answers 403).
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        if "websocket.http.response" in (scope.get("extensions") or {}):
            await send({**start, "type": "websocket.http.response.start"})
            await send({**body, "type": "websocket.http.response.body"})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": "rate limited"})

    def __repr__(self) -> str:
        if self.chains is not None:
            return f"RateLimit(limits={self.chains.default!r}, routes={list(self.chains.routes)!r}, key={self.key!r})"
        return f"RateLimit(rate={self.rate:g}, per={self.per:g}, key={self.key!r})"


def _rate_headers(decision: RateDecision, policy: bytes, policy_id: str) -> list[tuple[bytes, bytes]]:
    """``RateLimit-Policy`` (``policy``) and ``RateLimit`` for ``decision`` of the policy ``policy_id``."""
    remaining = max(0, int(decision.remaining))
    reset = retry_after_seconds(decision.reset)
    return [(b"ratelimit-policy", policy), (b"ratelimit", f"{policy_id};r={remaining};t={reset}".encode("ascii"))]


def _chain_policy(chain: tuple[Bucket, ...]) -> bytes:
    """``RateLimit-Policy`` listing every limit of ``chain``."""
    return ", ".join(bucket.policy for bucket in chain).encode("ascii")

"""The transports: AsyncResilientTransport and ResilientTransport.

Both are thin shells over one engine: :class:`_TransportBase` holds the
configuration, the per-host pipelines and the call's set-up, and the plain
functions below decide each step of an attempt (whether to send again, what
to send, what to raise, what is left to close). A shell only does the I/O
those steps name, awaited or not, and (inline, as it runs on every response)
the check whether a failure will be retried: tests/test_httpx_shells.py
checks that the two shells stay each other's twin.
"""

from __future__ import annotations

import inspect
import sys
import threading
from collections.abc import Callable
from contextvars import Token
from types import TracebackType
from typing import Any, ClassVar, Generic, TypeVar, cast

import httpx
from cachetools import LRUCache

from resilient.deadline import current_deadline
from resilient.httpx._errors import as_httpx_error
from resilient.httpx._hedging import HedgingPipeline
from resilient.httpx._io import (
    DEFAULT_MAX_DRAIN_BYTES,
    _check_max_drain,
    adrain,
    attempt_request,
    cap_socket_operations,
    drain,
)
from resilient.httpx._rules import (
    IDEMPOTENT_METHODS,
    TRANSIENT_STATUSES,
    _Call,
    _current_call,
    _host_port,
    _HttpSite,
    _may_resend,
    authority,
)
from resilient.httpx._standard import StandardPipeline, standard_pipeline
from resilient.policy import AsyncWrapped, Pipeline, Policy, SyncFn
from resilient.retry import Retry
from resilient.validate import check_callable, check_int

PipelineArg = Policy | Callable[[str], Policy] | HedgingPipeline


# -- the transports ---------------------------------------------------------------


def _check_common(
    deadline_header: str | None, max_hosts: int, key: Callable[[httpx.Request], str] | None
) -> tuple[str | None, int, Callable[[httpx.Request], str]]:
    if deadline_header is not None and (not isinstance(deadline_header, str) or not deadline_header.strip()):
        raise TypeError(f"deadline_header must be a header name or None, got {deadline_header!r}")
    max_hosts = check_int(max_hosts, "max_hosts")
    key = check_callable(key, "key", "a callable (request) -> str", allow_none=True, allow_class=True)
    return deadline_header, max_hosts, key if key is not None else authority


def _check_pipeline(pipeline: Any) -> PipelineArg:
    if pipeline is None:
        return standard_pipeline()
    if isinstance(pipeline, Policy | HedgingPipeline) or callable(pipeline):
        return cast(PipelineArg, pipeline)
    raise TypeError(f"pipeline must be a Policy, a callable (host key) -> Policy or None, got {pipeline!r}")


# Policies of this library that never call what they wrap twice for one call.
_SEND_ONCE = frozenset(
    {
        "adaptive_concurrency",
        "adaptive_throttle",
        "bulkhead",
        "chaos_fault",
        "chaos_latency",
        "chaos_result",
        "circuit_breaker",
        "deadline",
        "fallback",
        "header_pacing",
        "host_signals",
        "rate_limiter",
        "stale_cache",
        "timeout",
    }
)
_UNBOUNDED = sys.maxsize


def _max_sends(policy: Policy) -> int:
    """How many times ``policy`` may send one request: its retries' attempts multiplied.

    A policy this library does not know may send again: counted as unbounded.
    """
    if isinstance(policy, Retry):
        return max(int(policy.attempts), 1)
    if isinstance(policy, Pipeline):
        n = 1
        for part in policy:
            n = min(n * _max_sends(part), _UNBOUNDED)
        return n
    return 1 if policy.policy_type in _SEND_ONCE else _UNBOUNDED


# -- the engine: the steps of an attempt, no I/O --------------------------------------


def _begin(call: _Call, header: str | None) -> tuple[httpx.Request, httpx.Response | None] | httpx.Response:
    """Start an attempt of ``call``: the request to send and the previous response to close first.

    Or, when the pipeline sends again what the transport must not (a custom
    Retry without the HTTP predicates), the first outcome instead: its
    response, returned, or its error, raised.
    """
    previous = None
    if call.sent:
        previous = call.response
        if not call.retryable:
            if previous is not None:
                return previous
            assert call.error is not None
            raise call.error
        call.response = None
    call.sent += 1
    call.status = None
    call.error = None
    request = attempt_request(call, header) if current_deadline() is not None else call.request
    return request, previous


def _converted(exc: BaseException, call: _Call, token: Token[_Call | None]) -> BaseException | None:
    """End a failed call: the httpx error to raise instead of ``exc``, or None to raise ``exc`` as it is."""
    _current_call.reset(token)
    # The inner transport's own errors pass as they are.
    if exc is call.error:
        return None
    converted = as_httpx_error(exc, call.request)
    return None if converted is exc else converted


def _finished(call: _Call, token: Token[_Call | None], response: httpx.Response) -> httpx.Response | None:
    """End a call that answers ``response``: the response of an earlier attempt left to close, if any."""
    _current_call.reset(token)
    left = call.response
    return left if left is not None and left is not response else None


_Inner = TypeVar("_Inner", bound=httpx.AsyncBaseTransport | httpx.BaseTransport)
_Wrapped = TypeVar("_Wrapped", bound=Callable[..., Any])


class _TransportBase(Generic[_Inner, _Wrapped]):
    """What the sync and async transports share: the arguments, the host pipelines, each call's set-up."""

    _is_async: ClassVar[bool]
    _inner_type: ClassVar[type]

    # One signature for both transports: ``inner`` is the subclass's own
    # transport type (``_Inner``), so a type checker still refuses a sync
    # transport given to the async one.
    def __init__(
        self,
        pipeline: PipelineArg | None = None,
        *,
        inner: _Inner | None = None,
        deadline_header: str | None = "x-resilient-deadline",
        retry_non_idempotent: bool = False,
        max_hosts: int = 1024,
        key: Callable[[httpx.Request], str] | None = None,
        max_drain_bytes: int = DEFAULT_MAX_DRAIN_BYTES,
    ) -> None:
        self.pipeline = _check_pipeline(pipeline)
        self.deadline_header, self.max_hosts, self._key = _check_common(deadline_header, max_hosts, key)
        self.retry_non_idempotent = bool(retry_non_idempotent)
        self.max_drain_bytes = _check_max_drain(max_drain_bytes)
        # Transient responses that will be retried are buffered, so that
        # their connection goes back to the pool before the backoff.
        self._drain = self.pipeline.statuses if isinstance(self.pipeline, StandardPipeline) else TRANSIENT_STATUSES
        self._site = _HttpSite(operation="http")
        self._single_sends = _max_sends(self.pipeline) if isinstance(self.pipeline, Policy) else 1
        self._hedging = self.pipeline if isinstance(self.pipeline, HedgingPipeline) else None
        if self._hedging is not None and not self._is_async:
            raise TypeError(
                "pipeline: standard_hedging_pipeline() is for AsyncResilientTransport: a blocking call cannot be "
                "hedged without a thread per attempt"
            )
        if inner is not None and not isinstance(inner, self._inner_type):
            raise TypeError(f"inner must be an httpx.{self._inner_type.__name__}, got {inner!r}")
        self.inner: _Inner = inner if inner is not None else self._new_inner()
        self._bind()
        self._attempt = self._make_attempt()
        self._single: _Wrapped | None = None
        if isinstance(self.pipeline, Policy):
            self._single = cast(_Wrapped, self.pipeline.build(self._attempt, self._site, self._is_async))
        self._hosts: LRUCache[str, tuple[_Wrapped, int]] = LRUCache(maxsize=self.max_hosts)
        # The sync transport's threads share the host pipelines; asyncio needs no lock.
        self._lock = None if self._is_async else threading.Lock()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # help() and inspect.signature() show each transport's own kind of ``inner``, not the base's type variable.
        sig = inspect.signature(_TransportBase.__init__)
        inner = f"httpx.{cls._inner_type.__name__} | None"
        params = [p.replace(annotation=inner) if p.name == "inner" else p for p in list(sig.parameters.values())[1:]]
        cls.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]

    def _new_inner(self) -> _Inner:
        raise NotImplementedError

    def _bind(self) -> None:
        """Finish the set-up once ``self.inner`` is known."""

    def _make_attempt(self) -> Callable[[_Call], Any]:
        raise NotImplementedError

    def _build_for(self, host_key: str) -> Policy:
        pipeline = self.pipeline
        if isinstance(pipeline, Policy):
            return pipeline
        assert not isinstance(pipeline, HedgingPipeline)
        if isinstance(pipeline, StandardPipeline):
            return pipeline.build(host_key, sync=not self._is_async)
        policy = pipeline(host_key)
        if not isinstance(policy, Policy):
            raise TypeError(f"the pipeline factory must return a Policy, got {policy!r} for {host_key!r}")
        return policy

    def _built(self, host_key: str) -> tuple[_Wrapped, int]:
        """The pipeline of a host key seen for the first time, and how many sends it may make."""
        # Built outside the lock: the factory is user code.
        policy = self._build_for(host_key)
        built = cast(_Wrapped, policy.build(self._attempt, self._site, self._is_async)), _max_sends(policy)
        lock = self._lock
        if lock is None:
            self._hosts[host_key] = built
            return built
        with lock:
            entry = self._hosts.get(host_key)
            if entry is None:
                self._hosts[host_key] = entry = built
        return entry

    def _open(self, request: httpx.Request) -> tuple[_Wrapped, _Call, Token[_Call | None]]:
        """Start a call of ``request``: its pipeline, its state, and the token that makes it current."""
        # One function for the whole set-up: it runs on every request.
        if self._single is not None:
            wrapped, max_sends = self._single, self._single_sends
        else:
            host_key = self._key(request)
            lock = self._lock
            if lock is None:
                entry = self._hosts.get(host_key)
            else:
                with lock:
                    entry = self._hosts.get(host_key)
            wrapped, max_sends = entry if entry is not None else self._built(host_key)
        host, port = _host_port(request.url)
        # Fast path: GET with an empty body.
        if request.method in IDEMPOTENT_METHODS and type(request.stream) is httpx.ByteStream:
            retryable = True
        else:
            retryable = _may_resend(request, self.retry_non_idempotent)
        call = _Call(request, retryable, host, port, max_sends)
        return wrapped, call, _current_call.set(call)


class AsyncResilientTransport(httpx.AsyncBaseTransport, _TransportBase[httpx.AsyncBaseTransport, AsyncWrapped]):
    """An ``httpx.AsyncBaseTransport`` that sends each request through a resilience pipeline.

    ``httpx.AsyncClient(transport=AsyncResilientTransport())``.

    Args:
        pipeline: a :class:`~resilient.Policy` (one for every host), a
            callable ``host_key -> Policy`` called once per host key (keep
            state such as breakers per host), or ``None`` for
            :func:`standard_pipeline`.
        inner: the transport that sends the requests; default
            ``httpx.AsyncHTTPTransport()``. Pass your own to set
            ``limits``, ``http2``, ``verify``, proxies...: an ``AsyncClient``
            given a transport ignores those options. Closed with this one.
        deadline_header: header carrying the remaining deadline downstream
            (seconds, ``"1.234"``), or ``None`` to send none.
        retry_non_idempotent: also retry POST, PATCH... (whose body is
            replayable). Without it, those are retried only with an
            ``Idempotency-Key`` header.
        max_hosts: how many per-host pipelines to keep (LRU); an evicted
            host starts again with a fresh breaker.
        key: the host key of a request; default :func:`authority`
            (``scheme://host:port``).
        max_drain_bytes: the most bytes of a transient failure response
            (408, 429, 5xx) read into memory so that its connection is
            released before the retry's backoff (default 64 KiB). Only a
            response that is going to be retried is read; one whose body is
            longer is not read on and not retried: it is handed back intact.
    """

    _is_async = True
    _inner_type = httpx.AsyncBaseTransport

    def _new_inner(self) -> httpx.AsyncBaseTransport:
        return httpx.AsyncHTTPTransport()

    def _bind(self) -> None:
        if self._hedging is not None:
            self._hedging.bind(self.inner, self.deadline_header)

    def _make_attempt(self) -> Callable[[_Call], Any]:
        inner = self.inner
        header, statuses, limit = self.deadline_header, self._drain, self.max_drain_bytes

        async def attempt(call: _Call) -> httpx.Response:
            begun = _begin(call, header)
            if isinstance(begun, httpx.Response):
                return begun
            request, previous = begun
            if previous is not None:
                await previous.aclose()
            try:
                response = await inner.handle_async_request(request)
            except Exception as exc:
                call.error = exc
                raise
            # A failure that will be retried is read now (see _TransportBase._drain).
            status = call.status = response.status_code
            if status in statuses and call.retryable and call.sent < call.max_sends:
                response = await adrain(call, response, limit)
            call.response = response
            return response

        return attempt

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the pipeline; see the class docs for the outcome."""
        if self._hedging is not None:
            try:
                return await self._hedging.handle(request)
            except Exception as exc:
                converted = as_httpx_error(exc, request)
                if converted is not exc:
                    raise converted from exc.__cause__
                raise
        wrapped, call, token = self._open(request)
        try:
            response: httpx.Response = await wrapped(call)
        except BaseException as exc:
            instead = _converted(exc, call, token)
            if call.response is not None:
                await call.response.aclose()
            if instead is None:
                raise
            raise instead from exc.__cause__
        left = _finished(call, token, response)
        if left is not None:
            await left.aclose()
        return response

    async def aclose(self) -> None:
        """Close the inner transport."""
        await self.inner.aclose()

    async def __aenter__(self) -> AsyncResilientTransport:
        await self.inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.inner.__aexit__(exc_type, exc_value, traceback)

    def __repr__(self) -> str:
        return f"AsyncResilientTransport({self.pipeline!r}, inner={self.inner!r})"


class ResilientTransport(httpx.BaseTransport, _TransportBase[httpx.BaseTransport, SyncFn]):
    """The synchronous twin of :class:`AsyncResilientTransport`, for ``httpx.Client``.

    Same arguments, with ``inner`` an ``httpx.BaseTransport`` (default
    ``httpx.HTTPTransport()``). A running blocking call cannot be
    interrupted, so the standard pipeline has no timeout policies here:
    the total and attempt timeouts become deadlines that stop retries that
    would outlive them and bound each attempt. httpx applies its timeouts to
    each socket operation (a server sending a byte now and then never trips
    them), so when ``inner`` is an ``httpx.HTTPTransport`` (the default, with
    or without a proxy) every socket operation (connect, TLS handshake, each
    read and each write) waits at most what is left of the deadline: an
    attempt ends with an httpx timeout error once it has passed
    (:attr:`caps_socket_timeouts` says whether this applies). The one
    overrun left: httpcore writes each chunk of a request body (up to
    64 KiB) in one call, so a server that accepts that chunk a few bytes at
    a time can stretch that write, each partial send waiting at most what
    was left when the write began. With another ``inner`` the deadline caps
    httpx's connect/read/write/pool timeouts when the attempt starts and
    is checked between the chunks of a failure body being read, but a server
    that trickles its response headers is bounded only by httpx's ``read``
    timeout per byte: use ``AsyncResilientTransport`` for a hard bound.

    As with the async transport, the timeouts cover the call up to the
    response headers (and the reading of a failure body that is retried);
    the body of the response handed back is read under httpx's own timeouts,
    unless it is read under a :func:`resilient.deadline`, which then caps
    those reads too. A custom pipeline must be usable synchronously (no
    ``Timeout``). Safe to share between threads.
    """

    _is_async = False
    _inner_type = httpx.BaseTransport
    #: Whether every socket operation of ``inner`` waits at most what is
    #: left of the deadline (True for ``httpx.HTTPTransport``).
    caps_socket_timeouts: bool

    def _new_inner(self) -> httpx.BaseTransport:
        return httpx.HTTPTransport()

    def _bind(self) -> None:
        self.caps_socket_timeouts = cap_socket_operations(self.inner)

    def _make_attempt(self) -> Callable[[_Call], Any]:
        inner = self.inner
        header, statuses, limit = self.deadline_header, self._drain, self.max_drain_bytes

        def attempt(call: _Call) -> httpx.Response:
            begun = _begin(call, header)
            if isinstance(begun, httpx.Response):
                return begun
            request, previous = begun
            if previous is not None:
                previous.close()
            try:
                response = inner.handle_request(request)
            except Exception as exc:
                call.error = exc
                raise
            # A failure that will be retried is read now (see _TransportBase._drain).
            status = call.status = response.status_code
            if status in statuses and call.retryable and call.sent < call.max_sends:
                response = drain(call, response, limit)
            call.response = response
            return response

        return attempt

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the pipeline; see the class docs for the outcome."""
        wrapped, call, token = self._open(request)
        try:
            response: httpx.Response = wrapped(call)
        except BaseException as exc:
            instead = _converted(exc, call, token)
            if call.response is not None:
                call.response.close()
            if instead is None:
                raise
            raise instead from exc.__cause__
        left = _finished(call, token, response)
        if left is not None:
            left.close()
        return response

    def close(self) -> None:
        """Close the inner transport."""
        self.inner.close()

    def __enter__(self) -> ResilientTransport:
        self.inner.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self.inner.__exit__(exc_type, exc_value, traceback)

    def __repr__(self) -> str:
        return f"ResilientTransport({self.pipeline!r}, inner={self.inner!r})"

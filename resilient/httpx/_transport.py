"""The transports: AsyncResilientTransport and ResilientTransport."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, cast

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

PipelineArg = Policy | Callable[[str], Policy] | HedgingPipeline


# -- the transports ---------------------------------------------------------------


def _check_common(
    deadline_header: str | None, max_hosts: int, key: Callable[[httpx.Request], str] | None
) -> tuple[str | None, int, Callable[[httpx.Request], str]]:
    if deadline_header is not None and (not isinstance(deadline_header, str) or not deadline_header.strip()):
        raise TypeError(f"deadline_header must be a header name or None, got {deadline_header!r}")
    if isinstance(max_hosts, bool) or not isinstance(max_hosts, int):
        raise TypeError(f"max_hosts must be an int >= 1, got {max_hosts!r}")
    if max_hosts < 1:
        raise ValueError(f"max_hosts must be >= 1, got {max_hosts!r}")
    if key is not None and not callable(key):
        raise TypeError(f"key must be a callable (request) -> str, got {key!r}")
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


class _TransportBase:
    """What the sync and async transports share: configuration and host keys."""

    def __init__(
        self,
        pipeline: PipelineArg | None,
        deadline_header: str | None,
        retry_non_idempotent: bool,
        max_hosts: int,
        key: Callable[[httpx.Request], str] | None,
        max_drain_bytes: int,
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

    def _new_call(self, request: httpx.Request, max_sends: int) -> _Call:
        host, port = _host_port(request.url)
        # Fast path: GET with an empty body.
        if request.method in IDEMPOTENT_METHODS and type(request.stream) is httpx.ByteStream:
            retryable = True
        else:
            retryable = _may_resend(request, self.retry_non_idempotent)
        return _Call(request, retryable, host, port, max_sends)

    def _build_for(self, host_key: str, sync: bool) -> Policy:
        pipeline = self.pipeline
        if isinstance(pipeline, Policy):
            return pipeline
        assert not isinstance(pipeline, HedgingPipeline)
        if isinstance(pipeline, StandardPipeline):
            return pipeline.build(host_key, sync=sync)
        policy = pipeline(host_key)
        if not isinstance(policy, Policy):
            raise TypeError(f"the pipeline factory must return a Policy, got {policy!r} for {host_key!r}")
        return policy


class AsyncResilientTransport(httpx.AsyncBaseTransport, _TransportBase):
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

    def __init__(
        self,
        pipeline: PipelineArg | None = None,
        *,
        inner: httpx.AsyncBaseTransport | None = None,
        deadline_header: str | None = "x-resilient-deadline",
        retry_non_idempotent: bool = False,
        max_hosts: int = 1024,
        key: Callable[[httpx.Request], str] | None = None,
        max_drain_bytes: int = DEFAULT_MAX_DRAIN_BYTES,
    ) -> None:
        _TransportBase.__init__(self, pipeline, deadline_header, retry_non_idempotent, max_hosts, key, max_drain_bytes)
        if inner is not None and not isinstance(inner, httpx.AsyncBaseTransport):
            raise TypeError(f"inner must be an httpx.AsyncBaseTransport, got {inner!r}")
        self.inner: httpx.AsyncBaseTransport = inner if inner is not None else httpx.AsyncHTTPTransport()
        if self._hedging is not None:
            self._hedging.bind(self.inner, self.deadline_header)
        self._attempt = self._make_attempt()
        self._single: AsyncWrapped | None = None
        if isinstance(self.pipeline, Policy):
            self._single = self.pipeline.build(self._attempt, self._site, True)
        self._hosts: LRUCache[str, tuple[AsyncWrapped, int]] = LRUCache(maxsize=self.max_hosts)

    def _make_attempt(self) -> Callable[[_Call], Any]:
        inner = self.inner
        header = self.deadline_header
        statuses = self._drain
        limit = self.max_drain_bytes
        deadline_now = current_deadline

        async def attempt(call: _Call) -> httpx.Response:
            if call.sent:
                previous = call.response
                if not call.retryable:
                    # The pipeline retries what the transport forbids (a
                    # custom Retry without the HTTP predicates): give back
                    # the first outcome instead of sending the request again.
                    if previous is not None:
                        return previous
                    assert call.error is not None
                    raise call.error
                if previous is not None:
                    call.response = None
                    await previous.aclose()
            call.sent += 1
            call.status = None
            call.error = None
            request = attempt_request(call, header) if deadline_now() is not None else call.request
            try:
                response = await inner.handle_async_request(request)
            except Exception as exc:
                call.error = exc
                raise
            status = call.status = response.status_code
            if status in statuses and call.retryable and call.sent < call.max_sends:
                response = await adrain(call, response, limit)
            call.response = response
            return response

        return attempt

    def _wrapped_for(self, request: httpx.Request) -> tuple[AsyncWrapped, int]:
        if self._single is not None:
            return self._single, self._single_sends
        host_key = self._key(request)
        entry = self._hosts.get(host_key)
        if entry is None:
            policy = self._build_for(host_key, False)
            entry = policy.build(self._attempt, self._site, True), _max_sends(policy)
            self._hosts[host_key] = entry
        return entry

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
        wrapped, max_sends = self._wrapped_for(request)
        call = self._new_call(request, max_sends)
        token = _current_call.set(call)
        try:
            response: httpx.Response = await wrapped(call)
        except BaseException as exc:
            if call.response is not None:
                await call.response.aclose()
            # The inner transport's own errors pass as they are.
            if exc is not call.error:
                converted = as_httpx_error(exc, request)
                if converted is not exc:
                    raise converted from exc.__cause__
            raise
        finally:
            _current_call.reset(token)
        if response is not call.response and call.response is not None:
            await call.response.aclose()
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


class ResilientTransport(httpx.BaseTransport, _TransportBase):
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

    def __init__(
        self,
        pipeline: PipelineArg | None = None,
        *,
        inner: httpx.BaseTransport | None = None,
        deadline_header: str | None = "x-resilient-deadline",
        retry_non_idempotent: bool = False,
        max_hosts: int = 1024,
        key: Callable[[httpx.Request], str] | None = None,
        max_drain_bytes: int = DEFAULT_MAX_DRAIN_BYTES,
    ) -> None:
        _TransportBase.__init__(self, pipeline, deadline_header, retry_non_idempotent, max_hosts, key, max_drain_bytes)
        if self._hedging is not None:
            raise TypeError(
                "pipeline: standard_hedging_pipeline() is for AsyncResilientTransport: a blocking call cannot be "
                "hedged without a thread per attempt"
            )
        if inner is not None and not isinstance(inner, httpx.BaseTransport):
            raise TypeError(f"inner must be an httpx.BaseTransport, got {inner!r}")
        self.inner: httpx.BaseTransport = inner if inner is not None else httpx.HTTPTransport()
        #: Whether every socket operation of ``inner`` waits at most what is
        #: left of the deadline (True for ``httpx.HTTPTransport``).
        self.caps_socket_timeouts = cap_socket_operations(self.inner)
        self._attempt = self._make_attempt()
        self._single: SyncFn | None = None
        if isinstance(self.pipeline, Policy):
            self._single = self.pipeline.build(self._attempt, self._site, False)
        self._hosts: LRUCache[str, tuple[SyncFn, int]] = LRUCache(maxsize=self.max_hosts)
        self._lock = threading.Lock()

    def _make_attempt(self) -> Callable[[_Call], httpx.Response]:
        inner = self.inner
        header = self.deadline_header
        statuses = self._drain
        limit = self.max_drain_bytes
        deadline_now = current_deadline

        def attempt(call: _Call) -> httpx.Response:
            if call.sent:
                previous = call.response
                if not call.retryable:
                    if previous is not None:
                        return previous
                    assert call.error is not None
                    raise call.error
                if previous is not None:
                    call.response = None
                    previous.close()
            call.sent += 1
            call.status = None
            call.error = None
            request = attempt_request(call, header) if deadline_now() is not None else call.request
            try:
                response = inner.handle_request(request)
            except Exception as exc:
                call.error = exc
                raise
            status = call.status = response.status_code
            if status in statuses and call.retryable and call.sent < call.max_sends:
                response = drain(call, response, limit)
            call.response = response
            return response

        return attempt

    def _wrapped_for(self, request: httpx.Request) -> tuple[SyncFn, int]:
        if self._single is not None:
            return self._single, self._single_sends
        host_key = self._key(request)
        with self._lock:
            entry = self._hosts.get(host_key)
        if entry is None:
            # Built outside the lock: the factory is user code.
            policy = self._build_for(host_key, True)
            built = policy.build(self._attempt, self._site, False), _max_sends(policy)
            with self._lock:
                entry = self._hosts.get(host_key)
                if entry is None:
                    self._hosts[host_key] = entry = built
        return entry

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the pipeline; see the class docs for the outcome."""
        wrapped, max_sends = self._wrapped_for(request)
        call = self._new_call(request, max_sends)
        token = _current_call.set(call)
        try:
            response: httpx.Response = wrapped(call)
        except BaseException as exc:
            if call.response is not None:
                call.response.close()
            # The inner transport's own errors pass as they are.
            if exc is not call.error:
                converted = as_httpx_error(exc, request)
                if converted is not exc:
                    raise converted from exc.__cause__
            raise
        finally:
            _current_call.reset(token)
        if response is not call.response and call.response is not None:
            call.response.close()
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

"""The transports: AsyncResilientTransport and ResilientTransport."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, cast

import httpx
from cachetools import LRUCache

from resilient.deadline import _current as _current_deadline
from resilient.errors import TimeoutError
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
from resilient.policy import AsyncWrapped, Policy, SyncFn

PipelineArg = Policy | Callable[[str], Policy]


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
    if isinstance(pipeline, Policy) or callable(pipeline):
        return cast(PipelineArg, pipeline)
    raise TypeError(f"pipeline must be a Policy, a callable (host key) -> Policy or None, got {pipeline!r}")


def _prepare_attempt(call: _Call, header: str | None) -> None:
    """Per attempt: send the deadline downstream and cap httpx's timeouts to it."""
    d = _current_deadline.get()
    if d is None:
        return
    left = d.expires_at - d.clock.now()
    if left <= 0:
        raise TimeoutError("resilient: the deadline expired before the request was sent", timeout=0.0)
    request = call.request
    if header is not None:
        request.headers[header] = f"{left:.3f}"
    timeouts = call.timeouts
    if timeouts is None:
        timeouts = request.extensions.get("timeout")
        call.timeouts = timeouts = timeouts if isinstance(timeouts, Mapping) else {}
    capped = {k: (left if v is None or v > left else v) for k, v in timeouts.items()} if timeouts else {}
    for k in ("connect", "read", "write", "pool"):
        capped.setdefault(k, left)
    request.extensions = {**request.extensions, "timeout": capped}


class _TransportBase:
    """What the sync and async transports share: configuration and host keys."""

    def __init__(
        self,
        pipeline: PipelineArg | None,
        deadline_header: str | None,
        retry_non_idempotent: bool,
        max_hosts: int,
        key: Callable[[httpx.Request], str] | None,
    ) -> None:
        self.pipeline = _check_pipeline(pipeline)
        self.deadline_header, self.max_hosts, self._key = _check_common(deadline_header, max_hosts, key)
        self.retry_non_idempotent = bool(retry_non_idempotent)
        # Transient responses that will be retried are buffered, so that
        # their connection goes back to the pool before the backoff.
        self._drain = self.pipeline.statuses if isinstance(self.pipeline, StandardPipeline) else TRANSIENT_STATUSES
        self._site = _HttpSite(operation="http")

    def _new_call(self, request: httpx.Request) -> _Call:
        host, port = _host_port(request.url)
        # Fast path: GET with an empty body.
        if request.method in IDEMPOTENT_METHODS and type(request.stream) is httpx.ByteStream:
            retryable = True
        else:
            retryable = _may_resend(request, self.retry_non_idempotent)
        return _Call(request, retryable, host, port)

    def _build_for(self, host_key: str, sync: bool) -> Policy:
        pipeline = self.pipeline
        if isinstance(pipeline, Policy):
            return pipeline
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
    ) -> None:
        _TransportBase.__init__(self, pipeline, deadline_header, retry_non_idempotent, max_hosts, key)
        if inner is not None and not isinstance(inner, httpx.AsyncBaseTransport):
            raise TypeError(f"inner must be an httpx.AsyncBaseTransport, got {inner!r}")
        self.inner: httpx.AsyncBaseTransport = inner if inner is not None else httpx.AsyncHTTPTransport()
        self._attempt = self._make_attempt()
        self._single: AsyncWrapped | None = None
        if isinstance(self.pipeline, Policy):
            self._single = self.pipeline._wrap(self._attempt, self._site, True)
        self._hosts: LRUCache[str, AsyncWrapped] = LRUCache(maxsize=self.max_hosts)

    def _make_attempt(self) -> Callable[[_Call], Any]:
        inner = self.inner
        header = self.deadline_header
        drain = self._drain
        deadline_var = _current_deadline

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
            if deadline_var.get() is not None:
                _prepare_attempt(call, header)
            try:
                response = await inner.handle_async_request(call.request)
            except Exception as exc:
                call.error = exc
                raise
            status = call.status = response.status_code
            if status in drain and call.retryable:
                response = await _abuffer(response)
            call.response = response
            return response

        return attempt

    def _wrapped_for(self, request: httpx.Request) -> AsyncWrapped:
        if self._single is not None:
            return self._single
        host_key = self._key(request)
        wrapped = self._hosts.get(host_key)
        if wrapped is None:
            wrapped = self._build_for(host_key, False)._wrap(self._attempt, self._site, True)
            self._hosts[host_key] = wrapped
        return wrapped

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the pipeline; see the class docs for the outcome."""
        wrapped = self._wrapped_for(request)
        call = self._new_call(request)
        token = _current_call.set(call)
        try:
            response: httpx.Response = await wrapped(call)
        except BaseException:
            if call.response is not None:
                await call.response.aclose()
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
    the total and attempt timeouts become deadlines that cap httpx's own
    connect/read/write/pool timeouts and stop retries that would outlive
    them. A custom pipeline must be usable synchronously (no ``Timeout``).
    Safe to share between threads.
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
    ) -> None:
        _TransportBase.__init__(self, pipeline, deadline_header, retry_non_idempotent, max_hosts, key)
        if inner is not None and not isinstance(inner, httpx.BaseTransport):
            raise TypeError(f"inner must be an httpx.BaseTransport, got {inner!r}")
        self.inner: httpx.BaseTransport = inner if inner is not None else httpx.HTTPTransport()
        self._attempt = self._make_attempt()
        self._single: SyncFn | None = None
        if isinstance(self.pipeline, Policy):
            self._single = self.pipeline._wrap(self._attempt, self._site, False)
        self._hosts: LRUCache[str, SyncFn] = LRUCache(maxsize=self.max_hosts)
        self._lock = threading.Lock()

    def _make_attempt(self) -> Callable[[_Call], httpx.Response]:
        inner = self.inner
        header = self.deadline_header
        drain = self._drain
        deadline_var = _current_deadline

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
            if deadline_var.get() is not None:
                _prepare_attempt(call, header)
            try:
                response = inner.handle_request(call.request)
            except Exception as exc:
                call.error = exc
                raise
            status = call.status = response.status_code
            if status in drain and call.retryable:
                response = _buffer(response)
            call.response = response
            return response

        return attempt

    def _wrapped_for(self, request: httpx.Request) -> SyncFn:
        if self._single is not None:
            return self._single
        host_key = self._key(request)
        with self._lock:
            wrapped = self._hosts.get(host_key)
            if wrapped is None:
                wrapped = self._build_for(host_key, True)._wrap(self._attempt, self._site, False)
                self._hosts[host_key] = wrapped
        return wrapped

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the pipeline; see the class docs for the outcome."""
        wrapped = self._wrapped_for(request)
        call = self._new_call(request)
        token = _current_call.set(call)
        try:
            response: httpx.Response = wrapped(call)
        except BaseException:
            if call.response is not None:
                call.response.close()
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


# -- buffering a response that will be retried ------------------------------------


async def _abuffer(response: httpx.Response) -> httpx.Response:
    """Read the raw body and release the connection; return an equivalent unread response."""
    stream = response.stream
    chunks: list[bytes] = []
    try:
        async for chunk in cast(httpx.AsyncByteStream, stream):
            chunks.append(chunk)
    finally:
        await cast(httpx.AsyncByteStream, stream).aclose()
    return httpx.Response(
        response.status_code,
        headers=response.headers,
        stream=httpx.ByteStream(b"".join(chunks)),
        extensions=response.extensions,
    )


def _buffer(response: httpx.Response) -> httpx.Response:
    stream = response.stream
    chunks: list[bytes] = []
    try:
        for chunk in cast(httpx.SyncByteStream, stream):
            chunks.append(chunk)
    finally:
        cast(httpx.SyncByteStream, stream).close()
    return httpx.Response(
        response.status_code,
        headers=response.headers,
        stream=httpx.ByteStream(b"".join(chunks)),
        extensions=response.extensions,
    )

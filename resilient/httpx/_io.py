"""What the transports read and how long each socket operation may take.

* draining: a transient failure response that is going to be retried is read
  (up to a bound) and its connection released before the backoff; past the
  bound it is handed back intact instead, and not retried;
* per-attempt requests: the deadline header and capped timeouts go on a copy,
  never on the caller's ``Request``;
* socket bounds: the synchronous transport wraps httpcore's network backend
  so that every socket operation waits at most what is left of the deadline.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any, cast

import httpcore
import httpx

from resilient.deadline import current_deadline
from resilient.errors import TimeoutError
from resilient.httpx._rules import _Call
from resilient.validate import check_int

#: The most bytes of a failure response read into memory before a retry.
DEFAULT_MAX_DRAIN_BYTES = 64 * 1024


def _check_max_drain(value: Any) -> int:
    return check_int(value, "max_drain_bytes", minimum=0)


# -- the request of one attempt ----------------------------------------------------


def attempt_request(call: _Call, header: str | None) -> httpx.Request:
    """The request to send for this attempt: the caller's, or a copy carrying the deadline.

    The caller's ``Request`` is never changed: a request sent again later
    (polling, replays) gets the client's timeouts, not the caps of an
    earlier deadline.
    """
    d = current_deadline()
    request = call.request
    if d is None:
        return request
    left = d.expires_at - d.clock.now()
    if left == math.inf:  # a lifted deadline (resilient.deadline.Deadline.lift): none
        return request
    if left <= 0:
        raise TimeoutError("resilient: the deadline expired before the request was sent", timeout=0.0)
    timeouts = call.timeouts
    if timeouts is None:
        timeouts = request.extensions.get("timeout")
        call.timeouts = timeouts = timeouts if isinstance(timeouts, Mapping) else {}
    capped = {k: (left if v is None or v > left else v) for k, v in timeouts.items()} if timeouts else {}
    for k in ("connect", "read", "write", "pool"):
        capped.setdefault(k, left)
    extensions = {**request.extensions, "timeout": capped}
    headers = request.headers
    if header is not None:
        headers = headers.copy()
        headers[header] = f"{left:.3f}"
    state = getattr(request, "__dict__", None)
    if state is None:  # pragma: no cover - an httpx whose Request has slots
        return httpx.Request(request.method, request.url, headers=headers, stream=request.stream, extensions=extensions)
    # A shallow copy (same URL, body stream and read content), at half the cost
    # of the constructor; copy.copy would drop the stream (Request.__getstate__).
    copy = object.__new__(type(request))
    copy.__dict__.update(state)
    copy.headers = headers
    copy.extensions = extensions
    return copy


# -- draining a failure response that will be retried -------------------------------


def _declared_too_long(response: httpx.Response, limit: int) -> bool:
    length = response.headers.get("content-length")
    return length is not None and length.isdigit() and int(length) > limit


def _check_deadline(request: httpx.Request) -> None:
    # Between chunks: what bounds the drain when the inner transport's socket
    # operations cannot be capped.
    d = current_deadline()
    if d is not None and d.expires_at - d.clock.now() <= 0:
        raise httpx.ReadTimeout("resilient: the deadline expired while reading a failure response", request=request)


def _buffered(response: httpx.Response, chunks: list[bytes]) -> httpx.Response:
    return httpx.Response(
        response.status_code,
        headers=response.headers,
        stream=httpx.ByteStream(b"".join(chunks)),
        extensions=response.extensions,
    )


def _kept(response: httpx.Response, stream: httpx.AsyncByteStream | httpx.SyncByteStream) -> httpx.Response:
    return httpx.Response(response.status_code, headers=response.headers, stream=stream, extensions=response.extensions)


class _AsyncReplay(httpx.AsyncByteStream):
    """The chunks read so far, then the rest of the body, unread."""

    def __init__(self, head: list[bytes], rest: AsyncIterator[bytes], stream: httpx.AsyncByteStream) -> None:
        self._head = head
        self._rest = rest
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        head, self._head = self._head, []
        for chunk in head:
            yield chunk
        async for chunk in self._rest:
            yield chunk

    async def aclose(self) -> None:
        try:
            close = getattr(self._rest, "aclose", None)
            if close is not None:
                await close()
        finally:
            await self._stream.aclose()


class _SyncReplay(httpx.SyncByteStream):
    def __init__(self, head: list[bytes], rest: Iterator[bytes], stream: httpx.SyncByteStream) -> None:
        self._head = head
        self._rest = rest
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        head, self._head = self._head, []
        yield from head
        yield from self._rest

    def close(self) -> None:
        try:
            close = getattr(self._rest, "close", None)
            if close is not None:
                close()
        finally:
            self._stream.close()


class _Body:
    """The chunks of a failure body read so far, up to the limit: what both drains decide by."""

    __slots__ = ("call", "chunks", "limit", "size")

    def __init__(self, call: _Call, limit: int) -> None:
        self.call = call
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0

    def full(self, chunk: bytes) -> bool:
        """Keep ``chunk``; whether the body is now longer than the limit (the call is then not sent again)."""
        self.chunks.append(chunk)
        self.size += len(chunk)
        if self.size > self.limit:
            self.call.retryable = False
            return True
        _check_deadline(self.call.request)
        return False


def _body(call: _Call, response: httpx.Response, limit: int) -> _Body | None:
    """Where the chunks of ``response`` go; None when it says it is too long (the call is then not sent again)."""
    if _declared_too_long(response, limit):
        call.retryable = False
        return None
    return _Body(call, limit)


async def adrain(call: _Call, response: httpx.Response, limit: int) -> httpx.Response:
    """Read a failure response that is going to be retried and release its connection.

    Returns an equivalent unread response. A body longer than ``limit`` is
    not read on: the response comes back intact (the bytes read so far, then
    the rest, unread) and the call is marked as not to be sent again, so the
    retry gives up and hands it to the caller.
    """
    body = _body(call, response, limit)
    if body is None:
        return response
    stream = cast(httpx.AsyncByteStream, response.stream)
    rest = stream.__aiter__()
    try:
        async for chunk in rest:
            if body.full(chunk):
                return _kept(response, _AsyncReplay(body.chunks, rest, stream))
    except BaseException:
        await stream.aclose()
        raise
    await stream.aclose()
    return _buffered(response, body.chunks)


def drain(call: _Call, response: httpx.Response, limit: int) -> httpx.Response:
    """The synchronous :func:`adrain`."""
    body = _body(call, response, limit)
    if body is None:
        return response
    stream = cast(httpx.SyncByteStream, response.stream)
    rest = iter(stream)
    try:
        for chunk in rest:
            if body.full(chunk):
                return _kept(response, _SyncReplay(body.chunks, rest, stream))
    except BaseException:
        stream.close()
        raise
    stream.close()
    return _buffered(response, body.chunks)


# -- every socket operation of the sync transport bounded by the deadline ------------


def _cap(timeout: float | None, error: type[Exception]) -> float | None:
    d = current_deadline()
    if d is None:
        return timeout
    left = d.expires_at - d.clock.now()
    if left == math.inf:  # a lifted deadline: none
        return timeout
    if left <= 0:
        raise error("resilient: the deadline expired")
    return left if timeout is None or timeout > left else timeout


class _DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every operation waits at most what is left of the current deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _cap(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _cap(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self._stream.start_tls(ssl_context, server_hostname, _cap(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(tls)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend, with connections whose operations respect the deadline."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self.backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self.backend.connect_tcp(
            host, port, _cap(timeout, httpcore.ConnectTimeout), local_address, socket_options
        )
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        stream = self.backend.connect_unix_socket(path, _cap(timeout, httpcore.ConnectTimeout), socket_options)
        return _DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self.backend.sleep(seconds)


def cap_socket_operations(inner: httpx.BaseTransport) -> bool:
    """Make every socket operation of ``inner`` wait at most what is left of the deadline.

    httpx applies its timeouts to each socket operation, so a server that
    sends a byte now and then keeps a blocking call alive indefinitely; capping
    each operation to the time left makes the deadline a real bound. Works on
    ``httpx.HTTPTransport`` (with or without a proxy), whose httpcore pool has a
    replaceable network backend; returns False for any other transport, where
    only the phases between operations check the deadline.
    """
    # httpx offers no public way to reach the pool's network backend; both
    # attributes are checked, so another httpx version degrades to False.
    pool = getattr(inner, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if isinstance(backend, _DeadlineBackend):
        return True
    if not isinstance(backend, httpcore.NetworkBackend):
        return False
    pool._network_backend = _DeadlineBackend(backend)  # type: ignore[union-attr]
    return True

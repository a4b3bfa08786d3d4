"""What the httpx transports read, change and wait for, against real servers on 127.0.0.1.

* failure bodies are read only when the response is going to be retried, and
  only up to ``max_drain_bytes`` (issue 14, item 5);
* the caller's ``Request`` is never changed by the per-attempt deadline
  (item 21);
* the synchronous transport's total and attempt timeouts bound the call
  (item 22).

Bytes are counted where they are read (a counting stream under the
transport) or sent (the server), never inferred from timings.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from httpx_server import RunningServer, fast_pipeline, header_trickler, start_server

from resilient import Bulkhead, Pipeline, deadline
from resilient.errors import TimeoutError as ResilientTimeout
from resilient.httpx import AsyncResilientTransport, ResilientTransport, StandardPipeline
from resilient.testing import FakeClock

_keys = itertools.count()
MiB = 1024 * 1024
LIMIT = 64 * 1024  # the default max_drain_bytes
CHUNK = 64 * 1024  # what one socket read may bring beyond it


def key(prefix: str = "b") -> str:
    return f"{prefix}{next(_keys)}"


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    handle = start_server()
    yield handle
    handle.stop()


def fast(**overrides: Any) -> StandardPipeline:
    pipeline: StandardPipeline = fast_pipeline(**overrides)
    return pipeline


# -- counting what the transport reads ---------------------------------------------


class Counter:
    def __init__(self) -> None:
        self.read = 0


class _CountingAsyncStream(httpx.AsyncByteStream):
    def __init__(self, stream: Any, counter: Counter) -> None:
        self.stream = stream
        self.counter = counter

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.stream:
            self.counter.read += len(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self.stream.aclose()


class CountingAsyncTransport(httpx.AsyncBaseTransport):
    """A real ``AsyncHTTPTransport`` whose response bodies count the bytes pulled from the socket."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.counter = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        stream = _CountingAsyncStream(response.stream, self.counter)
        return httpx.Response(
            response.status_code, headers=response.headers, stream=stream, extensions=response.extensions
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


class _CountingSyncStream(httpx.SyncByteStream):
    def __init__(self, stream: Any, counter: Counter) -> None:
        self.stream = stream
        self.counter = counter

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.stream:
            self.counter.read += len(chunk)
            yield chunk

    def close(self) -> None:
        self.stream.close()


class CountingSyncTransport(httpx.BaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.counter = Counter()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        stream = _CountingSyncStream(response.stream, self.counter)
        return httpx.Response(
            response.status_code, headers=response.headers, stream=stream, extensions=response.extensions
        )

    def close(self) -> None:
        self.inner.close()


def aclient(pipeline: Any) -> tuple[httpx.AsyncClient, Counter]:
    inner = CountingAsyncTransport()
    transport = AsyncResilientTransport(pipeline, inner=inner)
    return httpx.AsyncClient(transport=transport, timeout=10.0), inner.counter


def sclient(pipeline: Any) -> tuple[httpx.Client, Counter]:
    inner = CountingSyncTransport()
    transport = ResilientTransport(pipeline, inner=inner)
    return httpx.Client(transport=transport, timeout=10.0), inner.counter


# -- item 5: failure bodies ---------------------------------------------------------


@pytest.mark.parametrize(
    "pipeline",
    [fast(max_retries=0), Pipeline(Bulkhead(10))],
    ids=["max_retries=0", "no Retry at all"],
)
async def test_a_failure_that_will_not_be_retried_is_streamed_not_buffered(
    server: RunningServer, pipeline: Any
) -> None:
    k = key()
    c, counter = aclient(pipeline)
    async with c, c.stream("GET", server.url(f"/stream?key={k}&code=503&size={8 * MiB}")) as response:
        assert response.status_code == 503
        assert counter.read == 0  # the transport read nothing
        async for _ in response.aiter_raw():
            break
    assert counter.read <= CHUNK
    assert server.count(k) == 1


def test_sync_a_failure_that_will_not_be_retried_is_streamed_not_buffered(server: RunningServer) -> None:
    k = key()
    c, counter = sclient(fast(max_retries=0))
    with c, c.stream("GET", server.url(f"/stream?key={k}&code=503&size={8 * MiB}")) as response:
        assert response.status_code == 503
        assert counter.read == 0
    assert server.count(k) == 1


async def test_a_failure_body_past_the_bound_gives_up_the_retry_and_is_handed_back_intact(
    server: RunningServer,
) -> None:
    k = key()
    size = 8 * MiB
    c, counter = aclient(fast())
    async with c, c.stream("GET", server.url(f"/stream?key={k}&code=503&size={size}")) as response:
        assert response.status_code == 503
        assert counter.read <= LIMIT + CHUNK  # read up to the bound, not on
        assert server.count(k) == 1  # not retried
        total = 0
        async for chunk in response.aiter_raw():
            total += len(chunk)
    assert total == size  # the bytes read for the drain are handed back too


def test_sync_a_failure_body_past_the_bound_gives_up_the_retry(server: RunningServer) -> None:
    k = key()
    size = 8 * MiB
    c, counter = sclient(fast())
    with c, c.stream("GET", server.url(f"/stream?key={k}&code=503&size={size}")) as response:
        assert response.status_code == 503
        assert counter.read <= LIMIT + CHUNK
        assert server.count(k) == 1
        assert sum(len(chunk) for chunk in response.iter_raw()) == size


async def test_a_declared_length_past_the_bound_is_not_read_at_all(server: RunningServer) -> None:
    c, counter = aclient(fast())
    async with c, c.stream("GET", server.url("/big?key=declared&code=503&size=200000")) as response:
        assert response.status_code == 503
        assert counter.read == 0
        assert server.count("declared") == 1
        assert len(await response.aread()) == 200000


async def test_only_the_responses_that_are_retried_are_drained(server: RunningServer) -> None:
    k = key()
    c, counter = aclient(fast(max_retries=2))
    async with c, c.stream("GET", server.url(f"/stream?key={k}&code=503&size=1000")) as response:
        assert server.count(k) == 3
        # The first two were read to release their connection; the last is the caller's.
        assert counter.read == 2000
        assert len(await response.aread()) == 1000


def test_sync_only_the_responses_that_are_retried_are_drained(server: RunningServer) -> None:
    k = key()
    c, counter = sclient(fast(max_retries=2))
    with c, c.stream("GET", server.url(f"/stream?key={k}&code=503&size=1000")) as response:
        assert server.count(k) == 3
        assert counter.read == 2000
        assert len(response.read()) == 1000


async def test_max_drain_bytes_is_configurable_and_checked(server: RunningServer) -> None:
    k = key()
    inner = CountingAsyncTransport()
    transport = AsyncResilientTransport(fast(max_retries=1), inner=inner, max_drain_bytes=16 * MiB)
    async with httpx.AsyncClient(transport=transport) as c:
        response = await c.get(server.url(f"/stream?key={k}&code=503&size={2 * MiB}"))
    assert response.status_code == 503
    assert server.count(k) == 2  # 2 MiB is within this bound: drained and retried
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises((TypeError, ValueError), match="max_drain_bytes"):
            AsyncResilientTransport(max_drain_bytes=bad)
        with pytest.raises((TypeError, ValueError), match="max_drain_bytes"):
            ResilientTransport(max_drain_bytes=bad)


# -- item 21: the caller's request is not changed ------------------------------------


async def test_a_request_sent_under_a_short_deadline_is_left_as_it_was(server: RunningServer) -> None:
    k = key()
    async with httpx.AsyncClient(transport=AsyncResilientTransport(fast(max_retries=0)), timeout=5.0) as c:
        request = c.build_request("GET", server.url(f"/slow?key={k}&delay=0.5"))
        headers, extensions = list(request.headers.raw), dict(request.extensions)
        with deadline(0.3), pytest.raises((ResilientTimeout, httpx.TimeoutException)):
            await c.send(request)
        assert list(request.headers.raw) == headers
        assert request.extensions == extensions
        # Sent again later, it has the client's 5 s, not the 0.3 s cap of the first send.
        response = await c.send(request)
    assert response.status_code == 200


def test_sync_a_request_sent_under_a_short_deadline_is_left_as_it_was(server: RunningServer) -> None:
    k = key()
    with httpx.Client(transport=ResilientTransport(fast(max_retries=0)), timeout=5.0) as c:
        request = c.build_request("GET", server.url(f"/slow?key={k}&delay=0.5"))
        headers, extensions = list(request.headers.raw), dict(request.extensions)
        with deadline(0.3), pytest.raises((ResilientTimeout, httpx.TimeoutException)):
            c.send(request)
        assert list(request.headers.raw) == headers
        assert request.extensions == extensions
        assert c.send(request).status_code == 200


async def test_each_attempt_still_gets_the_deadline_header_and_capped_timeouts() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503 if len(seen) == 1 else 200)

    transport = AsyncResilientTransport(fast(attempt_timeout=2.0), inner=httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=transport, timeout=5.0) as c:
        request = c.build_request("GET", "http://upstream/x")
        assert (await c.send(request)).status_code == 200
    assert len(seen) == 2
    for sent in seen:
        assert sent is not request
        assert 0 < float(sent.headers["x-resilient-deadline"]) <= 2.0
        assert all(0 < t <= 2.0 for t in sent.extensions["timeout"].values())
    assert "x-resilient-deadline" not in request.headers
    assert request.extensions["timeout"] == {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}


# -- item 22: the sync transport's timeouts bound the call ----------------------------

TRICKLES = 150  # one byte every INTERVAL seconds: 3 s if nothing stops the client
INTERVAL = 0.02
BOUND = 50  # 0.3 s of trickles is about 15; far below TRICKLES


def test_sync_total_timeout_bounds_a_server_trickling_its_headers() -> None:
    transport = ResilientTransport(fast(total_timeout=0.3, max_retries=0))
    with header_trickler(TRICKLES, INTERVAL) as trickler, httpx.Client(transport=transport, timeout=5.0) as c:
        with pytest.raises(httpx.TimeoutException):
            c.get(trickler.url())
        assert trickler.sent < BOUND


def test_sync_total_timeout_bounds_the_draining_of_a_trickling_failure_body(server: RunningServer) -> None:
    k = key()
    transport = ResilientTransport(fast(total_timeout=0.3, attempt_timeout=None, max_retries=2))
    with httpx.Client(transport=transport, timeout=5.0) as c:
        with pytest.raises((httpx.TimeoutException, ResilientTimeout)):
            c.get(server.url(f"/trickle?key={k}&code=503&count={TRICKLES}&interval={INTERVAL}"))
        assert server.sent(k) < BOUND


def test_sync_attempt_timeout_bounds_each_attempt(server: RunningServer) -> None:
    k = key()
    transport = ResilientTransport(fast(total_timeout=None, attempt_timeout=0.2, max_retries=2))
    url = server.url(f"/trickle?key={k}&code=503&count={TRICKLES}&interval={INTERVAL}")
    with httpx.Client(transport=transport, timeout=5.0) as c, c.stream("GET", url) as response:
        # The first two attempts timed out while their bodies were drained and
        # were retried; the last response is the caller's, unread (its body is
        # read under httpx's own timeouts, as with the async transport).
        assert response.status_code == 503
        assert server.count(k) == 3
        assert server.sent(k) < BOUND


async def test_async_total_timeout_bounds_the_same_trickle(server: RunningServer) -> None:
    k = key()
    transport = AsyncResilientTransport(fast(total_timeout=0.3, attempt_timeout=None, max_retries=2))
    async with httpx.AsyncClient(transport=transport, timeout=5.0) as c:
        with pytest.raises((httpx.TimeoutException, ResilientTimeout)):
            await c.get(server.url(f"/trickle?key={k}&code=503&count={TRICKLES}&interval={INTERVAL}"))
        assert server.sent(k) < BOUND


def test_sync_deadline_is_checked_between_body_chunks_of_any_inner_transport() -> None:
    # An inner transport whose socket operations cannot be capped (here a
    # MockTransport): the deadline is still enforced between chunks.
    clock = FakeClock()
    pulled: list[int] = []

    class Slow(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            for i in range(100):
                clock.advance(0.1)  # each chunk takes 0.1 s
                pulled.append(i)
                yield b"x"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, stream=Slow())

    pipeline = fast(total_timeout=1.0, attempt_timeout=None, max_retries=3, clock=clock)
    transport = ResilientTransport(pipeline, inner=httpx.MockTransport(handler))
    with httpx.Client(transport=transport) as c, pytest.raises((httpx.TimeoutException, ResilientTimeout)):
        c.get("http://upstream/x")
    assert len(pulled) <= 11


def test_sync_transport_caps_the_socket_operations_of_httpx_transports_only() -> None:
    assert ResilientTransport().caps_socket_timeouts
    assert ResilientTransport(inner=httpx.HTTPTransport(proxy="http://127.0.0.1:9")).caps_socket_timeouts
    inner = httpx.HTTPTransport()
    assert ResilientTransport(inner=inner).caps_socket_timeouts
    assert ResilientTransport(inner=inner).caps_socket_timeouts  # wrapping twice is harmless
    assert not ResilientTransport(inner=httpx.MockTransport(lambda r: httpx.Response(200))).caps_socket_timeouts


def test_capped_network_stream_waits_at_most_what_is_left() -> None:
    import httpcore

    from resilient.httpx._io import _DeadlineBackend

    seen: list[tuple[str, float | None]] = []

    class Stream(httpcore.NetworkStream):
        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            seen.append(("read", timeout))
            return b""

        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            seen.append(("write", timeout))

        def close(self) -> None:
            seen.append(("close", None))

        def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
            seen.append(("tls", timeout))
            return Stream()

    class Backend(httpcore.NetworkBackend):
        def connect_tcp(self, host: str, port: int, timeout: float | None = None, *a: Any, **k: Any) -> Any:
            seen.append(("connect", timeout))
            return Stream()

    clock = FakeClock()
    stream = _DeadlineBackend(Backend()).connect_tcp("h", 1, timeout=5.0)
    stream.read(10, timeout=None)  # no deadline: as given
    with deadline(0.5, clock=clock):
        stream = _DeadlineBackend(Backend()).connect_tcp("h", 1, timeout=5.0)
        stream.write(b"x", timeout=0.1)  # already shorter: kept
        tls = stream.start_tls(None, "h", timeout=None)
        tls.read(10, timeout=5.0)
        clock.advance(0.5)
        for op in (lambda: tls.read(10, 5.0), lambda: tls.write(b"x", 5.0)):
            with pytest.raises(httpcore.TimeoutException):
                op()
    assert seen == [
        ("connect", 5.0),
        ("read", None),
        ("connect", 0.5),
        ("write", 0.1),
        ("tls", 0.5),
        ("read", 0.5),
    ]

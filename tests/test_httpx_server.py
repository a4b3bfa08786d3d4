"""resilient.httpx against real uvicorn servers on 127.0.0.1 (tests/httpx_server.py)."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from httpx_server import RunningServer, fast_pipeline, free_socket, start_server

from resilient import Retry, constant, deadline
from resilient.errors import CircuitOpenError
from resilient.errors import TimeoutError as ResilientTimeout
from resilient.httpx import AsyncResilientTransport, ResilientTransport, StandardPipeline, standard_pipeline
from resilient.testing import recording

_keys = itertools.count()


def key(prefix: str = "k") -> str:
    """A fresh counter key, so that tests sharing a server do not see each other."""
    return f"{prefix}{next(_keys)}"


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    handle = start_server()
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def server2() -> Iterator[RunningServer]:
    handle = start_server()
    yield handle
    handle.stop()


def fast(**overrides: Any) -> StandardPipeline:
    pipeline: StandardPipeline = fast_pipeline(**overrides)
    return pipeline


def client(pipeline: Any = None, *, timeout: Any = 5.0, **kw: Any) -> httpx.AsyncClient:
    transport = AsyncResilientTransport(pipeline if pipeline is not None else fast(), **kw)
    return httpx.AsyncClient(transport=transport, timeout=timeout)


async def test_retries_on_503_then_succeeds(server: RunningServer) -> None:
    k = key()
    async with client() as c:
        response = await c.get(server.url(f"/flaky?key={k}&fail=2&code=503"))
    assert response.status_code == 200
    assert server.count(k) == 3


async def test_exhausted_retries_return_the_last_response(server: RunningServer) -> None:
    k = key()
    async with client() as c:
        response = await c.get(server.url(f"/flaky?key={k}&fail=-1&code=503"))
    assert response.status_code == 503
    assert response.text == "status 503"
    assert server.count(k) == 4
    with pytest.raises(httpx.HTTPStatusError):
        response.raise_for_status()


async def test_post_is_not_retried_unless_it_has_an_idempotency_key(server: RunningServer) -> None:
    k1, k2 = key(), key()
    async with client() as c:
        plain = await c.post(server.url(f"/flaky?key={k1}&fail=1"), json={"order": 1})
        keyed = await c.post(
            server.url(f"/flaky?key={k2}&fail=1"), json={"order": 1}, headers={"Idempotency-Key": "o1"}
        )
    assert (plain.status_code, server.count(k1)) == (503, 1)
    assert (keyed.status_code, server.count(k2)) == (200, 2)
    assert server.app.bodies[k2] == b'{"order":1}'


async def test_connection_drops_are_retried(server: RunningServer) -> None:
    k = key()
    async with client() as c:
        response = await c.get(server.url(f"/drop?key={k}&fail=2"))
    assert response.status_code == 200
    assert server.count(k) == 3


async def test_connection_drop_on_post_is_not_retried(server: RunningServer) -> None:
    k = key()
    async with client() as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.post(server.url(f"/drop?key={k}&fail=1"), content=b"x")
    assert server.count(k) == 1


async def test_connect_errors_reraised_with_a_note() -> None:
    sock = free_socket()  # bound, never listening: connections are refused
    port = sock.getsockname()[1]
    try:
        async with client() as c:
            with pytest.raises(httpx.ConnectError) as info:
                await c.get(f"http://127.0.0.1:{port}/")
    finally:
        sock.close()
    assert any("gave up after 4 attempts" in note for note in info.value.__notes__)


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        ("0.02", 0.02),  # honoured
        ("3600", 0.05),  # clamped to max_delay
        ("99999999999999999999", 0.05),  # huge: clamped
        ("soon", 0.001),  # garbage: the backoff
        ("-1", 0.001),  # negative: the backoff
        ("Mon, 01 Jan 2001 00:00:00 GMT", 0.0),  # a date in the past: now
    ],
)
async def test_retry_after_honoured_and_clamped(server: RunningServer, retry_after: str, expected: float) -> None:
    k = key()
    pipeline = fast(backoff=constant(0.001))
    async with client(pipeline) as c:
        with recording() as rec:
            started = time.monotonic()
            response = await c.get(server.url(f"/flaky?key={k}&fail=1&code=429&retry_after={retry_after}"))
            elapsed = time.monotonic() - started
    assert response.status_code == 200
    [retry] = rec.of("retry")
    assert retry.duration == pytest.approx(expected)
    assert retry.extras["http.response.status_code"] == 429
    assert elapsed < 2.0


async def test_breaker_opens_per_host(server: RunningServer, server2: RunningServer) -> None:
    if importlib.util.find_spec("resilient.breaker") is None:
        pytest.skip("the circuit breaker has not landed yet")
    pipeline = standard_pipeline(
        max_retries=0, minimum_throughput=5, sampling_duration=30.0, break_duration=30.0, name="perhost"
    )
    bad = key()
    async with client(pipeline) as c:
        statuses = [(await c.get(server.url(f"/status?key={bad}&code=500"))).status_code for _ in range(5)]
        assert statuses == [500] * 5
        with pytest.raises(CircuitOpenError):
            await c.get(server.url("/ok"))
        assert server.count(bad) == 5
        # Another authority (another port) has its own breaker: still closed.
        for _ in range(10):
            assert (await c.get(server2.url("/ok"))).status_code == 200


async def test_attempt_timeout_then_retry_succeeds(server: RunningServer) -> None:
    k = key()
    async with client(fast(attempt_timeout=0.2)) as c:
        with recording() as rec:
            response = await c.get(server.url(f"/slow?key={k}&fail=1&delay=2"))
    assert response.status_code == 200
    assert server.count(k) == 2
    assert rec.of("timeout")[0].extras["http.request.method"] == "GET"


async def test_total_timeout(server: RunningServer) -> None:
    async with client(fast(attempt_timeout=0.2, total_timeout=0.5, max_retries=10)) as c:
        started = time.monotonic()
        with pytest.raises(ResilientTimeout):
            await c.get(server.url("/slow?delay=3"))
    assert time.monotonic() - started < 1.5


async def test_deadline_header_arrives(server: RunningServer) -> None:
    async with client() as c:
        with deadline(3.0):
            headers = (await c.get(server.url("/headers"))).json()
        default = (await c.get(server.url("/headers"))).json()
    assert 2.5 < float(headers["x-resilient-deadline"]) <= 3.0
    assert 9.5 < float(default["x-resilient-deadline"]) <= 10.0


async def test_expired_deadline_is_not_sent(server: RunningServer) -> None:
    k = key()
    async with client() as c:
        with deadline(0.0), pytest.raises(ResilientTimeout):
            await c.get(server.url(f"/ok?key={k}"))
    assert server.count(k) == 0


async def test_pool_of_one_connection_with_many_retries_does_not_deadlock(server: RunningServer) -> None:
    inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=1))
    keys = [key("pool") for _ in range(20)]
    async with client(fast(), inner=inner, timeout=httpx.Timeout(5.0, pool=5.0)) as c:

        async def one(k: str) -> int:
            # Large failure bodies: a retried response must be read and its
            # connection released, or the next attempt waits for the pool forever.
            response = await c.get(server.url(f"/flaky?key={k}&fail=2&code=503"))
            return response.status_code

        statuses = await asyncio.wait_for(asyncio.gather(*(one(k) for k in keys)), timeout=30)
        big = await asyncio.wait_for(
            asyncio.gather(*(c.get(server.url("/big?code=503&size=200000")) for _ in range(5))), timeout=30
        )
    assert statuses == [200] * 20
    assert all(server.count(k) == 3 for k in keys)
    assert [r.status_code for r in big] == [503] * 5
    assert all(len(r.content) == 200000 for r in big)


async def test_retried_response_releases_its_connection_before_the_backoff(server: RunningServer) -> None:
    inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=1))
    k = key()
    async with client(
        fast(backoff=constant(0.6), max_delay=1.0), inner=inner, timeout=httpx.Timeout(5.0, pool=0.3)
    ) as c:
        with recording() as rec:
            first = asyncio.create_task(c.get(server.url(f"/flaky?key={k}&fail=1&code=503")))
            # The retry event comes once the failure was read and before the backoff's sleep.
            for _ in range(500):  # bounded: 5 s
                if rec.of("retry"):
                    break
                await asyncio.sleep(0.01)
            assert rec.of("retry"), "the first call never retried"
            # The only connection must be free: otherwise this waits for the pool and times out.
            assert (await c.get(server.url("/ok"))).status_code == 200
            assert not first.done()
            assert (await first).status_code == 200


async def test_streaming_success_through_a_real_server(server: RunningServer) -> None:
    async with client() as c, c.stream("GET", server.url("/big?code=200&size=300000")) as response:
        assert response.status_code == 200
        assert not hasattr(response, "_content")  # not buffered
        total = 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
    assert total == 300000


async def test_custom_pipeline_per_host(server: RunningServer, server2: RunningServer) -> None:
    seen: list[str] = []

    def per_host(host: str) -> Retry:
        seen.append(host)
        return Retry(2, backoff=constant(0), on_result=lambda r: r.status_code == 503)

    async with client(per_host) as c:
        await c.get(server.url("/ok"))
        await c.get(server.url("/ok"))
        await c.get(server2.url("/ok"))
    assert seen == [server.base_url + "", server2.base_url]


# -- sync -------------------------------------------------------------------------------


def sync_client(pipeline: Any = None, *, timeout: Any = 5.0, **kw: Any) -> httpx.Client:
    transport = ResilientTransport(pipeline if pipeline is not None else fast(), **kw)
    return httpx.Client(transport=transport, timeout=timeout)


def test_sync_transport_against_a_real_server(server: RunningServer) -> None:
    k1, k2, k3 = key(), key(), key()
    with sync_client() as c:
        assert c.get(server.url(f"/flaky?key={k1}&fail=2")).status_code == 200
        assert c.post(server.url(f"/flaky?key={k2}&fail=2"), content=b"x").status_code == 503
        assert c.get(server.url(f"/drop?key={k3}&fail=1")).status_code == 200
        headers = c.get(server.url("/headers")).json()
    assert (server.count(k1), server.count(k2), server.count(k3)) == (3, 1, 2)
    assert 9.5 < float(headers["x-resilient-deadline"]) <= 10.0


def test_sync_attempt_timeout_through_httpx_timeouts(server: RunningServer) -> None:
    k = key()
    with sync_client(fast(attempt_timeout=0.2)) as c:
        started = time.monotonic()
        response = c.get(server.url(f"/slow?key={k}&fail=1&delay=2"))
    assert response.status_code == 200
    assert server.count(k) == 2
    assert time.monotonic() - started < 1.5


def test_sync_pool_of_one_with_retries(server: RunningServer) -> None:
    inner = httpx.HTTPTransport(limits=httpx.Limits(max_connections=1))
    with sync_client(inner=inner, timeout=httpx.Timeout(5.0, pool=2.0)) as c:
        statuses = [c.get(server.url(f"/flaky?key={key('spool')}&fail=2")).status_code for _ in range(10)]
    assert statuses == [200] * 10

"""The transports' own errors are httpx errors too: either ``except`` works."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from httpx_server import RunningServer, start_server

import resilient
import resilient.httpx as rhttpx
from resilient import Policy, deadline
from resilient.httpx import AsyncResilientTransport, ResilientTransport, as_httpx_error, standard_pipeline
from resilient.policy import AsyncFn, AsyncWrapped, SyncFn


class Refuse(Policy):
    """Raises a prepared error instead of calling through (what a refusing policy does)."""

    def __init__(self, make: Any) -> None:
        super().__init__()
        self.make = make

    def build_async(self, fn: AsyncFn, site: Any) -> AsyncWrapped:
        async def call(*args: Any, **kwargs: Any) -> Any:
            raise self.make()

        return call

    def build_sync(self, fn: SyncFn, site: Any) -> SyncFn:
        def call(*args: Any, **kwargs: Any) -> Any:
            raise self.make()

        return call


def _timeout() -> Exception:
    return resilient.TimeoutError("total timeout", timeout=2.5, policy="total")


def _open() -> Exception:
    exc = resilient.CircuitOpenError("open", policy="breaker", retry_after=7.0)
    exc.add_note("resilient: breaker note")
    return exc


def _full() -> Exception:
    return resilient.BulkheadFullError("full", policy="bulkhead", retry_after=None, running=3, queued=2)


def _limited() -> Exception:
    return resilient.RateLimitedError("limited", policy="rate", retry_after=1.5)


def _rejected() -> Exception:
    return resilient.RejectedError("rejected", policy="custom", retry_after=0.5)


CASES = [
    (_timeout, resilient.TimeoutError, rhttpx.TimeoutException, httpx.TimeoutException),
    (_open, resilient.CircuitOpenError, rhttpx.CircuitOpenError, httpx.TransportError),
    (_full, resilient.BulkheadFullError, rhttpx.BulkheadFullError, httpx.TransportError),
    (_limited, resilient.RateLimitedError, rhttpx.RateLimitedError, httpx.TransportError),
    (_rejected, resilient.RejectedError, rhttpx.RejectedError, httpx.TransportError),
]


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200)


def check(exc: BaseException, make: Any, resilient_type: type, public: type, httpx_type: type) -> None:
    original = make()
    assert isinstance(exc, resilient_type)
    assert isinstance(exc, public)
    assert isinstance(exc, httpx_type)
    assert isinstance(exc, httpx.HTTPError)
    assert exc.request.url == "http://upstream.test/x"
    assert exc.args == original.args
    for name, value in vars(original).items():
        assert getattr(exc, name) == value, name
    assert exc.__traceback__ is not None


@pytest.mark.parametrize(("make", "resilient_type", "public", "httpx_type"), CASES)
async def test_async_either_except_catches(make: Any, resilient_type: type, public: type, httpx_type: type) -> None:
    transport = AsyncResilientTransport(Refuse(make), inner=httpx.MockTransport(ok))
    async with httpx.AsyncClient(transport=transport, base_url="http://upstream.test") as client:
        try:
            await client.get("/x")
        except httpx.HTTPError as exc:
            check(exc, make, resilient_type, public, httpx_type)
        else:
            pytest.fail("nothing raised")
        with pytest.raises(resilient_type):
            await client.get("/x")
        with pytest.raises(resilient.ResilienceError):
            await client.get("/x")


@pytest.mark.parametrize(("make", "resilient_type", "public", "httpx_type"), CASES)
def test_sync_either_except_catches(make: Any, resilient_type: type, public: type, httpx_type: type) -> None:
    transport = ResilientTransport(Refuse(make), inner=httpx.MockTransport(ok))
    with httpx.Client(transport=transport, base_url="http://upstream.test") as client:
        try:
            client.get("/x")
        except httpx.HTTPError as exc:
            check(exc, make, resilient_type, public, httpx_type)
        else:
            pytest.fail("nothing raised")
        with pytest.raises(resilient_type):
            client.get("/x")


def test_cause_and_notes_are_kept() -> None:
    cause = ValueError("why")

    def make() -> Exception:
        try:
            raise cause
        except ValueError as exc:
            err = resilient.CircuitOpenError("open", retry_after=3.0)
            err.add_note("first note")
            err.__cause__ = exc
            return err

    transport = ResilientTransport(Refuse(make), inner=httpx.MockTransport(ok))
    with (
        httpx.Client(transport=transport, base_url="http://upstream.test") as client,
        pytest.raises(httpx.TransportError) as info,
    ):
        client.get("/x")
    assert info.value.__cause__ is cause
    assert info.value.__notes__ == ["first note"]
    assert isinstance(info.value, resilient.CircuitOpenError)
    assert info.value.retry_after == 3.0


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), resilient.CircuitOpenError("the user's own")],
)
async def test_inner_transport_errors_pass_as_they_are(error: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    pipeline = standard_pipeline(max_retries=0, total_timeout=None)
    async with httpx.AsyncClient(
        transport=AsyncResilientTransport(pipeline, inner=httpx.MockTransport(handler)), base_url="http://u.test"
    ) as client:
        with pytest.raises(type(error)) as info:
            await client.get("/x")
    assert info.value is error
    assert type(info.value) is type(error)


def test_as_httpx_error_leaves_others_alone() -> None:
    request = httpx.Request("GET", "http://u.test/")
    for exc in [httpx.ConnectError("x"), ValueError("x"), rhttpx.CircuitOpenError("already")]:
        assert as_httpx_error(exc, request) is exc


def test_subclass_keeps_its_own_type() -> None:
    class MyOpen(resilient.CircuitOpenError):
        pass

    request = httpx.Request("GET", "http://u.test/")
    first = as_httpx_error(MyOpen("mine"), request)
    second = as_httpx_error(MyOpen("again"), request)
    assert isinstance(first, MyOpen)
    assert isinstance(first, rhttpx.CircuitOpenError)
    assert type(first) is type(second)


# -- the real policies, against a real server ---------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    handle = start_server()
    yield handle
    handle.stop()


async def test_open_circuit_against_server_is_an_httpx_error(server: RunningServer) -> None:
    pipeline = standard_pipeline(
        max_retries=0, minimum_throughput=2, sampling_duration=30.0, break_duration=30.0, total_timeout=None
    )
    async with httpx.AsyncClient(transport=AsyncResilientTransport(pipeline)) as client:
        for _ in range(2):
            assert (await client.get(server.url("/status?code=500"))).status_code == 500
        with pytest.raises(httpx.TransportError) as info:
            await client.get(server.url("/ok"))
    assert isinstance(info.value, resilient.CircuitOpenError)
    assert info.value.retry_after is not None
    assert info.value.request.url.path == "/ok"


def test_sync_open_circuit_against_server_is_an_httpx_error(server: RunningServer) -> None:
    pipeline = standard_pipeline(
        max_retries=0, minimum_throughput=2, sampling_duration=30.0, break_duration=30.0, total_timeout=None
    )
    with httpx.Client(transport=ResilientTransport(pipeline)) as client:
        for _ in range(2):
            assert client.get(server.url("/status?code=500")).status_code == 500
        with pytest.raises(resilient.CircuitOpenError):
            client.get(server.url("/ok"))
        with pytest.raises(httpx.HTTPError):
            client.get(server.url("/ok"))


async def test_expired_deadline_against_server_is_an_httpx_timeout(server: RunningServer) -> None:
    async with httpx.AsyncClient(transport=AsyncResilientTransport()) as client:
        with deadline(0.0), pytest.raises(httpx.TimeoutException) as info:
            await client.get(server.url("/ok"))
    assert isinstance(info.value, resilient.TimeoutError)


def test_local_rate_limit_against_server_is_an_httpx_error(server: RunningServer) -> None:
    pipeline = standard_pipeline(rate=1, per=60.0, burst=1, rate_mode="reject")
    with httpx.Client(transport=ResilientTransport(pipeline)) as client:
        assert client.get(server.url("/ok")).status_code == 200
        with pytest.raises(httpx.TransportError) as info:
            client.get(server.url("/ok"))
    assert isinstance(info.value, resilient.RateLimitedError)


def test_a_rejection_is_not_transient() -> None:
    from resilient.httpx import is_transient_error

    request = httpx.Request("GET", "http://u.test/")
    converted = as_httpx_error(resilient.CircuitOpenError("open"), request)
    assert isinstance(converted, Exception)
    assert not is_transient_error(converted)

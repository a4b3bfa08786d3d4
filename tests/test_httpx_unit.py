"""resilient.httpx without a network: httpx.MockTransport, FakeClock."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

import resilient
from resilient import Fallback, Pipeline, Retry, constant, deadline
from resilient.errors import TimeoutError as ResilientTimeout
from resilient.httpx import (
    TRANSIENT_STATUSES,
    AsyncResilientTransport,
    ResilientTransport,
    StandardPipeline,
    authority,
    http_retry,
    is_transient_error,
    parse_retry_after,
    retry_after_hint,
    standard_pipeline,
)
from resilient.testing import FakeClock, recording
from tests.clock_helpers import until


def fast(**overrides: Any) -> StandardPipeline:
    """The standard pipeline with tiny delays and no breaker interference."""
    options: dict[str, Any] = {"backoff": constant(0.0), "max_delay": 0.05, "minimum_throughput": 10_000}
    options.update(overrides)
    return standard_pipeline(**options)


class Upstream:
    """A MockTransport handler answering from a script of statuses (or exceptions)."""

    def __init__(self, *script: int | Exception, headers: dict[str, str] | None = None) -> None:
        self.script = list(script)
        self.headers = headers or {}
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.bodies.append(request.read())
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, Exception):
            raise step
        return httpx.Response(step, headers=self.headers, content=f"status {step}".encode())

    @property
    def calls(self) -> int:
        return len(self.requests)


async def aclient(upstream: Callable[[httpx.Request], Any], pipeline: Any = None, **kw: Any) -> httpx.AsyncClient:
    transport = AsyncResilientTransport(
        pipeline if pipeline is not None else fast(), inner=httpx.MockTransport(upstream), **kw
    )
    return httpx.AsyncClient(transport=transport, base_url="http://upstream.test")


# -- Retry-After -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("120", 120.0),
        (" 3 ", 3.0),
        ("1.5", 1.5),
        ("99999999999999999999", 99999999999999999999.0),
        ("-5", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("1e9", None),
        ("nan", None),
        ("inf", None),
        ("9" * 65, None),
        ("Wed, 99 Foo 2015 07:28:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    future = format_datetime(datetime.fromtimestamp(now + 42, UTC), usegmt=True)
    past = format_datetime(datetime.fromtimestamp(now - 42, UTC), usegmt=True)
    assert parse_retry_after(future, now=now) == pytest.approx(42.0)
    assert parse_retry_after(past, now=now) == 0.0


def test_retry_after_hint_reads_responses_only() -> None:
    assert retry_after_hint(httpx.Response(503, headers={"Retry-After": "7"})) == 7.0
    assert retry_after_hint(httpx.Response(503)) is None
    assert retry_after_hint(ValueError("x")) is None


# -- predicates and keys -------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (httpx.ConnectError("x"), True),
        (httpx.ReadTimeout("x"), True),
        (httpx.PoolTimeout("x"), True),
        (httpx.RemoteProtocolError("x"), True),
        (httpx.ReadError("x"), True),
        (httpx.UnsupportedProtocol("x"), False),
        (httpx.LocalProtocolError("x"), False),
        (httpx.InvalidURL("x"), False),
        (ResilientTimeout("x"), True),
        (resilient.CircuitOpenError("open"), False),
        (ValueError("x"), False),
    ],
)
def test_is_transient_error(exc: Exception, transient: bool) -> None:
    assert is_transient_error(exc) is transient


def test_transient_statuses() -> None:
    assert {408, 429, 500, 502, 503, 504, 599} <= TRANSIENT_STATUSES
    assert not {200, 301, 400, 401, 404, 409, 422} & TRANSIENT_STATUSES


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("http://example.com/a?b=c", "http://example.com:80"),
        ("http://example.com:80/", "http://example.com:80"),
        ("https://user:secret@example.com/x", "https://example.com:443"),
        ("https://example.com:8443", "https://example.com:8443"),
        ("http://[::1]:8000/", "http://[::1]:8000"),
    ],
)
def test_authority(url: str, key: str) -> None:
    assert authority(httpx.Request("GET", url)) == key


# -- configuration -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "param"),
    [
        ({"pipeline": 42}, TypeError, "pipeline"),
        ({"max_hosts": 0}, ValueError, "max_hosts"),
        ({"max_hosts": "many"}, TypeError, "max_hosts"),
        ({"deadline_header": ""}, TypeError, "deadline_header"),
        ({"key": "host"}, TypeError, "key"),
        ({"inner": httpx.HTTPTransport()}, TypeError, "inner"),
    ],
)
def test_transport_rejects_bad_configuration(kwargs: dict[str, Any], error: type[Exception], param: str) -> None:
    with pytest.raises(error, match=param):
        AsyncResilientTransport(**kwargs)


def test_sync_transport_rejects_async_inner() -> None:
    with pytest.raises(TypeError, match="inner"):
        ResilientTransport(inner=httpx.AsyncHTTPTransport())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "param"),
    [
        ({"preset": "aws"}, ValueError, "preset"),
        ({"total_timeout": -1}, ValueError, "total_timeout"),
        ({"attempt_timeout": 0}, ValueError, "attempt_timeout"),
        ({"attempt_timeout": "10"}, TypeError, "attempt_timeout"),
        ({"max_retries": -1}, ValueError, "max_retries"),
        ({"statuses": [503, 1000]}, ValueError, "statuses"),
        ({"statuses": "503"}, TypeError, "statuses"),
        ({"max_concurrent": 0}, ValueError, "max_concurrent"),
        ({"rate": 0}, ValueError, "rate"),
        ({"rate_mode": "drop"}, ValueError, "rate_mode"),
        ({"failure_ratio": 2.0}, ValueError, "failure_ratio"),
        ({"max_queued": -1}, ValueError, "max_queued"),
        ({"base_delay": -1}, ValueError, "base"),
        ({"breaker_statuses": [503, 42]}, ValueError, "breaker_statuses"),
        ({"throttle_retry_ratio": -0.1}, ValueError, "throttle_retry_ratio"),
        # One error type per kind of mistake (resilient.validate): a str is the wrong type.
        ({"throttle_retry_ratio": "0.1"}, TypeError, "throttle_retry_ratio"),
        ({"overload_retry_ratio": -1}, ValueError, "overload_retry_ratio"),
        ({"consecutive_failures": 0}, ValueError, "consecutive_failures"),
        ({"attempt_timeout": 10, "total_timeout": 2}, ValueError, "attempt_timeout.*total_timeout"),
    ],
)
def test_standard_pipeline_rejects_bad_values(kwargs: dict[str, Any], error: type[Exception], param: str) -> None:
    with pytest.raises(error, match=param):
        standard_pipeline(**kwargs)


def test_presets() -> None:
    assert standard_pipeline().failure_ratio == 0.5
    assert standard_pipeline("microsoft").failure_ratio == 0.1
    assert standard_pipeline("microsoft", failure_ratio=0.3).failure_ratio == 0.3
    std = standard_pipeline()
    assert (std.total_timeout, std.attempt_timeout, std.max_retries, std.base_delay) == (30.0, 10.0, 3, 0.025)
    assert (std.max_concurrent, std.max_queued) == (1000, 0)
    assert (std.sampling_duration, std.minimum_throughput, std.consecutive_failures) == (30.0, 100, 20)
    assert [std.break_duration(n, 0.0) for n in range(4)] == [0.1, 0.2, 0.25, 0.25]  # type: ignore[operator]
    assert 429 not in std.breaker_statuses
    assert (std.throttle_retry_ratio, std.overload_retry_ratio) == (0.04, 0.0)
    # Microsoft's exact values, for every option left out...
    ms = standard_pipeline("microsoft")
    assert (ms.base_delay, ms.failure_ratio, ms.consecutive_failures, ms.break_duration) == (2.0, 0.1, None, 5.0)
    assert 429 in ms.breaker_statuses
    assert (ms.throttle_retry_ratio, ms.overload_retry_ratio) == (None, None)
    # ...and what the caller gives wins, even when it equals the resilient default.
    given = StandardPipeline("microsoft", base_delay=0.025, consecutive_failures=20, failure_ratio=0.5)
    assert (given.base_delay, given.consecutive_failures, given.failure_ratio) == (0.025, 20, 0.5)


def test_a_lower_total_timeout_drops_the_default_attempt_timeout() -> None:
    assert standard_pipeline(total_timeout=2).attempt_timeout is None
    assert standard_pipeline(total_timeout=2, attempt_timeout=1).attempt_timeout == 1


def test_signature_shows_values_not_sentinels() -> None:
    import inspect

    for name, param in inspect.signature(StandardPipeline).parameters.items():
        assert param.default is not Ellipsis, name
        assert not isinstance(param.default, frozenset), name


def test_standard_pipeline_parts_order() -> None:
    pipeline = standard_pipeline()("http://h:80")
    kinds = [p.policy_type for p in pipeline]
    assert kinds[kinds.index("timeout")] == "timeout"
    retry = next(p for p in pipeline if isinstance(p, Retry))
    assert retry.attempts == 4
    timeouts = [p for p in pipeline if isinstance(p, resilient.Timeout)]
    assert [t.seconds for t in timeouts] == [30.0, 10.0]
    # The total timeout is outside the retry, the attempt timeout inside it.
    policies = list(pipeline)
    assert policies.index(timeouts[0]) < policies.index(retry) < policies.index(timeouts[1])
    # Synchronous clients: no Timeout policy (a blocking call cannot be interrupted).
    sync = standard_pipeline().build("http://h:80", sync=True)
    assert not any(isinstance(p, resilient.Timeout) for p in sync)
    assert any(isinstance(p, Retry) for p in sync)


def test_parts_can_be_left_out() -> None:
    pipeline = standard_pipeline(
        max_concurrent=None,
        total_timeout=None,
        max_retries=0,
        failure_ratio=None,
        consecutive_failures=None,  # the breaker has two triggers: both off leaves it out
        attempt_timeout=None,
    )("http://h:80")
    assert len(pipeline) == 0


# -- retries and safety ------------------------------------------------------------


async def test_retries_transient_status_and_returns_last_response() -> None:
    upstream = Upstream(503)
    async with await aclient(upstream) as client:
        response = await client.get("/x")
    assert response.status_code == 503
    assert response.text == "status 503"
    assert upstream.calls == 4  # MaxRetryAttempts=3: four attempts in all


async def test_success_after_transient_failures() -> None:
    upstream = Upstream(502, refused(), 200)
    async with await aclient(upstream) as client:
        response = await client.get("/x")
    assert response.status_code == 200
    assert upstream.calls == 3


def refused() -> httpx.ConnectError:
    return httpx.ConnectError("connection refused")


@pytest.mark.parametrize("status", [200, 301, 400, 404, 409])
async def test_does_not_retry_other_statuses(status: int) -> None:
    upstream = Upstream(status)
    async with await aclient(upstream) as client:
        response = await client.get("/x")
    assert response.status_code == status
    assert upstream.calls == 1


@pytest.mark.parametrize("exc", [httpx.UnsupportedProtocol("ftp"), httpx.LocalProtocolError("bad header")])
async def test_does_not_retry_errors_a_retry_cannot_fix(exc: Exception) -> None:
    upstream = Upstream(exc)
    async with await aclient(upstream) as client:
        with pytest.raises(type(exc)):
            await client.get("/x")
    assert upstream.calls == 1


async def test_transport_error_reraised_with_note() -> None:
    upstream = Upstream(httpx.ConnectError("refused"))
    async with await aclient(upstream) as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.get("/x")
    assert upstream.calls == 4
    assert any("gave up after 4 attempts" in note for note in info.value.__notes__)


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"])
async def test_idempotent_methods_are_retried(method: str) -> None:
    upstream = Upstream(503, 200)
    async with await aclient(upstream) as client:
        response = await client.request(method, "/x", content=b"body" if method == "PUT" else None)
    assert response.status_code == 200
    assert upstream.calls == 2
    if method == "PUT":
        assert upstream.bodies == [b"body", b"body"]


@pytest.mark.parametrize("method", ["POST", "PATCH", "CONNECT"])
async def test_non_idempotent_methods_are_not_retried(method: str) -> None:
    upstream = Upstream(503, 200)
    async with await aclient(upstream) as client:
        response = await client.request(method, "/x", content=b"body")
    assert response.status_code == 503
    assert upstream.calls == 1


async def test_non_idempotent_errors_are_not_retried() -> None:
    upstream = Upstream(httpx.ReadError("reset"), 200)
    async with await aclient(upstream) as client:
        with pytest.raises(httpx.ReadError):
            await client.post("/x", json={"a": 1})
    assert upstream.calls == 1


async def test_post_with_idempotency_key_is_retried() -> None:
    upstream = Upstream(503, 200)
    async with await aclient(upstream) as client:
        response = await client.post("/x", json={"a": 1}, headers={"Idempotency-Key": "abc"})
    assert response.status_code == 200
    assert upstream.calls == 2
    assert upstream.bodies == [b'{"a":1}', b'{"a":1}']


async def test_retry_non_idempotent_opt_in() -> None:
    upstream = Upstream(503, 200)
    async with await aclient(upstream, retry_non_idempotent=True) as client:
        response = await client.post("/x", data={"a": "1"})
    assert response.status_code == 200
    assert upstream.calls == 2


async def test_non_replayable_stream_body_is_never_retried() -> None:
    upstream = Upstream(503, 200)

    async def body() -> AsyncIterator[bytes]:
        yield b"chunk"

    async with await aclient(upstream, retry_non_idempotent=True) as client:
        response = await client.put("/x", content=body())
    assert response.status_code == 503
    assert upstream.calls == 1


async def test_multipart_with_seekable_file_is_replayed() -> None:
    upstream = Upstream(503, 200)
    async with await aclient(upstream) as client:
        response = await client.put("/x", files={"f": ("a.txt", io.BytesIO(b"payload"))})
    assert response.status_code == 200
    assert upstream.calls == 2
    assert b"payload" in upstream.bodies[1]


async def test_multipart_with_unseekable_file_is_not_replayed() -> None:
    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.data = b"once"

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def read(self, n: int = -1) -> bytes:
            data, self.data = self.data, b""
            return data

    upstream = Upstream(503, 200)
    async with await aclient(upstream) as client:
        response = await client.put("/x", files={"f": ("a.txt", Pipe())})
    assert response.status_code == 503
    assert upstream.calls == 1


async def test_custom_retry_cannot_resend_a_post() -> None:
    # A plain Retry knows nothing about HTTP: the transport still refuses to
    # send a POST twice and gives back the first outcome.
    upstream = Upstream(503, 200)
    pipeline = Retry(3, backoff=constant(0), on_result=lambda r: r.status_code >= 500)
    async with await aclient(upstream, pipeline) as client:
        response = await client.post("/x", content=b"x")
    assert response.status_code == 503
    assert upstream.calls == 1

    upstream = Upstream(httpx.ConnectError("refused"), 200)
    async with await aclient(upstream, Retry(3, backoff=constant(0))) as client:
        with pytest.raises(httpx.ConnectError):
            await client.post("/x", content=b"x")
    assert upstream.calls == 1


async def test_http_retry_in_custom_pipeline() -> None:
    upstream = Upstream(429, 200)
    pipeline = Pipeline(http_retry(2, backoff=constant(0)), name="mine")
    async with await aclient(upstream, pipeline) as client:
        assert (await client.get("/x")).status_code == 200
        assert (await client.post("/x")).status_code == 200  # the script is at 200 now
    assert upstream.calls == 3


async def test_http_retry_custom_statuses() -> None:
    upstream = Upstream(404, 200)
    async with await aclient(upstream, http_retry(1, backoff=constant(0), statuses={404})) as client:
        assert (await client.get("/x")).status_code == 200
    assert upstream.calls == 2


# -- Retry-After through the pipeline ------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [("0.02", 0.02), ("1000", 0.05), ("garbage", 0.01), ("-3", 0.01), ("", 0.01)],
)
async def test_retry_after_honoured_and_clamped(header: str, expected: float) -> None:
    clock = FakeClock(auto_advance=True)
    upstream = Upstream(503, 200, headers={"Retry-After": header})
    pipeline = fast(backoff=constant(0.01), max_delay=0.05, clock=clock)
    async with await aclient(upstream, pipeline) as client:
        response = await client.get("/x")
    assert response.status_code == 200
    assert clock.sleeps == [pytest.approx(expected)]


async def test_retry_after_can_be_ignored() -> None:
    clock = FakeClock(auto_advance=True)
    upstream = Upstream(503, 200, headers={"Retry-After": "0.04"})
    pipeline = fast(backoff=constant(0.01), honour_retry_after=False, clock=clock)
    async with await aclient(upstream, pipeline) as client:
        await client.get("/x")
    assert clock.sleeps == [0.01]


async def test_microsoft_backoff_is_exponential_from_two_seconds() -> None:
    clock = FakeClock(auto_advance=True)
    upstream = Upstream(503)
    pipeline = standard_pipeline("microsoft", clock=clock, total_timeout=None, minimum_throughput=10_000)
    async with await aclient(upstream, pipeline) as client:
        await client.get("/x")
    assert len(clock.sleeps) == 3
    assert all(0 <= s <= 30 for s in clock.sleeps)
    assert sum(clock.sleeps) > 1.0  # decorrelated jitter around 2, 4, 8 s


async def test_default_backoff_is_tens_of_milliseconds() -> None:
    # A user is waiting: the resilient preset's retries start at 25 ms, not 2 s.
    clock = FakeClock(auto_advance=True)
    upstream = Upstream(503)
    pipeline = standard_pipeline(clock=clock, total_timeout=None)
    async with await aclient(upstream, pipeline) as client:
        await client.get("/x")
    assert len(clock.sleeps) == 3
    assert all(0 < s <= 0.5 for s in clock.sleeps)
    assert sum(clock.sleeps) < 1.0


# -- responses: buffering, closing, streaming ------------------------------------------


class TrackedStream(httpx.AsyncByteStream):
    """A response body that records how far it was read and whether it was closed."""

    def __init__(self, chunks: list[bytes], log: list[str], name: str) -> None:
        self.chunks = chunks
        self.log = log
        self.name = name

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            self.log.append(f"{self.name} read {i}")
            yield chunk

    async def aclose(self) -> None:
        self.log.append(f"{self.name} closed")


async def test_retried_response_is_read_and_closed_before_the_next_attempt() -> None:
    log: list[str] = []
    statuses = [503, 200]

    async def handler(request: httpx.Request) -> httpx.Response:
        n = len([e for e in log if e.startswith("send")])
        log.append(f"send {n}")
        status = statuses[n]
        return httpx.Response(status, stream=TrackedStream([b"a", b"b"], log, f"r{n}"))

    async with await aclient(handler) as client:
        response = await client.get("/x")
    assert response.status_code == 200
    assert log.index("r0 closed") < log.index("send 1")
    assert log[:4] == ["send 0", "r0 read 0", "r0 read 1", "r0 closed"]


async def test_last_failed_response_is_intact() -> None:
    log: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, headers={"X-Why": "busy"}, stream=TrackedStream([b"bu", b"sy"], log, "r"))

    async with await aclient(handler) as client, client.stream("GET", "/x") as response:
        assert response.status_code == 503
        assert response.headers["x-why"] == "busy"
        # The last one is not going to be retried: handed back unread, as it came.
        assert log.count("r read 0") == 3
        assert [chunk async for chunk in response.aiter_raw()] == [b"bu", b"sy"]
    assert log.count("r closed") == 4  # each attempt's connection was released


async def test_streaming_success_is_not_buffered() -> None:
    log: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=TrackedStream([b"1", b"2", b"3"], log, "r"))

    async with await aclient(handler) as client:
        async with client.stream("GET", "/x") as response:
            assert log == []  # nothing read by the transport
            chunks = []
            async for chunk in response.aiter_raw():
                chunks.append(chunk)
                assert log[-1] == f"r read {len(chunks) - 1}"  # read as the caller pulls
        assert chunks == [b"1", b"2", b"3"]
    assert log[-1] == "r closed"


async def test_non_retryable_failure_is_not_buffered() -> None:
    log: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, stream=TrackedStream([b"x"], log, "r"))

    async with await aclient(handler) as client, client.stream("POST", "/x", content=b"") as response:
        assert response.status_code == 503
        assert log == []


async def test_held_response_closed_when_fallback_replaces_it() -> None:
    log: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, stream=TrackedStream([b"x"], log, "r"))

    replacement = httpx.Response(200, content=b"fallback")
    pipeline = Fallback(replacement, on_result=lambda r: r.status_code == 404)
    async with await aclient(handler, pipeline) as client:
        response = await client.get("/x")
    assert response.text == "fallback"
    assert log == ["r closed"]


async def test_response_closed_when_custom_retry_retries_it() -> None:
    log: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, stream=TrackedStream([b"x"], log, f"r{len(log)}"))

    pipeline = Retry(2, backoff=constant(0), on_result=lambda r: r.status_code == 404)
    async with await aclient(handler, pipeline) as client:
        response = await client.get("/x")
    assert response.status_code == 404
    assert log[0] == "r0 closed"  # the first one, not the one handed back


async def test_cancellation_during_backoff_releases_the_response() -> None:
    log: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, stream=TrackedStream([b"x"], log, "r"))

    clock = FakeClock()
    pipeline = Retry(2, backoff=constant(10), on_result=lambda r: r.status_code == 404, clock=clock)
    async with await aclient(handler, pipeline) as client:
        task = asyncio.create_task(client.get("/x"))
        for _ in range(1000):  # bounded: until the retry waits out its 10 s backoff
            if clock.sleeps:
                break
            await asyncio.sleep(0)
        assert clock.sleeps == [10]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert log == ["r closed"]


# -- per host ---------------------------------------------------------------------------


async def test_factory_called_once_per_host_and_bounded() -> None:
    built: list[str] = []

    def factory(host: str) -> Retry:
        built.append(host)
        return Retry(1)

    upstream = Upstream(200)
    transport = AsyncResilientTransport(factory, inner=httpx.MockTransport(upstream), max_hosts=2)
    async with httpx.AsyncClient(transport=transport) as client:
        for url in ["http://a/1", "http://a/2", "http://a:80/3", "https://a/", "http://b:81/", "http://a/again"]:
            await client.get(url)
    assert built == ["http://a:80", "https://a:443", "http://b:81", "http://a:80"]


async def test_custom_key() -> None:
    built: list[str] = []

    def factory(host: str) -> Retry:
        built.append(host)
        return Retry(1)

    transport = AsyncResilientTransport(
        factory, inner=httpx.MockTransport(Upstream(200)), key=lambda r: r.url.host.split(".", 1)[-1]
    )
    async with httpx.AsyncClient(transport=transport) as client:
        await client.get("http://a.example.com/")
        await client.get("http://b.example.com/")
    assert built == ["example.com"]


async def test_factory_must_return_a_policy() -> None:
    transport = AsyncResilientTransport(lambda host: "nope", inner=httpx.MockTransport(Upstream(200)))  # type: ignore[arg-type,return-value]
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(TypeError, match="must return a Policy"):
            await client.get("http://a/")


# -- events -----------------------------------------------------------------------------


async def test_events_carry_method_host_status_and_nothing_secret() -> None:
    upstream = Upstream(503, httpx.ConnectError("refused"), 200)
    async with await aclient(upstream) as client:
        with recording() as rec:
            await client.get("http://user:hunter2@upstream.test:8080/p?token=s3cret", headers={"Auth": "key123"})
    retries = rec.of("retry")
    assert len(retries) == 2
    first, second = (dict(e.extras) for e in retries)
    assert first == {
        "http.request.method": "GET",
        "server.address": "upstream.test",
        "server.port": 8080,
        "http.response.status_code": 503,
    }
    assert "http.response.status_code" not in second
    assert retries[1].exception == "httpx.ConnectError"
    text = repr(rec.events)
    for secret in ("hunter2", "s3cret", "token", "/p", "key123", "user"):
        assert secret not in text


# -- deadlines ---------------------------------------------------------------------------


async def test_deadline_header_is_the_attempt_timeout_by_default() -> None:
    upstream = Upstream(200)
    async with await aclient(upstream) as client:
        await client.get("/x")
    value = float(upstream.requests[0].headers["x-resilient-deadline"])
    assert 9.9 < value <= 10.0


async def test_deadline_header_follows_the_current_deadline() -> None:
    upstream = Upstream(200)
    async with await aclient(upstream, deadline_header="grpc-timeout-s") as client:
        with deadline(1.5):
            await client.get("/x")
    value = float(upstream.requests[0].headers["grpc-timeout-s"])
    assert 1.0 < value <= 1.5
    assert "x-resilient-deadline" not in upstream.requests[0].headers
    timeouts = upstream.requests[0].extensions["timeout"]
    assert all(t <= 1.5 for t in timeouts.values())


async def test_no_deadline_header_without_deadline_or_when_disabled() -> None:
    upstream = Upstream(200)
    async with await aclient(upstream, Retry(1)) as client:
        await client.get("/x")
    assert "x-resilient-deadline" not in upstream.requests[0].headers
    async with await aclient(upstream, deadline_header=None) as client:
        with deadline(1.0):
            await client.get("/x")
    assert "x-resilient-deadline" not in upstream.requests[1].headers


async def test_a_lifted_deadline_is_no_deadline() -> None:
    # A deadline lifted in place (the ASGI request timeout's, once the response
    # started) reads as infinitely far: no header saying "inf", no infinite
    # timeouts (a socket refuses them).
    upstream = Upstream(200)
    async with await aclient(upstream, Retry(1)) as client:
        with deadline(1.0) as d:
            d.lift()
            await client.get("/x", timeout=3.0)
    assert "x-resilient-deadline" not in upstream.requests[0].headers
    assert set(upstream.requests[0].extensions["timeout"].values()) == {3.0}


def test_sync_a_lifted_deadline_is_no_deadline() -> None:
    upstream = Upstream(200)
    with sync_client(upstream, Retry(1)) as client, deadline(1.0) as d:
        d.lift()
        client.get("/x", timeout=3.0)
    assert "x-resilient-deadline" not in upstream.requests[0].headers
    assert set(upstream.requests[0].extensions["timeout"].values()) == {3.0}


async def test_expired_deadline_sends_nothing() -> None:
    upstream = Upstream(200)
    clock = FakeClock()
    async with await aclient(upstream, Retry(1)) as client:
        with deadline(1.0, clock=clock):
            clock.advance(2)
            with pytest.raises(ResilientTimeout):
                await client.get("/x")
    assert upstream.calls == 0


# -- sync ------------------------------------------------------------------------------


def sync_client(upstream: Callable[[httpx.Request], Any], pipeline: Any = None, **kw: Any) -> httpx.Client:
    transport = ResilientTransport(
        pipeline if pipeline is not None else fast(), inner=httpx.MockTransport(upstream), **kw
    )
    return httpx.Client(transport=transport, base_url="http://upstream.test")


def test_sync_retries_and_safety() -> None:
    upstream = Upstream(503, 503, 200)
    with sync_client(upstream) as client:
        assert client.get("/x").status_code == 200
        assert upstream.calls == 3
        assert client.post("/x", content=b"x").status_code == 200
        upstream.script = [503, 503, 200]
        assert client.post("/x", content=b"x").status_code == 503
        assert client.post("/x", content=b"x", headers={"Idempotency-Key": "k"}).status_code == 200
    assert upstream.calls == 7


def test_sync_deadline_caps_httpx_timeouts_and_header() -> None:
    upstream = Upstream(200)
    with sync_client(upstream, fast(attempt_timeout=2.0)) as client:
        client.get("/x", timeout=5.0)
        with deadline(0.5):
            client.get("/x", timeout=httpx.Timeout(5.0, pool=None))
    first, second = upstream.requests
    assert all(t <= 2.0 for t in first.extensions["timeout"].values())
    assert 1.9 < float(first.headers["x-resilient-deadline"]) <= 2.0
    assert all(t is not None and t <= 0.5 for t in second.extensions["timeout"].values())
    assert float(second.headers["x-resilient-deadline"]) <= 0.5


def test_sync_streaming_and_buffering() -> None:
    log: list[str] = []

    class Tracked(httpx.SyncByteStream):
        def __init__(self, name: str) -> None:
            self.name = name

        def __iter__(self) -> Iterator[bytes]:
            log.append(f"{self.name} read")
            yield b"x"

        def close(self) -> None:
            log.append(f"{self.name} closed")

    statuses = [503, 200]

    def handler(request: httpx.Request) -> httpx.Response:
        n = sum(1 for e in log if e.startswith("send"))
        log.append(f"send {n}")
        return httpx.Response(statuses[n], stream=Tracked(f"r{n}"))

    with sync_client(handler) as client, client.stream("GET", "/x") as response:
        assert response.status_code == 200
        assert log == ["send 0", "r0 read", "r0 closed", "send 1"]


def test_sync_transport_rejects_a_timeout_pipeline_at_construction() -> None:
    with pytest.raises(TypeError, match="async"):
        ResilientTransport(resilient.Timeout(1.0), inner=httpx.MockTransport(Upstream(200)))


def test_sync_transport_from_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    upstream = Upstream(200)
    with sync_client(upstream) as client, ThreadPoolExecutor(4) as pool:
        urls = [f"http://h{i % 7}/" for i in range(50)]
        statuses = list(pool.map(lambda u: client.get(u).status_code, urls))
    assert statuses == [200] * 50


# -- lifecycle ------------------------------------------------------------------------------


async def test_close_is_forwarded() -> None:
    closed: list[str] = []

    class Inner(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200)

        async def aclose(self) -> None:
            closed.append("aclose")

    async with httpx.AsyncClient(transport=AsyncResilientTransport(inner=Inner())) as client:
        await client.get("http://a/")
    assert closed == ["aclose"]


def test_sync_close_is_forwarded() -> None:
    closed: list[str] = []

    class Inner(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200)

        def close(self) -> None:
            closed.append("close")

    with httpx.Client(transport=ResilientTransport(inner=Inner())) as client:
        client.get("http://a/")
    assert closed == ["close"]


async def test_sniffio_is_importable_for_httpcore() -> None:
    # Without sniffio, httpcore retries a failing import on every request.
    import sniffio
    from httpcore._synchronization import current_async_library

    assert sniffio.current_async_library() == "asyncio"
    assert current_async_library() == "asyncio"


# -- the policies that land from other modules ------------------------------------------


async def test_open_circuit_raises_as_itself_and_is_not_retried() -> None:
    clock = FakeClock(auto_advance=True)
    upstream = Upstream(500)
    pipeline = standard_pipeline(
        backoff=constant(0.0), minimum_throughput=2, break_duration=60.0, total_timeout=None, clock=clock
    )
    async with await aclient(upstream, pipeline) as client:
        # Two failed attempts open the circuit; the third attempt is refused,
        # and that refusal is not retried (as in Microsoft's handler).
        with pytest.raises(resilient.CircuitOpenError):
            await client.get("/x")
        assert upstream.calls == 2
        with recording() as rec, pytest.raises(resilient.CircuitOpenError):
            await client.get("/x")
        assert upstream.calls == 2  # nothing sent
        assert rec.of("retry") == []
        # Another host has its own breaker.
        upstream.script = [200]
        assert (await client.get("http://other.test/")).status_code == 200


async def test_concurrency_limit_rejects_as_itself() -> None:
    release = asyncio.Event()

    entered = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        entered.set()
        await release.wait()
        return httpx.Response(200)

    async with await aclient(handler, fast(max_concurrent=1)) as client:
        first = asyncio.create_task(client.get("/x"))
        await entered.wait()  # the first request holds the only slot
        with pytest.raises(resilient.BulkheadFullError):
            await client.get("/x")
        release.set()
        assert (await first).status_code == 200


async def test_rate_limit_option() -> None:
    upstream = Upstream(200)
    async with await aclient(upstream, fast(rate=1, per=60.0, burst=1, rate_mode="reject")) as client:
        assert (await client.get("/x")).status_code == 200
        with pytest.raises(resilient.RateLimitedError):
            await client.get("/x")
        # Per host: another authority has its own bucket.
        assert (await client.get("http://other.test/")).status_code == 200


@pytest.mark.parametrize(("preset", "low", "high"), [("resilient", 0.97, 1.0), ("microsoft", 0.0, 0.5)])
async def test_brownout_breaker_ratio(preset: str, low: float, high: float) -> None:
    # Why the default failure ratio is 0.5: during a 30 % brownout, three
    # retries absorb nearly every failure, but the breaker (inside the retry)
    # sees ~30 % failed attempts, and Microsoft's 0.1 opens it.
    import random

    rng = random.Random(7)
    clock = FakeClock(auto_advance=True)

    def brownout(request: httpx.Request) -> httpx.Response:
        clock.advance(0.01)
        return httpx.Response(503 if rng.random() < 0.3 else 200)

    pipeline = standard_pipeline(preset, clock=clock, backoff=constant(0.05), total_timeout=None)  # type: ignore[arg-type]
    ok = 0
    async with await aclient(brownout, pipeline) as client:
        for _ in range(600):
            with contextlib.suppress(resilient.CircuitOpenError):
                ok += (await client.get("/x")).status_code == 200
            clock.advance(0.05)
    assert low <= ok / 600 <= high


async def test_429_does_not_open_the_breaker_in_the_resilient_preset() -> None:
    clock = FakeClock(auto_advance=True)
    upstream = Upstream(429)
    for preset, opens in (("resilient", False), ("microsoft", True)):
        pipeline = standard_pipeline(
            preset,  # type: ignore[arg-type]
            clock=clock,
            backoff=constant(0),
            minimum_throughput=10,
            max_retries=0,
            total_timeout=None,
        )
        opened = False
        async with await aclient(upstream, pipeline) as client:
            for _ in range(30):
                try:
                    assert (await client.get("/x")).status_code == 429
                except resilient.CircuitOpenError:
                    opened = True
        assert opened is opens, preset


async def test_rate_limited_upstream_gets_no_retry_storm() -> None:
    # A quota of 150 calls/s against 200 calls/s offered, answering 429 with
    # Retry-After: 1. Retrying every 429 keeps the client over its quota and
    # multiplies the calls the limiter sees; the resilient preset pays for 429
    # retries from a 10 % budget (and 5xx retries stay unbudgeted).
    clock = FakeClock()

    async def run(pipeline: StandardPipeline) -> tuple[float, float]:
        admitted: list[float] = []
        sent = ok = 0

        def quota(request: httpx.Request) -> httpx.Response:
            nonlocal sent
            sent += 1
            now = clock.now()
            while admitted and admitted[0] <= now - 1.0:
                admitted.pop(0)
            if len(admitted) < 150:
                admitted.append(now)
                return httpx.Response(200)
            return httpx.Response(429, headers={"Retry-After": "1"})

        async def settle() -> None:
            for _ in range(10):
                await asyncio.sleep(0)

        async with await aclient(quota, pipeline) as client:

            async def one() -> None:
                nonlocal ok
                with contextlib.suppress(resilient.CircuitOpenError):
                    response = await client.get("/x")
                    ok += response.status_code == 200

            tasks: list[asyncio.Task[None]] = []
            for _ in range(20):  # 20 s of 200 calls/s, in 10 bursts a second
                for _ in range(10):
                    tasks += [asyncio.create_task(one()) for _ in range(20)]
                    await settle()
                    clock.advance(0.1)
                    await settle()
            while not all(t.done() for t in tasks):
                clock.advance(0.5)
                await settle()
        return sent / 4000, ok / 4000

    def pipeline(preset: str, **overrides: Any) -> StandardPipeline:
        return standard_pipeline(preset, clock=clock, total_timeout=None, attempt_timeout=None, **overrides)  # type: ignore[arg-type]

    amplification, success = await run(pipeline("resilient"))
    storm, _ = await run(pipeline("resilient", throttle_retry_ratio=None))
    _, microsoft_success = await run(pipeline("microsoft"))
    assert amplification <= 1.15
    assert storm >= 1.3
    assert success >= 0.7  # the quota admits at most 0.75 of the offered calls
    assert success > microsoft_success


async def test_5xx_retries_are_not_charged_to_the_throttle_budget() -> None:
    clock = FakeClock(auto_advance=True)
    upstream = Upstream(503, 503, 503, 200)
    pipeline = standard_pipeline(clock=clock, backoff=constant(0), minimum_throughput=10_000, throttle_retry_ratio=0)
    async with await aclient(upstream, pipeline) as client:
        assert (await client.get("/x")).status_code == 200
    assert upstream.calls == 4


async def test_deadline_timeout_in_a_custom_pipeline() -> None:
    from resilient.httpx import deadline_timeout

    upstream = Upstream(200)
    pipeline = Pipeline(deadline_timeout(5.0), http_retry(1), deadline_timeout(0.5, name="attempt"))
    async with await aclient(upstream, pipeline) as client:
        await client.get("/x")
    assert 0.4 < float(upstream.requests[0].headers["x-resilient-deadline"]) <= 0.5
    with pytest.raises(ValueError, match="seconds"):
        deadline_timeout(-1)


async def test_deadline_timeout_expires_on_its_clock() -> None:
    from resilient.httpx import deadline_timeout

    clock = FakeClock()
    never = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        await never.wait()
        return httpx.Response(200)  # pragma: no cover - the timeout fires first

    async with await aclient(slow, deadline_timeout(5.0, clock=clock)) as client:
        task = asyncio.create_task(client.get("/x"))
        await until(lambda: clock.pending_timers == 1)
        clock.advance(4.9)
        await asyncio.sleep(0)
        assert not task.done()
        clock.advance(0.2)
        await until(task.done)
        with pytest.raises(ResilientTimeout):
            task.result()


@pytest.mark.parametrize("which", ["attempt_timeout", "total_timeout"])
async def test_standard_pipeline_timeouts_run_on_its_clock(which: str) -> None:
    # Before: the pipeline's clock drove the retry and the breaker, but its
    # timeouts (and the concurrency limit's queue) ran on the real clock.
    clock = FakeClock()
    never = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        await never.wait()
        return httpx.Response(200)  # pragma: no cover - the timeout fires first

    timeouts = {"attempt_timeout": None, "total_timeout": None, which: 3.0}
    pipeline = fast(max_retries=0, clock=clock, **timeouts)
    async with await aclient(slow, pipeline) as client:
        task = asyncio.create_task(client.get("/x"))
        await until(lambda: clock.pending_timers == 1)
        clock.advance(3.0)
        await until(task.done)
        with pytest.raises(ResilientTimeout):
            task.result()


def test_every_timed_part_of_the_standard_pipeline_shares_its_clock() -> None:
    clock = FakeClock()
    built = fast(max_concurrent=4, max_queued=2, clock=clock).build("upstream.test")
    timed = [p for p in built if hasattr(p, "clock")]
    assert {type(p).__name__ for p in timed} >= {"Bulkhead", "Timeout"}
    assert all(p.clock is clock for p in timed)


# -- shadow mode ----------------------------------------------------------------------


def test_enforce_false_runs_the_standard_pipeline_in_shadow_mode() -> None:
    from resilient.events import WOULD_REJECT

    def run(enforce: bool) -> Any:
        async def calls() -> list[Any]:
            upstream = Upstream(503)
            pipeline = fast(consecutive_failures=2, max_retries=0, enforce=enforce, clock=FakeClock())
            answers: list[Any] = []
            async with await aclient(upstream, pipeline) as client:
                for _ in range(5):
                    try:
                        answers.append((await client.get("/x")).status_code)
                    except resilient.CircuitOpenError:
                        answers.append("rejected")
            return answers

        with recording() as rec:
            answers = asyncio.run(calls())
        return answers, [e.policy_type for e in rec.of(WOULD_REJECT)]

    # Enforcing, the breaker opens after two 503s and rejects the rest...
    assert run(True) == ([503, 503, "rejected", "rejected", "rejected"], [])
    # ...in shadow mode every call goes through, and each rejection it would have made is reported.
    assert run(False) == ([503] * 5, ["circuit_breaker"] * 3)


def test_enforce_is_validated() -> None:
    with pytest.raises(TypeError, match="enforce"):
        standard_pipeline(enforce="no")


def test_each_transport_shows_its_own_kind_of_inner_in_its_signature() -> None:
    # One constructor serves both; help() must still name the transport type each takes.
    sync, async_ = inspect.signature(ResilientTransport), inspect.signature(AsyncResilientTransport)
    assert sync.parameters["inner"].annotation == "httpx.BaseTransport | None"
    assert async_.parameters["inner"].annotation == "httpx.AsyncBaseTransport | None"
    assert [p for p in sync.parameters if p != "inner"] == [p for p in async_.parameters if p != "inner"]
    assert sync.parameters["max_hosts"].default == async_.parameters["max_hosts"].default == 1024

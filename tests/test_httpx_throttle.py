"""Cloud throttle signals: the Retry-After family, and pacing from rate-limit headers (issue 19.4)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilient import Pipeline, RateLimitedError, deadline
from resilient.httpx import (
    MAX_RESET,
    RETRY_AFTER_HEADERS,
    AsyncResilientTransport,
    HeaderPacing,
    RateLimitHeaders,
    ResilientTransport,
    http_retry,
    parse_rate_limit_headers,
    retry_after_hint,
)
from resilient.testing import FakeClock, recording

# -- the Retry-After family ---------------------------------------------------------


def hint(*headers: tuple[str, str]) -> float | None:
    return retry_after_hint(httpx.Response(429, headers=list(headers)))


def test_the_millisecond_headers_are_read() -> None:
    assert hint(("retry-after-ms", "1500")) == 1.5
    assert hint(("x-ms-retry-after-ms", "250")) == 0.25
    assert hint(("grpc-retry-pushback-ms", "100")) == 0.1
    assert hint(("Retry-After-Ms", "2.5")) == 0.0025


def test_retry_after_comes_first_then_the_millisecond_headers_in_order() -> None:
    assert RETRY_AFTER_HEADERS == ("retry-after", "retry-after-ms", "x-ms-retry-after-ms", "grpc-retry-pushback-ms")
    every = [("grpc-retry-pushback-ms", "4000"), ("x-ms-retry-after-ms", "3000"), ("retry-after-ms", "2000")]
    assert hint(("retry-after", "1"), *every) == 1.0
    assert hint(*every) == 2.0
    assert hint(*every[:2]) == 3.0
    assert hint(every[0]) == 4.0


@pytest.mark.parametrize("bad", ["-1", "soon", "1e3", "nan", "inf", "", " ", "0x10", "9" * 65, "1,5"])
def test_a_bad_header_is_skipped_and_the_next_one_read(bad: str) -> None:
    assert hint(("retry-after", bad), ("retry-after-ms", "700")) == 0.7
    assert hint(("retry-after-ms", bad), ("x-ms-retry-after-ms", "800")) == 0.8
    assert hint(("x-ms-retry-after-ms", bad)) is None


def test_a_repeated_header_is_not_trusted() -> None:
    # Two values, even equal ones: which is the server's? Neither; the next header counts.
    assert hint(("retry-after", "5"), ("retry-after", "5"), ("retry-after-ms", "300")) == 0.3
    assert hint(("retry-after-ms", "1"), ("retry-after-ms", "2")) is None


async def test_a_huge_millisecond_header_is_clamped_by_the_retry(auto_clock: FakeClock) -> None:
    answers = iter([httpx.Response(429, headers={"x-ms-retry-after-ms": "9" * 60}), httpx.Response(200)])
    transport = AsyncResilientTransport(
        Pipeline(http_retry(2, max_delay=2.0, clock=auto_clock)),
        inner=httpx.MockTransport(lambda request: next(answers)),
    )
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get("http://upstream/")).status_code == 200
    assert auto_clock.sleeps == [2.0]


_NAMES = st.sampled_from([*RETRY_AFTER_HEADERS, "RETRY-AFTER", "Retry-After-Ms", "x-other"])
_VALUES = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["Wed, 21 Oct 2015 07:28:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", "", "  7  ", "1.", ".5"]),
    st.text(max_size=80).map(lambda s: s.encode("utf-8", "replace")).map(lambda b: b.decode("latin-1")),
)
_HEADERS = st.lists(st.tuples(_NAMES, _VALUES), max_size=6)


def _raw(pairs: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    # Raw bytes, as a server may send them (no encoding checks on the way in).
    return [(k.encode(), v.encode("latin-1").replace(b"\r", b"").replace(b"\n", b"")) for k, v in pairs]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=_HEADERS)
def test_any_throttle_headers_give_a_sane_hint_or_none(pairs: list[tuple[str, str]]) -> None:
    headers = _raw(pairs)
    delay = retry_after_hint(httpx.Response(429, headers=headers))
    assert delay is None or (math.isfinite(delay) and delay >= 0.0)
    # A lone, plain delay-seconds Retry-After is taken as it is.
    values = [v for k, v in headers if k.lower() == b"retry-after"]
    if len(values) == 1 and values[0].strip().isdigit() and len(values[0]) <= 64:
        assert delay == float(values[0])
    # And the retry never waits more than its max_delay on it.
    clock = FakeClock(auto_advance=True)
    answers = iter([httpx.Response(429, headers=headers), httpx.Response(200)])
    with (
        ResilientTransport(
            Pipeline(http_retry(1, max_delay=3.0, clock=clock)), inner=httpx.MockTransport(lambda r: next(answers))
        ) as transport,
        httpx.Client(transport=transport) as client,
    ):
        assert client.get("http://upstream/").status_code == 200
    assert len(clock.sleeps) <= 1  # a zero delay does not sleep
    assert all(0.0 <= slept <= 3.0 for slept in clock.sleeps)


# -- parsing rate-limit headers -----------------------------------------------------


def parsed(*headers: tuple[str, str], now: float | None = None) -> RateLimitHeaders | None:
    return parse_rate_limit_headers(httpx.Headers(list(headers)), now=now)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("RateLimit", "limit=100, remaining=50, reset=5")], (50, 5.0, 100)),
        ([("RateLimit", '"default";r=50;t=30'), ("RateLimit-Policy", '"default";q=100;w=60')], (50, 30.0, 100)),
        # Several policies: the tightest one.
        ([("RateLimit", '"burst";r=9;t=1, "day";r=2;t=3600')], (2, 3600.0, None)),
        ([("RateLimit", "remaining=0, reset=2"), ("RateLimit-Policy", "10;w=2")], (0, 2.0, 10)),
        (
            [("RateLimit-Limit", "100, 100;w=60"), ("RateLimit-Remaining", "7"), ("RateLimit-Reset", "12")],
            (7, 12.0, 100),
        ),
        ([("x-ratelimit-limit", "60"), ("x-ratelimit-remaining", "3"), ("x-ratelimit-reset", "1.5")], (3, 1.5, 60)),
        # GitHub: the reset is a Unix time.
        ([("x-ratelimit-remaining", "4"), ("x-ratelimit-reset", "1700000042")], (4, 42.0, None)),
        ([("x-ratelimit-remaining", "4"), ("x-ratelimit-reset", "1699999000")], (4, 0.0, None)),
        # A huge reset is clamped.
        ([("RateLimit", "remaining=1, reset=99999999")], (1, MAX_RESET, None)),
        # A broken IETF header: the older ones are read instead.
        (
            [("RateLimit", "remaining=-1, reset=5"), ("x-ratelimit-remaining", "1"), ("x-ratelimit-reset", "2")],
            (1, 2.0, None),
        ),
    ],
)
def test_rate_limit_headers(headers: list[tuple[str, str]], expected: tuple[Any, ...]) -> None:
    assert parsed(*headers, now=1_700_000_000.0) == RateLimitHeaders(*expected)


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("x-ratelimit-remaining", "5")],  # no reset: nothing to space over
        [("x-ratelimit-reset", "5")],
        [("x-ratelimit-remaining", "-5"), ("x-ratelimit-reset", "5")],
        [("x-ratelimit-remaining", "5"), ("x-ratelimit-reset", "-5")],
        [("x-ratelimit-remaining", "five"), ("x-ratelimit-reset", "5")],
        [("x-ratelimit-remaining", "9" * 20), ("x-ratelimit-reset", "5")],
        [("x-ratelimit-remaining", "5"), ("x-ratelimit-reset", "nan")],
        [("x-ratelimit-remaining", "5"), ("x-ratelimit-remaining", "5"), ("x-ratelimit-reset", "5")],
        [("RateLimit", "limit=1, remaining=1"), ("RateLimit", "reset=1")],
        [("RateLimit", ";;;,,,=;r=;t=")],
    ],
)
def test_rate_limit_headers_that_say_nothing_usable(headers: list[tuple[str, str]]) -> None:
    assert parsed(*headers) is None


_RL_NAMES = st.sampled_from(
    [
        "RateLimit",
        "RateLimit-Policy",
        "RateLimit-Limit",
        "RateLimit-Remaining",
        "RateLimit-Reset",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ]
)
_RL_VALUES = st.one_of(
    _VALUES,
    st.builds(lambda a, b, c: f"limit={a}, remaining={b}, reset={c}", _VALUES, _VALUES, _VALUES),
    st.builds(lambda a, b: f'"p";r={a};t={b}', _VALUES, _VALUES),
)


@settings(max_examples=300, deadline=None)
@given(pairs=st.lists(st.tuples(_RL_NAMES, _RL_VALUES), max_size=6))
def test_any_rate_limit_headers_parse_to_sane_values_or_none(pairs: list[tuple[str, str]]) -> None:
    info = parse_rate_limit_headers(httpx.Response(200, headers=_raw(pairs)).headers)
    if info is not None:
        assert isinstance(info.remaining, int)
        assert 0 <= info.remaining <= 10**12
        assert 0.0 <= info.reset <= MAX_RESET
        assert info.limit is None or 0 <= info.limit <= 10**12


# -- pacing, against a model of a quota ---------------------------------------------------


class Quota:
    """An upstream allowing ``limit`` requests per fixed window of ``window`` seconds; 429 past it."""

    def __init__(self, clock: FakeClock, limit: int, window: float, style: str = "ietf") -> None:
        self.clock, self.limit, self.window, self.style = clock, limit, window, style
        self.window_end = -math.inf
        self.used = 0
        self.sent: list[float] = []
        self.over = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        now = self.clock.now()
        if now >= self.window_end:
            self.window_end, self.used = now + self.window, 0
        self.sent.append(now)
        reset = self.window_end - now
        if self.used >= self.limit:
            self.over += 1
            return httpx.Response(429, headers={"retry-after": f"{reset:.3f}"})
        self.used += 1
        left = self.limit - self.used
        if self.style == "ietf":
            headers = {"RateLimit": f"limit={self.limit}, remaining={left}, reset={reset:g}"}
        else:
            headers = {"x-ratelimit-limit": str(self.limit), "x-ratelimit-remaining": str(left)}
            headers["x-ratelimit-reset"] = f"{reset:g}"
        return httpx.Response(200, headers=headers)


def client_for(quota: Callable[[httpx.Request], httpx.Response], *policies: Any) -> httpx.AsyncClient:
    transport = AsyncResilientTransport(lambda host: Pipeline(*policies), inner=httpx.MockTransport(quota))
    return httpx.AsyncClient(transport=transport)


@pytest.mark.parametrize("style", ["ietf", "x-ratelimit"])
async def test_requests_are_spaced_over_the_window_when_little_is_left(auto_clock: FakeClock, style: str) -> None:
    quota = Quota(auto_clock, limit=100, window=10.0, style=style)
    pacing = HeaderPacing(clock=auto_clock)
    async with client_for(quota, pacing) as client:
        for _ in range(101):
            assert (await client.get("http://api/")).status_code == 200
    assert quota.over == 0
    # 90 at once while more than 10 % was left, then the last 10 one second apart, then the next window.
    assert quota.sent[:90] == [0.0] * 90
    assert quota.sent[90:] == pytest.approx([float(t) for t in range(11)])
    assert pacing.status()["delayed"] == 10


async def test_without_pacing_the_model_answers_429(auto_clock: FakeClock) -> None:
    quota = Quota(auto_clock, limit=100, window=10.0)
    async with client_for(quota) as client:
        statuses = [(await client.get("http://api/")).status_code for _ in range(101)]
    assert statuses[-1] == 429
    assert quota.over == 1


async def test_a_host_that_sends_no_headers_is_never_delayed(auto_clock: FakeClock) -> None:
    pacing = HeaderPacing(clock=auto_clock, pace_below=1.0)
    async with client_for(lambda r: httpx.Response(200), pacing) as client:
        for _ in range(5):
            await client.get("http://api/")
    assert auto_clock.sleeps == []


async def test_hosts_are_paced_apart(auto_clock: FakeClock) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        left = "0" if request.url.host == "spent" else "1000"
        return httpx.Response(200, headers={"RateLimit": f"limit=1000, remaining={left}, reset=5"})

    pacing = HeaderPacing(clock=auto_clock)
    transport = AsyncResilientTransport(Pipeline(pacing), inner=httpx.MockTransport(answer))  # one policy, all hosts
    async with httpx.AsyncClient(transport=transport) as client:
        await client.get("http://spent/")
        await client.get("http://fresh/")
        await client.get("http://fresh/")
        assert auto_clock.sleeps == []
        await client.get("http://spent/")
    assert auto_clock.sleeps == [5.0]
    assert pacing.status()["hosts"] == 2


async def test_a_wait_longer_than_max_wait_is_rejected_at_once(auto_clock: FakeClock) -> None:
    quota = Quota(auto_clock, limit=2, window=60.0)
    async with client_for(quota, HeaderPacing(clock=auto_clock, max_wait=10.0)) as client:
        await client.get("http://api/")
        await client.get("http://api/")
        with recording() as events, pytest.raises(RateLimitedError) as info:
            await client.get("http://api/")
    assert info.value.retry_after == pytest.approx(60.0)
    assert len(quota.sent) == 2
    assert auto_clock.sleeps == []
    [event] = events.of("rejected")
    assert event.extras["reason"] == "rate_limit_headers"


async def test_the_deadline_bounds_the_wait(auto_clock: FakeClock) -> None:
    quota = Quota(auto_clock, limit=1, window=5.0)
    async with client_for(quota, HeaderPacing(clock=auto_clock)) as client:
        await client.get("http://api/")
        with deadline(2.0, clock=auto_clock), pytest.raises(RateLimitedError):
            await client.get("http://api/")
        with deadline(6.0, clock=auto_clock):
            assert (await client.get("http://api/")).status_code == 200
    assert auto_clock.sleeps == [5.0]


async def test_reject_mode_never_waits(auto_clock: FakeClock) -> None:
    quota = Quota(auto_clock, limit=10, window=10.0)
    async with client_for(quota, HeaderPacing(clock=auto_clock, mode="reject", pace_below=0.5)) as client:
        for _ in range(6):  # the sixth finds 5 left, at most 50 %: paced, its slot is now, the next 2 s on
            await client.get("http://api/")
        with pytest.raises(RateLimitedError) as info:
            await client.get("http://api/")
    assert info.value.retry_after == pytest.approx(10.0 / 5)
    assert auto_clock.sleeps == []


async def test_shadow_mode_decides_the_same_and_never_delays(auto_clock: FakeClock) -> None:
    quota = Quota(auto_clock, limit=3, window=60.0)
    pacing = HeaderPacing(clock=auto_clock, enforce=False, max_wait=1.0)
    async with client_for(quota, pacing) as client:
        with recording() as events:
            statuses = [(await client.get("http://api/")).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert auto_clock.sleeps == []
    assert pacing.status()["would_reject"] == 1
    assert pacing.status()["rejected"] == 0
    assert len(events.of("would_reject")) == 1


async def test_a_429_with_retry_after_holds_the_host_back(auto_clock: FakeClock) -> None:
    answers = iter([httpx.Response(429, headers={"retry-after-ms": "3000"}), httpx.Response(200)])
    async with client_for(lambda r: next(answers), HeaderPacing(clock=auto_clock)) as client:
        assert (await client.get("http://api/")).status_code == 429
        assert (await client.get("http://api/")).status_code == 200
    assert auto_clock.sleeps == [3.0]


async def test_inside_the_retry_a_retry_after_is_not_waited_twice(auto_clock: FakeClock) -> None:
    answers = iter([httpx.Response(429, headers={"retry-after": "2"}), httpx.Response(200)])
    async with client_for(
        lambda r: next(answers), http_retry(2, clock=auto_clock), HeaderPacing(clock=auto_clock)
    ) as c:
        assert (await c.get("http://api/")).status_code == 200
    assert auto_clock.sleeps == [2.0]


async def test_a_waiter_cancelled_gives_its_place_back(clock: FakeClock) -> None:
    quota = Quota(clock, limit=100, window=10.0)
    pacing = HeaderPacing(clock=clock, pace_below=1.0)
    async with client_for(quota, pacing) as client:
        await client.get("http://api/")  # 99 left, 10 s: a slot every 10/99 s from now
        await client.get("http://api/")  # takes the slot at 0, the next is at 10/99
        waiter = asyncio.ensure_future(client.get("http://api/"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert clock.sleepers == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert clock.pending_timers == 0
    [window] = pacing._hosts.values()
    assert window.left == 98  # the cancelled request's place is back
    assert len(quota.sent) == 2


def test_the_sync_transport_is_paced_too() -> None:
    clock = FakeClock()
    quota = Quota(clock, limit=2, window=4.0)
    transport = ResilientTransport(Pipeline(HeaderPacing(clock=clock)), inner=httpx.MockTransport(quota))
    with httpx.Client(transport=transport) as client:
        assert [client.get("http://api/").status_code for _ in range(5)] == [200] * 5
    assert quota.over == 0
    assert clock.sleeps == [4.0, 4.0]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"pace_below": 1.5}, "pace_below"),
        ({"pace_below": -0.1}, "pace_below"),
        ({"mode": "drop"}, "mode"),
        ({"max_wait": -1}, "max_wait"),
        ({"max_hosts": 0}, "max_hosts"),
        ({"enforce": "no"}, "enforce"),
    ],
)
def test_bad_configuration_names_the_parameter(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises((TypeError, ValueError), match=param):
        HeaderPacing(**kwargs)


# -- against a real server ------------------------------------------------------------


class QuotaApp:
    """ASGI: ``limit`` requests per fixed window of ``window`` real seconds, with RateLimit headers; 429 past it."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.window_end = -math.inf
        self.used = 0
        self.served = 0
        self.over = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        now = time.monotonic()
        if now >= self.window_end:
            self.window_end, self.used = now + self.window, 0
        reset = self.window_end - now
        if self.used >= self.limit:
            self.over += 1
            status, headers = 429, [(b"retry-after", b"1")]
        else:
            self.used += 1
            self.served += 1
            status = 200
            value = f"limit={self.limit}, remaining={self.limit - self.used}, reset={reset:.3f}"
            headers = [(b"ratelimit", value.encode()), (b"ratelimit-policy", f"{self.limit};w={self.window}".encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok" if status == 200 else b"slow down"})


async def test_a_real_server_never_has_to_say_429() -> None:
    from tests.httpx_server import running_server

    app = QuotaApp(limit=3, window=0.5)
    with running_server(app) as server:
        pacing = HeaderPacing(name="quota")
        transport = AsyncResilientTransport(lambda host: Pipeline(http_retry(0), pacing))
        async with httpx.AsyncClient(transport=transport) as client:
            statuses = [(await client.get(server.url("/"))).status_code for _ in range(9)]
    assert statuses == [200] * 9
    assert app.over == 0
    assert app.served == 9
    assert pacing.status()["delayed"] >= 1  # it waited for a window to reset


async def test_the_same_real_server_does_say_429_without_pacing() -> None:
    from tests.httpx_server import running_server

    app = QuotaApp(limit=3, window=60.0)
    with running_server(app) as server:
        async with httpx.AsyncClient(transport=AsyncResilientTransport(Pipeline(http_retry(0)))) as client:
            statuses = [(await client.get(server.url("/"))).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


async def test_at_most_max_hosts_windows_are_kept(auto_clock: FakeClock) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"RateLimit": "limit=10, remaining=0, reset=5"})

    pacing = HeaderPacing(clock=auto_clock, max_hosts=2)
    transport = AsyncResilientTransport(Pipeline(pacing), inner=httpx.MockTransport(answer))
    async with httpx.AsyncClient(transport=transport) as client:
        for host in ("a", "b", "c"):
            await client.get(f"http://{host}/")
        assert pacing.status()["hosts"] == 2
        await client.get("http://a/")  # forgotten, oldest first: not held back
        assert auto_clock.sleeps == []
        await client.get("http://c/")
    assert auto_clock.sleeps == [5.0]

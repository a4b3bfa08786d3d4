"""Unit tests of the ASGI middleware: raw ASGI calls and httpx.ASGITransport."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
from typing import Any

import httpx
import pytest

from resilient.asgi import (
    ClientIP,
    DeadlinePropagation,
    LoadShedding,
    RateLimit,
    RequestTimeout,
    ResilienceMiddleware,
    parse_deadline,
    parse_forwarded,
    parse_x_forwarded_for,
    policy_snapshot,
    status_app,
)
from resilient.asgi._common import Message, Receive, Scope, Send, serve_lifespan
from resilient.concurrency import Bulkhead
from resilient.deadline import deadline, remaining
from resilient.policy import Policy
from resilient.ratelimit import KeyedRateLimiter
from resilient.testing import FakeClock
from tests.asgi_helpers import body_of, call, headers_of, http_scope, status_of


async def settle() -> None:
    """Let every task that can run, run (no time passes: time is a FakeClock's)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    """A trivial app that records nothing and answers 200."""
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


# -- ClientIP and forwarded headers ------------------------------------------


def test_client_ip_uses_the_peer_and_ignores_spoofed_xff_from_untrusted_peers() -> None:
    key = ClientIP(trusted_proxies=["10.0.0.0/8"])
    scope = http_scope(client=("203.0.113.9", 1234), headers=[("x-forwarded-for", "1.2.3.4")])
    assert key(scope) == "203.0.113.9"
    # Without trusted proxies at all, the header is never read.
    assert ClientIP()(scope) == "203.0.113.9"


def test_client_ip_walks_xff_right_to_left_from_a_trusted_peer() -> None:
    key = ClientIP(trusted_proxies=["10.0.0.0/8", "192.168.1.1"])
    # The client forged the left-most entry; our proxies appended the rest.
    scope = http_scope(
        client=("10.0.0.2", 1),
        headers=[("x-forwarded-for", "6.6.6.6, 198.51.100.7"), ("x-forwarded-for", "192.168.1.1")],
    )
    assert key(scope) == "198.51.100.7"
    # Every hop trusted: the left-most one is the best we know.
    scope = http_scope(client=("10.0.0.2", 1), headers=[("x-forwarded-for", "10.1.1.1, 10.2.2.2")])
    assert key(scope) == "10.1.1.1"
    # No header: the trusted peer itself.
    assert key(http_scope(client=("10.0.0.2", 1))) == "10.0.0.2"


@pytest.mark.parametrize(
    ("xff", "expected"),
    [
        ("garbage", "10.0.0.2"),
        ("1.2.3.4, not-an-ip", "10.0.0.2"),
        ("not-an-ip, 1.2.3.4", "1.2.3.4"),
        ("", "10.0.0.2"),
        (",,,", "10.0.0.2"),
        ("1.2.3.4:8080", "1.2.3.4"),
        ("[2001:db8::1]:443", "2001:db8::/64"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("999.1.1.1", "10.0.0.2"),
        ("1.2.3.4, 10.9.9.9", "1.2.3.4"),
        ("x" * 10_000, "10.0.0.2"),
        ("1.1.1.1," * 100 + "5.5.5.5", "5.5.5.5"),
    ],
)
def test_malformed_forwarded_for_headers_never_crash(xff: str, expected: str) -> None:
    key = ClientIP(trusted_proxies=["10.0.0.0/8"])
    assert key(http_scope(client=("10.0.0.2", 1), headers=[("x-forwarded-for", xff)])) == expected


def test_forwarded_header_rfc7239() -> None:
    key = ClientIP(trusted_proxies=["10.0.0.0/8"], header="forwarded", ipv6_prefix=128)
    value = 'for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8:cafe::17]:4711"'
    assert key(http_scope(client=("10.0.0.1", 1), headers=[("forwarded", value)])) == "2001:db8:cafe::17"
    assert parse_forwarded([value]) == ["192.0.2.60", '"[2001:db8:cafe::17]:4711"']
    # Obfuscated / unknown nodes stop the walk at the last good address.
    assert key(http_scope(client=("10.0.0.1", 1), headers=[("forwarded", "for=unknown")])) == "10.0.0.1"
    assert key(http_scope(client=("10.0.0.1", 1), headers=[("forwarded", 'for="_hidden", for=10.0.0.5')])) == (
        "10.0.0.5"
    )
    # Quoted commas and semicolons do not split elements; no for= is a hop we cannot read.
    assert parse_forwarded(['for="a,b";by=x, proto=https']) == ['"a,b"', ""]
    # With header="forwarded", X-Forwarded-For is not read (the client controls it).
    scope = http_scope(client=("10.0.0.1", 1), headers=[("x-forwarded-for", "1.2.3.4")])
    assert key(scope) == "10.0.0.1"


def test_forwarded_header_budget_is_spent_from_the_right() -> None:
    # Issue 14, item 1: the 8 KiB read of the forwarded headers keeps what our
    # proxies appended (the right) and cuts what the client wrote (the left).
    key = ClientIP(trusted_proxies=["10.0.0.0/8"])
    padding = "198.51.100.1, " * 600  # ~8.4 KiB
    # HAProxy style: the client's own lines first, the proxy's line last.
    for client_lines in ([padding + "6.6.6.6"], ["6.6.6.6"] * 2000, [padding[:8180] + "6.6.6.6"]):
        headers = [("x-forwarded-for", line) for line in client_lines] + [("x-forwarded-for", "203.0.113.9")]
        assert key(http_scope(client=("10.0.0.2", 1), headers=headers)) == "203.0.113.9"
    # nginx style: one merged line, the proxy's entry at its right end.
    merged = http_scope(client=("10.0.0.2", 1), headers=[("x-forwarded-for", padding + "6.6.6.6, 203.0.113.9")])
    assert key(merged) == "203.0.113.9"
    # Cut while still among trusted hops: the last trusted proxy, never the
    # piece the cut leaves (here "23.4.5.6" of "123.4.5.6").
    value = "123.4.5.6," + " " * 8175 + "10.0.0.7"
    assert len(value) == 8192 + 1
    assert key(http_scope(client=("10.0.0.2", 1), headers=[("x-forwarded-for", value)])) == "10.0.0.7"
    # Forwarded, both styles, and a client-written unbalanced quote or a cut inside a quoted string.
    fwd = ClientIP(trusted_proxies=["10.0.0.0/8"], header="forwarded")
    client_parts = [
        "for=198.51.100.1, " * 500 + "for=6.6.6.6",
        'for="' + "x" * 9000,
        'for="[2001:db8::1]";by="' + "a,b;" * 2500 + '"',
        'for="a\\"b, for=6.6.6.6',
    ]
    for part in client_parts:
        appended = [("forwarded", part), ("forwarded", "for=203.0.113.9;proto=https")]
        assert fwd(http_scope(client=("10.0.0.2", 1), headers=appended)) == "203.0.113.9", part[:40]
        merged_fwd = [("forwarded", part + ", for=203.0.113.9;proto=https")]
        assert fwd(http_scope(client=("10.0.0.2", 1), headers=merged_fwd)) == "203.0.113.9", part[:40]
    # Quoted nodes and escaped quotes on the right are still read.
    quoted = [("forwarded", 'for="_x\\"y", for="[2001:db8:cafe::17]:4711";by="p\\"q"')]
    assert fwd(http_scope(client=("10.0.0.2", 1), headers=quoted)) == "2001:db8:cafe::/64"


def test_xff_parsing_helper() -> None:
    assert parse_x_forwarded_for(["a, b", "c"]) == ["a", "b", "c"]


def test_missing_or_odd_client_in_scope_gets_the_fallback_key() -> None:
    key = ClientIP(trusted_proxies=["10.0.0.0/8"])
    assert key(http_scope(client=None)) == "unknown"
    scope = http_scope()
    del scope["client"]
    assert key(scope) == "unknown"
    assert key(http_scope(client=("", 0))) == "unknown"
    assert key(http_scope(client=("testclient", 50000))) == "testclient"
    assert ClientIP(fallback="anon")(http_scope(client=None)) == "anon"


def test_ipv6_clients_are_grouped_by_prefix() -> None:
    assert ClientIP()(http_scope(client=("2001:db8::1", 1))) == "2001:db8::/64"
    assert ClientIP()(http_scope(client=("2001:db8::ffff:1", 1))) == "2001:db8::/64"
    assert ClientIP(ipv6_prefix=128)(http_scope(client=("2001:db8::1", 1))) == "2001:db8::1"
    assert ClientIP(ipv6_prefix=48)(http_scope(client=("2001:db8:1:2::1", 1))) == "2001:db8:1::/48"


def test_client_ip_configuration_errors() -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        ClientIP(trusted_proxies=["not-a-network"])
    with pytest.raises(TypeError, match="trusted_proxies"):
        ClientIP(trusted_proxies=[42])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="header"):
        ClientIP(header="x-real-ip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ipv6_prefix"):
        ClientIP(ipv6_prefix=0)
    key = ClientIP(trusted_proxies=["10.0.0.1", ipaddress.ip_network("fd00::/8"), ipaddress.ip_address("::1")])
    assert len(key.trusted_proxies) == 3
    assert "10.0.0.1/32" in repr(key)
    assert ClientIP(trusted_proxies="10.0.0.0/8").trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),)


# -- Deadline -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("2.5", 2.5),
        (" 3 ", 3.0),
        ("2500m", 2.5),
        ("1S", 1.0),
        ("2M", 120.0),
        ("1H", 3600.0),
        ("500000u", 0.5),
        ("0", 0.0),
        ("-1", -1.0),
        ("nan", None),
        ("inf", None),
        ("1e3", None),
        ("1_000", None),
        ("", None),
        ("soon", None),
        ("1.5.5", None),
        ("2 s", None),
        ("9" * 50, None),
        ("٣", None),
    ],
)
def test_parse_deadline(raw: str, seconds: float | None) -> None:
    got = parse_deadline(raw)
    assert got == pytest.approx(seconds) if seconds is not None else got is None
    assert parse_deadline(raw.encode()) == got if raw.isascii() else parse_deadline(raw) is None


async def test_deadline_middleware_sets_the_deadline_and_ignores_garbage() -> None:
    seen: list[float | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(remaining())
        await ok_app(scope, receive, send)

    clock = FakeClock(100.0)
    mw = DeadlinePropagation(app, max=5, clock=clock)
    for value in ("2", "garbage", "1e999", "50", "\xff"):
        sent = await call(mw, http_scope(headers=[("x-resilient-deadline", value)] if value != "\xff" else []))
        assert status_of(sent) == 200
    assert seen == [2.0, None, None, 5.0, None]
    assert remaining() is None  # reset after the call


async def test_deadline_keeps_an_earlier_deadline() -> None:
    seen: list[float | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(remaining())
        await ok_app(scope, receive, send)

    clock = FakeClock()
    with deadline(1.0, clock=clock):
        await call(DeadlinePropagation(app, clock=clock), http_scope(headers=[("x-resilient-deadline", "10")]))
    assert seen == [1.0]


async def test_expired_deadline_is_refused_before_any_work() -> None:
    calls = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal calls
        calls += 1
        await ok_app(scope, receive, send)

    mw = DeadlinePropagation(app, header="X-Deadline")
    for value in ("0", "-3", "0m"):
        sent = await call(mw, http_scope(headers=[("x-deadline", value)]))
        assert status_of(sent) == 504
        assert json.loads(body_of(sent)) == {"error": "deadline_exceeded"}
        assert headers_of(sent)["content-type"] == "application/json"
    assert calls == 0


def test_deadline_configuration_errors() -> None:
    with pytest.raises(ValueError, match="header"):
        DeadlinePropagation(ok_app, header="bad header")
    with pytest.raises(ValueError, match="max"):
        DeadlinePropagation(ok_app, max=0)
    with pytest.raises(TypeError, match="app"):
        DeadlinePropagation(None)  # type: ignore[arg-type]


# -- RateLimit ----------------------------------------------------------------


async def test_rate_limit_headers_on_refusal_and_success() -> None:
    clock = FakeClock()
    mw = RateLimit(ok_app, rate=2, per=1, burst=4, headers_on_success=True, clock=clock, name=None)
    transport = httpx.ASGITransport(app=mw)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        got = [await client.get("/") for _ in range(5)]
        clock.advance(0.5)  # one token back
        again = await client.get("/")
    assert [r.status_code for r in got] == [200, 200, 200, 200, 429]
    assert got[0].headers["ratelimit-policy"] == '"default";q=4;w=2'
    assert got[0].headers["ratelimit"] == '"default";r=3;t=1'
    assert got[0].text == "ok"
    assert got[0].headers["content-type"] == "text/plain"
    refused = got[4]
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["ratelimit"] == '"default";r=0;t=2'
    assert refused.json() == {"error": "rate_limited", "retry_after": 1}
    assert again.status_code == 200


async def test_rate_limit_key_none_and_exempt_paths_and_custom_key() -> None:
    mw = RateLimit(ok_app, rate=1, per=60, key=lambda scope: None if scope["path"] == "/free" else "k")
    assert [status_of(await call(mw, http_scope("/free"))) for _ in range(3)] == [200, 200, 200]
    assert [status_of(await call(mw, http_scope("/x"))) for _ in range(2)] == [200, 429]
    assert status_of(await call(mw, http_scope("/healthz"))) == 200
    mw2 = RateLimit(ok_app, rate=1, per=60, exempt=lambda scope: scope["method"] == "OPTIONS")
    assert [status_of(await call(mw2, http_scope(method="OPTIONS"))) for _ in range(3)] == [200] * 3


async def test_rate_limit_missing_client_uses_the_fallback_key() -> None:
    mw = RateLimit(ok_app, rate=1, per=60)
    assert status_of(await call(mw, http_scope(client=None))) == 200
    assert status_of(await call(mw, http_scope(client=None))) == 429
    assert status_of(await call(mw, http_scope(client=("192.0.2.1", 1)))) == 200


async def test_spoofed_xff_from_untrusted_peer_shares_the_peer_bucket() -> None:
    mw = RateLimit(ok_app, rate=1, per=60, trusted_proxies=["10.0.0.0/8"])
    spoofed = [
        status_of(await call(mw, http_scope(client=("198.51.100.1", 1), headers=[("x-forwarded-for", f"1.1.1.{i}")])))
        for i in range(3)
    ]
    assert spoofed == [200, 429, 429]
    proxied = [
        status_of(await call(mw, http_scope(client=("10.0.0.1", 1), headers=[("x-forwarded-for", f"1.1.1.{i}")])))
        for i in range(3)
    ]
    assert proxied == [200, 200, 200]


async def test_100k_distinct_clients_stay_bounded() -> None:
    mw = RateLimit(ok_app, rate=1, per=60, max_keys=1000)
    limiter = mw.limiter
    assert isinstance(limiter, KeyedRateLimiter)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            sent.append(message)

    scope = http_scope()
    for i in range(100_000):
        scope["client"] = (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1)
        await mw(scope, receive, send)
    assert limiter.keys <= 1000
    assert len(sent) == 100_000
    assert all(m["status"] == 200 for m in sent)  # each new client has a full bucket
    assert limiter.status()["keys"] <= 1000


async def test_rate_limited_websocket_handshake() -> None:
    mw = RateLimit(ok_app, rate=1, per=60, websockets=True)

    async def ws_app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})

    mw.app = ws_app
    scope = {"type": "websocket", "path": "/ws", "headers": [], "client": ("1.2.3.4", 1)}
    connect = [{"type": "websocket.connect"}]
    assert (await call(mw, dict(scope), list(connect)))[0]["type"] == "websocket.accept"
    refused = await call(mw, dict(scope), list(connect))
    assert refused == [{"type": "websocket.close", "code": 1008, "reason": "rate limited"}]
    denial = await call(mw, {**scope, "extensions": {"websocket.http.response": {}}}, list(connect))
    assert [m["type"] for m in denial] == ["websocket.http.response.start", "websocket.http.response.body"]
    assert denial[0]["status"] == 429
    # Without websockets=True they pass straight through.
    plain = RateLimit(ws_app, rate=1, per=60)
    for _ in range(3):
        assert (await call(plain, dict(scope), list(connect)))[0]["type"] == "websocket.accept"


def test_rate_limit_configuration_errors() -> None:
    with pytest.raises(ValueError, match="rate"):
        RateLimit(ok_app, rate=0)
    with pytest.raises(TypeError, match="rate"):
        RateLimit(ok_app, rate="10")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="per"):
        RateLimit(ok_app, rate=1, per=float("nan"))
    with pytest.raises(ValueError, match="burst"):
        RateLimit(ok_app, rate=1, burst=0)
    with pytest.raises(ValueError, match="max_keys"):
        RateLimit(ok_app, rate=1, max_keys=0)
    with pytest.raises(TypeError, match="key"):
        RateLimit(ok_app, rate=1, key="ip")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="trusted_proxies"):
        RateLimit(ok_app, rate=1, key=lambda s: "k", trusted_proxies=["10.0.0.0/8"])
    with pytest.raises(ValueError, match="policy_name"):
        RateLimit(ok_app, rate=1, policy_name="")
    with pytest.raises(TypeError, match="exempt_paths"):
        RateLimit(ok_app, rate=1, exempt_paths="/healthz")
    with pytest.raises(ValueError, match="exempt_paths"):
        RateLimit(ok_app, rate=1, exempt_paths=["healthz"])
    with pytest.raises(TypeError, match="exempt"):
        RateLimit(ok_app, rate=1, exempt=True)  # type: ignore[arg-type]


def test_policy_header_window_is_the_refill_time() -> None:
    assert RateLimit(ok_app, rate=10, per=1)._policy_header(10) == b'"default";q=10;w=1'
    assert RateLimit(ok_app, rate=100, per=60, policy_name='per "minute"')._policy_header(100) == (
        b'"per \\"minute\\"";q=100;w=60'
    )
    # 5 tokens refill in 5/3 s, not a whole window: the rate itself, 3 per second.
    assert RateLimit(ok_app, rate=3, per=1)._policy_header(5) == b'"default";q=3;w=1'


@pytest.mark.parametrize(
    ("rate", "per", "burst"),
    [(20, 1, 30), (3, 1, 5), (10, 1, 1), (5, 60, 7), (0.3, 1, 2), (7, 3600, 10), (20, 1, 40), (2.5, 1, None)],
)
async def test_rate_limit_policy_never_advertises_less_than_is_enforced(
    rate: float, per: float, burst: int | None
) -> None:
    # Issue 14, item 27: rate=20, burst=30 used to send q=30;w=2 (15/s) while
    # 20/s was enforced. A client pacing itself by q/w must get its whole quota.
    clock = FakeClock()
    mw = RateLimit(ok_app, rate=rate, per=per, burst=burst, headers_on_success=True, clock=clock, name=None)
    first = await call(mw, http_scope())
    policy = dict(p.split("=") for p in headers_of(first)["ratelimit-policy"].split(";")[1:])
    q, w = int(policy["q"]), int(policy["w"])
    assert q >= 1
    assert w >= 1
    assert q / w == pytest.approx(rate / per)
    # Evenly paced at q per w seconds, from the second window on (the first
    # request spent a token), for five windows: never refused.
    clock.advance(w)
    codes = []
    for _ in range(5 * q):
        clock.advance(w / q)
        codes.append(status_of(await call(mw, http_scope())))
    assert codes == [200] * (5 * q)


# -- LoadShedding -------------------------------------------------------------


def gate_app(gate: asyncio.Event, seen: list[bytes] | None = None) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if seen is not None:
            seen.append(body)
        await gate.wait()
        await ok_app(scope, receive, send)

    return app


async def test_shedding_rejects_with_503_before_the_app_sees_it() -> None:
    gate = asyncio.Event()
    seen: list[bytes] = []
    mw = LoadShedding(gate_app(gate, seen), max_concurrent=1, retry_after=2.5)
    first = asyncio.create_task(call(mw, http_scope()))
    await settle()
    sent = await call(mw, http_scope())
    assert status_of(sent) == 503
    assert headers_of(sent)["retry-after"] == "3"
    assert json.loads(body_of(sent)) == {"error": "overloaded", "retry_after": 3}
    gate.set()
    assert status_of(await first) == 200
    assert len(seen) >= 1


async def test_exempt_paths_and_predicate_bypass_shedding() -> None:
    gate = asyncio.Event()
    mw = LoadShedding(gate_app(gate), max_concurrent=1, exempt=lambda s: s["path"].startswith("/admin"))
    first = asyncio.create_task(call(mw, http_scope()))
    await settle()
    bypass = [asyncio.create_task(call(mw, http_scope(p))) for p in ("/healthz", "/admin/x")]
    await settle()
    gate.set()
    assert [status_of(await t) for t in [first, *bypass]] == [200, 200, 200]


async def test_disconnect_while_queued_releases_the_position() -> None:
    gate = asyncio.Event()
    mw = LoadShedding(gate_app(gate), max_concurrent=1, max_queued=1)
    bulkhead = mw.limiter
    assert isinstance(bulkhead, Bulkhead)
    first = asyncio.create_task(call(mw, http_scope()))
    await settle()

    gone = asyncio.Event()
    sent: list[Message] = []
    inbox: list[Message] = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Message:
        if inbox:
            return inbox.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    queued = asyncio.create_task(mw(http_scope(), receive, send))
    await settle()
    assert bulkhead.queued == 1
    gone.set()
    await asyncio.wait_for(queued, 1)  # returns, does not raise CancelledError
    assert not queued.cancelled()
    assert sent == []
    assert bulkhead.queued == 0
    gate.set()
    assert status_of(await first) == 200
    assert bulkhead.running == 0


async def test_body_read_while_queued_is_replayed_to_the_app() -> None:
    gate = asyncio.Event()
    seen: list[bytes] = []
    mw = LoadShedding(gate_app(gate, seen), max_concurrent=1, max_queued=1)
    first = asyncio.create_task(call(mw, http_scope()))
    await settle()
    chunks = [
        {"type": "http.request", "body": b"hello ", "more_body": True},
        {"type": "http.request", "body": b"world", "more_body": False},
    ]
    second = asyncio.create_task(call(mw, http_scope(method="POST"), chunks))
    await settle()
    gate.set()
    assert status_of(await first) == 200
    assert status_of(await second) == 200
    assert seen == [b"", b"hello world"]


async def test_outer_cancellation_while_queued_propagates_and_releases() -> None:
    gate = asyncio.Event()
    mw = LoadShedding(gate_app(gate), max_concurrent=1, max_queued=1)
    bulkhead = mw.limiter
    assert isinstance(bulkhead, Bulkhead)
    first = asyncio.create_task(call(mw, http_scope()))
    await settle()
    second = asyncio.create_task(call(mw, http_scope()))
    await settle()
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    assert bulkhead.queued == 0
    gate.set()
    await first
    assert bulkhead.running == 0


async def test_queue_timeout_gives_503() -> None:
    clock = FakeClock()
    gate = asyncio.Event()
    mw = LoadShedding(gate_app(gate), max_concurrent=1, max_queued=1, queue_timeout=0.05, clock=clock)
    first = asyncio.create_task(call(mw, http_scope()))
    await settle()
    queued = asyncio.create_task(call(mw, http_scope()))
    await settle()
    clock.advance(0.04)
    await settle()
    assert not queued.done()
    clock.advance(0.01)
    assert status_of(await queued) == 503
    gate.set()
    await first


def _queued_deadline_chain(app: Any, clock: FakeClock) -> Any:
    return DeadlinePropagation(LoadShedding(app, max_concurrent=1, max_queued=1, name=None, clock=clock), clock=clock)


def _queued_deadline_fused(app: Any, clock: FakeClock) -> Any:
    return ResilienceMiddleware(app, max_concurrent=1, max_queued=1, clock=clock)


@pytest.mark.parametrize("build_queued", [_queued_deadline_chain, _queued_deadline_fused], ids=["chain", "fused"])
async def test_caller_deadline_expiring_in_the_queue_is_a_504_not_a_503(build_queued: Any) -> None:
    # Issue 14, item 28: the request waited for a slot until its caller's
    # deadline passed; that is "deadline exceeded", not "overloaded".
    clock = FakeClock()
    gate = asyncio.Event()
    mw = build_queued(gate_app(gate), clock)
    first = asyncio.create_task(call(mw, http_scope()))
    await settle()
    queued = asyncio.create_task(call(mw, http_scope(headers=[("x-resilient-deadline", "2")])))
    await settle()
    clock.advance(2.5)
    sent = await asyncio.wait_for(queued, 5)
    assert status_of(sent) == 504
    assert json.loads(body_of(sent)) == {"error": "deadline_exceeded"}
    assert "retry-after" not in headers_of(sent)
    # A full queue is still "overloaded", deadline or not.
    waiting = asyncio.create_task(call(mw, http_scope(headers=[("x-resilient-deadline", "5")])))
    await settle()
    refused = await call(mw, http_scope(headers=[("x-resilient-deadline", "5")]))
    assert status_of(refused) == 503
    gate.set()
    assert status_of(await first) == 200
    assert status_of(await waiting) == 200


async def test_custom_limiter_sees_the_apps_exception() -> None:
    class Limiter:
        def __init__(self) -> None:
            self.exits: list[type[BaseException] | None] = []

        def acquire(self) -> Any:
            limiter = self

            class Slot:
                async def __aenter__(self) -> None:
                    return None

                async def __aexit__(self, et: Any, e: Any, tb: Any) -> None:
                    limiter.exits.append(et)

            return Slot()

    async def boom(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    limiter = Limiter()
    await call(LoadShedding(ok_app, limiter=limiter), http_scope())
    with pytest.raises(RuntimeError):
        await call(LoadShedding(boom, limiter=limiter), http_scope())
    assert limiter.exits == [None, RuntimeError]


def test_load_shedding_configuration_errors() -> None:
    with pytest.raises(TypeError, match="max_concurrent"):
        LoadShedding(ok_app)
    with pytest.raises(ValueError, match="max_concurrent"):
        LoadShedding(ok_app, max_concurrent=0)
    with pytest.raises(ValueError, match="max_queued"):
        LoadShedding(ok_app, max_concurrent=1, max_queued=-1)
    with pytest.raises(ValueError, match="queue_timeout"):
        LoadShedding(ok_app, max_concurrent=1, queue_timeout=0)
    with pytest.raises(ValueError, match="retry_after"):
        LoadShedding(ok_app, max_concurrent=1, retry_after=-1)
    with pytest.raises(TypeError, match="not both"):
        LoadShedding(ok_app, max_concurrent=1, limiter=Bulkhead(1))
    with pytest.raises(TypeError, match="limiter"):
        LoadShedding(ok_app, limiter=object())  # type: ignore[arg-type]


# -- RequestTimeout -----------------------------------------------------------


async def forever() -> None:
    """Wait until cancelled."""
    await asyncio.Event().wait()


async def test_timeout_cancels_the_handler_and_answers_504() -> None:
    clock = FakeClock()
    cleaned: list[bool] = []
    seen_deadline: list[float | None] = []

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        seen_deadline.append(remaining())
        try:
            await forever()
        finally:
            cleaned.append(True)

    cancellings: list[int] = []

    async def request() -> list[Message]:
        sent = await call(RequestTimeout(slow, seconds=0.05, clock=clock), http_scope())
        task = asyncio.current_task()
        assert task is not None
        cancellings.append(task.cancelling())
        return sent

    running = asyncio.create_task(request())
    await settle()
    clock.advance(0.049)
    await settle()
    assert not running.done()
    clock.advance(0.001)
    sent = await running
    assert status_of(sent) == 504
    assert json.loads(body_of(sent)) == {"error": "timeout", "timeout": 0.05}
    assert cleaned == [True]
    assert seen_deadline == [0.05]
    assert cancellings == [0]


async def test_timeout_never_sends_a_second_start_once_the_response_started() -> None:
    clock = FakeClock()
    later = asyncio.Event()

    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await later.wait()
        await send({"type": "http.response.body", "body": b"late but whole"})

    running = asyncio.create_task(call(RequestTimeout(streaming, seconds=0.02, clock=clock), http_scope()))
    await settle()
    clock.advance(0.1)  # past the timeout
    await settle()
    later.set()
    sent = await running
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert body_of(sent) == b"late but whole"


async def test_outer_cancellation_is_not_turned_into_504() -> None:
    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await forever()

    task = asyncio.create_task(call(RequestTimeout(slow, seconds=5, clock=FakeClock()), http_scope()))
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_app_swallowing_the_cancellation_still_gets_504() -> None:
    clock = FakeClock()

    async def stubborn(scope: Scope, receive: Receive, send: Send) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await forever()

    async def request() -> tuple[list[Message], int]:
        sent = await call(RequestTimeout(stubborn, seconds=0.02, clock=clock), http_scope())
        task = asyncio.current_task()
        assert task is not None
        return sent, task.cancelling()

    running = asyncio.create_task(request())
    await settle()
    clock.advance(0.02)
    sent, cancelling = await running
    assert status_of(sent) == 504
    assert cancelling == 0


async def test_fast_app_is_untouched_and_deadline_can_be_off() -> None:
    seen: list[float | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(remaining())
        await ok_app(scope, receive, send)

    sent = await call(RequestTimeout(app, seconds=1, set_deadline=False), http_scope())
    assert status_of(sent) == 200
    assert seen == [None]
    await asyncio.sleep(0)


@pytest.mark.parametrize("chain", [False, True], ids=["fused", "chain"])
async def test_the_handlers_deadline_follows_the_response(chain: bool) -> None:
    # Issue 14, item 3: the request timeout bounds the time to the response's
    # start, the caller's deadline the whole response, neither what runs after.
    clock = FakeClock()
    seen: list[float | None] = []
    later: list[asyncio.Task[float | None]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        async def after_the_response() -> float | None:
            while not gone.is_set():
                await asyncio.sleep(0)
            return remaining()

        gone = asyncio.Event()
        later.append(asyncio.create_task(after_the_response()))  # a copy of this context
        seen.append(remaining())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        seen.append(remaining())
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        seen.append(remaining())
        await send({"type": "http.response.body", "body": b"b"})
        seen.append(remaining())
        gone.set()

    if chain:
        mw: Any = DeadlinePropagation(RequestTimeout(app, seconds=5, clock=clock), clock=clock)
    else:
        mw = ResilienceMiddleware(app, timeout=5, clock=clock)
    scope = http_scope(headers=[("x-resilient-deadline", "20")])
    assert body_of(await call(mw, scope)) == b"ab"
    assert seen == [5.0, 20.0, 20.0, None]
    # No limit, seen from a copy of the context too: the deadlines were
    # lifted in place (once as a finite far-off expiry, now none at all).
    assert await later.pop() is None
    assert "resilient.response_deadline" not in scope  # a reused scope starts afresh
    seen.clear()
    assert body_of(await call(mw, http_scope())) == b"ab"
    assert seen == [5.0, None, None, None]
    await later.pop()
    assert remaining() is None


async def test_a_request_made_in_process_does_not_lift_the_outer_handlers_deadline() -> None:
    clock = FakeClock()
    seen: list[float | None] = []
    inner = RequestTimeout(ok_app, seconds=1, clock=clock)

    async def outer_app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(remaining())
        assert status_of(await call(inner, http_scope())) == 200  # it started and completed its response
        seen.append(remaining())
        await ok_app(scope, receive, send)

    assert status_of(await call(RequestTimeout(outer_app, seconds=5, clock=clock), http_scope())) == 200
    assert seen == [5.0, 5.0]


async def test_pathsend_completes_the_response() -> None:
    clock = FakeClock()
    seen: list[float | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        seen.append(remaining())
        await send({"type": "http.response.pathsend", "path": "/dev/null"})
        seen.append(remaining())

    await call(DeadlinePropagation(app, clock=clock), http_scope(headers=[("x-resilient-deadline", "3")]))
    assert seen == [3.0, None]


def test_request_timeout_configuration_errors() -> None:
    with pytest.raises(ValueError, match="seconds"):
        RequestTimeout(ok_app, seconds=0)
    with pytest.raises(TypeError, match="seconds"):
        RequestTimeout(ok_app, seconds=None)  # type: ignore[arg-type]


# -- app raising after the response started, lifespan, ResilienceMiddleware --


async def test_app_raising_after_starting_the_response_propagates_once() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("mid-stream")

    mw = ResilienceMiddleware(broken, max_concurrent=2, rate=100, timeout=1)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    with pytest.raises(RuntimeError, match="mid-stream"):
        await mw(http_scope(), receive, send)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    shedding = next(p for p in mw.parts if isinstance(p, LoadShedding))
    assert isinstance(shedding.limiter, Bulkhead)
    assert shedding.limiter.running == 0


async def test_lifespan_passes_through_every_part() -> None:
    mw = ResilienceMiddleware(ok_app, max_concurrent=1, max_queued=1, rate=1, timeout=0.01, status_path="/s")
    sent = await call(
        mw,
        {"type": "lifespan", "asgi": {"version": "3.0"}},
        [
            {"type": "lifespan.startup"},
            {"type": "lifespan.shutdown"},
        ],
    )
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_resilience_middleware_order_and_parts() -> None:
    mw = ResilienceMiddleware(ok_app, max_concurrent=1, rate=1, per=60, timeout=1)
    assert [type(p).__name__ for p in mw.parts] == [
        "DeadlinePropagation",
        "RateLimit",
        "LoadShedding",
        "RequestTimeout",
    ]
    assert "RateLimit" in repr(mw)
    bare = ResilienceMiddleware(ok_app, deadline_header=None)
    assert bare.parts == []
    assert status_of(await call(bare, http_scope())) == 200
    # An expired deadline is refused before the rate limiter spends a token.
    sent = await call(mw, http_scope(headers=[("x-resilient-deadline", "0")]))
    assert status_of(sent) == 504
    assert status_of(await call(mw, http_scope())) == 200
    assert status_of(await call(mw, http_scope())) == 429
    with pytest.raises(ValueError, match="status_path"):
        ResilienceMiddleware(ok_app, status_path="status")


# -- status -------------------------------------------------------------------


class _Broken(Policy):
    def status(self) -> dict[str, Any] | None:
        raise RuntimeError("no")


async def test_status_app_lists_live_policies_as_json() -> None:
    bulkhead = Bulkhead(3, name="status-test-bulkhead")
    broken = _Broken(name="status-test-broken")
    transport = httpx.ASGITransport(app=status_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.get("/")
        post = await client.post("/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    by_name = {p["name"]: p for p in r.json()["policies"]}
    assert by_name["status-test-bulkhead"]["status"]["max_concurrent"] == 3
    assert by_name["status-test-bulkhead"]["type"] == "bulkhead"
    assert by_name["status-test-broken"] == {
        "name": "status-test-broken",
        "type": "policy",
        "class": "_Broken",
        "status": None,
        "error": "RuntimeError",
    }
    assert post.status_code == 405
    assert post.headers["allow"] == "GET, HEAD"
    del bulkhead, broken


async def test_status_app_with_given_policies_and_callable() -> None:
    b = Bulkhead(1, name="only-me")
    assert policy_snapshot([b])["policies"][0]["name"] == "only-me"
    for app in (status_app([b]), status_app(lambda: [b])):
        sent = await call(app, http_scope())
        assert [p["name"] for p in json.loads(body_of(sent))["policies"]] == ["only-me"]
    with pytest.raises(TypeError, match="Policy"):
        status_app([object()])  # type: ignore[list-item]
    ws = await call(status_app(), {"type": "websocket", "path": "/"}, [{"type": "websocket.connect"}])
    assert ws == [{"type": "websocket.close", "code": 1008}]


async def test_status_path_on_the_combined_middleware() -> None:
    b = Bulkhead(1, name="combined-status")
    mw = ResilienceMiddleware(ok_app, max_concurrent=1, status_path="/_status", status_policies=[b])
    sent = await call(mw, http_scope("/_status"))
    assert json.loads(body_of(sent))["policies"][0]["name"] == "combined-status"
    assert body_of(await call(mw, http_scope("/other"))) == b"ok"


# -- ResilienceMiddleware behaves as the chain of parts composed by hand ------------


def _chain(app: Any, **kw: Any) -> Any:
    clock = kw.get("clock")
    return DeadlinePropagation(
        RateLimit(
            LoadShedding(
                RequestTimeout(app, seconds=kw["timeout"], clock=clock),
                max_concurrent=kw["max_concurrent"],
                max_queued=kw["max_queued"],
                name=None,
                clock=clock,
            ),
            rate=kw["rate"],
            per=kw["per"],
            headers_on_success=kw.get("headers_on_success", False),
            name=None,
            clock=clock,
        ),
        max=kw.get("max_deadline", 300),
        clock=clock,
    )


def _fused(app: Any, **kw: Any) -> Any:
    return ResilienceMiddleware(app, **kw)


@pytest.fixture(params=[_chain, _fused], ids=["chain", "fused"])
def build(request: pytest.FixtureRequest) -> Any:
    return request.param


async def test_every_part_in_order(build: Any) -> None:
    clock = FakeClock()
    gate = asyncio.Event()
    cleaned: list[str] = []
    seen: list[float | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(remaining())
        if scope["path"] == "/slow":
            try:
                await forever()
            finally:
                cleaned.append("slow")
        if scope["path"] == "/gate":
            await gate.wait()
        await ok_app(scope, receive, send)

    mw = build(app, max_concurrent=1, max_queued=1, rate=5, per=60, timeout=0.1, headers_on_success=True, clock=clock)
    # deadline refused first (no token spent)
    assert status_of(await call(mw, http_scope(headers=[("x-resilient-deadline", "-1")]))) == 504
    # timeout: 504, handler cancelled, deadline seen = the timeout
    slow = asyncio.create_task(call(mw, http_scope("/slow")))
    await settle()
    clock.advance(0.1)
    sent = await slow
    assert status_of(sent) == 504
    assert json.loads(body_of(sent)) == {"error": "timeout", "timeout": 0.1}
    assert cleaned == ["slow"]
    assert seen[-1] == pytest.approx(0.1)
    # the caller's nearer deadline wins over the timeout
    await call(mw, http_scope(headers=[("x-resilient-deadline", "0.05")]))
    assert seen[-1] == pytest.approx(0.05)
    # shedding: one running, one queued, the next refused
    first = asyncio.create_task(call(mw, http_scope("/gate")))
    await settle()
    second = asyncio.create_task(call(mw, http_scope("/gate")))
    await settle()
    third = await call(mw, http_scope("/gate"))
    assert status_of(third) == 503
    gate.set()
    ok = await first
    assert status_of(ok) == 200
    assert headers_of(ok)["ratelimit-policy"] == '"default";q=5;w=60'
    assert status_of(await second) == 200  # that was the 5th token
    # rate limit: the 6th request of the minute is refused
    refused = await call(mw, http_scope())
    assert status_of(refused) == 429
    assert headers_of(refused)["retry-after"] == "12"
    # exempt path skips both rate limit and shedding
    assert status_of(await call(mw, http_scope("/healthz"))) == 200


async def test_disconnect_while_queued_in_both_forms(build: Any) -> None:
    gate = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await gate.wait()
        await ok_app(scope, receive, send)

    mw = build(app, max_concurrent=1, max_queued=1, rate=100, per=1, timeout=5, clock=FakeClock())
    first = asyncio.create_task(call(mw, http_scope()))
    await settle()
    gone = asyncio.Event()
    inbox: list[Message] = [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        if inbox:
            return inbox.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    queued = asyncio.create_task(mw(http_scope(), receive, send))
    await settle()
    gone.set()
    await asyncio.wait_for(queued, 1)
    assert sent == []
    gate.set()
    assert status_of(await first) == 200
    assert status_of(await call(mw, http_scope())) == 200


async def test_timer_queue_stays_bounded_behind_a_slow_head() -> None:
    gate = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/head":
            await gate.wait()
        await ok_app(scope, receive, send)

    mw = RequestTimeout(app, seconds=30, clock=FakeClock())
    head = asyncio.create_task(call(mw, http_scope("/head")))
    await asyncio.sleep(0)
    for _ in range(5000):
        await call(mw, http_scope())
    timers = mw.timers()
    assert timers is not None
    assert timers.live == 1
    assert len(timers.entries) <= 2 * timers.live + 65
    gate.set()
    await head
    assert timers.live == 0

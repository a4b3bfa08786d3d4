"""The ASGI middleware against a real uvicorn server on 127.0.0.1, driven by httpx."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from resilient.asgi import ClientIP, DeadlinePropagation, LoadShedding, RateLimit, RequestTimeout, ResilienceMiddleware
from resilient.concurrency import Bulkhead
from resilient.testing import FakeClock
from tests.asgi_helpers import AfterStart, Probe, make_app, serve


async def test_overload_burst_is_shed_and_the_app_never_exceeds_the_limit() -> None:
    probe = Probe()
    mw = LoadShedding(make_app(probe), max_concurrent=3, max_queued=2)
    with serve(mw) as host:
        async with httpx.AsyncClient(base_url=f"http://{host}", timeout=10) as client:
            responses = await asyncio.gather(*(client.get("/work", params={"delay": "0.4"}) for _ in range(20)))
            health = await client.get("/healthz")
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}
    assert codes.count(503) >= 1
    assert codes.count(200) >= 3
    assert probe.max_in_flight <= 3
    assert probe.calls == codes.count(200)
    for r in responses:
        if r.status_code == 200:
            assert r.text == "ok"
        else:
            assert r.headers["retry-after"] == "1"
            assert r.headers["content-type"] == "application/json"
            assert r.json() == {"error": "overloaded", "retry_after": 1}
            assert int(r.headers["content-length"]) == len(r.content)
    assert health.status_code == 200  # exempt
    bulkhead = mw.limiter
    assert isinstance(bulkhead, Bulkhead)
    assert bulkhead.running == 0
    assert bulkhead.queued == 0
    assert bulkhead.rejected == codes.count(503)


async def test_client_disconnect_while_queued_gives_the_position_back() -> None:
    probe = Probe()
    mw = LoadShedding(make_app(probe), max_concurrent=1, max_queued=1)
    bulkhead = mw.limiter
    assert isinstance(bulkhead, Bulkhead)
    with serve(mw) as host:
        async with httpx.AsyncClient(base_url=f"http://{host}", timeout=10) as client:
            holder = asyncio.create_task(client.get("/hold"))
            while probe.in_flight < 1:
                await asyncio.sleep(0.01)
            # This one queues, then its client gives up (the connection closes).
            with pytest.raises(httpx.ReadTimeout):
                await client.get("/work", timeout=0.5)
            for _ in range(500):
                if bulkhead.queued == 0:
                    break
                await asyncio.sleep(0.01)
            assert bulkhead.queued == 0
            # The queue has room again: a new request waits instead of being shed.
            waiter = asyncio.create_task(client.get("/work"))
            while bulkhead.queued < 1:
                await asyncio.sleep(0.01)
            probe.release.set()
            assert (await holder).status_code == 200
            assert (await waiter).status_code == 200
    assert probe.calls == 2  # the abandoned request never reached the app
    assert bulkhead.running == 0


async def test_rate_limit_burst_gets_429_with_ietf_headers() -> None:
    probe = Probe()
    mw = RateLimit(make_app(probe), rate=5, per=60, headers_on_success=True)
    with serve(mw) as host:
        async with httpx.AsyncClient(base_url=f"http://{host}", timeout=10) as client:
            responses = [await client.get("/work") for _ in range(8)]
    codes = [r.status_code for r in responses]
    assert codes == [200] * 5 + [429] * 3
    first = responses[0]
    assert first.headers["ratelimit-policy"] == '"default";q=5;w=60'
    assert first.headers["ratelimit"].startswith('"default";r=4;t=')
    refused = responses[-1]
    assert refused.headers["ratelimit-policy"] == '"default";q=5;w=60'
    assert refused.headers["ratelimit"] == '"default";r=0;t=60'
    assert refused.headers["retry-after"] == "12"  # one token every 12 s
    assert refused.json() == {"error": "rate_limited", "retry_after": 12}
    assert refused.headers["content-type"] == "application/json"
    assert probe.calls == 5


async def test_request_timeout_answers_504_and_cancels_the_handler() -> None:
    probe = Probe()
    mw = RequestTimeout(make_app(probe), seconds=0.3)
    with serve(mw) as host:
        async with httpx.AsyncClient(base_url=f"http://{host}", timeout=10) as client:
            start = time.monotonic()
            r = await client.get("/slow")
            elapsed = time.monotonic() - start
            after = await client.get("/work")
    assert r.status_code == 504
    assert r.json() == {"error": "timeout", "timeout": 0.3}
    assert elapsed < 10
    assert probe.slow_started.is_set()
    assert probe.cleaned_up.wait(5), "the handler's finally block did not run"
    assert after.status_code == 200  # the connection and server are fine


async def test_deadline_header_reaches_the_handler() -> None:
    mw = ResilienceMiddleware(make_app(Probe()), max_deadline=10)
    with serve(mw) as host:
        async with httpx.AsyncClient(base_url=f"http://{host}", timeout=10) as client:
            given = await client.get("/deadline", headers={"x-resilient-deadline": "2.5"})
            clamped = await client.get("/deadline", headers={"x-resilient-deadline": "9999"})
            garbage = await client.get("/deadline", headers={"x-resilient-deadline": "soon"})
            none = await client.get("/deadline")
            expired = await client.get("/deadline", headers={"x-resilient-deadline": "0"})
    assert 0 < given.json()["remaining"] <= 2.5
    assert 9 < clamped.json()["remaining"] <= 10
    assert garbage.json()["remaining"] is None
    assert none.json()["remaining"] is None
    assert expired.status_code == 504
    assert expired.json() == {"error": "deadline_exceeded"}


async def test_websocket_passes_through_every_part() -> None:
    websockets_client = pytest.importorskip("websockets.asyncio.client")
    probe = Probe()
    mw = ResilienceMiddleware(make_app(probe), max_concurrent=1, rate=1, per=60, timeout=0.2)
    with serve(mw) as host:
        for i in range(3):  # more than the rate and the concurrency allow for HTTP
            async with websockets_client.connect(f"ws://{host}/ws") as ws:
                await ws.send(f"hi{i}")
                assert await ws.recv() == f"echo:hi{i}"


async def test_status_endpoint_over_http() -> None:
    probe = Probe()
    mw = ResilienceMiddleware(make_app(probe), max_concurrent=4, rate=100, status_path="/_resilience", name="srv")
    with serve(mw) as host:
        async with httpx.AsyncClient(base_url=f"http://{host}", timeout=10) as client:
            await client.get("/work")
            r = await client.get("/_resilience")
    assert r.status_code == 200
    names = {p["name"]: p for p in r.json()["policies"]}
    assert names["srv.load_shedding"]["status"]["max_concurrent"] == 4
    assert names["srv.rate_limit"]["status"]["keys"] >= 1
    json.dumps(r.json())


async def test_deadline_from_async_resilient_transport_reaches_the_handler() -> None:
    from resilient.deadline import deadline
    from resilient.httpx import AsyncResilientTransport

    mw = ResilienceMiddleware(make_app(Probe()), timeout=5)
    with serve(mw) as host:
        transport = AsyncResilientTransport()
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}", timeout=10) as client:
            with deadline(1.5):
                inside = await client.get("/deadline")
            outside = await client.get("/deadline")
    assert inside.status_code == 200
    assert 0 < inside.json()["remaining"] <= 1.5
    # Without a caller deadline, the request timeout is the handler's deadline.
    assert 1.5 < outside.json()["remaining"] <= 5


def _padded(header: str, own_entry: str) -> str:
    """A client-written forwarded header of 8,190 bytes ending in an address the client chose.

    Just under the 8 KiB the middleware reads: with the proxy's entry added
    the forwarded headers are over it.
    """
    unit = "198.51.100.1, " if header == "x-forwarded-for" else "for=198.51.100.1, "
    entry = own_entry if header == "x-forwarded-for" else f"for={own_entry}"
    count, rest = divmod(8190 - len(entry), len(unit))
    value = unit * count + " " * rest + entry
    assert len(value) == 8190
    return value


@pytest.mark.parametrize("style", ["append", "merge"])
@pytest.mark.parametrize("header", ["x-forwarded-for", "forwarded"])
async def test_an_oversized_forwarded_header_cannot_choose_or_share_the_rate_limit_key(style: str, header: str) -> None:
    # Issue 14, item 1. Behind a proxy that appends its own line (HAProxy),
    # the client's ~8 KiB line used to fill the budget and the proxy's line
    # was dropped: the client chose its key on every request. Behind a proxy
    # that merges into one line (nginx), the whole line was dropped and the
    # client was keyed as the proxy, sharing one bucket with everyone.
    from tests.asgi_helpers import ForwardingProxy

    probe = Probe()
    key = ClientIP(["127.0.0.1"], header=header)  # type: ignore[arg-type]
    mw = RateLimit(make_app(probe), rate=1, per=60, key=key)
    codes: dict[str, list[int]] = {}
    with serve(mw) as host, ForwardingProxy(host, header=header, style=style).running() as proxy:  # type: ignore[arg-type]
        for client_ip in ("127.0.0.2", "127.0.0.3"):
            transport = httpx.AsyncHTTPTransport(local_address=client_ip)
            async with httpx.AsyncClient(transport=transport, base_url=f"http://{proxy}", timeout=10) as client:
                codes[client_ip] = [
                    (await client.get("/work", headers={header: _padded(header, f"203.0.113.{i}")})).status_code
                    for i in range(10)
                ]
    # Each client is keyed by its own address, whatever it writes.
    assert codes == {"127.0.0.2": [200] + [429] * 9, "127.0.0.3": [200] + [429] * 9}
    assert probe.calls == 2


def _no_limit(left: float | None) -> bool:
    """What ``remaining()`` says where no deadline applies: ``None``.

    It used to be "``None``, or far beyond any request" (a deadline lifted to
    a far-off finite expiry); it is ``None`` wherever it is read now.
    """
    return left is None


async def _stream_after(
    client: httpx.AsyncClient, probe: AfterStart, clock: FakeClock, advance: float, headers: dict[str, str]
) -> list[str]:
    probe.reset()
    async with client.stream("GET", "/stream", headers=headers) as response:
        assert response.status_code == 200
        lines = response.aiter_lines()
        first = await anext(lines)
        clock.advance(advance)  # past the request timeout, once the response started
        probe.release.set()
        rest = [line async for line in lines]
    assert await asyncio.to_thread(probe.done.wait, 10)
    return [first, *rest]


@pytest.mark.parametrize("middleware", ["RequestTimeout", "ResilienceMiddleware"])
async def test_the_request_timeout_does_not_cut_a_started_stream_nor_background_tasks(middleware: str) -> None:
    # Issue 14, item 3: the request timeout's deadline stayed set for the
    # whole app call, so the rest of a streaming body and a BackgroundTask
    # calling an upstream failed with resilient.TimeoutError once `timeout`
    # had passed, although the response had started in time.
    clock = FakeClock()
    probe = AfterStart()
    app = probe.app()
    if middleware == "RequestTimeout":
        mw: object = RequestTimeout(app, seconds=5, clock=clock)
    else:
        mw = ResilienceMiddleware(app, timeout=5, max_concurrent=4, rate=100, clock=clock)
    with serve(mw) as host:  # type: ignore[arg-type]
        async with httpx.AsyncClient(base_url=f"http://{host}", timeout=10) as client:
            lines = await _stream_after(client, probe, clock, 10, {})
            assert lines == ["first", "second"]
            assert probe.seen["stream"] == "ok"
            assert probe.seen["background"] == "ok"
            assert _no_limit(probe.seen["stream.remaining"])
            assert _no_limit(probe.seen["background.remaining"])
            # A response that is not streamed, and its background task.
            probe.reset()
            assert (await client.get("/plain")).text == "ok"
            clock.advance(10)
            probe.release.set()
            assert await asyncio.to_thread(probe.done.wait, 10)
            assert probe.seen["background"] == "ok"
            assert _no_limit(probe.seen["background.remaining"])


@pytest.mark.parametrize("chain", [False, True], ids=["fused", "chain"])
async def test_the_callers_deadline_bounds_the_body_but_not_background_tasks(chain: bool) -> None:
    # The choice made for issue 14, item 3: the caller's deadline (the
    # x-resilient-deadline header) still applies to a started response's
    # body (the caller stops reading then), and stops applying once the
    # response is complete (background tasks are not the caller's work).
    clock = FakeClock()
    probe = AfterStart()
    app = probe.app()
    if chain:
        mw: object = DeadlinePropagation(RequestTimeout(app, seconds=5, clock=clock), clock=clock)
    else:
        mw = ResilienceMiddleware(app, timeout=5, clock=clock)
    with serve(mw) as host:  # type: ignore[arg-type]
        async with httpx.AsyncClient(base_url=f"http://{host}", timeout=10) as client:
            lines = await _stream_after(client, probe, clock, 10, {"x-resilient-deadline": "20"})
            assert lines == ["first", "second"]
            assert probe.seen["stream"] == "ok"
            assert probe.seen["stream.remaining"] == pytest.approx(10)
            assert probe.seen["background"] == "ok"
            assert _no_limit(probe.seen["background.remaining"])
            # The caller's deadline passes while the body streams: the body is cut, the background task is not.
            lines = await _stream_after(client, probe, clock, 10, {"x-resilient-deadline": "8"})
            assert probe.seen["stream"] == "timeout"
            assert probe.seen["background"] == "ok"
            assert _no_limit(probe.seen["background.remaining"])


# -- built from the core: events, shadow mode, a shared edge quota ---------------------


async def test_every_refusal_over_http_reaches_a_real_listener() -> None:
    from resilient.events import EXTRA_HTTP_STATUS, EXTRA_REASON, add_listener, remove_listener
    from resilient.testing import RecordingListener

    listener = RecordingListener()
    add_listener(listener)
    probe = Probe()
    mw = ResilienceMiddleware(make_app(probe), max_concurrent=1, rate=100, timeout=0.3, name="edge-events")
    try:
        with serve(mw) as host:
            async with httpx.AsyncClient(base_url=f"http://{host}", timeout=10) as client:
                expired = await client.get("/work", headers={"x-resilient-deadline": "0"})
                holder = asyncio.create_task(client.get("/hold"))
                while probe.in_flight < 1:
                    await asyncio.sleep(0.01)
                shed = await client.get("/work")
                probe.release.set()
                await holder
                slow = await client.get("/slow")
    finally:
        remove_listener(listener)
    assert (expired.status_code, shed.status_code, slow.status_code) == (504, 503, 504)
    mine = [e for e in listener.events if e.policy_type.startswith("asgi.")]
    assert [(e.name, e.policy, e.extras[EXTRA_HTTP_STATUS], e.extras[EXTRA_REASON]) for e in mine] == [
        ("rejected", "edge-events.deadline", 504, "deadline_exceeded"),
        ("rejected", "edge-events.load_shedding", 503, "overloaded"),
        ("timeout", "edge-events.request_timeout", 504, "timeout"),
    ]


async def test_shadow_mode_over_http_serves_everything_and_reports_what_it_would_refuse() -> None:
    from resilient.events import EXTRA_HTTP_STATUS
    from resilient.testing import recording

    probe = Probe()
    mw = ResilienceMiddleware(make_app(probe), rate=2, per=60, enforce=False, name="edge-shadow")
    with recording() as rec, serve(mw) as host:
        async with httpx.AsyncClient(base_url=f"http://{host}", timeout=10) as client:
            codes = [(await client.get("/work")).status_code for _ in range(5)]
    assert codes == [200] * 5
    assert probe.calls == 5
    would = [e for e in rec.events if e.name == "would_reject" and e.policy_type == "asgi.rate_limit"]
    assert [e.extras[EXTRA_HTTP_STATUS] for e in would] == [429] * 3


async def test_two_replicas_share_one_edge_quota_through_redis() -> None:
    # Issue 15, point 5: RateLimit(limiter=...) takes any keyed limiter; two
    # servers (replicas), each with its own limiter on one redis-server, give
    # a client one quota, not one per replica.
    from resilient.redis import KeyedRedisRateLimiter
    from tests.redis_helpers import running_redis

    with running_redis() as redis:
        limiters = [
            KeyedRedisRateLimiter(redis.url, rate=4, per=60, name="edge", mode="reject", timeout=2.0) for _ in range(2)
        ]
        apps = [RateLimit(make_app(Probe()), limiter=limiter, headers_on_success=True) for limiter in limiters]
        with serve(apps[0]) as first, serve(apps[1]) as second:
            async with httpx.AsyncClient(timeout=10) as client:
                responses = [await client.get(f"http://{host}/work") for host in (first, second) * 4]
    assert [r.status_code for r in responses] == [200] * 4 + [429] * 4
    assert responses[0].headers["ratelimit-policy"] == '"default";q=4;w=60'
    assert responses[-1].headers["retry-after"] == "15"


async def test_under_real_overload_critical_traffic_is_served_and_sheddable_traffic_takes_the_rejections() -> None:
    # Issue 19, item 2: a capacity-limited handler (4 at a time, 50 ms each)
    # under waves of mixed traffic four times its capacity.
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def work(request: Request) -> PlainTextResponse:
        await asyncio.sleep(0.05)
        return PlainTextResponse("ok")

    def priority(scope: dict[str, object]) -> str:
        return "critical" if scope["path"] == "/checkout" else "sheddable"

    app = Starlette(routes=[Route("/checkout", work), Route("/recommendations", work)])
    mw = ResilienceMiddleware(app, max_concurrent=4, max_queued=16, priority=priority, name="prio")
    codes: dict[str, list[int]] = {"/checkout": [], "/recommendations": []}
    with serve(mw) as host:
        async with httpx.AsyncClient(
            base_url=f"http://{host}", timeout=10, limits=httpx.Limits(max_connections=100)
        ) as client:
            for _ in range(5):
                paths = ["/checkout"] * 4 + ["/recommendations"] * 12
                responses = await asyncio.gather(*(client.get(p) for p in paths))
                for p, r in zip(paths, responses, strict=True):
                    codes[p].append(r.status_code)
    critical = codes["/checkout"]
    sheddable = codes["/recommendations"]
    assert critical.count(200) / len(critical) >= 0.99
    assert set(sheddable) <= {200, 503}
    assert sheddable.count(503) > len(sheddable) // 2  # the rejections fell on the sheddable class

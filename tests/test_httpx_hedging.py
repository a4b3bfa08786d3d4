"""standard_hedging_pipeline(): hedges to other endpoints, failover, weights, sent-once POSTs, losers closed.

Several real uvicorn upstreams on 127.0.0.1, each answering after its own delay.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from resilient import RetryBudget
from resilient.httpx import (
    AsyncResilientTransport,
    Endpoint,
    EndpointGroup,
    ResilientTransport,
    standard_hedging_pipeline,
)
from resilient.testing import FakeClock
from tests.httpx_server import RunningServer, free_socket, start_server


class Instance:
    """One upstream instance: answers its name after ``delay`` seconds; counts requests and abandoned ones."""

    def __init__(self, name: str, delay: float = 0.0, status: int = 200) -> None:
        self.name, self.delay, self.status = name, delay, status
        self.lock = threading.Lock()
        self.requests = 0
        self.gone = 0  # requests whose client went away before the answer

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        with self.lock:
            self.requests += 1
        while (await receive()).get("more_body"):
            pass
        if self.delay:
            sleeper = asyncio.ensure_future(asyncio.sleep(self.delay))
            waiter = asyncio.ensure_future(receive())
            done, pending = await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if sleeper not in done:
                with self.lock:
                    self.gone += 1
                return
        body = self.name.encode()
        await send(
            {"type": "http.response.start", "status": self.status, "headers": [(b"content-length", b"%d" % len(body))]}
        )
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def instances() -> Iterator[dict[str, tuple[Instance, RunningServer]]]:
    made: dict[str, tuple[Instance, RunningServer]] = {}
    for name, delay, status in [("fast", 0.0, 200), ("slow", 2.0, 200), ("other", 0.0, 200), ("sick", 0.0, 503)]:
        app = Instance(name, delay, status)
        made[name] = (app, start_server(app))
    yield made
    for _, server in made.values():
        server.stop()


def url(instances: dict[str, tuple[Instance, RunningServer]], name: str) -> str:
    return instances[name][1].base_url


def down_url() -> str:
    sock = free_socket()  # bound, never listening: connections are refused
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


def client(pipeline: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=AsyncResilientTransport(pipeline), base_url="http://service.invalid")


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"endpoints": []}, ValueError, "at least one endpoint"),
        ({"endpoints": ["http://a:1", "http://a:1"]}, ValueError, "listed twice"),
        ({"groups": [["http://a:1"], ["http://a:1"]]}, ValueError, "listed twice"),
        ({"groups": []}, ValueError, "at least one group"),
        ({"endpoints": ["ftp://a"]}, ValueError, "endpoint"),
        ({"endpoints": ["http://a:1/api"]}, ValueError, "without a path"),
        ({"endpoints": "http://a:1"}, TypeError, "list of URLs"),
        ({"endpoints": ["http://a:1"], "groups": [["http://b:1"]]}, TypeError, "not both"),
        ({"selection": "random"}, ValueError, "selection"),
        ({"delay": "fast"}, TypeError, "delay"),
        ({"max_hedged_attempts": -1}, ValueError, "max_hedged_attempts"),
        ({"total_timeout": 0}, ValueError, "total_timeout"),
        ({"budget": 0.1}, TypeError, "budget"),
    ],
)
def test_bad_configuration_fails_at_construction_naming_the_parameter(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        EndpointGroup(["http://a:1"], weight=-1) if kwargs.get("groups") == "bad" else standard_hedging_pipeline(
            **kwargs
        )


def test_the_sync_transport_refuses_it_and_a_pipeline_belongs_to_one_transport() -> None:
    with pytest.raises(TypeError, match="AsyncResilientTransport"):
        ResilientTransport(standard_hedging_pipeline())
    pipeline = standard_hedging_pipeline()
    AsyncResilientTransport(pipeline)
    with pytest.raises(RuntimeError, match="one per transport"):
        AsyncResilientTransport(pipeline)


# -- hedging ------------------------------------------------------------------------------------


async def test_a_slow_attempt_is_hedged_to_another_endpoint_and_the_loser_is_cancelled(instances: Any) -> None:
    pipeline = standard_hedging_pipeline(groups=[[url(instances, "slow")], [url(instances, "fast")]], delay=0.05)
    async with client(pipeline) as c:
        response = await c.get("/item/1")
        assert (response.status_code, response.text) == (200, "fast")
        slow = instances["slow"][0]
        for _ in range(200):  # the server notices the cancelled request's connection closing
            if slow.gone:
                break
            await asyncio.sleep(0.01)
    assert (slow.requests, slow.gone) == (1, 1)
    assert instances["fast"][0].requests == 1


async def test_a_post_is_sent_once_never_hedged(instances: Any) -> None:
    instances["slow"][0].delay = 0.3
    pipeline = standard_hedging_pipeline(groups=[[url(instances, "slow")], [url(instances, "fast")]], delay=0.01)
    async with client(pipeline) as c:
        response = await c.post("/orders", content=b'{"sku": 1}')
    assert response.text == "slow"
    assert (instances["slow"][0].requests, instances["fast"][0].requests) == (1, 0)


async def test_an_idempotency_key_makes_a_post_hedgeable(instances: Any) -> None:
    pipeline = standard_hedging_pipeline(groups=[[url(instances, "slow")], [url(instances, "fast")]], delay=0.02)
    async with client(pipeline) as c:
        response = await c.post("/orders", content=b"{}", headers={"idempotency-key": "k1"})
    assert response.text == "fast"


async def test_a_failure_goes_to_the_next_endpoint_at_once(instances: Any) -> None:
    pipeline = standard_hedging_pipeline(groups=[[down_url()], [url(instances, "other")]], delay=10)
    async with client(pipeline) as c:
        response = await c.get("/item/1")
    assert response.text == "other"


async def test_a_transient_status_is_a_failure_and_the_last_one_is_returned_when_all_fail(instances: Any) -> None:
    pipeline = standard_hedging_pipeline(endpoints=[url(instances, "sick")], delay=10)
    async with client(pipeline) as c:
        response = await c.get("/item/1")
    assert response.status_code == 503
    assert instances["sick"][0].requests == 2  # the attempt and one hedge, then the last answer


async def test_an_open_circuit_sends_traffic_to_the_next_group_and_even_a_post_fails_over(instances: Any) -> None:
    sick, other = url(instances, "sick"), url(instances, "other")
    pipeline = standard_hedging_pipeline(
        groups=[[sick], [other]], minimum_throughput=2, failure_ratio=0.5, break_duration=60, delay=10
    )
    async with client(pipeline) as c:
        for _ in range(2):
            await c.get("/warm")  # sick answers 503 twice: its circuit opens
        before = instances["sick"][0].requests
        response = await c.post("/orders", content=b"{}")
        assert response.text == "other"  # nothing was sent to the open circuit
        assert instances["sick"][0].requests == before
        assert pipeline.status()["endpoints"][0]["state"] == "open"


async def test_weighted_endpoints_split_the_traffic_by_weight(instances: Any) -> None:
    pipeline = standard_hedging_pipeline(
        endpoints=[Endpoint(url(instances, "fast"), weight=3), Endpoint(url(instances, "other"), weight=1)], delay=10
    )
    async with client(pipeline) as c:
        for i in range(200):
            await c.get(f"/item/{i}")
    fast, other = instances["fast"][0].requests, instances["other"][0].requests
    assert fast + other == 200
    assert 110 <= fast <= 185  # 150 expected; a wide band, never flaky


async def test_weighted_groups_split_the_first_attempts() -> None:
    pipeline = standard_hedging_pipeline(
        groups=[EndpointGroup(["http://a.test"], weight=1), EndpointGroup(["http://b.test"], weight=1)],
        selection="weighted",
    )
    AsyncResilientTransport(pipeline, inner=httpx.MockTransport(lambda r: httpx.Response(200)))
    firsts = [pipeline._candidates()[0].endpoint.url for _ in range(400)]  # type: ignore[union-attr]
    assert 120 <= firsts.count("http://a.test") <= 280


async def _until(condition: Any) -> None:
    for _ in range(1000):  # bounded: a few loop turns for the transport to start an attempt
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not met")


async def test_without_endpoints_it_hedges_against_its_own_host() -> None:
    seen: list[str] = []
    gate = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if len(seen) == 1:
            await gate.wait()  # the first attempt hangs
        return httpx.Response(200, text=f"attempt {len(seen)}")

    clock = FakeClock()
    pipeline = standard_hedging_pipeline(delay=0.01, clock=clock)
    transport = AsyncResilientTransport(pipeline, inner=httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=transport) as c:
        call = asyncio.create_task(c.get("https://api.test/items"))
        await _until(lambda: len(seen) == 1)
        clock.advance(0.009)
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(seen) == 1  # not before the delay, on the pipeline's clock
        clock.advance(0.002)  # past the delay (0.009 + 0.001 is just below 0.01 in floating point)
        async with asyncio.timeout(10):  # a safety net only: the fake clock has already fired the hedge
            response = await call
    assert response.text == "attempt 2"
    assert seen == ["https://api.test/items"] * 2


async def test_a_spent_budget_stops_the_hedges() -> None:
    seen: list[int] = []
    gate = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(1)
        await gate.wait()
        return httpx.Response(200)

    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, clock=clock)
    pipeline = standard_hedging_pipeline(delay=0.001, budget=budget, clock=clock)
    transport = AsyncResilientTransport(pipeline, inner=httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=transport) as c:
        call = asyncio.create_task(c.get("https://api.test/"))
        await _until(lambda: seen == [1])
        clock.advance(0.01)  # ten hedging delays: each finds the budget spent
        for _ in range(20):
            await asyncio.sleep(0)
        assert seen == [1]
        gate.set()
        async with asyncio.timeout(10):  # a safety net only
            assert (await call).status_code == 200
    assert seen == [1]


async def test_the_total_timeout_bounds_everything_and_is_an_httpx_timeout(instances: Any) -> None:
    pipeline = standard_hedging_pipeline(endpoints=[url(instances, "slow")], total_timeout=0.1, delay=0.02)
    async with client(pipeline) as c:
        with pytest.raises(httpx.TimeoutException):
            await c.get("/item/1")


async def test_each_attempt_gets_its_endpoint_and_deadline_and_the_callers_request_is_never_changed() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503 if len(seen) == 1 else 200)

    pipeline = standard_hedging_pipeline(endpoints=["http://a.test:81", "http://b.test:82"], delay=10)
    transport = AsyncResilientTransport(pipeline, inner=httpx.MockTransport(handler))
    request = httpx.Request("PUT", "https://service.test/items/1?x=1", content=b"body")
    response = await transport.handle_async_request(request)
    assert response.status_code == 200
    assert sorted(str(r.url) for r in seen) == ["http://a.test:81/items/1?x=1", "http://b.test:82/items/1?x=1"]
    assert {r.headers["host"] for r in seen} == {"a.test:81", "b.test:82"}
    assert all(0 < float(r.headers["x-resilient-deadline"]) <= 30 for r in seen)
    assert all(r.read() == b"body" for r in seen)  # the body replayed to the second endpoint
    assert str(request.url) == "https://service.test/items/1?x=1"
    assert "x-resilient-deadline" not in request.headers
    assert request.headers["host"] == "service.test"

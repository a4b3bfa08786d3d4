"""Hedge inside AsyncResilientTransport against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from httpx_server import RunningServer, start_server

from resilient import Hedge
from resilient.httpx import AsyncResilientTransport


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = start_server()
    yield running
    running.stop()


async def test_slow_get_is_hedged_and_the_fast_answer_wins(server: RunningServer) -> None:
    transport = AsyncResilientTransport(Hedge(0.05))
    async with httpx.AsyncClient(transport=transport) as client:
        # The first request sleeps 30 s (until the client goes away); the hedge answers at once.
        response = await client.get(server.url("/slow?fail=1&delay=30&key=hedge-get"))
    assert response.status_code == 200
    assert server.count("hedge-get") == 2


async def test_post_is_never_hedged(server: RunningServer) -> None:
    transport = AsyncResilientTransport(Hedge(0.01, max_hedged=2))
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.post(server.url("/slow?fail=1&delay=0.3&key=hedge-post"), content=b"x")
    assert response.status_code == 200
    assert server.count("hedge-post") == 1

"""No timer keeps a caller's objects alive (issue 14, item 2), end to end.

Under ``AsyncResilientTransport`` the standard pipeline's timeouts used to
arm their shared timer with the context of the request that armed it, and
re-arm it with that same context: the first response of every host stayed
reachable until the timer's limit passed, and under steady load for good.
Here each request runs in its own task (as a server's handlers do) with its
response held in a contextvar; once the tasks are done, every response must
be collectable.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref

import httpx

from resilient.httpx import AsyncResilientTransport

_current_response: contextvars.ContextVar[httpx.Response] = contextvars.ContextVar("current_response")

BODY = b"x" * (256 * 1024)


def upstream(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=BODY)


async def test_responses_of_finished_requests_are_not_pinned_by_the_transports_timers() -> None:
    refs: list[weakref.ref[httpx.Response]] = []
    transport = AsyncResilientTransport(inner=httpx.MockTransport(upstream))
    async with httpx.AsyncClient(transport=transport) as client:

        async def handler(host: str) -> None:
            response = await client.get(f"http://{host}/item")
            _current_response.set(response)
            refs.append(weakref.ref(response))
            assert len(response.content) == len(BODY)

        for round_ in range(3):
            await asyncio.gather(*(asyncio.create_task(handler(f"host{i}.test")) for i in range(20)))
            assert len(refs) == 20 * (round_ + 1)
        for _ in range(5):
            await asyncio.sleep(0)  # the loop's last handles refer to finished tasks
        gc.collect()
        alive = sum(1 for r in refs if r() is not None)
        assert alive == 0

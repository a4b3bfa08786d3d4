"""No ASGI timer keeps a request's objects alive (issue 14, item 2, the ASGI half).

``RequestTimeout`` (alone or inside ``ResilienceMiddleware``) arms its timers
on its clock (the core's ``resilient.timers.TimerQueue``; on the system clock,
``loop.call_at``), and these tests run it on the real one. Armed without ``context=``, a timer captures the
context of the request that armed it: the shared queue's timer stayed armed
for ``seconds`` after that request finished, re-armed itself in that same
context (so under steady load the first request stayed pinned for good), and
a request's own timer, cancelled, stayed in the loop's heap with its context
until its time. Here every request runs in its own task, as a server runs
it, with a large object in a contextvar; once the requests are over, every
one of those objects must be collectable.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref
from typing import Any

from resilient.asgi import RequestTimeout, ResilienceMiddleware
from resilient.asgi._common import Receive, Scope, Send
from tests.asgi_helpers import call, http_scope, status_of


class Big:
    """A large per-request object (a weakref-able holder of 1 MiB)."""

    def __init__(self) -> None:
        self.payload = bytearray(1 << 20)


_request_state: contextvars.ContextVar[Big] = contextvars.ContextVar("request_state")


async def ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _request(app: Any, refs: list[weakref.ref[Big]], scope: Scope | None = None) -> int | None:
    big = Big()
    _request_state.set(big)  # in this request's task only
    refs.append(weakref.ref(big))
    del big
    return status_of(await call(app, scope or http_scope()))


async def _alive_after(refs: list[weakref.ref[Big]]) -> int:
    for _ in range(5):
        await asyncio.sleep(0)  # the loop's last handles for finished tasks
    gc.collect()
    return sum(1 for r in refs if r() is not None)


async def test_request_timeout_queue_timer_does_not_pin_the_arming_request() -> None:
    refs: list[weakref.ref[Big]] = []
    mw = RequestTimeout(ok, seconds=30)
    for _ in range(3):
        codes = await asyncio.gather(*(asyncio.create_task(_request(mw, refs)) for _ in range(10)))
        assert codes == [200] * 10
    assert await _alive_after(refs) == 0


async def test_own_timers_of_deadline_cut_requests_do_not_pin_them() -> None:
    # A caller's deadline nearer than the queue's tail gives the request a
    # timer of its own, cancelled when it ends (but kept in the loop's heap).
    refs: list[weakref.ref[Big]] = []
    mw = ResilienceMiddleware(ok, timeout=30)
    assert await asyncio.create_task(_request(mw, refs)) == 200  # a tail at +30 s
    scopes = [http_scope(headers=[("x-resilient-deadline", f"{10 - i * 0.1:.1f}")]) for i in range(10)]
    codes = await asyncio.gather(*(asyncio.create_task(_request(mw, refs, scope)) for scope in scopes))
    assert codes == [200] * 10
    assert await _alive_after(refs) == 0


async def test_the_rearmed_queue_timer_does_not_pin_the_first_request() -> None:
    # The queue's timer fires for the first request's expiry while a later
    # request is still running, and re-arms itself for that one: in the first
    # request's context, before the fix.
    refs: list[weakref.ref[Big]] = []
    release = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/wait":
            await release.wait()
        await ok(scope, receive, send)

    # The real clock: what is under test is what its timers keep alive.
    mw = RequestTimeout(app, seconds=0.2)
    assert await asyncio.create_task(_request(mw, refs)) == 200
    timers = mw.timers()
    assert timers is not None
    first_handle = timers.handle
    await asyncio.sleep(0.1)
    later = asyncio.create_task(_request(mw, refs, http_scope("/wait")))
    for _ in range(200):  # bounded: the first expiry is 0.2 s away
        if timers.handle is not first_handle:
            break
        await asyncio.sleep(0.01)
    assert timers.handle is not None  # re-armed for the later request
    release.set()
    assert await later == 200
    del later  # a finished task keeps its context
    assert await _alive_after(refs) == 0


def test_the_middleware_lets_its_closed_loops_go() -> None:
    # The same map of timer queues as Timeout's: a closed loop must not stay.
    mw = RequestTimeout(ok, seconds=5)

    async def one() -> weakref.ref[asyncio.AbstractEventLoop]:
        assert status_of(await call(mw, http_scope())) == 200
        return weakref.ref(asyncio.get_running_loop())

    refs = [asyncio.run(one()) for _ in range(4)]
    gc.collect()
    assert sum(ref() is not None for ref in refs) <= 1

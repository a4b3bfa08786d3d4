"""A webhook delivery worker: long-horizon retries, a breaker and a rate limit per subscriber, a dead-letter sink.

Run: python examples/webhook_delivery.py

It starts a small uvicorn server on 127.0.0.1 playing five subscribers (one
healthy, one flaky, one throttling with ``Retry-After``, one asking to come
back in an hour, one gone for good), adds a sixth whose port is closed (a
subscriber that is down), and delivers three events to each. Every time
below is shrunk a thousandfold so that the script finishes in about a
second; the production values are in the comments.

What each subscriber's pipeline does (see docs/recipes/webhook-delivery.md):

* ``Retry`` (``http_retry``) bounded by a total horizon, ``max_elapsed``,
  not by a count: an event is tried for as long as the horizon lasts,
  honouring ``Retry-After`` up to ``max_hint``, and waiting out an open
  breaker (``on=CircuitOpenError``: its ``retry_after`` is the hint);
* a ``CircuitBreaker`` per subscriber inside the retry: a down subscriber
  sees one probe per break, whatever its backlog;
* a ``RateLimiter`` per subscriber: attempts (retries included) never exceed
  what the subscriber accepts;
* ``on_give_up``: the event goes to the dead-letter sink when its horizon is
  over, or back to the queue for later when the subscriber asked for more
  time than the worker waits in one go (reason ``"hint"``).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from resilient import CircuitBreaker, CircuitOpenError, GiveUp, Pipeline, RateLimiter, Timeout, exponential
from resilient.httpx import TRANSIENT_STATUSES, http_retry, is_transient_error

# -- the subscribers (a local server) ---------------------------------------------

attempts_seen: Counter[str] = Counter()


async def subscribers(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/hooks/<name>``: how each subscriber answers an event (``webhook-id`` header)."""
    if scope["type"] != "http":
        return
    name = scope["path"].rsplit("/", 1)[-1]
    event_id = dict(scope["headers"]).get(b"webhook-id", b"?").decode()
    attempts_seen[f"{name} {event_id}"] += 1
    first = attempts_seen[f"{name} {event_id}"] == 1
    status, headers = 200, [(b"content-type", b"text/plain")]
    if name == "flaky" and first:
        status = 503  # a blip: the retry sends it again
    elif name == "throttled" and first:
        status, headers = 429, [*headers, (b"retry-after", b"0.05")]  # "come back in 50 ms"
    elif name == "away":
        status, headers = 503, [*headers, (b"retry-after", b"3600")]  # "come back in an hour"
    elif name == "gone":
        status = 410  # the endpoint was removed: never retried
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok" if status == 200 else b"no"})


def start_server() -> tuple[uvicorn.Server, threading.Thread, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(subscribers, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, sock.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nobody listens once it is closed


# -- the worker -----------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    id: str
    subscriber: str
    url: str
    payload: bytes


@dataclass
class Outcomes:
    delivered: list[str] = field(default_factory=list)
    dead_letters: list[tuple[str, str]] = field(default_factory=list)  # (event id, why)
    rescheduled: list[tuple[str, float]] = field(default_factory=list)  # (event id, in how many seconds)
    rejected: list[tuple[str, int]] = field(default_factory=list)  # (event id, status)


class DeliveryWorker:
    """Delivers events to their subscribers, one pipeline per subscriber."""

    HORIZON = 0.4  # production: hours (e.g. 3 days, Svix's and Stripe's horizon)
    MAX_DELAY = 0.05  # production: minutes
    MAX_HINT = 1.0  # production: e.g. 10 minutes; a longer Retry-After goes back to the queue
    BREAK = 0.1  # production: 30 s or more
    ATTEMPT_TIMEOUT = 0.5  # production: 10-30 s
    RATE = 100  # attempts per second per subscriber

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.outcomes = Outcomes()
        # Per subscriber: the breaker's and the limiter's state belong to one endpoint.
        self._pipelines: dict[str, Any] = {}

    def _deliver_for(self, subscriber: str) -> Any:
        if subscriber not in self._pipelines:
            pipeline = Pipeline(
                http_retry(
                    max_retries=1_000_000,  # bounded by the horizon, not by a count
                    backoff=exponential(0.01, max_delay=self.MAX_DELAY, jitter="full"),
                    max_delay=self.MAX_DELAY,
                    max_elapsed=self.HORIZON,
                    max_hint=self.MAX_HINT,
                    on=CircuitOpenError,  # an open breaker is waited out (its retry_after is the hint)
                    on_give_up=self._gave_up,
                    name=f"deliver {subscriber}",
                ),
                CircuitBreaker(
                    f"breaker {subscriber}",
                    consecutive_failures=5,
                    break_duration=self.BREAK,
                    on=is_transient_error,
                    on_result=lambda r: r.status_code >= 500,  # a 429 is not a broken subscriber
                ),
                RateLimiter(self.RATE, 1.0, burst=10, mode="wait", name=f"rate {subscriber}"),
                Timeout(self.ATTEMPT_TIMEOUT),
                name=f"webhooks {subscriber}",
            )
            self._pipelines[subscriber] = pipeline(self._post)
        return self._pipelines[subscriber]

    async def _post(self, event: Event) -> httpx.Response:
        # The event id goes with every attempt: delivery is at-least-once, the subscriber dedupes.
        return await self.client.post(event.url, content=event.payload, headers={"webhook-id": event.id})

    def _gave_up(self, gave_up: GiveUp) -> None:
        event: Event = gave_up.args[0]
        if gave_up.reason == "hint" and gave_up.retry_after is not None:
            # Not dead: asked for more time than one delivery waits. In production: enqueue with a delay.
            self.outcomes.rescheduled.append((event.id, gave_up.retry_after))
        else:
            # The horizon is over (or the attempts): in production, write it to the dead-letter table/topic.
            self.outcomes.dead_letters.append((event.id, gave_up.reason))

    async def handle(self, event: Event) -> None:
        try:
            response = await self._deliver_for(event.subscriber)(event)
        except Exception:
            return  # the retry gave up on an exception: on_give_up has the event already
        if response.is_success:
            self.outcomes.delivered.append(event.id)
        elif response.status_code not in TRANSIENT_STATUSES:
            # Not retryable (410 Gone, 400...): on_give_up is not called; the worker decides.
            self.outcomes.rejected.append((event.id, response.status_code))
        # A transient status handed back means the retry gave up on it: on_give_up has it.


async def main() -> None:
    server, thread, port = start_server()
    down = closed_port()
    names = ["shop", "flaky", "throttled", "away", "gone", "down"]
    events = [
        Event(
            f"evt-{name}-{i}",
            name,
            f"http://127.0.0.1:{down if name == 'down' else port}/hooks/{name}",
            b'{"type": "order.paid"}',
        )
        for name in names
        for i in range(3)
    ]
    started = time.perf_counter()
    try:
        async with httpx.AsyncClient() as client:
            worker = DeliveryWorker(client)
            await asyncio.gather(*(worker.handle(event) for event in events))
    finally:
        server.should_exit = True
        thread.join(5)
    out = worker.outcomes
    print(f"delivered   {sorted(out.delivered)}")
    print(f"rescheduled {sorted(out.rescheduled)}")
    print(f"dead letter {sorted(out.dead_letters)}")
    print(f"rejected    {sorted(out.rejected)}")
    print(f"attempts per event: {dict(sorted(attempts_seen.items()))}")
    print(f"took {time.perf_counter() - started:.2f} s")

    assert sorted(out.delivered) == sorted(e.id for e in events if e.subscriber in ("shop", "flaky", "throttled"))
    assert sorted(out.rescheduled) == [(f"evt-away-{i}", 3600.0) for i in range(3)]
    assert sorted(out.dead_letters) == [(f"evt-down-{i}", "max_elapsed") for i in range(3)]
    assert sorted(out.rejected) == [(f"evt-gone-{i}", 410) for i in range(3)]
    # Retry-After was honoured: the throttled subscriber saw each event twice, not a burst.
    assert all(attempts_seen[f"throttled evt-throttled-{i}"] == 2 for i in range(3))


if __name__ == "__main__":
    asyncio.run(main())

"""A fan-out delivery worker: one circuit breaker per subscriber, a dead-letter list.

A broker delivers every event to every subscriber's endpoint. One endpoint is
down for good, one is flaky, the rest are healthy. With a breaker per
subscriber (``Keyed``), the dead endpoint's breaker opens after a few
failures, so its deliveries go to the dead-letter list at once, without
tying up the worker, while the others keep flowing; the flaky one gets its
retries. Memory stays bounded: at most ``max_keys`` breakers, idle ones
forgotten after ``idle_ttl``. Runs in well under a second, no network.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from resilient import CircuitBreaker, CircuitOpenError, Keyed, Pipeline, Retry, constant


@dataclass
class Subscribers:
    """Fake endpoints: ``down`` always fails, ``flaky`` fails every fourth call."""

    down: set[str]
    flaky: set[str]
    received: dict[str, int] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)

    async def post(self, url: str, event: dict[str, object]) -> None:
        self.attempts[url] = self.attempts.get(url, 0) + 1
        await asyncio.sleep(0)
        if url in self.down or (url in self.flaky and self.attempts[url] % 4 == 0):
            raise ConnectionError(f"{url} refused the connection")
        self.received[url] = self.received.get(url, 0) + 1


async def main() -> None:
    urls = [f"https://hooks.example/{i}" for i in range(20)]
    subscribers = Subscribers(down={urls[3]}, flaky={urls[7]})
    dead_letters: list[tuple[str, int, str]] = []

    per_subscriber = Keyed(
        lambda url: CircuitBreaker(consecutive_failures=3, break_duration=30),
        key=lambda url, event: url,
        max_keys=10_000,
        idle_ttl=3600,
        name="subscriber-breakers",
    )
    # Retry outside the breaker: every attempt passes through that subscriber's
    # breaker, and a rejection (CircuitOpenError) is not retried.
    delivery = Pipeline(Retry(3, backoff=constant(0.001), on=ConnectionError), per_subscriber, name="delivery")

    @delivery
    async def deliver(url: str, event: dict[str, object]) -> None:
        await subscribers.post(url, event)

    async def fan_out(event: dict[str, object]) -> None:
        results = await asyncio.gather(*(deliver(url, event) for url in urls), return_exceptions=True)
        for url, result in zip(urls, results, strict=True):
            if isinstance(result, Exception):
                reason = "circuit open" if isinstance(result, CircuitOpenError) else type(result).__name__
                dead_letters.append((url, int(str(event["id"])), reason))

    for event_id in range(50):
        await fan_out({"id": event_id, "type": "order.created"})

    delivered = sum(subscribers.received.values())
    print(f"events: 50 x {len(urls)} subscribers = {50 * len(urls)} deliveries")
    print(f"delivered: {delivered}, dead-lettered: {len(dead_letters)}")
    down = urls[3]
    print(f"attempts on the dead endpoint: {subscribers.attempts[down]} (breaker opened after 3)")
    reasons: dict[str, int] = {}
    for url, _event, reason in dead_letters:
        if url == down:
            reasons[reason] = reasons.get(reason, 0) + 1
    print(f"dead letters of {down}: {reasons}")
    status = per_subscriber.status(limit=2)
    print(f"breakers held: {status['keys']}, open: {status['open']}")
    for worst in status["worst"]:
        print(f"  worst: {worst['key']} {worst['status']['state']}")

    assert subscribers.attempts[down] == 3  # then the breaker answered for it
    assert {url for url, _, _ in dead_letters} == {down}  # the flaky one got through on retries
    assert subscribers.received[urls[7]] == 50
    assert delivered + len(dead_letters) == 50 * len(urls)
    assert status["open"] == 1
    assert status["worst"][0]["key"] == repr(down)


if __name__ == "__main__":
    asyncio.run(main())

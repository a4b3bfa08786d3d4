"""Open-loop load: calls start on a fixed schedule, whatever earlier calls are doing.

A closed loop (N workers each waiting for its answer before the next call)
slows down exactly when the upstream does, so it hides the load that a real
service keeps receiving from its own users. Here every call is its own task
created at ``t0 + i / rate``; its latency is measured from that *due* time,
so a late start (a busy event loop) counts against the latency instead of
disappearing (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["Target", "classify", "drive"]


def classify(exc: BaseException) -> str:
    """A short, stable name for how a call failed."""
    from resilient.errors import BulkheadFullError, CircuitOpenError, RateLimitedError, RejectedError

    # Peers' breakers too (aiobreaker's CircuitBreakerError, pyresilience's CircuitOpenError).
    if isinstance(exc, CircuitOpenError) or type(exc).__name__ in ("CircuitBreakerError", "CircuitOpenError"):
        return "circuit_open"
    if isinstance(exc, BulkheadFullError):
        return "bulkhead_full"
    if isinstance(exc, RateLimitedError):
        return "rate_limited"
    if isinstance(exc, RejectedError):
        return "rejected"
    if isinstance(exc, TimeoutError):
        return "timeout"
    try:
        import httpx
    except ImportError:  # pragma: no cover - the demo extra brings httpx
        return type(exc).__name__
    if isinstance(exc, httpx.HTTPStatusError):
        return f"http_{exc.response.status_code}"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect_error"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return "dropped"
    return type(exc).__name__


Call = Callable[[int], Awaitable[str]]


@dataclass
class Target:
    """One client configuration under load.

    ``call(key)`` returns ``"ok"`` or the name of a failure (``"http_503"``)
    and may raise; ``records`` collects ``(due, latency, kind)`` per call,
    ``due`` in seconds since the start, ``latency`` from the due time.
    ``context`` is the :mod:`contextvars` context every call starts from (a
    copy per call; the demo uses it to attribute policy events to their
    configuration).
    """

    name: str
    call: Call
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    records: list[tuple[float, float, str]] = field(default_factory=list)
    inflight: int = 0
    started: int = 0


async def _one(target: Target, key: int, due: float, t0: float, loop: asyncio.AbstractEventLoop) -> None:
    target.inflight += 1
    kind = "unfinished"
    try:
        kind = await target.call(key)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        kind = classify(exc)
    finally:
        target.inflight -= 1
        target.records.append((due - t0, loop.time() - due, kind))


async def drive(
    targets: Sequence[Target],
    *,
    rate: float,
    duration: float,
    keys: int = 100,
    seed: int = 0,
    grace: float = 6.0,
    on_tick: Callable[[float], None] | None = None,
    tick_every: float = 0.25,
) -> float:
    """Send ``rate`` calls per second to every target for ``duration`` seconds.

    All targets get the same schedule and the same sequence of keys (drawn
    from ``keys`` with ``seed``). After the last call is started, calls still
    running get ``grace`` seconds to finish and are then cancelled and
    recorded as ``"unfinished"``. ``on_tick(elapsed)`` is called about every
    ``tick_every`` seconds (progress display). Returns the start time
    (``loop.time()``) the records are relative to.
    """
    if rate <= 0 or duration <= 0:
        raise ValueError(f"rate and duration must be > 0, got rate={rate!r}, duration={duration!r}")
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    tasks: set[asyncio.Task[None]] = set()
    total = max(1, round(rate * duration))
    t0 = loop.time()
    next_tick = t0
    i = 0
    while i < total:
        now = loop.time()
        # Start every call that is due (several at once if the loop was late).
        while i < total and t0 + i / rate <= now:
            due = t0 + i / rate
            key = rng.randrange(keys)
            for target in targets:
                # A copy per call: calls must not see each other's context variables
                # (deadlines, attempt numbers).
                task = loop.create_task(_one(target, key, due, t0, loop), context=target.context.copy())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                target.started += 1
            i += 1
        if on_tick is not None and now >= next_tick:
            on_tick(now - t0)
            next_tick = now + tick_every
        if i < total:
            await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
    end = loop.time() + grace
    while tasks and loop.time() < end:
        await asyncio.wait(set(tasks), timeout=min(tick_every, max(0.0, end - loop.time())))
        if on_tick is not None:
            on_tick(loop.time() - t0)
    for task in list(tasks):
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    return t0

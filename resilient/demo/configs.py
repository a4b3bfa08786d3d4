"""The client configurations the demo compares.

Each one is an httpx client pointed at its own upstream instance. Those that
need a part of ``resilient`` that is not installed (or not written yet) are
skipped with a note instead of failing the demo.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CONFIGS", "Built", "Config", "Unavailable", "TIMEOUT", "CACHE_TTL"]

#: The client-side timeout of every configuration (httpx's default).
TIMEOUT = 5.0
#: Fresh time of the stale-cache configuration's entries, seconds.
CACHE_TTL = 1.0
#: How long an entry may be served stale when the upstream fails, seconds.
CACHE_STALE_TTL = 300.0


class Unavailable(Exception):
    """A configuration cannot be built here; the message says why."""


@dataclass
class Built:
    """A ready configuration: ``call(key)`` returns ``"ok"`` or a failure name."""

    call: Callable[[int], Awaitable[str]]
    aclose: Callable[[], Awaitable[None]]
    policies: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class Config:
    """A named way of calling the upstream."""

    key: str
    label: str
    description: str
    build: Callable[[str], Built]
    #: Whether it has a circuit breaker (the report draws its state).
    breaker: bool = False
    #: Modules it needs beyond httpx and the core.
    requires: tuple[str, ...] = ()

    def unavailable(self) -> str | None:
        """Why this configuration cannot run here, or None if it can."""
        for module in self.requires:
            try:
                _optional(module)
            except Unavailable as exc:
                return str(exc)
        return None


def _optional(module: str) -> Any:
    """Import a part of resilient that may not be there (yet); :class:`Unavailable` if not."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Unavailable(f"{module} is not available ({exc})") from None


#: Use httpx's own transport (httpcore) instead of the demo's loopback one.
USE_HTTPCORE = False


def _inner() -> Any:
    """The transport every configuration sends its requests with."""
    import httpx

    if USE_HTTPCORE:
        # Generous, so that the connection pool is not a hidden bulkhead.
        return httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=400, max_keepalive_connections=100))
    from resilient.demo.transport import LoopbackTransport

    return LoopbackTransport()


def _outcome(response: Any) -> str:
    status: int = response.status_code
    return "ok" if status < 400 else f"http_{status}"


def _client(base_url: str, transport: Any = None) -> Any:
    import httpx

    return httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT, transport=transport or _inner())


def _plain(base_url: str) -> Built:
    client = _client(base_url)

    async def call(key: int) -> str:
        return _outcome(await client.get(f"/item/{key}"))

    return Built(call, client.aclose)


def _retryable(response: Any) -> bool:
    status: int = response.status_code
    return status == 429 or status >= 500


def _naive(base_url: str) -> Built:
    import httpx

    from resilient.backoff import constant
    from resilient.retry import Retry

    client = _client(base_url)
    # What a lot of code does: retry three times, at once, on anything.
    retry = Retry(3, backoff=constant(0.0), on=httpx.TransportError, on_result=_retryable, name="naive-retry")

    @retry
    async def get(key: int) -> Any:
        return await client.get(f"/item/{key}")

    async def call(key: int) -> str:
        return _outcome(await get(key))

    return Built(call, client.aclose, [retry])


def _resilient_client(base_url: str, preset: str, **overrides: Any) -> tuple[Any, Any]:
    rhttpx = _optional("resilient.httpx")

    pipeline = rhttpx.standard_pipeline(preset=preset, **overrides)
    transport = rhttpx.AsyncResilientTransport(pipeline, inner=_inner())
    return _client(base_url, transport), pipeline


def _standard(base_url: str) -> Built:
    client, pipeline = _resilient_client(base_url, "resilient")

    async def call(key: int) -> str:
        return _outcome(await client.get(f"/item/{key}"))

    return Built(call, client.aclose, [pipeline])


#: The retry budget of the "standard + retry budget" configuration.
BUDGET_RATIO = 0.1
BUDGET_FLOOR = 1.0


def _budget(base_url: str) -> Built:
    from resilient.budget import RetryBudget

    budget = RetryBudget(ratio=BUDGET_RATIO, min_per_second=BUDGET_FLOOR)
    client, pipeline = _resilient_client(base_url, "resilient", retry_budget=budget)

    async def call(key: int) -> str:
        return _outcome(await client.get(f"/item/{key}"))

    return Built(call, client.aclose, [pipeline])


def _microsoft(base_url: str) -> Built:
    client, pipeline = _resilient_client(base_url, "microsoft")

    async def call(key: int) -> str:
        return _outcome(await client.get(f"/item/{key}"))

    return Built(call, client.aclose, [pipeline])


def _hedging(base_url: str) -> Built:
    rhttpx = _optional("resilient.httpx")

    pipeline = rhttpx.standard_hedging_pipeline()
    client = _client(base_url, rhttpx.AsyncResilientTransport(pipeline, inner=_inner()))

    async def call(key: int) -> str:
        return _outcome(await client.get(f"/item/{key}"))

    return Built(call, client.aclose, [pipeline])


def _stale_cache(base_url: str) -> Built:
    cache_module = _optional("resilient.cache")
    client, pipeline = _resilient_client(base_url, "resilient")
    cache = cache_module.StaleCache(CACHE_TTL, stale_ttl=CACHE_STALE_TTL, name="demo-cache")

    async def fetch(key: int) -> bytes:
        response = await client.get(f"/item/{key}")
        # A failure must raise for the cache to answer stale instead.
        response.raise_for_status()
        content: bytes = response.content
        return content

    get = cache.wrap(fetch)

    async def call(key: int) -> str:
        await get(key)
        return "ok"

    return Built(call, client.aclose, [cache, pipeline])


CONFIGS: list[Config] = [
    Config("plain", "unprotected", "a plain httpx.AsyncClient (timeout 5 s)", _plain),
    Config(
        "naive", "naive retries", "Retry(3) at once on 5xx/429/transport errors: no backoff, budget or breaker", _naive
    ),
    Config(
        "standard",
        "resilient standard",
        "AsyncResilientTransport(standard_pipeline()): retries with backoff and Retry-After, breaker at 50% failures",
        _standard,
        breaker=True,
        requires=("resilient.httpx",),
    ),
    Config(
        "budget",
        "standard + retry budget",
        f"standard_pipeline(retry_budget=RetryBudget(ratio={BUDGET_RATIO:g}, min_per_second={BUDGET_FLOOR:g})): "
        "retries limited to 10% of recent calls",
        _budget,
        breaker=True,
        requires=("resilient.httpx",),
    ),
    Config(
        "microsoft",
        "Microsoft preset",
        'standard_pipeline(preset="microsoft"): the same with Microsoft\'s exact values (breaker at 10% failures)',
        _microsoft,
        breaker=True,
        requires=("resilient.httpx",),
    ),
    Config(
        "hedging",
        "hedging pipeline",
        "AsyncResilientTransport(standard_hedging_pipeline()): a second attempt once the first outlives the p99 of "
        "recent answers, within a 10% budget",
        _hedging,
        breaker=True,
        requires=("resilient.httpx",),
    ),
    Config(
        "stale-cache",
        "standard + stale cache",
        f"StaleCache(ttl={CACHE_TTL:g} s, stale_ttl={CACHE_STALE_TTL:g} s) around the standard client",
        _stale_cache,
        breaker=True,
        requires=("resilient.httpx", "resilient.cache"),
    ),
]

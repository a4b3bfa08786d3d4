"""Fault scenarios, headless, with the Python peers side by side.

The scenarios of ``resilient demo`` (outage, brownout, slow tail, overload,
rate-limited upstream) against the same flaky upstream and open-loop load,
through the resilience library each configuration names:

* ``plain``: a bare ``httpx.AsyncClient``;
* ``tenacity-naive``: tenacity, 3 attempts, no wait (what a lot of code does);
* ``tenacity+aiobreaker``: tenacity (4 attempts, exponential jitter from 2 s,
  like Microsoft's standard handler) around an aiobreaker breaker (5
  consecutive failures, 5 s open); an open circuit is not retried;
* ``pyresilience``: ``@resilient(**http_policy())``, pyresilience's own HTTP
  preset (3 attempts from 0.5 s, breaker after 5 consecutive failures, 30 s
  recovery, 10 s timeout);
* ``resilient``: ``AsyncResilientTransport(standard_pipeline())``.

Every peer sees an HTTP 429/5xx as an exception (``raise_for_status``), as
most of them only judge exceptions. A peer that is not installed is skipped.

Run: ``python -m benchmarks.scenarios`` (about 100 s), ``--sync`` for the synchronous
clients (a thread per call), ``--quick`` for a smoke
run, ``--scenario outage`` for one scenario, ``--out report.html`` for the
demo's HTML report with these configurations.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import importlib.util
import sys
import time
from datetime import timedelta
from typing import Any

from resilient.demo import configs as demo_configs
from resilient.demo.configs import TIMEOUT, Built, Config, Unavailable
from resilient.demo.runner import Upstream, UpstreamError, record_event, run_scenario
from resilient.demo.upstream import SCENARIOS

RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _require(*modules: str) -> None:
    missing = [m for m in modules if not _have(m)]
    if missing:
        raise Unavailable(f"not installed: {', '.join(missing)}")


def _client(base_url: str) -> Any:
    import httpx

    return httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT, transport=demo_configs._inner())


def _is_retryable(exc: BaseException) -> bool:
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code in RETRYABLE
    return isinstance(exc, httpx.TransportError)


def _fetcher(client: Any) -> Any:
    async def fetch(key: int) -> str:
        response = await client.get(f"/item/{key}")
        response.raise_for_status()
        return "ok"

    return fetch


def _tenacity_naive(base_url: str) -> Built:
    _require("tenacity")
    import tenacity

    client = _client(base_url)

    def count_retry(state: Any) -> None:
        record_event("retry")

    call = tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        retry=tenacity.retry_if_exception(_is_retryable),
        before_sleep=count_retry,
        reraise=True,
    )(_fetcher(client))
    return Built(call, client.aclose)


def _tenacity_aiobreaker(base_url: str) -> Built:
    _require("tenacity", "aiobreaker")
    import aiobreaker
    import tenacity

    class Listener(aiobreaker.CircuitBreakerListener):  # type: ignore[misc]
        def state_change(self, breaker: Any, old: Any, new: Any) -> None:
            name = {"open": "circuit_opened", "half-open": "circuit_half_opened", "closed": "circuit_closed"}
            record_event(name.get(str(getattr(new, "state", new)).split(".")[-1].lower().replace("_", "-"), "other"))

    client = _client(base_url)
    breaker = aiobreaker.CircuitBreaker(
        fail_max=5,
        timeout_duration=timedelta(seconds=5),
        exclude=[lambda exc: not _is_retryable(exc)],
        listeners=[Listener()],
    )

    def count_retry(state: Any) -> None:
        record_event("retry")

    call = tenacity.retry(
        stop=tenacity.stop_after_attempt(4) | tenacity.stop_after_delay(30),
        wait=tenacity.wait_exponential_jitter(multiplier=2, max=30),
        retry=tenacity.retry_if_exception(_is_retryable),
        before_sleep=count_retry,
        reraise=True,
    )(breaker(_fetcher(client)))
    return Built(call, client.aclose)


def _pyresilience(base_url: str) -> Built:
    _require("pyresilience")
    import httpx
    import pyresilience
    from pyresilience.presets import http_policy

    names = {
        "RETRY": "retry",
        "CIRCUIT_OPEN": "circuit_opened",
        "CIRCUIT_HALF_OPEN": "circuit_half_opened",
        "CIRCUIT_CLOSED": "circuit_closed",
        "TIMEOUT": "timeout",
    }

    def listener(event: Any) -> None:
        name = names.get(event.event_type.name)
        if name is not None:
            record_event(name)

    client = _client(base_url)
    policy = http_policy(retry_on=[httpx.HTTPStatusError, httpx.TransportError], listeners=[listener])
    call = pyresilience.resilient(**policy)(_fetcher(client))
    return Built(call, client.aclose)


def _resilient(base_url: str) -> Built:
    return demo_configs._standard(base_url)


def _plain(base_url: str) -> Built:
    return demo_configs._plain(base_url)


def _sync_client(base_url: str, resilient: bool) -> Built:
    """A synchronous httpx.Client, one thread per in-flight call (as a threaded server would)."""
    import concurrent.futures

    import httpx

    limits = httpx.Limits(max_connections=400, max_keepalive_connections=100)
    inner = httpx.HTTPTransport(limits=limits)
    if resilient:
        from resilient.httpx import ResilientTransport

        transport: Any = ResilientTransport(inner=inner)
    else:
        transport = inner
    client = httpx.Client(base_url=base_url, timeout=TIMEOUT, transport=transport)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=400)

    def get(key: int) -> str:
        status: int = client.get(f"/item/{key}").status_code
        return "ok" if status < 400 else f"http_{status}"

    async def call(key: int) -> str:
        # The caller's context goes with the call, so that the runner sees the policies' events.
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(pool, ctx.run, get, key)

    async def aclose() -> None:
        pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(client.close)

    return Built(call, aclose)


PEERS: list[Config] = [
    Config("plain", "plain httpx", "a bare httpx.AsyncClient", _plain),
    Config("naive", "tenacity naive", "tenacity: 3 attempts, no wait", _tenacity_naive),
    Config(
        "tenacity-aiobreaker",
        "tenacity + aiobreaker",
        "tenacity (4 attempts, exponential jitter from 2 s) around aiobreaker (5 failures, 5 s)",
        _tenacity_aiobreaker,
        breaker=True,
    ),
    Config(
        "pyresilience",
        "pyresilience",
        "pyresilience http_policy(): 3 attempts from 0.5 s, breaker 5 failures / 30 s, timeout 10 s",
        _pyresilience,
        breaker=True,
    ),
    Config(
        "standard",
        "resilient",
        "resilient AsyncResilientTransport(standard_pipeline())",
        _resilient,
        breaker=True,
        requires=("resilient.httpx",),
    ),
    Config(
        "hedging",
        "resilient hedging",
        "resilient AsyncResilientTransport(standard_hedging_pipeline())",
        lambda base_url: demo_configs._hedging(base_url),
        breaker=True,
        requires=("resilient.httpx",),
    ),
]

#: ``--sync``: the synchronous clients, one thread per in-flight call.
SYNC_PEERS: list[Config] = [
    Config("plain", "plain httpx.Client", "a bare httpx.Client in a thread per call", lambda u: _sync_client(u, False)),
    Config(
        "standard",
        "resilient sync",
        "httpx.Client(transport=ResilientTransport()) in a thread per call",
        lambda u: _sync_client(u, True),
        breaker=True,
        requires=("resilient.httpx",),
    ),
]


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios with every peer and print the comparison table."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.scenarios", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", action="append", help=f"repeatable, or 'all': {', '.join(SCENARIOS)}")
    p.add_argument("--duration", type=float, default=None, help="seconds per scenario (default 15, --quick 2)")
    p.add_argument("--rate", type=float, default=None, help="calls per second per peer (default 200, --quick 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grace", type=float, default=None, help="seconds to let running calls finish (default 6)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 s per scenario at 100 calls/s")
    p.add_argument("--out", help="also write the demo's HTML report here")
    p.add_argument("--sync", action="store_true", help="the synchronous clients, a thread per in-flight call")
    args = p.parse_args(argv)
    duration = args.duration if args.duration is not None else (2.0 if args.quick else 15.0)
    rate = args.rate if args.rate is not None else (100.0 if args.quick else 200.0)
    grace = args.grace if args.grace is not None else (1.0 if args.quick else 6.0)
    names = list(SCENARIOS) if not args.scenario or "all" in args.scenario else args.scenario
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    import logging

    from resilient.demo.report import render_html, terminal_table

    logging.getLogger("resilient").setLevel(logging.ERROR)
    peers = SYNC_PEERS if args.sync else PEERS
    for peer in peers:
        why = peer.unavailable()
        if why:
            print(f"note: {peer.label} is skipped: {why}")
    print(f"{len(names)} scenario(s), {duration:g} s each, {rate:g} calls/s per configuration", flush=True)
    started = time.monotonic()

    async def run_all(url: str) -> list[Any]:
        runs = []
        for name in names:
            run = await run_scenario(
                SCENARIOS[name], peers, url, duration=duration, rate=rate, seed=args.seed, grace=grace
            )
            print(f"  {name}: {run.wall:.1f} s", flush=True)
            runs.append(run)
        return runs

    try:
        with Upstream() as upstream:
            runs = asyncio.run(run_all(upstream.url))
    except UpstreamError as exc:
        print(f"cannot start the upstream: {exc}", file=sys.stderr)
        return 2
    print(terminal_table(runs))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(render_html(runs, rate=rate, duration=duration, seed=args.seed, wall=time.monotonic() - started))
        print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

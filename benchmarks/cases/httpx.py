"""httpx transport overhead: one request through a MockTransport, with and without the resilient transport.

No network: the inner transport answers at once, so the difference is the
transport's own cost per request (host key, safety checks, the standard
pipeline, the deadline header).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.cases import Case

try:
    import httpx

    from resilient.httpx import AsyncResilientTransport, ResilientTransport, standard_hedging_pipeline
except ImportError:  # pragma: no cover - the httpx extra is not installed
    httpx = None  # type: ignore[assignment]


def _handler(request: Any) -> Any:
    return httpx.Response(200)


def _request() -> Any:
    return httpx.Request("GET", "http://upstream.test/items?id=1")


def _bare_async() -> Callable[[], Any]:
    transport = httpx.MockTransport(_handler)
    request = _request()
    return lambda: transport.handle_async_request(request)


def _resilient_async() -> Callable[[], Any]:
    transport = AsyncResilientTransport(inner=httpx.MockTransport(_handler))
    request = _request()
    return lambda: transport.handle_async_request(request)


def _hedging_async() -> Callable[[], Any]:
    transport = AsyncResilientTransport(standard_hedging_pipeline(), inner=httpx.MockTransport(_handler))
    request = _request()
    return lambda: transport.handle_async_request(request)


def _bare_sync() -> Callable[[], Any]:
    transport = httpx.MockTransport(_handler)
    request = _request()
    return lambda: transport.handle_request(request)


def _resilient_sync() -> Callable[[], Any]:
    transport = ResilientTransport(inner=httpx.MockTransport(_handler))
    request = _request()
    return lambda: transport.handle_request(request)


CASES: list[Case] = []
if httpx is not None:
    CASES = [
        Case("MockTransport (async)", "httpx", _bare_async, note="floor: no resilience"),
        Case("AsyncResilientTransport(standard)", "httpx", _resilient_async, ours=True),
        Case("AsyncResilientTransport(standard_hedging_pipeline())", "httpx", _hedging_async, ours=True),
        Case("MockTransport (sync)", "httpx", _bare_sync, kind="sync", note="floor: no resilience"),
        Case("ResilientTransport(standard) sync", "httpx", _resilient_sync, kind="sync", ours=True),
    ]

"""Pure ASGI middleware: load shedding, per-client rate limits, request timeouts, deadline propagation.

Works around any ASGI 3 application, and as ``app.add_middleware(...)`` in
Starlette and FastAPI; it needs neither (no ``BaseHTTPMiddleware``, no
buffering, no per-request state on the middleware object). ``lifespan`` and
``websocket`` connections pass straight through (``RateLimit`` can limit
websocket handshakes when asked). Responses produced by the middleware are
small JSON bodies such as ``{"error": "overloaded", "retry_after": 1}`` with
``content-type`` and ``content-length`` set.

* :class:`LoadShedding`: a concurrency limit with a short queue; 503 + ``Retry-After``.
* :class:`RateLimit`: token buckets per client; 429 + ``Retry-After`` + ``RateLimit-Policy``/``RateLimit``.
* :class:`RequestTimeout`: 504 if the response has not started in time; the handler is cancelled.
* :class:`DeadlinePropagation`: the caller's remaining time (``x-resilient-deadline``) becomes the handler's deadline
  (formerly ``Deadline``, a deprecated alias now: it collided with :class:`resilient.Deadline`).
* :class:`ResilienceMiddleware`: all of the above in the documented order.
* :func:`status_app`: a JSON status endpoint (opt-in, sensitive).

This module is an optional integration: ``import resilient`` never imports it.
"""

from __future__ import annotations

import warnings
from typing import Any

from resilient.asgi._common import DEFAULT_EXEMPT_PATHS, ASGIApp, Message, Receive, Scope, ScopePredicate, Send
from resilient.asgi.client import ClientIP, parse_forwarded, parse_x_forwarded_for
from resilient.asgi.combined import ResilienceMiddleware
from resilient.asgi.limits import Rate, Route, Tiers
from resilient.asgi.ratelimit import KeyedLimiter, RateLimit
from resilient.asgi.shedding import PRIORITY_CLASSES, ConcurrencyLimiter, LoadShedding
from resilient.asgi.status import policy_snapshot, status_app
from resilient.asgi.timeouts import DEFAULT_DEADLINE_HEADER, DeadlinePropagation, RequestTimeout, parse_deadline

__all__ = [
    "ASGIApp",
    "ClientIP",
    "ConcurrencyLimiter",
    "DEFAULT_DEADLINE_HEADER",
    "DEFAULT_EXEMPT_PATHS",
    "DeadlinePropagation",
    "KeyedLimiter",
    "LoadShedding",
    "Message",
    "PRIORITY_CLASSES",
    "Rate",
    "RateLimit",
    "Receive",
    "RequestTimeout",
    "ResilienceMiddleware",
    "Route",
    "Scope",
    "ScopePredicate",
    "Send",
    "Tiers",
    "parse_deadline",
    "parse_forwarded",
    "parse_x_forwarded_for",
    "policy_snapshot",
    "status_app",
]


def __getattr__(name: str) -> Any:
    """Deprecated aliases: ``Deadline`` is :class:`DeadlinePropagation`."""
    if name == "Deadline":
        warnings.warn(
            "resilient.asgi.Deadline is deprecated: use resilient.asgi.DeadlinePropagation "
            "(the old name collided with resilient.Deadline, the deadline value)",
            DeprecationWarning,
            stacklevel=2,
        )
        return DeadlinePropagation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

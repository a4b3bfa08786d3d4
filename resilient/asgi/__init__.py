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
* :class:`Deadline`: the caller's remaining time (``x-resilient-deadline``) becomes the handler's deadline.
* :class:`ResilienceMiddleware`: all of the above in the documented order.
* :func:`status_app`: a JSON status endpoint (opt-in, sensitive).

This module is an optional integration: ``import resilient`` never imports it.
"""

from __future__ import annotations

from resilient.asgi._common import DEFAULT_EXEMPT_PATHS, ASGIApp, Message, Receive, Scope, ScopePredicate, Send
from resilient.asgi.client import ClientIP, parse_forwarded, parse_x_forwarded_for
from resilient.asgi.combined import ResilienceMiddleware
from resilient.asgi.ratelimit import RateLimit
from resilient.asgi.shedding import ConcurrencyLimiter, LoadShedding
from resilient.asgi.status import policy_snapshot, status_app
from resilient.asgi.timeouts import DEFAULT_DEADLINE_HEADER, Deadline, RequestTimeout, parse_deadline

__all__ = [
    "ASGIApp",
    "ClientIP",
    "ConcurrencyLimiter",
    "DEFAULT_DEADLINE_HEADER",
    "DEFAULT_EXEMPT_PATHS",
    "Deadline",
    "LoadShedding",
    "Message",
    "RateLimit",
    "Receive",
    "RequestTimeout",
    "ResilienceMiddleware",
    "Scope",
    "ScopePredicate",
    "Send",
    "parse_deadline",
    "parse_forwarded",
    "parse_x_forwarded_for",
    "policy_snapshot",
    "status_app",
]

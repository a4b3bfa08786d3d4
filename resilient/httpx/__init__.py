"""httpx integration: resilient clients in one line.

``httpx.AsyncClient(transport=AsyncResilientTransport())`` puts every request
of the client through :func:`standard_pipeline`, the defaults of
Microsoft.Extensions.Http.Resilience's standard handler (concurrency limit,
total timeout, retries with jittered exponential backoff honouring
``Retry-After``, a circuit breaker per host, attempt timeout), with one
deliberate deviation: the breaker opens at a failure ratio of 0.5, not 0.1
(see :class:`StandardPipeline`).

The transport wraps any ``httpx.AsyncBaseTransport`` (``ResilientTransport``:
any ``httpx.BaseTransport``) and guarantees, whatever the pipeline:

* only idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE), or
  requests carrying an ``Idempotency-Key`` header, are ever sent twice, unless
  ``retry_non_idempotent=True``; a body that is a one-shot stream is never
  sent twice;
* a transient failure response (408, 429, 5xx) that is going to be
  retried is read into memory (at most ``max_drain_bytes``, 64 KiB) and its
  connection released *before* the backoff, so retries never starve the
  connection pool; a longer one is not read on and not retried: it is
  handed back intact, like the last one;
* other responses (successes, the last attempt's, those of a pipeline
  without a :class:`~resilient.Retry`) are passed through untouched: never
  buffered, so ``client.stream(...)`` streams them;
* the remaining deadline (:func:`resilient.deadline`, clamped by the
  pipeline's own timeouts) caps httpx's timeouts and is sent downstream in
  the ``x-resilient-deadline`` header, in seconds (``"1.234"``), on a copy
  of the request: the caller's ``Request`` is never changed;
* the outcome is a normal httpx outcome: after the last retry the last
  :class:`httpx.Response` is returned (call ``raise_for_status()`` as usual),
  transport errors re-raise the last httpx exception with a note, and the
  policies' own refusals and timeouts are raised as classes that are both
  the resilient error and an httpx one (:class:`CircuitOpenError`,
  :class:`BulkheadFullError`, :class:`RateLimitedError`,
  :class:`RejectedError`: :class:`httpx.TransportError`;
  :class:`TimeoutException`: :class:`httpx.TimeoutException`), so either
  ``except resilient.CircuitOpenError`` or ``except httpx.HTTPError``
  catches them;
* events carry the method, host, port and status code in ``extras``
  (``http.request.method``, ``server.address``, ``server.port``,
  ``http.response.status_code``), never the path, query, userinfo or header
  values.
"""

from __future__ import annotations

from resilient.extras import require_extra

# The extra's packages first: without them, the error names the extra to install.
require_extra("resilient.httpx", "httpx", "httpx", "sniffio")

from resilient.httpx._errors import (
    BulkheadFullError,
    CircuitOpenError,
    RateLimitedError,
    RejectedError,
    TimeoutException,
    as_httpx_error,
)
from resilient.httpx._pacing import MAX_RESET, HeaderPacing, RateLimitHeaders, parse_rate_limit_headers
from resilient.httpx._rules import (
    IDEMPOTENT_METHODS,
    RETRY_AFTER_HEADERS,
    TRANSIENT_STATUSES,
    authority,
    http_retry,
    is_transient_error,
    parse_retry_after,
    retry_after_hint,
    should_retry_error,
    should_retry_response,
)
from resilient.httpx._standard import StandardPipeline, deadline_timeout, standard_pipeline
from resilient.httpx._transport import AsyncResilientTransport, ResilientTransport

__all__ = [
    "IDEMPOTENT_METHODS",
    "MAX_RESET",
    "RETRY_AFTER_HEADERS",
    "TRANSIENT_STATUSES",
    "AsyncResilientTransport",
    "BulkheadFullError",
    "CircuitOpenError",
    "HeaderPacing",
    "RateLimitHeaders",
    "RateLimitedError",
    "RejectedError",
    "ResilientTransport",
    "StandardPipeline",
    "TimeoutException",
    "as_httpx_error",
    "authority",
    "deadline_timeout",
    "http_retry",
    "is_transient_error",
    "parse_rate_limit_headers",
    "parse_retry_after",
    "retry_after_hint",
    "should_retry_error",
    "should_retry_response",
    "standard_pipeline",
]

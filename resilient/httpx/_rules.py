"""Which requests may be sent again, which outcomes are transient, Retry-After; the per-request state."""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from datetime import UTC
from typing import Any

import httpx

from resilient.backoff import Backoff, exponential
from resilient.clock import Clock
from resilient.errors import RejectedError, TimeoutError
from resilient.events import EventSite, ExtraValue, Listener
from resilient.policy import OnArg, exception_predicate
from resilient.retry import GiveUpHook, Retry, RetryBudgetLike
from resilient.validate import check_int

#: Methods that RFC 9110 defines as idempotent: safe to send twice.
IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

#: Statuses treated as transient failures: 408, 429 and every 5xx (as Polly
#: and Microsoft.Extensions.Http.Resilience do).
TRANSIENT_STATUSES: frozenset[int] = frozenset({408, 429, *range(500, 600)})


# -- per-request state ---------------------------------------------------------


class _Call:
    """What the transport knows about the request in flight.

    It travels in a context variable so that the retry predicates, the
    event site and the attempt function (all built once per host) can see
    the request they are working for.
    """

    __slots__ = (
        "error",
        "host",
        "max_sends",
        "port",
        "request",
        "response",
        "retryable",
        "sent",
        "slow_failure",
        "status",
        "timeouts",
    )

    def __init__(self, request: httpx.Request, retryable: bool, host: str, port: int, max_sends: int = 1) -> None:
        self.request = request
        #: Whether the request may be sent again (method, body; False once a
        #: failure body was too long to drain).
        self.retryable = retryable
        #: How many times the pipeline may send it at most (its retries).
        self.max_sends = max_sends
        self.host = host
        self.port = port
        self.sent = 0
        #: Whether the last failed attempt took much longer than the host's usual answer.
        self.slow_failure = False
        self.status: int | None = None
        self.response: httpx.Response | None = None
        self.error: Exception | None = None
        self.timeouts: Mapping[str, Any] | None = None


_current_call: ContextVar[_Call | None] = ContextVar("resilient_httpx_call", default=None)

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _host_port(url: httpx.URL) -> tuple[str, int]:
    port = url.port
    if port is None:
        port = _DEFAULT_PORTS.get(url.scheme, 0)
    return url.host, port


def authority(request: httpx.Request) -> str:
    """The default host key: ``scheme://host:port`` (default port filled in).

    Breakers and limiters of :func:`standard_pipeline` are kept per key, so
    ``https://api.example.com`` and ``https://api.example.com:443`` share
    one, and no path, query or userinfo ever reaches a key.
    """
    url = request.url
    host, port = _host_port(url)
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{url.scheme}://{host}:{port}"


def _replayable(stream: Any) -> bool:
    """Whether the request body can be sent again."""
    if isinstance(stream, httpx.ByteStream):
        return True
    fields = getattr(stream, "fields", None)
    if type(stream).__name__ == "MultipartStream" and fields is not None:
        # httpx seeks each file back to 0 before sending it again; a file
        # that cannot seek would be sent empty.
        for field in fields:
            file = getattr(field, "file", None)
            if file is None or isinstance(file, str | bytes):
                continue
            seekable = getattr(file, "seekable", None)
            if not hasattr(file, "seek") or (callable(seekable) and not seekable()):
                return False
        return True
    return False


def _may_resend(request: httpx.Request, retry_non_idempotent: bool) -> bool:
    if not (request.method in IDEMPOTENT_METHODS or retry_non_idempotent or "idempotency-key" in request.headers):
        return False
    return _replayable(request.stream)


# -- predicates and hints --------------------------------------------------------


def is_transient_error(exc: Exception) -> bool:
    """Whether ``exc`` is a transient failure worth retrying (when the request allows it).

    True for :class:`httpx.TransportError` (connect errors, read errors,
    remote protocol errors, httpx timeouts...) except the ones that a retry
    cannot fix (:class:`httpx.UnsupportedProtocol`,
    :class:`httpx.LocalProtocolError`), and for :class:`resilient.TimeoutError`
    (an attempt that timed out), as Microsoft's ``IsTransientHttpException``
    does. :class:`httpx.InvalidURL` is not a transport error.
    """
    if isinstance(exc, RejectedError):
        # A rejection (open circuit, full bulkhead, local limit) is a decision, not a fault: the
        # transport raises it as an httpx.TransportError too, which must not make it retryable.
        return False
    if isinstance(exc, httpx.TransportError):
        return not isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError)
    return isinstance(exc, TimeoutError)


def should_retry_error(exc: Exception) -> bool:
    """``on=`` predicate for a :class:`~resilient.Retry` under a resilient transport.

    A transient error (:func:`is_transient_error`) of a request that may be
    sent again (idempotent, or with an ``Idempotency-Key``, and with a body
    that can be replayed).
    """
    if not is_transient_error(exc):
        return False
    call = _current_call.get()
    return call is None or call.retryable


def _status_predicate(statuses: frozenset[int]) -> Callable[[Any], bool]:
    def should_retry(response: Any) -> bool:
        if getattr(response, "status_code", None) not in statuses:
            return False
        call = _current_call.get()
        return call is None or call.retryable

    return should_retry


def should_retry_response(response: httpx.Response) -> bool:
    """``on_result=`` predicate: a transient status (408, 429, 5xx) of a request that may be sent again."""
    return _retry_transient(response)


_retry_transient = _status_predicate(TRANSIENT_STATUSES)

_DELAY_SECONDS = re.compile(r"\s*(\d+(?:\.\d+)?)\s*")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait according to a ``Retry-After`` header value, or ``None``.

    Accepts delay-seconds (``"120"``, leniently ``"1.5"``) and HTTP dates
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``; a date in the past means 0).
    Anything else (negative numbers, garbage, values longer than 64
    characters) gives ``None``: the backoff applies. Huge values are returned
    as they are; :class:`~resilient.Retry` clamps them to its ``max_delay``.

    Args:
        value: the header value.
        now: the current Unix time, for tests (default: ``time.time()``).
    """
    if not value or len(value) > 64:
        return None
    m = _DELAY_SECONDS.fullmatch(value)
    if m is not None:
        return float(m.group(1))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        delta = when.timestamp() - (time.time() if now is None else now)
    except (OverflowError, OSError, ValueError):
        return None
    if math.isnan(delta):
        return None
    return max(0.0, delta)


def _parse_milliseconds(value: str) -> float | None:
    """Seconds from a ``retry-after-ms`` style value: a non-negative number of milliseconds."""
    if len(value) > 64:
        return None
    m = _DELAY_SECONDS.fullmatch(value)
    return None if m is None else float(m.group(1)) / 1000.0


#: The throttle headers :func:`retry_after_hint` reads, first sane one wins:
#: the standard one, then the millisecond ones (Azure OpenAI's and Cosmos
#: DB's ``retry-after-ms``, Azure Resource Manager's ``x-ms-retry-after-ms``),
#: then gRPC's pushback (milliseconds; seen on gRPC-over-HTTP gateways).
RETRY_AFTER_HEADERS: tuple[str, ...] = (
    "retry-after",
    "retry-after-ms",
    "x-ms-retry-after-ms",
    "grpc-retry-pushback-ms",
)


def _throttle_delay(headers: httpx.Headers, now: float | None = None) -> float | None:
    """Seconds the first sane throttle header asks for, in :data:`RETRY_AFTER_HEADERS` order.

    A header sent more than once is not trusted (two values: which one?) and
    is skipped like a malformed one; the next header is read instead.
    """
    for name in RETRY_AFTER_HEADERS:
        values = headers.get_list(name)
        if len(values) != 1:
            continue
        value = values[0]
        seconds = parse_retry_after(value, now=now) if name == "retry-after" else _parse_milliseconds(value)
        if seconds is not None:
            return seconds
    return None


def retry_after_hint(outcome: Any) -> float | None:
    """``delay_hint=`` for :class:`~resilient.Retry`: the response's throttle header, if sane.

    Reads ``Retry-After``, then ``retry-after-ms``, ``x-ms-retry-after-ms``
    and ``grpc-retry-pushback-ms`` (milliseconds), and takes the first one
    that is present, sent once and well formed; a negative, non-numeric or
    repeated value is skipped (the backoff applies when none is left). A
    huge value is returned as it is: :class:`~resilient.Retry` clamps it to
    its ``max_delay`` (or gives up past its ``max_hint``).

    For a rejection (:class:`~resilient.RejectedError`: an open circuit, a
    rate limit), its ``retry_after``, so that a retry that retries rejections
    waits until the policy may admit the call again.
    """
    if isinstance(outcome, httpx.Response):
        return _throttle_delay(outcome.headers)
    if isinstance(outcome, RejectedError):
        return outcome.retry_after
    return None


def http_retry(
    max_retries: int = 3,
    *,
    backoff: Backoff | Callable[[int], float] | Any | None = None,
    max_delay: float | None = 30.0,
    max_elapsed: float | None = None,
    statuses: Iterable[int] | None = None,
    on: OnArg | None = None,
    on_give_up: GiveUpHook | None = None,
    honour_retry_after: bool = True,
    max_hint: float | None = None,
    budget: RetryBudgetLike | None = None,
    clock: Clock | None = None,
    name: str | None = None,
    listeners: Iterable[Listener] = (),
) -> Retry:
    """A :class:`~resilient.Retry` that knows HTTP, for custom pipelines.

    It retries transient errors (:func:`is_transient_error`), the exceptions
    ``on`` matches, and responses whose status is in ``statuses``, only for
    requests the transport allows to be sent again, and waits what
    ``Retry-After`` says (clamped to ``max_delay``, or judged by
    ``max_hint``) when the response has one (or what a rejection's ``retry_after`` says, for a rejection ``on``
    retries, such as :class:`~resilient.CircuitOpenError`).

    Args:
        max_retries: retries after the first attempt (``3``: four attempts).
        backoff: default ``exponential(2.0, jitter="decorrelated")`` (Polly's
            exponential backoff with jitter, as Microsoft's handler uses).
        max_delay: cap on any delay, including ``Retry-After``.
        max_elapsed: give up instead of sleeping past this many seconds since
            the first attempt started (the total budget of a long horizon,
            e.g. a webhook delivery); ``None``: no limit.
        statuses: statuses to retry; ``None`` (the default) means
            :data:`TRANSIENT_STATUSES` (408, 429, 5xx).
        on: more exceptions to retry, besides the transient ones: a type, a
            tuple of types or a predicate (e.g. ``CircuitOpenError`` when the
            breaker is inside the retry and a long horizon may wait it out).
            The request must still be one that may be sent again.
        on_give_up: called with a :class:`~resilient.GiveUp` when the retry
            gives up on a retryable failure (see :class:`~resilient.Retry`).
        honour_retry_after: use the ``Retry-After`` header when present.
        max_hint: ``None``: a ``Retry-After`` is clamped to ``max_delay``. A
            number: a ``Retry-After`` up to ``max_hint`` seconds is waited in
            full, a longer one gives up at once instead of asking again before
            the server said (see :class:`~resilient.Retry`).
        budget: an optional shared :class:`~resilient.RetryBudget`.
        clock: time source (tests: ``FakeClock``).
        name: shown in notes, events and status.
        listeners: event listeners for this policy only.
    """
    check_int(max_retries, "max_retries", minimum=0)
    status_set = TRANSIENT_STATUSES if statuses is None else _check_statuses(statuses)
    if backoff is None:
        backoff = exponential(2.0, max_delay=max_delay if max_delay is not None else 30.0, jitter="decorrelated")
    on_result = _retry_transient if status_set == TRANSIENT_STATUSES else _status_predicate(status_set)
    return Retry(
        max_retries + 1,
        backoff=backoff,
        on=should_retry_error if on is None else _error_predicate(exception_predicate(on)),
        on_result=on_result,
        max_delay=max_delay,
        max_elapsed=max_elapsed,
        delay_hint=retry_after_hint if honour_retry_after else None,
        max_hint=max_hint,
        budget=budget,
        on_give_up=on_give_up,
        clock=clock,
        name=name,
        listeners=listeners,
    )


def _error_predicate(extra: Callable[[Exception], bool]) -> Callable[[Exception], bool]:
    """:func:`should_retry_error`, widened to the exceptions ``extra`` matches."""

    def should_retry(exc: Exception) -> bool:
        if not (is_transient_error(exc) or extra(exc)):
            return False
        call = _current_call.get()
        return call is None or call.retryable

    return should_retry


def _check_statuses(statuses: Iterable[int], param: str = "statuses") -> frozenset[int]:
    if isinstance(statuses, str | bytes) or not isinstance(statuses, Iterable):
        raise TypeError(f"{param} must be an iterable of HTTP status codes, got {statuses!r}")
    result = frozenset(statuses)
    for code in result:
        if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
            raise ValueError(f"{param} must contain HTTP status codes 100..599, got {code!r}")
    return result


# -- events -----------------------------------------------------------------------


class _HttpSite(EventSite):
    """An event site that adds the request's method, host, port and status to every event."""

    __slots__ = ()

    def context_extras(self, extras: Mapping[str, ExtraValue] | None) -> Mapping[str, ExtraValue] | None:
        """The policy's extras, after the request's method, host, port and (once known) status."""
        call = _current_call.get()
        if call is None:
            return extras
        merged: dict[str, ExtraValue] = {
            "http.request.method": call.request.method,
            "server.address": call.host,
            "server.port": call.port,
        }
        if call.status is not None:
            merged["http.response.status_code"] = call.status
        if extras:
            merged.update(extras)
        return merged

    def child(self, pipeline: str | None, listeners: Iterable[Listener]) -> EventSite:
        return _HttpSite(
            operation=self.operation,
            pipeline=pipeline if pipeline is not None else self.pipeline,
            listeners=(*tuple(listeners), *self.listeners),
        )

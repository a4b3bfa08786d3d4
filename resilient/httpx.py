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
* a transient failure response (408, 429, 5xx) to a request that may be
  retried is read into memory and its connection released *before* the
  backoff, so retries never starve the connection pool; the response handed
  back (if it is the last one) is intact and readable;
* other responses, and every response of ``client.stream(...)`` that
  succeeds, are passed through untouched: never buffered;
* the remaining deadline (:func:`resilient.deadline`, clamped by the
  pipeline's own timeouts) caps httpx's timeouts and is sent downstream in
  the ``x-resilient-deadline`` header, in seconds (``"1.234"``);
* the outcome is a normal httpx outcome: after the last retry the last
  :class:`httpx.Response` is returned (call ``raise_for_status()`` as usual),
  transport errors re-raise the last httpx exception with a note, and the
  policies' own refusals (:class:`~resilient.CircuitOpenError`,
  :class:`~resilient.BulkheadFullError`, :class:`~resilient.RateLimitedError`,
  :class:`~resilient.TimeoutError`) are raised as themselves;
* events carry the method, host, port and status code in ``extras``
  (``http.request.method``, ``server.address``, ``server.port``,
  ``http.response.status_code``), never the path, query, userinfo or header
  values.
"""

from __future__ import annotations

import email.utils
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from datetime import UTC
from types import EllipsisType, TracebackType
from typing import Any, Literal, cast

import httpx
from cachetools import LRUCache

from resilient.backoff import Backoff, exponential
from resilient.clock import SYSTEM_CLOCK, Clock
from resilient.deadline import Deadline
from resilient.deadline import _current as _current_deadline
from resilient.errors import TimeoutError
from resilient.events import EventSite, ExtraValue, Listener, Severity
from resilient.policy import AsyncFn, AsyncWrapped, Pipeline, Policy, SyncFn
from resilient.retry import Retry, RetryBudgetLike
from resilient.timeout import Timeout

__all__ = [
    "IDEMPOTENT_METHODS",
    "TRANSIENT_STATUSES",
    "AsyncResilientTransport",
    "ResilientTransport",
    "StandardPipeline",
    "authority",
    "http_retry",
    "is_transient_error",
    "parse_retry_after",
    "retry_after_hint",
    "should_retry_error",
    "should_retry_response",
    "standard_pipeline",
]

#: Methods that RFC 9110 defines as idempotent: safe to send twice.
IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

#: Statuses treated as transient failures: 408, 429 and every 5xx (as Polly
#: and Microsoft.Extensions.Http.Resilience do).
TRANSIENT_STATUSES: frozenset[int] = frozenset({408, 429, *range(500, 600)})

PipelineArg = Policy | Callable[[str], Policy]


# -- per-request state ---------------------------------------------------------


class _Call:
    """What the transport knows about the request in flight.

    It travels in a context variable so that the retry predicates, the
    event site and the attempt function (all built once per host) can see
    the request they are working for.
    """

    __slots__ = ("error", "host", "port", "request", "response", "retryable", "sent", "status", "timeouts")

    def __init__(self, request: httpx.Request, retryable: bool, host: str, port: int) -> None:
        self.request = request
        self.retryable = retryable
        self.host = host
        self.port = port
        self.sent = 0
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


def retry_after_hint(outcome: Any) -> float | None:
    """``delay_hint=`` for :class:`~resilient.Retry`: the response's ``Retry-After``, if sane."""
    if isinstance(outcome, httpx.Response):
        return parse_retry_after(outcome.headers.get("retry-after"))
    return None


def http_retry(
    max_retries: int = 3,
    *,
    backoff: Backoff | Callable[[int], float] | Any | None = None,
    max_delay: float | None = 30.0,
    statuses: Iterable[int] = TRANSIENT_STATUSES,
    honour_retry_after: bool = True,
    budget: RetryBudgetLike | None = None,
    clock: Clock | None = None,
    name: str | None = None,
    listeners: Iterable[Listener] = (),
) -> Retry:
    """A :class:`~resilient.Retry` that knows HTTP, for custom pipelines.

    It retries transient errors (:func:`is_transient_error`) and responses
    whose status is in ``statuses``, only for requests the transport allows
    to be sent again, and waits what ``Retry-After`` says (clamped to
    ``max_delay``) when the response has one.

    Args:
        max_retries: retries after the first attempt (``3``: four attempts).
        backoff: default ``exponential(2.0, jitter="decorrelated")`` (Polly's
            exponential backoff with jitter, as Microsoft's handler uses).
        max_delay: cap on any delay, including ``Retry-After``.
        statuses: statuses to retry (default 408, 429, 5xx).
        honour_retry_after: use the ``Retry-After`` header when present.
        budget: an optional shared :class:`~resilient.RetryBudget`.
        clock: time source (tests: ``FakeClock``).
        name: shown in notes, events and status.
        listeners: event listeners for this policy only.
    """
    if isinstance(max_retries, bool) or not isinstance(max_retries, int):
        raise TypeError(f"max_retries must be an int >= 0, got {max_retries!r}")
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries!r}")
    status_set = _check_statuses(statuses)
    if backoff is None:
        backoff = exponential(2.0, max_delay=max_delay if max_delay is not None else 30.0, jitter="decorrelated")
    on_result = _retry_transient if status_set == TRANSIENT_STATUSES else _status_predicate(status_set)
    return Retry(
        max_retries + 1,
        backoff=backoff,
        on=should_retry_error,
        on_result=on_result,
        max_delay=max_delay,
        delay_hint=retry_after_hint if honour_retry_after else None,
        budget=budget,
        clock=clock,
        name=name,
        listeners=listeners,
    )


def _check_statuses(statuses: Iterable[int]) -> frozenset[int]:
    if isinstance(statuses, str | bytes) or not isinstance(statuses, Iterable):
        raise TypeError(f"statuses must be an iterable of HTTP status codes, got {statuses!r}")
    result = frozenset(statuses)
    for code in result:
        if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
            raise ValueError(f"statuses must contain HTTP status codes 100..599, got {code!r}")
    return result


# -- events -----------------------------------------------------------------------


class _HttpSite(EventSite):
    """An event site that adds the request's method, host, port and status to every event."""

    __slots__ = ()

    def emit(
        self,
        policy_listeners: tuple[Listener, ...],
        name: str,
        severity: Severity,
        policy_type: str,
        policy: str | None,
        *,
        attempt: int | None = None,
        duration: float | None = None,
        exception: BaseException | type[BaseException] | None = None,
        extras: Mapping[str, ExtraValue] | None = None,
    ) -> None:
        call = _current_call.get()
        if call is not None:
            merged: dict[str, ExtraValue] = {
                "http.request.method": call.request.method,
                "server.address": call.host,
                "server.port": call.port,
            }
            if call.status is not None:
                merged["http.response.status_code"] = call.status
            if extras:
                merged.update(extras)
            extras = merged
        super().emit(
            policy_listeners,
            name,
            severity,
            policy_type,
            policy,
            attempt=attempt,
            duration=duration,
            exception=exception,
            extras=extras,
        )

    def child(self, pipeline: str | None, listeners: Iterable[Listener]) -> EventSite:
        return _HttpSite(
            operation=self.operation,
            pipeline=pipeline if pipeline is not None else self.pipeline,
            listeners=(*tuple(listeners), *self.listeners),
        )


# -- deadline scope ---------------------------------------------------------------


class _DeadlineScope(Policy):
    """Runs the call under ``deadline(seconds)``, so that what is inside sees it.

    Placed just inside each timeout of the standard pipeline: the retry then
    never starts a backoff that outlives the total timeout, and the attempt
    sends downstream the time its caller will actually wait. Works for sync
    calls too, where it is the only timeout there is (through httpx's own
    timeouts, which the transport caps to the deadline).
    """

    policy_type = "deadline"

    def __init__(self, seconds: float, *, clock: Clock | None = None) -> None:
        super().__init__()
        self.seconds = float(seconds)
        self.clock = clock if clock is not None else SYSTEM_CLOCK

    def _wrap_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        seconds = self.seconds
        clock = self.clock
        var = _current_deadline

        async def scoped(*args: Any, **kwargs: Any) -> Any:
            now = clock.now()
            outer = var.get()
            if outer is not None and outer.expires_at - outer.clock.now() <= seconds:
                return await fn(*args, **kwargs)
            token = var.set(Deadline(now + seconds, clock))
            try:
                return await fn(*args, **kwargs)
            finally:
                var.reset(token)

        return scoped

    def _wrap_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        seconds = self.seconds
        clock = self.clock
        var = _current_deadline

        def scoped(*args: Any, **kwargs: Any) -> Any:
            now = clock.now()
            outer = var.get()
            if outer is not None and outer.expires_at - outer.clock.now() <= seconds:
                return fn(*args, **kwargs)
            token = var.set(Deadline(now + seconds, clock))
            try:
                return fn(*args, **kwargs)
            finally:
                var.reset(token)

        return scoped

    def __repr__(self) -> str:
        return f"_DeadlineScope({self.seconds})"


# -- the standard pipeline --------------------------------------------------------

_PRESETS: dict[str, dict[str, Any]] = {
    "resilient": {"failure_ratio": 0.5},
    "microsoft": {"failure_ratio": 0.1},
}


def _positive(value: Any, param: str, *, allow_none: bool = True) -> float | None:
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{param} must be a number > 0, got None")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{param} must be a number > 0{' or None' if allow_none else ''}, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{param} must be a finite number > 0{' or None' if allow_none else ''}, got {value!r}")
    return float(value)


def _has(module: str) -> bool:  # TEMPORARY until the breaker and limits branches are merged
    import importlib.util

    return importlib.util.find_spec(module) is not None


class StandardPipeline:
    """A factory of per-host pipelines with Microsoft's standard handler defaults.

    Pass it (or :func:`standard_pipeline`'s result) as ``pipeline=`` to a
    resilient transport: the transport calls it once per host key (see
    :func:`authority`) and keeps at most ``max_hosts`` pipelines, least
    recently used first out. Each host gets, outermost first:

    ========================== ======================== ====================================
    part                       default                  keyword(s)
    ========================== ======================== ====================================
    concurrency limit          1000 running, 0 queued   ``max_concurrent``, ``max_queued``
    rate limit                 off                      ``rate``, ``per``, ``burst``
    total timeout              30 s                     ``total_timeout``
    retry                      3 retries (4 attempts),  ``max_retries``, ``backoff``,
                               exponential from 2 s,    ``base_delay``, ``max_delay``,
                               decorrelated jitter,     ``statuses``, ``honour_retry_after``,
                               Retry-After honoured     ``retry_budget``
    circuit breaker            ratio 0.5 over 30 s,     ``failure_ratio``, ``sampling_duration``,
                               min 100 calls, break 5 s ``minimum_throughput``, ``break_duration``
    attempt timeout            10 s                     ``attempt_timeout``
    ========================== ======================== ====================================

    The one deliberate deviation from Microsoft: ``failure_ratio`` is 0.5,
    not 0.1. The breaker sits inside the retry, so it sees every attempt:
    during a 30 % brownout a 0.1 ratio opens the circuit (and fails every
    call) although three retries would have absorbed it; 0.5 opens only
    when most attempts fail. ``preset="microsoft"`` restores 0.1.

    Set a part's keyword to ``None`` (``max_retries=0`` for the retry) to
    leave that part out. Synchronous clients get the same pipeline without
    the two timeout policies (a blocking call cannot be interrupted): the
    timeouts become deadlines that cap httpx's own connect/read/write/pool
    timeouts and stop retries that would outlive them.

    Args:
        preset: ``"resilient"`` (default) or ``"microsoft"`` (failure ratio 0.1).
        name: prefix of the policies' names (``"httpx http://host:80 breaker"``).
        clock: time source of every part (tests: ``FakeClock``).
        listeners: event listeners attached to every host's pipeline.
    """

    def __init__(
        self,
        preset: Literal["resilient", "microsoft"] = "resilient",
        *,
        max_concurrent: int | None = 1000,
        max_queued: int = 0,
        rate: float | None = None,
        per: float = 1.0,
        burst: int | None = None,
        total_timeout: float | None = 30.0,
        max_retries: int = 3,
        backoff: Backoff | Callable[[int], float] | Any | None = None,
        base_delay: float = 2.0,
        max_delay: float | None = 30.0,
        statuses: Iterable[int] = TRANSIENT_STATUSES,
        honour_retry_after: bool = True,
        retry_budget: RetryBudgetLike | None = None,
        failure_ratio: float | EllipsisType | None = ...,
        sampling_duration: float = 30.0,
        minimum_throughput: int = 100,
        break_duration: float = 5.0,
        attempt_timeout: float | None = 10.0,
        name: str = "httpx",
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        if preset not in _PRESETS:
            raise ValueError(f"preset must be one of {tuple(_PRESETS)}, got {preset!r}")
        self.preset = preset
        if isinstance(failure_ratio, EllipsisType):
            failure_ratio = cast(float, _PRESETS[preset]["failure_ratio"])
        if max_concurrent is not None and (isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int)):
            raise TypeError(f"max_concurrent must be an int >= 1 or None, got {max_concurrent!r}")
        if max_concurrent is not None and max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1 or None, got {max_concurrent!r}")
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.rate = _positive(rate, "rate")
        self.per = _positive(per, "per", allow_none=False)
        self.burst = burst
        self.total_timeout = _positive(total_timeout, "total_timeout")
        self.attempt_timeout = _positive(attempt_timeout, "attempt_timeout")
        self.max_retries = max_retries
        self.backoff = backoff
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.statuses = _check_statuses(statuses)
        self.honour_retry_after = honour_retry_after
        self.retry_budget = retry_budget
        self.failure_ratio = failure_ratio
        self.sampling_duration = sampling_duration
        self.minimum_throughput = minimum_throughput
        self.break_duration = break_duration
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {name!r}")
        self.name = name
        self.clock = clock
        self.listeners = tuple(listeners)
        # Build once now, so that bad values fail here and not at the first request.
        self.build("validation", sync=False, _named=False)
        self.build("validation", sync=True, _named=False)

    def __call__(self, host_key: str) -> Pipeline:
        """The async pipeline for one host."""
        return self.build(host_key, sync=False)

    def build(self, host_key: str, *, sync: bool = False, _named: bool = True) -> Pipeline:
        """Build the pipeline of one host (``sync=True``: without the timeout policies)."""

        def nm(part: str) -> str | None:
            return f"{self.name} {host_key} {part}" if _named else None

        clock = self.clock
        policies: list[Policy] = []
        if self.max_concurrent is not None and _has("resilient.bulkhead"):
            policies.append(self._bulkhead(nm("concurrency")))
        if self.rate is not None:
            policies.append(self._rate_limiter(nm("rate")))
        if self.total_timeout is not None:
            if not sync:
                policies.append(Timeout(self.total_timeout, name=nm("total timeout")))
            policies.append(_DeadlineScope(self.total_timeout, clock=clock))
        if self.max_retries:
            backoff = self.backoff
            if backoff is None:
                cap = self.max_delay if self.max_delay is not None else 30.0
                backoff = exponential(self.base_delay, max_delay=cap, jitter="decorrelated")
            policies.append(
                http_retry(
                    self.max_retries,
                    backoff=backoff,
                    max_delay=self.max_delay,
                    statuses=self.statuses,
                    honour_retry_after=self.honour_retry_after,
                    budget=self.retry_budget,
                    clock=clock,
                    name=nm("retry"),
                )
            )
        elif isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {self.max_retries!r}")
        if self.failure_ratio is not None and _has("resilient.breaker"):
            policies.append(self._breaker(nm("breaker")))
        if self.attempt_timeout is not None:
            if not sync:
                policies.append(Timeout(self.attempt_timeout, name=nm("attempt timeout")))
            policies.append(_DeadlineScope(self.attempt_timeout, clock=clock))
        return Pipeline(*policies, name=f"{self.name} {host_key}" if _named else None, listeners=self.listeners)

    # The parts that live in modules written in parallel; imported lazily so
    # that this module works with whichever have landed.
    def _bulkhead(self, name: str | None) -> Policy:
        from resilient.bulkhead import Bulkhead  # type: ignore[import-not-found,unused-ignore]

        return cast(Policy, Bulkhead(self.max_concurrent, max_queued=self.max_queued, name=name))

    def _rate_limiter(self, name: str | None) -> Policy:
        from resilient.ratelimit import RateLimiter  # type: ignore[import-not-found,unused-ignore]

        return cast(Policy, RateLimiter(self.rate, self.per, burst=self.burst, name=name, clock=self.clock))

    def _breaker(self, name: str | None) -> Policy:
        from resilient.breaker import CircuitBreaker  # type: ignore[import-not-found,unused-ignore]

        statuses = self.statuses
        return cast(
            Policy,
            CircuitBreaker(
                name,
                failure_ratio=self.failure_ratio,
                sampling_duration=self.sampling_duration,
                minimum_throughput=self.minimum_throughput,
                break_duration=self.break_duration,
                on=is_transient_error,
                on_result=lambda r: getattr(r, "status_code", None) in statuses,
                clock=self.clock,
            ),
        )

    def __repr__(self) -> str:
        return (
            f"StandardPipeline(preset={self.preset!r}, max_concurrent={self.max_concurrent}, "
            f"total_timeout={self.total_timeout}, max_retries={self.max_retries}, "
            f"failure_ratio={self.failure_ratio}, attempt_timeout={self.attempt_timeout})"
        )


def standard_pipeline(preset: Literal["resilient", "microsoft"] = "resilient", **overrides: Any) -> StandardPipeline:
    """The standard pipeline: Microsoft's standard handler's defaults, per host.

    ``standard_pipeline()`` is what a transport uses when given no pipeline;
    ``standard_pipeline("microsoft")`` uses Microsoft's exact values
    (failure ratio 0.1); any part can be changed by keyword, e.g.
    ``standard_pipeline(attempt_timeout=2.0, max_retries=2)``. See
    :class:`StandardPipeline` for the table of defaults.
    """
    return StandardPipeline(preset, **overrides)


# -- the transports ---------------------------------------------------------------


def _check_common(
    deadline_header: str | None, max_hosts: int, key: Callable[[httpx.Request], str] | None
) -> tuple[str | None, int, Callable[[httpx.Request], str]]:
    if deadline_header is not None and (not isinstance(deadline_header, str) or not deadline_header.strip()):
        raise TypeError(f"deadline_header must be a header name or None, got {deadline_header!r}")
    if isinstance(max_hosts, bool) or not isinstance(max_hosts, int):
        raise TypeError(f"max_hosts must be an int >= 1, got {max_hosts!r}")
    if max_hosts < 1:
        raise ValueError(f"max_hosts must be >= 1, got {max_hosts!r}")
    if key is not None and not callable(key):
        raise TypeError(f"key must be a callable (request) -> str, got {key!r}")
    return deadline_header, max_hosts, key if key is not None else authority


def _check_pipeline(pipeline: Any) -> PipelineArg:
    if pipeline is None:
        return standard_pipeline()
    if isinstance(pipeline, Policy) or callable(pipeline):
        return cast(PipelineArg, pipeline)
    raise TypeError(f"pipeline must be a Policy, a callable (host key) -> Policy or None, got {pipeline!r}")


def _prepare_attempt(call: _Call, header: str | None) -> None:
    """Per attempt: send the deadline downstream and cap httpx's timeouts to it."""
    d = _current_deadline.get()
    if d is None:
        return
    left = d.expires_at - d.clock.now()
    if left <= 0:
        raise TimeoutError("resilient: the deadline expired before the request was sent", timeout=0.0)
    request = call.request
    if header is not None:
        request.headers[header] = f"{left:.3f}"
    timeouts = call.timeouts
    if timeouts is None:
        timeouts = request.extensions.get("timeout")
        call.timeouts = timeouts = timeouts if isinstance(timeouts, Mapping) else {}
    capped = {k: (left if v is None or v > left else v) for k, v in timeouts.items()} if timeouts else {}
    for k in ("connect", "read", "write", "pool"):
        capped.setdefault(k, left)
    request.extensions = {**request.extensions, "timeout": capped}


class _TransportBase:
    """What the sync and async transports share: configuration and host keys."""

    def __init__(
        self,
        pipeline: PipelineArg | None,
        deadline_header: str | None,
        retry_non_idempotent: bool,
        max_hosts: int,
        key: Callable[[httpx.Request], str] | None,
    ) -> None:
        self.pipeline = _check_pipeline(pipeline)
        self.deadline_header, self.max_hosts, self._key = _check_common(deadline_header, max_hosts, key)
        self.retry_non_idempotent = bool(retry_non_idempotent)
        # Transient responses that will be retried are buffered, so that
        # their connection goes back to the pool before the backoff.
        self._drain = self.pipeline.statuses if isinstance(self.pipeline, StandardPipeline) else TRANSIENT_STATUSES
        self._site = _HttpSite(operation="http")

    def _new_call(self, request: httpx.Request) -> _Call:
        host, port = _host_port(request.url)
        # Fast path: GET with an empty body.
        if request.method in IDEMPOTENT_METHODS and type(request.stream) is httpx.ByteStream:
            retryable = True
        else:
            retryable = _may_resend(request, self.retry_non_idempotent)
        return _Call(request, retryable, host, port)

    def _build_for(self, host_key: str, sync: bool) -> Policy:
        pipeline = self.pipeline
        if isinstance(pipeline, Policy):
            return pipeline
        if isinstance(pipeline, StandardPipeline):
            return pipeline.build(host_key, sync=sync)
        policy = pipeline(host_key)
        if not isinstance(policy, Policy):
            raise TypeError(f"the pipeline factory must return a Policy, got {policy!r} for {host_key!r}")
        return policy


class AsyncResilientTransport(httpx.AsyncBaseTransport, _TransportBase):
    """An ``httpx.AsyncBaseTransport`` that sends each request through a resilience pipeline.

    ``httpx.AsyncClient(transport=AsyncResilientTransport())``.

    Args:
        pipeline: a :class:`~resilient.Policy` (one for every host), a
            callable ``host_key -> Policy`` called once per host key (keep
            state such as breakers per host), or ``None`` for
            :func:`standard_pipeline`.
        inner: the transport that sends the requests; default
            ``httpx.AsyncHTTPTransport()``. Pass your own to set
            ``limits``, ``http2``, ``verify``, proxies...: an ``AsyncClient``
            given a transport ignores those options. Closed with this one.
        deadline_header: header carrying the remaining deadline downstream
            (seconds, ``"1.234"``), or ``None`` to send none.
        retry_non_idempotent: also retry POST, PATCH... (whose body is
            replayable). Without it, those are retried only with an
            ``Idempotency-Key`` header.
        max_hosts: how many per-host pipelines to keep (LRU); an evicted
            host starts again with a fresh breaker.
        key: the host key of a request; default :func:`authority`
            (``scheme://host:port``).
    """

    def __init__(
        self,
        pipeline: PipelineArg | None = None,
        *,
        inner: httpx.AsyncBaseTransport | None = None,
        deadline_header: str | None = "x-resilient-deadline",
        retry_non_idempotent: bool = False,
        max_hosts: int = 1024,
        key: Callable[[httpx.Request], str] | None = None,
    ) -> None:
        _TransportBase.__init__(self, pipeline, deadline_header, retry_non_idempotent, max_hosts, key)
        if inner is not None and not isinstance(inner, httpx.AsyncBaseTransport):
            raise TypeError(f"inner must be an httpx.AsyncBaseTransport, got {inner!r}")
        self.inner: httpx.AsyncBaseTransport = inner if inner is not None else httpx.AsyncHTTPTransport()
        self._attempt = self._make_attempt()
        self._single: AsyncWrapped | None = None
        if isinstance(self.pipeline, Policy):
            self._single = self.pipeline._wrap(self._attempt, self._site, True)
        self._hosts: LRUCache[str, AsyncWrapped] = LRUCache(maxsize=self.max_hosts)

    def _make_attempt(self) -> Callable[[_Call], Any]:
        inner = self.inner
        header = self.deadline_header
        drain = self._drain
        deadline_var = _current_deadline

        async def attempt(call: _Call) -> httpx.Response:
            if call.sent:
                previous = call.response
                if not call.retryable:
                    # The pipeline retries what the transport forbids (a
                    # custom Retry without the HTTP predicates): give back
                    # the first outcome instead of sending the request again.
                    if previous is not None:
                        return previous
                    assert call.error is not None
                    raise call.error
                if previous is not None:
                    call.response = None
                    await previous.aclose()
            call.sent += 1
            call.status = None
            call.error = None
            if deadline_var.get() is not None:
                _prepare_attempt(call, header)
            try:
                response = await inner.handle_async_request(call.request)
            except Exception as exc:
                call.error = exc
                raise
            status = call.status = response.status_code
            if status in drain and call.retryable:
                response = await _abuffer(response)
            call.response = response
            return response

        return attempt

    def _wrapped_for(self, request: httpx.Request) -> AsyncWrapped:
        if self._single is not None:
            return self._single
        host_key = self._key(request)
        wrapped = self._hosts.get(host_key)
        if wrapped is None:
            wrapped = self._build_for(host_key, False)._wrap(self._attempt, self._site, True)
            self._hosts[host_key] = wrapped
        return wrapped

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the pipeline; see the class docs for the outcome."""
        wrapped = self._wrapped_for(request)
        call = self._new_call(request)
        token = _current_call.set(call)
        try:
            response: httpx.Response = await wrapped(call)
        except BaseException:
            if call.response is not None:
                await call.response.aclose()
            raise
        finally:
            _current_call.reset(token)
        if response is not call.response and call.response is not None:
            await call.response.aclose()
        return response

    async def aclose(self) -> None:
        """Close the inner transport."""
        await self.inner.aclose()

    async def __aenter__(self) -> AsyncResilientTransport:
        await self.inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.inner.__aexit__(exc_type, exc_value, traceback)

    def __repr__(self) -> str:
        return f"AsyncResilientTransport({self.pipeline!r}, inner={self.inner!r})"


class ResilientTransport(httpx.BaseTransport, _TransportBase):
    """The synchronous twin of :class:`AsyncResilientTransport`, for ``httpx.Client``.

    Same arguments, with ``inner`` an ``httpx.BaseTransport`` (default
    ``httpx.HTTPTransport()``). A running blocking call cannot be
    interrupted, so the standard pipeline has no timeout policies here:
    the total and attempt timeouts become deadlines that cap httpx's own
    connect/read/write/pool timeouts and stop retries that would outlive
    them. A custom pipeline must be usable synchronously (no ``Timeout``).
    Safe to share between threads.
    """

    def __init__(
        self,
        pipeline: PipelineArg | None = None,
        *,
        inner: httpx.BaseTransport | None = None,
        deadline_header: str | None = "x-resilient-deadline",
        retry_non_idempotent: bool = False,
        max_hosts: int = 1024,
        key: Callable[[httpx.Request], str] | None = None,
    ) -> None:
        _TransportBase.__init__(self, pipeline, deadline_header, retry_non_idempotent, max_hosts, key)
        if inner is not None and not isinstance(inner, httpx.BaseTransport):
            raise TypeError(f"inner must be an httpx.BaseTransport, got {inner!r}")
        self.inner: httpx.BaseTransport = inner if inner is not None else httpx.HTTPTransport()
        self._attempt = self._make_attempt()
        self._single: SyncFn | None = None
        if isinstance(self.pipeline, Policy):
            self._single = self.pipeline._wrap(self._attempt, self._site, False)
        self._hosts: LRUCache[str, SyncFn] = LRUCache(maxsize=self.max_hosts)
        self._lock = threading.Lock()

    def _make_attempt(self) -> Callable[[_Call], httpx.Response]:
        inner = self.inner
        header = self.deadline_header
        drain = self._drain
        deadline_var = _current_deadline

        def attempt(call: _Call) -> httpx.Response:
            if call.sent:
                previous = call.response
                if not call.retryable:
                    if previous is not None:
                        return previous
                    assert call.error is not None
                    raise call.error
                if previous is not None:
                    call.response = None
                    previous.close()
            call.sent += 1
            call.status = None
            call.error = None
            if deadline_var.get() is not None:
                _prepare_attempt(call, header)
            try:
                response = inner.handle_request(call.request)
            except Exception as exc:
                call.error = exc
                raise
            status = call.status = response.status_code
            if status in drain and call.retryable:
                response = _buffer(response)
            call.response = response
            return response

        return attempt

    def _wrapped_for(self, request: httpx.Request) -> SyncFn:
        if self._single is not None:
            return self._single
        host_key = self._key(request)
        with self._lock:
            wrapped = self._hosts.get(host_key)
            if wrapped is None:
                wrapped = self._build_for(host_key, True)._wrap(self._attempt, self._site, False)
                self._hosts[host_key] = wrapped
        return wrapped

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the pipeline; see the class docs for the outcome."""
        wrapped = self._wrapped_for(request)
        call = self._new_call(request)
        token = _current_call.set(call)
        try:
            response: httpx.Response = wrapped(call)
        except BaseException:
            if call.response is not None:
                call.response.close()
            raise
        finally:
            _current_call.reset(token)
        if response is not call.response and call.response is not None:
            call.response.close()
        return response

    def close(self) -> None:
        """Close the inner transport."""
        self.inner.close()

    def __enter__(self) -> ResilientTransport:
        self.inner.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self.inner.__exit__(exc_type, exc_value, traceback)

    def __repr__(self) -> str:
        return f"ResilientTransport({self.pipeline!r}, inner={self.inner!r})"


# -- buffering a response that will be retried ------------------------------------


async def _abuffer(response: httpx.Response) -> httpx.Response:
    """Read the raw body and release the connection; return an equivalent unread response."""
    stream = response.stream
    chunks: list[bytes] = []
    try:
        async for chunk in cast(httpx.AsyncByteStream, stream):
            chunks.append(chunk)
    finally:
        await cast(httpx.AsyncByteStream, stream).aclose()
    return httpx.Response(
        response.status_code,
        headers=response.headers,
        stream=httpx.ByteStream(b"".join(chunks)),
        extensions=response.extensions,
    )


def _buffer(response: httpx.Response) -> httpx.Response:
    stream = response.stream
    chunks: list[bytes] = []
    try:
        for chunk in cast(httpx.SyncByteStream, stream):
            chunks.append(chunk)
    finally:
        cast(httpx.SyncByteStream, stream).close()
    return httpx.Response(
        response.status_code,
        headers=response.headers,
        stream=httpx.ByteStream(b"".join(chunks)),
        extensions=response.extensions,
    )

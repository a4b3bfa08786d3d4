"""standard_hedging_pipeline(): Microsoft's standard hedging handler, with endpoint groups."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import httpx

from resilient.breaker import CircuitBreaker, CircuitState
from resilient.budget import RetryBudget
from resilient.clock import Clock
from resilient.concurrency import Bulkhead
from resilient.deadline import current_deadline
from resilient.errors import RejectedError
from resilient.events import EventSite
from resilient.hedge import LatencyQuantile
from resilient.httpx._rules import IDEMPOTENT_METHODS, TRANSIENT_STATUSES
from resilient.policy import AsyncWrapped, Pipeline
from resilient.timeout import Timeout
from resilient.validate import check_clock, check_int, check_number, check_seconds

__all__ = ["Endpoint", "EndpointGroup", "HedgingPipeline", "standard_hedging_pipeline"]

# A quantile delay is at most this many times the median of the same
# attempts: a tail heavier than the budget can hedge would otherwise pull the
# quantile up to the slow answers themselves, and hedging would stop exactly
# when it is needed.
MEDIAN_CAP = 4.0


class Endpoint:
    """One upstream instance: ``scheme://host:port`` (a path is not allowed), with a weight in its group."""

    __slots__ = ("host", "port", "scheme", "url", "weight")

    def __init__(self, url: str, weight: float = 1.0) -> None:
        if not isinstance(url, str):
            raise TypeError(f"endpoint must be a URL string such as 'http://10.0.0.5:8080', got {url!r}")
        try:
            parsed = httpx.URL(url)
        except Exception as exc:
            raise ValueError(f"endpoint {url!r} is not a URL: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"endpoint must be http(s)://host[:port], got {url!r}")
        if parsed.path not in ("", "/") or parsed.query:
            raise ValueError(f"endpoint must be scheme://host[:port] without a path or query, got {url!r}")
        self.scheme = parsed.scheme
        self.host = parsed.host
        self.port = parsed.port
        #: ``scheme://host:port``, as given (normalized).
        self.url = f"{parsed.scheme}://{parsed.host}" + (f":{parsed.port}" if parsed.port else "")
        #: The share of its group's traffic it gets (> 0).
        self.weight = check_number(weight, "weight")

    def __repr__(self) -> str:
        return f"Endpoint({self.url!r}, weight={self.weight:g})"


class EndpointGroup:
    """Endpoints that serve the same traffic: a zone, a region, a cluster.

    Args:
        endpoints: URLs (``"http://10.0.0.5:8080"``) or :class:`Endpoint`
            objects (with a weight inside the group); at least one.
        weight: the group's share when the pipeline's ``selection`` is
            ``"weighted"`` (ignored with ``"ordered"``).
    """

    __slots__ = ("endpoints", "weight")

    def __init__(self, endpoints: Iterable[str | Endpoint], *, weight: float = 1.0) -> None:
        if isinstance(endpoints, str):
            raise TypeError("endpoints must be a list of URLs, not one string")
        items = [e if isinstance(e, Endpoint) else Endpoint(e) for e in endpoints]
        if not items:
            raise ValueError("an endpoint group must hold at least one endpoint")
        self.endpoints: tuple[Endpoint, ...] = tuple(items)
        self.weight = check_number(weight, "weight")

    def __repr__(self) -> str:
        return f"EndpointGroup({list(self.endpoints)!r}, weight={self.weight:g})"


class _EndpointState:
    """An endpoint's own policies: a bulkhead, a breaker and an attempt timeout, built once."""

    __slots__ = ("breaker", "endpoint", "send")

    def __init__(self, endpoint: Endpoint | None, breaker: CircuitBreaker, send: AsyncWrapped) -> None:
        self.endpoint = endpoint
        self.breaker = breaker
        self.send = send

    def healthy(self) -> bool:
        return self.breaker.effective_state is not CircuitState.OPEN and self.breaker.state is not CircuitState.ISOLATED


async def _first_done(
    loop: asyncio.AbstractEventLoop,
    clock: Clock,
    tasks: dict[asyncio.Task[httpx.Response], float],
    wait: float | None,
) -> list[asyncio.Task[httpx.Response]]:
    """The tasks done once one is, or after ``wait`` seconds of ``clock`` (FIRST_COMPLETED, for less)."""
    waiter = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    for task in tasks:
        task.add_done_callback(wake)
    handle = clock.call_at(clock.now() + wait, wake) if wait is not None else None
    try:
        await waiter
    finally:
        if handle is not None:
            handle.cancel()
        for task in tasks:
            task.remove_done_callback(wake)
    return [task for task in tasks if task.done()]


def _is_failure(response: Any) -> bool:
    return isinstance(response, httpx.Response) and response.status_code in TRANSIENT_STATUSES


class HedgingPipeline:
    """The pipeline of :func:`standard_hedging_pipeline`, for :class:`~resilient.httpx.AsyncResilientTransport`.

    Built by :func:`standard_hedging_pipeline`; its attributes are the
    options given there. The transport hands every request to it; it is
    not a :class:`~resilient.Policy` (it picks the URL of each attempt,
    which a policy around the transport's send cannot).
    """

    def __init__(
        self,
        groups: tuple[EndpointGroup, ...],
        *,
        selection: Literal["ordered", "weighted"],
        total_timeout: float,
        attempt_timeout: float,
        max_hedged_attempts: int,
        delay: float | LatencyQuantile,
        max_concurrent: int,
        failure_ratio: float,
        minimum_throughput: int,
        sampling_duration: float,
        break_duration: float,
        budget: RetryBudget | None,
        hedge_non_idempotent: bool,
        name: str | None,
        clock: Clock,
    ) -> None:
        self.groups = groups
        self.selection = selection
        self.total_timeout = total_timeout
        self.attempt_timeout = attempt_timeout
        self.max_hedged_attempts = max_hedged_attempts
        self.delay = delay
        self.max_concurrent = max_concurrent
        self.failure_ratio = failure_ratio
        self.minimum_throughput = minimum_throughput
        self.sampling_duration = sampling_duration
        self.break_duration = break_duration
        self.budget = budget
        self.hedge_non_idempotent = hedge_non_idempotent
        self.name = name
        self.clock = clock
        self._inner: httpx.AsyncBaseTransport | None = None
        self._states: list[list[_EndpointState]] = []
        self._self: _EndpointState | None = None  # no endpoints: the request's own URL
        self._header: str | None = None
        self._total: AsyncWrapped | None = None
        self._rng = random.Random()
        self._median: LatencyQuantile | None = None
        if isinstance(delay, LatencyQuantile):
            self._median = LatencyQuantile(0.5, window=delay.window, floor=0.0, fallback=delay.fallback)

    # -- binding to a transport ------------------------------------------------------------

    def bind(self, inner: httpx.AsyncBaseTransport, deadline_header: str | None) -> None:
        """Build every endpoint's policies over ``inner`` (once, by the transport)."""
        if self._inner is not None:
            raise RuntimeError("this hedging pipeline already belongs to a transport; build one per transport")
        self._inner = inner
        self._header = deadline_header
        site = EventSite(operation=self.name or "http")
        if self.groups:
            self._states = [[self._endpoint_state(e, site) for e in g.endpoints] for g in self.groups]
        else:
            self._self = self._endpoint_state(None, site)
        total = Timeout(self.total_timeout, set_deadline=True, name=f"{self.name or 'hedging'}.total", clock=self.clock)
        self._total = total.build(self._hedged, site, True)

    def _endpoint_state(self, endpoint: Endpoint | None, site: EventSite) -> _EndpointState:
        label = endpoint.url if endpoint is not None else "self"
        breaker = CircuitBreaker(
            f"{self.name or 'hedging'} {label}",
            failure_ratio=self.failure_ratio,
            minimum_throughput=self.minimum_throughput,
            sampling_duration=self.sampling_duration,
            break_duration=self.break_duration,
            on_result=_is_failure,
            clock=self.clock,
        )
        pipeline = Pipeline(
            Bulkhead(self.max_concurrent, name=f"{self.name or 'hedging'} {label}", clock=self.clock),
            breaker,
            Timeout(self.attempt_timeout, clock=self.clock),
        )
        return _EndpointState(endpoint, breaker, pipeline.build(self._send_one, site, True))

    async def _send_one(self, request: httpx.Request) -> httpx.Response:
        inner = self._inner
        assert inner is not None
        return await inner.handle_async_request(request)

    # -- choosing endpoints ----------------------------------------------------------------

    def _candidates(self) -> list[_EndpointState]:
        """The endpoints in the order this request tries them: a healthy group first, then the others."""
        if self._self is not None:
            return [self._self]
        groups = list(range(len(self._states)))
        if self.selection == "weighted" and len(groups) > 1:
            first = self._rng.choices(groups, weights=[g.weight for g in self.groups])[0]
            groups.remove(first)
            groups.insert(0, first)
        ordered: list[_EndpointState] = []
        for gi in groups:
            states = list(self._states[gi])
            # Weighted order inside a group: each pick by weight among those left.
            picked: list[_EndpointState] = []
            while states:
                weights = [s.endpoint.weight if s.endpoint is not None else 1.0 for s in states]
                choice = self._rng.choices(range(len(states)), weights=weights)[0]
                picked.append(states.pop(choice))
            ordered.extend(picked)
        # Healthy endpoints first, the group order kept; an open circuit is only a last resort.
        return [s for s in ordered if s.healthy()] + [s for s in ordered if not s.healthy()]

    def _request_for(self, request: httpx.Request, state: _EndpointState) -> httpx.Request:
        """The request of one attempt: the caller's, copied (never changed) with the endpoint's URL and the deadline."""
        endpoint = state.endpoint
        header = self._header
        d = current_deadline() if header is not None else None
        left = d.expires_at - d.clock.now() if d is not None else math.inf
        if endpoint is None and not math.isfinite(left):
            return request
        # A shallow copy: the stream is shared (replayable when hedged, sent once otherwise),
        # the headers are copied before any change.
        # (not copy.copy: a Request's __setstate__ detaches the stream, as for pickling).
        attempt = httpx.Request.__new__(httpx.Request)
        attempt.__dict__.update(request.__dict__)
        headers = attempt.headers = request.headers.copy()
        if endpoint is not None:
            attempt.url = url = request.url.copy_with(scheme=endpoint.scheme, host=endpoint.host, port=endpoint.port)
            headers["host"] = url.netloc.decode("ascii")
        if header is not None and math.isfinite(left):
            headers[header] = f"{max(left, 0.0):.3f}"
        return attempt

    # -- one request -----------------------------------------------------------------------

    def hedgeable(self, request: httpx.Request) -> bool:
        """Whether ``request`` may be sent more than once (idempotent, with a replayable body)."""
        if not (
            request.method in IDEMPOTENT_METHODS or self.hedge_non_idempotent or "idempotency-key" in request.headers
        ):
            return False
        return isinstance(request.stream, httpx.ByteStream)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``: hedged over the endpoints when it may be, once otherwise (the transport calls this)."""
        total = self._total
        if total is None:
            raise RuntimeError("the hedging pipeline is not bound to a transport")
        response: httpx.Response = await total(request)
        return response

    def _delay(self) -> float:
        delay = self.delay
        if not isinstance(delay, LatencyQuantile):
            return delay
        assert self._median is not None
        return max(delay.floor, min(delay.current(), MEDIAN_CAP * self._median.current()))

    async def _hedged(self, request: httpx.Request) -> httpx.Response:
        replay = self.hedgeable(request)
        attempts_allowed = 1 + self.max_hedged_attempts if replay else 1
        candidates = self._candidates()
        budget = self.budget
        if budget is not None:
            budget.record_request()
        loop = asyncio.get_running_loop()
        clock = self.clock
        running: dict[asyncio.Task[httpx.Response], float] = {}
        next_candidate = 0
        sent = 0
        rejections = 0
        last_response: httpx.Response | None = None
        last_error: BaseException | None = None

        def start() -> None:
            nonlocal next_candidate, sent
            state = candidates[next_candidate % len(candidates)]
            next_candidate += 1
            sent += 1
            task = loop.create_task(state.send(self._request_for(request, state)))
            running[task] = clock.now()

        def may_hedge() -> bool:
            return sent < attempts_allowed and (budget is None or budget.try_spend())

        start()
        try:
            while running:
                timeout = self._delay() if sent < attempts_allowed else None
                done = await _first_done(loop, clock, running, timeout)
                if not done:
                    # The hedging delay passed with no answer: one more attempt, elsewhere.
                    if may_hedge():
                        start()
                    else:
                        attempts_allowed = sent  # the budget is spent: wait for what runs
                    continue
                failed = rejected = False
                for task in done:
                    began = running.pop(task)
                    exc = task.exception()
                    if exc is None:
                        response = task.result()
                        if not _is_failure(response):
                            if self._median is not None:
                                took = clock.now() - began
                                self.delay.observe(took)  # type: ignore[union-attr]
                                self._median.observe(took)
                            return response
                        if last_response is not None:
                            await last_response.aclose()
                        last_response, last_error = response, None
                        failed = True
                    elif isinstance(exc, RejectedError) and rejections < len(candidates):
                        # Never sent (an open circuit, a full bulkhead): the next endpoint, at no cost.
                        rejections += 1
                        sent -= 1
                        last_error = exc
                        rejected = True
                    else:
                        last_error = exc
                        failed = True
                # A failure starts the next attempt at once (as Microsoft's hedging does), if one is left.
                if (failed or rejected) and sent < attempts_allowed and (rejected or may_hedge()):
                    start()
            if last_response is not None:
                return last_response
            assert last_error is not None
            raise last_error
        finally:
            for task in running:
                task.cancel()
            for task in list(running):
                try:
                    response = await task
                except BaseException:
                    continue
                await response.aclose()

    def status(self) -> dict[str, Any]:
        """The endpoints' breakers and the hedging delay now."""
        states = [s for group in self._states for s in group] or ([self._self] if self._self else [])
        return {
            "type": "hedging_pipeline",
            "name": self.name,
            "delay": self._delay(),
            "endpoints": [
                {"url": s.endpoint.url if s.endpoint else "self", "state": s.breaker.effective_state.value}
                for s in states
            ],
        }

    def __repr__(self) -> str:
        return f"HedgingPipeline(groups={list(self.groups)!r}, selection={self.selection!r}, delay={self.delay!r})"


def _groups(
    endpoints: Sequence[str | Endpoint] | None, groups: Sequence[EndpointGroup | Sequence[str]] | None
) -> tuple[EndpointGroup, ...]:
    if endpoints is not None and groups is not None:
        raise TypeError("pass endpoints (one group) or groups, not both")
    made: tuple[EndpointGroup, ...]
    if endpoints is not None:
        made = (EndpointGroup(endpoints),)
    elif groups is not None:
        if isinstance(groups, str | EndpointGroup):
            raise TypeError("groups must be a list of EndpointGroup (or of lists of URLs)")
        made = tuple(g if isinstance(g, EndpointGroup) else EndpointGroup(g) for g in groups)
        if not made:
            raise ValueError("groups must hold at least one group (or pass None: the request's own host)")
    else:
        return ()
    seen: set[str] = set()
    for group in made:
        for e in group.endpoints:
            if e.url in seen:
                raise ValueError(f"endpoint {e.url!r} is listed twice: each endpoint has one breaker")
            seen.add(e.url)
    return made


def standard_hedging_pipeline(
    endpoints: Sequence[str | Endpoint] | None = None,
    *,
    groups: Sequence[EndpointGroup | Sequence[str]] | None = None,
    selection: Literal["ordered", "weighted"] = "ordered",
    total_timeout: float = 30.0,
    attempt_timeout: float = 10.0,
    max_hedged_attempts: int = 1,
    delay: float | str | LatencyQuantile = "p99",
    min_delay: float = 0.002,
    max_concurrent: int = 1000,
    failure_ratio: float = 0.1,
    minimum_throughput: int = 100,
    sampling_duration: float = 30.0,
    break_duration: float = 5.0,
    budget: RetryBudget | None = None,
    hedge_non_idempotent: bool = False,
    name: str | None = None,
    clock: Clock | None = None,
) -> HedgingPipeline:
    """Microsoft's standard hedging handler: a total timeout, hedging, and per endpoint a bulkhead, breaker and timeout.

    ``httpx.AsyncClient(transport=AsyncResilientTransport(standard_hedging_pipeline()))``
    hedges each idempotent request against its own host; with endpoints it
    sends each attempt to a different healthy one.

    Args:
        endpoints: one group of endpoints (``["http://10.0.0.5:8080", ...]``):
            each attempt goes to the next one, in an order drawn by their
            weights; the request's own scheme, host and port are replaced.
        groups: ordered or weighted :class:`EndpointGroup` s instead (give
            ``endpoints`` or ``groups``). With neither, every attempt goes
            to the request's own URL (it hedges against itself).
        selection: ``"ordered"``: the first group with a healthy endpoint
            takes the traffic and the next groups are failover; ``"weighted"``:
            each request draws its first group by the groups' weights.
        total_timeout: seconds for the whole call, hedges included.
        attempt_timeout: seconds for each attempt (per endpoint).
        max_hedged_attempts: extra attempts at most (Microsoft's
            ``MaxHedgedAttempts``, default 1: two attempts in all).
        delay: how long an attempt runs before the next starts: seconds,
            ``"pNN"`` (a quantile of recent successful attempts' latencies,
            default ``"p99"``, at least ``min_delay`` and at most 4 times
            their median, so that a tail heavier than the budget cannot
            pull the delay up to the slow answers themselves) or a
            :class:`~resilient.LatencyQuantile`. A failed attempt starts the
            next one at once.
        min_delay: the floor of a quantile delay, in seconds.
        max_concurrent: each endpoint's bulkhead (Microsoft's concurrency limiter).
        failure_ratio, minimum_throughput, sampling_duration, break_duration:
            each endpoint's circuit breaker (Microsoft's defaults); 408, 429
            and 5xx answers and transport errors count as failures.
        budget: a :class:`~resilient.RetryBudget` that every hedge spends from
            (shared with retries elsewhere if you pass the same one); default
            ``RetryBudget(ratio=0.1, min_per_second=1)``: at most about 10 %
            more load.
        hedge_non_idempotent: hedge POST, PATCH... too (with a replayable
            body). Without it they are sent once (an ``Idempotency-Key``
            header makes them hedgeable).
        name: shown in the breakers' and events' names.
        clock: the clock of every wait and timer (the hedging delay, the
            timeouts, the breakers' windows, the budget); a
            :class:`~resilient.testing.FakeClock` drives the whole pipeline
            in tests.

    A request that may not be hedged is sent once; a rejection (an open
    circuit, a full bulkhead: nothing was sent) still moves it to the next
    endpoint. Losers are cancelled and their responses closed.
    """
    made = _groups(endpoints, groups)
    if selection not in ("ordered", "weighted"):
        raise ValueError(f"selection must be 'ordered' or 'weighted', got {selection!r}")
    floor = check_seconds(min_delay, "min_delay", allow_zero=True)
    if isinstance(delay, str):
        parsed: float | LatencyQuantile = LatencyQuantile(LatencyQuantile.parse(delay).quantile, floor=floor)
    elif isinstance(delay, LatencyQuantile):
        parsed = delay
    else:
        parsed = check_seconds(delay, "delay", allow_zero=True)
    if budget is not None and not isinstance(budget, RetryBudget):
        raise TypeError(f"budget must be a RetryBudget or None, got {budget!r}")
    ratio = check_number(failure_ratio, "failure_ratio", maximum=1.0)
    the_clock = check_clock(clock)
    return HedgingPipeline(
        made,
        selection=selection,
        total_timeout=check_seconds(total_timeout, "total_timeout"),
        attempt_timeout=check_seconds(attempt_timeout, "attempt_timeout"),
        max_hedged_attempts=check_int(max_hedged_attempts, "max_hedged_attempts", minimum=0, maximum=10),
        delay=parsed,
        max_concurrent=check_int(max_concurrent, "max_concurrent"),
        failure_ratio=ratio,
        minimum_throughput=check_int(minimum_throughput, "minimum_throughput"),
        sampling_duration=check_seconds(sampling_duration, "sampling_duration"),
        break_duration=check_seconds(break_duration, "break_duration"),
        budget=budget if budget is not None else RetryBudget(ratio=0.1, min_per_second=1.0, clock=the_clock),
        hedge_non_idempotent=bool(hedge_non_idempotent),
        name=name,
        clock=the_clock,
    )

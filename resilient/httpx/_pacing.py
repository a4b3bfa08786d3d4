"""Client-side pacing from a host's rate-limit headers: slow down before the 429 comes."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Literal, NamedTuple

import httpx

from resilient.clock import Clock
from resilient.deadline import remaining as deadline_remaining
from resilient.errors import RateLimitedError
from resilient.events import EXTRA_REASON, EXTRA_RETRY_AFTER, REJECTED, WOULD_REJECT, EventSite, Listener, Severity
from resilient.httpx._rules import _current_call, _throttle_delay
from resilient.policy import AsyncFn, AsyncWrapped, Policy, SyncFn
from resilient.validate import check_clock, check_fraction, check_int, check_seconds, check_switch

#: Seconds: a reset further away than this is clamped to it (a header is
#: never trusted to park a host for longer than a day).
MAX_RESET = 86_400.0
# A remaining count or a limit above this is not a quota but garbage.
_MAX_COUNT = 10**12
# A reset above this is a Unix time (GitHub's, Twitter's x-ratelimit-reset), not a delay.
_EPOCH = 1_000_000_000.0

_WANTED: dict[bytes, str] = {
    name.encode(): name
    for name in (
        "ratelimit",
        "ratelimit-policy",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    )
}


class RateLimitHeaders(NamedTuple):
    """What a response's rate-limit headers say is left of the host's quota."""

    #: Requests left in the current window.
    remaining: int
    #: Seconds until the window resets (clamped to :data:`MAX_RESET`).
    reset: float
    #: The window's quota, when the headers say it.
    limit: int | None


def _count(text: str) -> int | None:
    text = text.strip()
    if not text.isdigit() or not text.isascii() or len(text) > 13:
        return None
    n = int(text)
    return n if n <= _MAX_COUNT else None


def _seconds(text: str) -> float | None:
    text = text.strip()
    if not text or len(text) > 32 or not text.replace(".", "", 1).isdigit() or not text.isascii():
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def _ietf(ratelimit: str, policy: str | None) -> tuple[int | None, float | None, int | None]:
    """``RateLimit`` (and ``RateLimit-Policy``) of any draft of draft-ietf-httpapi-ratelimit-headers.

    Draft 7: ``RateLimit: limit=100, remaining=50, reset=5``. Draft 8 on:
    ``RateLimit: "default";r=50;t=5`` and ``RateLimit-Policy:
    "default";q=100;w=60``; with several policies, the tightest one counts.
    """
    left: int | None = None
    reset: float | None = None
    limit: int | None = None
    # Plain splits, not a structured-field parser: this runs on every answer of a paced host.
    for member in ratelimit.split(","):
        if ";" not in member:
            key, eq, val = member.partition("=")
            if eq:
                key = key.strip().lower()
                if key == "limit":
                    limit = _count(val)
                elif key == "remaining":
                    left = _count(val)
                elif key == "reset":
                    reset = _seconds(val)
            continue
        r: int | None = None
        t: float | None = None
        for param in member.split(";")[1:]:
            key, _, val = param.partition("=")
            key = key.strip().lower()
            if key == "r":
                r = _count(val)
            elif key == "t":
                t = _seconds(val)
        if r is not None and t is not None and (left is None or r < left):
            left, reset = r, t
    if policy is not None and limit is None:
        for member in policy.split(","):
            item, *params = member.split(";")
            q: int | None = _count(item)
            for param in params:
                key, _, val = param.partition("=")
                if key.strip().lower() == "q":
                    q = _count(val)
            if q is not None and (limit is None or q < limit):
                limit = q
    return left, reset, limit


def parse_rate_limit_headers(headers: httpx.Headers, *, now: float | None = None) -> RateLimitHeaders | None:
    """What the rate-limit headers of a response say is left, or ``None`` when they say nothing usable.

    Read, first complete set wins:

    * the IETF draft's ``RateLimit`` (``limit=100, remaining=50, reset=5``,
      or the later ``"policy";r=50;t=5``) with ``RateLimit-Policy``;
    * the older ``RateLimit-Limit`` / ``RateLimit-Remaining`` / ``RateLimit-Reset``;
    * ``x-ratelimit-limit`` / ``x-ratelimit-remaining`` / ``x-ratelimit-reset``
      (GitHub, GitLab, Twitter...), whose reset may be a Unix time (a value
      above 10^9 is taken as one).

    A set needs both a remaining count and a reset. A header sent twice, a
    negative or non-numeric value, a count above 10^12 make that header
    count as absent; a reset further away than :data:`MAX_RESET` is clamped
    to it. Never raises on what a server sent.

    Args:
        headers: the response's headers.
        now: the current Unix time, for an epoch reset (default ``time.time()``).
    """
    found: dict[str, str | None] = {}
    for raw_key, raw_value in headers.raw:
        name = _WANTED.get(raw_key.lower())
        if name is not None:
            # Sent twice: which one is true? Neither.
            found[name] = None if name in found else raw_value.decode("latin-1")
    if not found:
        return None
    left: int | None
    reset: float | None
    limit: int | None
    ratelimit = found.get("ratelimit")
    if ratelimit is not None:
        left, reset, limit = _ietf(ratelimit, found.get("ratelimit-policy"))
        if left is not None and reset is not None:
            return RateLimitHeaders(left, min(reset, MAX_RESET), limit)
    for prefix in ("ratelimit-", "x-ratelimit-"):
        text = found.get(prefix + "remaining")
        left = _count(text.split(",")[0]) if text is not None else None
        text = found.get(prefix + "reset")
        reset = _seconds(text) if text is not None else None
        if left is None or reset is None:
            continue
        if reset > _EPOCH:
            reset = max(0.0, reset - (time.time() if now is None else now))
        text = found.get(prefix + "limit")
        # RateLimit-Limit may carry policies after the number: "100, 100;w=60".
        limit = _count(text.split(",")[0].split(";")[0]) if text is not None else None
        return RateLimitHeaders(left, min(reset, MAX_RESET), limit)
    return None


class _Window:
    """One host's quota as its last headers told it, and the pacing schedule."""

    __slots__ = ("left", "limit", "low", "next_at", "reset_at")

    def __init__(self) -> None:
        self.left = 0
        self.limit = 0
        self.low = 0.0
        self.reset_at = -math.inf
        self.next_at = -math.inf


class HeaderPacing(Policy):
    """Paces each host's requests to what its rate-limit headers say is left, before the 429 comes.

    Every response's ``RateLimit`` / ``RateLimit-Policy`` (IETF draft),
    ``RateLimit-Limit/-Remaining/-Reset`` or ``x-ratelimit-*`` headers (see
    :func:`parse_rate_limit_headers`) tell it, per host, how many requests
    are left and when the window resets; a 429 with a throttle header
    (``Retry-After``, ``retry-after-ms``...) tells it that none are left
    until then. While more than ``pace_below`` of the quota is left,
    requests go at once. Below, the requests left are spaced evenly over
    what is left of the window; with none left, a request waits for the
    reset. A host that never sent such headers is never delayed.

    A request that would have to wait longer than ``max_wait`` or than the
    current :func:`~resilient.deadline` (the total timeout of the standard
    pipeline sets one) is rejected at once with
    :class:`~resilient.RateLimitedError` carrying ``retry_after``, rather
    than after waiting uselessly: the 429 it would have got, without the
    round trip. ``mode="reject"`` rejects instead of waiting at all. With
    ``enforce`` false (shadow mode) it decides the same, never waits,
    reports ``would_reject`` for what it would have rejected and lets every
    request through.

    Put it inside the retry, around each attempt (in a resilient
    transport's pipeline, so that it knows the host of each request):
    ``Pipeline(http_retry(), HeaderPacing(), ...)``. Requests already in
    flight when a header says "5 left" are not counted against those 5, and
    the requests that waited for a reset all go at the reset: with many
    concurrent requests a few may still meet a 429, which the retry's
    ``Retry-After`` handling covers.

    Args:
        pace_below: the share of the quota (``limit``; the most ever seen
            left when the headers give no limit) under which requests are
            spaced; ``0``: only wait when nothing is left.
        mode: ``"wait"`` (default) or ``"reject"``.
        max_wait: the longest a request may wait, seconds (``None``: only the deadline bounds it).
        max_hosts: how many hosts' windows to remember (the oldest one out first).
        enforce: ``False`` (or a callable returning it): shadow mode.
        clock: time source (tests: ``FakeClock``).
        name: shown in errors, events and status.
        listeners: event listeners for this policy only.
    """

    policy_type = "header_pacing"

    def __init__(
        self,
        *,
        pace_below: float = 0.1,
        mode: Literal["wait", "reject"] = "wait",
        max_wait: float | None = 10.0,
        max_hosts: int = 1024,
        enforce: bool | Callable[[], bool] = True,
        clock: Clock | None = None,
        name: str | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        super().__init__(name=name, listeners=listeners)
        self.pace_below = check_fraction(pace_below, "pace_below", allow_zero=True)
        if mode not in ("wait", "reject"):
            raise ValueError(f"mode must be 'wait' or 'reject', got {mode!r}")
        self.mode = mode
        self.max_wait = check_seconds(max_wait, "max_wait", allow_zero=True, allow_none=True)
        self.max_hosts = check_int(max_hosts, "max_hosts")
        self._enforce = check_switch(enforce, "enforce")
        self.clock = check_clock(clock)
        # A plain dict, oldest host out first: an LRU's bookkeeping would cost more than the pacing.
        self._hosts: dict[Hashable, _Window] = {}
        # Held for a few dict operations only: never while waiting, never around user code.
        self._lock = threading.Lock()
        self._delayed = 0
        self._rejected = 0
        self._would_reject = 0

    # -- the engine: no I/O, no waiting ---------------------------------------------

    @property
    def enforcing(self) -> bool:
        """Whether waits and rejections are enforced now (``enforce``, read at this moment)."""
        enforce = self._enforce
        return enforce if isinstance(enforce, bool) else bool(enforce())

    def _bound(self) -> float:
        if self.mode == "reject":
            return 0.0
        bound = math.inf if self.max_wait is None else self.max_wait
        left = deadline_remaining()
        if left is not None and left < bound:
            bound = max(left, 0.0)
        return bound

    def _admit(self, key: Hashable, now: float, bound: float) -> tuple[float, _Window | None]:
        """How long a request to ``key`` must wait, and the window it took its place in (``None``: none).

        A request that may go (its wait is within ``bound``) takes its
        place: the count left drops and the next slot moves on. One that may
        not (its wait is over ``bound``) takes nothing.
        """
        with self._lock:
            window = self._hosts.get(key)
            if window is None or now >= window.reset_at:
                return 0.0, None
            if window.left > window.low:
                window.left -= 1
                return 0.0, window
            if window.left <= 0:
                # Nothing left: go when the window resets, into a window the next headers will tell about.
                return window.reset_at - now, None
            slot = max(now, window.next_at)
            wait = slot - now
            if wait > bound:
                return wait, None
            # Spread what is left (this request included) evenly over what is left of the window.
            window.next_at = slot + (window.reset_at - slot) / window.left
            window.left -= 1
            return wait, window

    def _refund(self, key: Hashable, window: _Window | None) -> None:
        """Give back the place of a request that did not go (cancelled while waiting)."""
        if window is None:
            return
        with self._lock:
            if self._hosts.get(key) is window:
                window.left += 1

    def _observe(self, key: Hashable, headers: httpx.Headers, status: int | None, now: float) -> None:
        """Learn what a response of ``key`` says is left."""
        info = parse_rate_limit_headers(headers)
        if info is None:
            if status != 429:
                return
            delay = _throttle_delay(headers)
            if delay is None:
                return
            info = RateLimitHeaders(0, min(delay, MAX_RESET), None)
        with self._lock:
            hosts = self._hosts
            window = hosts.get(key)
            if window is None:
                if len(hosts) >= self.max_hosts:
                    del hosts[next(iter(hosts))]
                window = hosts[key] = _Window()
            elif now >= window.reset_at:
                window.next_at = -math.inf
            window.limit = info.limit if info.limit is not None else max(window.limit, info.remaining)
            window.low = self.pace_below * window.limit
            window.left = info.remaining
            window.reset_at = now + info.reset

    def _before(self, key: Hashable, site: EventSite) -> tuple[float, _Window | None]:
        """The wait the shell must sleep before sending (0.0: none); raises when the request may not go."""
        bound = self._bound()
        wait, window = self._admit(key, self.clock.now(), bound)
        if wait <= 0.0:
            return 0.0, window
        if wait > bound:
            err = RateLimitedError(
                f"{self.label()}: the host's rate-limit headers leave no request to send "
                f"{'within the wait allowed' if self.mode == 'wait' else '(mode=reject)'}; "
                f"retry after {wait:.3g} s",
                policy=self.name,
                retry_after=wait,
            )
            extras = {EXTRA_REASON: "rate_limit_headers", EXTRA_RETRY_AFTER: wait}
            if self.enforcing:
                self._rejected += 1
                self.emit(site, REJECTED, Severity.WARNING, exception=err, extras=extras)
                raise err
            self._would_reject += 1
            self.emit(site, WOULD_REJECT, Severity.INFO, exception=err, extras=extras)
            return 0.0, window
        if not self.enforcing:
            return 0.0, window
        self._delayed += 1
        return wait, window

    def _after(self, key: Hashable, result: Any) -> None:
        headers = getattr(result, "headers", None)
        if isinstance(headers, httpx.Headers):
            self._observe(key, headers, getattr(result, "status_code", None), self.clock.now())

    # -- the shells: a fast-path check, the wait, the call, one hand-off -------------------

    def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        hosts, asleep = self._hosts, self.clock.asleep
        before, after, refund = self._before, self._after, self._refund

        async def paced(*args: Any, **kwargs: Any) -> Any:
            call = _current_call.get()
            key = None if call is None else (call.host, call.port)
            if hosts:  # nothing to pace until a host has sent its headers
                wait, window = before(key, site)
                if wait:
                    try:
                        await asleep(wait)
                    except BaseException:
                        refund(key, window)
                        raise
            result = await fn(*args, **kwargs)
            after(key, result)
            return result

        return paced

    def build_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        hosts, sleep = self._hosts, self.clock.sleep
        before, after, refund = self._before, self._after, self._refund

        def paced(*args: Any, **kwargs: Any) -> Any:
            call = _current_call.get()
            key = None if call is None else (call.host, call.port)
            if hosts:
                wait, window = before(key, site)
                if wait:
                    try:
                        sleep(wait)
                    except BaseException:
                        refund(key, window)
                        raise
            result = fn(*args, **kwargs)
            after(key, result)
            return result

        return paced

    def status(self) -> dict[str, Any]:
        """Hosts remembered, requests delayed and rejected so far."""
        return {
            "type": self.policy_type,
            "name": self.name,
            "hosts": len(self._hosts),
            "delayed": self._delayed,
            "rejected": self._rejected,
            "would_reject": self._would_reject,
        }

    def __repr__(self) -> str:
        return f"HeaderPacing(pace_below={self.pace_below}, mode={self.mode!r}, max_wait={self.max_wait})"

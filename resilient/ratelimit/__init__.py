"""Rate limiting: a token bucket, plain or one per key, in memory or shared through a store.

:class:`RateLimiter` admits ``rate`` calls per ``per`` seconds with bursts of
up to ``burst``; :class:`KeyedRateLimiter` keeps one such bucket per key
(user, tenant, client address, host), with memory bounded by ``max_keys``.
Both keep their buckets in a :class:`RateStore`: :class:`InMemoryRateStore`
by default, :class:`resilient.redis.RedisRateStore` to share the limit with
every replica. The API is the same on every store, sync and async.

A call over the limit either **waits** its turn (``mode="wait"``, the
default) or is **rejected** at once with :class:`~resilient.RateLimitedError`
carrying ``retry_after`` (``mode="reject"``). A waiting call never waits past
``max_wait`` nor past the current :func:`~resilient.deadline`: when the wait
it would need is longer, it is rejected immediately rather than after
waiting uselessly. With ``enforce=False`` (shadow mode) the limiter decides
exactly the same, reports ``would_reject`` and lets every call through.

``try_acquire()`` (blocking) and ``atry_acquire()`` (async) never wait: they
return a :class:`RateDecision` with what the IETF ``RateLimit`` headers need
(limit, remaining, reset).

How the bucket works: see :mod:`resilient.ratelimit.store` (GCRA, the
"generic cell rate algorithm", one float per bucket). A waiting call
*reserves* its place and sleeps exactly until its turn, so waiters are
served in arrival order with no polling; a waiter that is cancelled gives
its turn back.

Why not ``aiolimiter`` underneath (as DESIGN.md first planned): it has no
injectable clock (tests would have to sleep), it cannot say in advance how
long a call would wait (needed to reject at once against ``max_wait`` and the
deadline), it wakes waiters by polling, and it costs more per call than this
bucket. The semantics (a leaky bucket of ``rate`` per ``per`` with a burst
of ``rate``) are the same, so ``RateLimiter(rate, per)`` is a drop-in for
``AsyncLimiter(rate, per)``.
"""

from __future__ import annotations

from resilient.ratelimit.engine import Mode, RateConfig, RateDecision, RateLimitKeyError
from resilient.ratelimit.limiter import KeyedRateLimiter, RateLimiter
from resilient.ratelimit.store import AsyncRateStore, InMemoryRateStore, RateStore

__all__ = [
    "AsyncRateStore",
    "InMemoryRateStore",
    "KeyedRateLimiter",
    "Mode",
    "RateConfig",
    "RateDecision",
    "RateLimitKeyError",
    "RateLimiter",
    "RateStore",
]

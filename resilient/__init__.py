"""resilient: composable resilience policies for async Python services.

Retries with jitter, timeouts, circuit breakers, bulkheads, rate limits,
stale-cache and plain fallbacks, as decorators, as an httpx transport and as
ASGI middleware. Optional integrations live in their own modules
(``resilient.httpx``, ``resilient.asgi``, ``resilient.otel``,
``resilient.redis``) and are never imported from here.
"""

from __future__ import annotations

from resilient.backoff import Backoff, constant, exponential, linear
from resilient.breaker import CircuitBreaker, CircuitState
from resilient.budget import RetryBudget
from resilient.cache import StaleCache
from resilient.chaos import Fault, Latency, ResultInjection
from resilient.clock import SYSTEM_CLOCK, Clock, SystemClock
from resilient.concurrency import AdaptiveConcurrency, Bulkhead
from resilient.deadline import Deadline, current_deadline, deadline, remaining
from resilient.errors import (
    BulkheadFullError,
    CircuitOpenError,
    RateLimitedError,
    RejectedError,
    ResilienceError,
    TimeoutError,
)
from resilient.events import ResilienceEvent, Severity, add_listener, remove_listener
from resilient.fallback import Fallback
from resilient.hedge import Hedge, LatencyQuantile
from resilient.keyed import Keyed, PolicyKeyError
from resilient.policy import Outcome, Pipeline, Policy
from resilient.ratelimit import KeyedRateLimiter, RateDecision, RateLimiter, RateLimitKeyError
from resilient.registry import Registry
from resilient.retry import GiveUp, Retry, current_attempt
from resilient.throttle import AdaptiveThrottle
from resilient.timeout import Timeout

__version__ = "0.1.0"

__all__ = [
    "AdaptiveConcurrency",
    "AdaptiveThrottle",
    "Backoff",
    "Bulkhead",
    "BulkheadFullError",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "Clock",
    "Deadline",
    "Fallback",
    "Fault",
    "GiveUp",
    "Hedge",
    "Keyed",
    "KeyedRateLimiter",
    "Latency",
    "LatencyQuantile",
    "Outcome",
    "Pipeline",
    "Policy",
    "PolicyKeyError",
    "RateDecision",
    "RateLimitKeyError",
    "RateLimitedError",
    "RateLimiter",
    "Registry",
    "RejectedError",
    "ResilienceError",
    "ResilienceEvent",
    "ResultInjection",
    "Retry",
    "RetryBudget",
    "SYSTEM_CLOCK",
    "Severity",
    "StaleCache",
    "SystemClock",
    "Timeout",
    "TimeoutError",
    "__version__",
    "add_listener",
    "constant",
    "current_attempt",
    "current_deadline",
    "deadline",
    "exponential",
    "linear",
    "remaining",
    "remove_listener",
]

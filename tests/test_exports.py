"""The public surface: sorted, documented, and free of optional imports."""

from __future__ import annotations

import subprocess
import sys

import resilient


def test_all_is_sorted_and_unique() -> None:
    assert list(resilient.__all__) == sorted(set(resilient.__all__))


def test_every_exported_name_exists_and_has_a_docstring() -> None:
    for name in resilient.__all__:
        obj = getattr(resilient, name)
        if callable(obj) and not isinstance(obj, str):
            assert obj.__doc__, f"{name} has no docstring"


def test_exported_members() -> None:
    # The public surface, as stamina tests it: equality, so that adding or removing a name is a
    # deliberate API change made here too.
    assert set(resilient.__all__) == {
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
    }


def test_optional_integrations_are_not_imported() -> None:
    code = (
        "import sys, resilient; "
        "bad = [m for m in ('httpx', 'opentelemetry', 'redis', 'starlette', 'uvicorn', 'tenacity', 'pybreaker') "
        "if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""

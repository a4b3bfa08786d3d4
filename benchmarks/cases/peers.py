"""Peer libraries, each configured like the matching resilient case.

A peer that is not installed is skipped (``pip install --group bench``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from benchmarks.cases import Case, sync_target, target


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _tenacity() -> Callable[[], Any]:
    import tenacity

    return tenacity.retry(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_exponential())(target)  # type: ignore[no-any-return]


def _tenacity_sync() -> Callable[[], Any]:
    import tenacity

    return tenacity.retry(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_exponential())(sync_target)  # type: ignore[no-any-return]


def _stamina() -> Callable[[], Any]:
    import stamina

    return stamina.retry(on=Exception, attempts=3)(target)


def _backoff() -> Callable[[], Any]:
    import backoff

    return backoff.on_exception(backoff.expo, Exception, max_tries=3)(target)  # type: ignore[no-any-return]


CASES: list[Case] = []
if _have("tenacity"):
    CASES += [
        Case("tenacity retry", "retry", _tenacity),
        Case("tenacity retry (sync)", "retry", _tenacity_sync, kind="sync"),
    ]
if _have("stamina"):
    CASES.append(Case("stamina retry", "retry", _stamina))
if _have("backoff"):
    CASES.append(Case("backoff on_exception", "retry", _backoff))


# -- pyresilience: one decorator configured with dataclasses ------------------


def _pyresilience(**configs: Any) -> Callable[[], Any]:
    import pyresilience

    return pyresilience.resilient(**configs)(target)  # type: ignore[no-any-return]


def _pyr_retry() -> Callable[[], Any]:
    from pyresilience import RetryConfig

    return _pyresilience(retry=RetryConfig(max_attempts=3))


def _pyr_breaker() -> Callable[[], Any]:
    from pyresilience import CircuitBreakerConfig

    return _pyresilience(circuit_breaker=CircuitBreakerConfig(failure_threshold=5))


def _pyr_bulkhead() -> Callable[[], Any]:
    from pyresilience import BulkheadConfig

    return _pyresilience(bulkhead=BulkheadConfig(max_concurrent=10))


def _pyr_timeout() -> Callable[[], Any]:
    from pyresilience import TimeoutConfig

    return _pyresilience(timeout=TimeoutConfig(seconds=10))


def _pyr_full() -> Callable[[], Any]:
    from pyresilience import BulkheadConfig, CircuitBreakerConfig, RetryConfig, TimeoutConfig

    return _pyresilience(
        retry=RetryConfig(max_attempts=3),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=5),
        bulkhead=BulkheadConfig(max_concurrent=10),
        timeout=TimeoutConfig(seconds=10),
    )


# -- hyx: one decorator per policy, nested -------------------------------------


def _hyx_retry() -> Callable[[], Any]:
    from hyx.retry import retry

    return retry(attempts=3)(target)  # type: ignore[no-any-return]


def _hyx_breaker() -> Callable[[], Any]:
    from hyx.circuitbreaker import consecutive_breaker

    return consecutive_breaker(failure_threshold=5)(target)  # type: ignore[no-any-return]


def _hyx_bulkhead() -> Callable[[], Any]:
    from hyx.bulkhead import bulkhead

    return bulkhead(max_concurrency=10, max_capacity=110)(target)  # type: ignore[no-any-return]


def _hyx_timeout() -> Callable[[], Any]:
    from hyx.timeout import timeout

    return timeout(10)(target)  # type: ignore[no-any-return]


def _hyx_ratelimit() -> Callable[[], Any]:
    from hyx.ratelimit import tokenbucket

    # Far above the benchmark's call rate: never waits.
    return tokenbucket(max_executions=1e12, per_time_secs=1, bucket_size=1e12)(target)  # type: ignore[no-any-return]


def _hyx_full() -> Callable[[], Any]:
    from hyx.bulkhead import bulkhead
    from hyx.circuitbreaker import consecutive_breaker
    from hyx.ratelimit import tokenbucket
    from hyx.retry import retry
    from hyx.timeout import timeout

    fn: Any = target
    for decorate in (
        timeout(10),
        bulkhead(max_concurrency=10, max_capacity=110),
        consecutive_breaker(failure_threshold=5),
        retry(attempts=3),
        timeout(30),
        tokenbucket(max_executions=1e12, per_time_secs=1, bucket_size=1e12),
    ):
        fn = decorate(fn)
    return fn  # type: ignore[no-any-return]


if _have("pyresilience"):
    CASES += [
        Case("pyresilience retry(3)", "retry", _pyr_retry),
        Case("pyresilience breaker(5) closed", "breaker", _pyr_breaker),
        Case("pyresilience bulkhead(10)", "bulkhead", _pyr_bulkhead),
        Case("pyresilience timeout(10)", "timeout", _pyr_timeout),
        Case(
            "pyresilience retry+breaker+bulkhead+timeout",
            "pipeline",
            _pyr_full,
            note="one decorator; no rate limiter in the same call",
        ),
    ]
if _have("hyx"):
    CASES += [
        Case("hyx retry(3)", "retry", _hyx_retry),
        Case("hyx consecutive_breaker(5) closed", "breaker", _hyx_breaker),
        Case("hyx bulkhead(10)", "bulkhead", _hyx_bulkhead),
        Case("hyx timeout(10)", "timeout", _hyx_timeout),
        Case("hyx tokenbucket (under limit)", "ratelimit", _hyx_ratelimit),
        Case(
            "hyx ratelimit+timeout+retry+breaker+bulkhead+timeout",
            "pipeline",
            _hyx_full,
            note="nested decorators, outermost first",
        ),
    ]

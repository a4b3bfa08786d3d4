"""Exceptions raised by resilient's policies.

Policies never wrap the exceptions of the functions they guard: those
propagate as themselves, with notes added (:pep:`678`). The classes here are
raised only when a policy itself refuses or interrupts a call.
"""

from __future__ import annotations

import builtins

__all__ = [
    "BulkheadFullError",
    "CircuitOpenError",
    "RateLimitedError",
    "RejectedError",
    "ResilienceError",
    "TimeoutError",
]


class ResilienceError(Exception):
    """Base class of every exception raised by a resilient policy."""


class TimeoutError(ResilienceError, builtins.TimeoutError):  # noqa: A001 - deliberate shadow
    """A :class:`~resilient.Timeout` (or an expired deadline) interrupted the call.

    It subclasses the builtin :class:`TimeoutError`, so ``except TimeoutError``
    written against asyncio keeps working.
    """

    def __init__(self, message: str, *, timeout: float | None = None, policy: str | None = None) -> None:
        super().__init__(message)
        #: The timeout in seconds that expired (after clamping to the deadline).
        self.timeout = timeout
        #: The name of the policy that raised it, if it has one.
        self.policy = policy


class RejectedError(ResilienceError):
    """A policy refused to run the call at all (fail fast).

    ``retry_after`` says, when the policy knows, how many seconds from now a
    call has a chance of being admitted; ``policy`` names the policy.
    """

    def __init__(self, message: str, *, policy: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        #: The name of the policy that rejected the call.
        self.policy = policy
        #: Seconds until a call may be admitted again, when known.
        self.retry_after = retry_after


class CircuitOpenError(RejectedError):
    """The circuit breaker is open (or half-open with every probe slot taken)."""


class BulkheadFullError(RejectedError):
    """The bulkhead has no free slot and no room left in its queue."""

    def __init__(
        self,
        message: str,
        *,
        policy: str | None = None,
        retry_after: float | None = None,
        running: int = 0,
        queued: int = 0,
    ) -> None:
        super().__init__(message, policy=policy, retry_after=retry_after)
        #: Calls running when this one was rejected.
        self.running = running
        #: Calls waiting when this one was rejected.
        self.queued = queued


class RateLimitedError(RejectedError):
    """A rate limiter or throttle refused the call; see ``retry_after``."""

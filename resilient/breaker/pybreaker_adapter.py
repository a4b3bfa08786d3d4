"""An existing ``pybreaker.CircuitBreaker`` as a resilient policy.

pybreaker's own async support (``call_async``) needs tornado, and its
decorator on an ``async def`` records the *coroutine object* as a success
before anything ran. :class:`PyBreakerPolicy` instead drives pybreaker's
state objects around the awaited call, so the real outcome is what counts,
and pybreaker's listeners, storage (memory or Redis), ``exclude`` list,
``fail_max``, ``reset_timeout`` and ``success_threshold`` all keep working.

Differences from ``cb.call`` (deliberate):

* pybreaker holds its lock during the whole call, which serialises every
  call through the breaker; the adapter takes it only around the
  bookkeeping, and admits one half-open trial call at a time itself.
* Cancellation (and any ``BaseException`` that is not an ``Exception``) is
  not counted as a failure: the trial slot is freed and nothing recorded.
* Rejections raise :class:`PyBreakerOpenError`, which is both a
  :class:`resilient.CircuitOpenError` (with ``retry_after``) and a
  ``pybreaker.CircuitBreakerError``, so either ``except`` works.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, NoReturn

import pybreaker

from resilient.errors import CircuitOpenError
from resilient.events import REJECTED, EventSite, Listener, Severity
from resilient.policy import AsyncFn, AsyncWrapped, Policy, SyncFn

__all__ = ["PyBreakerOpenError", "PyBreakerPolicy", "from_pybreaker"]

_adapters: weakref.WeakKeyDictionary[pybreaker.CircuitBreaker, PyBreakerPolicy] = weakref.WeakKeyDictionary()
_adapters_lock = threading.Lock()


class PyBreakerOpenError(CircuitOpenError, pybreaker.CircuitBreakerError):
    """A pybreaker circuit refused the call or was just tripped by it."""


def from_pybreaker(cb: pybreaker.CircuitBreaker, *, name: str | None = None) -> PyBreakerPolicy:
    """Wrap ``cb`` as a policy (the same adapter object every time for the same ``cb``).

    Raises:
        TypeError: ``cb`` is not a ``pybreaker.CircuitBreaker``.
    """
    if not isinstance(cb, pybreaker.CircuitBreaker):
        raise TypeError(f"from_pybreaker() needs a pybreaker.CircuitBreaker, got {cb!r}")
    with _adapters_lock:
        adapter = _adapters.get(cb)
        if adapter is None:
            adapter = _adapters[cb] = PyBreakerPolicy(cb, name=name)
        return adapter


class PyBreakerPolicy(Policy):
    """A ``pybreaker.CircuitBreaker`` acting as a policy; build it with :func:`from_pybreaker`."""

    policy_type = "circuit_breaker"

    def __init__(self, cb: pybreaker.CircuitBreaker, *, name: str | None = None, listeners: Iterable[Listener] = ()):
        super().__init__(name=name if name is not None else cb.name, listeners=listeners)
        #: The wrapped pybreaker breaker.
        self.breaker = cb
        # One half-open trial at a time: pybreaker gets that from holding its
        # lock during the call, which the adapter does not do.
        self._probing = False

    @property
    def state(self) -> str:
        """pybreaker's state name: ``"closed"``, ``"open"`` or ``"half-open"``."""
        return self.breaker.current_state

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot for the status endpoint."""
        cb = self.breaker
        return {
            "type": self.policy_type,
            "name": self.name,
            "implementation": "pybreaker",
            "state": cb.current_state,
            "fail_counter": cb.fail_counter,
            "fail_max": cb.fail_max,
            "reset_timeout": cb.reset_timeout,
            "retry_after": self._retry_after(),
        }

    # -- pybreaker bookkeeping (under its lock) ------------------------------

    def _retry_after(self) -> float | None:
        cb = self.breaker
        if cb.current_state != pybreaker.STATE_OPEN:
            return 0.0
        opened_at = cb._state_storage.opened_at
        if opened_at is None:
            return None
        return max(0.0, opened_at.timestamp() + cb.reset_timeout - datetime.now(UTC).timestamp())

    def _reject(self, site: EventSite, why: str) -> NoReturn:
        retry_after = self._retry_after()
        self._emit(site, REJECTED, Severity.INFO, duration=retry_after, extras={"state": self.breaker.current_state})
        raise PyBreakerOpenError(f"{self._label()} {why}", policy=self.name, retry_after=retry_after)

    def _before(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], site: EventSite) -> bool:
        """Admit the call (True: it is the half-open trial) or raise PyBreakerOpenError."""
        cb = self.breaker
        with cb._lock:
            state = cb.state
            if state.name == pybreaker.STATE_OPEN:
                opened_at = cb._state_storage.opened_at
                if opened_at is not None and datetime.now(UTC).timestamp() < opened_at.timestamp() + cb.reset_timeout:
                    self._reject(site, "is open")
                cb.half_open()
                state = cb.state
            trial = False
            if state.name == pybreaker.STATE_HALF_OPEN:
                if self._probing:
                    self._reject(site, "is half-open and its trial call is running")
                self._probing = trial = True
            for listener in cb.listeners:
                listener.before_call(cb, fn, *args, **kwargs)
            return trial

    def _success(self, trial: bool) -> None:
        cb = self.breaker
        with cb._lock:
            if trial:
                self._probing = False
            cb.state._handle_success()

    def _failure(self, trial: bool, exc: Exception) -> None:
        """Count ``exc``; raise PyBreakerOpenError if it tripped the circuit (and pybreaker says so)."""
        cb = self.breaker
        with cb._lock:
            if trial:
                self._probing = False
            try:
                cb.state._handle_error(exc, reraise=False)
            except pybreaker.CircuitBreakerError as tripped:
                raise PyBreakerOpenError(
                    f"{self._label()}: {tripped}", policy=self.name, retry_after=cb.reset_timeout
                ) from exc
            except BaseException as same:
                # pybreaker re-raises the original when throw_new_error_on_trip=False.
                if same is not exc:
                    raise

    def _abandon(self, trial: bool) -> None:
        if trial:
            with self.breaker._lock:
                self._probing = False

    # -- wrappers ------------------------------------------------------------

    def _wrap_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        before = self._before
        success = self._success
        failure = self._failure
        abandon = self._abandon

        async def pybreaker_call(*args: Any, **kwargs: Any) -> Any:
            trial = before(fn, args, kwargs, site)
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                failure(trial, exc)
                raise
            except BaseException:
                abandon(trial)
                raise
            success(trial)
            return result

        return pybreaker_call

    def _wrap_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        before = self._before
        success = self._success
        failure = self._failure
        abandon = self._abandon

        def pybreaker_call(*args: Any, **kwargs: Any) -> Any:
            trial = before(fn, args, kwargs, site)
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                failure(trial, exc)
                raise
            except BaseException:
                abandon(trial)
                raise
            success(trial)
            return result

        return pybreaker_call

    def __repr__(self) -> str:
        return f"PyBreakerPolicy(name={self.name!r}, state={self.state!r})"

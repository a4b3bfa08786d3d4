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
* The event loop never waits for that lock. When another thread holds it
  (legacy code in ``cb.call(slow_fn)`` holds it for the whole call), an
  async call's bookkeeping waits for it in a worker thread of the adapter:
  that call waits, the loop goes on.
* The outcome of a call admitted before a transition is not recorded (nor
  shown to pybreaker's ``success``/``failure`` listeners): a slow call
  admitted while closed says nothing about the half-open trial running
  when it ends. pybreaker makes a new state object on every transition;
  the adapter compares that object at admission and at the outcome.
* ``before_call`` listeners run in the caller's thread, outside the lock.
  One that raises fails the call before it runs, as with ``cb.call``, and
  gives the half-open trial slot back.
* Cancellation (and any ``BaseException`` that is not an ``Exception``) is
  not counted as a failure: the trial slot is freed and nothing recorded.
* Rejections raise :class:`PyBreakerOpenError`, which is both a
  :class:`resilient.CircuitOpenError` (with ``retry_after``) and a
  ``pybreaker.CircuitBreakerError``, so either ``except`` works.

pybreaker itself calls its ``success``, ``failure`` and ``state_change``
listeners and its ``exclude`` predicates while it holds its lock, as in
``cb.call``; the lock is reentrant, so such a listener may read the
breaker. When the lock was contended they run in the adapter's worker
thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, NoReturn

import pybreaker

from resilient.errors import CircuitOpenError
from resilient.events import EXTRA_REASON, EXTRA_STATE, REJECTED, EventSite, Listener, Severity
from resilient.policy import AsyncFn, AsyncWrapped, Policy, SyncFn

__all__ = ["PyBreakerOpenError", "PyBreakerPolicy", "from_pybreaker"]

_adapters: weakref.WeakKeyDictionary[pybreaker.CircuitBreaker, PyBreakerPolicy] = weakref.WeakKeyDictionary()
_adapters_lock = threading.Lock()

#: (the pybreaker state object the call was admitted in, whether it is the half-open trial,
#: why it is rejected or None).
_Admission = tuple[Any, bool, str | None]

# What _try_locked returns when pybreaker's lock is taken.
_BUSY: Any = object()


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


class _Ticket:
    """An admission made in the worker thread for a caller on the event loop."""

    __slots__ = ("abandoned", "trial_state")

    def __init__(self) -> None:
        # The caller was cancelled while the worker waited for pybreaker's lock.
        self.abandoned = False
        # The half-open state whose trial slot this admission took, if it took one.
        self.trial_state: Any = None


class PyBreakerPolicy(Policy):
    """A ``pybreaker.CircuitBreaker`` acting as a policy; build it with :func:`from_pybreaker`."""

    policy_type = "circuit_breaker"

    def __init__(self, cb: pybreaker.CircuitBreaker, *, name: str | None = None, listeners: Iterable[Listener] = ()):
        super().__init__(name=name if name is not None else cb.name, listeners=listeners)
        #: The wrapped pybreaker breaker.
        self.breaker = cb
        # The half-open state object whose trial call is running, or None. One trial at a
        # time: pybreaker gets that from holding its lock during the call, which the adapter
        # does not do. Keyed on the state object, so a trial of an earlier half-open period
        # never blocks the trial of the current one.
        self._trial: Any = None
        # Guards _trial (and the worker's creation) only: never held around user code or
        # while waiting for pybreaker's lock.
        self._trial_lock = threading.Lock()
        self._worker: ThreadPoolExecutor | None = None

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

    # -- pybreaker bookkeeping ----------------------------------------------

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
        self.emit(
            site,
            REJECTED,
            Severity.INFO,
            duration=retry_after,
            exception=CircuitOpenError,
            extras={EXTRA_REASON: "circuit_open", EXTRA_STATE: self.breaker.current_state},
        )
        raise PyBreakerOpenError(f"{self.label()} {why}", policy=self.name, retry_after=retry_after)

    def _admit_locked(self, ticket: _Ticket | None = None) -> _Admission:
        """Admit a call (under pybreaker's lock); rejections are raised by the caller, unlocked."""
        cb = self.breaker
        state = cb.state
        if state.name == pybreaker.STATE_CLOSED:
            return state, False, None
        if state.name == pybreaker.STATE_OPEN:
            opened_at = cb._state_storage.opened_at
            if opened_at is not None and datetime.now(UTC).timestamp() < opened_at.timestamp() + cb.reset_timeout:
                return state, False, "is open"
            cb.half_open()
            state = cb.state
        if state.name != pybreaker.STATE_HALF_OPEN:
            return state, False, None
        with self._trial_lock:
            if ticket is not None and ticket.abandoned:
                return state, False, None  # nobody will run this call: take no trial slot
            if self._trial is state:
                return state, False, "is half-open and its trial call is running"
            self._trial = state
            if ticket is not None:
                ticket.trial_state = state
        return state, True, None

    def _end_trial(self, state: Any) -> None:
        with self._trial_lock:
            if self._trial is state:
                self._trial = None

    def _before_call(
        self, admission: _Admission, site: EventSite, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Reject a refused admission, else run pybreaker's ``before_call`` listeners outside its lock.

        A listener that raises fails the call before it runs and frees the trial slot.
        """
        if admission[2] is not None:
            self._reject(site, admission[2])
        cb = self.breaker
        try:
            for listener in cb.listeners:
                listener.before_call(cb, fn, *args, **kwargs)
        except BaseException:
            if admission[1]:
                self._end_trial(admission[0])
            raise

    def _success_locked(self, admission: _Admission) -> None:
        state, trial, _ = admission
        try:
            # A call admitted before the last transition says nothing about the current state.
            if self.breaker.state is state:
                state._handle_success()
        finally:
            if trial:
                self._end_trial(state)

    def _failure_locked(self, admission: _Admission, exc: Exception) -> None:
        """Count ``exc``; raise PyBreakerOpenError if it tripped the circuit (and pybreaker says so)."""
        state, trial, _ = admission
        try:
            if self.breaker.state is not state:
                return  # admitted before the last transition
            try:
                state._handle_error(exc, reraise=False)
            except pybreaker.CircuitBreakerError as tripped:
                raise PyBreakerOpenError(
                    f"{self.label()}: {tripped}", policy=self.name, retry_after=self.breaker.reset_timeout
                ) from exc
            except BaseException as same:
                # pybreaker re-raises the original when throw_new_error_on_trip=False.
                if same is not exc:
                    raise
        finally:
            if trial:
                self._end_trial(state)

    def _abandon(self, admission: _Admission) -> None:
        if admission[1]:
            self._end_trial(admission[0])

    # -- off the event loop ----------------------------------------------------

    def _worker_pool(self) -> ThreadPoolExecutor:
        worker = self._worker
        if worker is None:
            with self._trial_lock:
                worker = self._worker
                if worker is None:
                    # One thread: jobs that wait for pybreaker's lock would run one at a time anyway.
                    worker = self._worker = ThreadPoolExecutor(1, thread_name_prefix="resilient-pybreaker")
        return worker

    def _locked(self, job: Callable[..., Any], *args: Any) -> Any:
        with self.breaker._lock:
            return job(*args)

    async def _aadmit(self) -> _Admission:
        """Admission when pybreaker's lock is taken: wait for it in the worker, not on the loop."""
        ticket = _Ticket()
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        future = loop.run_in_executor(self._worker_pool(), context.run, self._locked, self._admit_locked, ticket)
        try:
            admission: _Admission = await future
        except asyncio.CancelledError:
            # The worker may still admit the call: it then takes no trial slot, or gives back
            # the one it already took.
            with self._trial_lock:
                ticket.abandoned = True
                taken = ticket.trial_state
            if taken is not None:
                self._end_trial(taken)
            raise
        return admission

    async def _arecord(self, job: Callable[..., None], *args: Any) -> None:
        """Record an outcome when pybreaker's lock is taken: in the worker, even if cancelled."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        future = loop.run_in_executor(self._worker_pool(), context.run, self._locked, job, *args)
        # Shielded: a cancelled caller's outcome is recorded all the same (and its trial slot freed);
        # only a trip error is dropped, with the cancelled call.
        await asyncio.shield(future)

    # -- wrappers: the call between one admission and one recorded outcome --

    def _try_locked(self, job: Callable[..., Any], *args: Any) -> Any:
        """``job`` under pybreaker's lock if it is free now, else ``_BUSY``: the event loop never waits for it."""
        lock = self.breaker._lock
        if not lock.acquire(blocking=False):
            return _BUSY
        try:
            return job(*args)
        finally:
            lock.release()

    def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        """The closure guarding each call of the async ``fn`` (:meth:`~resilient.Policy.build_async`)."""
        try_locked, aadmit, arecord = self._try_locked, self._aadmit, self._arecord
        admit, before_call, success, failure = (
            self._admit_locked,
            self._before_call,
            self._success_locked,
            self._failure_locked,
        )

        async def pybreaker_call(*args: Any, **kwargs: Any) -> Any:
            admission = try_locked(admit)
            if admission is _BUSY:  # another thread holds pybreaker's lock: wait for it in the worker
                admission = await aadmit()
            before_call(admission, site, fn, args, kwargs)
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                if try_locked(failure, admission, exc) is _BUSY:
                    await arecord(failure, admission, exc)
                raise
            except BaseException:
                self._abandon(admission)
                raise
            if try_locked(success, admission) is _BUSY:
                await arecord(success, admission)
            return result

        return pybreaker_call

    def build_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        """The closure guarding each call of the synchronous ``fn`` (:meth:`~resilient.Policy.build_sync`)."""
        lock = self.breaker._lock
        admit, before_call, success, failure = (
            self._admit_locked,
            self._before_call,
            self._success_locked,
            self._failure_locked,
        )

        def pybreaker_call(*args: Any, **kwargs: Any) -> Any:
            with lock:
                admission = admit()
            before_call(admission, site, fn, args, kwargs)
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                with lock:
                    failure(admission, exc)
                raise
            except BaseException:
                self._abandon(admission)
                raise
            with lock:
                success(admission)
            return result

        return pybreaker_call

    def __repr__(self) -> str:
        return f"PyBreakerPolicy(name={self.name!r}, state={self.state!r})"

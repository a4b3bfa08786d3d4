"""Chaos injection: faults, latency and results on purpose, to test resilience.

Polly's Simmy, as policies. Put them *inside* the policies you want to
exercise (innermost in a pipeline, where the dependency would fail):

```python
guard = Pipeline(Retry(3), CircuitBreaker(), Fault(rate=0.2, exception=ConnectionError))
```

Each takes ``rate`` (the share of calls affected, 0..1), ``enabled`` (a bool
or a zero-argument callable read on every call, e.g. a feature flag) and
``random`` (a callable returning floats in ``[0, 1)``, for reproducible
tests). A disabled or rate-0 injector costs one check per call.
"""

from __future__ import annotations

import copy
import random as _random
from collections.abc import Callable, Iterable
from typing import Any

from resilient.clock import Clock
from resilient.events import EventSite, Listener
from resilient.policy import AsyncFn, AsyncWrapped, Policy, SyncFn
from resilient.validate import check_callable, check_clock, check_fraction, check_seconds, check_switch

__all__ = ["Fault", "Latency", "ResultInjection"]


class _Injector(Policy):
    def __init__(
        self,
        rate: float,
        *,
        enabled: bool | Callable[[], bool] = True,
        random: Callable[[], float] | None = None,
        name: str | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        super().__init__(name=name, listeners=listeners)
        self.rate = check_fraction(rate, "rate", allow_zero=True)
        self.enabled = check_switch(enabled, "enabled")
        check_callable(random, "random", "a callable returning floats in [0, 1)", allow_none=True)
        self._random = random if random is not None else _random.random
        #: How many calls were affected.
        self.injected = 0

    def _hit(self) -> bool:
        enabled = self.enabled
        if enabled is False or (enabled is not True and not enabled()):
            return False
        if self._random() < self.rate:
            self.injected += 1
            return True
        return False

    def _instead(self) -> Any:
        """What a hit call returns, instead of calling the function (or raises)."""
        raise NotImplementedError

    # Fault and ResultInjection: a hit replaces the call (Latency delays it instead).
    def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        """The closure guarding each call of the async ``fn`` (:meth:`~resilient.Policy.build_async`)."""
        hit, instead = self._hit, self._instead

        async def chaos_call(*args: Any, **kwargs: Any) -> Any:
            if hit():
                return instead()
            return await fn(*args, **kwargs)

        return chaos_call

    def build_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        """The closure guarding each call of the sync ``fn`` (:meth:`~resilient.Policy.build_sync`)."""
        hit, instead = self._hit, self._instead

        def chaos_call(*args: Any, **kwargs: Any) -> Any:
            if hit():
                return instead()
            return fn(*args, **kwargs)

        return chaos_call

    def status(self) -> dict[str, Any]:
        """Rate and count of injections."""
        return {"type": self.policy_type, "rate": self.rate, "injected": self.injected}


class Fault(_Injector):
    """Raise ``exception`` instead of calling the function, for ``rate`` of the calls.

    ``exception`` is an exception instance, an exception type, or a
    zero-argument callable returning an exception (a fresh one per call).
    An instance is never raised itself: each injection raises a fresh copy
    (same type, ``args``, attributes and notes), so the instance does not pile
    up notes and tracebacks and concurrent injections do not share one
    object. An instance that cannot be copied at all is raised itself, with
    its traceback and notes reset to what they were at construction before
    each raise.
    """

    policy_type = "chaos_fault"

    def __init__(
        self,
        rate: float,
        exception: BaseException | type[BaseException] | Callable[[], BaseException] = ConnectionError,
        **kwargs: Any,
    ) -> None:
        super().__init__(rate, **kwargs)
        if not (isinstance(exception, BaseException) or callable(exception)):
            raise TypeError(f"exception must be an exception, a type or a factory, got {exception!r}")
        self.exception = exception
        self._notes: list[str] | None = None
        self._copyable = True
        if isinstance(exception, BaseException):
            notes = getattr(exception, "__notes__", None)
            self._notes = list(notes) if notes is not None else None
            self._copyable = _copy_exception(exception, self._notes) is not None

    def _make(self) -> BaseException:
        exc = self.exception
        if isinstance(exc, BaseException):
            made = _copy_exception(exc, self._notes) if self._copyable else None
            if made is None:
                made = _reset(exc, self._notes)
        else:
            made = exc()
            if not isinstance(made, BaseException):
                raise TypeError(f"{self.label()}: exception factory returned {made!r}")
        made.add_note(f"resilient: injected by {self.label()}")
        return made

    def _instead(self) -> Any:
        raise self._make()


def _copy_exception(template: BaseException, notes: list[str] | None) -> BaseException | None:
    """A fresh copy of ``template`` with its own notes, or None when it cannot be made.

    ``copy.copy`` calls the type with ``args`` (right for builtin exceptions,
    whose fields come from ``args``); an ``__init__`` that needs more than
    ``args`` gets ``__new__`` and the instance's attributes instead.
    """
    try:
        made = copy.copy(template)
    except Exception:
        cls = type(template)
        try:
            made = cls.__new__(cls, *template.args)
            made.__dict__.update(template.__dict__)
        except Exception:
            return None
    if type(made) is not type(template):
        return None
    made.__cause__ = template.__cause__
    made.__context__ = template.__context__
    made.__suppress_context__ = template.__suppress_context__
    _set_notes(made, notes)
    return made


def _reset(exc: BaseException, notes: list[str] | None) -> BaseException:
    """``exc`` as it was at construction, ready to be raised once more."""
    exc.__traceback__ = None
    _set_notes(exc, notes)
    return exc


def _set_notes(exc: BaseException, notes: list[str] | None) -> None:
    if notes is None:
        if "__notes__" in exc.__dict__:
            del exc.__notes__
    else:
        exc.__notes__ = list(notes)


class Latency(_Injector):
    """Sleep ``delay`` seconds before calling the function, for ``rate`` of the calls."""

    policy_type = "chaos_latency"

    def __init__(self, rate: float, delay: float, *, clock: Clock | None = None, **kwargs: Any) -> None:
        super().__init__(rate, **kwargs)
        self.delay = check_seconds(delay, "delay", allow_zero=True)
        self.clock = check_clock(clock)

    def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        async def latency_call(*args: Any, **kwargs: Any) -> Any:
            if self._hit():
                await self.clock.asleep(self.delay)
            return await fn(*args, **kwargs)

        return latency_call

    def build_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        def latency_call(*args: Any, **kwargs: Any) -> Any:
            if self._hit():
                self.clock.sleep(self.delay)
            return fn(*args, **kwargs)

        return latency_call


class ResultInjection(_Injector):
    """Return ``result`` (or ``result()`` when ``factory=True``) instead of calling the function."""

    policy_type = "chaos_result"

    def __init__(self, rate: float, result: Any, *, factory: bool = False, **kwargs: Any) -> None:
        super().__init__(rate, **kwargs)
        if factory and not callable(result):
            raise TypeError(f"result must be callable when factory=True, got {result!r}")
        self.result = result
        self.factory = factory

    def _instead(self) -> Any:
        return self.result() if self.factory else self.result

"""Fallback: answer with a substitute when the call fails.

``Fallback(value=[])`` returns ``[]`` instead of raising; ``Fallback(handler=f)``
calls ``f(outcome)`` (an :class:`~resilient.policy.Outcome` holding the result
or the exception) and returns what it returns. For an async function the
handler may be ``async def``.

As everywhere in resilient, only :class:`Exception` subclasses are handled:
cancellation, ``KeyboardInterrupt`` and ``SystemExit`` always propagate.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

from resilient.events import FALLBACK_USED, EventSite, Listener, Severity
from resilient.policy import (
    AsyncFn,
    AsyncWrapped,
    OnArg,
    Outcome,
    Policy,
    SyncFn,
    exception_predicate,
    result_predicate,
)

__all__ = ["Fallback"]

_MISSING: Any = object()


class Fallback(Policy):
    """Replace a handled failure with ``value`` or ``handler(outcome)``.

    Args:
        value: the substitute result (give this or ``handler``).
        handler: ``(Outcome) -> result``, sync or (for async functions) async.
        on: exceptions to handle (type, tuple or predicate). Default ``Exception``.
        on_result: predicate flagging results to replace.
        name: shown in events and status.
        listeners: event listeners for this policy only.
    """

    policy_type = "fallback"

    def __init__(
        self,
        value: Any = _MISSING,
        *,
        handler: Callable[[Outcome[Any]], Any] | None = None,
        on: OnArg | None = Exception,
        on_result: Callable[[Any], bool] | None = None,
        name: str | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        super().__init__(name=name, listeners=listeners)
        if (value is _MISSING) == (handler is None):
            raise TypeError("Fallback needs exactly one of value= or handler=")
        if handler is not None and not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        self.value = None if value is _MISSING else value
        self.handler = handler
        self._on = exception_predicate(on)
        self._on_result = result_predicate(on_result)

    def _wrap_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        on = self._on
        on_result = self._on_result

        async def use(outcome: Outcome[Any]) -> Any:
            self._emit(site, FALLBACK_USED, Severity.INFO, exception=outcome.exception)
            if self.handler is None:
                return self.value
            result = self.handler(outcome)
            if inspect.isawaitable(result):
                result = await result
            return result

        async def fallback_call(*args: Any, **kwargs: Any) -> Any:
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                if not on(exc):
                    raise
                return await use(Outcome(exception=exc))
            if on_result is not None and on_result(result):
                return await use(Outcome(result=result))
            return result

        return fallback_call

    def _wrap_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        on = self._on
        on_result = self._on_result
        if self.handler is not None and inspect.iscoroutinefunction(self.handler):
            raise TypeError(f"{self._label()}: an async handler cannot serve the synchronous function {fn!r}")

        def use(outcome: Outcome[Any]) -> Any:
            self._emit(site, FALLBACK_USED, Severity.INFO, exception=outcome.exception)
            if self.handler is None:
                return self.value
            return self.handler(outcome)

        def fallback_call(*args: Any, **kwargs: Any) -> Any:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                if not on(exc):
                    raise
                return use(Outcome(exception=exc))
            if on_result is not None and on_result(result):
                return use(Outcome(result=result))
            return result

        return fallback_call

    def __repr__(self) -> str:
        what = f"handler={self.handler!r}" if self.handler is not None else f"value={self.value!r}"
        return f"Fallback({what}, name={self.name!r})"

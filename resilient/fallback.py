"""Fallback: answer with a substitute when the call fails.

``Fallback(value=[])`` returns ``[]`` instead of raising; ``Fallback(handler=f)``
calls ``f(outcome)`` (an :class:`~resilient.policy.Outcome` holding the result
or the exception) and returns what it returns. For an async function the
handler may be ``async def``.

As everywhere in resilient, only :class:`Exception` subclasses are handled:
cancellation, ``KeyboardInterrupt`` and ``SystemExit`` always propagate.

The wrapped function's type says that it may now return the substitute:
``@Fallback(None)`` on ``async def f() -> list[str]`` gives a function
returning ``list[str] | None``, so ``mypy --strict`` makes the caller handle
it. To know whether an answer came from a fallback (to add a ``Warning``
header, say), wrap the call in :func:`fallbacks_used`.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypedDict, TypeVar, Unpack, overload

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

__all__ = ["Fallback", "FallbackUse", "fallbacks_used"]

_MISSING: Any = object()

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class _Options(TypedDict, total=False):
    """The keyword options every form of :class:`Fallback` takes (for its overloads)."""

    on: OnArg | None
    on_result: Callable[[Any], bool] | None
    name: str | None
    listeners: Iterable[Listener]


@dataclass(frozen=True, slots=True)
class FallbackUse:
    """One answer given by a :class:`Fallback` instead of the call's own."""

    #: The name of the Fallback policy that answered, if it has one.
    policy: str | None
    #: The operation (the guarded function's qualified name).
    operation: str | None
    #: The exception that was replaced, or ``None`` when a flagged result was.
    exception: Exception | None


_watchers: ContextVar[list[FallbackUse] | None] = ContextVar("resilient_fallback_watch", default=None)


@contextmanager
def fallbacks_used() -> Iterator[list[FallbackUse]]:
    """Collect the fallback answers given to the calls made in the block.

    ::

        with fallbacks_used() as used:
            items = await recommendations(user_id)
        if used:
            response.headers["Warning"] = '110 - "fallback answer"'

    The list is empty when every call answered for itself. It costs
    nothing on the success path: a Fallback looks for a watcher only when it
    answers. Calls in tasks the block did not await directly (``gather`` of
    new tasks copies the context, so those are seen; a task created before
    the block is not).
    """
    used: list[FallbackUse] = []
    token = _watchers.set(used)
    try:
        yield used
    finally:
        _watchers.reset(token)


class Fallback(Policy, Generic[T]):
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

    # The three ways to build one (a value, an async handler, a sync handler)
    # share their keyword options, spelled once in _Options.
    @overload
    def __init__(self: Fallback[T], value: T, **options: Unpack[_Options]) -> None: ...
    @overload
    def __init__(
        self: Fallback[T], *, handler: Callable[[Outcome[Any]], Awaitable[T]], **options: Unpack[_Options]
    ) -> None: ...
    @overload
    def __init__(self: Fallback[T], *, handler: Callable[[Outcome[Any]], T], **options: Unpack[_Options]) -> None: ...
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

    # The substitute widens the wrapped function's return type (the base class
    # promises the same signature, which a fallback cannot keep honestly).
    @overload  # type: ignore[override]
    def wrap(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R | T]]: ...
    @overload
    def wrap(self, fn: Callable[P, R]) -> Callable[P, R | T]: ...
    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Return ``fn`` guarded by the fallback; its return type gains the substitute's."""
        return Policy.wrap(self, fn)

    __call__ = wrap  # type: ignore[assignment]

    def _used(self, site: EventSite, outcome: Outcome[Any]) -> None:
        self.emit(site, FALLBACK_USED, Severity.INFO, exception=outcome.exception)
        watcher = _watchers.get()
        if watcher is not None:
            watcher.append(FallbackUse(self.name, site.operation, outcome.exception))

    def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        on = self._on
        on_result = self._on_result

        async def use(outcome: Outcome[Any]) -> Any:
            self._used(site, outcome)
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

    def build_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        on = self._on
        on_result = self._on_result
        if self.handler is not None and inspect.iscoroutinefunction(self.handler):
            raise TypeError(f"{self.label()}: an async handler cannot serve the synchronous function {fn!r}")

        def use(outcome: Outcome[Any]) -> Any:
            self._used(site, outcome)
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


def _shown_signature(init: Callable[..., None]) -> inspect.Signature:
    """``init``'s signature without the sentinel that stands for "no value given"."""
    signature = inspect.signature(init)
    return signature.replace(
        parameters=[
            p.replace(default=inspect.Parameter.empty) if p.default is _MISSING else p
            for p in signature.parameters.values()
        ]
    )


# help(Fallback) and IDE tooltips read the implementation's signature, where
# the sentinel default would show as `<object object at 0x...>`: they show
# `value` as the argument to give (or `handler=`, as the docstring says).
Fallback.__init__.__signature__ = _shown_signature(Fallback.__init__)  # type: ignore[attr-defined]

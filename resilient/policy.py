"""The one idea: a policy wraps a callable.

Every policy derives from :class:`Policy`. ``policy.wrap(fn)`` (or
``@policy``) is called once per function and returns a callable with the
same signature; it decides once, at wrap time, whether ``fn`` is a coroutine
function and returns the async or the sync implementation, so the per-call
path never asks again.

:class:`Pipeline` composes policies: the first one listed is the outermost,
as in Polly and tower.
"""

from __future__ import annotations

import functools
import inspect
import warnings
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping
from time import perf_counter
from typing import Any, Generic, ParamSpec, TypeVar, cast, overload

from resilient.events import WOULD_REJECT, EventSite, ExtraValue, Listener, Severity, duration_listeners
from resilient.validate import check_switch, read_switch

__all__ = [
    "AsyncFn",
    "AsyncWrapped",
    "ExceptionPredicate",
    "Outcome",
    "Pipeline",
    "Policy",
    "ResultPredicate",
    "ShadowMode",
    "SyncFn",
    "exception_predicate",
    "is_async_callable",
    "live_policies",
    "operation_name",
    "result_predicate",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

#: An async function a policy wraps.
AsyncFn = Callable[..., Awaitable[Any]]
#: What :meth:`Policy.build_async` returns: an ``async def`` with the wrapped function's signature.
AsyncWrapped = Callable[..., Coroutine[Any, Any, Any]]
#: A synchronous function a policy wraps, and what :meth:`Policy.build_sync` returns.
SyncFn = Callable[..., Any]

ExceptionPredicate = Callable[[Exception], bool]
ResultPredicate = Callable[[Any], bool]

OnArg = type[BaseException] | tuple[type[BaseException], ...] | Callable[[Exception], bool]

_live: weakref.WeakSet[Policy] = weakref.WeakSet()


def live_policies() -> list[Policy]:
    """Every policy object alive in the process that has a name.

    The ASGI status endpoint lists these (with :meth:`Policy.status`).
    """
    return sorted((p for p in _live if p.name), key=lambda p: (type(p).__name__, p.name or ""))


class Outcome(Generic[T]):
    """What a call produced: a result or an exception, never both.

    Handed to fallback handlers and delay hints.
    """

    __slots__ = ("exception", "result")

    def __init__(self, result: T | None = None, exception: Exception | None = None) -> None:
        #: The value returned, when the call returned.
        self.result = result
        #: The exception raised, when the call raised.
        self.exception = exception

    def __repr__(self) -> str:
        if self.exception is not None:
            return f"Outcome(exception={self.exception!r})"
        return f"Outcome(result={self.result!r})"


def _never(_: Any) -> bool:
    return False


def exception_predicate(on: OnArg | None, *, param: str = "on") -> ExceptionPredicate:
    """Normalise an ``on=`` argument into a predicate over exceptions.

    ``on`` may be an exception type, a tuple of types or a predicate. Only
    :class:`Exception` subclasses ever reach the predicate: policies catch
    ``Exception``, so cancellation, ``KeyboardInterrupt`` and ``SystemExit``
    always propagate, even with ``on=BaseException``.

    Raises:
        TypeError: ``on`` is none of those.
    """
    if on is None:
        return _never
    if isinstance(on, type):
        if not issubclass(on, BaseException):
            raise TypeError(f"{param} must be an exception type, a tuple of them or a predicate, got {on!r}")
        exc_type = on
        return lambda exc: isinstance(exc, exc_type)
    if isinstance(on, tuple):
        for item in on:
            if not (isinstance(item, type) and issubclass(item, BaseException)):
                raise TypeError(f"{param} must contain only exception types, got {item!r}")
        types = on
        return lambda exc: isinstance(exc, types)
    if callable(on):
        return on
    raise TypeError(f"{param} must be an exception type, a tuple of them or a predicate, got {on!r}")


def result_predicate(on_result: Callable[[Any], bool] | None, *, param: str = "on_result") -> ResultPredicate | None:
    """Validate an ``on_result=`` argument (a predicate over results, or ``None``)."""
    if on_result is None:
        return None
    if isinstance(on_result, type) or not callable(on_result):
        raise TypeError(f"{param} must be a callable taking a result and returning bool, got {on_result!r}")
    return on_result


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """Whether calling ``fn`` returns an awaitable: a coroutine function or an object with an async ``__call__``."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - objects with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def _check_callable(fn: Any, policy: Policy) -> None:
    if not callable(fn):
        raise TypeError(f"{type(policy).__name__}.wrap() needs a callable, got {fn!r}")
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"{type(policy).__name__} cannot wrap the generator function {getattr(fn, '__qualname__', fn)!r}: "
            "a generator has already produced values when it fails, so it cannot be retried, "
            "timed or replaced safely; wrap a function that returns (or awaits) a complete value"
        )


def operation_name(fn: Callable[..., Any]) -> str:
    """The operation name events report for ``fn``: its qualified name."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__qualname__


def _calling(hook: str) -> Callable[..., Any]:
    """A public build hook that calls a subclass's first-wave private ``hook``."""

    def build(self: Policy, fn: Callable[..., Any], site: EventSite) -> Callable[..., Any]:
        return cast("Callable[..., Any]", getattr(self, hook)(fn, site))

    build.__name__ = build.__qualname__ = hook.replace("_wrap", "build")
    return build


class Policy:
    """Base class of every policy, and the public way to write your own.

    A policy is built once per wrapped function: :meth:`build` decides,
    once, whether the function is a coroutine function and calls
    :meth:`build_async` or :meth:`build_sync`, which return the closure that
    runs on every call. Write a policy by overriding those two (or only
    :meth:`build_async`; a policy that cannot work synchronously leaves
    :meth:`build_sync` raising its :class:`TypeError` at wrap time)::

        class CountCalls(Policy):
            policy_type = "count_calls"

            def __init__(self, *, name=None):
                super().__init__(name=name)
                self.calls = 0

            def build_async(self, fn, site):
                async def call(*args, **kwargs):
                    self.calls += 1
                    return await fn(*args, **kwargs)

                return call

    The closure's success path should do O(1) work: read options into
    locals in ``build_*``, not on every call; report what is notable with
    :meth:`emit` (which costs nothing when nobody listens). ``site`` (an
    :class:`~resilient.events.EventSite`) says which pipeline and operation
    the closure serves. Integrations (a transport, a registry) that hold a
    policy and a function call :meth:`build` directly. See
    ``docs/extending.md``.
    """

    #: The kind of policy, used in events (``"retry"``, ``"timeout"``...).
    policy_type: str = "policy"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The first wave's private hooks keep working: a subclass that
        # overrides one (of Policy or of a built-in policy) has it called by
        # the public hook, with a warning; a class that defines the public
        # hook gets the old name as an alias, so that a subclass's
        # super()._wrap_async() still reaches its parent's shell.
        own = cls.__dict__
        for old, new in (("_wrap_async", "build_async"), ("_wrap_sync", "build_sync")):
            if old in own and new not in own:
                warnings.warn(
                    f"{cls.__qualname__}.{old}() is deprecated: override {new}() instead (docs/extending.md)",
                    DeprecationWarning,
                    stacklevel=2,
                )
                setattr(cls, new, _calling(old))
            elif new in own and old not in own:
                setattr(cls, old, own[new])

    def __init__(self, *, name: str | None = None, listeners: Iterable[Listener] = ()) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {name!r}")
        #: The policy's name: shown in errors, events and the status endpoint.
        self.name = name
        listeners = tuple(listeners)
        for listener in listeners:
            if not callable(listener):
                raise TypeError(f"listeners must be callables, got {listener!r}")
        #: Listeners that receive this policy's events only.
        self.listeners: tuple[Listener, ...] = listeners
        _live.add(self)

    # -- public API ----------------------------------------------------------

    def wrap(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Return ``fn`` guarded by this policy, with the same signature.

        Raises:
            TypeError: ``fn`` is a generator function, or the policy cannot
                guard a synchronous function and ``fn`` is one.
        """
        _check_callable(fn, self)
        site = EventSite(operation=operation_name(fn))
        wrapped = self.build(fn, site, is_async_callable(fn))
        if wrapped is not fn:
            functools.update_wrapper(wrapped, fn)
        return cast("Callable[P, R]", wrapped)

    __call__ = wrap

    async def run(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one call of the async ``fn`` under this policy."""
        _check_callable(fn, self)
        wrapped = self.build(fn, EventSite(operation=operation_name(fn)), True)
        return cast(T, await wrapped(*args, **kwargs))

    def run_sync(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one call of the synchronous ``fn`` under this policy."""
        _check_callable(fn, self)
        if is_async_callable(fn):
            raise TypeError(f"{type(self).__name__}.run_sync() needs a synchronous function; use `await run(...)`")
        wrapped = self.build(fn, EventSite(operation=operation_name(fn)), False)
        return cast(T, wrapped(*args, **kwargs))

    def status(self) -> dict[str, Any] | None:
        """A JSON-able snapshot of the policy's state, or ``None`` if stateless."""
        return None

    # -- the extension point -------------------------------------------------

    def build(self, fn: Callable[..., Any], site: EventSite, is_async: bool) -> Callable[..., Any]:
        """The closure guarding ``fn`` at ``site``: :meth:`build_async` or :meth:`build_sync`.

        Called once per wrapped function (by :meth:`wrap`, by a
        :class:`Pipeline` for each of its policies, by integrations); no
        validation, no metadata copying: that is :meth:`wrap`'s job.
        """
        if is_async:
            return self.build_async(fn, site)
        return self.build_sync(fn, site)

    def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        """Return the ``async def`` that runs each call of the async ``fn``; override it."""
        return self._wrap_async(fn, site)

    def build_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        """Return the function that runs each call of the synchronous ``fn``.

        The default refuses at wrap time with a :class:`TypeError`: override
        it when the policy can work without an event loop.
        """
        return self._wrap_sync(fn, site)

    def emit(self, site: EventSite, name: str, severity: Any, **fields: Any) -> None:
        """Report an event from this policy at ``site``, if anybody listens.

        ``fields`` are those of :meth:`EventSite.emit` (``attempt``,
        ``duration``, ``exception``, ``extras``). Costs one truth test when
        nobody listens; call it on notable paths only.
        """
        if site.enabled(self.listeners):
            site.emit(self.listeners, name, severity, self.policy_type, self.name, **fields)

    def label(self) -> str:
        """How errors and logs name this policy: ``"Retry 'orders'"``, or the class name."""
        return f"{type(self).__name__} {self.name!r}" if self.name else type(self).__name__

    # -- the names of the first wave, kept (deprecated) for subclasses written against them

    def _wrap(self, fn: Callable[..., Any], site: EventSite, is_async: bool) -> Callable[..., Any]:
        return self.build(fn, site, is_async)

    def _wrap_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        raise NotImplementedError(f"{type(self).__name__} must implement build_async()")

    def _wrap_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        raise TypeError(f"{type(self).__name__} works only with async functions")

    def _emit(self, site: EventSite, name: str, severity: Any, **fields: Any) -> None:
        self.emit(site, name, severity, **fields)

    def _label(self) -> str:
        return self.label()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class ShadowMode:
    """Shadow mode for a policy that rejects calls: the ``enforce=`` switch and its counter.

    Mix it into a :class:`Policy` subclass, call :meth:`set_enforce` in the
    constructor, and, where the policy would reject, ask :meth:`shadowed`:
    ``True`` means shadow mode; the policy then calls
    :meth:`record_would_reject` with the error it would have raised (it
    counts it in :attr:`would_reject` and emits
    :data:`~resilient.events.WOULD_REJECT`) and lets the call through,
    having decided (and moved its state) exactly as when enforcing.
    ``enforce`` is read only there, never on the success path.
    """

    _enforce: bool | Callable[[], bool] = True
    _would_reject: int = 0

    def set_enforce(self, enforce: bool | Callable[[], bool]) -> None:
        """Validate and keep ``enforce=`` (a bool, or a callable returning one)."""
        self._enforce = check_switch(enforce, "enforce")
        self._would_reject = 0

    def shadowed(self) -> bool:
        """Whether a rejection now is only reported (shadow mode); a switch that raises reads enforcing."""
        enforce = self._enforce
        return enforce is not True and not read_switch(enforce)

    def record_would_reject(
        self, site: EventSite, error: BaseException | None, extras: Mapping[str, ExtraValue] | None = None
    ) -> None:
        """Shadow mode let a call through that enforcing would reject: count it, emit ``would_reject``.

        The event carries ``error`` (what enforcing would have raised;
        ``None`` where nothing would have been raised, as for a refused
        ``try_acquire()``) and
        ``extras`` (the rejection's reason, ``retry_after``..., with the
        :mod:`resilient.events` ``EXTRA_*`` keys). Call it only where the
        policy mixing this in is a :class:`Policy`.
        """
        self._would_reject += 1
        cast(Policy, self).emit(site, WOULD_REJECT, Severity.INFO, exception=error, extras=extras)

    @property
    def enforce_switch(self) -> bool | Callable[[], bool]:
        """The ``enforce=`` switch as given (a bool, or the callable read at each would-be rejection)."""
        return self._enforce

    @property
    def enforcing(self) -> bool:
        """Whether rejections are enforced now (``enforce``, read at this moment)."""
        return read_switch(self._enforce)

    @property
    def would_reject(self) -> int:
        """Calls that shadow mode (``enforce`` false) let through but would have rejected."""
        return self._would_reject


class Pipeline(Policy):
    """Policies composed into one; the first listed is the outermost.

    ``Pipeline(Timeout(10), Retry(3), CircuitBreaker())`` gives each call a
    total timeout of 10 s around up to 3 attempts, each attempt passing
    through the breaker. A pipeline is itself a policy, so pipelines nest.

    ``len()``, iteration and indexing expose the policies for inspection.
    """

    policy_type = "pipeline"

    def __init__(self, *policies: Policy, name: str | None = None, listeners: Iterable[Listener] = ()) -> None:
        for i, p in enumerate(policies):
            if not isinstance(p, Policy):
                raise TypeError(f"Pipeline() takes policies, got {p!r} at position {i}")
        super().__init__(name=name, listeners=listeners)
        self._policies: tuple[Policy, ...] = policies

    def __len__(self) -> int:
        return len(self._policies)

    def __iter__(self) -> Iterator[Policy]:
        return iter(self._policies)

    @overload
    def __getitem__(self, index: int) -> Policy: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[Policy, ...]: ...
    def __getitem__(self, index: int | slice) -> Policy | tuple[Policy, ...]:
        return self._policies[index]

    def build(self, fn: Callable[..., Any], site: EventSite, is_async: bool) -> Callable[..., Any]:
        """Fold the policies around ``fn``, innermost first; see :meth:`Policy.build`."""
        inner_site = site.child(self.name, self.listeners)
        wrapped = fn
        for policy in reversed(self._policies):
            wrapped = policy.build(wrapped, inner_site, is_async)
        if not self._policies:
            return fn
        return _timed(wrapped, inner_site, is_async)

    def __repr__(self) -> str:
        inner = ", ".join(repr(p) for p in self._policies)
        return f"Pipeline({inner}, name={self.name!r})"


class _PipelineTimer:
    """Times one pipeline call for the duration listeners (made only while some listen)."""

    __slots__ = ("site", "start")

    def __init__(self, site: EventSite) -> None:
        self.site = site
        self.start = perf_counter()

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        outcome = "success" if exc_type is None else "failure"
        self.site.record_duration("pipeline", perf_counter() - self.start, outcome)


def _timed(inner: Callable[..., Any], site: EventSite, is_async: bool) -> Callable[..., Any]:
    # The listeners list itself, not its truth at build time: a listener
    # added later must see the pipelines built before it.
    durations = duration_listeners
    if is_async:

        async def timed_pipeline(*args: Any, **kwargs: Any) -> Any:
            if not durations:
                return await inner(*args, **kwargs)
            with _PipelineTimer(site):
                return await inner(*args, **kwargs)

        return timed_pipeline

    def pipeline_call(*args: Any, **kwargs: Any) -> Any:
        if not durations:
            return inner(*args, **kwargs)
        with _PipelineTimer(site):
            return inner(*args, **kwargs)

    return pipeline_call

"""Policy and Pipeline: wrapping, composition order, introspection."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

from resilient import Fallback, Pipeline, Policy, RejectedError, Retry, Timeout
from resilient.events import EventSite
from resilient.policy import AsyncFn, AsyncWrapped, SyncFn, exception_predicate, live_policies, result_predicate


class Tag(Policy):
    """A test policy that records the order in which layers run."""

    policy_type = "tag"

    def __init__(self, label: str, log: list[str]) -> None:
        super().__init__(name=label)
        self.label = label
        self.log = log

    def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        async def call(*args: Any, **kwargs: Any) -> Any:
            self.log.append(f"enter {self.label}")
            try:
                return await fn(*args, **kwargs)
            finally:
                self.log.append(f"exit {self.label}")

        return call

    def build_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.log.append(f"enter {self.label}")
            try:
                return fn(*args, **kwargs)
            finally:
                self.log.append(f"exit {self.label}")

        return call


async def test_first_listed_policy_is_outermost() -> None:
    log: list[str] = []

    @Pipeline(Tag("a", log), Tag("b", log), Tag("c", log))
    async def work() -> str:
        log.append("work")
        return "done"

    assert await work() == "done"
    assert log == ["enter a", "enter b", "enter c", "work", "exit c", "exit b", "exit a"]


def test_pipelines_nest_and_keep_order_sync() -> None:
    log: list[str] = []
    inner = Pipeline(Tag("b", log), Tag("c", log), name="inner")
    outer = Pipeline(Tag("a", log), inner, Tag("d", log), name="outer")

    @outer
    def work() -> int:
        log.append("work")
        return 1

    assert work() == 1
    assert log == ["enter a", "enter b", "enter c", "enter d", "work", "exit d", "exit c", "exit b", "exit a"]


def test_pipeline_introspection() -> None:
    retry, timeout = Retry(2), Timeout(1)
    p = Pipeline(timeout, retry, name="x")
    assert len(p) == 2
    assert list(p) == [timeout, retry]
    assert p[0] is timeout
    assert p[1:] == (retry,)
    assert "Timeout" in repr(p)


def test_pipeline_rejects_non_policies() -> None:
    with pytest.raises(TypeError, match="position 1"):
        Pipeline(Retry(), "nope")  # type: ignore[arg-type]


async def test_wrapped_async_function_keeps_metadata_and_is_a_coroutine_function() -> None:
    async def fetch(x: int, *, y: int = 2) -> int:
        """Fetch docs."""
        return x + y

    wrapped = Pipeline(Retry(3), Timeout(1))(fetch)
    assert inspect.iscoroutinefunction(wrapped)
    assert wrapped.__name__ == "fetch"
    assert wrapped.__doc__ == "Fetch docs."
    assert wrapped.__wrapped__ is fetch  # type: ignore[attr-defined]
    assert inspect.signature(wrapped) == inspect.signature(fetch)
    assert await wrapped(1, y=5) == 6


def test_wrapped_sync_function_stays_sync() -> None:
    def add(a: int, b: int) -> int:
        return a + b

    wrapped = Retry(3)(add)
    assert not inspect.iscoroutinefunction(wrapped)
    assert wrapped(2, 3) == 5


async def test_decorating_methods_passes_self_through() -> None:
    class Client:
        def __init__(self) -> None:
            self.calls = 0

        @Retry(3, backoff=lambda n: 0.0)
        async def get(self, key: str) -> str:
            self.calls += 1
            if self.calls < 2:
                raise ConnectionError
            return f"{key}!"

        @Fallback("default")
        def sync_get(self, key: str) -> str:
            raise KeyError(key)

    c = Client()
    assert await c.get("k") == "k!"
    assert c.calls == 2
    assert c.sync_get("k") == "default"


async def test_run_and_run_sync_for_one_off_calls() -> None:
    async def double(x: int) -> int:
        return 2 * x

    def triple(x: int) -> int:
        return 3 * x

    assert await Retry(2).run(double, 4) == 8
    assert Retry(2).run_sync(triple, 4) == 12
    with pytest.raises(TypeError, match="synchronous"):
        Retry(2).run_sync(double, 1)  # type: ignore[arg-type]


def test_empty_pipeline_returns_the_function_itself() -> None:
    async def f() -> None:
        return None

    assert Pipeline()(f) is f


@pytest.mark.parametrize("policy", [Retry(2), Timeout(1), Fallback(0), Pipeline(Retry(2))])
def test_generator_functions_are_refused_at_wrap_time(policy: Policy) -> None:
    def gen() -> Any:
        yield 1

    async def agen() -> Any:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        policy.wrap(gen)
    with pytest.raises(TypeError, match="generator"):
        policy.wrap(agen)


def test_non_callables_are_refused() -> None:
    with pytest.raises(TypeError, match="needs a callable"):
        Retry().wrap(42)  # type: ignore[arg-type]


async def test_async_callable_objects_are_detected() -> None:
    class Handler:
        async def __call__(self, x: int) -> int:
            return x

    wrapped = Retry(2)(Handler())
    assert await wrapped(3) == 3


def test_exception_predicate_forms() -> None:
    assert exception_predicate(ValueError)(ValueError())
    assert not exception_predicate(ValueError)(KeyError())
    assert exception_predicate((ValueError, KeyError))(KeyError())
    assert exception_predicate(lambda e: "x" in str(e))(ValueError("x"))
    assert not exception_predicate(None)(ValueError())
    with pytest.raises(TypeError, match="on must be"):
        exception_predicate(int)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="only exception types"):
        exception_predicate((ValueError, 3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on must be"):
        exception_predicate("ValueError")  # type: ignore[arg-type]


def test_result_predicate_validation() -> None:
    assert result_predicate(None) is None
    with pytest.raises(TypeError, match="on_result"):
        result_predicate(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on_result"):
        result_predicate(int)  # type: ignore[arg-type]


def test_policy_name_and_listeners_are_validated() -> None:
    with pytest.raises(TypeError, match="name"):
        Retry(name=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="listeners"):
        Retry(listeners=[1])  # type: ignore[list-item]


def test_live_policies_lists_named_policies() -> None:
    named = Retry(2, name="inventory-retry")
    assert named in live_policies()
    assert all(p.name for p in live_policies())


async def test_cancellation_propagates_through_a_pipeline() -> None:
    started = asyncio.Event()

    @Pipeline(Fallback(0), Retry(5, on=BaseException), Timeout(10))
    async def hang() -> int:
        started.set()
        await asyncio.sleep(100)
        return 1

    task = asyncio.create_task(hang())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_the_command_prints_its_version(capsys: pytest.CaptureFixture[str]) -> None:
    from resilient import __version__
    from resilient.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"resilient {__version__}"


def test_a_subclass_written_against_the_first_wave_hooks_still_works_and_is_warned() -> None:
    with pytest.warns(DeprecationWarning, match=r"Old\._wrap_async\(\) is deprecated: override build_async\(\)"):

        class Old(Policy):
            def _wrap_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
                async def call(*args: Any, **kwargs: Any) -> Any:
                    return ("old", await fn(*args, **kwargs))

                return call

    async def f() -> int:
        return 1

    assert asyncio.run(Old().wrap(f)()) == ("old", 1)
    with pytest.raises(TypeError, match="works only with async functions"):
        Old().wrap(lambda: 1)


def test_a_subclass_of_a_built_in_policy_overriding_a_first_wave_hook_is_still_called() -> None:
    from resilient import Bulkhead, CircuitBreaker

    log: list[str] = []
    with pytest.warns(DeprecationWarning, match=r"LoggedBulkhead\._wrap_async\(\) is deprecated"):

        class LoggedBulkhead(Bulkhead):
            def _wrap_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
                inner = super()._wrap_async(fn, site)  # the parent's real shell

                async def call(*args: Any, **kwargs: Any) -> Any:
                    log.append("async")
                    return await inner(*args, **kwargs)

                return call

    with pytest.warns(DeprecationWarning, match=r"LoggedBreaker\._wrap_sync\(\) is deprecated"):

        class LoggedBreaker(CircuitBreaker):
            def _wrap_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
                inner = super()._wrap_sync(fn, site)

                def call(*args: Any, **kwargs: Any) -> Any:
                    log.append("sync")
                    return inner(*args, **kwargs)

                return call

    async def f() -> int:
        return 1

    bulkhead = LoggedBulkhead(1)
    assert asyncio.run(bulkhead.wrap(f)()) == 1
    assert LoggedBreaker("b").wrap(lambda: 2)() == 2
    assert log == ["async", "sync"]
    assert bulkhead.running == 0


def test_a_class_with_both_hooks_is_not_warned(recwarn: pytest.WarningsRecorder) -> None:
    class Both(Policy):
        def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
            return fn

        _wrap_async = build_async  # kept for callers of the old name

    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


def test_a_custom_policy_reports_shadow_mode_with_public_names_only() -> None:
    from resilient.events import EXTRA_REASON, WOULD_REJECT
    from resilient.policy import ShadowMode
    from resilient.testing import recording

    class Closed(ShadowMode, Policy):
        policy_type = "closed"

        def __init__(self, *, enforce: bool = True) -> None:
            super().__init__(name="gate")
            self.set_enforce(enforce)

        def build_sync(self, fn: Any, site: Any) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                err = RejectedError("closed", policy=self.name)
                if not self.shadowed():
                    raise err
                self.record_would_reject(site, err, {EXTRA_REASON: "closed"})
                return fn(*args, **kwargs)

            return call

    gate = Closed(enforce=False)
    with recording() as rec:
        assert gate(lambda: "ran")() == "ran"
    assert gate.would_reject == 1
    (event,) = rec.events
    assert (event.name, event.policy, event.policy_type) == (WOULD_REJECT, "gate", "closed")
    assert event.exception == "resilient.errors.RejectedError"  # events carry the type name, not the object
    assert event.extras[EXTRA_REASON] == "closed"
    with pytest.raises(RejectedError):
        Closed()(lambda: "ran")()

"""Events and listeners: who receives what, at what cost, and what a broken listener does."""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings
from typing import Any

import pytest

from resilient import Pipeline, Retry, RetryBudget, Timeout, constant
from resilient import events as ev
from resilient.events import EventSite, ResilienceEvent, Severity
from resilient.testing import FakeClock, RecordingListener, recording
from tests.clock_helpers import after


@pytest.fixture(autouse=True)
def _fresh_failure_log(monkeypatch: pytest.MonkeyPatch) -> None:
    # "Logged once per listener" is process state: give each test its own.
    monkeypatch.setattr(ev, "_failed_listeners", [])


def flaky(failures: int, exc: type[Exception] = ConnectionError) -> Any:
    calls = {"n": 0}

    async def call() -> str:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise exc("boom")
        return "ok"

    return call


async def test_retry_event_carries_every_field() -> None:
    rec = RecordingListener()
    guard = Pipeline(Retry(3, backoff=constant(0.5), clock=FakeClock(auto_advance=True), name="r"), name="p")
    fn = guard(flaky(2))
    ev.add_listener(rec)
    try:
        assert await fn() == "ok"
    finally:
        ev.remove_listener(rec)
    assert rec.events == [
        ResilienceEvent(
            name=ev.RETRY,
            severity=Severity.INFO,
            policy_type="retry",
            policy="r",
            pipeline="p",
            operation=fn.__wrapped__.__qualname__,
            attempt=attempt,
            duration=0.5,
            exception="ConnectionError",
            extras={},
        )
        for attempt in (2, 3)
    ]


async def test_exception_type_is_qualified_outside_builtins() -> None:
    class Custom(Exception):
        pass

    with recording() as rec:
        await Retry(2, backoff=constant(0))(flaky(1, Custom))()
    assert rec.events[0].exception == f"{__name__}.{Custom.__qualname__}"


async def test_timeout_event() -> None:
    clock = FakeClock()

    async def slow() -> None:
        await clock.asleep(1)

    with recording() as rec, pytest.raises(TimeoutError):
        await after(clock, 0.01, Timeout(0.01, name="t", clock=clock)(slow)())
    (event,) = rec.events
    assert (event.name, event.severity, event.policy_type, event.policy) == (
        ev.TIMEOUT,
        Severity.WARNING,
        "timeout",
        "t",
    )
    assert event.duration == pytest.approx(0.01)
    assert event.extras == {"deadline": False}


async def test_global_pipeline_and_policy_listeners_each_get_their_scope() -> None:
    glob, pipe, pol, other = RecordingListener(), RecordingListener(), RecordingListener(), RecordingListener()
    retry = Retry(2, backoff=constant(0), listeners=[pol])
    guarded = Pipeline(retry, name="p", listeners=[pipe])(flaky(1))
    unrelated = Retry(2, backoff=constant(0), listeners=[other])
    ev.add_listener(glob)
    try:
        await guarded()
    finally:
        ev.remove_listener(glob)
    assert glob.names() == pipe.names() == pol.names() == ["retry"]
    assert other.events == []
    # Per-policy listeners see the policy's events in every pipeline it is in.
    await retry(flaky(1))()
    assert pol.names() == ["retry", "retry"]
    assert pipe.names() == ["retry"]
    del unrelated


async def test_nested_pipelines_deliver_to_both_and_name_the_innermost() -> None:
    outer_l, inner_l = RecordingListener(), RecordingListener()
    inner = Pipeline(Retry(2, backoff=constant(0)), name="inner", listeners=[inner_l])
    outer = Pipeline(inner, name="outer", listeners=[outer_l])
    await outer(flaky(1))()
    assert outer_l.events == inner_l.events
    assert [e.pipeline for e in outer_l.events] == ["inner"]


async def test_listener_order_is_policy_then_pipeline_then_global() -> None:
    order: list[str] = []
    guarded = Pipeline(
        Retry(2, backoff=constant(0), listeners=[lambda e: order.append("policy")]),
        listeners=[lambda e: order.append("pipeline")],
    )(flaky(1))

    def glob(e: ResilienceEvent) -> None:
        order.append("global")

    ev.add_listener(glob)
    try:
        await guarded()
    finally:
        ev.remove_listener(glob)
    assert order == ["policy", "pipeline", "global"]


def test_add_listener_works_as_a_decorator_and_rejects_non_callables() -> None:
    @ev.add_listener
    def listener(event: ResilienceEvent) -> None:
        pass

    try:
        assert listener in ev._global_listeners
    finally:
        ev.remove_listener(listener)
    assert listener not in ev._global_listeners
    ev.remove_listener(listener)  # absent: no error
    with pytest.raises(TypeError, match="callable"):
        ev.add_listener("nope")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        Retry(listeners=[42])  # type: ignore[list-item]


# -- no listener, no event ------------------------------------------------------


class _Counting:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, *args: Any, **kwargs: Any) -> ResilienceEvent:
        self.n += 1
        return ResilienceEvent(*args, **kwargs)


async def test_no_listener_builds_no_event_on_success_or_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    counting = _Counting()
    monkeypatch.setattr(ev, "ResilienceEvent", counting)
    monkeypatch.setattr(ev, "_global_listeners", [])
    guard = Pipeline(Timeout(5), Retry(3, backoff=constant(0)), name="p")
    ok = guard(flaky(0))
    for _ in range(100):
        assert await ok() == "ok"
    assert counting.n == 0
    # Even a retried call builds none: nobody listens.
    assert await guard(flaky(2))() == "ok"
    assert counting.n == 0
    # The same call with a listener builds exactly one per retry (proves the counter counts).
    rec = RecordingListener()
    assert await Pipeline(Retry(3, backoff=constant(0)), listeners=[rec])(flaky(2))() == "ok"
    assert counting.n == 2 == len(rec.events)


async def test_success_path_builds_no_event_even_with_listeners(monkeypatch: pytest.MonkeyPatch) -> None:
    counting = _Counting()
    monkeypatch.setattr(ev, "ResilienceEvent", counting)
    with recording() as rec:
        fn = Pipeline(Timeout(5), Retry(3), name="p")(flaky(0))
        for _ in range(50):
            await fn()
    assert counting.n == 0
    assert rec.events == []


def test_site_enabled_reflects_every_scope() -> None:
    site = EventSite("op", "p")
    assert not site.enabled(())
    assert site.enabled((print,))
    assert EventSite("op", "p", (print,)).enabled(())
    ev.add_listener(print)
    try:
        assert site.enabled(())
    finally:
        ev.remove_listener(print)


# -- async listeners ------------------------------------------------------------


async def test_async_listener_is_scheduled_and_never_blocks_the_call() -> None:
    release = asyncio.Event()
    seen: list[str] = []

    async def listener(event: ResilienceEvent) -> None:
        await release.wait()
        seen.append(event.name)

    guarded = Retry(3, backoff=constant(0), listeners=[listener])(flaky(2))
    # The listener waits forever unless released, so this would hang if the
    # call awaited it.
    assert await asyncio.wait_for(guarded(), 1) == "ok"
    assert seen == []
    assert len(ev._background) == 2
    release.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert seen == ["retry", "retry"]
    assert not ev._background


async def test_async_listener_that_raises_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(event: ResilienceEvent) -> None:
        raise ValueError("listener bug")

    guarded = Retry(4, backoff=constant(0), listeners=[broken])(flaky(3))
    with caplog.at_level(logging.ERROR, logger="resilient.events"):
        assert await guarded() == "ok"
        for _ in range(5):
            await asyncio.sleep(0)
    records = [r for r in caplog.records if r.name == "resilient.events"]
    assert len(records) == 1
    assert "ValueError" in records[0].getMessage()
    assert records[0].exc_info is not None


def test_async_listener_outside_a_loop_is_reported_once_without_warnings(caplog: pytest.LogCaptureFixture) -> None:
    async def alistener(event: ResilienceEvent) -> None:
        raise AssertionError("never runs")

    def fails_twice() -> Any:
        fails_twice.n += 1  # type: ignore[attr-defined]
        if fails_twice.n <= 2:  # type: ignore[attr-defined]
            raise ConnectionError
        return "ok"

    fails_twice.n = 0  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a "coroutine was never awaited" would fail here
        with caplog.at_level(logging.ERROR, logger="resilient.events"):
            assert Retry(3, backoff=constant(0), listeners=[alistener]).run_sync(fails_twice) == "ok"
        gc.collect()
    records = [r for r in caplog.records if r.name == "resilient.events"]
    assert len(records) == 1
    assert "outside a loop" in records[0].getMessage()


# -- raising listeners ----------------------------------------------------------


async def test_raising_listener_is_logged_once_and_other_listeners_still_run(caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: ResilienceEvent) -> None:
        raise RuntimeError("listener bug")

    rec = RecordingListener()
    guarded = Retry(4, backoff=constant(0), listeners=[broken, rec])(flaky(3))
    with caplog.at_level(logging.ERROR, logger="resilient.events"):
        assert await guarded() == "ok"
        assert await guarded() == "ok"  # flaky is now healthy: no events, fine
    assert rec.names() == ["retry"] * 3
    records = [r for r in caplog.records if r.name == "resilient.events"]
    assert len(records) == 1
    assert "RuntimeError" in records[0].getMessage()


async def test_bound_method_listener_is_recognised_as_the_same_listener(caplog: pytest.LogCaptureFixture) -> None:
    class Sink:
        def on_event(self, event: ResilienceEvent) -> None:
            raise KeyError("bug")

    sink = Sink()
    # Each attribute access makes a new bound-method object.
    guard = Pipeline(Retry(3, backoff=constant(0), listeners=[sink.on_event]), listeners=[sink.on_event])
    with caplog.at_level(logging.ERROR, logger="resilient.events"):
        await guard(flaky(2))()
    assert len([r for r in caplog.records if r.name == "resilient.events"]) == 1


async def test_cancellation_in_a_listener_is_not_swallowed() -> None:
    # Listeners are user code: only Exception is caught, like everywhere else.
    def cancels(event: ResilienceEvent) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await Retry(2, backoff=constant(0), listeners=[cancels])(flaky(1))()


# -- duration listeners ---------------------------------------------------------


class Durations:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, str | None, str]] = []

    def __call__(self, kind: str, site: EventSite, seconds: float, outcome: str) -> None:
        assert seconds >= 0
        self.calls.append((kind, site.pipeline, site.operation, outcome))


async def test_duration_listener_sees_attempts_and_pipeline_calls() -> None:
    rec = Durations()
    fn = flaky(2)
    guarded = Pipeline(Retry(3, backoff=constant(0)), name="p")(fn)
    with pytest.warns(DeprecationWarning, match="duration listener is deprecated"):
        ev.add_duration_listener(rec)
    try:
        assert ev.durations_enabled()
        await guarded()
    finally:
        ev.remove_duration_listener(rec)
    assert not ev.durations_enabled()
    op = fn.__qualname__
    assert rec.calls == [
        ("attempt", "p", op, "failure"),
        ("attempt", "p", op, "failure"),
        ("attempt", "p", op, "success"),
        ("pipeline", "p", op, "success"),
    ]
    rec.calls.clear()
    await guarded()
    assert rec.calls == []  # removed: nobody is called


async def test_result_failures_count_as_failed_attempts() -> None:
    rec = Durations()
    results = iter([503, 503, 200])

    async def call() -> int:
        return next(results)

    guarded = Pipeline(Retry(3, backoff=constant(0), on_result=lambda r: r >= 500), name="p")(call)
    with pytest.warns(DeprecationWarning, match="deprecated"):
        ev.add_duration_listener(rec)
    try:
        assert await guarded() == 200
    finally:
        ev.remove_duration_listener(rec)
    assert [c[3] for c in rec.calls] == ["failure", "failure", "success", "success"]


async def test_raising_duration_listener_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    def broken(kind: str, site: EventSite, seconds: float, outcome: str) -> None:
        raise ZeroDivisionError

    guarded = Pipeline(Retry(3, backoff=constant(0)))(flaky(0))
    with pytest.warns(DeprecationWarning, match="deprecated"):
        ev.add_duration_listener(broken)
    try:
        with caplog.at_level(logging.ERROR, logger="resilient.events"):
            for _ in range(3):
                assert await guarded() == "ok"
    finally:
        ev.remove_duration_listener(broken)
    assert len([r for r in caplog.records if r.name == "resilient.events"]) == 1


# -- logging --------------------------------------------------------------------


async def test_nothing_is_logged_on_the_success_path(caplog: pytest.LogCaptureFixture) -> None:
    guarded = Pipeline(Timeout(5), Retry(3, budget=RetryBudget()), Timeout(1), name="p")(flaky(0))
    with caplog.at_level(logging.DEBUG, logger="resilient"):
        for _ in range(20):
            await guarded()
    assert caplog.records == []


async def test_budget_exhaustion_warns_on_the_retry_logger(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(auto_advance=True)
    budget = RetryBudget(ratio=0.0, min_per_second=0.1, window=10.0, clock=clock)
    guarded = Retry(5, backoff=constant(0), budget=budget, clock=clock, name="r")(flaky(100))
    with caplog.at_level(logging.DEBUG, logger="resilient"), recording() as rec, pytest.raises(ConnectionError):
        await guarded()
    warnings_ = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.name for r in warnings_] == ["resilient.retry"]
    assert "budget" in warnings_[0].getMessage()
    assert rec.names()[-1] == ev.BUDGET_EXHAUSTED
    assert rec.events[-1].severity is Severity.WARNING


def test_severity_maps_onto_logging_levels() -> None:
    assert [s.logging_level for s in Severity] == [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR]
    assert Severity.WARNING == "warning"


def test_event_is_frozen_and_slotted() -> None:
    event = ResilienceEvent(name="retry", severity=Severity.INFO, policy_type="retry")
    with pytest.raises(AttributeError):
        event.name = "x"  # type: ignore[misc]
    assert not hasattr(event, "__dict__")


def test_every_event_constant_is_a_distinct_snake_case_name() -> None:
    names = [getattr(ev, n) for n in ev.__all__ if n.isupper() and not n.startswith("EXTRA_")]
    assert len(names) == len(set(names)) == 16
    assert all(n.replace("_", "").isalpha() and n.islower() for n in names)


def test_extras_keys_are_distinct_constants() -> None:
    keys = [getattr(ev, n) for n in ev.__all__ if n.startswith("EXTRA_")]
    assert len(keys) == len(set(keys))
    assert ev.EXTRA_HTTP_STATUS == "http.response.status_code"


async def test_logging_listener_writes_one_line_per_event_at_its_severity(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()

    async def slow() -> None:
        await clock.asleep(1)

    listener = ev.LoggingListener()
    guard = Pipeline(
        Timeout(0.01, name="t", clock=clock), Retry(2, backoff=constant(0), name="r"), name="p", listeners=[listener]
    )
    with caplog.at_level(logging.DEBUG, logger="resilient.events"):
        await guard(flaky(1))()
        with pytest.raises(TimeoutError):
            await after(clock, 0.01, guard(slow)())
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "resilient.events"]
    assert lines[0][0] == logging.INFO
    assert lines[0][1].startswith("resilient: retry by retry 'r', in pipeline 'p', for ")
    assert lines[0][1].endswith("attempt 2, 0 s, after ConnectionError")
    assert lines[1][0] == logging.WARNING
    assert lines[1][1].startswith("resilient: timeout by timeout 't', in pipeline 'p'")
    assert "deadline=False" in lines[1][1]
    assert caplog.records[0].resilience_event.name == "retry"  # type: ignore[attr-defined]


async def test_logging_listener_min_severity(caplog: pytest.LogCaptureFixture) -> None:
    listener = ev.LoggingListener(logging.getLogger("app.resilience"), min_severity=Severity.WARNING)
    with caplog.at_level(logging.DEBUG):
        await Retry(2, backoff=constant(0), listeners=[listener])(flaky(1))()
    assert [r for r in caplog.records if r.name == "app.resilience"] == []
    assert "WARNING" in repr(listener)


async def test_durations_are_events_delivered_with_the_others() -> None:
    received: list[ev.ResilienceEvent] = []
    fn = flaky(1)
    guarded = Pipeline(Retry(3, backoff=constant(0)), name="p")(fn)
    ev.add_listener(received.append, durations=True)
    try:
        assert ev.durations_enabled()
        await guarded()
    finally:
        ev.remove_listener(received.append)
    assert not ev.durations_enabled()
    assert [e.name for e in received] == [ev.EXECUTION_ATTEMPT, ev.RETRY, ev.EXECUTION_ATTEMPT, ev.PIPELINE_EXECUTED]
    durations = [e for e in received if e.name != ev.RETRY]
    assert [e.extras[ev.EXTRA_OUTCOME] for e in durations] == ["failure", "success", "success"]
    assert all(e.duration is not None and e.duration >= 0 for e in durations)
    assert {e.pipeline for e in durations} == {"p"}
    assert {e.operation for e in durations} == {fn.__qualname__}


async def test_a_plain_listener_gets_no_duration_events_and_costs_no_clock_reads() -> None:
    received: list[ev.ResilienceEvent] = []
    ev.add_listener(received.append)
    try:
        assert not ev.durations_enabled()
        await Pipeline(Retry(3, backoff=constant(0)), name="p")(flaky(1))()
    finally:
        ev.remove_listener(received.append)
    assert [e.name for e in received] == [ev.RETRY]


async def test_an_async_duration_listener_is_scheduled_like_any_listener() -> None:
    received: list[str] = []

    async def listener(event: ev.ResilienceEvent) -> None:
        received.append(event.name)

    ev.add_duration_listener(listener)
    try:
        await Pipeline(name="p")(flaky(0))()
        await Pipeline(Retry(2), name="p")(flaky(0))()
        for _ in range(3):
            await asyncio.sleep(0)
    finally:
        ev.remove_duration_listener(listener)
    assert received == [ev.EXECUTION_ATTEMPT, ev.PIPELINE_EXECUTED]


def _literal_extras_keys(tree: Any) -> list[tuple[int, str]]:
    """String keys of dict literals that become event extras (``extras=``, ``extras = {...}``, MappingProxyType)."""
    import ast

    found: list[tuple[int, str]] = []

    def check(node: ast.AST | None) -> None:
        if isinstance(node, ast.Dict):
            found.extend(
                (k.lineno, k.value) for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)
            )

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "extras":
                    check(kw.value)
            if isinstance(node.func, ast.Name) and node.func.id == "MappingProxyType":
                for arg in node.args:
                    check(arg)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "extras" for t in targets):
                check(node.value)
    return found


def test_producers_write_extras_keys_with_the_shared_constants() -> None:
    """A key spelled as a string drifts from what resilient.otel exports (the review found `from`/`to` dropped)."""
    import ast
    from pathlib import Path

    root = Path(ev.__file__).parent
    literal = {
        f"{path.relative_to(root)}:{line}: {key!r}"
        for path in sorted(root.rglob("*.py"))
        if path.name != "events.py"
        for line, key in _literal_extras_keys(ast.parse(path.read_text()))
    }
    assert not literal, "use the EXTRA_* constants of resilient.events: " + ", ".join(sorted(literal))


def test_a_listener_that_failed_does_not_keep_its_object_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    # A breaker's on_open is often a method of the object that owns the breaker: the record of
    # "already logged" held it strongly, so every such object that ever failed lived forever.
    import weakref

    # The log records pytest captures would hold the listener themselves.
    monkeypatch.setattr(logging.getLogger("resilient.breaker"), "disabled", True)

    from resilient import CircuitBreaker

    class Owner:
        def __init__(self) -> None:
            self.breaker = CircuitBreaker(consecutive_failures=1, on_open=self.opened)

        def opened(self, change: Any) -> None:
            raise RuntimeError("listener bug")

    def boom() -> None:
        raise ConnectionError

    refs = []
    for _ in range(50):
        owner = Owner()
        with pytest.raises(ConnectionError):
            owner.breaker.run_sync(boom)
        refs.append(weakref.ref(owner))
        del owner
    gc.collect()
    assert [r for r in refs if r() is not None] == []
    assert len(ev._failed_listeners) <= ev._MAX_FAILED_LISTENERS


def test_a_failed_listener_is_logged_once_while_it_lives(caplog: pytest.LogCaptureFixture) -> None:
    class Sink:
        def __call__(self, event: Any) -> None:
            raise RuntimeError("sink bug")

    sink = Sink()
    site = EventSite(operation="op")
    with caplog.at_level(logging.ERROR, logger="resilient.events"):
        for _ in range(3):
            site.emit((sink,), "retry", Severity.INFO, "retry", "r")
    assert len([r for r in caplog.records if "sink bug" in str(r.exc_info[1] if r.exc_info else "")]) == 1
